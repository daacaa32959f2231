"""Issue 22: hostile bodies and options, sent through HTTP as a user (or an attacker) would: no
500 from any body, no paid run from a bg_image_url ImageKit cannot use or an image too large,
and the budget and throttles hold. Each refusal leaves no job and no state change behind."""

from __future__ import annotations

import json

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
from tests.helpers import image_bytes

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


# --------------------------------------------------- 22.3: bg_image_url ImageKit cannot fetch

NOT_PUBLIC = [
    "http://127.0.0.1/bg.png",
    "http://localhost:8000/bg.png",
    "http://[::1]/bg.png",
    "http://[::ffff:127.0.0.1]/bg.png",
    "http://0.0.0.0/bg.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/bg.png",
    "http://192.168.0.10/bg.png",
    "http://100.64.0.1/bg.png",
    "http://240.0.0.1/bg.png",
    "http://224.0.0.1/bg.png",
    "https://no-such-host.invalid/bg.png",
]


def create_body(product: Product, **options) -> dict:
    return {
        "model": "catalogue.product",
        "object_id": str(product.pk),
        "field": "photo",
        "options": options,
    }


@pytest.mark.parametrize("url", NOT_PUBLIC)
def test_the_jobs_api_refuses_a_bg_image_url_imagekit_cannot_fetch(root, product, url):
    response = root.post(JOBS, create_body(product, bg_image_url=url), format="json")
    assert response.status_code == 400, response.content
    [message] = response.json()["options"]["bg_image_url"]
    assert message.startswith("bg_image_url names the host")
    assert ("does not resolve" in message) == url.startswith("https://no-such-host")
    assert not RemovalJob.objects.exists()


@pytest.mark.parametrize("url", ["https://example.com/bg.png", "http://images.example.net/b.jpg"])
def test_public_bg_image_urls_are_accepted(root, product, url):
    response = root.post(JOBS, create_body(product, bg_image_url=url), format="json")
    assert response.status_code == 202, response.content
    assert RemovalJob.objects.get().options["bg_image_url"] == url


def test_bg_image_allowed_hosts_lets_named_hosts_and_networks_through(root, product, settings):
    settings.IMAGEKIT_BGREMOVE = {
        **settings.IMAGEKIT_BGREMOVE,
        "BG_IMAGE_ALLOWED_HOSTS": ["localhost", "10.0.0.0/8", "backgrounds.internal"],
    }
    for url in ("http://localhost:8000/bg.png", "http://10.1.2.3/bg.png"):
        response = root.post(JOBS, create_body(product, bg_image_url=url), format="json")
        assert response.status_code == 202, response.content
        RemovalJob.objects.all().delete()
    # A listed name need not resolve; what is not listed is still refused.
    ok = root.post(
        JOBS, create_body(product, bg_image_url="http://backgrounds.internal/b.png"), format="json"
    )
    assert ok.status_code == 202, ok.content
    RemovalJob.objects.all().delete()
    refused = root.post(
        JOBS, create_body(product, bg_image_url="http://192.168.0.10/bg.png"), format="json"
    )
    assert refused.status_code == 400


