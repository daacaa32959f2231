"""``RemovalJob.objects.transition``: every move of every job goes through it, by a statement
prepared once per shape or, when the move does not fit one, by the ORM. Both must mean the same."""

from __future__ import annotations

import pytest
from django.db.models import F

from imagekit_bgremove.models import JobStatus, RemovalJob
from tests.test_webhook_view import make_job

pytestmark = pytest.mark.django_db


def test_only_the_current_lease_moves_a_job_even_a_zero_one():
    job = make_job(status=JobStatus.SUBMITTING, lease_token=5)
    for wrong in (0, 4):
        assert not RemovalJob.objects.transition(
            job.pk, [JobStatus.SUBMITTING], JobStatus.PENDING, lease=wrong
        )
    assert RemovalJob.objects.get(pk=job.pk).status == JobStatus.SUBMITTING
    assert RemovalJob.objects.transition(job.pk, [JobStatus.SUBMITTING], JobStatus.PENDING, lease=5)
    job.refresh_from_db()
    assert (job.status, job.lease_token, job.lease_expires_at) == (JobStatus.PENDING, 0, None)


def test_a_filtered_queryset_keeps_its_filter():
    job = make_job()
    assert not RemovalJob.objects.filter(field_name="other").transition(
        job.pk, [JobStatus.PENDING], JobStatus.FAILED
    )
    assert RemovalJob.objects.get(pk=job.pk).status == JobStatus.PENDING


def test_values_of_every_kind_are_stored_as_the_orm_would():
    original = make_job()
    job = make_job(status=JobStatus.SUBMITTING, error_details={"was": "set"})
    assert RemovalJob.objects.transition(
        job.pk,
        [JobStatus.SUBMITTING],
        JobStatus.FAILED,
        error_code="x",
        error_details=None,  # SQL NULL, not JSON null
        attempts=F("attempts") + 1,  # an expression: the ORM applies it
        duplicate_of=original,  # a model instance
    )
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.finished_at is not None
    assert RemovalJob.objects.filter(pk=job.pk, error_details__isnull=True).exists()
    assert (job.attempts, job.duplicate_of_id) == (1, original.pk)
    assert RemovalJob.objects.transition(
        job.pk, [JobStatus.FAILED], JobStatus.FAILED, error_details={"reason": ["a", 1]}
    )
    job.refresh_from_db()
    assert job.error_details == {"reason": ["a", 1]}


def test_expected_values_guard_the_move():
    job = make_job(file_path="")
    assert not RemovalJob.objects.transition(
        job.pk, [JobStatus.PENDING], JobStatus.RECEIVED, expect={"file_path": "/elsewhere"}
    )
    assert RemovalJob.objects.transition(
        job.pk, [JobStatus.PENDING], JobStatus.RECEIVED, expect={"file_path": ""}
    )
    # An expected NULL means IS NULL, as in the ORM (the prepared statement's "=" would not).
    other = make_job()
    assert RemovalJob.objects.transition(
        other.pk, [JobStatus.PENDING], JobStatus.RECEIVED, expect={"requested_by": None}
    )
