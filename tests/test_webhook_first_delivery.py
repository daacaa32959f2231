"""The webhook's one decision path: the job's row is locked, the callback decided and applied,
and the delivery recorded only when a job changed, in one transaction. Query budgets included."""

from __future__ import annotations

import json
import threading

import pytest
from django.db import connections

from imagekit_bgremove import services
from imagekit_bgremove.callback import parse_callback
from imagekit_bgremove.models import JobStatus, WebhookCount, WebhookDelivery
from tests.test_webhook_view import make_job, post, success, url_for

pytestmark = pytest.mark.django_db


def callback(version: str = "ver_1", file_id: str = "file_abc"):
    return parse_callback(json.loads(success(file_id, version)))


FAILURE = json.dumps(
    {"service": "remove-bg", "status": "FAILURE", "error": {"reason": "no subject found"}}
).encode()


def test_a_first_delivery_budget(client, dummy_tasks, django_assert_num_queries):
    job = make_job()
    # Lock the job, move it, look for jobs waiting on it, record the delivery (+ savepoints).
    with django_assert_num_queries(6):
        response = post(client, url_for(job), success())
    assert (response.status_code, response.json()["verdict"]) == (200, "accepted")
    job.refresh_from_db()
    assert (job.status, job.result_version_id) == (JobStatus.RECEIVED, "ver_1")
    assert WebhookDelivery.objects.filter(job=job, verdict="accepted").count() == 1


def test_a_repeated_delivery_writes_no_delivery_row(client, dummy_tasks, django_assert_num_queries):
    job = make_job()
    post(client, url_for(job), success())
    post(client, url_for(job), success())  # this minute's count row exists from here on
    # Lock the job (it changes nothing), count the repeat.
    with django_assert_num_queries(4):
        response = post(client, url_for(job), success())
    assert (response.status_code, response.json()["verdict"]) == (200, "duplicate")
    assert WebhookDelivery.objects.count() == 1
    assert WebhookCount.objects.get(kind="duplicate").count == 2


def test_ignored_callbacks_are_counted_not_stored(client, dummy_tasks):
    """A FAILURE after a SUCCESS is ignored: a hundred of them add no delivery rows."""
    job = make_job()
    post(client, url_for(job), success())
    for _ in range(100):
        response = post(client, url_for(job), FAILURE)
        assert (response.status_code, response.json()["verdict"]) == (200, "ignored")
    assert WebhookDelivery.objects.count() == 1
    assert WebhookCount.objects.get(kind="ignored").count == 100


def test_identical_jobs_waiting_on_it_get_the_result_at_once(dummy_tasks):
    job = make_job()
    twin = make_job(status=JobStatus.WAITING, file_id="", duplicate_of=job)
    assert services.apply_parsed_callback(job.pk, callback(), signed=True).verdict == "accepted"
    twin.refresh_from_db()
    assert (twin.status, twin.result_version_id) == (JobStatus.RECEIVED, "ver_1")


@pytest.mark.django_db(transaction=True)
def test_the_same_first_delivery_twice_at_once_is_accepted_once(dummy_tasks):
    """Two deliveries of one callback (ImageKit's retry racing the original), in parallel
    transactions: the row lock lets one accept it, the other sees a repeat."""
    job = make_job()
    start = threading.Barrier(2)
    verdicts: list[str] = []
    errors: list[BaseException] = []

    def deliver():
        try:
            start.wait(timeout=10)
            verdicts.append(services.apply_parsed_callback(job.pk, callback(), signed=True).verdict)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert sorted(verdicts) == ["accepted", "duplicate"]
    job.refresh_from_db()
    assert (job.status, job.result_version_id) == (JobStatus.RECEIVED, "ver_1")
