"""imagekit_bgremove.testing: the fake ImageKit and its callbacks drive the whole loop."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from example_project.catalogue.models import Product
from imagekit_bgremove.exceptions import ServerError
from imagekit_bgremove.models import JobStatus
from tests.helpers import image_bytes

ROOT = Path(__file__).resolve().parent.parent


def photo(name="shoe.png"):
    return SimpleUploadedFile(name, image_bytes(), content_type="image/png")


@pytest.mark.django_db
def test_success_through_the_webhook(imagekit, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        product = Product.objects.create(name="Shoe", photo=photo())
    [upload] = imagekit.uploads
    assert upload.options == {"add_shadow": False, "semitransparency": True}
    with django_capture_on_commit_callbacks(execute=True):
        response = imagekit.deliver(product.photo.removal, "SUCCESS")
    assert response.status_code == 200
    product.refresh_from_db()
    assert product.photo.removal_status == JobStatus.SUCCEEDED
    assert product.photo.result_file.read().startswith(b"\x89PNG")


@pytest.mark.django_db
def test_failure_is_recorded_with_imagekits_reason(imagekit, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        product = Product.objects.create(name="Shoe", photo=photo())
    response = imagekit.deliver(
        product.photo.removal, "FAILURE", error={"message": "Could not identify foreground"}
    )
    assert response.status_code == 200
    product.refresh_from_db()
    assert product.photo.removal_status == JobStatus.FAILED
    assert "Could not identify foreground" in product.photo.removal_error


@pytest.mark.django_db
def test_callbacks_are_signed_with_the_configured_secret(
    imagekit, settings, django_capture_on_commit_callbacks
):
    settings.IMAGEKIT_BGREMOVE = {
        **settings.IMAGEKIT_BGREMOVE,
        "WEBHOOK_SECRETS": ["whsec_test"],
        "WEBHOOK_REQUIRE_SIGNATURE": True,
    }
    with django_capture_on_commit_callbacks(execute=True):
        product = Product.objects.create(name="Shoe", photo=photo())
    with django_capture_on_commit_callbacks(execute=True):
        # Accepted although a signature is required: the fake signed it.
        assert imagekit.deliver(product.photo.removal).status_code == 200
    product.refresh_from_db()
    assert product.photo.removal_status == JobStatus.SUCCEEDED


@pytest.mark.django_db
def test_a_scripted_error_reaches_the_app(imagekit, settings, django_capture_on_commit_callbacks):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "TASK_MAX_ATTEMPTS": 1}
    imagekit.script("upload", error=ServerError("ImageKit is down", status=503, retryable=True))
    with django_capture_on_commit_callbacks(execute=True):
        product = Product.objects.create(name="Shoe", photo=photo())
    assert imagekit.uploads == []  # the error came before any work
    assert product.photo.removal.status != JobStatus.PENDING


@pytest.mark.django_db
def test_an_upload_whose_answer_was_lost_is_not_sent_twice(
    imagekit, django_capture_on_commit_callbacks
):
    imagekit.script("upload", lost=True)
    with django_capture_on_commit_callbacks(execute=True):
        product = Product.objects.create(name="Shoe", photo=photo())
    job = product.photo.removal
    job.refresh_from_db()
    assert job.submission_uncertain  # the app cannot tell whether it was stored
    assert len(imagekit.uploads) == 1
    assert imagekit.find_file(imagekit.uploads[0].folder, imagekit.uploads[0].file_name)


@pytest.mark.django_db
def test_remove_bg_refused_at_once_fails_the_job(imagekit, django_capture_on_commit_callbacks):
    imagekit.script("upload", extension_status="failed")
    with django_capture_on_commit_callbacks(execute=True):
        product = Product.objects.create(name="Shoe", photo=photo())
    product.refresh_from_db()
    assert product.photo.removal_status == JobStatus.FAILED


def test_the_documented_example_runs(tmp_path):
    # docs/testing.md's pytest example, with the example project's Product as "shop.models".
    text = (ROOT / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(block for block in blocks if "def test_" in block)
    example = example.replace(
        "from shop.models import", "from example_project.catalogue.models import"
    )
    (tmp_path / "test_example.py").write_text(example)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--rootdir={ROOT}",
            "-c",
            str(ROOT / "pyproject.toml"),
            str(tmp_path / "test_example.py"),
        ],
        cwd=ROOT,
        # Its own database: the running test holds the PostgreSQL one.
        env={**os.environ, "DATABASE_URL": "sqlite:///:memory:"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
