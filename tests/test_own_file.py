"""A callback counts only for the job's own file (issue 22 item 1), through HTTP as ImageKit
would send it: another job's file, a body naming the version the job sent, a FAILURE for
another file, an unsigned body nothing would check. Each is refused with no change and no row."""

from __future__ import annotations

import json

import pytest

from imagekit_bgremove.models import JobStatus, RemovalJob, WebhookDelivery
from tests.test_webhook_view import make_job, post, success, url_for

pytestmark = pytest.mark.django_db


def failure(file_id: str) -> bytes:
    return json.dumps(
        {"service": "remove-bg", "status": "FAILURE", "fileId": file_id, "error": {"reason": "x"}}
    ).encode()


def unchanged(job: RemovalJob) -> bool:
    before = {f.attname: getattr(job, f.attname) for f in job._meta.concrete_fields}
    job.refresh_from_db()
    return before == {f.attname: getattr(job, f.attname) for f in job._meta.concrete_fields}


def test_a_signed_success_naming_another_jobs_file_is_ignored(client, dummy_tasks):
    mine = make_job(file_id="file_mine")
    make_job(file_id="file_theirs")
    response = post(client, url_for(mine), success("file_theirs", "ver_9"))
    assert (response.status_code, response.json()["verdict"]) == (200, "ignored")
    assert unchanged(mine) and mine.status == JobStatus.PENDING
    assert not WebhookDelivery.objects.exists()


def test_a_failed_job_is_not_made_to_succeed_by_another_file(client, dummy_tasks):
    job = make_job(file_id="file_mine", status=JobStatus.FAILED)
    response = post(client, url_for(job), success("file_theirs", "ver_9"))
    assert response.json()["verdict"] == "ignored"
    assert unchanged(job) and job.status == JobStatus.FAILED


def test_a_result_naming_the_version_the_job_sent_is_ignored(client, dummy_tasks):
    job = make_job(file_id="file_mine", source_version_id="ver_0")
    response = post(client, url_for(job), success("file_mine", "ver_0"))
    assert response.json()["verdict"] == "ignored"
    assert unchanged(job)


def test_a_callback_before_the_job_knows_its_file_is_asked_for_again(client, dummy_tasks):
    """ImageKit may call back before the worker recorded the upload's answer: the callback is
    not bound from its body, and a non-200 makes ImageKit deliver it again later."""
    job = make_job(file_id="", status=JobStatus.SUBMITTING)
    for body in (success("file_any", "ver_1"), failure("file_any")):
        response = post(client, url_for(job), body)
        assert (response.status_code, response.json()["verdict"]) == (409, "early")
        assert unchanged(job) and job.file_id == ""
    assert not WebhookDelivery.objects.exists()


def test_a_failure_for_another_file_does_not_fail_the_job(client, dummy_tasks):
    job = make_job(file_id="file_mine")
    for named in ("file_theirs", ""):
        response = post(client, url_for(job), failure(named))
        assert response.json()["verdict"] == "ignored"
        assert unchanged(job) and job.status == JobStatus.PENDING
    assert post(client, url_for(job), failure("file_mine")).json()["verdict"] == "accepted"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED


def test_an_unsigned_result_needs_the_api_check(client, dummy_tasks, settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "WEBHOOK_CONFIRM_WITH_API": False}
    job = make_job(file_id="file_abc")
    response = post(client, url_for(job), success(), sign=False)
    assert response.json()["verdict"] == "ignored"
    assert unchanged(job)
    assert post(client, url_for(job), success()).json()["verdict"] == "accepted"  # signed


def test_a_superseded_job_keeps_only_its_own_files_result(client, dummy_tasks):
    job = make_job(file_id="file_mine", status=JobStatus.SUPERSEDED)
    assert post(client, url_for(job), success("file_theirs", "ver_9")).json()["verdict"] == (
        "ignored"
    )
    assert unchanged(job) and not job.result_url
    post(client, url_for(job), success("file_mine", "ver_1"))
    job.refresh_from_db()
    assert job.status == JobStatus.SUPERSEDED and job.result_version_id == "ver_1"


def test_a_foreign_result_is_never_handed_to_identical_images(client, dummy_tasks):
    original = make_job(file_id="file_mine")
    twin = make_job(status=JobStatus.WAITING, file_id="", duplicate_of=original)
    post(client, url_for(original), success("file_theirs", "ver_9"))
    twin.refresh_from_db()
    assert twin.status == JobStatus.WAITING and not twin.result_url


def test_an_unsigned_second_result_does_not_replace_the_one_being_stored(client, dummy_tasks):
    job = make_job(file_id="file_abc")
    assert post(client, url_for(job), success("file_abc", "ver_1")).json()["verdict"] == "accepted"
    job.refresh_from_db()
    assert job.status == JobStatus.RECEIVED
    forged = post(client, url_for(job), success("file_abc", "ver_forged"), sign=False)
    assert (forged.status_code, forged.json()["verdict"]) == (200, "ignored")
    assert unchanged(job) and job.result_version_id == "ver_1"


def test_an_unsigned_result_nothing_would_check_is_not_kept_for_identical_images(
    client, dummy_tasks, settings
):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "WEBHOOK_CONFIRM_WITH_API": False}
    job = make_job(file_id="file_abc", status=JobStatus.SUPERSEDED)
    forged = post(client, url_for(job), success("file_abc", "ver_forged"), sign=False)
    assert forged.json()["verdict"] == "ignored" and unchanged(job) and not job.result_url
    genuine = post(client, url_for(job), success("file_abc", "ver_real"))
    assert genuine.json()["verdict"] == "ignored"  # kept, not taken
    job.refresh_from_db()
    assert job.status == JobStatus.SUPERSEDED and job.result_version_id == "ver_real"
