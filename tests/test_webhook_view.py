"""The webhook endpoint: every status code it can answer, and what it records."""

from __future__ import annotations

import json
import time

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.test import RequestFactory
from django.urls import reverse

from imagekit_bgremove import services
from imagekit_bgremove.conf import EMULATOR_WEBHOOK_SECRET
from imagekit_bgremove.models import (
    DeliveryVerdict,
    JobStatus,
    RemovalJob,
    WebhookCount,
    WebhookDelivery,
)
from imagekit_bgremove.signatures import signature_headers
from imagekit_bgremove.tokens import make_token
from imagekit_bgremove.webhooks import webhook_view
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db


def make_job(**changes) -> RemovalJob:
    product = Product.objects.create(name="mug")
    values = {
        "content_type": ContentType.objects.get_for_model(Product),
        "object_id": str(product.pk),
        "field_name": "photo",
        "status": JobStatus.PENDING,
        "file_id": "file_abc",
        "source_version_id": "ver_0",
        **changes,
    }
    return RemovalJob.objects.create(**values)


def success(file_id: str = "file_abc", version: str = "ver_1") -> bytes:
    return json.dumps(
        {
            "service": "remove-bg",
            "status": "SUCCESS",
            "fileObject": {
                "fileId": file_id,
                "name": "mug.jpg",
                "filePath": "/bgremove/mug.jpg",
                "url": f"http://127.0.0.1:1/ik/bgremove/mug.jpg?updatedAt={version}",
                "mime": "image/png",
                "width": 40,
                "height": 30,
                "size": 1234,
                "versionInfo": {"id": version, "name": "Version 2"},
            },
        }
    ).encode()


def counted() -> dict[str, int]:
    """What the endpoint counted instead of storing: {kind: requests}."""
    totals: dict[str, int] = {}
    for kind, count in WebhookCount.objects.values_list("kind", "count"):
        totals[kind] = totals.get(kind, 0) + count
    return totals


def url_for(job_or_token) -> str:
    token = job_or_token if isinstance(job_or_token, str) else make_token(job_or_token.pk)
    return reverse("imagekit_bgremove:webhook", kwargs={"token": token})


def post(client, url: str, body: bytes, *, sign: bool | str = True, **headers):
    if sign:
        secret = sign if isinstance(sign, str) else EMULATOR_WEBHOOK_SECRET
        headers = {**signature_headers(body, secret), **headers}
    headers.setdefault("User-Agent", "ImageKit-Webhook/1.0")
    headers.setdefault("x-ik-requestId", "req-123")
    return client.post(url, data=body, content_type="application/json", headers=headers)


def test_url_shape():
    assert url_for("1:abc") == "/imagekit-bgremove/webhooks/imagekit/1:abc/"


def test_success_is_accepted_then_duplicate(client):
    job = make_job()
    response = post(client, url_for(job), success())
    assert response.status_code == 200
    assert response.json()["verdict"] == "accepted"
    job.refresh_from_db()
    assert job.result_version_id == "ver_1"

    again = post(client, url_for(job), success())
    assert again.status_code == 200
    assert again.json()["verdict"] == "duplicate"

    # The repeat is counted, not stored: ImageKit may repeat a callback for a day.
    first = WebhookDelivery.objects.get()
    assert (first.verdict, first.status_code, first.job_id) == ("accepted", 200, job.pk)
    assert counted() == {"duplicate": 1}
    assert first.signature_scheme == "standard"
    assert first.body_size == len(success())
    assert json.loads(first.body)["status"] == "SUCCESS"
    assert first.headers["x-ik-requestid"] == "req-123"
    assert first.headers["user-agent"] == "ImageKit-Webhook/1.0"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-ik-signature"].startswith("t=")
    assert "webhook-signature" in first.headers
    assert first.remote_addr == "127.0.0.1"


def test_unsigned_callback_is_accepted_when_not_required(client):
    job = make_job()
    response = post(client, url_for(job), success(), sign=False)
    assert (response.status_code, response.json()["verdict"]) == (200, "accepted")
    assert WebhookDelivery.objects.get().signature_scheme == ""
    job.refresh_from_db()
    assert job.result_version_id == "ver_1"


