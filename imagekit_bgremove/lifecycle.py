"""The moves every stage shares, one floor below the stages in ``services/``.

Failing or finishing a job (and telling the receivers of the public signals after commit),
superseding older jobs of an image, releasing the jobs that wait on another job's identical
image, and keeping the object's two pointers (``<field>_removal``: the latest job;
``<field>_result``: the latest job that succeeded) up to date.

Every move is ``RemovalJob.objects.transition``: one conditional UPDATE, so of two parties making
the same move exactly one wins, and a worker holding a lease loses once its lease was handed on.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import connections, models, router, transaction
from django.db.models import Q
from django.utils import timezone

from . import queueing, statements
from .conf import app_settings
from .models import UNFINISHED, JobStatus, RemovalJob, new_lease
from .signals import removal_failed, removal_succeeded

logger = logging.getLogger(__name__)

RESULT_FIELDS = (
    "result_file_id",
    "result_version_id",
    "result_url",
    "result_mime",
    "result_size",
    "result_width",
    "result_height",
)


class Refused(Exception):
    """What a worker cannot take as it is (a source too large, a result from a host that is not
    allowed, ...): the job fails at once with ``code``, and is not retried."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def claim(
    job_id: int, status: str, *, attempts: str, become: str | None = None, free: bool = False
) -> tuple[RemovalJob, int] | None:
    """Take job ``job_id`` in ``status`` for this worker: a fresh lease for
    ``TASK_LEASE_SECONDS``, one more of the ``attempts`` counter, and (with ``become``) the
    worker's state. With ``free``, only when no other worker's lease is still running.
    Returns the job and the lease, or None when another party has it."""
    lease = new_lease()
    now = timezone.now()
    jobs = RemovalJob.objects.filter(pk=job_id, status=status)
    if free:
        jobs = jobs.filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
    changes: dict[str, Any] = {
        "lease_token": lease,
        "lease_expires_at": now + timedelta(seconds=float(app_settings.TASK_LEASE_SECONDS)),
        "next_attempt_at": None,
        "updated_at": now,
        attempts: models.F(attempts) + 1,
    }
    if become is not None:
        changes["status"] = become
    if not jobs.update(**changes):
        return None
    return RemovalJob.objects.select_related("content_type").get(pk=job_id), lease


def pointer_names(field_name: str) -> tuple[str, str]:
    """The object's pointers to its latest job and to its latest successful job."""
    return f"{field_name}_removal", f"{field_name}_result"


def point_latest_at(
    model: type[models.Model], pk: Any, field_name: str, job_id: int, *, using: str | None = None
) -> None:
    """Point the object's ``<field>_removal`` at ``job_id`` (on the save path, the ORM's update
    costs more than the statement itself)."""
    alias = using or router.db_for_write(model)
    pointer = model._meta.get_field(pointer_names(field_name)[0])
    statements.update_column(connections[alias], pointer, pk, job_id)


def target_model(job: RemovalJob) -> type[models.Model] | None:
    return job.content_type.model_class()


def send_on_commit(signal: Any, job_id: int) -> None:
    """Send ``signal`` once the transaction that settled the job has committed."""

    def send() -> None:
        job = RemovalJob.objects.select_related("content_type").filter(pk=job_id).first()
        if job is None:
            return
        instance = job.get_target()
        sender = type(instance) if instance is not None else RemovalJob
        signal.send_robust(sender=sender, job=job, instance=instance)

    transaction.on_commit(send, robust=True)


def fail(
    job_id: int, sources: list[str] | tuple[str, ...], *, lease: int | None = None, **changes: Any
) -> bool:
    """Move the job to ``failed`` if it is still in one of ``sources`` (and, with ``lease``,
    still held by that lease); then tell ``removal_failed``'s receivers after commit, and settle
    the jobs waiting on this one. Returns whether the job moved."""
    with transaction.atomic():
        if not RemovalJob.objects.transition(
            job_id, sources, JobStatus.FAILED, lease=lease, **changes
        ):
            return False
        send_on_commit(removal_failed, job_id)
        settle_waiters(job_id)
    return True


def cancel(job_id: int, sources: list[str], *, lease: int | None = None, **changes: Any) -> bool:
    with transaction.atomic():
        if not RemovalJob.objects.transition(
            job_id, sources, JobStatus.CANCELLED, lease=lease, **changes
        ):
            return False
        settle_waiters(job_id)
    return True


def succeed(job: RemovalJob, *, lease: int, **changes: Any) -> bool:
    """``received`` → ``succeeded`` for the holder of ``lease``, pointing the object's result
    pointer at the job (unless a newer job already succeeded). Returns whether it moved."""
    with transaction.atomic():
        if not RemovalJob.objects.transition(
            job.pk,
            [JobStatus.RECEIVED],
            JobStatus.SUCCEEDED,
            lease=lease,
            **changes,
        ):
            return False
        _point_result_at(job)
        send_on_commit(removal_succeeded, job.pk)
        settle_waiters(job.pk)
    return True


