"""services.apply_callback and finalize, fed with callbacks the emulator really produced."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from imagekit_bgremove import services
from imagekit_bgremove.models import JobStatus, RemovalJob
from imagekit_bgremove.services import reconciliation, submission
from imagekit_bgremove.signals import removal_failed, removal_succeeded
from tests.conftest import make_image, set_faults, wait_for
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db


def submitted_product(run_on_commit, name="photo.png", seed=0):
    image = make_image(name, seed=seed)
    original = image.read()
    image.seek(0)
    with run_on_commit():
        product = Product.objects.create(photo=image)
    return product, original


def apply_forged_version(emulator, run_on_commit, job: RemovalJob) -> None:
    """Apply the job's real callback with a result version ImageKit never made."""
    payload = callback_payload(emulator, job)
    forged = {**payload, "fileObject": {**payload["fileObject"], "versionInfo": {"id": "nope"}}}
    with run_on_commit():
        services.apply_callback(job.pk, forged)


def callback_payload(emulator, job: RemovalJob) -> dict:
    """The payload the emulator produced for ``job`` (recorded even though not delivered)."""

    def find():
        for callback in emulator.state()["callbacks"]:
            if callback["fileId"] == job.file_id:
                return callback["payload"]
        return None

    payload = wait_for(find, timeout=20)
    assert payload is not None, "the emulator produced no callback"
    return payload


@pytest.fixture
def received():
    got = []

    def success(sender, job, instance, **kwargs):
        got.append(("succeeded", job.pk, instance))

    def failure(sender, job, instance, **kwargs):
        got.append(("failed", job.pk, instance))

    removal_succeeded.connect(success)
    removal_failed.connect(failure)
    yield got
    removal_succeeded.disconnect(success)
    removal_failed.disconnect(failure)


def test_success_copies_the_result_next_to_the_untouched_original(
    emulator, run_on_commit, received
):
    product, original = submitted_product(run_on_commit, "shoe.png")
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    payload = callback_payload(emulator, job)
    assert payload["status"] == "SUCCESS"

    with run_on_commit():
        outcome = services.apply_callback(job.pk, payload)
    assert outcome.verdict == "accepted"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.result_version_id == payload["fileObject"]["versionInfo"]["id"]
    assert job.result_url == payload["fileObject"]["url"]
    stem = product.photo.name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    assert re.fullmatch(rf"products/{stem}_nobg_{job.pk}_[0-9a-f]{{8}}\.png", job.result_name)

    fresh = Product.objects.get(pk=product.pk)
    assert fresh.photo.removal_status == "succeeded"
    assert fresh.photo.result_url == job.result_url
    with fresh.photo.result_file.open("rb") as fh:
        stored = fh.read()
    assert stored != original
    result = Image.open(io.BytesIO(stored))
    assert result.size == Image.open(io.BytesIO(original)).size
    with default_storage.open(product.photo.name, "rb") as fh:
        assert fh.read() == original  # the original is byte-identical
    assert received == [("succeeded", job.pk, fresh)]

    # The same callback again changes nothing.
    before = RemovalJob.objects.values().get(pk=job.pk)
    with run_on_commit():
        again = services.apply_callback(job.pk, payload)
    assert again.verdict == "duplicate"
    assert RemovalJob.objects.values().get(pk=job.pk) == before
    # A FAILURE after the SUCCESS is ignored.
    failure = {
        "service": "remove-bg",
        "status": "FAILURE",
        "fileId": job.file_id,
        "error": {"reason": "late"},
    }
    with run_on_commit():
        assert services.apply_callback(job.pk, failure).verdict == "ignored"
    assert RemovalJob.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED
    assert len(received) == 1


