"""Media on S3 for real: django-storages' S3 backend (boto3) against moto's S3 server, started
on a free loopback port for the session (on the PostgreSQL legs). The whole loop runs over HTTP
(the emulator's callbacks reach the live server), with ``file_overwrite`` on and off, in a public
bucket (plain URLs) and a private one (signed URLs; the worker reads the original through the
storage's credentials)."""

from __future__ import annotations

import html
import importlib.util
import io
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.contrib import admin
from django.contrib.auth.models import User
from django.urls import include, path

from imagekit_bgremove.admin import BackgroundRemovalAdminMixin
from tests.helpers import make_image, uploads, wait_for
from tests.testapp.models import Product

if importlib.util.find_spec("storages") is None or importlib.util.find_spec("moto") is None:
    pytest.skip(
        "django-storages[s3] and moto[server] are not installed (the dev extra)",
        allow_module_level=True,
    )

# This module is its own URLconf: an admin site with the mixin on Product, and the app's URLs.
site = admin.AdminSite(name="s3_admin")


class ProductAdmin(BackgroundRemovalAdminMixin, admin.ModelAdmin):
    list_display = ["name"]


site.register(Product, ProductAdmin)
urlpatterns = [
    path("admin/", site.urls),
    path("imagekit-bgremove/", include("imagekit_bgremove.urls")),
]

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls(__name__),
]

CREDENTIALS = {"access_key": "testing", "secret_key": "testing", "region_name": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in a process of its own, as an S3 service is to the app."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["access_key"],
        aws_secret_access_key=CREDENTIALS["secret_key"],
        region_name=CREDENTIALS["region_name"],
    )


@pytest.fixture(
    params=[
        pytest.param((True, True), id="overwrite-private"),
        pytest.param((False, True), id="unique-private"),
        pytest.param((True, False), id="overwrite-public"),
        pytest.param((False, False), id="unique-public"),
    ]
)
def s3(request: Any, s3_endpoint: str, settings: Any) -> dict[str, Any]:
    """A fresh bucket as the default storage: ``file_overwrite`` and private (signed URLs, no
    anonymous read) as the parameter says."""
    from django.db import connection

    if connection.vendor != "postgresql":
        # The CI budget, and the loop's late callbacks meet SQLite's per-test teardown.
        pytest.skip("the S3 tests run on the PostgreSQL legs")
    overwrite, private = request.param
    bucket = f"ikbg-{uuid.uuid4().hex[:12]}"
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=bucket)
    options = {
        **CREDENTIALS,
        "bucket_name": bucket,
        "endpoint_url": s3_endpoint,
        "file_overwrite": overwrite,
        "querystring_auth": private,
        "default_acl": "private" if private else "public-read",
    }
    # Django's setting_changed handler drops the storages it built, so every field whose
    # storage is the default one uses this bucket from here on.
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options},
    }
    return {
        "bucket": bucket,
        "client": client,
        "endpoint": s3_endpoint,
        "overwrite": overwrite,
        "private": private,
    }


def object_bytes(s3: dict[str, Any], name: str) -> bytes:
    return s3["client"].get_object(Bucket=s3["bucket"], Key=name)["Body"].read()


def keys(s3: dict[str, Any]) -> set[str]:
    listed = s3["client"].list_objects_v2(Bucket=s3["bucket"])
    return {item["Key"] for item in listed.get("Contents", [])}


def settled(pk: int) -> Product | None:
    """The product once its removal is final, read afresh: the read that saw the job move may
    have taken its two queries on either side of the move."""
    if Product.objects.get(pk=pk).photo.removal_status in ("succeeded", "failed"):
        return Product.objects.get(pk=pk)
    return None


def finished_product(name: str, image: Any) -> Product:
    product = Product.objects.create(name=name, photo=image)
    done = wait_for(lambda: settled(product.pk), timeout=60)
    assert done is not None, Product.objects.get(pk=product.pk).photo.removal_status
    assert done.photo.removal_status == "succeeded", done.photo.removal_error
    return done


def assert_served(s3: dict[str, Any], url: str, name: str) -> None:
    """``url`` serves the object ``name``: signed in a private bucket, plain in a public one."""
    assert url.startswith(f"{s3['endpoint']}/{s3['bucket']}/"), url
    assert ("X-Amz-Signature=" in url or "Signature=" in url) == s3["private"], url
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, (url, response.status_code)
    assert response.content == object_bytes(s3, name)
    anonymous = requests.get(url.split("?", 1)[0], timeout=10)
    assert anonymous.status_code == (403 if s3["private"] else 200)


def test_the_cut_out_is_stored_beside_the_original_and_served_by_url(
    s3, live_emulator, client
) -> None:
    image = make_image("mug.png", seed=11)
    original = image.read()
    image.seek(0)
    product = finished_product("mug", image)

    # The worker read the original from the bucket (signed or not) and sent exactly its bytes.
    assert object_bytes(s3, product.photo.name) == original
    sent = uploads(live_emulator)
    assert len(sent) == 1
    assert sent[0]["size"] == len(original)

    result = product.photo.result_file
    assert result is not None and result.name != product.photo.name
    assert result.name.startswith("products/")
    stored = object_bytes(s3, result.name)
    assert stored.startswith(b"\x89PNG")
    assert keys(s3) == {product.photo.name, result.name}  # nothing stray, nothing missing
    assert_served(s3, result.url, result.name)
    assert_served(s3, product.photo.url, product.photo.name)

    # The admin's thumbnails and the REST API's URLs are the storage's, and they load.
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.login(username="admin", password="pw")
    page = client.get(f"/admin/testapp/product/{product.pk}/change/").content.decode()
    sources = {html.unescape(src) for src in re.findall(r'<img\b[^>]*\ssrc="([^"]+)"', page)}
    result_sources = [src for src in sources if src.split("?")[0].endswith(result.name)]
    assert result_sources, sources
    for src in result_sources:
        assert_served(s3, src, result.name)

    job_id = Product.objects.get(pk=product.pk).photo.removal.pk
    detail = client.get(f"/imagekit-bgremove/api/removals/{job_id}/").json()
    assert detail["result_file_url"]
    assert_served(s3, detail["result_file_url"], result.name)


def test_a_new_image_under_the_same_name_gets_its_own_cut_out(s3, live_emulator) -> None:
    """With ``file_overwrite`` the second upload keeps the name of the first (S3's default):
    it is still a new image, sent and cut out on its own, and the first cut-out is not the
    one shown."""
    first = finished_product("cup", make_image("cup.png", seed=21))
    first_name = first.photo.name
    first_result = first.photo.result_file.name

    second_image = make_image("cup.png", seed=22, size=(64, 40))
    second_bytes = second_image.read()
    second_image.seek(0)
    first.photo = second_image
    first.save()
    done = wait_for(
        lambda: (p := settled(first.pk)) and p.photo.result_file is not None and p, timeout=60
    )
    assert done, Product.objects.get(pk=first.pk).photo.removal_status
    product = Product.objects.get(pk=first.pk)
    assert product.photo.removal_status == "succeeded", product.photo.removal_error
    assert (product.photo.name == first_name) == s3["overwrite"]
    assert object_bytes(s3, product.photo.name) == second_bytes

    sent = uploads(live_emulator)
    assert [u["size"] for u in sent][-1] == len(second_bytes)
    assert len(sent) == 2
    result = product.photo.result_file
    assert result.name not in (first_result, product.photo.name)
    from PIL import Image

    with Image.open(io.BytesIO(object_bytes(s3, result.name))) as cut_out:
        assert cut_out.size == (64, 40)
    assert_served(s3, result.url, result.name)
