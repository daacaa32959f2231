"""Schemathesis over the example project's OpenAPI schema, in process (WSGI): generated
requests, valid and invalid, against every operation; every answer must be documented and match
its schema (status code, content type, headers, body), and no answer may be a server error.

A superuser's token authenticates the requests; about half of the cases address objects that
exist (a product with a photo, and its jobs, one of them failed), the rest whatever id was
generated."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("drf_spectacular")

from django.contrib.auth.models import User  # noqa: E402
from django.contrib.contenttypes.models import ContentType  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.core.files.uploadedfile import SimpleUploadedFile  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from example_project.catalogue.models import Product  # noqa: E402
from imagekit_bgremove.models import JobStatus, RemovalJob  # noqa: E402
from tests.helpers import image_bytes  # noqa: E402

pytestmark = [pytest.mark.django_db, pytest.mark.urls("example_project.urls")]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 40


@pytest.fixture
def api_schema(settings_fixture_for_schemathesis):
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    # As Django's test client does: a request must not close the connection that holds this
    # test's transaction (PostgreSQL would lose it).
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/", WSGIHandler())
    finally:
        for signal in (request_started, request_finished):
            signal.connect(close_old_connections)


@pytest.fixture
def settings_fixture_for_schemathesis(settings, dummy_tasks):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MEDIA_URL = "/media/"  # absolute URLs in the answers, as a real storage gives
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def world(settings_fixture_for_schemathesis) -> dict:
    """What exists: a superuser with a token, a product with a photo and its jobs."""
    user = User.objects.create_superuser("root", password="root-pw")
    token = Token.objects.create(user=user).key
    product = Product.objects.create(
        name="Mug",
        photo=SimpleUploadedFile("mug.png", image_bytes(), content_type="image/png"),
    )
    job = product.photo.removal
    RemovalJob.objects.filter(pk=job.pk).update(
        status=JobStatus.FAILED, error_code="x", error_message="It failed."
    )
    done = RemovalJob.objects.create(
        content_type=ContentType.objects.get_for_model(Product),
        object_id=str(product.pk),
        field_name="photo",
        status=JobStatus.SUCCEEDED,
        source_name=product.photo.name,
        result_url="https://ik.example/mug.png",
        result_name="products/mug_nobg.png",
    )
    return {
        "headers": {"Authorization": f"Token {token}"},
        "ids": {"/api/products/": product.pk, "/imagekit-bgremove/api/removals/": job.pk},
        "done": done.pk,
    }


def test_the_api_keeps_to_its_schema(api_schema, world):
    # One test driving every operation itself (schemathesis' own pytest plugin does not run on
    # the pytest used here), with positive and negative data, and every failure reported.
    failures: list[str] = []
    cases = 0

    def run(case) -> None:
        nonlocal cases
        cases += 1
        point_at_existing_objects(case, world)
        case.call_and_validate(headers=world["headers"], checks=CHECKS)

    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            test = settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )(given(case=operation.as_strategy(generation_mode=mode))(run))
            try:
                test()
            except Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): no negative cases.
                assert mode == GenerationMode.NEGATIVE, operation.label
            except (AssertionError, FailureGroup) as exc:  # every operation runs; all are listed
                failures.append(f"{operation.label} ({mode}): {exc}")
    print(f"schemathesis: {cases} cases, {len(failures)} failures")
    assert cases > 200
    assert not failures, "\n\n".join(failures)


def point_at_existing_objects(case, world: dict) -> None:
    """About half the cases address objects that exist, so that their answers are checked too."""
    identifier = (case.path_parameters or {}).get("id")
    if not isinstance(identifier, int) or identifier % 2:
        return
    for prefix, pk in world["ids"].items():
        if case.path.startswith(prefix):
            if identifier % 4 == 0 and "removals" in prefix:
                pk = world["done"]
            case.path_parameters["id"] = pk
