"""The example project's Product API, as the README shows it: token authentication, an upload
with options, remove-background, and the schema's documentation pages."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from example_project.catalogue.models import Product
from imagekit_bgremove.models import JobStatus, RemovalJob
from tests.helpers import image_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.urls("example_project.urls")]


@pytest.fixture(autouse=True)
def _example_settings(settings, dummy_tasks):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()
    yield
    cache.clear()


def staff(name: str = "editor", *perms: str) -> User:
    user = User.objects.create_user(name, password="s3cret-" + name)
    for codename in perms or ("view_product", "add_product", "change_product"):
        user.user_permissions.add(
            Permission.objects.get(codename=codename, content_type__app_label="catalogue")
        )
    return user


def token_client(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def photo() -> SimpleUploadedFile:
    return SimpleUploadedFile("mug.png", image_bytes(), content_type="image/png")


def test_a_token_for_a_password_and_an_upload_with_it():
    staff()
    answer = APIClient().post("/api/token/", {"username": "editor", "password": "s3cret-editor"})
    assert answer.status_code == 200
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {answer.json()['token']}")
    response = client.post(
        "/api/products/",
        {"name": "Mug", "photo": photo(), "photo_options": json.dumps({"bg_color": "white"})},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["url"] == f"http://testserver/api/products/{data['id']}/"
    job = RemovalJob.objects.get(pk=data["photo"]["job_id"])
    assert job.options["bg_color"] == "white"
    assert data["photo"]["job"].endswith(f"/imagekit-bgremove/api/removals/{job.pk}/")
    # The job is readable with the same token, and answers 304 to its own ETag.
    detail = client.get(data["photo"]["job"])
    assert detail.status_code == 200
    assert client.get(data["photo"]["job"], HTTP_IF_NONE_MATCH=detail["ETag"]).status_code == 304


def test_wrong_password_gets_no_token():
    staff()
    answer = APIClient().post("/api/token/", {"username": "editor", "password": "nope"})
    assert answer.status_code == 400
    # The documented shape of every error that is not about one field.
    assert answer.json() == {
        "detail": "Unable to log in with provided credentials.",
        "code": "invalid_credentials",
    }
    answer = APIClient().post("/api/token/", {"username": "editor"})
    assert answer.json() == {"password": ["This field is required."]}


def test_the_token_endpoint_is_throttled_per_address(settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"token": "3/hour"},
    }
    staff()
    guesses = [
        APIClient().post("/api/token/", {"username": "editor", "password": f"guess{n}"})
        for n in range(4)
    ]
    assert [answer.status_code for answer in guesses] == [400, 400, 400, 429]
    assert guesses[-1].json()["code"] == "throttled" and guesses[-1]["Retry-After"]
    # The right password from that address waits too; another address does not.
    right = {"username": "editor", "password": "s3cret-editor"}
    assert APIClient().post("/api/token/", right).status_code == 429
    assert APIClient(REMOTE_ADDR="10.0.0.9").post("/api/token/", right).status_code == 200


def test_no_or_a_bad_token_is_401_asking_for_a_token():
    for client in (APIClient(), APIClient(HTTP_AUTHORIZATION="Token not-a-token")):
        response = client.get("/api/products/")
        assert response.status_code == 401
        # "Token", not "Basic": a browser shows no password prompt for it.
        assert response["WWW-Authenticate"] == "Token"


def test_model_permissions_decide_who_reads_writes_and_removes_again():
    product = Product.objects.create(name="Cup", photo=photo())
    RemovalJob.objects.update(status=JobStatus.SUCCEEDED)
    reader = token_client(staff("reader", "view_product"))
    assert reader.get("/api/products/").status_code == 200
    assert reader.post("/api/products/", {"name": "X"}, format="json").status_code == 403
    response = reader.post(f"/api/products/{product.pk}/remove-background/")
    assert response.status_code == 403
    editor = token_client(staff())
    response = editor.post(
        f"/api/products/{product.pk}/remove-background/",
        {"options": {"add_shadow": True}},
        format="json",
    )
    assert response.status_code == 202
    assert response["Location"] == response.json()["url"]
    again = editor.post(f"/api/products/{product.pk}/remove-background/")
    assert again.status_code == 409 and again.json()["job"]["id"] == response.json()["id"]


def test_basic_authentication_works_too():
    staff()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic ZWRpdG9yOnMzY3JldC1lZGl0b3I=")  # editor:s3cret-…
    assert client.get("/api/products/").status_code == 200


def test_session_authentication_needs_the_csrf_token():
    user = staff()
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get("/api/products/").status_code == 200
    response = client.post("/api/products/", {"name": "Pot"}, format="json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    page = client.get("/demo/")
    token = page.cookies["csrftoken"].value
    response = client.post("/api/products/", {"name": "Pot"}, format="json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201


def test_the_demo_page_needs_a_login_and_sends_a_strict_csp():
    assert APIClient().get("/demo/").status_code == 302
    client = APIClient()
    client.force_login(staff())
    page = client.get("/demo/")
    assert page.status_code == 200
    policy = page["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    html = page.content.decode()
    assert 'type="module"' in html and "catalogue/demo.js" in html
    assert "<script>" not in html and " style=" not in html and "onclick" not in html


@pytest.mark.parametrize(
    ("url", "marker"),
    [
        ("/api/schema/", "openapi"),
        ("/api/docs/", "swagger"),
        ("/api/redoc/", "redoc"),
    ],
)
def test_schema_and_documentation_pages(url, marker):
    pytest.importorskip("drf_spectacular")
    response = APIClient().get(url)
    assert response.status_code == 200
    assert marker in response.content.decode().lower()


def test_the_redoc_page_loads_no_image_from_a_cdn():
    pytest.importorskip("drf_spectacular")
    response = APIClient().get("/api/redoc/")
    # Redoc's bundle shows Redocly's logo from cdn.redoc.ly: the page's policy forbids it.
    assert response["Content-Security-Policy"] == "img-src 'self' data:"
    html = response.content.decode()
    assert "https://" not in html and "http://" not in html


def test_the_product_list_is_paginated_like_the_jobs_list():
    client = token_client(staff())
    Product.objects.bulk_create([Product(name=f"p{n:02}") for n in range(30)])
    page = client.get("/api/products/").json()
    assert (page["count"], len(page["results"]), page["previous"]) == (30, 25, None)
    assert page["results"][0]["name"] == "p00" and page["next"].endswith("?page=2")
    assert len(client.get("/api/products/?page_size=5&page=6").json()["results"]) == 5


def test_every_product_operation_has_a_summary():
    pytest.importorskip("drf_spectacular")
    schema = APIClient().get("/api/schema/?format=json").json()
    for path, methods in schema["paths"].items():
        if path.startswith("/api/products/"):
            for method, operation in methods.items():
                assert operation.get("summary"), f"{method.upper()} {path}"
