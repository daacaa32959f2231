"""The app's admin, and BackgroundRemovalAdminMixin on a ModelAdmin of the test app."""

from __future__ import annotations

import io

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
    product = Product(name=name)
    product.photo.save(f"{name}.png", ContentFile(png_bytes()), save=False)
    product.save()
    return product


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("admin", "admin@example.com", None)
    client.force_login(user)
    return user


def action_post(client, products, **data):
    body = {
        "action": "remove_background_action",
        ACTION_CHECKBOX_NAME: [str(p.pk) for p in products],
        **data,
    }
    return client.post(CHANGELIST, body)


def test_changelist_shows_status_and_thumbnail(client, staff):
    mug, cup = make_product("mug"), make_product("cup")
    RemovalJob.objects.create(
        content_type=ContentType.objects.get_for_model(Product),
        object_id=str(mug.pk),
        field_name="photo",
        status=JobStatus.SUCCEEDED,
        result_url="https://ik.example/mug.png",
    )
    Product.objects.filter(pk=mug.pk).update(photo_removal=RemovalJob.objects.get())
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Background removal" in html
    assert "Succeeded" in html and 'src="https://ik.example/mug.png"' in html
    assert "no removal" in html  # the cup
    assert "Remove background…" in html
    del cup


def test_change_form_preview(client, staff):
    product = make_product("mug")
    job = RemovalJob.objects.create(
        content_type=ContentType.objects.get_for_model(Product),
        object_id=str(product.pk),
        field_name="photo",
        status=JobStatus.PENDING,
    )
    Product.objects.filter(pk=product.pk).update(photo_removal=job)
    html = client.get(f"{CHANGELIST}{product.pk}/change/").content.decode()
    assert "Pending at ImageKit" in html
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
    job = RemovalJob.objects.create(
        content_type=ContentType.objects.get_for_model(Product),
        object_id=str(product.pk),
        field_name="photo",
        status=JobStatus.FAILED,
        error_message="nope",
        file_id="fid_1",
    )
    response = client.get("/admin/imagekit_bgremove/removaljob/")
    assert response.status_code == 200
    assert "Failed" in response.content.decode()
    assert (
        client.get("/admin/imagekit_bgremove/removaljob/?q=fid_1").context["cl"].result_count == 1
    )
    assert client.get(f"/admin/imagekit_bgremove/removaljob/{job.pk}/change/").status_code == 200
    response = client.post(
        "/admin/imagekit_bgremove/removaljob/",
        {"action": "retry_failed", ACTION_CHECKBOX_NAME: [str(job.pk)]},
    )
    assert response.status_code == 302
    retried = RemovalJob.objects.exclude(pk=job.pk).get()
    assert (retried.trigger, retried.status) == (Trigger.RETRY, JobStatus.QUEUED)


def test_job_admin_reconcile_now(client, staff, monkeypatch):
    from imagekit_bgremove import services

    monkeypatch.setattr(services, "reconcile", lambda: {"checked": 2, "succeeded": 1})
    product = make_product("mug")
    job = RemovalJob.objects.create(
        content_type=ContentType.objects.get_for_model(Product),
        object_id=str(product.pk),
        field_name="photo",
        status=JobStatus.PENDING,
    )
    response = client.post(
        "/admin/imagekit_bgremove/removaljob/",
        {"action": "reconcile_now", ACTION_CHECKBOX_NAME: [str(job.pk)]},
        follow=True,
    )
    assert "checked: 2, succeeded: 1" in response.content.decode()


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
    ct = ContentType.objects.get_for_model(Product)

    def add(name):
        product = make_product(name)
        job = RemovalJob.objects.create(
            content_type=ct,
            object_id=str(product.pk),
            field_name="photo",
            status=JobStatus.SUCCEEDED,
            result_url=f"https://ik.example/{name}.png",
        )
        Product.objects.filter(pk=product.pk).update(photo_removal=job)

    add("first")
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as one:
        client.get(CHANGELIST)
    for i in range(6):
        add(f"more{i}")
    with django_assert_max_num_queries(len(one)):
        response = client.get(CHANGELIST)
    assert response.content.decode().count("https://ik.example/") == 7
