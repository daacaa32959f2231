"""Paying ImageKit once per distinct (image, options) when answers are lost, identical images
are in flight, originals are superseded and reconcile runs beside the workers: each case runs
through the public surface (saves, the tasks' service functions, reconcile) against the emulator,
which counts its paid remove-bg runs (``removeBgRuns``).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from imagekit_bgremove import services
from imagekit_bgremove.conf import app_settings
from imagekit_bgremove.models import JobStatus, RemovalJob
from tests.helpers import image_bytes, set_faults, uploads
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db


def jobs_of(obj):
    return RemovalJob.objects.for_object(obj, "photo").order_by("pk")


def paid_runs(emulator) -> int:
    return emulator.state()["removeBgRunCount"]


def later() -> timezone.datetime:
    """When the scheduled check of a job submitted now runs."""
    return timezone.now() + timedelta(seconds=float(app_settings.RECONCILE_AFTER_SECONDS) + 1)


def settle(emulator, job_id: int) -> str:
    """The scheduled check of ``job_id`` (its callback is lost: ``emulator`` loses them all),
    then whatever submit or finalize it asks for, as the workers would."""
    assert emulator.wait_idle(20)
    outcome = services.check(job_id, now=later())
    job = RemovalJob.objects.get(pk=job_id)
    if job.status == JobStatus.QUEUED:
        services.submit(job_id)
    elif job.status == JobStatus.RECEIVED:
        services.finalize(job_id)
    assert emulator.wait_idle(20)
    return outcome


# -------------------------------------------------------------------- a retry whose answer came


def test_a_retry_whose_answer_came_is_not_sent_again_by_the_check(emulator, dummy_tasks):
    # The first upload gets a 5xx before anything is stored (it may have been applied: the job
    # is marked uncertain); the second is stored and answered. ImageKit stores the result as a
    # new file (a documented variation) and its callback is lost, so the check sees no new
    # version of the upload, as it would while ImageKit is still busy with the image.
    set_faults(
        emulator,
        error_rate_5xx=1.0,
        endpoints=["upload"],
        max_api_faults=1,
        result_as_new_file_rate=1.0,
        lost_rate=1.0,
    )
    product = Product.objects.create(photo=ContentFile(image_bytes(seed=41), name="retry.png"))
    job = jobs_of(product).get()
    assert services.submit(job.pk) == "retry"
    assert services.submit(job.pk) == "pending"  # this attempt's answer arrived
    settle(emulator, job.pk)
    assert len(uploads(emulator)) == 1
    assert paid_runs(emulator) == 1


def test_the_second_upload_is_never_taken_for_the_cut_out(emulator, dummy_tasks):
    set_faults(
        emulator,
        error_rate_5xx=1.0,
        endpoints=["upload"],
        max_api_faults=1,
        result_as_new_file_rate=1.0,
        lost_rate=1.0,
    )
    data = image_bytes(seed=46)
    product = Product.objects.create(photo=ContentFile(data, name="cutout.png"))
    job = jobs_of(product).get()
    assert services.submit(job.pk) == "retry"
    assert services.submit(job.pk) == "pending"
    settle(emulator, job.pk)  # today: resubmitted and uploaded again
    settle(emulator, job.pk)  # the next check
    job.refresh_from_db()
    if job.status == JobStatus.SUCCEEDED:
        versions = {v["id"]: v for f in emulator.state()["files"] for v in f["versions"]}
        assert versions[job.result_version_id]["source"] == "remove-bg"
        with product.photo.storage.open(job.result_name, "rb") as fh:
            assert fh.read() != data


# ------------------------------------------------------------------- identical images in flight


def test_the_same_image_saved_again_while_in_flight_is_paid_once(emulator, dummy_tasks):
    data = image_bytes(seed=42)
    product = Product.objects.create(photo=ContentFile(data, name="same.png"))
    first = jobs_of(product).get()
    assert services.submit(first.pk) == "pending"  # paid
    # The same photo uploaded again (a double submit of the admin form, a retried API call).
    product.photo = ContentFile(data, name="same.png")
    product.save()
    second = jobs_of(product).last()
    assert second.pk != first.pk
    services.submit(second.pk)
    settle(emulator, second.pk)
    assert paid_runs(emulator) == 1


def test_a_twin_waiting_on_a_superseded_original_is_paid_once(emulator, dummy_tasks):
    data = image_bytes(seed=43)
    original = Product.objects.create(photo=ContentFile(data, name="original.png"))
    original_job = jobs_of(original).get()
    assert services.submit(original_job.pk) == "pending"  # paid
    twin = Product.objects.create(photo=ContentFile(data, name="twin.png"))
    twin_job = jobs_of(twin).get()
    assert services.submit(twin_job.pk) == "waiting"
    # The original gets another photo while its first one is at ImageKit.
    original.photo = ContentFile(image_bytes(seed=44), name="other.png")
    original.save()
    twin_job.refresh_from_db()
    if twin_job.status == JobStatus.QUEUED:
        services.submit(twin_job.pk)
    settle(emulator, twin_job.pk)
    twin_runs = [
        r for r in emulator.state()["removeBgRuns"] if r["inputSha256"] == twin_job.source_hash
    ]
    assert len(twin_runs) == 1


def test_an_identical_image_after_its_object_was_deleted_mid_flight_is_paid_once(
    emulator, dummy_tasks
):
    data = image_bytes(seed=45)
    gone = Product.objects.create(photo=ContentFile(data, name="gone.png"))
    gone_job = jobs_of(gone).get()
    assert services.submit(gone_job.pk) == "pending"  # paid
    assert emulator.wait_idle(20)
    services.check(gone_job.pk, now=later())  # the result is found: received
    gone_job.refresh_from_db()
    assert gone_job.status == JobStatus.RECEIVED
    gone.delete()
    assert services.finalize(gone_job.pk) == "cancelled"
    again = Product.objects.create(photo=ContentFile(data, name="again.png"))
    services.submit(jobs_of(again).get().pk)
    assert emulator.wait_idle(20)
    assert paid_runs(emulator) == 1


# -------------------------------------------------------------- a task queue other than default

_QUEUE_PROBE = """
import django
from django.conf import settings

