"""BackgroundRemovalImageField: what a model author and an admin user notice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django import forms
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import models, transaction
from django.db.migrations.writer import MigrationWriter

from imagekit_bgremove import services
from imagekit_bgremove.fields import BackgroundRemovalImageField
from imagekit_bgremove.models import JobStatus, RemovalJob, Trigger
from imagekit_bgremove.state import prefetch_removal_state, with_removal_status
from tests.helpers import make_image, uploads
from tests.testapp.models import Article, Document, Product, only_published

pytestmark = pytest.mark.django_db


def jobs_of(obj, field="photo"):
    return list(RemovalJob.objects.for_object(obj, field).order_by("pk"))


# ------------------------------------------------------------------------------ save hooks


def test_new_image_requests_exactly_one_removal(dummy_tasks, run_on_commit):
    with run_on_commit():
        product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    [job] = jobs_of(product)
    assert job.status == JobStatus.QUEUED
    assert job.trigger == Trigger.SAVE
    assert job.source_name == product.photo.name
    assert job.options["bg_color"] == "ffffff"
    # The pointer is set in the database and on the instance.
    assert product.photo.removal == job
    assert Product.objects.get(pk=product.pk).photo.removal == job
    assert product.photo.removal_status == "queued"
    # Created with the name of a file already in storage: a new image for this row too.
    with run_on_commit():
        copy = Product.objects.create(name="copy", photo=product.photo.name)
    assert len(jobs_of(copy)) == 1


def test_unchanged_raw_and_other_field_saves_request_nothing(dummy_tasks, run_on_commit):
    with run_on_commit():
        product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    assert len(jobs_of(product)) == 1
    with run_on_commit():
        product.name = "big mug"
        product.save()  # image unchanged
        again = Product.objects.get(pk=product.pk)
        again.save()  # loaded from the database, unchanged
        again.photo = make_image("other.png", seed=5)
        again.save(update_fields=["name"])  # the field is not being saved
    assert len(jobs_of(product)) == 1
    with run_on_commit():
        raw = Product(pk=product.pk, name="fixture", photo="products/loaded.png")
        raw.save_base(raw=True)  # loaddata
    assert len(jobs_of(product)) == 1


def test_changed_image_supersedes_the_previous_request(dummy_tasks, run_on_commit):
    with run_on_commit():
        product = Product.objects.create(photo=make_image("a.png"))
    with run_on_commit():
        product.photo = make_image("b.png", seed=2)
        product.save(update_fields=["photo"])
    first, second = jobs_of(product)
    assert first.status == JobStatus.SUPERSEDED and first.superseded_by_id == second.pk
    assert second.status == JobStatus.QUEUED and second.source_name.endswith(".png")
    assert Product.objects.get(pk=product.pk).photo.removal == second


def test_empty_image_and_manual_or_callable_triggers(dummy_tasks, run_on_commit):
    with run_on_commit():
        empty = Product.objects.create(name="no photo")
        doc = Document.objects.create(scan=make_image("scan.png"))
        draft = Article.objects.create(published=False, cover=make_image("c.png"))
        live = Article.objects.create(published=True, cover=make_image("d.png", seed=3))
    assert RemovalJob.objects.for_object(empty).count() == 0
    assert RemovalJob.objects.for_object(doc).count() == 0  # "manual"
    assert RemovalJob.objects.for_object(draft).count() == 0
    assert RemovalJob.objects.for_object(live, "cover").count() == 1
    # Manual: on request, with the UUID primary key as object id.
    with run_on_commit():
        job = doc.scan.request_removal({"bg_color": "green"})
    assert job.object_id == str(doc.pk) and job.options["bg_color"] == "green"
    assert Document.objects.get(pk=doc.pk).scan.removal == job


def test_rollback_sends_nothing(emulator, run_on_commit):
    with run_on_commit(), pytest.raises(RuntimeError), transaction.atomic():
        Product.objects.create(photo=make_image("rolled.png"))
        raise RuntimeError("the view failed")
    assert RemovalJob.objects.count() == 0
    assert uploads(emulator) == []
    assert emulator.state()["files"] == []


def test_broken_queue_never_breaks_the_save(emulator, settings, run_on_commit):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "TASK_BACKEND": "nowhere"}
    with run_on_commit():
        product = Product.objects.create(name="saved anyway", photo=make_image("q.png"))
    assert Product.objects.filter(pk=product.pk).exists()
    [job] = jobs_of(product)
    assert job.status == JobStatus.QUEUED
    assert job.error_code == "enqueue_failed" and "reconcile" in job.error_message
    assert uploads(emulator) == []
    # Once the queue works again, reconcile sends it.
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "TASK_BACKEND": "default"}
    summary = services.reconcile()
    assert summary["requeued"] == 1
    job.refresh_from_db()
    assert job.status == JobStatus.PENDING and job.file_id and job.error_code == ""
    assert len(uploads(emulator)) == 1


def test_save_does_no_io_on_the_image(dummy_tasks, monkeypatch, run_on_commit):
    """save() stores the file like ImageField and never opens it again, nor the network."""
    import imagekit_bgremove.client as client_module

    def boom(*args, **kwargs):
        raise AssertionError("no ImageKit call during save")

    monkeypatch.setattr(client_module, "get_client", boom)
    opened = []
    original_open = default_storage.open
    monkeypatch.setattr(
        default_storage, "open", lambda *a, **k: opened.append(a) or original_open(*a, **k)
    )
    with run_on_commit():
        Product.objects.create(photo=make_image("quiet.png"))
    assert opened == []


# ------------------------------------------------------------------------------ reading


def test_list_with_removal_status_has_no_n_plus_one(
    dummy_tasks, run_on_commit, django_assert_num_queries
):
    with run_on_commit():
        for n in range(5):
            Product.objects.create(name=f"p{n}", photo=make_image(f"p{n}.png", seed=n))
    first = RemovalJob.objects.order_by("pk").first()
    RemovalJob.objects.filter(pk=first.pk).update(
        status=JobStatus.SUCCEEDED, result_url="https://ik.example/x.png", result_name="x.png"
    )
    with django_assert_num_queries(3):  # the page, its jobs' ids, the jobs
        rows = [
            (p.photo.removal_status, p.photo.result_url)
            for p in prefetch_removal_state(Product.objects.order_by("pk"))
        ]
    assert rows[0] == ("succeeded", "https://ik.example/x.png")
    assert rows[1:] == [("queued", None)] * 4
    succeeded = with_removal_status(Product.objects.all(), "photo").filter(
        photo_removal_status="succeeded"
    )
    assert succeeded.count() == 1


def test_a_job_that_succeeds_between_the_two_reads_shows_its_cut_out(dummy_tasks):
    # The page's state is two queries; a worker storing the result between them must not leave
    # a "succeeded" status without its cut-out.
    from django.db import connection

    product = Product.objects.create(name="mug", photo=make_image("mug.png"))
    [job] = jobs_of(product)
    moved = []

    def store_the_result_first(execute, sql, params, many, context):
        if not moved and "imagekit_bgremove_removaljob" in sql and "MAX(" not in sql.upper():
            moved.append(True)
            RemovalJob.objects.filter(pk=job.pk).update(
                status=JobStatus.SUCCEEDED, result_url="https://ik.example/mug.png"
            )
        return execute(sql, params, many, context)

    with connection.execute_wrapper(store_the_result_first):
        [fresh] = prefetch_removal_state([Product.objects.get(pk=product.pk)])
    assert moved
    assert fresh.photo.removal_status == "succeeded"
    assert fresh.photo.result_url == "https://ik.example/mug.png"


def test_fieldfile_properties_before_any_request():
    product = Product(name="new")
    assert product.photo.removal is None
    assert product.photo.removal_status is None
    assert product.photo.result_url is None
    assert product.photo.result_file is None
    assert product.photo.removal_error == ""


def test_request_removal_errors_are_clear(dummy_tasks):
    product = Product.objects.create(name="empty")
    with pytest.raises(ValueError, match="has no image"):
        services.request_removal(product, "photo")
    with pytest.raises(ValueError, match="no field 'nope'"):
        services.request_removal(product, "nope")
    with pytest.raises(ValueError, match="not a BackgroundRemovalImageField"):
        services.request_removal(product, "name")
    product.photo = make_image("ok.png")
    product.save()
    with pytest.raises(services.OptionsError, match="bg_color"):
        services.request_removal(product, "photo", options={"bg_color": "not a colour"})


# ------------------------------------------------------------------------------ definition


def test_invalid_options_are_refused_at_definition_naming_the_field():
    with pytest.raises(ImproperlyConfigured, match=r"Broken\.photo: invalid remove_bg_options"):

        class Broken(models.Model):
            photo = BackgroundRemovalImageField(remove_bg_options={"bg_colour": "red"})

            class Meta:
                app_label = "testapp"

            def __str__(self) -> str:
                return "broken"

    with pytest.raises(ImproperlyConfigured, match="remove_bg_trigger"):
        BackgroundRemovalImageField(remove_bg_trigger="sometimes")


def test_deconstruct_round_trips():
    field = Article._meta.get_field("cover")
    _name, path, args, kwargs = field.deconstruct()
    assert path == "imagekit_bgremove.fields.BackgroundRemovalImageField"
    assert kwargs["remove_bg_trigger"] is only_published
    rebuilt = BackgroundRemovalImageField(*args, **kwargs)
    assert rebuilt.deconstruct()[3] == kwargs
    text, _imports = MigrationWriter.serialize(field)
    assert "tests.testapp.models.only_published" in text
    product_field = Product._meta.get_field("photo")
    assert product_field.deconstruct()[3]["remove_bg_options"] == {"bg_color": "ffffff"}


def test_model_form_rejects_a_non_image_upload():
    class ProductForm(forms.ModelForm):
        class Meta:
            model = Product
            fields = ["name", "photo"]

    bad = SimpleUploadedFile("photo.png", b"not an image at all", content_type="image/png")
    form = ProductForm(data={"name": "x"}, files={"photo": bad})
    assert not form.is_valid()
    assert "photo" in form.errors
    form = ProductForm(data={"name": "x"}, files={"photo": make_image("good.png")})
    assert form.is_valid(), form.errors
    assert "photo_removal" not in form.fields


# ------------------------------------------------------------------------------ migrations

PROJECT_SETTINGS = """
SECRET_KEY = "x"
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "imagekit_bgremove",
                  "shop"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
