"""Delete the stored cut-outs that a newer cut-out of the same image field has replaced and,
with ``--imagekit-originals``, the files the app uploaded to ImageKit for them."""

from __future__ import annotations

from typing import Any

from django.core.files.storage import Storage
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from imagekit_bgremove.exceptions import ImageKitError
from imagekit_bgremove.models import ContentClaim, JobStatus, RemovalJob
from imagekit_bgremove.services import remote


def replaced_jobs() -> QuerySet[RemovalJob]:
    """Succeeded jobs that are not the latest success of their field.

    The latest success is what the field shows (``last_success``, kept while a newer job runs
    or fails); every older result is only reachable from the job's own admin page.
    """
    return RemovalJob.objects.filter(_replaced())


def _replaced() -> Q:
    newer = RemovalJob.objects.filter(
        status=JobStatus.SUCCEEDED,
        content_type=OuterRef("content_type"),
        object_id=OuterRef("object_id"),
        field_name=OuterRef("field_name"),
        pk__gt=OuterRef("pk"),
    )
    return Q(status=JobStatus.SUCCEEDED) & Q(Exists(newer))


def superseded_results() -> QuerySet[RemovalJob]:
    """Replaced jobs that still have a stored copy."""
    return replaced_jobs().exclude(result_name="").select_related("content_type").order_by("pk")


def uploaded_originals() -> QuerySet[RemovalJob]:
    """Replaced jobs whose file at ImageKit the app uploaded itself and has not deleted yet.

    A job on a file the user brought (``imagekit_file_id_field``) has no ``upload_path``; a job
    that shared an identical image's result has ``duplicate_of``: neither uploaded anything.
    """
    return (
        replaced_jobs()
        .exclude(upload_path="")
        .exclude(file_id="")
        .filter(duplicate_of__isnull=True, original_deleted_at__isnull=True)
        .order_by("pk")
    )


def _still_used(job: RemovalJob) -> bool:
    """Whether a job that is not itself replaced uses ``job``'s file: a twin that shared or
    waits for its result, or any job naming the file."""
    users = RemovalJob.objects.filter(Q(duplicate_of=job) | Q(file_id=job.file_id))
    return users.exclude(_replaced()).exists()


class Command(BaseCommand):
    help = (
        "Delete from storage the cut-outs that a newer cut-out of the same image replaced "
        "(the jobs stay, with ImageKit's URL). Lists them unless --delete is given."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--delete", action="store_true", help="Really delete the files.")
        parser.add_argument(
            "--imagekit-originals",
            action="store_true",
            help=(
                "Also delete at ImageKit the files the app uploaded for those jobs (the original "
                "and its cut-out versions), unless a current job still uses them."
            ),
        )

    def handle(
        self, *args: Any, delete: bool, imagekit_originals: bool, verbosity: int, **options: Any
    ) -> None:
        storages: dict[tuple[int, str], Storage | None] = {}
        count = size = 0
        for job in superseded_results().iterator(chunk_size=500):
            key = (job.content_type_id, job.field_name)
            if key not in storages:
                storages[key] = _storage(job)
            storage = storages[key]
            if storage is None:
                self.stderr.write(f"Job {job.pk}: its model or field is gone; skipped.")
                continue
            count += 1
            size += job.result_size or 0
            if verbosity > 1:
                self.stdout.write(f"job {job.pk}: {job.result_name}")
            if not delete:
                continue
            # The file first, then the name: a run killed between the two is finished by the
            # next one, and no file is ever left that no job names.
            storage.delete(job.result_name)
            RemovalJob.objects.filter(pk=job.pk, result_name=job.result_name).update(result_name="")
        verb = "Deleted" if delete else "Would delete"
        self.stdout.write(
            f"{verb} {count} superseded cut-out{'' if count == 1 else 's'} "
            f"({filesizeformat(size)})." + ("" if delete else " Run with --delete to delete them.")
        )
        if imagekit_originals:
            self._prune_originals(delete, verbosity)

    def _prune_originals(self, delete: bool, verbosity: int) -> None:
        count = failed = 0
        for job in uploaded_originals().iterator(chunk_size=500):
            if not delete:
                if not _still_used(job):
                    count += 1
                    if verbosity > 1:
                        self.stdout.write(f"job {job.pk}: ImageKit file {job.file_id}")
                continue
            with transaction.atomic():
                # Locking the job's content claim first keeps an identical new job from
                # starting to share its result while we look; dropping the claim makes the
                # next identical image pay again instead of sharing a deleted file.
                list(ContentClaim.objects.select_for_update().filter(job=job))
                if _still_used(job):
                    continue
                ContentClaim.objects.filter(job=job).delete()
            # ImageKit first, then the record: a run killed in between deletes again, which
            # finds the file gone (a 404 counts as deleted).
            try:
                remote.client().delete_file(job.file_id)
            except ImageKitError as exc:
                failed += 1
                self.stderr.write(f"Job {job.pk}: {remote.readable(exc, 'delete the file')}")
                continue
            RemovalJob.objects.filter(pk=job.pk).update(original_deleted_at=timezone.now())
            count += 1
            if verbosity > 1:
                self.stdout.write(f"job {job.pk}: deleted ImageKit file {job.file_id}")
        verb = "Deleted" if delete else "Would delete"
        self.stdout.write(
            f"{verb} {count} uploaded original{'' if count == 1 else 's'} at ImageKit."
        )
        if failed:
            raise CommandError(f"{failed} ImageKit file(s) could not be deleted; see above.")


def _storage(job: RemovalJob) -> Storage | None:
    model = job.content_type.model_class()
    if model is None:
        return None
    try:
        return model._meta.get_field(job.field_name).storage
    except Exception:  # a field renamed or removed since
        return None
