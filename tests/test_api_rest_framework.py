"""imagekit_bgremove.rest_framework on a project's own API: the image field on a ModelSerializer,
its options, and the remove-background action of the viewset mixin, through DRF's test client.

This module is its own URLconf: a products API over the test app's Product, with an
object-level permission of the project's (products named "locked" are off limits)."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import include, path
from rest_framework import serializers, viewsets
from rest_framework.permissions import BasePermission
from rest_framework.routers import SimpleRouter
from rest_framework.test import APIClient

from imagekit_bgremove.models import JobStatus, RemovalJob, Trigger
from imagekit_bgremove.rest_framework import (
    BackgroundRemovalField,
    BackgroundRemovalViewSetMixin,
    RemovalOptionsField,
    StrictFieldsMixin,
)
from tests.conftest import image_bytes
from tests.testapp.models import Product


class ProductSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    photo = BackgroundRemovalField(required=False, allow_null=True)
    photo_options = RemovalOptionsField()

    class Meta:
        model = Product
        fields = ["id", "name", "photo", "photo_options"]


class NotLocked(BasePermission):
    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated)

    def has_object_permission(self, request, view, obj) -> bool:
        return obj.name != "locked"


class ProductViewSet(BackgroundRemovalViewSetMixin, viewsets.ModelViewSet):
    queryset = Product.objects.order_by("pk")
    serializer_class = ProductSerializer
    permission_classes = [NotLocked]


router = SimpleRouter()
router.register("products", ProductViewSet, basename="product")
urlpatterns = [
    path("api/", include(router.urls)),
    path("imagekit-bgremove/", include("imagekit_bgremove.urls")),
]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

PRODUCTS = "/api/products/"


@pytest.fixture(autouse=True)
def _setup(dummy_tasks):
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def user() -> User:
    return User.objects.create_user("shop")


@pytest.fixture
def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def upload(name: str = "mug.png", seed: int = 0) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, image_bytes(seed=seed), content_type="image/png")


def create(api: APIClient, name: str = "mug", **extra):
    return api.post(PRODUCTS, {"name": name, "photo": upload(), **extra}, format="multipart")


def stored_product(name: str = "mug", **kwargs) -> Product:
    """A product with an image and no job (bulk_create sends no save signals)."""
    product = Product(name=name, **kwargs)
    product.photo.save(f"{name}.png", SimpleUploadedFile("x.png", image_bytes()), save=False)
    [product] = Product.objects.bulk_create([product])
    return product


# -- the image field -----------------------------------------------------------------------------


def test_upload_with_options_requests_the_removal_with_them(api):
    options = json.dumps({"bg_color": "#00FF00", "add_shadow": True})
    response = create(api, photo_options=options)
    assert response.status_code == 201, response.content
    product = Product.objects.get()
    job = product.photo.removal
    assert (job.options["bg_color"], job.options["add_shadow"]) == ("00ff00", True)
    assert job.options["semitransparency"] is True  # the field's defaults for the rest
    photo = response.json()["photo"]
    assert photo["url"].endswith(product.photo.name)
    assert photo["status"] == "queued" and photo["finished"] is False
    assert photo["job_id"] == job.pk
    assert photo["job"] == f"http://testserver/imagekit-bgremove/api/removals/{job.pk}/"
    assert photo["result_url"] is None and photo["result_file_url"] is None
    assert "photo_options" not in response.json()  # write-only


def test_upload_without_options_uses_the_field_defaults(api):
    assert create(api).status_code == 201
    assert Product.objects.get().photo.removal.options["bg_color"] == "ffffff"


def test_an_upload_records_who_uploaded_it(api, user):
    assert create(api).status_code == 201
    assert Product.objects.get().photo.removal.requested_by == user
    # A later save in code, with no request, records nobody.
    product = Product.objects.get()
    product.photo.save("again.png", SimpleUploadedFile("x.png", image_bytes(seed=3)))
    assert product.photo.removal.requested_by is None


def test_options_without_a_new_image_are_refused(api):
    response = api.post(
        PRODUCTS, {"name": "plain", "photo_options": {"bg_color": "red"}}, format="json"
    )
    assert response.status_code == 400
    assert "remove-background" in response.json()["photo_options"][0]
    assert not Product.objects.exists()
    # Empty options with no image are nothing to refuse.
    response = api.post(PRODUCTS, {"name": "plain", "photo_options": "{}"}, format="multipart")
    assert response.status_code == 201
    assert response.json()["photo"] is None


def test_invalid_options_are_per_option_and_nothing_is_saved(api):
    response = create(api, photo_options=json.dumps({"bg_color": "nope", "speed": 2}))
    assert response.status_code == 400
    errors = response.json()["photo_options"]
    assert set(errors) == {"bg_color", "non_field_errors"}
    assert not Product.objects.exists() and not RemovalJob.objects.exists()


def test_unknown_and_read_only_fields_are_named(api):
    response = create(api, colour="red", id="5")
    assert response.status_code == 400
    errors = response.json()
    assert set(errors) == {"colour", "id"}
    assert "read-only" in errors["id"][0]
    assert not Product.objects.exists()


def test_a_file_that_is_not_an_image_is_400(api):
    bad = SimpleUploadedFile("mug.png", b"not an image", content_type="image/png")
    response = api.post(PRODUCTS, {"name": "mug", "photo": bad}, format="multipart")
    assert response.status_code == 400
    assert "photo" in response.json()


def test_an_image_over_the_upload_limit_is_413(api, settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "MAX_UPLOAD_BYTES": 100}
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000_000  # the body may pass, the image not
    response = create(api)
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert not Product.objects.exists()


def test_a_body_over_the_limit_is_413_before_it_is_read(api, settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "MAX_UPLOAD_BYTES": 100}
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    response = create(api)
    assert response.status_code == 413
    assert "at most 200" in response.json()["detail"]


def test_replacing_the_image_with_options(api):
    product_id = create(api).json()["id"]
    RemovalJob.objects.update(status=JobStatus.SUCCEEDED)
    response = api.patch(
        f"{PRODUCTS}{product_id}/",
        {"photo": upload("new.png", seed=3), "photo_options": '{"bg_color": "blue"}'},
        format="multipart",
    )
    assert response.status_code == 200, response.content
    product = Product.objects.get()
    assert product.photo.removal.options["bg_color"] == "blue"
    assert RemovalJob.objects.count() == 2
    # Editing other fields requests nothing.
    RemovalJob.objects.update(status=JobStatus.SUCCEEDED)
    assert api.patch(f"{PRODUCTS}{product_id}/", {"name": "renamed"}, "json").status_code == 200
    assert RemovalJob.objects.count() == 2


def test_rendering_of_a_success_and_of_a_failure(api):
    product = stored_product()
    ct = ContentType.objects.get_for_model(Product)
    RemovalJob.objects.create(
        content_type=ct,
        object_id=str(product.pk),
        field_name="photo",
        status=JobStatus.SUCCEEDED,
        source_name=product.photo.name,
        result_url="https://ik.example/mug.png",
        result_name="products/mug_nobg_1.png",
    )
    photo = api.get(f"{PRODUCTS}{product.pk}/").json()["photo"]
    assert photo["status"] == "succeeded" and photo["finished"] is True
    assert photo["result_url"] == "https://ik.example/mug.png"
    assert photo["result_file_url"].endswith("products/mug_nobg_1.png")
    assert photo["error"] == ""

    failed = RemovalJob.objects.create(
        content_type=ct,
        object_id=str(product.pk),
        field_name="photo",
        status=JobStatus.FAILED,
        trigger=Trigger.API,  # for the same image (a save's job would mark a new one)
        source_name=product.photo.name,
        error_message="ImageKit could not find a subject.",
    )
    photo = api.get(f"{PRODUCTS}{product.pk}/").json()["photo"]
    assert photo["status"] == "failed"
    assert photo["error"] == "ImageKit could not find a subject."
    assert photo["job_id"] == failed.pk
    assert photo["result_file_url"].endswith("mug_nobg_1.png")  # the last cut-out still stands


def test_list_renders_every_row_without_a_query_per_row(api):
    ct = ContentType.objects.get_for_model(Product)

    def add(n: int) -> None:
        for i in range(n):
            product = stored_product(f"p{Product.objects.count()}-{i}")
            RemovalJob.objects.create(
                content_type=ct,
                object_id=str(product.pk),
                field_name="photo",
                status=JobStatus.SUCCEEDED,
                source_name=product.photo.name,
                result_name=f"products/{product.pk}_nobg.png",
            )

    add(1)
    with CaptureQueriesContext(connection) as one:
        assert api.get(PRODUCTS).status_code == 200
    add(7)
    with CaptureQueriesContext(connection) as eight:
        rows = api.get(PRODUCTS).json()
    assert len(rows) == 8 and all(r["photo"]["result_file_url"] for r in rows)
    assert len(eight) == len(one), [q["sql"] for q in eight]


# -- remove-background ---------------------------------------------------------------------------


def test_remove_background_is_202_with_location_and_retry_after(api, user):
    product = stored_product()
    url = f"{PRODUCTS}{product.pk}/remove-background/"
    response = api.post(url, {"options": {"bg_color": "white", "add_shadow": True}}, "json")
    assert response.status_code == 202, response.content
    job = RemovalJob.objects.get()
    assert response["Location"] == f"http://testserver/imagekit-bgremove/api/removals/{job.pk}/"
    assert int(response["Retry-After"]) >= 1
    assert response.json()["id"] == job.pk
    assert (job.trigger, job.requested_by, job.options["bg_color"]) == (Trigger.API, user, "white")
    assert job.options["add_shadow"] is True
    # The job is where the product says it is.
    assert api.get(f"{PRODUCTS}{product.pk}/").json()["photo"]["job_id"] == job.pk


def test_remove_background_with_an_empty_body_uses_the_defaults(api):
    product = stored_product()
    response = api.post(f"{PRODUCTS}{product.pk}/remove-background/")
    assert response.status_code == 202
    assert response.json()["options"]["bg_color"] == "ffffff"


def test_remove_background_is_409_while_a_job_is_unfinished(api):
    product = stored_product()
    url = f"{PRODUCTS}{product.pk}/remove-background/"
    first = api.post(url).json()
    response = api.post(url, {"options": {"bg_color": "red"}}, format="json")
    assert response.status_code == 409
    data = response.json()
    assert data["code"] == "job_in_progress"
    assert data["job"] == {"id": first["id"], "url": first["url"], "status": "queued"}
    assert response["Location"] == first["url"]
    assert RemovalJob.objects.count() == 1  # the running job was not superseded
    RemovalJob.objects.update(status=JobStatus.FAILED)
    assert api.post(url).status_code == 202


def test_remove_background_runs_the_projects_object_permission(api):
    locked = stored_product("locked")
    response = api.post(f"{PRODUCTS}{locked.pk}/remove-background/")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert not RemovalJob.objects.exists()


def test_remove_background_answers_401_404_and_400(api):
    product = stored_product()
    url = f"{PRODUCTS}{product.pk}/remove-background/"
    anonymous = APIClient().post(url)
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"] == "Token"
    assert api.post(f"{PRODUCTS}999999/remove-background/").status_code == 404
    bad = api.post(url, {"options": {"bg_color": "nope"}}, format="json")
    assert bad.status_code == 400 and "bg_color" in bad.json()["options"]
    unknown = api.post(url, {"colour": "red"}, format="json")
    assert unknown.status_code == 400 and "colour" in unknown.json()
    wrong_field = api.post(url, {"field": "name"}, format="json")
    assert wrong_field.status_code == 400 and "field" in wrong_field.json()
    multipart = api.post(url, {"options": '{"bg_color": "fff"}'}, format="multipart")
    assert multipart.status_code == 202
    assert RemovalJob.objects.get().options["bg_color"] == "fff"


def test_remove_background_takes_no_large_body(api):
    product = stored_product()
    padding = "x" * 70_000
    response = api.post(
        f"{PRODUCTS}{product.pk}/remove-background/",
        {"options": {"bg_color": padding}},
        format="json",
    )
    assert response.status_code == 413
    assert not RemovalJob.objects.exists()


def test_remove_background_of_an_object_without_image_is_400(api):
    product = Product.objects.create(name="empty")
    response = api.post(f"{PRODUCTS}{product.pk}/remove-background/")
    assert response.status_code == 400
    assert "no image" in response.json()["non_field_errors"][0]


def test_paid_requests_share_the_throttle(api, settings):
    settings.REST_FRAMEWORK = {
        **getattr(settings, "REST_FRAMEWORK", {}),
        "DEFAULT_THROTTLE_RATES": {"imagekit_bgremove": "2/hour"},
    }
    product = stored_product()
    assert api.post(f"{PRODUCTS}{product.pk}/remove-background/").status_code == 202
    assert create(api, "with image").status_code == 201  # an upload counts
    # Saving without an image does not.
    assert api.post(PRODUCTS, {"name": "no image"}, format="json").status_code == 201
    response = api.post(f"{PRODUCTS}{product.pk}/remove-background/")
    assert response.status_code == 429 and response.json()["code"] == "throttled"
    assert create(api, "another").status_code == 429
    assert api.get(PRODUCTS).status_code == 200


def test_remove_background_when_the_budget_is_spent_is_429(api, settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "DAILY_REMOVAL_LIMIT": 0}
    product = stored_product()
    response = api.post(f"{PRODUCTS}{product.pk}/remove-background/")
    assert response.status_code == 429
    assert response.json()["code"] == "budget_exhausted"
    assert "Retry-After" in response
    assert not RemovalJob.objects.exists()


def test_the_remove_background_form_offers_the_models_fields(api):
    product = stored_product()
    post = api.options(f"{PRODUCTS}{product.pk}/remove-background/").json()["actions"]["POST"]
    assert post["field"]["required"] is False
    assert [c["value"] for c in post["field"]["choices"]] == ["photo"]
