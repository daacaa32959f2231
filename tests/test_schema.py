"""The OpenAPI schema (drf-spectacular, an optional extra) of the example project's API: valid,
warning-free, every answer documented with its body; and the app without the extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("drf_spectacular")


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("schema") / "schema.json"
    # --validate checks it against the OpenAPI 3 meta-schema; any generator warning fails.
    call_command(
        "spectacular",
        "--urlconf",
        "example_project.urls",
        "--format",
        "openapi-json",
        "--validate",
        "--fail-on-warn",
        "--file",
        str(out),
    )
    return json.loads(out.read_text())


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method.upper(), operation


PAID = {
    ("POST", "/imagekit-bgremove/api/removals/"),
    ("POST", "/imagekit-bgremove/api/removals/{id}/retry/"),
    ("POST", "/api/products/"),
    ("PUT", "/api/products/{id}/"),
    ("PATCH", "/api/products/{id}/"),
    ("POST", "/api/products/{id}/remove-background/"),
}


def test_every_endpoint_is_described(schema):
    described = {(method, path) for path, method, _ in operations(schema)}
    assert described >= PAID
    assert {
        ("GET", "/imagekit-bgremove/api/removals/"),
        ("GET", "/imagekit-bgremove/api/removals/{id}/"),
        ("GET", "/api/products/"),
        ("GET", "/api/products/{id}/"),
        ("DELETE", "/api/products/{id}/"),
        ("POST", "/api/token/"),
    } <= described
    assert not [path for path in schema["paths"] if "webhooks" in path]  # not a front-end's


def test_every_answer_has_its_code_and_body(schema):
    for path, method, operation in operations(schema):
        if path == "/api/token/":
            continue
        codes = set(operation["responses"])
        label = f"{method} {path}"
        assert {"401", "403"} <= codes, label
        if "{id}" in path:
            assert "404" in codes, label
        if (method, path) in PAID:
            assert {"400", "413", "429"} <= codes, label
        if path.endswith(("/retry/", "/remove-background/")):
            assert {"202", "409"} <= codes, label
        for code, answer in operation["responses"].items():
            if code.startswith("4"):
                content = answer["content"]["application/json"]
                assert content["schema"], f"{label} {code}"
                assert content.get("examples"), f"{label} {code} has no example"


@pytest.mark.django_db
@pytest.mark.urls("example_project.urls")
def test_an_unparsable_body_is_a_documented_415_with_its_code(schema, admin_client):
    # Schemathesis found a 415 from the token endpoint that the schema did not list.
    with_body = [
        (path, method)
        for path, method, operation in operations(schema)
        if "requestBody" in operation
    ]
    assert ("/api/token/", "POST") in with_body
    for path, method in with_body:
        assert "415" in schema["paths"][path][method.lower()]["responses"], f"{method} {path}"
    for url in ("/api/token/", "/imagekit-bgremove/api/removals/", "/api/products/"):
        answer = admin_client.post(url, "hello", content_type="text/plain")
        assert answer.status_code == 415, url
        assert answer.json() == {
            "detail": 'Unsupported media type "text/plain" in request.',
            "code": "unsupported_media_type",
        }, url


def test_202_answers_document_location_and_retry_after(schema):
    for path, method, operation in operations(schema):
        accepted = operation["responses"].get("202")
        if accepted is None:
            continue
        assert accepted["headers"]["Location"]["required"] is True, path
        assert accepted["headers"]["Retry-After"]["required"] is True, path
        assert accepted["content"]["application/json"]["examples"], path
    job = schema["paths"]["/imagekit-bgremove/api/removals/{id}/"]["get"]
    assert {"200", "304"} <= set(job["responses"])
    assert job["responses"]["304"]["headers"]["ETag"]["required"] is True
    assert any(p["name"] == "If-None-Match" for p in job["parameters"])


def test_request_bodies_refuse_unknown_keys(schema):
    components = schema["components"]["schemas"]
    for name in (
        "RemovalCreateRequest",
        "RemovalRetryRequest",
        "ProductRequest",
        "PatchedProductRequest",
        "ProductRemoveBackgroundRequest",
    ):
        assert components[name]["additionalProperties"] is False, name
    options = components["RemovalCreateRequest"]["properties"]["options"]
    assert options["additionalProperties"] is False
    assert set(options["properties"]) == {
        "add_shadow",
        "semitransparency",
        "bg_color",
        "bg_image_url",
    }
    product = components["ProductRequest"]["properties"]
    assert product["photo"]["format"] == "binary"
    assert "photo_options" in product
    # Answers render the image's state, not a file.
    rendered = components["Product"]["properties"]["photo"]
    assert rendered["allOf"][0]["$ref"].endswith("/BackgroundRemovalState")


def test_examples_are_there_for_requests(schema):
    create = schema["paths"]["/imagekit-bgremove/api/removals/"]["post"]
    assert create["requestBody"]["content"]["application/json"]["examples"]
    upload = schema["paths"]["/api/products/"]["post"]
    assert upload["requestBody"]["content"]["application/json"]["examples"]


WITHOUT_SPECTACULAR = """
import sys
sys.modules["drf_spectacular"] = None  # as if the extra were not installed
sys.modules["drf_spectacular_sidecar"] = None
import django
django.setup()
from django.conf import settings
assert "drf_spectacular" not in settings.INSTALLED_APPS
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test.utils import override_settings, setup_test_environment
from rest_framework.test import APIClient
from imagekit_bgremove import api, api_schema, rest_framework
from tests.helpers import image_bytes
assert api_schema.HAVE_SPECTACULAR is False
setup_test_environment()
with override_settings(
    ROOT_URLCONF="example_project.urls",
    TASKS={"default": {"BACKEND": "%(dummy)s"}},
):
    import example_project.urls as urls
    assert not [p for p in urls.urlpatterns if "schema" in str(p.pattern)]
    client = APIClient()
    client.force_authenticate(User.objects.create_superuser("root"))
    photo = SimpleUploadedFile("mug.png", image_bytes(), content_type="image/png")
    made = client.post(
        "/api/products/",
        {"name": "Mug", "photo": photo, "photo_options": '{"bg_color": "red"}'},
        format="multipart",
    )
    assert made.status_code == 201, made.content
    job = made.json()["photo"]["job"]
    assert client.get(job).status_code == 200
    again = client.post(made.json()["url"] + "remove-background/")
    assert again.status_code == 409, again.content
    print("WORKS WITHOUT DRF-SPECTACULAR")
"""


def test_the_app_works_without_drf_spectacular(tmp_path):
    from tests.helpers import task_backend

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": "sqlite:///:memory:",
        "PYTHONPATH": str(ROOT),
    }
    code = WITHOUT_SPECTACULAR % {"dummy": task_backend("dummy.DummyBackend")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WORKS WITHOUT DRF-SPECTACULAR" in done.stdout
