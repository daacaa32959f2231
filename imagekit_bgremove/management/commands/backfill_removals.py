"""Request background removals for existing rows, streaming in primary-key batches.

Memory stays bounded (one batch of ids and names at a time) and every batch costs the same
number of queries: one SELECT of the batch, one INSERT of its jobs, one UPDATE superseding older
unfinished jobs, one UPDATE of the ``<field>_removal`` pointers, plus one enqueue per job.
"""

from __future__ import annotations

import time

from django.apps import apps
from django.contrib.contenttypes.models import ContentType
from django.core.management.base import BaseCommand, CommandError
from django.db import models, transaction
from django.db.models import Case, OuterRef, Q, Subquery, When
from django.utils import timezone

from imagekit_bgremove import services
from imagekit_bgremove.fields import BackgroundRemovalImageField
from imagekit_bgremove.models import UNFINISHED, JobStatus, RemovalJob, Trigger
from imagekit_bgremove.options import OptionsError, RemoveBgOptions


class Command(BaseCommand):
    help = "Request background removal for the existing images of one model field."

    def add_arguments(self, parser):
        parser.add_argument("model", help="app_label.ModelName")
        parser.add_argument("field", help="Name of a BackgroundRemovalImageField")
        parser.add_argument("--options", default="", help='JSON, e.g. \'{"bg_color": "fff"}\'')
        parser.add_argument(
            "--only-missing",
            action="store_true",
            help="Skip rows whose latest removal succeeded or is under way.",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count, change nothing.")
        parser.add_argument("--limit", type=int, default=None, help="At most N rows.")
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument(
            "--force",
            action="store_true",
            help="Submit even when an identical image was already processed.",
        )

    def handle(self, *args, **opts):
        try:
            model = apps.get_model(opts["model"])
        except (LookupError, ValueError) as exc:
            raise CommandError(f"Unknown model {opts['model']!r}: {exc}") from exc
        field_name = opts["field"]
        try:
            field = services.removal_field(model, field_name)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        try:
            options = RemoveBgOptions.coerce(
                opts["options"] or None, base=services.field_options(field)
            )
        except OptionsError as exc:
            raise CommandError(f"--options: {exc}") from exc
        batch_size = opts["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        summary = backfill(
            model,
            field,
            options=options,
            only_missing=opts["only_missing"],
            dry_run=opts["dry_run"],
            limit=opts["limit"],
            batch_size=batch_size,
            force=opts["force"],
            progress=self._progress,
        )
        verb = "Would request" if opts["dry_run"] else "Requested"
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} {summary['requested']} removal(s) for {model._meta.label}.{field_name} "
                f"in {summary['batches']} batch(es), {summary['seconds']:.1f} s; "
                f"options: {options}."
            )
        )

    def _progress(self, done: int, batches: int) -> None:
        self.stdout.write(f"  ... {done} row(s) in {batches} batch(es)")


def backfill(
    model: type[models.Model],
    field: BackgroundRemovalImageField,
    *,
    options: RemoveBgOptions,
    only_missing: bool = False,
    dry_run: bool = False,
    limit: int | None = None,
    batch_size: int = 500,
    force: bool = False,
    progress=None,
) -> dict:
    started = time.monotonic()
    name = field.name
    pointer = f"{name}_removal"
    manager = model._base_manager
    rows = manager.exclude(**{name: ""}).exclude(**{f"{name}__isnull": True})
    if only_missing:
        rows = rows.filter(
            Q(**{f"{pointer}__isnull": True})
            | Q(
                **{
                    f"{pointer}__status__in": [
                        JobStatus.FAILED,
                        JobStatus.CANCELLED,
                        JobStatus.SUPERSEDED,
                    ]
                }
            )
        )
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
    pk_name = model._meta.pk.attname
    stored_options = options.to_dict()
    done = batches = 0
    last_pk = None
    while limit is None or done < limit:
        size = batch_size if limit is None else min(batch_size, limit - done)
        page = rows.order_by(pk_name)
        if last_pk is not None:
            page = page.filter(pk__gt=last_pk)
        batch = list(page.values_list(pk_name, name)[:size])
        if not batch:
            break
        last_pk = batch[-1][0]
        batches += 1
        done += len(batch)
        if not dry_run:
            _request_batch(model, content_type, name, pointer, batch, stored_options, force)
        if progress is not None:
            progress(done, batches)
    return {"requested": done, "batches": batches, "seconds": time.monotonic() - started}


def _request_batch(model, content_type, name, pointer, batch, stored_options, force) -> None:
    now = timezone.now()
    with transaction.atomic():
        jobs = RemovalJob.objects.bulk_create(
            [
                RemovalJob(
                    content_type=content_type,
                    object_id=str(pk),
                    field_name=name,
                    status=JobStatus.QUEUED,
                    options=stored_options,
                    force=force,
                    trigger=Trigger.COMMAND,
                    source_name=source,
                    created_at=now,
                    updated_at=now,
                )
                for pk, source in batch
            ]
        )
        if any(job.pk is None for job in jobs):  # a backend that cannot return ids
            object_ids = [str(pk) for pk, _ in batch]
            by_object = dict(
                RemovalJob.objects.filter(
                    content_type=content_type,
                    field_name=name,
                    object_id__in=object_ids,
                    created_at=now,
                    trigger=Trigger.COMMAND,
                ).values_list("object_id", "pk")
            )
            for job in jobs:
                job.pk = by_object[job.object_id]
        first_new = min(job.pk for job in jobs)
        object_ids = [job.object_id for job in jobs]
        RemovalJob.objects.filter(
            content_type=content_type,
            field_name=name,
            object_id__in=object_ids,
            status__in=UNFINISHED,
            pk__lt=first_new,
        ).update(
            status=JobStatus.SUPERSEDED,
            updated_at=now,
            finished_at=now,
            superseded_by=Subquery(
                RemovalJob.objects.filter(
                    content_type=content_type,
                    field_name=name,
                    object_id=OuterRef("object_id"),
                    pk__gte=first_new,
                )
                .order_by("-pk")
                .values("pk")[:1]
            ),
        )
        model._base_manager.filter(pk__in=[pk for pk, _ in batch]).update(
            **{
                pointer: Case(
                    *[When(pk=pk, then=job.pk) for (pk, _), job in zip(batch, jobs, strict=True)],
                    output_field=models.BigIntegerField(),
                )
            }
        )
        job_ids = [job.pk for job in jobs]
        transaction.on_commit(lambda: _enqueue_all(job_ids), robust=True)


def _enqueue_all(job_ids: list[int]) -> None:
    for job_id in job_ids:
        services.enqueue_submit(job_id)
