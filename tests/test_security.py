"""Issue 9, through the webhook as an attacker would use it: the result download trusts only the
configured delivery hosts, and nothing a callback says makes the app fetch anything else.

Every "other host" here is a real local server that records whether it was contacted."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from imagekit_bgremove.conf import EMULATOR_WEBHOOK_SECRET
from imagekit_bgremove.models import JobStatus, RemovalJob
from imagekit_bgremove.signatures import signature_headers
from imagekit_bgremove.tokens import make_token
from tests.helpers import make_image, wait_for
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db


@pytest.fixture
def trusting_the_body(settings):
    """The weakest configuration: the callback's URL is used as it is (no API confirmation)."""
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "WEBHOOK_CONFIRM_WITH_API": False}


def pending_job(emulator, run_on_commit):
    with run_on_commit():
        product = Product.objects.create(photo=make_image("target.png", seed=9))
    job = RemovalJob.objects.get(pk=product.photo.removal.pk)
    callback = wait_for(lambda: next(iter(emulator.state()["callbacks"]), None), timeout=20)
    return job, callback["payload"]


def deliver(client, run_on_commit, job, payload, *, signed=True):
    """POST ``payload`` to the job's webhook; signed by default (with the API check off, only a
    signed result is taken at all)."""
    url = reverse("imagekit_bgremove:webhook", kwargs={"token": make_token(job.pk)})
    body = json.dumps(payload).encode()
    headers = signature_headers(body, EMULATOR_WEBHOOK_SECRET) if signed else {}
    with run_on_commit():
        response = client.post(url, data=body, content_type="application/json", headers=headers)
    job.refresh_from_db()
    return response


def with_url(payload, url):
    return {**payload, "fileObject": {**payload["fileObject"], "url": url}}


@pytest.mark.parametrize(
    "where",
    ["recording server", "file:///etc/passwd", "http://127.0.0.1:22/", "http://localhost/secret"],
)
def test_a_callback_cannot_make_the_app_fetch_another_host(
    client, emulator, run_on_commit, trusting_the_body, httpserver, where
):
    httpserver.expect_request("/secret").respond_with_data("internal data")
    url = httpserver.url_for("/secret") if where == "recording server" else where
    job, payload = pending_job(emulator, run_on_commit)
    response = deliver(client, run_on_commit, job, with_url(payload, url))
    assert response.status_code == 200
    assert job.status == JobStatus.FAILED and job.error_code == "result_host_not_allowed"
    assert not job.result_name
    assert httpserver.log == []


def test_with_api_confirmation_the_callbacks_url_is_not_used_at_all(
    client, emulator, run_on_commit, httpserver
):
    httpserver.expect_request("/secret").respond_with_data("internal data")
    job, payload = pending_job(emulator, run_on_commit)
    response = deliver(client, run_on_commit, job, with_url(payload, httpserver.url_for("/secret")))
    assert response.status_code == 200
    assert job.status == JobStatus.SUCCEEDED  # the result ImageKit's API names
    assert job.result_url.startswith(emulator.url_endpoint)
    assert httpserver.log == []


@pytest.fixture
def other_server():
    from pytest_httpserver import HTTPServer

    server = HTTPServer(host="127.0.0.1")
    server.start()
    yield server
    server.clear()
    server.stop()


def test_a_redirect_to_another_host_is_refused_before_connecting(
    client, emulator, settings, run_on_commit, trusting_the_body, httpserver, other_server
):
    # The allowed host redirects to another one, which must never be contacted.
    other = other_server
    other.expect_request("/loot").respond_with_data("internal data")
    allowed = f"{httpserver.host}:{httpserver.port}"
    httpserver.expect_request("/result.png").respond_with_data(
        "", status=302, headers={"Location": other.url_for("/loot")}
    )
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "RESULT_HOSTS": [allowed]}
    job, payload = pending_job(emulator, run_on_commit)
    deliver(client, run_on_commit, job, with_url(payload, httpserver.url_for("/result.png")))
    assert job.status == JobStatus.FAILED and job.error_code == "result_host_not_allowed"
    assert len(httpserver.log) == 1 and other.log == []


def test_errors_never_reveal_other_hosts_connection_details(
    client, emulator, settings, run_on_commit, trusting_the_body
):
    # Even on an allowed host, a closed port is not described beyond "could not connect".
    settings.IMAGEKIT_BGREMOVE = {
        **settings.IMAGEKIT_BGREMOVE,
        "RESULT_HOSTS": ["127.0.0.1:9"],
        "TASK_MAX_ATTEMPTS": 1,
    }
    job, payload = pending_job(emulator, run_on_commit)
    deliver(client, run_on_commit, job, with_url(payload, "http://127.0.0.1:9/x.png"))
    assert job.status == JobStatus.FAILED
    message = job.error_message.lower()
    assert "could not connect" in message
    for leak in ("refused", "errno", "newconnectionerror", "max retries", "111"):
        assert leak not in message


def test_an_unsigned_success_cannot_overturn_a_failure(
    client, emulator, run_on_commit, trusting_the_body
):
    job, payload = pending_job(emulator, run_on_commit)
    failure = {"service": "remove-bg", "status": "FAILURE", "fileId": job.file_id, "error": {}}
    deliver(client, run_on_commit, job, failure)
    assert job.status == JobStatus.FAILED
    response = deliver(client, run_on_commit, job, payload, signed=False)
    assert response.json()["verdict"] == "ignored"
    assert job.status == JobStatus.FAILED and not job.result_name
