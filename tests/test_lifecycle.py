"""A job's life never loses an image, pays twice or sticks: one test per defect of issue 10.

Each test drives the public surface (saves, the tasks' service functions, callbacks, reconcile)
against the emulator over HTTP, and asserts what a user would see: the jobs, the files in
storage, and what ImageKit (the emulator's ground truth) was asked to do.
"""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import transaction
from django.utils import timezone

from imagekit_bgremove import services
from imagekit_bgremove.compat import task_backends
from imagekit_bgremove.exceptions import ServerError
from imagekit_bgremove.models import UNFINISHED, JobStatus, RemovalJob
from imagekit_bgremove.services import reconciliation, submission
from tests.helpers import emulator_jobs, image_bytes, make_image, set_faults, uploads, wait_for
from tests.testapp.models import Asset, FeaturedProduct, Product, ProductProxy

pytestmark = pytest.mark.django_db


def product_with_image(run_on_commit, name="photo.png", seed=0, model=Product, **fields):
    with run_on_commit():
        return model.objects.create(photo=make_image(name, seed=seed), **fields)


def jobs_of(obj, field="photo"):
    return RemovalJob.objects.for_object(obj, field).order_by("pk")


# ------------------------------------------------------------------ 1. change detection


class OverwritingStorage(FileSystemStorage):
    """Like django-storages' S3 default (file_overwrite=True): a new file takes the old name."""

    def get_available_name(self, name, max_length=None):
        if self.exists(name):
            self.delete(name)
        return name


@pytest.fixture
def overwriting_storage(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": f"{__name__}.OverwritingStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }


def test_a_new_image_under_the_same_name_is_processed(emulator, overwriting_storage, run_on_commit):
    product = product_with_image(run_on_commit, "same.png", seed=1)
    first_name = product.photo.name
    with run_on_commit():
        product.photo = make_image("same.png", seed=2)
        product.save()
    assert product.photo.name == first_name  # the storage reused the name
    first, second = jobs_of(product)
    assert first.status == JobStatus.SUPERSEDED and second.status == JobStatus.PENDING
    assert first.source_hash != second.source_hash
    assert len(uploads(emulator)) == 2


def test_saving_after_refresh_from_db_requests_nothing(imagekit, dummy_tasks):
    product = Product.objects.create(photo=make_image("a.png", seed=3))
    elsewhere = Product.objects.get(pk=product.pk)
    elsewhere.photo = make_image("b.png", seed=4)
    elsewhere.save()  # another process changes the image: one new job
    assert jobs_of(product).count() == 2
    product.refresh_from_db()
    product.name = "renamed"
    product.save()  # an unrelated change must not request (and pay for) the image again
    jobs = list(jobs_of(product))
    assert len(jobs) == 2 and jobs[-1].status == JobStatus.QUEUED


def test_loading_a_deferred_image_field_is_not_a_change(imagekit, dummy_tasks):
    product = Product.objects.create(photo=make_image("c.png", seed=5))
    partial = Product.objects.only("name").get(pk=product.pk)
    assert partial.photo.name == product.photo.name  # loads the deferred field
    partial.name = "renamed"
    partial.save()
    assert jobs_of(product).count() == 1


def test_assigning_a_stored_name_without_loading_is_a_change(imagekit, dummy_tasks):
    product = Product.objects.create(photo=make_image("d.png", seed=6))
    other = default_storage.save("products/other.png", ContentFile(image_bytes(seed=7)))
    partial = Product.objects.only("name").get(pk=product.pk)
    partial.photo = other  # never loaded: the database is asked what it held
    partial.save()
    assert [j.source_name for j in jobs_of(product)] == [product.photo.name, other]


def test_a_proxy_saves_and_supersedes_as_its_concrete_model(emulator, run_on_commit):
    product = product_with_image(run_on_commit, "p.png", seed=8)
    proxy = ProductProxy.objects.get(pk=product.pk)
    with run_on_commit():
        proxy.photo = make_image("p2.png", seed=9)
        proxy.save()
    first, second = jobs_of(product)
    concrete = ContentType.objects.get_for_model(Product)
    assert first.content_type == second.content_type == concrete
    assert first.status == JobStatus.SUPERSEDED and first.superseded_by_id == second.pk
    assert Product.objects.get(pk=product.pk).photo.removal.pk == second.pk


