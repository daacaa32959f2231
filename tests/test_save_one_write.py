"""A new object's save writes its row once: on PostgreSQL with Django 6 the INSERT itself draws
the job's id for the ``<field>_removal`` pointer, and the job takes that id.

Whatever path a save takes, the pointer and the job must agree, and no commit may be left with
a pointer to a job that was never written (the pointer is a deferred foreign key: that would
fail the commit)."""

from __future__ import annotations

import django
import pytest
from django.db import DataError, connection, transaction
from django.test.utils import CaptureQueriesContext

from imagekit_bgremove.models import JobStatus, RemovalJob
from tests.helpers import make_image
from tests.testapp.models import Article, FeaturedProduct, Product, ProductProxy


def skip_unless_ids_are_drawn() -> None:
    if connection.vendor != "postgresql" or django.VERSION < (6, 0):
        pytest.skip("only PostgreSQL with Django 6 draws the job id in the object's INSERT")


def updates_of(queries, table: str) -> list[str]:
    return [q["sql"] for q in queries if q["sql"].startswith(f'UPDATE "{table}"')]


def assert_points_at_its_job(obj, model=Product) -> RemovalJob:
    stored = model._base_manager.get(pk=obj.pk)
    job = RemovalJob.objects.get(pk=stored.photo_removal_id)
    assert job.object_id == str(obj.pk)
    assert job.status == JobStatus.QUEUED
    assert obj.photo.removal == job
    return job


@pytest.mark.django_db(transaction=True)
def test_a_new_object_in_a_transaction_is_written_once(dummy_tasks):
    skip_unless_ids_are_drawn()
    with CaptureQueriesContext(connection) as seen, transaction.atomic():
        product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    assert updates_of(seen.captured_queries, Product._meta.db_table) == []
    assert_points_at_its_job(product)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("model", [Product, ProductProxy, FeaturedProduct])
def test_every_kind_of_save_commits_a_pointer_to_a_written_job(dummy_tasks, model):
    with transaction.atomic():
        in_transaction = model.objects.create(name="a", photo=make_image("a.png"))
    in_autocommit = model.objects.create(name="b", photo=make_image("b.png"))
    for obj in (in_transaction, in_autocommit):
        assert_points_at_its_job(obj, model)


@pytest.mark.django_db(transaction=True)
def test_bulk_create_requests_nothing_and_commits(dummy_tasks):
    # bulk_create sends no signals, so no job follows its INSERT: it must not draw one either.
    with transaction.atomic():
        made = Product.objects.bulk_create(
            [Product(name=str(i), photo=make_image(f"bulk{i}.png")) for i in range(3)]
        )
    assert RemovalJob.objects.count() == 0
    for obj in made:
        assert obj.photo_removal_id is None
    assert list(Product.objects.values_list("photo_removal_id", flat=True)) == [None] * 3


@pytest.mark.django_db(transaction=True)
def test_a_trigger_that_declines_leaves_no_pointer(dummy_tasks):
    with transaction.atomic():
        draft = Article.objects.create(published=False, cover=make_image("draft.png"))
    assert RemovalJob.objects.count() == 0
    assert Article.objects.get(pk=draft.pk).cover_removal_id is None


@pytest.mark.django_db(transaction=True)
def test_a_save_that_fails_after_its_insert_leaves_nothing(dummy_tasks):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        Product.objects.create(name="doomed", photo=make_image("doomed.png"))
        1 / 0
    assert not Product.objects.exists()
    assert not RemovalJob.objects.exists()
    # The same instance saved again after a failed attempt still gets one job of its own.
    product = Product(name="again", photo=make_image("again.png"))
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        product.save()
        1 / 0
    product.pk = None
    product._state.adding = True
    product.photo = make_image("again2.png")
    with transaction.atomic():
        product.save()
    assert_points_at_its_job(product)
    assert RemovalJob.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_save_retried_after_its_insert_failed_gets_its_job(dummy_tasks):
    # A failed INSERT leaves the drawn id's expression on the instance; a retry, in a
    # transaction or not, must neither reuse it nor draw one outside a transaction.
    skip_unless_ids_are_drawn()  # (SQLite would not even refuse the long name)
    product = Product(name="x" * 101, photo=make_image("retry.png"))  # over max_length
    with pytest.raises(DataError), transaction.atomic():
        product.save()
    product.name = "fixed"
    product.save()  # autocommit
    assert_points_at_its_job(product)
    assert RemovalJob.objects.count() == 1
    again = Product(name="y" * 101, photo=make_image("retry2.png"))
    with pytest.raises(DataError), transaction.atomic():
        again.save()
    again.name = "fixed too"
    with transaction.atomic():
        again.save()
    assert_points_at_its_job(again)
