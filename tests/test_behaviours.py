"""What must hold when the job table is the only truth (issue 21's behaviours), and the query
budgets of the save path. The parallel ones are in ``test_concurrency_behaviours.py``."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage

from imagekit_bgremove import services
from imagekit_bgremove.admin.display import RemovalState
from imagekit_bgremove.admin.pages import DONE, verdict
from imagekit_bgremove.models import JobStatus, RemovalJob, Trigger
from imagekit_bgremove.state import forget_state
from tests.helpers import image_bytes, make_image
from tests.testapp.models import Article, Product

pytestmark = pytest.mark.django_db


def succeed(job: RemovalJob, **changes) -> RemovalJob:
    """``job`` as a worker would leave it after storing its result."""
    RemovalJob.objects.filter(pk=job.pk).update(
        status=JobStatus.SUCCEEDED,
        result_url=f"https://ik.example/{job.pk}.png",
        result_name=f"products/cut_{job.pk}.png",
        **changes,
    )
    job.refresh_from_db()
    return job


def fresh(product: Product) -> Product:
    return Product.objects.get(pk=product.pk)


def test_a_full_save_of_an_instance_loaded_earlier_changes_nothing(dummy_tasks):
    product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    stale = fresh(product)
    assert stale.photo.removal_status == JobStatus.QUEUED
    succeed(product.photo.removal)
    stale.name = "renamed"
    stale.save()  # a script, a form or a DRF update holding the old state
    now = fresh(product)
    assert now.photo.removal_status == JobStatus.SUCCEEDED
    assert now.photo.result_url and now.photo.result_file is not None
    assert RemovalJob.objects.count() == 1


class OverwritingStorage(FileSystemStorage):
    """As S3's default ``file_overwrite=True``: a new file takes the name of the old one."""

    def get_available_name(self, name, max_length=None):
        if self.exists(name):
            self.delete(name)
        return name


def test_a_new_photo_under_the_same_name_never_shows_the_old_cut_out(dummy_tasks, tmp_path):
    field = Product._meta.get_field("photo")
    storage, field.storage = field.storage, OverwritingStorage(location=str(tmp_path))
    try:
        product = Product.objects.create(name="mug", photo=ContentFile(image_bytes(), "mug.png"))
        first = succeed(product.photo.removal, options=dict(product.photo.removal.options))
        product.photo = ContentFile(image_bytes(seed=5), "mug.png")
        product.save()
        now = fresh(product)
        assert now.photo.name == first.source_name  # the same name, another image
        assert now.photo.removal_status == JobStatus.QUEUED
        assert now.photo.result_url is None and now.photo.result_file is None
        assert now.photo.last_success == first  # the latest success, of the earlier image
        assert RemovalState(now, "photo").result_job is None  # the admin shows no cut-out
        # The admin's "remove background" does not skip it as already done.
        state = RemovalState(now, "photo")
        assert verdict(state, first.remove_bg_options, force=False, allowed=True) != DONE
        second = succeed(now.photo.removal)
        forget_state(now, "photo")
        assert now.photo.result_url == second.result_url
    finally:
        field.storage = storage


def test_a_late_success_for_a_failed_job_while_a_retry_runs_keeps_the_result(client, dummy_tasks):
    from tests.test_webhook_view import post, success, url_for

    product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    failed = product.photo.removal
    RemovalJob.objects.filter(pk=failed.pk).update(
        status=JobStatus.FAILED, file_id="file_abc", source_version_id="ver_0"
    )
    retry = services.retry(failed)
    response = post(client, url_for(failed), success("file_abc", "ver_1"))
    assert response.status_code == 200, response.content
    failed.refresh_from_db()
    retry.refresh_from_db()
    assert failed.status == JobStatus.FAILED and failed.result_version_id == "ver_1"
    assert retry.status == JobStatus.QUEUED  # the live job is untouched


