"""A first SUCCESS for a pending job: applied from the read that also answers repeats, with one
UPDATE guarded by what that read saw. Whatever changes in between must send the callback down
the locked path, so the outcome is the same as if the row had been locked all along."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from imagekit_bgremove import services
from imagekit_bgremove.callback import parse_callback
from imagekit_bgremove.models import JobStatus, RemovalJob
from tests.test_webhook_view import make_job, post, success, url_for

pytestmark = pytest.mark.django_db


def callback(version: str = "ver_1", file_id: str = "file_abc"):
    import json

    return parse_callback(json.loads(success(file_id, version)))


def statements(queries) -> list[str]:
    return [
        q["sql"]
        for q in queries
        if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO"))
    ]


def test_a_first_delivery_is_one_read_one_update_one_record(client, dummy_tasks):
    job = make_job()
    with CaptureQueriesContext(connection) as seen:
        response = post(client, url_for(job), success())
    assert (response.status_code, response.json()["verdict"]) == (200, "accepted")
    sql = statements(seen.captured_queries)
    assert not any("FOR UPDATE" in s for s in sql), sql
    assert [s.split()[0] for s in sql] == ["SELECT", "UPDATE", "INSERT"], sql
    job.refresh_from_db()
    assert (job.status, job.result_version_id) == (JobStatus.RECEIVED, "ver_1")


def test_a_job_that_moved_after_the_read_takes_the_locked_path(dummy_tasks):
    job = make_job()
    stale = services.read_for_callback(job.pk, callback()).job
    assert stale is not None and stale.status == JobStatus.PENDING
    # Meanwhile the same result arrives by another way (the scheduled check, a parallel retry).
    assert services.apply_parsed_callback(job.pk, callback(), signed=True).verdict == "accepted"
    outcome = services.apply_parsed_callback(job.pk, callback(), signed=True, seen=stale)
    assert outcome.verdict == "duplicate"
    job.refresh_from_db()
    assert (job.status, job.result_version_id) == (JobStatus.RECEIVED, "ver_1")


def test_what_the_read_decided_from_is_checked_again_when_applied(dummy_tasks):
    job = make_job(file_path="")
    stale = services.read_for_callback(job.pk, callback()).job
    # Still pending, but the submission has since recorded where ImageKit keeps the file.
    RemovalJob.objects.filter(pk=job.pk).update(file_path="/products/mug__ikbg1.jpg")
    outcome = services.apply_parsed_callback(job.pk, callback(), signed=True, seen=stale)
    assert outcome.verdict == "accepted"
    job.refresh_from_db()
    # Decided again under the lock: the path the job holds now is kept, not the callback's.
    assert job.file_path == "/products/mug__ikbg1.jpg"
    assert (job.status, job.result_version_id) == (JobStatus.RECEIVED, "ver_1")


def test_identical_jobs_waiting_on_it_get_the_result_at_once(dummy_tasks):
    job = make_job()
    twin = make_job(status=JobStatus.WAITING, file_id="", duplicate_of=job)
    assert services.read_for_callback(job.pk, callback()).job.has_waiters
    assert (
        services.apply_parsed_callback(
            job.pk, callback(), signed=True, seen=services.read_for_callback(job.pk, callback()).job
        ).verdict
        == "accepted"
    )
    twin.refresh_from_db()
    assert (twin.status, twin.result_version_id) == (JobStatus.RECEIVED, "ver_1")


@pytest.mark.django_db(transaction=True)
def test_the_same_first_delivery_twice_at_once_is_accepted_once(dummy_tasks):
    """Two deliveries of one callback (ImageKit's retry racing the original) both read the job
    as pending; then both apply it, in parallel transactions."""
    job = make_job()
    read_done = threading.Barrier(2)
    verdicts: list[str] = []
    errors: list[BaseException] = []

    def deliver():
        try:
            seen = services.read_for_callback(job.pk, callback()).job
            read_done.wait(timeout=10)
            verdicts.append(
                services.apply_parsed_callback(job.pk, callback(), signed=True, seen=seen).verdict
            )
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


@pytest.mark.django_db(transaction=True)
def test_a_task_the_backend_refuses_does_not_undo_the_result(client, dummy_tasks, monkeypatch):
    """With tasks stored in the same database the finalize task is written in the callback's
    own transaction; if the backend refuses it, the result still stands (the task is handed
    over at commit as usual, and reconcile enqueues what that loses)."""
    from imagekit_bgremove import queueing

    calls = []

    def refusing(name, *args, **kwargs):
        calls.append(name)
        raise RuntimeError("the task backend says no")

    monkeypatch.setattr(queueing, "_joins_transaction", lambda using: True)
    monkeypatch.setattr(queueing, "enqueue", refusing)
    job = make_job()
    response = post(client, url_for(job), success())
    assert (response.status_code, response.json()["verdict"]) == (200, "accepted")
    job.refresh_from_db()
    assert (job.status, job.result_version_id) == (JobStatus.RECEIVED, "ver_1")
    assert calls == ["finalize_removal", "finalize_removal"]  # in the transaction, then at commit