def test_a_multi_table_child_shares_its_parents_jobs(emulator, run_on_commit):
    child = product_with_image(run_on_commit, "f.png", seed=10, model=FeaturedProduct)
    [job] = jobs_of(child)
    assert job.content_type == ContentType.objects.get_for_model(Product)
    parent = Product.objects.get(pk=child.pk)
    with run_on_commit():
        parent.photo = make_image("f2.png", seed=11)
        parent.save()
    job.refresh_from_db()
    assert job.status == JobStatus.SUPERSEDED
    assert FeaturedProduct.objects.get(pk=child.pk).photo.removal.status == JobStatus.PENDING


# ------------------------------------------------------------------ 2. the caller's transaction


def test_the_job_is_written_in_the_saves_transaction(imagekit, dummy_tasks, run_on_commit):
    backend = task_backends["default"]
    backend.clear()
    with run_on_commit(), transaction.atomic():
        product = Product.objects.create(photo=make_image("t.png", seed=12))
        # Part of the same transaction, before any commit: nothing can get lost after it.
        assert jobs_of(product).get().status == JobStatus.QUEUED
        assert backend.results == []  # the task waits for the commit
    assert [r.args for r in backend.results] == [[product.photo.removal.pk]]


def test_a_rollback_leaves_neither_job_nor_task(imagekit, dummy_tasks):
    backend = task_backends["default"]
    backend.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        Product.objects.create(photo=make_image("r.png", seed=13))
        raise RuntimeError("the view failed")
    assert not RemovalJob.objects.exists() and backend.results == []


def test_a_job_whose_enqueue_never_happened_is_enqueued_by_reconcile(emulator, run_on_commit):
    # As if the process died right after the commit, before the on-commit hook ran.
    product = Product.objects.create(photo=make_image("lost.png", seed=14))
    job = jobs_of(product).get()
    assert job.status == JobStatus.QUEUED
    with run_on_commit():
        summary = services.reconcile(now=timezone.now() + timedelta(minutes=11))
    assert summary["requeued"] == 1
    job.refresh_from_db()
    assert job.status != JobStatus.QUEUED and job.file_id and len(uploads(emulator)) == 1


# ------------------------------------------------------------------ 4. leases


def test_a_replaced_worker_cannot_move_the_job_back(imagekit, run_on_commit, dummy_tasks):
    product = Product.objects.create(photo=make_image("slow.png", seed=15))
    job = jobs_of(product).get()
    # Worker A claims the job, then stalls past its lease.
    RemovalJob.objects.filter(pk=job.pk).update(
        status=JobStatus.SUBMITTING, lease_token=111, lease_expires_at=timezone.now()
    )
    summary = services.reconcile(now=timezone.now() + timedelta(seconds=1))
    assert summary["unstuck"] == 1
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.submission_uncertain
    # Worker B submits it.
    assert services.submit(job.pk) == "pending"
    job.refresh_from_db()
    b_state = (job.status, job.file_id, job.lease_token)
    # Worker A wakes up with its old lease: every move it tries is refused.
    stale = {"fileId": "file_from_a", "versionInfo": {"id": "v_a"}}
    assert submission._record_submission(job, 111, stale) == "recorded"
    job.refresh_from_db()
    assert (job.status, job.file_id, job.lease_token) == b_state
    assert services.finalize(job.pk) == "skipped"


# ------------------------------------------------------------------ 5. never stuck


def test_a_refused_result_url_fails_the_job_once_and_is_not_retried(
    emulator, settings, run_on_commit, httpserver
):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "WEBHOOK_CONFIRM_WITH_API": False}
    httpserver.expect_request("/secret").respond_with_data("internal")
    product = product_with_image(run_on_commit, "u.png", seed=16)
    job = jobs_of(product).get()
    emulator.wait_idle(20)
    payload = next(c["payload"] for c in emulator.state()["callbacks"])
    payload["fileObject"]["url"] = httpserver.url_for("/secret")  # not an allowed host
    with run_on_commit():
        services.apply_callback(job.pk, payload, signed=True)  # trusted: not confirmed
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error_code == "result_host_not_allowed"
    assert "allowed" in job.error_message and "RESULT_HOSTS" in job.error_message
    assert httpserver.log == []  # never contacted
    summary = services.reconcile(now=timezone.now() + timedelta(hours=2))
    assert summary["finalize_requeued"] == 0
    assert httpserver.log == []