def test_the_product_api_refuses_it_on_upload_and_on_remove_background(root, product):
    photo = SimpleUploadedFile("pot.png", image_bytes(), content_type="image/png")
    options = json.dumps({"bg_image_url": "http://169.254.169.254/bg.png"})
    response = root.post(
        "/api/products/", {"name": "Pot", "photo": photo, "photo_options": options}
    )
    assert response.status_code == 400, response.content
    assert "not a public address" in response.json()["photo_options"]["bg_image_url"][0]
    response = root.post(
        f"/api/products/{product.pk}/remove-background/",
        {"options": {"bg_image_url": "http://127.0.0.1:8000/media/bg.png"}},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "bg_image_url" in response.json()["options"]
    assert not RemovalJob.objects.exists() and not Product.objects.filter(name="Pot").exists()


def test_the_admin_options_page_refuses_it(client, product):
    client.force_login(User.objects.create_superuser("admin", password="pw"))
    url = f"/admin/catalogue/product/{product.pk}/remove-background/"
    response = client.post(
        url, {"apply": "1", "field": "photo", "bg_image_url": "http://10.0.0.1/bg.png"}
    )
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "not a public address" in errors["bg_image_url"][0]
    assert not RemovalJob.objects.exists()


def test_field_defaults_and_default_options_fail_the_system_checks(settings, monkeypatch):
    from imagekit_bgremove.checks import check_bg_image_urls

    assert check_bg_image_urls() == []
    field = Product._meta.get_field("photo")
    monkeypatch.setitem(field.remove_bg_options, "bg_image_url", "http://10.1.2.3/bg.png")
    settings.IMAGEKIT_BGREMOVE = {
        **settings.IMAGEKIT_BGREMOVE,
        "DEFAULT_OPTIONS": {"bg_image_url": "https://no-such-host.invalid/bg.png"},
    }
    errors = {error.msg.split(":")[0]: error for error in check_bg_image_urls()}
    assert set(errors) == {"catalogue.Product.photo", "IMAGEKIT_BGREMOVE['DEFAULT_OPTIONS']"}
    assert all(error.id == "imagekit_bgremove.E020" for error in errors.values())
    assert errors["catalogue.Product.photo"].obj is field


def test_commands_refuse_it_before_sending_anything(product, tmp_path):
    from django.core.management import CommandError, call_command

    source = tmp_path / "mug.png"
    source.write_bytes(image_bytes())
    with pytest.raises(CommandError, match=r"bg_image_url names the host '127\.0\.0\.1'"):
        call_command(
            "remove_background",
            str(source),
            "--output",
            str(tmp_path / "out.png"),
            "--bg-image-url",
            "http://127.0.0.1/bg.png",
        )
    with pytest.raises(CommandError, match="not a public address"):
        call_command(
            "backfill_removals",
            "catalogue.product",
            "photo",
            "--options",
            '{"bg_image_url": "http://192.168.1.1/bg.png"}',
        )
    assert not RemovalJob.objects.exists()


def test_the_submit_task_fails_a_job_requested_in_code_with_it(product):
    from imagekit_bgremove import services
    from imagekit_bgremove.services.submission import submit

    job = services.request_removal(
        product, "photo", options={"bg_image_url": "http://127.0.0.1:9/bg.png"}
    )
    assert submit(job.pk) == "failed"  # before any request to ImageKit (none is running)
    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "invalid_options")
    assert "not a public address (127.0.0.1)" in job.error_message
    assert not job.file_id


# ---------------------------------------------------------- 22.3: more pixels than allowed


def huge_png() -> bytes:
    """12 KB of PNG, 10,000 x 10,000 pixels (one bit each)."""
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, "PNG")
    return out.getvalue()


TOO_MANY = "The image is 10000 x 10000 pixels (100.0 megapixels); the limit is 50 megapixels"


def test_the_product_api_refuses_an_image_over_the_pixel_limit(root):
    data = huge_png()
    assert len(data) < 13_000
    photo = SimpleUploadedFile("huge.png", data, content_type="image/png")
    response = root.post("/api/products/", {"name": "Huge", "photo": photo}, format="multipart")
    assert response.status_code == 400, response.content
    assert response.json()["photo"][0].startswith(TOO_MANY)
    assert not Product.objects.exists() and not RemovalJob.objects.exists()


def test_the_admin_refuses_an_image_over_the_pixel_limit(client):
    client.force_login(User.objects.create_superuser("admin", password="pw"))
    photo = SimpleUploadedFile("huge.png", huge_png(), content_type="image/png")
    response = client.post("/admin/catalogue/product/add/", {"name": "Huge", "photo": photo})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["photo"][0].startswith(TOO_MANY)
    assert not Product.objects.exists() and not RemovalJob.objects.exists()


def test_the_pixel_limit_is_a_setting(root, settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "MAX_IMAGE_PIXELS": 1000}
    photo = SimpleUploadedFile("mug.png", image_bytes(size=(48, 32)), content_type="image/png")
    response = root.post("/api/products/", {"name": "Mug", "photo": photo}, format="multipart")
    assert response.status_code == 400
    assert "48 x 32 pixels" in response.json()["photo"][0]


def test_the_submit_task_fails_an_image_saved_in_code_over_the_limit():
    from imagekit_bgremove.services.submission import submit

    product = Product(name="Huge")
    product.photo.save("huge.png", SimpleUploadedFile("huge.png", huge_png()), save=False)
    product.save()  # no form, no validation: the job is recorded
    job = RemovalJob.objects.get()
    assert submit(job.pk) == "failed"
    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "too_many_pixels")
    assert job.error_message.startswith(TOO_MANY) and "Nothing was sent." in job.error_message
    assert not job.file_id


def test_the_command_refuses_an_image_over_the_limit(tmp_path):
    from django.core.management import CommandError, call_command

    source = tmp_path / "huge.png"
    source.write_bytes(huge_png())
    with pytest.raises(CommandError, match=TOO_MANY.replace("(", r"\(").replace(")", r"\)")):
        call_command("remove_background", str(source), "--output", str(tmp_path / "out.png"))
