"""Enqueueing after commit (``transaction.on_commit(robust=True)``): nothing on rollback, and an
enqueue that fails neither breaks the commit nor is lost."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from imagekit_bgremove import services
from imagekit_bgremove.compat import task_backends
from imagekit_bgremove.models import JobStatus, RemovalJob
from tests.helpers import make_image, task_backend
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db(transaction=True)

seen: list[tuple[str, int, tuple]] = []


def _recording_backend_class():
    from django.utils.module_loading import import_string

    dummy = import_string(task_backend("dummy.DummyBackend"))

    class Recording(dummy):
        """Remembers what was enqueued and whether the job was committed then; can be told to
        fail."""

        fail = False

        def enqueue(self, task, args, kwargs):
            if Recording.fail:
                raise ConnectionError("the queue is down")
            committed = not connection.in_atomic_block
            seen.append((task.name, committed, tuple(args)))
            return super().enqueue(task, args, kwargs)

    return Recording


RecordingBackend = _recording_backend_class()


@pytest.fixture
def recording(settings):
    seen.clear()
    RecordingBackend.fail = False
    settings.TASKS = {"default": {"BACKEND": f"{__name__}.RecordingBackend"}}


def test_the_task_is_enqueued_once_the_save_commits(recording):
    with transaction.atomic():
        product = Product.objects.create(photo=make_image("bg.png", seed=1))
        assert seen == []
    job = RemovalJob.objects.get()
    assert seen == [("submit_removal", True, (job.pk,))]
    assert product.photo.removal == job


def test_a_rollback_enqueues_nothing(recording):
    with pytest.raises(RuntimeError), transaction.atomic():
        Product.objects.create(photo=make_image("rb.png", seed=2))
        raise RuntimeError("the view failed")
    assert seen == [] and not RemovalJob.objects.exists()


def test_a_failed_enqueue_is_recorded_and_reconciled(recording):
    RecordingBackend.fail = True
    with transaction.atomic():
        Product.objects.create(photo=make_image("down.png", seed=3))
    job = RemovalJob.objects.get()
    assert job.status == JobStatus.QUEUED and job.error_code == "enqueue_failed"
    RecordingBackend.fail = False
    services.reconcile(now=timezone.now() + timedelta(seconds=1))
    assert [s[0] for s in seen] == ["submit_removal"]
    assert task_backends["default"].results[-1].args == [job.pk]