try:
    import django.tasks  # noqa: F401
    dummy = "django.tasks.backends.dummy.DummyBackend"
    apps = []
except ImportError:
    dummy = "django_tasks.backends.dummy.DummyBackend"
    apps = ["django_tasks"]
settings.configure(
    INSTALLED_APPS=[
        "django.contrib.contenttypes", "django.contrib.auth", *apps, "imagekit_bgremove"
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    TASKS={"default": {"BACKEND": dummy, "QUEUES": ["images"]}},
    IMAGEKIT_BGREMOVE={"TASK_QUEUE": "images"},
    SECRET_KEY="probe",
    USE_TZ=True,
)
django.setup()
from imagekit_bgremove import queueing

print(queueing.enqueue(queueing.SUBMIT, 1).task.queue_name)
"""


def test_a_task_queue_other_than_default_is_enough():
    import subprocess
    import sys

    probe = subprocess.run(
        [sys.executable, "-c", _QUEUE_PROBE], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip() == "images"


# ------------------------------------------------------- reconcile asks ImageKit once per check


def _detail_requests(emulator) -> int:
    return sum(1 for r in emulator.state()["requests"] if r["endpoint"] == "get_details")


def test_reconcile_does_not_ask_again_about_a_job_it_just_checked(emulator, dummy_tasks):
    # The run fails at ImageKit and its FAILURE callback is lost: the job stays pending, and
    # nothing in ImageKit's API will ever say why (it ends at the deadline).
    set_faults(emulator, extension_failure_rate=1.0, lost_rate=1.0)
    product = Product.objects.create(photo=ContentFile(image_bytes(seed=47), name="slow.png"))
    job = jobs_of(product).get()
    assert services.submit(job.pk) == "pending"
    assert emulator.wait_idle(20)
    first = later()
    assert services.reconcile(now=first)["checked"] == 1
    asked = _detail_requests(emulator)
    # cron's next run, a few minutes on (the job's own next check is due later still)
    services.reconcile(now=first + timedelta(minutes=5))
    assert _detail_requests(emulator) == asked


# ---------------------------------------------------------- a job released from waiting in vain


def test_a_job_sent_on_its_own_after_waiting_in_vain_gets_its_own_time(dummy_tasks):
    """A job waited on an identical job's run that never came; released at that run's deadline
    to be sent on its own, it gets a deadline of its own instead of failing at once as "still
    waiting to be sent"."""
    deadline = timedelta(seconds=float(app_settings.PENDING_DEADLINE_SECONDS))
    long_ago = timezone.now() - deadline - timedelta(seconds=10)
    twin, original_product = (
        Product.objects.create(photo=ContentFile(image_bytes(seed=51 + n), name=f"t{n}.png"))
        for n in range(2)
    )
    original = jobs_of(original_product).get()
    RemovalJob.objects.filter(pk=original.pk).update(
        status=JobStatus.SUPERSEDED, file_id="file_gone", error_code="no_result"
    )
    waiter = jobs_of(twin).get()
    RemovalJob.objects.filter(pk=waiter.pk).update(
        status=JobStatus.WAITING, duplicate_of=original, created_at=long_ago
    )
    from imagekit_bgremove import lifecycle

    assert lifecycle.settle_waiter(waiter.pk)  # the run it waited for is gone: sent on its own
    services.reconcile()
    waiter.refresh_from_db()
    assert waiter.status == JobStatus.QUEUED and waiter.error_code == "", waiter.error_message
    # Its own deadline still applies, from the restart.
    services.reconcile(now=timezone.now() + deadline + timedelta(seconds=1))
    waiter.refresh_from_db()
    assert (waiter.status, waiter.error_code) == (JobStatus.FAILED, "no_result")


# ------------------------------------ an original superseded after its upload's answer was lost


def _twin_after_a_lost_answer(emulator, seed: int, **faults) -> tuple[RemovalJob, RemovalJob]:
    """The original's upload attempt gets no answer (``faults`` say whether it reached
    ImageKit), its object gets another photo before the upload is looked up (the original is
    superseded), and a twin of the first photo is submitted."""
    set_faults(emulator, endpoints=["upload"], max_api_faults=1, lost_rate=1.0, **faults)
    data = image_bytes(seed=seed)
    original = Product.objects.create(photo=ContentFile(data, name=f"lost{seed}.png"))
    original_job = jobs_of(original).get()
    assert services.submit(original_job.pk) == "retry"
    original.photo = ContentFile(image_bytes(seed=seed + 1), name=f"next{seed}.png")
    original.save()
    original_job.refresh_from_db()
    assert original_job.status == JobStatus.SUPERSEDED and original_job.submission_uncertain
    twin = Product.objects.create(photo=ContentFile(data, name=f"twin{seed}.png"))
    twin_job = jobs_of(twin).get()
    assert services.submit(twin_job.pk) == "waiting"
    return original_job, twin_job


def test_a_twin_of_an_original_superseded_after_its_answer_was_lost_is_paid_once(
    emulator, dummy_tasks
):
    # The upload is stored at ImageKit (a paid run) but its answer is lost. The twin used to
    # take the superseded original for one that never reached ImageKit, and paid again; it now
    # waits until ImageKit is asked, and shares the run.
    _, twin_job = _twin_after_a_lost_answer(emulator, seed=47, answer_drop_rate=1.0)
    settle(emulator, twin_job.pk)
    twin_job.refresh_from_db()
    assert twin_job.status == JobStatus.SUCCEEDED, (twin_job.status, twin_job.error_message)
    assert paid_runs(emulator) == 1


def test_a_twin_of_an_original_superseded_before_its_lost_upload_arrived_pays(
    emulator, dummy_tasks
):
    # The other way round: the upload never reached ImageKit (dropped before the work), so
    # the waiting twin is sent on its own once ImageKit says so.
    _, twin_job = _twin_after_a_lost_answer(emulator, seed=49, drop_rate=1.0)
    assert paid_runs(emulator) == 0
    settle(emulator, twin_job.pk)  # asked ImageKit: nothing there, so the twin is queued...
    settle(emulator, twin_job.pk)  # ...sent, and its result found by the next check
    twin_job.refresh_from_db()
    assert twin_job.status == JobStatus.SUCCEEDED, (twin_job.status, twin_job.error_message)
    assert paid_runs(emulator) == 1


def test_a_lost_upload_not_found_yet_is_not_taken_for_absent_until_it_is_old(emulator, dummy_tasks):
    # ImageKit's search lags behind an upload: a lookup right after the lost answer that finds
    # nothing must not release the twin to pay (the upload may land a moment later).
    original_job, twin_job = _twin_after_a_lost_answer(emulator, seed=51, drop_rate=1.0)
    assert services.check(twin_job.pk, now=timezone.now()) == "waiting"
    twin_job.refresh_from_db()
    original_job.refresh_from_db()
    assert twin_job.status == JobStatus.WAITING and original_job.submission_uncertain


def test_a_twin_waiting_on_a_found_lost_upload_is_sent_on_its_own_after_the_deadline(
    emulator, dummy_tasks
):
    # The lost upload is found, but no result ever comes (remove-bg failed, and its callback
    # was lost: nothing in ImageKit's API says so): past the deadline the twin is sent on its
    # own instead of waiting for ever.
    original_job, twin_job = _twin_after_a_lost_answer(
        emulator, seed=53, answer_drop_rate=1.0, extension_failure_rate=1.0
    )
    assert emulator.wait_idle(20)
    assert services.check(twin_job.pk, now=later()) == "waiting"
    original_job.refresh_from_db()
    assert original_job.file_id and original_job.submitted_at is not None
    past = timezone.now() + timedelta(seconds=float(app_settings.PENDING_DEADLINE_SECONDS) + 60)
    assert services.check(twin_job.pk, now=past) == "settled"
    twin_job.refresh_from_db()
    assert twin_job.status == JobStatus.QUEUED


def test_a_twin_whose_lookup_fails_is_checked_again(emulator, dummy_tasks, run_on_commit):
    # ImageKit answers the lookup of the lost upload with errors: the twin's next check is
    # scheduled all the same (it was dropped, and without cron the twin waited for ever).
    from imagekit_bgremove.compat import task_backends

    _, twin_job = _twin_after_a_lost_answer(emulator, seed=55, answer_drop_rate=1.0)
    set_faults(emulator, error_rate_5xx=1.0, endpoints=["list_files"])
    task_backends["default"].results.clear()
    with run_on_commit():
        assert services.check(twin_job.pk, now=later()) == "error"
    checks = [r for r in task_backends["default"].results if r.task.name == "check_removal"]
    assert [c.args for c in checks] == [[twin_job.pk]]


def test_a_twin_whose_original_lost_its_field_is_still_settled(emulator, dummy_tasks):
    # The original's field was renamed since (a migration): its upload is looked up in the
    # default folder instead of the check crashing, which also stopped reconcile's whole run.
    original_job, twin_job = _twin_after_a_lost_answer(emulator, seed=57, answer_drop_rate=1.0)
    RemovalJob.objects.filter(pk=original_job.pk).update(field_name="renamed_since")
    settle(emulator, twin_job.pk)
    twin_job.refresh_from_db()
    assert twin_job.status == JobStatus.SUCCEEDED, (twin_job.status, twin_job.error_message)
    assert paid_runs(emulator) == 1


def test_a_check_past_the_deadline_is_not_due_at_once(dummy_tasks, run_on_commit):
    from imagekit_bgremove.compat import task_backends
    from imagekit_bgremove.services.reconciliation import schedule_check

    now = timezone.now()
    long_ago = now - timedelta(seconds=float(app_settings.PENDING_DEADLINE_SECONDS) * 3)
    task_backends["default"].results.clear()
    with run_on_commit():
        schedule_check(12345, long_ago, now)
    (check,) = [r for r in task_backends["default"].results if r.task.name == "check_removal"]
    # Due after the usual wait, not at once (it then ran again and again).
    assert check.task.run_after >= now + timedelta(
        seconds=float(app_settings.RECONCILE_AFTER_SECONDS)
    )


# --------------------------------------------- a callback that comes before the upload's answer


def _the_upload(emulator) -> dict:
    (upload,) = uploads(emulator)
    return upload


@pytest.mark.django_db(transaction=True)
def test_a_result_called_back_before_the_uploads_answer_is_taken_from_imagekit(live_emulator):
    """The callback comes before the job knows its own file: it cannot be bound to the job
    from its body, so it is ignored, and the check finds the result at ImageKit."""
    set_faults(live_emulator, answer_late_rate=1.0, answer_late_seconds=4.0, endpoints=["upload"])
    # The submit task runs inside the save (ImmediateBackend): the callback reaches the live
    # server while the upload's answer is held back.
    product = Product.objects.create(photo=ContentFile(image_bytes(seed=61), name="early.png"))
    job = jobs_of(product).get()
    assert job.status == JobStatus.PENDING, (job.status, job.error_message)
    (callback,) = live_emulator.state()["callbacks"]
    assert callback["attempts"][0]["status"] == 409  # "early": ImageKit is to send it again
    assert services.check(job.pk, timezone.now() + timedelta(hours=1)) == "succeeded"
    job.refresh_from_db()
    (upload,) = uploads(live_emulator)
    assert job.status == JobStatus.SUCCEEDED and job.file_id == upload["fileId"]
