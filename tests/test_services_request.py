"""Requesting and submitting removals, against the emulator over real HTTP."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.utils import timezone

from imagekit_bgremove import services
from imagekit_bgremove.client import get_client
from imagekit_bgremove.models import JobStatus, RemovalJob, Trigger
from imagekit_bgremove.tokens import read_token
from tests.conftest import emulator_jobs, image_bytes, make_image, set_faults, uploads
from tests.testapp.models import Asset, Product

pytestmark = pytest.mark.django_db


def create_product(run_on_commit, name="photo.png", seed=0, **kwargs):
    with run_on_commit():
        product = Product.objects.create(photo=make_image(name, seed=seed), **kwargs)
    return product


def test_upload_carries_the_exact_options_and_a_signed_webhook_url(emulator, run_on_commit):
    product = create_product(run_on_commit, "red mug.png")
    job = product.photo.removal
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING
    assert job.file_id and job.source_version_id and job.submitted_at
    assert job.source_hash and job.source_size == product.photo.size

    [upload] = uploads(emulator)
    assert upload["fileId"] == job.file_id
    stem = product.photo.name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    assert upload["filePath"] == job.upload_path
    assert re.fullmatch(rf"/bgremove/{stem}__ikbg{job.pk}-[0-9a-f]{{8}}\.png", job.upload_path)
    [remote] = emulator_jobs(emulator)
    assert remote["service"] == "remove-bg" and remote["origin"] == "upload"
    sent = {k: v for k, v in remote["options"].items() if v is not None}
    assert sent == {"add_shadow": False, "semitransparency": True, "bg_color": "ffffff"}
    assert sent == job.remove_bg_options.to_extension()["options"]
    url = urlsplit(remote["webhookUrl"])
    assert f"{url.scheme}://{url.netloc}" == "http://testserver"
    token = url.path.rstrip("/").rsplit("/", 1)[-1]
    assert read_token(token) == job.pk


def test_submit_is_safe_to_run_twice(emulator, run_on_commit):
    from imagekit_bgremove.tasks import submit_removal

    product = create_product(run_on_commit)
    job = product.photo.removal
    assert submit_removal.call(job.pk) == "skipped"
    assert services.submit(job.pk) == "skipped"
    assert len(uploads(emulator)) == 1
    # Even a resubmission after a lost answer overwrites the same file, never adds one.
    RemovalJob.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)
    assert services.submit(job.pk) == "pending"
    assert len(emulator.state()["files"]) == 1


def test_object_deleted_before_submit_is_cancelled(emulator, dummy_tasks, run_on_commit):
    product = create_product(run_on_commit)
    job = product.photo.removal
    product.delete()
    assert services.submit(job.pk) == "cancelled"
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and "deleted" in job.error_message
    assert uploads(emulator) == []


def test_missing_source_fails_with_the_reason(emulator, dummy_tasks, run_on_commit):
    product = create_product(run_on_commit)
    job = product.photo.removal
    default_storage.delete(product.photo.name)
    assert services.submit(job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error_code == "source_missing"
    assert product.photo.name in job.error_message
    assert uploads(emulator) == []


def test_wrong_key_fails_at_once_and_is_not_retried(emulator, settings, dummy_tasks, run_on_commit):
    product = create_product(run_on_commit)
    job = product.photo.removal
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "PRIVATE_KEY": "private_wrong"}
    assert services.submit(job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempts == 1
    assert job.error_code.startswith("AuthenticationError")
    assert "ImageKit refused" in job.error_message and "HTTP 40" in job.error_message
    assert services.reconcile(now=timezone.now() + timedelta(days=1))["requeued"] == 0
    assert uploads(emulator) == []


@pytest.mark.parametrize(
    "faults",
    [
        {"error_rate_5xx": 1.0, "error_statuses": [503]},
        {"rate_limit_rate": 1.0, "rate_limit_upload": True, "rate_limit_reset_ms": 10},
    ],
)
def test_transient_errors_are_retried_then_pending(emulator, settings, run_on_commit, faults):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "TASK_RETRY_DELAY": 60}
    set_faults(emulator, lost_rate=1.0, max_api_faults=1, endpoints=["upload"], **faults)
    product = create_product(run_on_commit)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    assert job.status == JobStatus.QUEUED and job.attempts == 1
    assert job.next_attempt_at is not None and job.error_code
    # A 5xx may come after the upload was stored: the next attempt asks before sending again.
    assert job.submission_uncertain == ("error_rate_5xx" in faults)
    assert uploads(emulator) == []
    # ImmediateBackend cannot defer: reconcile sends it once its time has come.
    summary = services.reconcile(now=timezone.now() + timedelta(minutes=5))
    assert summary["requeued"] == 1, summary
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING and job.attempts == 2 and job.error_code == ""
    assert len(uploads(emulator)) == 1


def test_gives_up_after_max_attempts(emulator, settings, run_on_commit):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "TASK_MAX_ATTEMPTS": 2}
    set_faults(emulator, lost_rate=1.0, error_rate_5xx=1.0, endpoints=["upload"])
    product = create_product(run_on_commit)
    job = product.photo.removal
    services.reconcile(now=timezone.now() + timedelta(hours=1))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempts == 2
    assert job.error_message.startswith("Gave up after 2 attempts")


def test_identical_image_and_options_are_not_paid_twice(emulator, run_on_commit):
    first = create_product(run_on_commit, "a.png", seed=7)
    second = create_product(run_on_commit, "b.png", seed=7)  # same bytes, same options
    other = create_product(run_on_commit, "c.png", seed=8)
    job1, job2 = first.photo.removal, second.photo.removal
    job2.refresh_from_db()
    assert job2.status == JobStatus.WAITING and job2.duplicate_of_id == job1.pk
    assert not job2.file_id
    assert len(uploads(emulator)) == 2  # first and other
    assert other.photo.removal.duplicate_of_id is None
    # force pays again.
    with run_on_commit():
        forced = second.photo.request_removal(force=True)
    forced.refresh_from_db()
    assert forced.status == JobStatus.PENDING and forced.file_id
    assert len(uploads(emulator)) == 3


def test_newer_request_supersedes_the_pending_one(emulator, run_on_commit):
    product = create_product(run_on_commit)
    old = product.photo.removal
    with run_on_commit():
        product.photo = make_image("new.png", seed=99)
        product.save()
    old.refresh_from_db()
    new = product.photo.removal
    assert old.status == JobStatus.SUPERSEDED and old.superseded_by_id == new.pk
    assert RemovalJob.objects.get(pk=new.pk).status == JobStatus.PENDING
    assert Product.objects.get(pk=product.pk).photo.removal.pk == new.pk


def test_existing_imagekit_file_goes_through_update_details_and_restores_original(
    emulator, run_on_commit
):
    uploaded = get_client().upload(
        image_bytes(seed=3), "existing.png", folder="/library", use_unique_file_name=False
    )
    original_version = uploaded["versionInfo"]["id"]
    with run_on_commit():
        asset = Asset.objects.create(
            imagekit_file_id=uploaded["fileId"], image=make_image("asset.png", seed=3)
        )
    job = RemovalJob.objects.get(pk=asset.image.removal.pk)
    assert job.status == JobStatus.PENDING and job.file_id == uploaded["fileId"]
    assert job.source_version_id == original_version
    [remote] = emulator_jobs(emulator)
    assert remote["origin"] == "update" and remote["sourceVersionId"] == original_version
    assert len(uploads(emulator)) == 1  # only our own set-up upload
    emulator.wait_idle(20)
    state_file = emulator.state()["files"][0]
    assert state_file["currentVersionId"] != original_version  # the cut-out is current now

    with run_on_commit():
        again = asset.image.request_removal({"bg_color": "green"}, trigger=Trigger.ADMIN)
    again.refresh_from_db()
    assert again.status == JobStatus.PENDING
    second = next(j for j in emulator_jobs(emulator) if j["id"] != remote["id"])
    assert second["sourceVersionId"] == original_version  # reprocessed from the original
    assert len(uploads(emulator)) == 1


def test_retry_is_deferred_on_a_backend_that_supports_it(
    emulator, settings, dummy_tasks, run_on_commit
):
    from imagekit_bgremove.compat import task_backends
    from imagekit_bgremove.tasks import submit_removal

    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "TASK_RETRY_DELAY": 30}
    product = create_product(run_on_commit)
    job = product.photo.removal
    set_faults(
        emulator,
        lost_rate=1.0,
        rate_limit_rate=1.0,
        rate_limit_upload=True,
        rate_limit_reset_ms=60_000,
    )
    backend = task_backends["default"]
    backend.clear()
    with run_on_commit():
        assert services.submit(job.pk) == "retry"
    [deferred] = backend.results
    assert deferred.task.func is submit_removal.func and list(deferred.args) == [job.pk]
    job.refresh_from_db()
    # At least TASK_RETRY_DELAY, and ImageKit's X-RateLimit-Reset (60 s) is honoured.
    assert deferred.task.run_after == job.next_attempt_at
    assert job.next_attempt_at - timezone.now() > timedelta(seconds=50)
    assert job.error_code.startswith("RateLimitedError")


def test_without_webhook_base_url_no_callback_is_asked_and_reconcile_settles(
    emulator, settings, run_on_commit
):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "WEBHOOK_BASE_URL": ""}
    product = create_product(run_on_commit)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    assert job.status == JobStatus.PENDING
    [remote] = emulator_jobs(emulator)
    assert not remote["webhookUrl"]
    emulator.wait_idle(20)
    with run_on_commit():
        services.reconcile(now=timezone.now() + timedelta(hours=1))
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.result_name


def test_unsaved_new_image_is_refused(dummy_tasks, run_on_commit):
    product = create_product(run_on_commit)
    product.photo = make_image("unsaved.png", seed=4)
    with pytest.raises(ValueError, match="save the object first"):
        product.photo.request_removal()


def test_a_queued_job_cancelled_is_never_sent(emulator, dummy_tasks, run_on_commit):
    product = create_product(run_on_commit)
    user = User.objects.create_user("editor")
    job = services.cancel(product.photo.removal, user=user)
    assert (job.status, job.error_message) == (JobStatus.CANCELLED, "Cancelled by editor.")
    assert job.finished_at is not None
    assert services.submit(job.pk) != "pending"  # the task, if it still runs, finds it cancelled
    assert uploads(emulator) == []
    with pytest.raises(services.NotCancellable, match="only a queued, waiting or pending"):
        services.cancel(job)