def test_a_storage_error_is_retried_then_recorded(emulator, settings, run_on_commit, monkeypatch):
    settings.IMAGEKIT_BGREMOVE = {
        **settings.IMAGEKIT_BGREMOVE,
        "TASK_MAX_ATTEMPTS": 2,
        "TASK_RETRY_DELAY": 60,
    }
    product = product_with_image(run_on_commit, "s.png", seed=17)
    job = jobs_of(product).get()
    emulator.wait_idle(20)

    def full(name, content, max_length=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(default_storage, "save", full)
    with run_on_commit():
        assert services.check(job.pk, now=job.submitted_at + timedelta(minutes=11)) == ("succeeded")
    job.refresh_from_db()
    assert job.status == JobStatus.RECEIVED and "No space left" in job.error_message
    assert job.next_attempt_at is not None
    with run_on_commit():
        services.reconcile(now=timezone.now() + timedelta(hours=1))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error_message.startswith("Gave up storing the result after 2 attempts")


@pytest.mark.parametrize("status", [s for s in UNFINISHED if s != JobStatus.PENDING])
def test_the_deadline_applies_to_every_unfinished_state(imagekit, dummy_tasks, status):
    product = Product.objects.create(photo=make_image("old.png", seed=18))
    job = jobs_of(product).get()
    RemovalJob.objects.filter(pk=job.pk).update(
        status=status, lease_expires_at=timezone.now() + timedelta(days=9)
    )
    summary = services.reconcile(now=timezone.now() + timedelta(hours=27))
    job.refresh_from_db()
    assert summary["overdue"] == 1
    assert job.status == JobStatus.FAILED and "26 hours" in job.error_message


# ------------------------------------------------------------------ 6. result files


def test_finalize_never_deletes_a_file_it_did_not_write(emulator, run_on_commit):
    product = product_with_image(run_on_commit, "shoe.png", seed=19)
    job = jobs_of(product).get()
    # Another object's original, stored under the name the old code computed for this result.
    bystander = f"products/shoe_nobg_{job.pk}.png"
    assert default_storage.save(bystander, ContentFile(b"someone else's")) == bystander
    emulator.wait_idle(20)
    with run_on_commit():
        services.check(job.pk, now=job.submitted_at + timedelta(minutes=11))
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.result_name != bystander
    with default_storage.open(bystander) as fh:
        assert fh.read() == b"someone else's"


def _files_under(directory: str) -> set[str]:
    return {f"{directory}/{name}" for name in default_storage.listdir(directory)[1]}


def test_a_copy_that_loses_to_a_newer_request_is_removed(emulator, run_on_commit, monkeypatch):
    product = product_with_image(run_on_commit, "race.png", seed=20)
    job = jobs_of(product).get()
    emulator.wait_idle(20)
    real_save = default_storage.save
    calls = []

    def save_while_superseded(name, content, max_length=None):
        stored = real_save(name, content, max_length=max_length)
        calls.append(stored)
        if len(calls) == 1:  # a newer image arrives while the copy is being written
            with run_on_commit():
                product.photo = make_image("race2.png", seed=21)
                product.save()
        return stored

    before = _files_under("products")
    monkeypatch.setattr(default_storage, "save", save_while_superseded)
    with run_on_commit():
        services.check(job.pk, now=job.submitted_at + timedelta(minutes=11))
    monkeypatch.undo()
    job.refresh_from_db()
    assert job.status == JobStatus.SUPERSEDED and not job.result_name
    # Only the newer original was added: the losing copy is gone.
    assert _files_under("products") - before == {Product.objects.get(pk=product.pk).photo.name}


def test_a_newer_result_during_the_copy_keeps_file_and_version_together(
    emulator, settings, run_on_commit, monkeypatch
):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "WEBHOOK_CONFIRM_WITH_API": False}
    product = product_with_image(run_on_commit, "v.png", seed=22)
    job = jobs_of(product).get()
    emulator.wait_idle(20)
    payload = next(c["payload"] for c in emulator.state()["callbacks"])
    newer = {**payload, "fileObject": {**payload["fileObject"], "versionInfo": {"id": "v-newer"}}}
    real_save = default_storage.save
    written = []

    def save_then_newer_callback(name, content, max_length=None):
        stored = real_save(name, content, max_length=max_length)
        written.append(stored)
        if len(written) == 1:  # the first copy is being written when a newer result arrives
            with run_on_commit():
                services.apply_callback(job.pk, newer, signed=True)
        return stored

    monkeypatch.setattr(default_storage, "save", save_then_newer_callback)
    with run_on_commit():
        services.apply_callback(job.pk, payload, signed=True)
    monkeypatch.undo()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.result_version_id == "v-newer"
    first, second = written
    assert job.result_name == second
    assert default_storage.exists(second) and not default_storage.exists(first)