def test_callback_for_superseded_job_is_ignored(client):
    job = make_job(status=JobStatus.SUPERSEDED)
    response = post(client, url_for(job), success())
    assert response.status_code == 200
    assert response.json()["verdict"] == "ignored"
    assert WebhookDelivery.objects.get().verdict == DeliveryVerdict.IGNORED


def test_failure_callback_fails_the_job(client):
    job = make_job()
    body = json.dumps(
        {
            "service": "remove-bg",
            "status": "FAILURE",
            "fileId": "file_abc",
            "error": {"message": "Could not identify foreground"},
        }
    ).encode()
    response = post(client, url_for(job), body)
    assert response.status_code == 200
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "foreground" in job.error_message


def test_forged_token_is_403(client):
    job = make_job()
    response = post(client, url_for(f"{job.pk}:forgedsignature"), success())
    assert response.status_code == 403
    assert response.json()["verdict"] == "unauthentic"
    assert not WebhookDelivery.objects.exists()
    assert counted() == {"bad_token": 1}
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING


def test_token_moved_to_another_job_is_403(client):
    job, other = make_job(), make_job(file_id="file_other")
    signature = make_token(job.pk).split(":", 1)[1]
    response = post(client, url_for(f"{other.pk}:{signature}"), success("file_other"))
    assert response.status_code == 403
    other.refresh_from_db()
    assert other.status == JobStatus.PENDING


def test_bad_signature_is_401(client):
    job = make_job()
    response = post(client, url_for(job), success(), sign="whsec_not_the_right_one")
    assert response.status_code == 401
    assert response.json()["reason"] == "mismatch"
    assert not WebhookDelivery.objects.exists()
    assert counted() == {"signature_mismatch": 1}


def test_body_changed_after_signing_is_401(client):
    job = make_job()
    headers = signature_headers(success(version="ver_1"), EMULATOR_WEBHOOK_SECRET)
    response = post(client, url_for(job), success(version="ver_2"), sign=False, **headers)
    assert response.status_code == 401


def test_stale_signature_is_401(client):
    job = make_job()
    body = success()
    headers = signature_headers(body, EMULATOR_WEBHOOK_SECRET, now=time.time() - 3600)
    response = post(client, url_for(job), body, sign=False, **headers)
    assert response.status_code == 401
    assert response.json()["reason"] == "stale"
    assert counted() == {"signature_stale": 1}


def test_missing_signature_when_required_is_401(client, settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "WEBHOOK_REQUIRE_SIGNATURE": True}
    job = make_job()
    response = post(client, url_for(job), success(), sign=False)
    assert response.status_code == 401
    assert response.json()["reason"] == "missing"
    # ...and a signed one still passes.
    assert post(client, url_for(job), success()).status_code == 200


def test_malformed_json_is_400(client):
    job = make_job()
    response = post(client, url_for(job), b"{not json")
    assert response.status_code == 400
    assert response.json()["verdict"] == "malformed"
    assert not WebhookDelivery.objects.exists()
    assert counted() == {"malformed": 1}


def test_json_nested_too_deeply_is_a_clean_400(client):
    job = make_job()
    body = b"[" * 100_000 + b"]" * 100_000
    response = post(client, url_for(job), body)
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["message"]
    assert not WebhookDelivery.objects.exists()


def test_non_string_result_url_is_400_and_changes_nothing(client):
    job = make_job()
    payload = json.loads(success())
    payload["fileObject"]["url"] = {"href": "file:///etc/passwd"}
    response = post(client, url_for(job), json.dumps(payload).encode())
    assert response.status_code == 400
    assert "fileObject.url must be a string" in response.json()["message"]
    job.refresh_from_db()
    assert (job.status, job.result_url) == (JobStatus.PENDING, "")


