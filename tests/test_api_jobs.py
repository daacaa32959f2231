"""The jobs API's answers, through DRF's test client: strict input, retries, 401/403/404/409/413/
429, ETags, and the object-level permission check on create."""

from __future__ import annotations

import base64
import json

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from imagekit_bgremove.api import CanChangeTarget, RemovalViewSet
from imagekit_bgremove.models import JobStatus, RemovalJob, Trigger
from tests.conftest import image_bytes
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db

LIST_URL = "/imagekit-bgremove/api/removals/"


@pytest.fixture(autouse=True)
def _fresh_throttle_counts(dummy_tasks, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()  # throttle counts live in the default cache, across tests
    yield
    cache.clear()


def make_product(name: str = "mug") -> Product:
    """A product with an image and no job yet (bulk_create sends no save signals)."""
    product = Product(name=name)
    product.photo.save(f"{name}.png", SimpleUploadedFile(f"{name}.png", image_bytes()), save=False)
    [product] = Product.objects.bulk_create([product])
    return product


def job_for(product: Product, **changes) -> RemovalJob:
    values = {
        "content_type": ContentType.objects.get_for_model(Product),
        "object_id": str(product.pk),
        "field_name": "photo",
        "source_name": product.photo.name,
        **changes,
    }
    return RemovalJob.objects.create(**values)


def editor_user(name: str = "editor") -> User:
    user = User.objects.create_user(name, password="pw-" + name)
    user.user_permissions.add(
        Permission.objects.get(codename="change_product", content_type__app_label="testapp")
    )
    return user


@pytest.fixture
def editor() -> User:
    return editor_user()


@pytest.fixture
def api(editor) -> APIClient:
    client = APIClient()
    client.force_authenticate(editor)
    return client


def body(product: Product, **extra) -> dict:
    return {"model": "testapp.product", "object_id": str(product.pk), "field": "photo", **extra}


# -- strict input -------------------------------------------------------------------------------


def test_unknown_fields_are_400_naming_them(api):
    product = make_product()
    response = api.post(LIST_URL, body(product, colour="red", speed=3), format="json")
    assert response.status_code == 400
    errors = response.json()
    assert set(errors) == {"colour", "speed"}
    assert "Unknown field" in errors["colour"][0] and "options" in errors["colour"][0]
    assert not RemovalJob.objects.exists()


def test_a_multipart_file_is_not_silently_ignored(api):
    product = make_product()
    upload = SimpleUploadedFile("x.png", image_bytes(), content_type="image/png")
    response = api.post(LIST_URL, {**body(product), "image": upload}, format="multipart")
    assert response.status_code == 400
    assert "Unknown field" in response.json()["image"][0]
    assert not RemovalJob.objects.exists()


@pytest.mark.parametrize("fmt", ["json", "multipart"])
def test_options_as_a_json_string(api, fmt):
    product = make_product()
    options = json.dumps({"bg_color": "#ABCDEF", "add_shadow": True})
    response = api.post(LIST_URL, body(product, options=options), format=fmt)
    assert response.status_code == 202, response.content
    job = RemovalJob.objects.get()
    assert (job.options["bg_color"], job.options["add_shadow"]) == ("abcdef", True)


def test_options_as_an_object_in_multipart_is_a_clear_400(api):
    product = make_product()
    response = api.post(LIST_URL, body(product, options="not json"), format="multipart")
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["options"][0]
    response = api.post(LIST_URL, body(product, options="[1, 2]"), format="json")
    assert "must be an object" in response.json()["options"][0]


def test_options_errors_in_a_json_string_are_per_option(api):
    product = make_product()
    options = json.dumps({"bg_color": "nope", "speed": 1})
    response = api.post(LIST_URL, body(product, options=options), format="multipart")
    assert response.status_code == 400
    errors = response.json()["options"]
    assert set(errors) == {"bg_color", "non_field_errors"}


def test_null_options_mean_the_defaults(api):
    product = make_product()
    response = api.post(LIST_URL, body(product, options=None), format="json")
    assert response.status_code == 202
    assert response.json()["options"]["bg_color"] == "ffffff"


def test_options_of_the_create_form_are_writable(api):
    # OPTIONS describes what a POST takes (it used to mark model, object_id and field read-only).
    post = api.options(LIST_URL).json()["actions"]["POST"]
    for name in ("model", "object_id", "field", "options", "force"):
        assert post[name]["read_only"] is False, name
    assert post["model"]["required"] is True


def test_create_answers_location_and_retry_after(api):
    product = make_product()
    response = api.post(LIST_URL, body(product), format="json")
    assert response.status_code == 202
    assert response["Location"] == response.json()["url"]
    assert int(response["Retry-After"]) >= 1


# -- retry ---------------------------------------------------------------------------------------


def test_retry_with_new_options_is_a_new_attempt_linked_to_the_old(api):
    product = make_product()
    old = job_for(
        product,
        status=JobStatus.FAILED,
        options={"add_shadow": True, "semitransparency": True, "bg_color": "00ff00"},
    )
    response = api.post(f"{LIST_URL}{old.pk}/retry/", {"options": {"bg_color": "red"}}, "json")
    assert response.status_code == 202, response.content
    new = RemovalJob.objects.get(pk=response.json()["id"])
    assert new.retry_of == old and new.trigger == Trigger.RETRY
    # The new options over the failed job's: the shadow stays, the colour changes.
    assert (new.options["bg_color"], new.options["add_shadow"]) == ("red", True)
    assert response["Location"].endswith(f"/api/removals/{new.pk}/")
    assert response.json()["retry_of"] == old.pk
    assert api.get(f"{LIST_URL}{old.pk}/").json()["retried_as"] == new.pk


def test_retry_options_as_a_multipart_json_string(api):
    product = make_product()
    old = job_for(product, status=JobStatus.FAILED)
    response = api.post(
        f"{LIST_URL}{old.pk}/retry/", {"options": '{"bg_color": "blue"}'}, format="multipart"
    )
    assert response.status_code == 202
    assert RemovalJob.objects.get(pk=response.json()["id"]).options["bg_color"] == "blue"


def test_retry_without_options_keeps_the_old_ones(api):
    product = make_product()
    old = job_for(product, status=JobStatus.FAILED, options={"bg_color": "00ff00"})
    response = api.post(f"{LIST_URL}{old.pk}/retry/")
    assert response.status_code == 202
    assert RemovalJob.objects.get(pk=response.json()["id"]).options["bg_color"] == "00ff00"


def test_a_retried_job_cannot_be_retried_again(api):
    product = make_product()
    old = job_for(product, status=JobStatus.FAILED)
    first = api.post(f"{LIST_URL}{old.pk}/retry/").json()
    response = api.post(f"{LIST_URL}{old.pk}/retry/")
    assert response.status_code == 409
    data = response.json()
    assert data["code"] == "already_retried"
    assert data["job"]["id"] == first["id"] and data["job"]["url"] == first["url"]
    assert response["Location"] == first["url"]
    assert f"#{first['id']}" in data["detail"]
    assert RemovalJob.objects.count() == 2  # no second paid attempt


def test_retry_of_a_job_that_did_not_fail_is_409(api):
    product = make_product()
    job = job_for(product, status=JobStatus.SUCCEEDED)
    response = api.post(f"{LIST_URL}{job.pk}/retry/")
    assert response.status_code == 409
    assert response.json()["code"] == "not_retryable"


def test_retry_refuses_unknown_fields_and_bad_options(api):
    product = make_product()
    job = job_for(product, status=JobStatus.FAILED)
    response = api.post(f"{LIST_URL}{job.pk}/retry/", {"force": True}, format="json")
    assert response.status_code == 400 and "force" in response.json()
    response = api.post(f"{LIST_URL}{job.pk}/retry/", {"options": {"bg_color": "x"}}, "json")
    assert response.status_code == 400 and "bg_color" in response.json()["options"]
    assert RemovalJob.objects.count() == 1


# -- authentication and permissions --------------------------------------------------------------


def test_anonymous_gets_401_with_www_authenticate():
    # SessionAuthentication comes first (as in DRF's defaults) and cannot ask for credentials;
    # the next one that can is named.
    product = make_product()
    client = APIClient()
    for response in (client.get(LIST_URL), client.post(LIST_URL, body(product), format="json")):
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Token"
        assert response.json()["code"] == "not_authenticated"


def test_with_drf_default_authentication_the_challenge_is_basic(monkeypatch):
    from rest_framework.authentication import BasicAuthentication, SessionAuthentication

    monkeypatch.setattr(
        RemovalViewSet, "authentication_classes", [SessionAuthentication, BasicAuthentication]
    )
    response = APIClient().get(LIST_URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="api"'


def test_only_session_authentication_is_403():
    # Nothing can ask for credentials: DRF's rule, 403.
    from rest_framework.authentication import SessionAuthentication

    class SessionOnly(RemovalViewSet):
        authentication_classes = [SessionAuthentication]

    view = SessionOnly.as_view({"get": "list"})
    from rest_framework.test import APIRequestFactory

    response = view(APIRequestFactory().get(LIST_URL))
    assert response.status_code == 403
    assert "WWW-Authenticate" not in response


def test_bad_credentials_get_401(editor):
    client = APIClient()
    bad = base64.b64encode(b"editor:wrong").decode()
    response = client.get(LIST_URL, HTTP_AUTHORIZATION=f"Basic {bad}")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic")  # the scheme tried
    assert response.json()["code"] == "authentication_failed"
    good = base64.b64encode(b"editor:pw-editor").decode()
    assert client.get(LIST_URL, HTTP_AUTHORIZATION=f"Basic {good}").status_code == 200


def test_session_without_csrf_token_is_403(editor):
    product = make_product()
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(editor)
    response = client.post(LIST_URL, body(product), format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


def test_without_permission_is_403_with_a_code():
    product = make_product()
    client = APIClient()
    client.force_authenticate(User.objects.create_user("viewer"))
    response = client.post(LIST_URL, body(product), format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


class NotLockedProducts(CanChangeTarget):
    """A project's object-level rule: products named 'locked' are off limits."""

    def has_object_permission(self, request, view, obj) -> bool:
        target = obj.get_target() if isinstance(obj, RemovalJob) else obj
        if getattr(target, "name", "") == "locked":
            return False
        return super().has_object_permission(request, view, obj)


def test_create_runs_the_object_level_check_on_the_target(api, monkeypatch):
    monkeypatch.setattr(RemovalViewSet, "permission_classes", [NotLockedProducts])
    locked, free = make_product("locked"), make_product("free")
    response = api.post(LIST_URL, body(locked), format="json")
    assert response.status_code == 403
    assert not RemovalJob.objects.exists()
    assert api.post(LIST_URL, body(free), format="json").status_code == 202


def test_retry_runs_the_object_level_check_on_the_target(api, monkeypatch):
    locked = make_product("locked")
    job = job_for(locked, status=JobStatus.FAILED)
    monkeypatch.setattr(RemovalViewSet, "permission_classes", [NotLockedProducts])
    assert api.post(f"{LIST_URL}{job.pk}/retry/").status_code == 403
    assert RemovalJob.objects.count() == 1


def test_unknown_job_is_404_with_a_code(api):
    response = api.get(f"{LIST_URL}424242/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert api.post(f"{LIST_URL}424242/retry/").status_code == 404


# -- 413 and 429 ---------------------------------------------------------------------------------


def test_oversized_body_is_413(api):
    product = make_product()
    padding = "x" * (RemovalViewSet.max_body_bytes + 1)
    response = api.post(LIST_URL, body(product, options={"bg_color": padding}), format="json")
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert not RemovalJob.objects.exists()


def test_spent_budget_is_429_with_a_message(api, settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "DAILY_REMOVAL_LIMIT": 1}
    first, second = make_product("first"), make_product("second")
    assert api.post(LIST_URL, body(first), format="json").status_code == 202
    response = api.post(LIST_URL, body(second), format="json")
    assert response.status_code == 429
    data = response.json()
    assert data["code"] == "budget_exhausted"
    assert "daily budget of 1" in data["detail"]
    assert 0 < int(response["Retry-After"]) <= 86400
    assert RemovalJob.objects.count() == 1
    # A retry is paid work too.
    failed = job_for(second, status=JobStatus.FAILED)
    assert api.post(f"{LIST_URL}{failed.pk}/retry/").status_code == 429


def test_create_and_retry_are_throttled_in_their_own_scope(api, settings):
    settings.REST_FRAMEWORK = {
        **getattr(settings, "REST_FRAMEWORK", {}),
        "DEFAULT_THROTTLE_RATES": {"imagekit_bgremove": "2/hour"},
    }
    product = make_product()
    assert api.post(LIST_URL, body(product), format="json").status_code == 202
    failed = job_for(make_product("other"), status=JobStatus.FAILED)
    assert api.post(f"{LIST_URL}{failed.pk}/retry/").status_code == 202
    response = api.post(LIST_URL, body(product), format="json")
    assert response.status_code == 429
    assert response.json()["code"] == "throttled"
    assert int(response["Retry-After"]) > 0
    # Reading is not throttled; another user has their own count.
    assert api.get(LIST_URL).status_code == 200
    other = APIClient()
    other.force_authenticate(editor_user("other"))
    assert other.post(LIST_URL, body(product), format="json").status_code == 202


def test_the_throttle_is_on_by_default_and_off_only_when_removed(api, settings):
    from imagekit_bgremove.api import RemovalRateThrottle

    assert RemovalRateThrottle().get_rate() == RemovalRateThrottle.default_rate
    settings.REST_FRAMEWORK = {
        **getattr(settings, "REST_FRAMEWORK", {}),
        "DEFAULT_THROTTLE_RATES": {"imagekit_bgremove": None},
    }
    product = make_product()
    for _ in range(3):
        assert api.post(LIST_URL, body(product), format="json").status_code == 202


# -- ETag ----------------------------------------------------------------------------------------


def test_job_detail_has_an_etag_and_answers_304_while_nothing_changed(api, editor):
    product = make_product()
    job = job_for(product, status=JobStatus.FAILED, requested_by=editor)
    url = f"{LIST_URL}{job.pk}/"
    first = api.get(url)
    etag = first["ETag"]
    assert etag.startswith('W/"') and "no-cache" in first["Cache-Control"]
    again = api.get(url, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    assert again.content == b"" and again["ETag"] == etag
    assert api.get(url, HTTP_IF_NONE_MATCH=f'"other", {etag}').status_code == 304
    assert api.get(url, HTTP_IF_NONE_MATCH='"other"').status_code == 200

    RemovalJob.objects.filter(pk=job.pk).update(file_id="file_1")  # any change, even silent
    changed = api.get(url, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag
    assert changed.json()["file_id"] == "file_1"
    # A newer attempt is part of the representation too.
    etag = changed["ETag"]
    job_for(product, status=JobStatus.QUEUED, retry_of=job)
    assert api.get(url, HTTP_IF_NONE_MATCH=etag).status_code == 200


def test_a_304_needs_the_same_permission_as_a_200(api):
    product = make_product()
    job = job_for(product)
    etag = api.get(f"{LIST_URL}{job.pk}/")["ETag"]
    other = APIClient()
    other.force_authenticate(User.objects.create_user("viewer"))
    assert other.get(f"{LIST_URL}{job.pk}/", HTTP_IF_NONE_MATCH=etag).status_code == 403
    assert APIClient().get(f"{LIST_URL}{job.pk}/", HTTP_IF_NONE_MATCH=etag).status_code == 401


def test_polling_a_304_costs_a_fixed_number_of_queries(api, django_assert_max_num_queries):
    product = make_product()
    job = job_for(product)
    etag = api.get(f"{LIST_URL}{job.pk}/")["ETag"]
    with django_assert_max_num_queries(3):  # the job, and the user's permissions
        assert api.get(f"{LIST_URL}{job.pk}/", HTTP_IF_NONE_MATCH=etag).status_code == 304


def test_cancel_a_queued_or_pending_job_and_only_those(api):
    product = make_product()
    queued = job_for(product)
    response = api.post(f"{LIST_URL}{queued.pk}/cancel/")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "cancelled"
    assert response.json()["error_message"] == "Cancelled by editor."
    pending = job_for(product, status=JobStatus.PENDING)
    assert api.post(f"{LIST_URL}{pending.pk}/cancel/").json()["status"] == "cancelled"
    response = api.post(f"{LIST_URL}{pending.pk}/cancel/")
    assert response.status_code == 409 and response.json()["code"] == "not_cancellable"
    assert response["Location"].endswith(f"/removals/{pending.pk}/")


def test_cancel_needs_the_change_permission(api):
    job = job_for(make_product())
    reader = User.objects.create_user("reader")
    client = APIClient()
    client.force_authenticate(reader)
    assert client.post(f"{LIST_URL}{job.pk}/cancel/").status_code in (403, 404)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
