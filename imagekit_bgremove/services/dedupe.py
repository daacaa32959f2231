"""Stage 2a: identical work is paid for once.

Before a job uploads, it claims its content key (sha256 of the image bytes and the options) in
``ContentClaim``, whose unique key makes the choice race-free across workers:

- nobody holds the key, or its holder failed, was superseded or cancelled: this job takes it and
  uploads;
- the holder succeeded: this job shares its result (``received``, then its own copy is stored);
- the holder is still on its way: this job waits for it (``waiting``), and is settled when the
  holder settles (``lifecycle.settle_waiters``), or by reconcile.

A ``force``d job never shares or waits.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from django.db import transaction

from .. import lifecycle, queueing
from ..models import ContentClaim, JobStatus, RemovalJob
from ..options import RemoveBgOptions

Decision = Literal["own", "share", "wait"]


def content_key(source_hash: str, options: RemoveBgOptions) -> str:
    return hashlib.sha256(f"{source_hash}\n{options.cache_key()}".encode()).hexdigest()


def claim(job: RemovalJob, key: str, *, lease: int) -> Decision:
    """Decide whether ``job`` (submitting, holding ``lease``) uploads, shares or waits, and make
    the move for share and wait. Returns the decision."""
    with transaction.atomic():
        held, created = ContentClaim.objects.select_for_update().get_or_create(
            key=key, defaults={"job_id": job.pk}
        )
        if created or held.job_id == job.pk:
            return "own"
        holder = RemovalJob.objects.filter(pk=held.job_id).first()
        if holder is None or holder.status in (
            JobStatus.FAILED,
            JobStatus.SUPERSEDED,
            JobStatus.CANCELLED,
        ):
            ContentClaim.objects.filter(pk=held.pk).update(job_id=job.pk)
            return "own"
        if holder.status == JobStatus.SUCCEEDED:
            fields = {name: getattr(holder, name) for name in lifecycle.RESULT_FIELDS}
            if RemovalJob.objects.transition(
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
        moved = RemovalJob.objects.transition(
            job.pk,
            [JobStatus.SUBMITTING],
            JobStatus.WAITING,
            lease=lease,
            duplicate_of=holder,
            next_attempt_at=None,
        )
    if moved:
        # The holder may have settled between our look at it and our move.
        lifecycle.settle_waiter(job.pk)
    return "wait"
