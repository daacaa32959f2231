"""Issue 21's concurrency behaviours with real parallel transactions on PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections, transaction

from imagekit_bgremove import lifecycle
from imagekit_bgremove.models import UNFINISHED, JobStatus, RemovalJob
from tests.helpers import make_image
from tests.testapp.models import Product

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")


def in_threads(*targets) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(target):
        try:
            target()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_two_saves_of_new_images_leave_the_live_job_for_the_image_the_row_holds(dummy_tasks):
    product = Product.objects.create(name="mug", photo=make_image("start.png"))
    for round_ in range(5):
        start = threading.Barrier(2)

        def save(seed: int) -> None:
            mine = Product.objects.get(pk=product.pk)  # loaded before the other's upload
            mine.photo = make_image(f"r{round_}-{seed}.png", seed=seed)
            start.wait(timeout=10)
            mine.save()  # autocommit: the row's UPDATE commits before the job is recorded

        assert in_threads(lambda: save(1), lambda: save(2)) == []
        [live] = RemovalJob.objects.filter(status__in=UNFINISHED)
        assert live.source_name == Product.objects.get(pk=product.pk).photo.name


def test_a_save_and_the_results_storage_do_not_deadlock(dummy_tasks):
    """The save locks the object's row, then supersedes the job; storing the result locks the
    job's row. With the object's pointers gone, storing never waits for the object's row."""
    product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    job = product.photo.removal
    RemovalJob.objects.filter(pk=job.pk).update(status=JobStatus.RECEIVED, lease_token=5)
    locked, moved = threading.Barrier(2), threading.Barrier(2)

    def save() -> None:
        with transaction.atomic():
            mine = Product.objects.select_for_update().get(pk=product.pk)
            locked.wait(timeout=10)
            moved.wait(timeout=10)  # the job's row is locked by the storing worker now
            mine.photo = make_image("next.png", seed=2)
            mine.save()

    def store() -> None:
        locked.wait(timeout=10)
        with transaction.atomic():
            assert lifecycle.succeed(job, lease=5, result_name="products/cut.png")
            moved.wait(timeout=10)
            time.sleep(0.3)  # the save now waits for this job's row

    assert in_threads(save, store) == []
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert Product.objects.get(pk=product.pk).photo.removal.status == JobStatus.QUEUED
