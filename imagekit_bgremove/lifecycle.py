"""The job's state machine and the moves every stage shares, one floor below ``services/``.

``MOVES`` is the one table of allowed moves; ``transition`` is the only writer of a job's
``status`` and refuses a move the table does not list. Every move is one conditional UPDATE, so
of two parties making the same move exactly one wins, and a worker holding a lease loses once
its lease was handed on. A move that settles a job's result or fate also settles the jobs
waiting on it (``settle_waiters``: identical images are paid for once), so the stages that fail,
cancel or finish a job need not know that others wait.

Also here: failing or finishing a job (telling the receivers of the public signals after
commit) and superseding older jobs of an image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from . import queueing
from .conf import app_settings
from .models import FINISHED, UNFINISHED, JobStatus, RemovalJob, new_lease
from .signals import removal_failed, removal_succeeded

logger = logging.getLogger(__name__)

S = JobStatus
_ENDS = (S.FAILED, S.SUPERSEDED, S.CANCELLED)

#: Every allowed move: state -> the states it may move to.
MOVES: dict[str, tuple[str, ...]] = {
    S.QUEUED: (S.SUBMITTING, S.RECEIVED, *_ENDS),
    S.SUBMITTING: (S.QUEUED, S.PENDING, S.WAITING, S.RECEIVED, *_ENDS),
    S.WAITING: (S.QUEUED, S.RECEIVED, *_ENDS),
    S.PENDING: (S.QUEUED, S.RECEIVED, *_ENDS),
    S.RECEIVED: (S.RECEIVED, S.SUCCEEDED, *_ENDS),
    S.FAILED: (S.RECEIVED,),  # a late result that can be trusted
    S.SUCCEEDED: (),
    S.SUPERSEDED: (),
    S.CANCELLED: (),
}

#: Moves after which the jobs waiting on the moved one can be settled.
_SETTLES_WAITERS = (S.RECEIVED, S.SUCCEEDED, *_ENDS)


def moves_table() -> str:
    """``MOVES`` as the Markdown table docs/ARCHITECTURE.md shows (a test keeps them equal)."""
    rows = ["| from | may move to |", "|---|---|"]
    for source, targets in MOVES.items():
        rows.append(f"| {source} | {', '.join(targets) or '(finished)'} |")
    return "\n".join(rows)


def transition(
    pk: int | list[int],
    sources: Iterable[str],
    target: str,
    *,
    lease: int | None = None,
    **changes: Any,
) -> int:
    """Move job ``pk`` (or each of a list) from one of ``sources`` to ``target`` in one UPDATE;
    returns how many moved. Raises ValueError for a move ``MOVES`` does not allow.

    The database decides the race: of two workers (or a worker and a webhook) trying the same
    move, exactly one sees a row count of 1. With ``lease``, only the holder of that token may
    move the job: a worker that reconcile replaced (its lease expired) loses even when the
    status still matches. Every move hands out a new token (0 unless ``lease_token`` is given),
    so whoever held the old one can no longer move the job."""
    sources = list(sources)
    refused = [source for source in sources if target not in MOVES[source]]
    if refused:
        raise ValueError(f"{', '.join(refused)} -> {target} is not an allowed move")
    changes.setdefault("updated_at", timezone.now())
    changes.setdefault("lease_token", 0)
    if "lease_expires_at" not in changes and not changes["lease_token"]:
        changes["lease_expires_at"] = None
    if target in FINISHED:
        changes.setdefault("finished_at", changes["updated_at"])
    pks = pk if isinstance(pk, list) else [pk]
    jobs = RemovalJob.objects.filter(pk__in=pks, status__in=sources)
    if lease is not None:
        jobs = jobs.filter(lease_token=lease)
    moved = jobs.update(status=target, **changes)
    if moved and target in _SETTLES_WAITERS:
        settle_waiters(pks)
    return moved


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
    changes: dict[str, Any] = {
        "lease_token": lease,
        "lease_expires_at": now + timedelta(seconds=float(app_settings.TASK_LEASE_SECONDS)),
        "next_attempt_at": None,
        "updated_at": now,
        attempts: models.F(attempts) + 1,
    }
    if become is not None:
        moved = transition(job_id, [status], become, **changes)
    else:  # a worker taking the job in its state: no move, and only once the last lease ran out
        jobs = RemovalJob.objects.filter(pk=job_id, status=status)
        if free:
            jobs = jobs.filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        moved = jobs.update(**changes)
    if not moved:
        return None
    return RemovalJob.objects.select_related("content_type").get(pk=job_id), lease


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
        if not transition(job_id, sources, JobStatus.FAILED, lease=lease, **changes):
            return False
        send_on_commit(removal_failed, job_id)
    return True


def cancel(job_id: int, sources: list[str], *, lease: int | None = None, **changes: Any) -> bool:
    return bool(transition(job_id, sources, JobStatus.CANCELLED, lease=lease, **changes))


def succeed(job: RemovalJob, *, lease: int, **changes: Any) -> bool:
    """``received`` → ``succeeded`` for the holder of ``lease``. Returns whether it moved."""
    with transaction.atomic():
        if not transition(
            job.pk, [JobStatus.RECEIVED], JobStatus.SUCCEEDED, lease=lease, **changes
        ):
            return False
        send_on_commit(removal_succeeded, job.pk)
    return True


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
    if older:
        transition(older, UNFINISHED, JobStatus.SUPERSEDED, superseded_by_id=job.pk, updated_at=now)
    return older


def settle_waiters(original_ids: int | list[int]) -> int:
    """Settle the jobs waiting on ``original_ids`` that their current state allows. Returns how
    many moved."""
    ids = original_ids if isinstance(original_ids, list) else [original_ids]
    waiting = RemovalJob.objects.filter(
        duplicate_of_id__in=ids, status=JobStatus.WAITING
    ).values_list("pk", flat=True)
    return sum(settle_waiter(job_id) for job_id in list(waiting))


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
        if transition(job.pk, [JobStatus.WAITING], JobStatus.RECEIVED, **fields):
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
        if transition(
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
