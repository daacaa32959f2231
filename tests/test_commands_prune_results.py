"""prune_removal_results: only the cut-outs a newer success replaced, and only with --delete."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command

from imagekit_bgremove.models import JobStatus, RemovalJob
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db


def stored_job(product: Product, status: str = JobStatus.SUCCEEDED, **changes) -> RemovalJob:
    name = default_storage.save(f"products/{product.pk}_nobg.png", ContentFile(b"x" * 1000))
    return RemovalJob.objects.create(
        content_type=ContentType.objects.get_for_model(Product),
        object_id=str(product.pk),
        field_name="photo",
        status=status,
        result_name=name,
        result_size=1000,
        **changes,
    )


def prune(*args: str) -> str:
    out = StringIO()
    call_command("prune_removal_results", *args, stdout=out)
    return out.getvalue()


def test_only_replaced_cut_outs_are_deleted_and_only_with_delete():
    mug, cup = Product.objects.create(name="mug"), Product.objects.create(name="cup")
    old, older_failed_later = stored_job(mug), stored_job(mug)
    current = stored_job(mug)
    # A newer job that failed does not replace the cut-out the field still shows.
    RemovalJob.objects.create(
        content_type=current.content_type,
        object_id=current.object_id,
        field_name="photo",
        status=JobStatus.FAILED,
    )
    only = stored_job(cup)
    replaced = [old, older_failed_later]

    assert "Would delete 2 superseded cut-outs (2.0\xa0KB)" in prune()
    assert all(default_storage.exists(job.result_name) for job in [*replaced, current, only])

    assert "Deleted 2 superseded cut-outs" in prune("--delete")
    for job in replaced:
        assert not default_storage.exists(job.result_name)
        job.refresh_from_db()
        assert job.result_name == ""
        assert job.status == JobStatus.SUCCEEDED  # the job and its ImageKit URL stay
    for job in [current, only]:
        assert default_storage.exists(job.result_name)
        job.refresh_from_db()
        assert job.result_name

    assert "Deleted 0 superseded cut-outs" in prune("--delete")


def test_a_file_already_gone_is_still_unnamed():
    # A run killed between deleting the file and clearing its name is finished by the next.
    mug = Product.objects.create(name="mug")
    old = stored_job(mug)
    stored_job(mug)
    default_storage.delete(old.result_name)
    assert "Deleted 1 superseded cut-out " in prune("--delete")
    old.refresh_from_db()
    assert old.result_name == ""
