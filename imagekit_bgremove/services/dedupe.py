"""Stage 2a: identical work is paid for once.

Before a job uploads, it claims its content key (sha256 of the image bytes and the options) in
``ContentClaim``, whose unique key makes the choice race-free across workers:

- nobody holds the key, its holder failed, or it was superseded or cancelled before ImageKit had
  its image: this job takes the key and uploads;
- the holder has its result (succeeded, or kept by a holder superseded or cancelled after
  paying): this job shares it (``received``, then its own copy is stored);
- the holder's run is still on its way (superseded or not), or may be (a holder superseded
  or cancelled after its upload's answer was lost): this job waits for it (``waiting``), and
  is settled when the holder's result or failure comes (``lifecycle.settle_waiters``), or by
  its scheduled check and reconcile, which look the lost upload up at ImageKit.

A ``force``d job never shares or waits.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from django.db import transaction
from django.utils import timezone

from .. import lifecycle, queueing
from ..models import ContentClaim, JobStatus, RemovalJob
from ..removebg import RemoveBgOptions
from .reconciliation import schedule_check

Decision = Literal["own", "share", "wait"]


def content_key(source_hash: str, options: RemoveBgOptions) -> str:
    return hashlib.sha256(f"{source_hash}\n{options.cache_key()}".encode()).hexdigest()


def _take_or_lock(key: str, job_id: int) -> ContentClaim:
    """The claim of ``key``, locked: ``job_id``'s own when no job held it. Of two jobs claiming
    one key at once, the unique key makes the second INSERT wait for the first's transaction,
    then do nothing; each then locks the claim that stands."""
    for _ in range(3):  # the holder's claim may be deleted (with its job) in between
        ContentClaim.objects.bulk_create(
            [ContentClaim(key=key, job_id=job_id)], ignore_conflicts=True
        )
        held = ContentClaim.objects.select_for_update().filter(key=key).first()
        if held is not None:
            return held
    raise RuntimeError(f"content claim {key[:12]} neither insertable nor found")


def claim(job: RemovalJob, key: str, *, lease: int) -> Decision:
    """Decide whether ``job`` (submitting, holding ``lease``) uploads, shares or waits, and make
    the move for share and wait. Returns the decision."""
    # Inside the submission's transaction: no savepoint of its own (a failure fails it all).
    with transaction.atomic(savepoint=False):
        held = _take_or_lock(key, job.pk)
        if held.job_id == job.pk:
            return "own"
        holder = RemovalJob.objects.filter(pk=held.job_id).first()
        gone = holder is not None and holder.status in (JobStatus.SUPERSEDED, JobStatus.CANCELLED)
        if (
            holder is None
            or holder.status == JobStatus.FAILED
            or (gone and not holder.result_url and not lifecycle.in_flight(holder))
        ):
            # Nothing paid for is coming from it: this job pays.
            ContentClaim.objects.filter(pk=held.pk).update(job_id=job.pk)
            return "own"
        if holder.status == JobStatus.SUCCEEDED or (gone and holder.result_url):
            fields = {name: getattr(holder, name) for name in lifecycle.RESULT_FIELDS}
            if lifecycle.transition(
                job.pk,
                [JobStatus.SUBMITTING],
                JobStatus.RECEIVED,
                lease=lease,
                duplicate_of=holder,
                file_id=holder.file_id,
                next_attempt_at=None,
                **fields,
            ):
                queueing.enqueue_on_commit(queueing.FINALIZE, job.pk)
            return "share"
        moved = lifecycle.transition(
            job.pk,
            [JobStatus.SUBMITTING],
            JobStatus.WAITING,
            lease=lease,
            duplicate_of=holder,
            next_attempt_at=None,
        )
    # The holder may have settled between our look at it and our move; if not, a check comes
    # back to this job in case the holder's result never reaches it by itself.
    if moved and not lifecycle.settle_waiter(job.pk):
        now = timezone.now()
        schedule_check(job.pk, now, now)
    return "wait"