def test_a_request_from_a_stale_instance_is_for_the_image_the_row_holds(dummy_tasks):
    product = Product.objects.create(name="mug", photo=make_image("a.png", seed=1))
    stale = fresh(product)
    newer = fresh(product)
    newer.photo = make_image("b.png", seed=2)
    newer.save()
    job = stale.photo.request_removal()  # stale still holds a.png
    assert job.source_name == fresh(product).photo.name == newer.photo.name
    # As if a save of a.png had written its row first and its hook ran after b.png's save.
    photo = Product._meta.get_field("photo")
    late = services.request_on_save(stale, photo, created=False, using=None)
    [live] = RemovalJob.objects.filter(status__in=["queued"])
    assert live == late and live.source_name == newer.photo.name


def test_clearing_the_image_cancels_its_unpaid_job(dummy_tasks):
    product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    job = product.photo.removal
    product.photo = None
    product.save()
    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.CANCELLED, "image_cleared")
    assert fresh(product).photo.removal_status == JobStatus.CANCELLED


def test_a_primary_key_reused_after_a_delete_with_an_unfinished_job(dummy_tasks):
    product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    pk, old = product.pk, product.photo.removal
    product.delete()
    again = Product.objects.create(pk=pk, name="again", photo=make_image("again.png", seed=3))
    old.refresh_from_db()
    assert old.status == JobStatus.SUPERSEDED
    assert again.photo.removal.status == JobStatus.QUEUED


def test_a_save_that_leaves_the_image_out_does_not_hide_a_later_new_image(dummy_tasks):
    product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    product.photo.save("next.png", ContentFile(image_bytes(seed=4)), save=False)
    product.save(update_fields=["name"])  # the image is not written
    assert RemovalJob.objects.count() == 1
    product.save()  # this one stores it
    assert RemovalJob.objects.count() == 2
    assert fresh(product).photo.removal.source_name == product.photo.name


def test_a_draft_published_later_is_processed(dummy_tasks):
    article = Article.objects.create(published=False, cover=make_image("draft.png"))
    assert not RemovalJob.objects.exists()
    article.save()  # still a draft: asked again, still no
    assert not RemovalJob.objects.exists()
    article.published = True
    article.save()  # the image is unchanged, the trigger's answer is not
    [job] = RemovalJob.objects.all()
    assert job.source_name == article.cover.name and job.trigger == Trigger.SAVE
    article.save()  # requested already: not again
    assert RemovalJob.objects.count() == 1


def test_the_state_of_a_page_takes_two_queries(dummy_tasks, django_assert_num_queries):
    from imagekit_bgremove.state import prefetch_removal_state

    for n in range(6):
        Product.objects.create(name=f"p{n}", photo=make_image(f"p{n}.png", seed=n))
    products = list(Product.objects.all())
    with django_assert_num_queries(2):
        prefetch_removal_state(products)
        assert [p.photo.removal_status for p in products] == [JobStatus.QUEUED] * 6


# -- query budgets ---------------------------------------------------------------------------


def test_save_budget_of_a_new_object(dummy_tasks, django_assert_num_queries):
    # The object's INSERT, the look for an unfinished job (a deleted object's may hold the
    # primary key), the job's INSERT.
    with django_assert_num_queries(3):
        Product.objects.create(name="mug", photo=make_image("mug.png"))


def test_save_budget_of_a_new_image(dummy_tasks, django_assert_num_queries):
    product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    product.photo = make_image("next.png", seed=2)
    # The UPDATE, the row lock (with the image it holds), the unfinished job, its supersede
    # and the look for jobs waiting on it, the new job's INSERT, the superseded_by link.
    with django_assert_num_queries(7):
        product.save()


def test_save_budget_without_a_new_image(dummy_tasks, django_assert_num_queries):
    product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    product.name = "renamed"
    with django_assert_num_queries(1):
        product.save()


