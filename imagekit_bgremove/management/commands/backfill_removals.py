"""Request background removals for existing rows, streaming in primary-key batches.

Memory stays bounded (one batch of ids and names at a time) and every batch costs the same
number of queries (see ``services.request_batch``), plus one enqueue per job.
"""

from __future__ import annotations

import time

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import models
from django.db.models import Q

from imagekit_bgremove import services
from imagekit_bgremove.fields import BackgroundRemovalImageField
from imagekit_bgremove.inputs import check_options
from imagekit_bgremove.models import JobStatus, Trigger
from imagekit_bgremove.removebg import OptionsError, RemoveBgOptions
from imagekit_bgremove.state import with_removal_status


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
            check_options(options)
        except OptionsError as exc:
            raise CommandError(f"--options: {exc}") from exc
        batch_size = opts["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        try:
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
        except services.BudgetExhausted as exc:
            raise CommandError(f"{exc} Batches before this one were requested.") from exc
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
    manager = model._base_manager
    rows = manager.exclude(**{name: ""}).exclude(**{f"{name}__isnull": True})
    if only_missing:
        status = f"{name}_removal_status"
        rows = with_removal_status(rows, name).filter(
            Q(**{f"{status}__isnull": True})
            | Q(**{f"{status}__in": [JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SUPERSEDED]})
        )
    pk_name = model._meta.pk.attname
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
            services.request_batch(
                model, field, batch, options=options, force=force, trigger=Trigger.COMMAND
            )
        if progress is not None:
            progress(done, batches)
    return {"requested": done, "batches": batches, "seconds": time.monotonic() - started}