def test_failure_callback_fails_the_job_readably(emulator, run_on_commit, received):
    set_faults(emulator, lost_rate=1.0, extension_failure_rate=1.0)
    product, _ = submitted_product(run_on_commit)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    payload = callback_payload(emulator, job)
    assert payload["status"] == "FAILURE"
    with run_on_commit():
        assert services.apply_callback(job.pk, payload).verdict == "accepted"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error_code == "removal_failed"
    assert job.error_message.startswith("ImageKit could not remove the background")
    assert job.error_details == payload["error"]
    assert received == [("failed", job.pk, product)]
    assert Product.objects.get(pk=product.pk).photo.removal_error == job.error_message
    # A retry is a new job from the original image.
    set_faults(emulator, lost_rate=1.0)
    with run_on_commit():
        retried = services.retry(job)
    retried.refresh_from_db()
    assert retried.trigger == "retry" and retried.status == JobStatus.PENDING
    assert retried.source_name == job.source_name and retried.options == job.options


def test_a_callback_before_the_job_knows_its_file_is_not_taken(emulator, run_on_commit):
    product, _ = submitted_product(run_on_commit)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    payload = callback_payload(emulator, job)
    file_id = job.file_id
    # As if ImageKit answered faster than our worker's write: the worker holds lease 7.
    RemovalJob.objects.filter(pk=job.pk).update(
        status=JobStatus.SUBMITTING, file_id="", lease_token=7
    )
    with run_on_commit():
        outcome = services.apply_callback(job.pk, payload)
    assert outcome.verdict == "ignored"  # the body alone does not name the job's file
    job.refresh_from_db()
    assert job.status == JobStatus.SUBMITTING and not job.result_url
    # The submit task records ImageKit's answer; the check (or a retried callback) then binds it.
    response = {"fileId": file_id, "filePath": "/x.png", "versionInfo": {"id": "v"}}
    assert submission._record_submission(job, 7, response) == "pending"
    with run_on_commit():
        assert services.apply_callback(job.pk, payload).verdict == "accepted"


def test_superseded_jobs_late_callback_is_ignored(emulator, run_on_commit):
    product, _ = submitted_product(run_on_commit)
    old = RemovalJob.objects.get(pk=product.photo.removal.pk)
    payload = callback_payload(emulator, old)
    with run_on_commit():
        product.photo = make_image("newer.png", seed=42)
        product.save()
    with run_on_commit():
        outcome = services.apply_callback(old.pk, payload)
    assert outcome.verdict == "ignored" and "superseded" in outcome.message
    old.refresh_from_db()
    # It does not take the result (nothing is stored for it), but the paid run's result is kept
    # on the job for an identical image saved later.
    assert old.status == JobStatus.SUPERSEDED and not old.result_name
    assert old.result_version_id == payload["fileObject"]["versionInfo"]["id"]
    assert services.apply_callback(10**9, payload).verdict == "ignored"


def test_malformed_payloads_are_refused():
    for bad in (
        [],
        {"service": "google-auto-tagging", "status": "SUCCESS"},
        {"service": "remove-bg", "status": "DONE"},
        {"service": "remove-bg", "status": "SUCCESS", "fileObject": {"url": "x"}},
    ):
        with pytest.raises(services.CallbackError):
            services.apply_callback(1, bad)


def test_duplicate_job_settles_with_its_original(emulator, run_on_commit):
    first, _ = submitted_product(run_on_commit, "one.png", seed=11)
    second, _ = submitted_product(run_on_commit, "two.png", seed=11)
    job1 = RemovalJob.objects.get(pk=first.photo.removal.pk)
    job2 = RemovalJob.objects.get(pk=second.photo.removal.pk)
    assert job2.duplicate_of_id == job1.pk and job2.status == JobStatus.WAITING
    with run_on_commit():
        services.apply_callback(job1.pk, callback_payload(emulator, job1))
    job1.refresh_from_db()
    job2.refresh_from_db()
    assert job1.status == job2.status == JobStatus.SUCCEEDED
    assert job2.result_name.startswith(f"products/two_nobg_{job2.pk}_")
    assert default_storage.exists(job2.result_name)
    # A third identical image reuses the succeeded result at once.
    third, _ = submitted_product(run_on_commit, "three.png", seed=11)
    job3 = RemovalJob.objects.get(pk=third.photo.removal.pk)
    assert job3.status == JobStatus.SUCCEEDED and job3.duplicate_of_id == job1.pk
    assert len(emulator.state()["files"]) == 1