def _point_result_at(job: RemovalJob) -> None:
    model = target_model(job)
    if model is None:
        return
    _, result_pointer = pointer_names(job.field_name)
    model._base_manager.filter(pk=job.object_id).filter(
        Q(**{f"{result_pointer}__isnull": True}) | Q(**{f"{result_pointer}__lt": job.pk})
    ).update(**{result_pointer: job.pk})


def supersede_older(job: RemovalJob) -> list[int]:
    """Supersede the unfinished jobs of ``job``'s image other than ``job``. Call it inside the
    transaction that creates ``job``, after locking the object's row. Returns their ids."""
    now = timezone.now()
    older = list(
        RemovalJob.objects.filter(
            content_type_id=job.content_type_id,
            object_id=job.object_id,
            field_name=job.field_name,
            status__in=UNFINISHED,
        )
        .exclude(pk=job.pk)
        .values_list("pk", flat=True)
    )
    for old_id in older:
        RemovalJob.objects.transition(
            old_id,
            UNFINISHED,
            JobStatus.SUPERSEDED,
            superseded_by_id=job.pk,
            updated_at=now,
        )
        settle_waiters(old_id)
    return older


def settle_waiters(original_id: int) -> int:
    """Settle the jobs waiting on ``original_id`` that its current state allows. Returns how many
    moved."""
    waiting = RemovalJob.objects.filter(
        duplicate_of_id=original_id, status=JobStatus.WAITING
    ).values_list("pk", flat=True)
    return sum(settle_waiter(job_id) for job_id in list(waiting))


def record_source_file(job_id: int, file_id: str, file_path: str) -> None:
    """Name the file at ImageKit that job ``job_id`` uploaded, on it and on the identical jobs
    that took its result before the file was known (a result that came before the upload's
    answer), where none is recorded yet."""
    if not file_id:
        return
    fields = {"file_id": file_id[:100], "file_path": file_path[:500]}
    RemovalJob.objects.filter(pk=job_id, file_id="").update(**fields)
    RemovalJob.objects.filter(duplicate_of_id=job_id, file_id="").update(**fields)


def in_flight(job: RemovalJob) -> bool:
    """Whether ImageKit may still be working on a run this superseded or cancelled job paid
    for: it was sent (it has a fileId, or its upload's answer was lost and nobody has looked
    the upload up yet), and neither its result nor its failure has come."""
    return (
        (bool(job.file_id) or job.submission_uncertain)
        and not job.result_url
        and job.error_code not in ("removal_failed", "no_result")
    )


def settle_waiter(job_id: int) -> bool:
    """Give a waiting job its original's result or fate. Returns whether it moved.

    - the original has its result (received or succeeded, or kept by a superseded or cancelled
      original): it is copied over and stored for this job too;
    - the original failed, or remove.bg refused the run a superseded original paid for: this
      job fails with the same reason;
    - the original was superseded or cancelled before ImageKit had its image: nothing is wrong
      with this job's image, so it is queued to be sent on its own. While the superseded
      original's run is still at ImageKit, the job keeps waiting for it."""
    job = RemovalJob.objects.select_related("duplicate_of").filter(pk=job_id).first()
    if job is None or job.status != JobStatus.WAITING or job.duplicate_of is None:
        return False
    original = job.duplicate_of
    gone = original.status in (JobStatus.SUPERSEDED, JobStatus.CANCELLED)
    if original.result_url and (
        gone or original.status in (JobStatus.RECEIVED, JobStatus.SUCCEEDED)
    ):
        fields = {name: getattr(original, name) for name in RESULT_FIELDS}
        fields["file_id"] = original.file_id
        if RemovalJob.objects.transition(job.pk, [JobStatus.WAITING], JobStatus.RECEIVED, **fields):
            queueing.enqueue_on_commit(queueing.FINALIZE, job.pk)
            return True
        return False
    if original.status == JobStatus.FAILED or (gone and original.error_code == "removal_failed"):
        return fail(
            job.pk,
            [JobStatus.WAITING],
            error_code=original.error_code or "original_failed",
            error_message=(
                f"The identical job #{original.pk} failed: "
                f"{original.error_message or 'no reason given'}"
            )[:5000],
            error_details=original.error_details,
        )
    if gone and not in_flight(original):
        if RemovalJob.objects.transition(
            job.pk,
            [JobStatus.WAITING],
            JobStatus.QUEUED,
            duplicate_of=None,
            next_attempt_at=None,
            restarted_at=timezone.now(),  # a new start: its deadline counts from now
        ):
            queueing.enqueue_on_commit(queueing.SUBMIT, job.pk)
            return True
        return False
    return False
