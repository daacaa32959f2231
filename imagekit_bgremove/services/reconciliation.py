"""Stage 5: nothing stays unfinished without a reason.

- Each pending job is checked with ImageKit after ``RECONCILE_AFTER_SECONDS`` and then ever less
  often (a deferred ``check_removal`` task), so a lost callback costs a delay, not the result.
- ``reconcile()`` (``reconcile_removals`` from cron, and the admin's "Reconcile now") is the
  safety net: it fails whatever is past its deadline, takes back jobs whose worker died (lease
  expired), enqueues again what was recorded but never enqueued (at most once per
  ``RECONCILE_AFTER_SECONDS`` per job, so a backlog is not multiplied), settles waiting jobs and
  checks pending jobs with ImageKit.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db.models import Q
from django.utils import timezone

from .. import lifecycle, queueing
from ..conf import app_settings
from ..exceptions import ImageKitError
from ..models import UNFINISHED, JobStatus, RemovalJob
from . import remote, results

logger = logging.getLogger(__name__)

#: The longest wait between two checks of one job with ImageKit.
CHECK_INTERVAL_MAX = timedelta(hours=1)


def _seconds(name: str) -> timedelta:
    return timedelta(seconds=float(getattr(app_settings, name)))


def schedule_check(job_id: int, submitted_at: datetime, now: datetime) -> None:
    """Check with ImageKit later whether a pending job's callback was lost: first after
    RECONCILE_AFTER_SECONDS, then after as long again as it has waited (the one backoff policy,
    with the time waited as the floor), at most CHECK_INTERVAL_MAX apart, and at the deadline.
    Needs a backend that can defer tasks; with others, ``reconcile_removals`` does the same."""
    first = float(app_settings.RECONCILE_AFTER_SECONDS)
    waited = (now - submitted_at).total_seconds()
    cap = CHECK_INTERVAL_MAX.total_seconds()
    wait = queueing.backoff(1, base=first, cap=cap, at_least=min(waited, cap))
    deadline = submitted_at + _seconds("PENDING_DEADLINE_SECONDS")
    # A second past the deadline, so that the last check finds the job overdue; once past it,
    # the usual wait (a check due in the past would run again at once, and again).
    run_after = now + wait
    if now <= deadline:
        run_after = min(run_after, deadline + timedelta(seconds=1))
    queueing.enqueue_on_commit(queueing.CHECK, job_id, run_after=run_after)


def check(job_id: int, now: datetime | None = None) -> str:
    """The deferred check of one pending or waiting job (see ``schedule_check``); safe to run
    twice."""
    now = now or timezone.now()
    job = RemovalJob.objects.select_related("duplicate_of").filter(pk=job_id).first()
    if job is not None and job.status == JobStatus.WAITING:
        outcome = check_waiting(job, now)
        if outcome in ("waiting", "error"):
            schedule_check(job.pk, job.restarted_at or job.created_at, now)
        return outcome
    if job is None or job.status != JobStatus.PENDING or job.submitted_at is None:
        return "skipped"
    if now - job.submitted_at < _seconds("RECONCILE_AFTER_SECONDS"):
        return "early"  # a stray early run: the scheduled one is still to come
    outcome = settle_pending(job, now)
    if outcome in ("waiting", "error"):
        schedule_check(job.pk, job.submitted_at, now)
    return outcome


def settle_pending(job: RemovalJob, now: datetime) -> str:
    """Ask ImageKit about a pending job whose callback has not come. Returns "succeeded" (a
    result was found and recorded), "failed", "resubmitted" (a lost request had not taken
    effect), "error" (ImageKit unreachable for now), "waiting" or "unchanged"."""
    RemovalJob.objects.filter(pk=job.pk).update(checked_at=now)
    try:
        result = remote.find_result(job)
    except ImageKitError as exc:
        if exc.retryable:
            return "error"
        failed = lifecycle.fail(
            job.pk,
            [JobStatus.PENDING],
            error_code=remote.error_code(exc),
            error_message=remote.readable(exc, "report on the file"),
            error_details=exc.body if isinstance(exc.body, dict) else None,
        )
        return "failed" if failed else "unchanged"
    if result is not None:
        outcome = results.apply_result(job.pk, result, source="check")
        return "succeeded" if outcome.verdict == "accepted" else "unchanged"
    if job.submission_uncertain:
        # The request whose answer was lost has produced nothing in all this time: it did not
        # take effect. Now it is safe to send it again.
        if lifecycle.transition(
            job.pk,
            [JobStatus.PENDING],
            JobStatus.QUEUED,
            submission_uncertain=False,
            error_code="no_result_after_lost_answer",
            error_message="The request whose answer was lost produced no result; sent again.",
        ):
            queueing.enqueue_on_commit(queueing.SUBMIT, job.pk)
            return "resubmitted"
        return "unchanged"
    if job.submitted_at and now - job.submitted_at > _seconds("PENDING_DEADLINE_SECONDS"):
        return "failed" if _fail_overdue(job.pk, JobStatus.PENDING) else "unchanged"
    return "waiting"


#: What an unfinished job was doing, for the message when it is given up.
_DOING = {
    JobStatus.QUEUED: "waiting to be sent",
    JobStatus.SUBMITTING: "being sent",
    JobStatus.WAITING: "waiting for an identical image's result",
    JobStatus.PENDING: "waiting for ImageKit's answer",
    JobStatus.RECEIVED: "storing the result",
}


def check_waiting(job: RemovalJob, now: datetime) -> str:
    """A job waiting on an identical job: settled by that job's fate; when that job was
    superseded or cancelled while its run was at ImageKit, ImageKit is asked for the run's
    result (its callback may be lost), first for the upload itself when its answer was lost,
    and past the deadline the waiting job is sent on its own. Returns "settled", "waiting" or
    "error"."""
    if lifecycle.settle_waiter(job.pk):
        return "settled"
    original = job.duplicate_of
    if original is None or original.status not in (JobStatus.SUPERSEDED, JobStatus.CANCELLED):
        return "waiting"  # the original's own checks settle it
    if not lifecycle.in_flight(original):
        return "waiting"
    if not original.file_id:
        # Superseded or cancelled while its upload's answer was lost: whether ImageKit has
        # that upload decides whether this job waits for its run or pays for one of its own.
        try:
            stored = remote.find_upload(original)
        except ImageKitError as exc:
            return "error" if exc.retryable else "waiting"
        unknown = RemovalJob.objects.filter(pk=original.pk, file_id="")
        if stored is None:
            # ImageKit's search lags behind an upload, and a late answer may still be storing
            # it: "not there" is believed only once the lost attempt is old.
            if now - original.updated_at < _seconds("RECONCILE_AFTER_SECONDS"):
                return "waiting"
            unknown.update(submission_uncertain=False)
            return "settled" if lifecycle.settle_waiter(job.pk) else "waiting"
        file_id = str(stored.get("fileId") or "")[:100]
        # Sent no later than this job started waiting: its deadline counts from then.
        sent = original.submitted_at or job.restarted_at or job.created_at
        unknown.update(
            file_id=file_id, file_path=str(stored.get("filePath") or "")[:500], submitted_at=sent
        )
        original.file_id, original.submitted_at = file_id, sent
    try:
        result = remote.find_result(original)
    except ImageKitError as exc:
        return "error" if exc.retryable else "waiting"
    if result is not None:
        results.apply_result(original.pk, result, source="check of a waiting job")
    elif original.submitted_at and now - original.submitted_at > _seconds(
        "PENDING_DEADLINE_SECONDS"
    ):
        RemovalJob.objects.filter(pk=original.pk, result_url="").update(
            error_code="no_result", error_message="No result came from ImageKit in time."
        )
    return "settled" if lifecycle.settle_waiter(job.pk) else "waiting"


def _fail_overdue(job_id: int, status: str) -> bool:
    hours = float(app_settings.PENDING_DEADLINE_SECONDS) / 3600
    return lifecycle.fail(
        job_id,
        [status],
        error_code="no_result",
        error_message=(
            f"No result from ImageKit after {hours:g} hours (PENDING_DEADLINE_SECONDS); the job "
            f"was still {_DOING.get(status, status)}. Retry the removal."
        ),
    )


def _claim_requeue(job_id: int, status: str, after: datetime, now: datetime) -> bool:
    """Note that reconcile enqueues this job now, unless it did so within the window."""
    return bool(
        RemovalJob.objects.filter(pk=job_id, status=status)
        .filter(Q(requeued_at__isnull=True) | Q(requeued_at__lt=after))
        .update(requeued_at=now)
    )


def _remove_orphaned_partials() -> int:
    """Copies that an interrupted finalize left behind on jobs that have since finished."""
    removed = 0
    for job in (
        RemovalJob.objects.exclude(status__in=UNFINISHED)
        .exclude(partial_result_name="")
        .select_related("content_type")[:500]
    ):
        model = job.content_type.model_class()
        try:
            storage = model._meta.get_field(job.field_name).storage  # type: ignore[union-attr]
        except (AttributeError, FieldDoesNotExist):
            logger.warning("job %s: its model or field is gone; partial copy left", job.pk)
            continue
        if job.partial_result_name != job.result_name and storage.exists(job.partial_result_name):
            storage.delete(job.partial_result_name)
            removed += 1
        RemovalJob.objects.filter(pk=job.pk, partial_result_name=job.partial_result_name).update(
            partial_result_name=""
        )
    return removed


def reconcile(now: datetime | None = None) -> dict[str, int]:
    """Settle what callbacks, queues and dead workers left behind. Returns counts."""
    now = now or timezone.now()
    after = now - _seconds("RECONCILE_AFTER_SECONDS")
    deadline = now - _seconds("PENDING_DEADLINE_SECONDS")
    summary: dict[str, Any] = dict.fromkeys(
        (
            "overdue",
            "checked",
            "succeeded",
            "failed",
            "resubmitted",
            "requeued",
            "unstuck",
            "finalize_requeued",
            "waiting_settled",
            "partials_removed",
            "errors",
        ),
        0,
    )
    jobs = RemovalJob.objects

    # Past the deadline, whatever the state: failed, with the state named.
    overdue = jobs.filter(
        Q(status=JobStatus.PENDING, submitted_at__lt=deadline)
        | Q(
            Q(restarted_at__isnull=True) | Q(restarted_at__lt=deadline),
            status__in=[s for s in UNFINISHED if s != JobStatus.PENDING],
            created_at__lt=deadline,
        )
    ).values_list("pk", "status")
    for job_id, status in list(overdue):
        summary["overdue"] += _fail_overdue(job_id, status)

    # A worker died mid-submission (its lease ran out). The request may have been sent: the
    # next attempt asks ImageKit before sending it again.
    for job_id in list(
        jobs.filter(status=JobStatus.SUBMITTING, lease_expires_at__lt=now).values_list(
            "pk", flat=True
        )
    ):
        if lifecycle.transition(
            job_id,
            [JobStatus.SUBMITTING],
            JobStatus.QUEUED,
            submission_uncertain=True,
            error_code="worker_lost",
            error_message="The worker submitting this job stopped; queued again.",
        ):
            summary["unstuck"] += 1
            queueing.enqueue_now(queueing.SUBMIT, job_id)

    # Queued but never enqueued (a crash after commit, a failed enqueue), or whose task was lost.
    queued = jobs.filter(status=JobStatus.QUEUED).filter(
        Q(error_code="enqueue_failed")
        | Q(next_attempt_at__lte=now)
        | Q(next_attempt_at__isnull=True, updated_at__lt=after)
    )
    for job_id in list(queued.values_list("pk", flat=True)):
        if _claim_requeue(job_id, JobStatus.QUEUED, after, now):
            summary["requeued"] += 1
            queueing.enqueue_now(queueing.SUBMIT, job_id)

    # Received results not stored: the finalize task was lost, or its worker died.
    received = jobs.filter(status=JobStatus.RECEIVED).filter(
        Q(lease_expires_at__lt=now)
        | Q(lease_expires_at__isnull=True, next_attempt_at__lte=after)
        | Q(lease_expires_at__isnull=True, next_attempt_at__isnull=True, updated_at__lt=after)
    )
    for job_id in list(received.values_list("pk", flat=True)):
        if _claim_requeue(job_id, JobStatus.RECEIVED, after, now):
            summary["finalize_requeued"] += 1
            queueing.enqueue_now(queueing.FINALIZE, job_id)

    for job in jobs.filter(status=JobStatus.WAITING).select_related("duplicate_of"):
        summary["waiting_settled"] += check_waiting(job, now) == "settled"

    # Pending at ImageKit with no callback yet, and not asked about lately (each pending job also
    # has its own deferred checks: reconcile is the safety net, not a second poller).
    stale = jobs.filter(status=JobStatus.PENDING, submitted_at__lt=after).filter(
        Q(checked_at__isnull=True) | Q(checked_at__lt=after)
    )
    for job in stale.order_by("pk").iterator(chunk_size=200):
        summary["checked"] += 1
        outcome = settle_pending(job, now)
        if outcome in ("succeeded", "failed", "resubmitted"):
            summary[outcome] += 1
        elif outcome == "error":
            summary["errors"] += 1

    summary["partials_removed"] = _remove_orphaned_partials()
    return summary