def test_unconfirmed_original_fails_its_waiting_duplicate_at_once(
    emulator, settings, run_on_commit, received
):
    first, _ = submitted_product(run_on_commit, "one.png", seed=12)
    second, _ = submitted_product(run_on_commit, "two.png", seed=12)
    job1 = RemovalJob.objects.get(pk=first.photo.removal.pk)
    job2 = RemovalJob.objects.get(pk=second.photo.removal.pk)
    assert job2.duplicate_of_id == job1.pk
    apply_forged_version(emulator, run_on_commit, job1)
    job2.refresh_from_db()
    # Not left waiting until reconcile's deadline: it shares its original's fate.
    assert job2.status == JobStatus.FAILED and job2.error_code == "result_unconfirmed"
    assert sorted(r[:2] for r in received) == [("failed", job1.pk), ("failed", job2.pk)]


def test_a_twin_waiting_on_a_superseded_original_takes_the_run_it_paid_for(
    emulator, run_on_commit, received
):
    # Two products with the same image: the second waits for the first's result.
    first, _ = submitted_product(run_on_commit, "one.png", seed=13)
    second, _ = submitted_product(run_on_commit, "two.png", seed=13)
    job1 = RemovalJob.objects.get(pk=first.photo.removal.pk)
    job2 = RemovalJob.objects.get(pk=second.photo.removal.pk)
    assert job2.duplicate_of_id == job1.pk and job2.status == JobStatus.WAITING
    payload = callback_payload(emulator, job1)
    # The first product gets another image while its first one is at ImageKit: its job is
    # superseded, but the run it paid for is still the twin's result.
    with run_on_commit():
        first.photo = make_image("one-new.png", seed=14)
        first.save()
    job1.refresh_from_db()
    job2.refresh_from_db()
    assert job1.status == JobStatus.SUPERSEDED and job2.status == JobStatus.WAITING
    with run_on_commit():
        services.apply_callback(job1.pk, payload)
    job2.refresh_from_db()
    assert job2.status == JobStatus.SUCCEEDED and default_storage.exists(job2.result_name)
    assert job2.result_version_id == payload["fileObject"]["versionInfo"]["id"]
    runs = [r for r in emulator.state()["removeBgRuns"] if r["inputSha256"] == job2.source_hash]
    assert len(runs) == 1  # paid once for the two products
    assert ("failed", job2.pk) not in [r[:2] for r in received]


def test_a_twin_whose_original_never_reached_imagekit_is_sent_on_its_own(
    emulator, run_on_commit, dummy_tasks
):
    from imagekit_bgremove.services import dedupe

    first = Product.objects.create(photo=make_image("one.png", seed=15))
    second = Product.objects.create(photo=make_image("two.png", seed=15))
    job1, job2 = first.photo.removal, second.photo.removal
    # Both are being submitted; the first claims the image and is about to upload it.
    RemovalJob.objects.filter(pk__in=[job1.pk, job2.pk]).update(
        status=JobStatus.SUBMITTING, lease_token=7
    )
    assert dedupe.claim(job1, "same-image-key", lease=7) == "own"
    assert dedupe.claim(job2, "same-image-key", lease=7) == "wait"
    # The first product gets another image before its upload left: nothing is on its way.
    with run_on_commit():
        first.photo = make_image("one-new.png", seed=16)
        first.save()
    job2.refresh_from_db()
    assert job2.status == JobStatus.QUEUED and job2.duplicate_of_id is None


def test_result_too_large_fails_and_says_where_it_is(emulator, settings, run_on_commit):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "RESULT_MAX_BYTES": 10}
    product, _ = submitted_product(run_on_commit)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    with run_on_commit():
        services.apply_callback(job.pk, callback_payload(emulator, job))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error_code == "result_too_large"
    assert "RESULT_MAX_BYTES" in job.error_message and job.result_url in job.error_message
    assert not job.result_name
    assert Product.objects.get(pk=product.pk).photo.result_file is None


