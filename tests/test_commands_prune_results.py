"""prune_removal_results: only the cut-outs a newer success replaced, and only with --delete;
with --imagekit-originals, only the files the app uploaded for them that nothing current uses."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from imagekit_bgremove.exceptions import ImageKitError
from imagekit_bgremove.models import ContentClaim, JobStatus, RemovalJob
from imagekit_bgremove.testing import FakeImageKit
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


def uploaded_job(imagekit: FakeImageKit, product: Product, **changes) -> RemovalJob:
    """A job whose original the app uploaded (``upload_path``); its cut-out is a version."""
    n = RemovalJob.objects.count()
    file_id = imagekit.upload(b"image", f"photo{n}.jpg", folder="/ikbg")["fileId"]
    return stored_job(
        product,
        upload_path=f"/ikbg/photo{n}.jpg",
        file_id=file_id,
        result_file_id=file_id,
        **changes,
    )


def exists(imagekit: FakeImageKit, file_id: str) -> bool:
    try:
        imagekit.get_file_details(file_id)
    except ImageKitError as exc:
        assert exc.status == 404
        return False
    return True


def test_imagekit_originals_of_replaced_jobs_are_deleted_once(imagekit):
    mug = Product.objects.create(name="mug")
    old = uploaded_job(imagekit, mug)
    ContentClaim.objects.create(key="a" * 64, job=old)
    current = uploaded_job(imagekit, mug)

    assert "Would delete 1 uploaded original at ImageKit." in prune("--imagekit-originals")
    assert exists(imagekit, old.file_id)

    out = prune("--delete", "--imagekit-originals")
    assert "Deleted 1 uploaded original at ImageKit." in out
    assert not exists(imagekit, old.file_id) and exists(imagekit, current.file_id)
    old.refresh_from_db()
    assert old.original_deleted_at is not None and old.status == JobStatus.SUCCEEDED
    # The next identical image pays again instead of sharing the deleted file.
    assert not ContentClaim.objects.filter(job=old).exists()

    assert "Deleted 0 uploaded originals" in prune("--delete", "--imagekit-originals")
    # Without the flag, ImageKit is never touched.
    newest = uploaded_job(imagekit, mug)
    prune("--delete")
    assert exists(imagekit, current.file_id) and exists(imagekit, newest.file_id)


def test_a_file_the_user_brought_is_never_deleted(imagekit):
    mug = Product.objects.create(name="mug")
    file_id = imagekit.upload(b"theirs", "theirs.jpg")["fileId"]
    # An imagekit_file_id_field job: remove-bg ran on the user's file, nothing was uploaded.
    theirs = stored_job(mug, file_id=file_id, result_file_id=file_id)
    uploaded_job(imagekit, mug)
    assert "Deleted 0 uploaded originals" in prune("--delete", "--imagekit-originals")
    assert exists(imagekit, file_id)
    theirs.refresh_from_db()
    assert theirs.original_deleted_at is None


def test_a_file_a_current_job_shares_is_not_deleted(imagekit):
    mug, cup, bowl = (Product.objects.create(name=n) for n in ("mug", "cup", "bowl"))
    payer = uploaded_job(imagekit, mug)
    uploaded_job(imagekit, mug)  # replaces the payer's cut-out on the mug
    # The cup's image was identical: its current cut-out is the payer's result.
    stored_job(cup, duplicate_of=payer, file_id=payer.file_id, result_file_id=payer.file_id)
    waiter_payer = uploaded_job(imagekit, bowl)
    uploaded_job(imagekit, bowl)
    # A twin still waiting for a replaced payer's result names no file yet.
    RemovalJob.objects.create(
        content_type=payer.content_type,
        object_id=str(cup.pk),
        field_name="photo",
        status=JobStatus.WAITING,
        duplicate_of=waiter_payer,
    )
    # A job on a file the user brought, which is one the app uploaded (its fileId copied).
    jar, pot = Product.objects.create(name="jar"), Product.objects.create(name="pot")
    adopted_payer = uploaded_job(imagekit, pot)
    uploaded_job(imagekit, pot)
    stored_job(jar, file_id=adopted_payer.file_id, result_file_id=adopted_payer.file_id)
    assert "Would delete 0 uploaded originals" in prune("--imagekit-originals")
    assert "Deleted 0 uploaded originals" in prune("--delete", "--imagekit-originals")
    for job in (payer, waiter_payer, adopted_payer):
        assert exists(imagekit, job.file_id)


def test_a_file_shared_only_by_replaced_jobs_is_deleted(imagekit):
    mug, cup = Product.objects.create(name="mug"), Product.objects.create(name="cup")
    payer = uploaded_job(imagekit, mug)
    uploaded_job(imagekit, mug)
    stored_job(cup, duplicate_of=payer, file_id=payer.file_id, result_file_id=payer.file_id)
    stored_job(cup)  # the cup's shared cut-out is replaced too
    assert "Deleted 1 uploaded original at ImageKit." in prune("--delete", "--imagekit-originals")
    assert not exists(imagekit, payer.file_id)


def test_a_failed_deletion_leaves_the_job_and_is_reported(imagekit):
    mug = Product.objects.create(name="mug")
    old = uploaded_job(imagekit, mug)
    uploaded_job(imagekit, mug)
    imagekit.script("delete_file", error=ImageKitError("Server error.", status=500))
    err = StringIO()
    with pytest.raises(CommandError, match="1 ImageKit file"):
        call_command(
            "prune_removal_results",
            "--delete",
            "--imagekit-originals",
            stdout=StringIO(),
            stderr=err,
        )
    assert f"Job {old.pk}: ImageKit refused to delete the file (HTTP 500)" in err.getvalue()
    old.refresh_from_db()
    assert old.original_deleted_at is None and exists(imagekit, old.file_id)
    # The next run finishes it; so does one killed after ImageKit deleted the file.
    assert "Deleted 1 uploaded original" in prune("--delete", "--imagekit-originals")
    RemovalJob.objects.filter(pk=old.pk).update(original_deleted_at=None)
    assert "Deleted 1 uploaded original" in prune("--delete", "--imagekit-originals")