# ------------------------------------------------------------------ 7. fileId path


def test_resubmitting_after_a_lost_answer_starts_from_the_original_version(emulator, run_on_commit):
    from imagekit_bgremove.client import get_client

    uploaded = get_client().upload(
        image_bytes(seed=23), "library.png", folder="/library", use_unique_file_name=False
    )
    original = uploaded["versionInfo"]["id"]
    with run_on_commit():
        asset = Asset.objects.create(
            imagekit_file_id=uploaded["fileId"], image=make_image("asset.png", seed=23)
        )
    job = RemovalJob.objects.get(pk=asset.image.removal.pk)
    emulator.wait_idle(20)  # the cut-out is now the file's current version
    # The same job is sent again (its answer was lost and ImageKit showed no result yet).
    RemovalJob.objects.filter(pk=job.pk).update(status=JobStatus.QUEUED)
    with run_on_commit():
        services.submit(job.pk)
    runs = emulator_jobs(emulator)
    assert len(runs) == 2
    assert {run["sourceVersionId"] for run in runs} == {original}  # never the cut-out


# ------------------------------------------------------------------ 8. paid requests


@pytest.mark.parametrize(
    "error",
    [None, ServerError("Internal error", status=500, maybe_applied=True)],
    ids=["dropped", "5xx"],
)
def test_an_upload_whose_answer_was_lost_is_found_not_sent_again(
    imagekit, settings, run_on_commit, error
):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "TASK_RETRY_DELAY": 60}
    imagekit.script("upload", lost=True, error=error)  # stored, then the answer is lost
    product = product_with_image(run_on_commit, "once.png", seed=24)
    job = jobs_of(product).get()
    assert job.status == JobStatus.QUEUED and job.submission_uncertain
    with run_on_commit():
        services.reconcile(now=timezone.now() + timedelta(minutes=2))
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING and job.file_id
    assert len(imagekit.uploads) == 1  # stored, and paid for, once


@pytest.mark.parametrize("fault", ["answer_drop_rate", "answer_error_rate"])
def test_a_patch_whose_answer_was_lost_is_not_sent_again(emulator, settings, run_on_commit, fault):
    from imagekit_bgremove.client import get_client

    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "TASK_RETRY_DELAY": 60}
    uploaded = get_client().upload(
        image_bytes(seed=25), "patched.png", folder="/library", use_unique_file_name=False
    )
    set_faults(
        emulator, lost_rate=1.0, endpoints=["update_details"], max_api_faults=1, **{fault: 1.0}
    )
    with run_on_commit():
        asset = Asset.objects.create(
            imagekit_file_id=uploaded["fileId"], image=make_image("a.png", seed=25)
        )
    job = RemovalJob.objects.get(pk=asset.image.removal.pk)
    assert job.status == JobStatus.QUEUED and job.submission_uncertain
    emulator.wait_idle(20)
    with run_on_commit():
        services.reconcile(now=timezone.now() + timedelta(minutes=2))
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED  # found the result instead of paying again
    assert len(emulator_jobs(emulator)) == 1


# ------------------------------------------------------------------ 9. smaller ones


def test_reconcile_enqueues_a_backlog_at_most_once_per_window(imagekit, dummy_tasks):
    for n in range(3):
        Product.objects.create(photo=make_image(f"b{n}.png", seed=30 + n))
    backend = task_backends["default"]
    backend.clear()
    later = timezone.now() + timedelta(minutes=11)
    assert services.reconcile(now=later)["requeued"] == 3
    assert services.reconcile(now=later + timedelta(minutes=1))["requeued"] == 0
    assert len(backend.results) == 3
    assert services.reconcile(now=later + timedelta(minutes=11))["requeued"] == 3