def test_result_never_takes_the_originals_name(emulator, settings, run_on_commit):
    product, original = submitted_product(run_on_commit)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    # The closest an original can come: an empty RESULT_SUFFIX and a name ending in the job id.
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "RESULT_SUFFIX": ""}
    source = default_storage.save(f"products/item_{job.pk}.png", io.BytesIO(original))
    assert source == f"products/item_{job.pk}.png"
    RemovalJob.objects.filter(pk=job.pk).update(source_name=source)
    with run_on_commit():
        services.apply_callback(job.pk, callback_payload(emulator, job))
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.error_code == ""
    assert re.fullmatch(rf"products/item_{job.pk}_{job.pk}_[0-9a-f]{{8}}\.png", job.result_name)
    with default_storage.open(source, "rb") as fh:
        assert fh.read() == original


def test_a_check_finding_the_job_superseded_meanwhile_changes_nothing(emulator, run_on_commit):
    product, _ = submitted_product(run_on_commit)
    emulator.wait_idle(20)  # ImageKit has the result
    listed = RemovalJob.objects.get(pk=product.photo.removal.pk)  # read by reconcile as pending
    RemovalJob.objects.filter(pk=listed.pk).update(status=JobStatus.SUPERSEDED)
    with run_on_commit():
        assert reconciliation.settle_pending(listed, timezone.now()) == "unchanged"
    listed.refresh_from_db()
    assert listed.status == JobStatus.SUPERSEDED and not listed.result_name


def test_reconcile_finds_a_lost_callbacks_result(emulator, run_on_commit):
    product, _ = submitted_product(run_on_commit)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    emulator.wait_idle(20)
    with run_on_commit():
        summary = services.reconcile(now=timezone.now() + timedelta(hours=1))
    assert summary["succeeded"] == 1
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.result_name
    # Past the deadline with nothing from ImageKit: failed with a clear reason.
    RemovalJob.objects.filter(pk=job.pk).update(
        status=JobStatus.PENDING, result_url="", source_version_id=""
    )
    RemovalJob.objects.filter(pk=job.pk).update(file_id="")
    with run_on_commit():
        services.reconcile(now=timezone.now() + timedelta(hours=30))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "No result from ImageKit after 26 hours" in (
        job.error_message
    )


def test_a_pending_job_checks_itself_for_its_lost_callback(emulator, run_on_commit):
    product, _ = submitted_product(run_on_commit)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    emulator.wait_idle(20)  # ImageKit has the result; its callback never reached us
    submitted = job.submitted_at
    assert services.check(job.pk, now=submitted + timedelta(minutes=5)) == "early"
    with run_on_commit():
        assert services.check(job.pk, now=submitted + timedelta(minutes=11)) == "succeeded"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and default_storage.exists(job.result_name)
    assert services.check(job.pk) == "skipped"  # a second run changes nothing


def test_the_check_comes_back_less_and_less_often_then_gives_up(
    emulator, run_on_commit, dummy_tasks
):
    from imagekit_bgremove.compat import task_backends

    with run_on_commit():
        product = Product.objects.create(photo=make_image("slow.png"))
    job = RemovalJob.objects.get(pk=Product.objects.get(pk=product.pk).photo.removal.pk)
    with run_on_commit():
        services.submit(job.pk)
    job.refresh_from_db()
    submitted = job.submitted_at
    checks = [r for r in task_backends["default"].results if r.task.name == "check_removal"]
    assert [c.task.run_after - submitted for c in checks] == [timedelta(minutes=10)]
    # As if ImageKit were still working on it: no version newer than the one we sent.
    emulator.wait_idle(20)
    RemovalJob.objects.filter(pk=job.pk).update(source_version_id=_current_version(emulator, job))

    def next_check_after(elapsed: timedelta) -> timedelta:
        task_backends["default"].results.clear()
        with run_on_commit():
            assert services.check(job.pk, now=submitted + elapsed) == "waiting"
        (check,) = task_backends["default"].results
        assert check.args == [job.pk]
        return check.task.run_after - submitted

    assert next_check_after(timedelta(minutes=10)) == timedelta(minutes=20)
    assert next_check_after(timedelta(minutes=20)) == timedelta(minutes=40)
    assert next_check_after(timedelta(hours=5)) == timedelta(hours=6)  # at most an hour apart
    assert next_check_after(timedelta(hours=25, minutes=30)) == timedelta(hours=26, seconds=1)
    with run_on_commit():
        assert services.check(job.pk, now=submitted + timedelta(hours=26, seconds=1)) == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "No result from ImageKit" in job.error_message


