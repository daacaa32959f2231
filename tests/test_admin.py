"""The app's admin, and BackgroundRemovalAdminMixin on a ModelAdmin of the test app."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.urls import include, path

from imagekit_bgremove.admin import BackgroundRemovalAdminMixin
from imagekit_bgremove.models import (
    DeliveryVerdict,
    JobStatus,
    RemovalJob,
    Trigger,
    WebhookDelivery,
)
from tests.testapp.models import Product

# This module is its own URLconf: an admin site with the mixin on Product, plus the app's URLs.
site = admin.AdminSite(name="mixin_admin")


class ProductAdmin(BackgroundRemovalAdminMixin, admin.ModelAdmin):
    list_display = ["name"]


site.register(Product, ProductAdmin)
site.register(RemovalJob, type(admin.site._registry[RemovalJob]))
site.register(WebhookDelivery, type(admin.site._registry[WebhookDelivery]))

urlpatterns = [
    path("admin/", site.urls),
    path("imagekit-bgremove/", include("imagekit_bgremove.urls")),
]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

CHANGELIST = "/admin/testapp/product/"


def png_bytes() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (20, 12), (10, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def make_product(name: str) -> Product:
    """A product with an image and no removal job yet (bulk_create sends no save signals)."""
    product = Product(name=name)
    product.photo.save(f"{name}.png", ContentFile(png_bytes()), save=False)
    [product] = Product.objects.bulk_create([product])
    return product


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("admin", "admin@example.com", None)
    client.force_login(user)
    return user


def job_for(product: Product, *, point: bool = False, **changes) -> RemovalJob:
    """A job of ``product.photo``; with ``point`` also its ``photo_removal`` (the latest job)."""
    job = RemovalJob.objects.create(
        content_type=ContentType.objects.get_for_model(Product),
        object_id=str(product.pk),
        field_name="photo",
        **changes,
    )
    if point:
        Product.objects.filter(pk=product.pk).update(photo_removal=job)
    return job


def action_post(client, products, **data):
    body = {
        "action": "remove_background_action",
        ACTION_CHECKBOX_NAME: [str(p.pk) for p in products],
        **data,
    }
    return client.post(CHANGELIST, body)


def test_changelist_shows_status_and_thumbnail(client, staff):
    mug, cup = make_product("mug"), make_product("cup")
    job_for(mug, point=True, status=JobStatus.SUCCEEDED, result_url="https://ik.example/mug.png")
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Background removal" in html
    rows = {p.pk: row for p in (mug, cup) for row in html.split("<tr") if f"/{p.pk}/change/" in row}
    assert "Succeeded" in rows[mug.pk] and 'src="https://ik.example/mug.png"' in rows[mug.pk]
    assert "no removal" in rows[cup.pk] and "<img" not in rows[cup.pk]
    assert "Remove background…" in html


def test_change_form_preview(client, staff):
    product = make_product("mug")
    job = job_for(product, point=True, status=JobStatus.PENDING)
    html = client.get(f"{CHANGELIST}{product.pk}/change/").content.decode()
    assert "Processing at ImageKit" in html
    assert "working…" in html
    assert f'data-ikbg-poll="/imagekit-bgremove/api/removals/{job.pk}/"' in html
    assert product.photo.url in html

    RemovalJob.objects.filter(pk=job.pk).update(
        status=JobStatus.FAILED, error_message="ImageKit could not find a foreground"
    )
    html = client.get(f"{CHANGELIST}{product.pk}/change/").content.decode()
    assert "ImageKit could not find a foreground" in html
    assert "data-ikbg-poll=" not in html


def test_action_shows_the_options_form(client, staff):
    products = [make_product("mug"), make_product("cup")]
    response = action_post(client, products)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Remove the background of 2 products" in html
    for name in ("add_shadow", "semitransparency", "bg_color", "bg_image_url", "force"):
        assert f'name="{name}"' in html
    assert 'value="ffffff"' in html  # the field's default options fill the form
    assert not RemovalJob.objects.exists()


def test_action_form_shows_option_errors(client, staff):
    products = [make_product("mug")]
    response = action_post(
        client, products, apply="1", field="photo", bg_color="not-a-colour", semitransparency="on"
    )
    assert response.status_code == 200
    form = response.context["form"]
    assert "bg_color" in form.errors and "hex colour" in form.errors["bg_color"][0]
    assert not RemovalJob.objects.exists()

    response = action_post(
        client,
        products,
        apply="1",
        field="photo",
        bg_color="fff",
        bg_image_url="https://example.com/bg.jpg",
    )
    assert response.status_code == 200
    assert "cannot both be set" in str(response.context["form"].non_field_errors())


def test_action_queues_one_job_per_object(client, staff):
    products = [make_product("mug"), make_product("cup"), Product.objects.create(name="none")]
    response = action_post(
        client, products, apply="1", field="photo", bg_color="#00FF00", force="on"
    )
    assert response.status_code == 302
    jobs = RemovalJob.objects.order_by("pk")
    assert sorted(j.object_id for j in jobs) == sorted(str(p.pk) for p in products[:2])
    for job in jobs:
        assert (job.trigger, job.requested_by, job.status, job.force) == (
            Trigger.ADMIN,
            staff,
            JobStatus.QUEUED,
            True,
        )
        assert job.options["bg_color"] == "00ff00"
        # An unticked checkbox is an explicit False, not "use the default".
        assert job.options["semitransparency"] is False
    messages = [str(m) for m in response.wsgi_request._messages]
    assert "Queued 2 background removals." in messages
    assert any("none: no image" in m for m in messages)


def test_job_admin_lists_and_retries(client, staff):
    product = make_product("mug")
    job = job_for(product, status=JobStatus.FAILED, error_message="nope", file_id="fid_1")
    gone = job_for(make_product("gone"), status=JobStatus.FAILED)
    Product.objects.filter(name="gone").delete()
    response = client.get("/admin/imagekit_bgremove/removaljob/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Failed" in html
    assert f'<a href="/admin/testapp/product/{product.pk}/change/">mug</a>' in html
    assert f"product {gone.object_id} (deleted)" in html
    assert (
        client.get("/admin/imagekit_bgremove/removaljob/?q=fid_1").context["cl"].result_count == 1
    )
    assert client.get(f"/admin/imagekit_bgremove/removaljob/{job.pk}/change/").status_code == 200
    response = client.post(
        "/admin/imagekit_bgremove/removaljob/",
        {"action": "retry_failed", ACTION_CHECKBOX_NAME: [str(job.pk)]},
    )
    assert response.status_code == 302
    retried = RemovalJob.objects.exclude(pk__in=[job.pk, gone.pk]).get()
    assert (retried.trigger, retried.status) == (Trigger.RETRY, JobStatus.QUEUED)
    assert retried.requested_by == staff


def reconcile_now(client, job):
    return client.post(
        "/admin/imagekit_bgremove/removaljob/",
        {"action": "reconcile_now", ACTION_CHECKBOX_NAME: [str(job.pk)]},
        follow=True,
    )


def test_job_admin_reconcile_now(client, staff, monkeypatch):
    from imagekit_bgremove import services

    # ImmediateBackend: the queued task has run by the time the message is written.
    monkeypatch.setattr(services, "reconcile", lambda: {"checked": 2, "succeeded": 1})
    job = job_for(make_product("mug"), status=JobStatus.PENDING)
    assert "checked: 2, succeeded: 1" in reconcile_now(client, job).content.decode()


def test_job_admin_reconcile_now_is_queued_not_run_in_the_request(
    client, staff, monkeypatch, dummy_tasks
):
    from imagekit_bgremove import services, tasks

    def in_request():
        raise AssertionError("reconcile (which calls ImageKit) ran inside the admin request")

    monkeypatch.setattr(services, "reconcile", in_request)
    backend = tasks.reconcile_removals.get_backend()
    backend.clear()
    job = job_for(make_product("mug"), status=JobStatus.PENDING)
    response = reconcile_now(client, job)
    assert "Reconciliation queued." in response.content.decode()
    assert [r.task.name for r in backend.results] == ["reconcile_removals"]


def test_delivery_admin_is_read_only(client, staff):
    delivery = WebhookDelivery.objects.create(
        verdict=DeliveryVerdict.UNAUTHENTIC,
        status_code=403,
        body="{}",
        headers={"user-agent": "ImageKit"},
    )
    response = client.get("/admin/imagekit_bgremove/webhookdelivery/?verdict=unauthentic")
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1
    response = client.get(f"/admin/imagekit_bgremove/webhookdelivery/{delivery.pk}/change/")
    assert response.status_code == 200
    assert "ImageKit" in response.content.decode()
    assert client.get("/admin/imagekit_bgremove/webhookdelivery/add/").status_code == 403


def test_changelist_queries_do_not_grow_with_rows(client, staff, django_assert_max_num_queries):
    def add(name):
        product = make_product(name)
        job_for(
            product,
            point=True,
            status=JobStatus.SUCCEEDED,
            result_url=f"https://ik.example/{name}.png",
        )
        make_product(f"{name}-never-removed")  # no job at all
        Product.objects.create(name=f"{name}-no-image")

    add("first")
    queries = count_queries(client, CHANGELIST)
    for i in range(6):
        add(f"more{i}")
    with django_assert_max_num_queries(queries):
        response = client.get(CHANGELIST)
    html = response.content.decode()
    assert html.count("https://ik.example/") == 7
    assert html.count("no removal") == 14


def count_queries(client, url: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_job_list_queries_do_not_grow_with_rows(client, staff, django_assert_max_num_queries):
    url = "/admin/imagekit_bgremove/removaljob/"
    job_for(make_product("first"), status=JobStatus.FAILED)
    queries = count_queries(client, url)
    for i in range(6):
        job_for(make_product(f"more{i}"), status=JobStatus.FAILED)
    with django_assert_max_num_queries(queries):
        response = client.get(url)
    html = response.content.decode()
    assert len(re.findall(r'href="/admin/testapp/product/\d+/change/"', html)) == 7