SILENCED_SYSTEM_CHECKS = ["imagekit_bgremove.E010"]
"""

MODELS_BEFORE = """
from django.db import models

class Gadget(models.Model):
    name = models.CharField(max_length=50)
"""

MODELS_AFTER = """
from django.db import models

from imagekit_bgremove.fields import BackgroundRemovalImageField

class Gadget(models.Model):
    name = models.CharField(max_length=50)
    photo = BackgroundRemovalImageField(upload_to="g", blank=True,
                                        remove_bg_options={"add_shadow": True})
"""


def test_adding_the_field_needs_exactly_one_migration(tmp_path: Path):
    (tmp_path / "shop" / "migrations").mkdir(parents=True)
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "migrations" / "__init__.py").write_text("")
    (tmp_path / "proj_settings.py").write_text(PROJECT_SETTINGS)
    models_py = tmp_path / "shop" / "models.py"
    models_py.write_text(textwrap.dedent(MODELS_BEFORE))
    repo = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "proj_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)]),
    }

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert manage("makemigrations", "shop").returncode == 0
    assert manage("migrate").returncode == 0
    models_py.write_text(textwrap.dedent(MODELS_AFTER))
    made = manage("makemigrations", "shop")
    assert made.returncode == 0, made.stderr
    migrations = sorted(p.name for p in (tmp_path / "shop" / "migrations").glob("0*.py"))
    assert len(migrations) == 2
    text = (tmp_path / "shop" / "migrations" / migrations[1]).read_text()
    # The field's own column and nothing else: its state lives in the job table.
    assert text.count("migrations.AddField(") == 1 and "BackgroundRemovalImageField" in text
    assert "_removal" not in text and "RemovalJob" not in text
    check = manage("makemigrations", "--check", "--dry-run")
    assert check.returncode == 0, check.stdout + check.stderr
    applied = manage("migrate")
    assert applied.returncode == 0, applied.stderr
    shell = manage(
        "shell",
        "-c",
        "from shop.models import Gadget; "
        "from django.db import connection; "
        "print(sorted(c.name for c in connection.introspection.get_table_description("
        "connection.cursor(), Gadget._meta.db_table)))",
    )
    assert shell.stdout.strip().splitlines()[-1] == "['id', 'name', 'photo']", shell.stderr