def _current_version(emulator, job: RemovalJob) -> str:
    (record,) = [f for f in emulator.state()["files"] if f["fileId"] == job.file_id]
    return record["currentVersionId"]


@pytest.mark.django_db(transaction=True)
def test_full_loop_over_http(live_emulator, received):
    """Save → upload → the emulator removes the background → its callback reaches our webhook
    view on the live server → finalize copies the result → succeeded."""
    image = make_image("loop.png", seed=5)
    original = image.read()
    image.seek(0)
    product = Product.objects.create(name="loop", photo=image)  # autocommit: runs on commit

    def settled():
        job = Product.objects.get(pk=product.pk).photo.removal
        return (
            job
            if job is not None and job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
            else None
        )

    job = wait_for(settled, timeout=30)
    assert job is not None, RemovalJob.objects.values("status", "error_message").first()
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    # The view records its verdict once apply_callback's transaction (and finalize) is done.
    assert wait_for(lambda: job.deliveries.filter(verdict="accepted").count() == 1, timeout=10)
    assert default_storage.exists(job.result_name)
    with default_storage.open(product.photo.name, "rb") as fh:
        assert fh.read() == original
    assert [r[:2] for r in received] == [("succeeded", job.pk)]


def test_confirm_with_api_checks_the_version_exists(emulator, settings, run_on_commit):
    product, _ = submitted_product(run_on_commit)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    apply_forged_version(emulator, run_on_commit, job)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error_code == "result_unconfirmed"

    other, _ = submitted_product(run_on_commit, "other.png", seed=77)
    job = RemovalJob.objects.get(pk=other.photo.removal.pk)
    with run_on_commit():
        services.apply_callback(job.pk, callback_payload(emulator, job))
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.result_name


def test_transient_copy_failure_is_retried_then_given_up(
    emulator, settings, run_on_commit, httpserver
):
    # A delivery host that is allowed but answers 503: copying is retried, then given up.
    httpserver.expect_request("/result.png").respond_with_data("busy", status=503)
    host = f"127.0.0.1:{httpserver.port}"
    settings.IMAGEKIT_BGREMOVE = {
        **settings.IMAGEKIT_BGREMOVE,
        "TASK_MAX_ATTEMPTS": 2,
        "TASK_RETRY_DELAY": 60,
        "WEBHOOK_CONFIRM_WITH_API": False,
        "RESULT_HOSTS": [host],
    }
    product, _ = submitted_product(run_on_commit)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    payload = callback_payload(emulator, job)
    unavailable = {
        **payload,
        "fileObject": {**payload["fileObject"], "url": f"http://{host}/result.png"},
    }
    with run_on_commit():
        services.apply_callback(job.pk, unavailable, signed=True)
    job.refresh_from_db()
    assert job.status == JobStatus.RECEIVED and job.finalize_attempts == 1
    assert "deliver the result" in job.error_message and job.next_attempt_at
    # reconcile queues finalize again once it is due; the second failure gives up.
    with run_on_commit():
        summary = services.reconcile(now=timezone.now() + timedelta(hours=1))
    assert summary["finalize_requeued"] == 1
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "Gave up storing the result" in job.error_message
    assert not job.result_name


def test_a_cancelled_pending_jobs_result_is_ignored(emulator, run_on_commit):
    product, _ = submitted_product(run_on_commit)
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    assert job.status == JobStatus.PENDING
    payload = callback_payload(emulator, job)
    services.cancel(job)
    with run_on_commit():
        outcome = services.apply_callback(job.pk, payload)
    assert outcome.verdict == "ignored"
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and not job.result_name
