"""Enqueueing after commit on the process's enqueue thread (ENQUEUE_IN_BACKGROUND, the default
outside this test suite): the request does not wait for the queue, and nothing is lost."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.backends.signals import connection_created
from django.utils import timezone

from imagekit_bgremove import queueing, services
from imagekit_bgremove.compat import task_backends
from imagekit_bgremove.models import JobStatus, RemovalJob, owner_content_type
from tests.helpers import make_image, task_backend
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db(transaction=True)

seen: list[tuple[str, int, tuple]] = []


def _recording_backend_class():
    from django.utils.module_loading import import_string

    dummy = import_string(task_backend("dummy.DummyBackend"))

    class Recording(dummy):
        """Remembers which thread enqueued each task, and can be told to fail."""

        fail = False
        uses_database = False

        def enqueue(self, task, args, kwargs):
            if Recording.fail:
                raise ConnectionError("the queue is down")
            if Recording.uses_database:  # as a database task backend does
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
            seen.append((task.name, threading.get_ident(), tuple(args)))
            return super().enqueue(task, args, kwargs)

    return Recording


RecordingBackend = _recording_backend_class()


@pytest.fixture
def background(settings):
    seen.clear()
    RecordingBackend.fail = False
    RecordingBackend.uses_database = False
    settings.TASKS = {"default": {"BACKEND": f"{__name__}.RecordingBackend"}}
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "ENQUEUE_IN_BACKGROUND": True}
    yield
    assert queueing.release_connections(10)  # the test database is dropped at the end


def test_the_commit_hands_the_task_to_the_enqueue_thread(emulator, background):
    with transaction.atomic():
        product = Product.objects.create(photo=make_image("bg.png", seed=1))
    assert queueing.flush(10)
    [(name, thread, args)] = seen
    assert (name, args) == ("submit_removal", (product.photo_removal_id,))
    assert thread != threading.get_ident()  # not in the request's thread


def test_a_rollback_hands_nothing_over(emulator, background):
    with pytest.raises(RuntimeError), transaction.atomic():
        Product.objects.create(photo=make_image("rb.png", seed=2))
        raise RuntimeError("the view failed")
    assert queueing.flush(10)
    assert seen == [] and not RemovalJob.objects.exists()


def test_a_failed_background_enqueue_is_recorded_and_reconciled(emulator, background):
    RecordingBackend.fail = True
    product = Product.objects.create(photo=make_image("down.png", seed=3))
    assert queueing.flush(10)
    job = RemovalJob.objects.get(pk=product.photo_removal_id)
    assert job.status == JobStatus.QUEUED and job.error_code == "enqueue_failed"
    RecordingBackend.fail = False
    services.reconcile(now=timezone.now() + timedelta(seconds=1))
    assert queueing.flush(10)
    assert [s[0] for s in seen] == ["submit_removal"]
    assert task_backends["default"].results[-1].args == [job.pk]


def test_the_enqueue_thread_keeps_its_connection_while_busy(emulator, background):
    # Closing it after every task, as a request does under CONN_MAX_AGE=0, opened a new
    # database connection per save.
    RecordingBackend.uses_database = True
    opened: list[str] = []

    def count(sender, connection, **kwargs):
        opened.append(threading.current_thread().name)

    connection_created.connect(count)
    try:
        for seed in range(10):
            Product.objects.create(photo=make_image(f"busy{seed}.png", seed=10 + seed))
            assert queueing.flush(10)
    finally:
        connection_created.disconnect(count)
    assert len(seen) == 10
    assert opened.count("imagekit-bgremove-enqueue") <= 1, opened


def test_a_task_the_database_refuses_does_not_undo_a_paid_upload(settings, monkeypatch):
    """The check task of a job just sent is written in the transaction that records ImageKit's
    answer. If the database refuses that task, the answer must still be recorded: losing it
    would send the image again, paying twice. (A savepoint keeps the refusal to itself.)"""
    from django.db import connection as default_connection

    from imagekit_bgremove.services import submission

    settings.TASKS = {"default": {"BACKEND": task_backend("dummy.DummyBackend")}}
    product = Product.objects.create(name="mug")
    job = RemovalJob.objects.create(
        content_type=owner_content_type(Product, "photo"),
        object_id=str(product.pk),
        field_name="photo",
        status=JobStatus.QUEUED,
        source_name="products/mug.jpg",
    )

    def answered(job, lease):  # the upload went through and its answer came back
        answer = {"fileId": "file_new", "filePath": "/mug.jpg", "versionInfo": {"id": "v0"}}
        return submission._record_submission(job, lease, answer, sent_at=timezone.now())

    def refused_by_the_database(name, *args, **kwargs):
        with default_connection.cursor() as cursor:
            cursor.execute("INSERT INTO ikbg_no_such_table VALUES (1)")

    monkeypatch.setattr(submission, "_submit", answered)
    monkeypatch.setattr(queueing, "_joins_transaction", lambda using: True)
    monkeypatch.setattr(queueing, "enqueue", refused_by_the_database)
    submission.submit(job.pk)
    job.refresh_from_db()
    assert (job.status, job.file_id, job.submission_uncertain) == (
        JobStatus.PENDING,
        "file_new",
        False,
    )
