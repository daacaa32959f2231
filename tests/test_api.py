"""The REST API: create, retrieve, list, retry, and who may do it."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.urls import reverse
from rest_framework.test import APIClient

from imagekit_bgremove.models import JobStatus, RemovalJob, Trigger
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db

LIST_URL = "/imagekit-bgremove/api/removals/"


def png_bytes(size=(24, 16)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def make_product(name: str = "mug") -> Product:
    """A product with an image and no removal job yet (bulk_create sends no save signals)."""
    product = Product(name=name)
    product.photo.save(f"{name}.png", ContentFile(png_bytes()), save=False)
    [product] = Product.objects.bulk_create([product])
    return product


@pytest.fixture
def editor() -> User:
    user = User.objects.create_user("editor")
    user.user_permissions.add(
        Permission.objects.get(codename="change_product", content_type__app_label="testapp")
    )
    return user


@pytest.fixture
def api(editor) -> APIClient:
    client = APIClient()
    client.force_authenticate(editor)
    return client


def create_body(product: Product, **extra) -> dict:
    return {"model": "testapp.product", "object_id": str(product.pk), "field": "photo", **extra}


def test_routes():
    assert reverse("imagekit_bgremove:removal-list") == LIST_URL
    assert reverse("imagekit_bgremove:removal-detail", kwargs={"pk": 7}) == LIST_URL + "7/"
    assert reverse("imagekit_bgremove:removal-retry", kwargs={"pk": 7}) == LIST_URL + "7/retry/"


def test_create_is_202_with_the_queued_job(api, editor):
    product = make_product()
    response = api.post(
        LIST_URL, create_body(product, options={"bg_color": "#00FF00"}), format="json"
    )
    assert response.status_code == 202, response.content
    body = response.json()
    job = RemovalJob.objects.get(pk=body["id"])
    assert body["status"] == JobStatus.QUEUED
    assert body["model"] == "testapp.product"
    assert body["field"] == "photo"
    assert body["options"]["bg_color"] == "00ff00"
    assert body["url"].endswith(f"/api/removals/{job.pk}/")
    assert response["Location"] == body["url"]
    assert (job.trigger, job.requested_by) == (Trigger.API, editor)


def test_create_uses_field_defaults(api):
    product = make_product()
    response = api.post(LIST_URL, create_body(product), format="json")
    assert response.status_code == 202
    assert response.json()["options"]["bg_color"] == "ffffff"  # the field's remove_bg_options


def test_option_errors_are_per_field(api):
    product = make_product()
    response = api.post(
        LIST_URL,
        create_body(
            product,
            options={
                "bg_color": "not a colour",
                "add_shadow": "maybe",
                "speed": 3,
            },
        ),
        format="json",
    )
    assert response.status_code == 400
    errors = response.json()["options"]
    assert set(errors) == {"bg_color", "add_shadow", "non_field_errors"}
    assert "hex colour" in errors["bg_color"][0]
    assert "speed" in errors["non_field_errors"][0]
    assert not RemovalJob.objects.exists()


def test_both_backgrounds_is_400(api):
    product = make_product()
    response = api.post(
        LIST_URL,
        create_body(
            product, options={"bg_color": "fff", "bg_image_url": "https://example.com/bg.jpg"}
        ),
        format="json",
    )
    assert response.status_code == 400
    assert "cannot both be set" in response.json()["options"]["non_field_errors"][0]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"model": "testapp.nosuchmodel"}, "model"),
        ({"model": "nodot"}, "model"),
        ({"field": "name"}, "field"),
        ({"object_id": "999999"}, "object_id"),
    ],
)
def test_bad_target_is_400(api, change, key):
    product = make_product()
    response = api.post(LIST_URL, {**create_body(product), **change}, format="json")
    assert response.status_code == 400
    assert key in response.json()


def test_object_without_image_is_400(api):
    product = Product.objects.create(name="empty")
    response = api.post(LIST_URL, create_body(product), format="json")
    assert response.status_code == 400
    assert "has no image" in response.json()["field"][0]
    assert not RemovalJob.objects.exists()


def test_anonymous_is_refused():
    product = make_product()
    response = APIClient().post(LIST_URL, create_body(product), format="json")
    assert response.status_code in (401, 403)
    assert APIClient().get(LIST_URL).status_code in (401, 403)


def test_without_change_permission_is_403():
    product = make_product()
    client = APIClient()
    client.force_authenticate(User.objects.create_user("viewer"))
    response = client.post(LIST_URL, create_body(product), format="json")
    assert response.status_code == 403
    assert not RemovalJob.objects.exists()
    # Refused before validation: whether an object exists is not revealed.
    missing = {**create_body(product), "object_id": "424242"}
    assert client.post(LIST_URL, missing, format="json").status_code == 403


def job_for(product: Product, **changes) -> RemovalJob:
    values = {
        "content_type": ContentType.objects.get_for_model(Product),
        "object_id": str(product.pk),
        "field_name": "photo",
        **changes,
    }
    return RemovalJob.objects.create(**values)


def test_retrieve(api):
    product = make_product()
    job = job_for(
        product,
        status=JobStatus.SUCCEEDED,
        result_url="https://ik.example/a.png",
        result_name="products/mug_nobg.png",
        result_width=24,
        result_height=16,
    )
    response = api.get(f"{LIST_URL}{job.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["finished"] is True
    assert body["result_url"] == "https://ik.example/a.png"
    assert body["result_file_url"].endswith("products/mug_nobg.png")
    assert (body["result_width"], body["result_height"]) == (24, 16)


def test_retrieve_without_permission_is_403(api):
    product = make_product()
    job = job_for(product)
    other = APIClient()
    other.force_authenticate(User.objects.create_user("viewer"))
    assert other.get(f"{LIST_URL}{job.pk}/").status_code == 403
    assert api.get(f"{LIST_URL}{job.pk + 1000}/").status_code == 404


def test_list_filters_and_paginates(api):
    mug, cup = make_product("mug"), make_product("cup")
    job_for(mug, status=JobStatus.FAILED)
    job_for(mug, status=JobStatus.SUCCEEDED)
    job_for(cup, status=JobStatus.SUCCEEDED)
    body = api.get(LIST_URL).json()
    assert body["count"] == 3 and len(body["results"]) == 3
    body = api.get(LIST_URL, {"model": "testapp.product", "object_id": str(mug.pk)}).json()
    assert body["count"] == 2
    body = api.get(LIST_URL, {"object_id": str(mug.pk), "status": "failed"}).json()
    assert [r["status"] for r in body["results"]] == ["failed"]
    body = api.get(LIST_URL, {"page_size": 1}).json()
    assert body["count"] == 3 and len(body["results"]) == 1 and body["next"]
    assert api.get(LIST_URL, {"status": "bogus"}).status_code == 400
    assert api.get(LIST_URL, {"model": "nope.nope"}).status_code == 400


def test_list_queries_do_not_grow_with_rows(api, editor, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    job_for(make_product("first"), requested_by=editor, result_name="products/first_nobg.png")
    with CaptureQueriesContext(connection) as one:
        assert api.get(LIST_URL).status_code == 200
    for i in range(6):
        job_for(make_product(f"more{i}"), requested_by=editor, result_name=f"products/{i}.png")
    with django_assert_max_num_queries(len(one)):
        body = api.get(LIST_URL).json()
    assert body["count"] == 7
    assert {r["requested_by"] for r in body["results"]} == {"editor"}
    assert all(r["result_file_url"].endswith(".png") for r in body["results"])


def test_list_hides_models_the_user_cannot_change(api):
    product = make_product()
    job_for(product)
    user_ct = ContentType.objects.get_for_model(User)
    RemovalJob.objects.create(content_type=user_ct, object_id="1", field_name="photo")
    assert api.get(LIST_URL).json()["count"] == 1
    assert api.get(LIST_URL, {"model": "auth.user"}).status_code == 403


def test_retry(api):
    product = make_product()
    job = job_for(product, status=JobStatus.FAILED, options={"bg_color": "00ff00"})
    response = api.post(f"{LIST_URL}{job.pk}/retry/")
    assert response.status_code == 202
    new = RemovalJob.objects.get(pk=response.json()["id"])
    assert new.pk != job.pk
    assert (new.trigger, new.status, new.options["bg_color"]) == (
        Trigger.RETRY,
        JobStatus.QUEUED,
        "00ff00",
    )


def test_retry_of_unfailed_job_is_409(api):
    product = make_product()
    job = job_for(product, status=JobStatus.SUCCEEDED)
    response = api.post(f"{LIST_URL}{job.pk}/retry/")
    assert response.status_code == 409
    assert "Only failed jobs" in response.json()["detail"]


def test_create_reaches_the_emulator(api, django_capture_on_commit_callbacks, settings):
    testing = pytest.importorskip("imagekit_emulator.testing")
    product = make_product()
    with testing.running_emulator() as emulator:
        url = getattr(emulator, "url", None) or str(emulator)
        settings.IMAGEKIT_BGREMOVE = {
            **settings.IMAGEKIT_BGREMOVE,
            "EMULATOR_URL": url,
            "COPY_RESULT": False,
        }
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(LIST_URL, create_body(product), format="json")
        assert response.status_code == 202
        job = RemovalJob.objects.get(pk=response.json()["id"])
        assert job.status in (JobStatus.PENDING, JobStatus.SUCCEEDED), job.error_message
        assert job.file_id