def test_an_unknown_source_version_is_not_taken_for_a_result(emulator, run_on_commit):
    set_faults(emulator, lost_rate=1.0, extension_failure_rate=1.0)  # no result will appear
    product = product_with_image(run_on_commit, "nv.png", seed=33)
    job = jobs_of(product).get()
    emulator.wait_idle(20)
    RemovalJob.objects.filter(pk=job.pk).update(source_version_id="")
    job.refresh_from_db()
    assert reconciliation.settle_pending(job, timezone.now()) == "waiting"
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING and not job.result_url


def test_a_result_named_as_another_file_is_not_taken(emulator, run_on_commit):
    """The contract has the result as a new version of the job's own file: a callback naming
    another file is not this job's result, whatever its body says."""
    set_faults(emulator, lost_rate=1.0, result_as_new_file_rate=1.0)
    product = product_with_image(run_on_commit, "nf.png", seed=34)
    job = jobs_of(product).get()
    payload = wait_for(lambda: next(iter(emulator.state()["callbacks"]), None), timeout=20)
    assert payload["payload"]["fileObject"]["fileId"] != job.file_id
    with run_on_commit():
        outcome = services.apply_callback(job.pk, payload["payload"], signed=True)
    assert outcome.verdict == "ignored" and not outcome.changed
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING and not job.result_url and not job.result_name


def test_a_failed_options_save_leaves_a_record(imagekit, settings, dummy_tasks):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "DEFAULT_OPTIONS": {"x": 1}}
    product = Product.objects.create(photo=make_image("o.png", seed=35))
    job = jobs_of(product).get()
    assert job.status == JobStatus.FAILED and job.error_code == "invalid_options"
    assert "Unknown option 'x'" in job.error_message


def test_not_an_image_fails_before_any_upload(imagekit, run_on_commit):
    with run_on_commit():
        product = Product.objects.create(name="text")
        name = default_storage.save("products/notes.png", io.BytesIO(b"just some text"))
        product.photo = name
        product.save()
    job = jobs_of(product).get()
    assert job.status == JobStatus.FAILED and job.error_code == "source_not_image"
    assert "notes.png" in job.error_message and imagekit.uploads == []


def test_an_image_over_the_plan_limit_fails_before_any_upload(imagekit, settings, run_on_commit):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "MAX_UPLOAD_BYTES": 100}
    product = product_with_image(run_on_commit, "big.png", seed=36)
    job = jobs_of(product).get()
    assert job.status == JobStatus.FAILED and job.error_code == "source_too_large"
    assert "MAX_UPLOAD_BYTES" in job.error_message and imagekit.uploads == []


# ------------------------------------------------------------------ the daily budget


def test_the_daily_budget_refuses_requests_and_records_saves(imagekit, settings, dummy_tasks):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "DAILY_REMOVAL_LIMIT": 2}
    first = Product.objects.create(photo=make_image("b1.png", seed=40))
    assert services.budget.remaining() == 1
    services.request_removal(first, "photo", options={"bg_color": "red"})
    assert services.budget.remaining() == 0
    with pytest.raises(services.BudgetExhausted, match="daily budget of 2"):
        services.request_removal(first, "photo")
    # A save cannot be refused: it leaves a failed job that says why.
    second = Product.objects.create(photo=make_image("b2.png", seed=41))
    job = jobs_of(second).get()
    assert job.status == JobStatus.FAILED and job.error_code == "budget_spent"
    assert "DAILY_REMOVAL_LIMIT" in job.error_message
    assert RemovalJob.objects.filter(status=JobStatus.QUEUED).count() == 1


def test_a_rolled_back_request_gives_its_budget_back(imagekit, settings, dummy_tasks):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "DAILY_REMOVAL_LIMIT": 1}
    with pytest.raises(RuntimeError), transaction.atomic():
        Product.objects.create(photo=make_image("rb.png", seed=42))
        raise RuntimeError("rolled back")
    assert services.budget.remaining() == 1


def test_commands_stop_with_an_error_once_the_budget_is_spent(imagekit, settings, dummy_tasks):
    from django.core.management import CommandError, call_command

    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "DAILY_REMOVAL_LIMIT": 1}
    Product.objects.create(photo=make_image("c1.png", seed=50))  # spends the one unit
    Product.objects.bulk_create([Product(photo="products/c1.png")])
    with pytest.raises(CommandError, match="daily budget of 1"):
        call_command("backfill_removals", "testapp.Product", "photo", stdout=io.StringIO())
