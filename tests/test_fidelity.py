"""What real ImageKit does that a lenient double would hide (issue 11, the app's side)."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.urls import reverse
from django.utils import timezone

from imagekit_bgremove import services
from imagekit_bgremove.models import JobStatus, RemovalJob
from imagekit_bgremove.signatures import signature_headers
from imagekit_bgremove.tokens import make_token
from tests.helpers import emulator_jobs, make_image, set_faults, uploads, wait_for
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db


def create(run_on_commit, name="photo.png", seed=0):
    with run_on_commit():
        return Product.objects.create(photo=make_image(name, seed=seed))


def settle_by_check(run_on_commit, job):
    job.refresh_from_db()
    with run_on_commit():
        outcome = services.check(job.pk, now=job.submitted_at + timedelta(minutes=11))
    job.refresh_from_db()
    return outcome


def test_the_stored_cut_out_is_exactly_imagekits_result(emulator, run_on_commit):
    product = create(run_on_commit, "exact.png", seed=1)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    emulator.wait_idle(20)
    assert settle_by_check(run_on_commit, job) == "succeeded"
    assert job.status == JobStatus.SUCCEEDED
    with default_storage.open(job.result_name, "rb") as fh:
        stored = hashlib.sha256(fh.read()).hexdigest()
    [record] = emulator.state()["files"]
    [result] = [v for v in record["versions"] if v["id"] == job.result_version_id]
    assert stored == result["sha256"]
    # Fetched untransformed: the account's automatic format would otherwise serve WebP to a
    # client that accepts it.
    fetched = [r["path"] for r in emulator.state()["requests"] if r["method"] == "GET"]
    downloads = [p for p in fetched if "/ik/" in p]
    assert downloads and all("tr=orig-true" in p for p in downloads)
    assert job.result_mime == "image/png" and job.result_name.endswith(".png")


def test_a_synchronous_success_is_settled_without_a_callback(emulator, run_on_commit):
    set_faults(emulator, lost_rate=1.0, sync_success_rate=1.0)
    product = create(run_on_commit, "sync.png", seed=2)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    assert job.status == JobStatus.SUCCEEDED and job.result_name
    assert emulator.state()["callbacks"] == []  # nothing to wait for


def test_the_too_many_requests_400_is_retried_like_a_rate_limit(emulator, settings, run_on_commit):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "TASK_RETRY_DELAY": 60}
    set_faults(emulator, lost_rate=1.0, upload_too_many_requests_rate=1.0, max_api_faults=1)
    product = create(run_on_commit, "busy.png", seed=3)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    # Not final, and certainly not applied: queued again, nothing to look up first.
    assert job.status == JobStatus.QUEUED and not job.submission_uncertain
    assert "too many requests" in job.error_message.lower()
    with run_on_commit():
        services.reconcile(now=timezone.now() + timedelta(minutes=5))
    job.refresh_from_db()
    assert job.status in (JobStatus.PENDING, JobStatus.SUCCEEDED) and len(uploads(emulator)) == 1


def test_a_retry_signed_with_its_original_timestamp_is_refused_yet_the_job_settles(
    client, emulator, settings, run_on_commit
):
    """ImageKit may not re-sign its retries: past WEBHOOK_TOLERANCE_SECONDS they fail the
    signature check (401). The scheduled check then settles the job from ImageKit's API."""
    settings.IMAGEKIT_BGREMOVE = {
        **settings.IMAGEKIT_BGREMOVE,
        "WEBHOOK_REQUIRE_SIGNATURE": True,
        "WEBHOOK_TOLERANCE_SECONDS": 300,
    }
    product = create(run_on_commit, "late.png", seed=4)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    callback = wait_for(lambda: next(iter(emulator.state()["callbacks"]), None), timeout=20)
    body = json.dumps(callback["payload"]).encode()
    first_signed = time.time() - 3600  # the first attempt was an hour ago
    url = reverse("imagekit_bgremove:webhook", kwargs={"token": make_token(job.pk)})
    response = client.post(
        url,
        data=body,
        content_type="application/json",
        headers=signature_headers(body, emulator.webhook_secrets, now=first_signed),
    )
    assert response.status_code == 401 and response.json()["reason"] == "stale"
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING
    assert settle_by_check(run_on_commit, job) == "succeeded"
    assert job.status == JobStatus.SUCCEEDED and job.result_name
    assert len(emulator_jobs(emulator)) == 1  # settled without paying again
