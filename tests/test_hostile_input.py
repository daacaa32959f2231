"""Issue 22: hostile bodies and options, sent through HTTP as a user (or an attacker) would: no
500 from any body, no paid run from a bg_image_url ImageKit cannot use or an image too large,
and the budget and throttles hold. Each refusal leaves no job and no state change behind."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from example_project.catalogue.models import Product
from imagekit_bgremove.models import JobStatus, RemovalJob, WebhookDelivery
from imagekit_bgremove.tokens import make_token
from tests.conftest import image_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.urls("example_project.urls")]

JOBS = "/imagekit-bgremove/api/removals/"
DEEP = "[" * 20_000 + "]" * 20_000  # about 40 KB: under every body cap
NOT_FINITE = ["Infinity", "-Infinity", "NaN", "1e999"]


@pytest.fixture(autouse=True)
def _example_settings(settings, dummy_tasks):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def root() -> APIClient:
    user = User.objects.create_superuser("root", password="root-pw")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def product() -> Product:
    product = Product(name="Mug")
    product.photo.save("mug.png", SimpleUploadedFile("mug.png", image_bytes()), save=False)
    [product] = Product.objects.bulk_create([product])  # no job yet: no save signals
    return product


def post_raw(client: APIClient, url: str, body: str):
    return client.generic("POST", url, body, content_type="application/json")


# ------------------------------------------------------------------------------ 22.2: no 500


@pytest.mark.parametrize("url", [JOBS, "/api/products/", "/api/token/"])
def test_json_nested_20000_deep_is_a_400_everywhere(root, product, url):
    response = post_raw(root, url, DEEP)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "parse_error"
    assert "nested too deeply" in response.json()["detail"]
    assert not RemovalJob.objects.exists()


def test_the_remove_background_endpoint_refuses_deep_json_too(root, product):
    response = post_raw(root, f"/api/products/{product.pk}/remove-background/", DEEP)
    assert response.status_code == 400 and response.json()["code"] == "parse_error"
    assert not RemovalJob.objects.exists()


@pytest.mark.parametrize("number", NOT_FINITE)
def test_numbers_that_are_not_finite_are_refused_by_the_apis(root, product, number):
    body = '{"model": "catalogue.product", "object_id": "ID", "field": "photo", "force": N}'
    body = body.replace("ID", str(product.pk)).replace("N", number)
    response = post_raw(root, JOBS, body)
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "parse_error"
    response = post_raw(
        root, "/api/products/", '{"name": "Pot", "description": N}'.replace("N", number)
    )
    assert response.status_code == 400 and response.json()["code"] == "parse_error"
    assert not RemovalJob.objects.exists() and Product.objects.count() == 1


def test_a_deep_options_string_is_a_400_under_options(root, product):
    body = {
        "model": "catalogue.product",
        "object_id": str(product.pk),
        "field": "photo",
        "options": DEEP,
    }
    response = root.post(JOBS, body, format="json")
    assert response.status_code == 400, response.content
    assert "nested too deeply" in str(response.json()["options"])
    assert not RemovalJob.objects.exists()


@pytest.mark.parametrize("options", [DEEP, '{"bg_color": 1e999}', '{"add_shadow": NaN}'])
def test_multipart_photo_options_that_are_not_sane_json_are_a_400(root, options):
    photo = SimpleUploadedFile("pot.png", image_bytes(), content_type="image/png")
    response = root.post(
        "/api/products/",
        {"name": "Pot", "photo": photo, "photo_options": options},
        format="multipart",
    )
    assert response.status_code == 400, response.content
    assert "photo_options" in response.json()
    assert not Product.objects.filter(name="Pot").exists() and not RemovalJob.objects.exists()


def test_the_token_endpoint_refuses_not_finite_numbers_as_json():
    response = post_raw(APIClient(), "/api/token/", '{"username": "a", "password": NaN}')
    assert response.status_code == 400 and response.json()["code"] == "parse_error"


def pending_job(product: Product) -> RemovalJob:
    return RemovalJob.objects.create(
        content_type=ContentType.objects.get_for_model(Product),
        object_id=str(product.pk),
        field_name="photo",
        source_name=product.photo.name,
        status=JobStatus.PENDING,
        file_id="file-1",
    )


SUCCESS_OF_SIZE = (
    '{"service": "remove-bg", "status": "SUCCESS", "fileObject": {"fileId": "file-1", '
    '"url": "https://ik.example/x.png", "size": N, "versionInfo": {"id": "v2"}}}'
)


@pytest.mark.parametrize(
    "body",
    [
        *(SUCCESS_OF_SIZE.replace("N", n) for n in NOT_FINITE),
        '{"service": "remove-bg", "status": "FAILURE", "fileId": "file-1", '
        '"error": {"reason": "x", "score": Infinity}}',
        '{"service": "remove-bg", "status": "FAILURE", "fileId": "file-1", "error": DEEP}'.replace(
            "DEEP", DEEP
        ),
    ],
)
def test_callbacks_with_numbers_that_are_not_finite_or_deep_nesting_change_nothing(
    client, product, body
):
    job = pending_job(product)
    url = reverse("imagekit_bgremove:webhook", kwargs={"token": make_token(job.pk)})
    response = client.post(url, data=body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["verdict"] == "malformed"
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING and not job.result_version_id and not job.error_code
    assert not WebhookDelivery.objects.exists()
