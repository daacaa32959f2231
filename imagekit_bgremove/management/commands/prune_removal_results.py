"""Delete the stored cut-outs that a newer cut-out of the same image field has replaced."""

from __future__ import annotations

from typing import Any

from django.core.files.storage import Storage
from django.core.management.base import BaseCommand
from django.db.models import OuterRef, Subquery
from django.template.defaultfilters import filesizeformat

from imagekit_bgremove.models import JobStatus, RemovalJob


def superseded_results():
    """Succeeded jobs with a stored copy that are not the latest success of their field.

    The latest success is what the field shows (``last_success``, kept while a newer job runs
    or fails); every older copy is only reachable from the job's own admin page.
    """
    latest = RemovalJob.objects.filter(
        status=JobStatus.SUCCEEDED,
        content_type=OuterRef("content_type"),
        object_id=OuterRef("object_id"),
        field_name=OuterRef("field_name"),
    ).order_by("-id")
    return (
        RemovalJob.objects.filter(status=JobStatus.SUCCEEDED)
        .exclude(result_name="")
        .exclude(pk=Subquery(latest.values("pk")[:1]))
        .select_related("content_type")
        .order_by("pk")
    )


class Command(BaseCommand):
    help = (
        "Delete from storage the cut-outs that a newer cut-out of the same image replaced "
        "(the jobs stay, with ImageKit's URL). Lists them unless --delete is given."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--delete", action="store_true", help="Really delete the files.")

    def handle(self, *args: Any, delete: bool, verbosity: int, **options: Any) -> None:
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


def _storage(job: RemovalJob) -> Storage | None:
    model = job.content_type.model_class()
    if model is None:
        return None
    try:
        return model._meta.get_field(job.field_name).storage
    except Exception:  # a field renamed or removed since
        return None
