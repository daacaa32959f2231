"""Stage 3: a result or a failure arrives, from ImageKit's callback or from asking ImageKit.

Whatever the source, a result moves the job to ``received`` (the copy into storage is the
finalize task's work) and a failure to ``failed``; repeats change nothing. The job row is locked
while the decision is made, so a callback and a check arriving together settle the job once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction

from .. import lifecycle, queueing
from ..callback import Callback, RemoteFile, parse_callback
from ..conf import app_settings
from ..models import JobStatus, RemovalJob

#: States a result may arrive in. ``queued``: a submission whose answer was lost took effect.
#: ``failed`` is added when the result can be trusted (see ``_accept_result``).
RESULT_SOURCES = (
    JobStatus.QUEUED,
    JobStatus.SUBMITTING,
    JobStatus.PENDING,
    JobStatus.RECEIVED,
)
FAILURE_SOURCES = (JobStatus.QUEUED, JobStatus.SUBMITTING, JobStatus.PENDING)
_OPTION_WORDS = re.compile(r"bg_colou?r|bg_image_url|add_shadow|semitransparency|option", re.I)


@dataclass
class CallbackOutcome:
    verdict: str  # "accepted", "duplicate", "ignored" or "early" (not yet: ask for it again)
    message: str
    job: RemovalJob | None = None
    #: Whether the job's row was written (only then is the delivery worth a row of its own).
    changed: bool = False


def _same_result(job: RemovalJob, result: RemoteFile) -> bool:
    if not job.result_url or job.file_id != result.file_id:
        return False
    if result.version_id or job.result_version_id:
        return job.result_version_id == result.version_id
    return job.result_url == result.url


def apply_callback(job_id: int, payload: Any, *, signed: bool = False) -> CallbackOutcome:
    """Apply ImageKit's callback for job ``job_id`` (the id comes from the verified token).
    ``signed``: the body carried a valid ImageKit signature. Raises CallbackError for a body
    that is not a remove-bg callback."""
    return apply_parsed_callback(job_id, parse_callback(payload), signed=signed)


def apply_parsed_callback(
    job_id: int,
    callback: Callback,
    *,
    signed: bool,
    then: Callable[[CallbackOutcome], None] | None = None,
) -> CallbackOutcome:
    """``then``, when given, runs with the outcome inside the same transaction (the webhook
    records its delivery there: one commit for the whole callback)."""
    return _apply(job_id, callback, trusted=signed, source="callback", then=then)


def apply_result(job_id: int, result: RemoteFile, *, source: str) -> CallbackOutcome:
    """Record ``result``, read from ImageKit's API (so trusted), as job ``job_id``'s result."""
    callback = Callback(succeeded=True, file_id=result.file_id, result=result)
    return _apply(job_id, callback, trusted=True, source=source)


def _apply(
    job_id: int,
    callback: Callback,
    *,
    trusted: bool,
    source: str,
    then: Callable[[CallbackOutcome], None] | None = None,
) -> CallbackOutcome:
    with transaction.atomic():
        outcome = _decide(job_id, callback, trusted=trusted, source=source)
        if then is not None:
            then(outcome)
        return outcome


def _decide(job_id: int, callback: Callback, *, trusted: bool, source: str) -> CallbackOutcome:
    # Primary key only, no ORDER BY: .first() would add one.
    job = next(iter(RemovalJob.objects.select_for_update().filter(pk=job_id).order_by()), None)
    if job is None:
        return CallbackOutcome("ignored", f"Job #{job_id} does not exist (deleted?).")
    if job.status == JobStatus.WAITING:
        return CallbackOutcome(
            "ignored", f"Job #{job.pk} is {job.status}; the {source} is ignored.", job
        )
    if job.status in (JobStatus.SUPERSEDED, JobStatus.CANCELLED):
        return _keep_for_identical(job, callback, trusted=trusted, source=source)
    if callback.succeeded:
        assert callback.result is not None
        return _accept_result(job, callback.result, trusted=trusted, source=source)
    return _accept_failure(job, callback)


def _moved(job: RemovalJob, status: str, fields: dict[str, Any]) -> None:
    """What a transition just wrote, on the instance in hand (no second read)."""
    job.status = status
    for name, value in fields.items():
        setattr(job, name, value)


def _not_its_own(job: RemovalJob, callback: Callback) -> CallbackOutcome | None:
    """Why ``callback`` cannot be this job's, or None when it can: a result or a failure counts
    only for the file the job uploaded or updated (recorded from ImageKit's own answer, never
    from a callback), and a result only for a version other than the one the job sent."""
    named = callback.result.file_id if callback.result is not None else callback.file_id
    if not job.file_id and job.status in (JobStatus.QUEUED, JobStatus.SUBMITTING):
        # ImageKit answered the callback before our worker recorded the upload's answer: the
        # callback cannot be bound yet. "early" is answered with a non-200, so ImageKit sends
        # it again later (it retries for a day).
        return CallbackOutcome(
            "early", f"Job #{job.pk} does not know its file at ImageKit yet; send it again.", job
        )
    if not job.file_id or named != job.file_id:
        return CallbackOutcome(
            "ignored",
            f"The callback names file {named or '(none)'}, not the file of job #{job.pk} "
            f"({job.file_id or 'not known yet'}); ignored.",
            job,
        )
    if callback.result is not None and callback.result.version_id == job.source_version_id:
        return CallbackOutcome(
            "ignored", f"The callback names the version job #{job.pk} sent; ignored.", job
        )
    return None


def _keep_for_identical(
    job: RemovalJob, callback: Callback, *, trusted: bool, source: str
) -> CallbackOutcome:
    """A job that was superseded or cancelled while ImageKit worked on it does not take its
    result, but the run was paid for: it is kept on the job (its state unchanged) for the
    identical images waiting on it, or saved later (``dedupe``)."""
    if job.result_url or job.error_code == "removal_failed":
        return CallbackOutcome("ignored", f"Job #{job.pk} is {job.status}; nothing changed.", job)
    refused = _not_its_own(job, callback)
    if refused is not None:
        return refused
    if not (trusted or app_settings.WEBHOOK_CONFIRM_WITH_API):
        # As for a result taken (_accept_result): an identical image's finalize confirms it.
        return CallbackOutcome(
            "ignored", f"Job #{job.pk} is {job.status}; an unsigned callback is not kept.", job
        )
    if callback.succeeded:
        assert callback.result is not None
        changes: dict[str, Any] = callback.result.job_fields()
        kept = "result"
    else:
        changes = {
            "error_code": "removal_failed",
            "error_message": failure_message(callback.reason)[:5000],
            "error_details": callback.error
            if isinstance(callback.error, dict)
            else {"error": callback.error},
        }
        kept = "failure"
    RemovalJob.objects.filter(pk=job.pk, status=job.status).update(**changes)
    lifecycle.settle_waiters(job.pk)
    return CallbackOutcome(
        "ignored",
        f"Job #{job.pk} is {job.status}; its {kept} ({source}) is kept for identical images.",
        job,
        changed=True,
    )


def _accept_result(
    job: RemovalJob, result: RemoteFile, *, trusted: bool, source: str
) -> CallbackOutcome:
    if _same_result(job, result):
        return CallbackOutcome(
            "duplicate",
            f"Result version {result.version_id or '?'} of job #{job.pk} is already recorded.",
            job,
        )
    if job.status == JobStatus.SUCCEEDED:
        return CallbackOutcome(
            "ignored", f"Job #{job.pk} has already succeeded; another result is ignored.", job
        )
    refused = _not_its_own(job, Callback(succeeded=True, file_id=result.file_id, result=result))
    if refused is not None:
        return refused
    if not (trusted or app_settings.WEBHOOK_CONFIRM_WITH_API):
        # Nothing would check an unsigned body's result against ImageKit before storing it.
        return CallbackOutcome(
            "ignored",
            f"An unsigned result for job #{job.pk} is taken only with WEBHOOK_CONFIRM_WITH_API.",
            job,
        )
    if job.status == JobStatus.RECEIVED and not trusted:
        # A result is being stored; an unsigned body must not replace it (a forged version
        # would make the copy's confirmation fail, and the genuine callback is not sent again).
        return CallbackOutcome(
            "ignored", f"Job #{job.pk} is storing a result; an unsigned other one is ignored.", job
        )
    sources = list(RESULT_SOURCES)
    if job.status == JobStatus.FAILED:
        # A result after a failure happens (ImageKit's retries reorder, or the deadline was
        # reached first): the job takes it, unless another job of the image is live by now.
        sources.append(JobStatus.FAILED)
    changes: dict[str, Any] = result.job_fields()
    changes.update(
        submission_uncertain=False,
        next_attempt_at=None,
        finalize_attempts=0,
        error_code="",
        error_message="",
        error_details=None,
        finished_at=None,
    )
    # Only a failed job can meet another live job of its image: a savepoint for it alone.
    try:
        with transaction.atomic() if job.status == JobStatus.FAILED else nullcontext():
            moved = lifecycle.transition(job.pk, sources, JobStatus.RECEIVED, **changes)
    except IntegrityError:
        # Failed, and a retry or a newer image's job is unfinished: one live job per image.
        # The paid result stays on this job, in its history; the live job is left alone.
        RemovalJob.objects.filter(pk=job.pk, status=JobStatus.FAILED).update(**result.job_fields())
        return CallbackOutcome(
            "ignored",
            f"Job #{job.pk} has failed and another job of its image is live; its late result "
            "is kept on it.",
            job,
            changed=True,
        )
    if not moved:
        return CallbackOutcome("ignored", f"Job #{job.pk} is no longer waiting for a result.", job)
    _moved(job, JobStatus.RECEIVED, changes)
    queueing.enqueue_on_commit(queueing.FINALIZE, job.pk)
    return CallbackOutcome(
        "accepted",
        f"Result version {result.version_id or '?'} recorded for job #{job.pk} ({source}).",
        job,
        changed=True,
    )


def failure_message(reason: str) -> str:
    """What a person should read when ImageKit could not remove the background, with advice
    that fits the reason: options that remove.bg refused need changing, not retrying."""
    text = f"ImageKit could not remove the background: {reason.rstrip('.')}."
    if _OPTION_WORDS.search(reason):
        return f"{text} Change the remove-bg options and request the removal again."
    return f"{text} Try another image, or retry if the problem was temporary."


def _accept_failure(job: RemovalJob, callback: Callback) -> CallbackOutcome:
    if job.status in (JobStatus.RECEIVED, JobStatus.SUCCEEDED):
        return CallbackOutcome(
            "ignored", f"FAILURE after a SUCCESS of job #{job.pk} is ignored.", job
        )
    if job.status == JobStatus.FAILED:
        return CallbackOutcome("duplicate", f"Job #{job.pk} has already failed.", job)
    refused = _not_its_own(job, callback)
    if refused is not None:
        return refused
    error = callback.error
    changes: dict[str, Any] = {
        "error_code": "removal_failed",
        "error_message": failure_message(callback.reason)[:5000],
        "error_details": error if isinstance(error, dict) else {"error": error},
        "submission_uncertain": False,
    }
    if not lifecycle.fail(job.pk, FAILURE_SOURCES, **changes):
        return CallbackOutcome("ignored", f"Job #{job.pk} is no longer waiting for a result.", job)
    _moved(job, JobStatus.FAILED, changes)
    return CallbackOutcome("accepted", f"Job #{job.pk} failed at ImageKit.", job, changed=True)
