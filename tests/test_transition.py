"""``lifecycle.transition``: the only writer of a job's status, checked against ``MOVES``."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db.models import F

from imagekit_bgremove import lifecycle
from imagekit_bgremove.models import JobStatus, RemovalJob
from tests.test_webhook_view import make_job

pytestmark = pytest.mark.django_db


def test_only_the_current_lease_moves_a_job_even_a_zero_one():
    job = make_job(status=JobStatus.SUBMITTING, lease_token=5)
    for wrong in (0, 4):
        assert not lifecycle.transition(
            job.pk, [JobStatus.SUBMITTING], JobStatus.PENDING, lease=wrong
        )
    assert RemovalJob.objects.get(pk=job.pk).status == JobStatus.SUBMITTING
    assert lifecycle.transition(job.pk, [JobStatus.SUBMITTING], JobStatus.PENDING, lease=5)
    job.refresh_from_db()
    assert (job.status, job.lease_token, job.lease_expires_at) == (JobStatus.PENDING, 0, None)


def test_values_of_every_kind_are_stored():
    original = make_job()
    job = make_job(status=JobStatus.SUBMITTING, error_details={"was": "set"})
    assert lifecycle.transition(
        job.pk,
        [JobStatus.SUBMITTING],
        JobStatus.FAILED,
        error_code="x",
        error_details=None,  # SQL NULL, not JSON null
        attempts=F("attempts") + 1,
        duplicate_of=original,
    )
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.finished_at is not None
    assert RemovalJob.objects.filter(pk=job.pk, error_details__isnull=True).exists()
    assert (job.attempts, job.duplicate_of_id) == (1, original.pk)


@pytest.mark.parametrize("source", list(JobStatus))
def test_a_move_the_table_does_not_list_is_refused(source):
    job = make_job(status=source)
    for target in JobStatus:
        if target in lifecycle.MOVES[source]:
            continue
        with pytest.raises(ValueError, match="not an allowed move"):
            lifecycle.transition(job.pk, [source], target)
    assert RemovalJob.objects.get(pk=job.pk).status == source


def test_finished_states_are_final_but_a_trusted_late_result():
    assert all(not lifecycle.MOVES[s] for s in (JobStatus.SUCCEEDED, JobStatus.CANCELLED))
    assert lifecycle.MOVES[JobStatus.SUPERSEDED] == ()
    assert lifecycle.MOVES[JobStatus.FAILED] == (JobStatus.RECEIVED,)


def test_every_state_is_in_the_table():
    assert set(lifecycle.MOVES) == set(JobStatus)
    assert all(set(targets) <= set(JobStatus) for targets in lifecycle.MOVES.values())


def test_the_architecture_document_shows_the_table():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md").read_text()
    assert lifecycle.moves_table() in doc


def test_a_move_that_settles_a_job_settles_its_waiters():
    """The one seam for identical images: a failure of the original reaches its waiter without
    the caller doing anything more than the move."""
    original = make_job()
    waiter = make_job(status=JobStatus.WAITING, file_id="", duplicate_of=original)
    assert lifecycle.transition(original.pk, [JobStatus.PENDING], JobStatus.FAILED, error_code="x")
    waiter.refresh_from_db()
    assert waiter.status == JobStatus.FAILED