def test_submit_and_finalize_budgets(emulator, dummy_tasks, django_assert_max_num_queries):
    from tests.test_callbacks_service import callback_payload

    product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    job = product.photo.removal
    # Claim, the content claim, ImageKit's answer recorded (with savepoints).
    with django_assert_max_num_queries(12):
        assert services.submit(job.pk) == "pending"
    job.refresh_from_db()
    services.apply_callback(job.pk, callback_payload(emulator, job))
    # Claim, the partial copy's name, the move to succeeded and the look for waiting jobs.
    with django_assert_max_num_queries(8):
        assert services.finalize(job.pk) == "succeeded"


def test_a_lost_answer_is_looked_up_where_the_upload_went(emulator, dummy_tasks, settings):
    from tests.helpers import set_faults, uploads

    set_faults(
        emulator, answer_drop_rate=1.0, endpoints=["upload"], max_api_faults=1, lost_rate=1.0
    )
    product = Product.objects.create(photo=ContentFile(image_bytes(seed=71), name="lost.png"))
    job = product.photo.removal
    assert services.submit(job.pk) == "retry"  # stored at ImageKit, its answer lost
    job.refresh_from_db()
    assert job.submission_uncertain and job.upload_path.startswith("/bgremove/lost")
    # The settings change meanwhile: the lookup still asks where the upload went.
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "FOLDER": "/elsewhere"}
    assert services.submit(job.pk) == "pending"
    job.refresh_from_db()
    [upload] = uploads(emulator)
    assert job.file_id == upload["fileId"] and upload["filePath"] == job.upload_path


def test_upload_names_differ_across_databases_sharing_an_account(dummy_tasks):
    from imagekit_bgremove.services import remote

    job = Product.objects.create(photo=make_image("a.png")).photo.removal
    field = Product._meta.get_field("photo")
    # The same job id in another site's (or a reset) database gets another name.
    assert remote.new_upload_path(job, field) != remote.new_upload_path(job, field)


@pytest.mark.django_db(databases=["default", "other"], transaction=True)
def test_a_model_in_another_database_is_submitted_finished_and_reconciled(emulator):
    from tests.test_callbacks_service import callback_payload
    from tests.testapp.models import Poster

    poster = Poster.objects.create(image=make_image("poster.png", seed=8))
    assert poster._state.db == "other"
    job = poster.image.removal
    assert job._state.db == "default" and job.status == JobStatus.PENDING  # sent at commit
    services.apply_callback(job.pk, callback_payload(emulator, job))
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert services.reconcile()["errors"] == 0
    again = Poster.objects.get(pk=poster.pk)
    assert again.image.result_file is not None and again.image.result_url == job.result_url


@pytest.mark.django_db(databases=["default", "other"], transaction=True)
def test_a_model_in_another_database_is_sent_only_once_both_databases_committed(dummy_tasks):
    # ATOMIC_REQUESTS on "default" only, say: the poster's row commits first, the job's later.
    from django.db import transaction

    from imagekit_bgremove.compat import task_backends
    from tests.testapp.models import Poster

    enqueued = task_backends["default"].results
    with transaction.atomic(using="default"):
        poster = Poster.objects.create(image=make_image("poster.png", seed=9))
        assert not enqueued
    assert [list(result.args) for result in enqueued] == [[poster.image.removal.pk]]


def test_a_backfill_asks_for_the_image_the_row_holds_now(dummy_tasks):
    from imagekit_bgremove.removebg import RemoveBgOptions

    product = Product.objects.create(name="mug", photo=make_image("a.png", seed=1))
    read_by_the_backfill = [(product.pk, product.photo.name)]
    newer = Product.objects.get(pk=product.pk)
    newer.photo = make_image("b.png", seed=2)
    newer.save()  # an upload between the backfill's read and its request
    field = Product._meta.get_field("photo")
    services.request_batch(Product, field, read_by_the_backfill, options=RemoveBgOptions())
    [live] = RemovalJob.objects.filter(status=JobStatus.QUEUED)
    assert live.source_name == Product.objects.get(pk=product.pk).photo.name