def test_a_flood_of_bad_tokens_costs_bounded_storage(client):
    job = make_job()
    body = success() + b" " * 20_000  # each request carries 20 KB
    for n in range(1000):
        response = post(client, url_for(f"{job.pk}:forged{n}"), body, sign=False)
        assert response.status_code == 403
    assert not WebhookDelivery.objects.exists()
    # One row per kind and minute, whatever the number of requests (the run may cross a minute).
    assert WebhookCount.objects.count() <= 2
    assert counted() == {"bad_token": 1000}


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2, 3],
        {"service": "remove-bg", "status": "DONE"},
        {"service": "google-auto-tagging", "status": "SUCCESS"},
        {"service": "remove-bg", "status": "SUCCESS", "fileObject": {"url": "http://x/y.png"}},
    ],
)
def test_wrong_shape_is_400(client, payload):
    job = make_job()
    response = post(client, url_for(job), json.dumps(payload).encode())
    assert response.status_code == 400
    assert not WebhookDelivery.objects.exists()
    assert counted() == {"malformed": 1}


@pytest.mark.parametrize("method", ["get", "put", "delete", "options"])
def test_only_post_is_allowed(client, method):
    job = make_job()
    response = getattr(client, method)(url_for(job))
    assert response.status_code == 405


def test_oversized_body_is_413_unread(client, settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "WEBHOOK_MAX_BODY_BYTES": 200}
    job = make_job()
    response = post(client, url_for(job), success())
    assert response.status_code == 413
    assert not WebhookDelivery.objects.exists()
    assert counted() == {"body_too_large": 1}


def test_oversized_body_without_content_length_is_413(settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "WEBHOOK_MAX_BODY_BYTES": 200}
    job = make_job()
    request = RequestFactory().post(url_for(job), data=success(), content_type="application/json")
    request.META["CONTENT_LENGTH"] = ""  # as with a chunked body: the length is not declared
    response = webhook_view(request, token=make_token(job.pk))
    assert response.status_code == 413
    assert b"over the 200-byte limit" in response.content
    assert counted() == {"body_too_large": 1}


def test_body_within_limit_is_read_whole(client, settings):
    body = success()
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "WEBHOOK_MAX_BODY_BYTES": len(body)}
    job = make_job()
    assert post(client, url_for(job), body).status_code == 200


def test_accept_header_is_ignored(client):
    job = make_job()
    response = post(client, url_for(job), success(), Accept="application/xml")
    assert response.status_code == 200
    assert client.get(url_for(job), HTTP_ACCEPT="text/plain").status_code == 405


def test_csrf_is_not_required():
    from django.test import Client

    job = make_job()
    response = post(Client(enforce_csrf_checks=True), url_for(job), success())
    assert (response.status_code, response.json()["verdict"]) == (200, "accepted")


def test_login_required_middleware_lets_it_through(client, settings):
    settings.MIDDLEWARE = [
        *settings.MIDDLEWARE,
        "django.contrib.auth.middleware.LoginRequiredMiddleware",
    ]
    job = make_job()
    response = post(client, url_for(job), success())
    assert (response.status_code, response.json()["verdict"]) == (200, "accepted")


def test_unexpected_error_is_500_and_recorded(client, monkeypatch):
    job = make_job()

    def broken(job_id, callback, signed, then, **ignored):
        raise RuntimeError("boom")

    monkeypatch.setattr(services, "apply_parsed_callback", broken)
    response = post(client, url_for(job), success())
    assert response.status_code == 500
    delivery = WebhookDelivery.objects.get()
    assert (delivery.verdict, delivery.status_code) == ("error", 500)
    assert "RuntimeError: boom" in delivery.error


