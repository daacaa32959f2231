"""Enqueueing after commit on the process's enqueue thread (ENQUEUE_IN_BACKGROUND, the default
outside this test suite): the request does not wait for the queue, and nothing is lost."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from imagekit_bgremove import queueing, services
from imagekit_bgremove.compat import task_backends
from imagekit_bgremove.models import JobStatus, RemovalJob
from tests.conftest import make_image, task_backend
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db(transaction=True)

seen: list[tuple[str, int, tuple]] = []


def _recording_backend_class():
    from django.utils.module_loading import import_string

    dummy = import_string(task_backend("dummy.DummyBackend"))

    class Recording(dummy):
        """Remembers which thread enqueued each task, and can be told to fail."""

        fail = False

        def enqueue(self, task, args, kwargs):
            if Recording.fail:
                raise ConnectionError("the queue is down")
            seen.append((task.name, threading.get_ident(), tuple(args)))
            return super().enqueue(task, args, kwargs)

    return Recording


RecordingBackend = _recording_backend_class()


@pytest.fixture
def background(settings):
    seen.clear()
    RecordingBackend.fail = False
    settings.TASKS = {"default": {"BACKEND": f"{__name__}.RecordingBackend"}}
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "ENQUEUE_IN_BACKGROUND": True}
    yield
    queueing.flush(10)


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