@pytest.mark.django_db(transaction=True)
def test_a_failure_after_the_job_moved_undoes_it_and_the_retry_applies(
    client, monkeypatch, dummy_tasks
):
    from imagekit_bgremove import queueing

    job = make_job()
    enqueue = queueing.enqueue_on_commit

    def failing(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(queueing, "enqueue_on_commit", failing)
    assert post(client, url_for(job), success()).status_code == 500
    job.refresh_from_db()
    assert (job.status, job.result_url) == (JobStatus.PENDING, "")  # nothing half-applied
    monkeypatch.setattr(queueing, "enqueue_on_commit", enqueue)
    again = post(client, url_for(job), success())  # ImageKit delivers it again
    assert (again.status_code, again.json()["verdict"]) == (200, "accepted")
    job.refresh_from_db()
    assert job.status == JobStatus.RECEIVED and job.result_version_id == "ver_1"
    assert list(WebhookDelivery.objects.order_by("pk").values_list("verdict", "status_code")) == [
        ("error", 500),
        ("accepted", 200),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_delivery_that_cannot_be_recorded_undoes_the_callback(client, monkeypatch, dummy_tasks):
    job = make_job()
    save = WebhookDelivery.save

    def failing_once(delivery, *args, **kwargs):
        if delivery.verdict == "accepted":
            raise RuntimeError("disk full")
        return save(delivery, *args, **kwargs)

    monkeypatch.setattr(WebhookDelivery, "save", failing_once)
    assert post(client, url_for(job), success()).status_code == 500
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING  # not applied without its record: ImageKit retries
    [delivery] = WebhookDelivery.objects.all()
    # The error row says what happened, not the verdict that was rolled back.
    assert (delivery.verdict, delivery.status_code, delivery.outcome) == ("error", 500, "")
    assert "disk full" in delivery.error and delivery.job_id == job.pk


@pytest.mark.django_db(transaction=True)
def test_atomic_requests_delivery_survives_failed_processing(client, monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    job = make_job()
    seen = {}

    def failing(job_id, callback, signed, then, **ignored):
        # The view runs outside ATOMIC_REQUESTS: its failure cannot take the record with it.
        seen["autocommit"] = connection.get_autocommit() and not connection.in_atomic_block
        with connection.cursor() as cursor:  # a real database error (aborts a PG transaction)
            cursor.execute("SELECT no_such_column FROM imagekit_bgremove_removaljob")

    monkeypatch.setattr(services, "apply_parsed_callback", failing)
    response = post(client, url_for(job), success())
    assert response.status_code == 500
    assert seen == {"autocommit": True}
    delivery = WebhookDelivery.objects.get()
    assert (delivery.verdict, delivery.status_code) == ("error", 500)
    assert delivery.error


def test_deleted_job_is_ignored(client):
    job = make_job()
    url = url_for(job)
    job.delete()
    response = post(client, url, success())
    assert response.status_code == 200
    assert response.json()["verdict"] == "ignored"


def test_duplicate_of_a_succeeded_job_changes_nothing(client):
    job = make_job(
        status=JobStatus.SUCCEEDED,
        result_version_id="ver_1",
        result_url="http://127.0.0.1:1/ik/bgremove/mug.jpg?updatedAt=ver_1",
    )
    before = RemovalJob.objects.filter(pk=job.pk).values().get()
    response = post(client, url_for(job), success())
    assert response.status_code == 200
    assert response.json()["verdict"] == "duplicate"
    assert RemovalJob.objects.filter(pk=job.pk).values().get() == before
    # A different result version for a succeeded job goes through the service: ignored.
    response = post(client, url_for(job), success(version="ver_9"))
    assert (response.status_code, response.json()["verdict"]) == (200, "ignored")
    assert RemovalJob.objects.filter(pk=job.pk).values().get() == before


def test_prune_webhook_deliveries(settings):
    from datetime import timedelta
    from io import StringIO

    from django.core.management import call_command
    from django.utils import timezone

    now = timezone.now()
    for days in (1, 10, 40, 400):
        WebhookDelivery.objects.create(received_at=now - timedelta(days=days))
    out = StringIO()
    call_command("prune_webhook_deliveries", "--dry-run", stdout=out)
    assert "Would delete 2 webhook deliveries" in out.getvalue()
    assert WebhookDelivery.objects.count() == 4
    call_command("prune_webhook_deliveries", "--days", "5", stdout=out)
    assert "Deleted 3 webhook deliveries" in out.getvalue()
    settings.IMAGEKIT_BGREMOVE = {
        **settings.IMAGEKIT_BGREMOVE,
        "WEBHOOK_DELIVERY_RETENTION_DAYS": 0,
    }
    call_command("prune_webhook_deliveries", stdout=out)
    assert not WebhookDelivery.objects.exists()
