"""The app's admin, and BackgroundRemovalAdminMixin on a ModelAdmin of the test app (no browser:
the pages through Django's test client; tests/test_admin_browser.py drives Chromium)."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.urls import include, path

from imagekit_bgremove.admin import BackgroundRemovalAdminMixin
from imagekit_bgremove.models import (
    DailyUsage,
    DeliveryVerdict,
    JobStatus,
    RemovalJob,
    Trigger,
    WebhookDelivery,
)
from imagekit_bgremove.services import budget
from tests.testapp.models import Product

# This module is its own URLconf: an admin site with the mixin on Product, plus the app's URLs.
site = admin.AdminSite(name="mixin_admin")


class ProductAdmin(BackgroundRemovalAdminMixin, admin.ModelAdmin):
    list_display = ["name"]

    def has_change_permission(self, request, obj=None):
        # Object-level rule, as a project might have: nobody may change "locked" products.
        if obj is not None and obj.name.startswith("locked"):
            return False
        return super().has_change_permission(request, obj)


site.register(Product, ProductAdmin)
site.register(RemovalJob, type(admin.site._registry[RemovalJob]))
site.register(WebhookDelivery, type(admin.site._registry[WebhookDelivery]))

urlpatterns = [
    path("admin/", site.urls),
    path("imagekit-bgremove/", include("imagekit_bgremove.urls")),
]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

CHANGELIST = "/admin/testapp/product/"
JOBS = "/admin/imagekit_bgremove/removaljob/"
DEFAULTS = {
    "add_shadow": False,
    "semitransparency": True,
    "bg_color": "ffffff",
    "bg_image_url": None,
}


def png_bytes(seed: int = 0) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (20, 12), (10, 120, (200 + seed) % 256)).save(out, format="PNG")
    return out.getvalue()


def make_product(name: str, *, image: bool = True) -> Product:
    """A product (with an image unless told) and no job yet (bulk_create sends no signals)."""
    product = Product(name=name)
    if image:
        product.photo.save(f"{name}.png", ContentFile(png_bytes()), save=False)
    [product] = Product.objects.bulk_create([product])
    return product


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("admin", "admin@example.com", None)
    client.force_login(user)
    return user


def job_for(product: Product, **changes) -> RemovalJob:
    """A job of ``product.photo`` (the latest, being the newest)."""
    changes.setdefault("source_name", product.photo.name or "")
    # Requested for the image the product holds (a save's job would mark a new image).
    changes.setdefault("trigger", Trigger.ADMIN)
    job = RemovalJob.objects.create(
        content_type=ContentType.objects.get_for_model(Product),
        object_id=str(product.pk),
        field_name="photo",
        **changes,
    )
    return job


def succeeded(product: Product, *, options=None, **changes) -> RemovalJob:
    """A succeeded job that is both the latest job and the latest result of the product."""
    changes.setdefault("result_url", f"https://ik.example/{product.name}.png")
    job = job_for(product, status=JobStatus.SUCCEEDED, options=options or dict(DEFAULTS), **changes)
    return job


def rows_of(html: str, products) -> dict[int, str]:
    return {
        p.pk: row
        for p in products
        for row in html.split("<tr")
        if f'href="/admin/testapp/product/{p.pk}/change/' in row
    }


def action_post(client, products, **data):
    body = {
        "action": "remove_background_action",
        ACTION_CHECKBOX_NAME: [str(p.pk) for p in products],
        **data,
    }
    return client.post(CHANGELIST, body)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.wsgi_request._messages]


# ---------------------------------------------------------------------------------- the list


def test_changelist_shows_original_result_and_badge(client, staff):
    mug, cup, bare = make_product("mug"), make_product("cup"), make_product("bare", image=False)
    succeeded(mug)
    html = client.get(CHANGELIST).content.decode()
    rows = rows_of(html, [mug, cup, bare])
    assert 'src="https://ik.example/mug.png"' in rows[mug.pk]
    assert f'src="{mug.photo.url}"' in rows[mug.pk]  # the original beside the cut-out
    assert "mug: original" in rows[mug.pk]  # alt text
    assert 'alt="mug with the background removed"' not in rows[mug.pk]  # it is on white
    assert 'alt="mug on a #ffffff background"' in rows[mug.pk]
    assert "ikbg-s-succeeded" in rows[mug.pk] and ">Succeeded<" in rows[mug.pk]
    assert ">No removal<" in rows[cup.pk] and "No cut-out" in rows[cup.pk]
    assert "No image" in rows[bare.pk]
    assert "data-ikbg-unfinished" not in html  # nothing to poll
    assert "imagekit_bgremove/admin/live.js" in html and "imagekit_bgremove/admin/ikbg.css" in html
    assert "Remove background…" in html


def test_last_good_result_stays_visible_while_a_new_job_runs_and_after_it_fails(client, staff):
    mug = make_product("mug")
    good = succeeded(mug)
    newer = job_for(mug, status=JobStatus.PENDING, options={"bg_color": "0000ff"})
    html = client.get(CHANGELIST).content.decode()
    row = rows_of(html, [mug])[mug.pk]
    assert 'src="https://ik.example/mug.png"' in row and "ikbg-previous" in row
    assert ">Processing<" in row and "ikbg-s-pending" in row
    assert "data-ikbg-unfinished" in row
    assert 'data-ikbg-status="/admin/testapp/product/removal-status/?kind=cell"' in row

    RemovalJob.objects.filter(pk=newer.pk).update(
        status=JobStatus.FAILED, error_code="removal_failed", error_message="No subject found."
    )
    row = rows_of(client.get(CHANGELIST).content.decode(), [mug])[mug.pk]
    assert 'src="https://ik.example/mug.png"' in row
    assert "ikbg-s-failed" in row and 'title="No subject found."' in row  # the error's tooltip
    assert '<span class="ikbg-visually-hidden">: No subject found.</span>' in row
    assert good.pk != newer.pk


def test_a_result_of_an_earlier_image_is_not_shown_for_a_new_one(client, staff):
    mug = make_product("mug")
    succeeded(mug, source_name="products/older.png")
    row = rows_of(client.get(CHANGELIST).content.decode(), [mug])[mug.pk]
    assert "ik.example" not in row


def test_list_filter_by_removal_state(client, staff):
    done, running, failed = (make_product(n) for n in ("done", "running", "failed"))
    make_product("never")
    succeeded(done)
    job_for(running, status=JobStatus.QUEUED)
    job_for(failed, status=JobStatus.FAILED)

    def names(query):
        response = client.get(f"{CHANGELIST}?photo_removal_state={query}")
        return sorted(str(p) for p in response.context["cl"].result_list)

    assert names("succeeded") == ["done"]
    assert names("unfinished") == ["running"]
    assert names("failed") == ["failed"]
    assert names("none") == ["never"]
    html = client.get(CHANGELIST).content.decode()
    assert "By background removal" in html and "No removal yet" in html


def count_queries(client, url: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).status_code == 200
    return len(queries)


def test_changelist_queries_do_not_grow_with_rows(client, staff, django_assert_max_num_queries):
    def add(name):
        good = make_product(name)
        succeeded(good)
        job_for(good, status=JobStatus.PENDING)  # running after a success
        make_product(f"{name}-never-removed")
        failed = make_product(f"{name}-failed")
        job_for(failed, status=JobStatus.FAILED, error_message="nope")
        make_product(f"{name}-no-image", image=False)

    add("first")
    queries = count_queries(client, CHANGELIST)
    for i in range(6):
        add(f"more{i}")
    with django_assert_max_num_queries(queries):
        response = client.get(CHANGELIST)
    html = response.content.decode()
    assert html.count("https://ik.example/") == 7
    assert html.count(">No removal<") == 14  # never removed, and no image


# ---------------------------------------------------------------------------------- live status


def test_status_view_answers_the_cells_and_whether_they_are_unfinished(client, staff):
    mug, cup = make_product("mug"), make_product("cup")
    job = job_for(mug, status=JobStatus.PENDING)
    response = client.get(
        "/admin/testapp/product/removal-status/",
        {"kind": "cell", "pk": [mug.pk, cup.pk, 999]},
    )
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    data = response.json()
    assert data["unfinished"] == 1
    assert set(data["objects"]) == {str(mug.pk), str(cup.pk)}
    assert data["objects"][str(mug.pk)]["unfinished"] is True
    assert "ikbg-s-pending" in data["objects"][str(mug.pk)]["html"]

    RemovalJob.objects.filter(pk=job.pk).update(
        status=JobStatus.SUCCEEDED, result_url="https://ik.example/m.png"
    )
    data = client.get(
        "/admin/testapp/product/removal-status/", {"kind": "preview", "pk": mug.pk}
    ).json()
    entry = data["objects"][str(mug.pk)]
    assert entry["unfinished"] is False and data["unfinished"] == 0
    assert 'class="ikbg-preview"' in entry["html"] and "https://ik.example/m.png" in entry["html"]


def test_status_view_needs_the_admin_and_the_view_permission(client):
    mug = make_product("mug")
    url = f"/admin/testapp/product/removal-status/?pk={mug.pk}"
    assert client.get(url).status_code == 302  # to the login page
    user = User.objects.create_user("clerk", password="x", is_staff=True)
    client.force_login(user)
    assert client.get(url).status_code == 403
    user.user_permissions.add(
        Permission.objects.get(codename="view_product", content_type__app_label="testapp")
    )
    assert client.get(url).status_code == 200
    assert client.get(url + "&kind=bogus").status_code == 400


def test_status_view_queries_do_not_grow_with_objects(client, staff, django_assert_max_num_queries):
    products = [make_product(f"p{i}") for i in range(8)]
    for p in products:
        job_for(p, status=JobStatus.PENDING)
    url = "/admin/testapp/product/removal-status/?kind=cell&pk=" + str(products[0].pk)
    one = count_queries(client, url)
    many = url + "".join(f"&pk={p.pk}" for p in products)
    with django_assert_max_num_queries(one):
        assert len(client.get(many).json()["objects"]) == 8


# ---------------------------------------------------------------------------------- the action


def test_action_page_is_an_admin_form_with_counts_and_thumbnails(client, staff, settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "DAILY_REMOVAL_LIMIT": 10}
    DailyUsage.objects.create(day=budget.today(), requests=3)
    new, done, bare = make_product("new"), make_product("done"), make_product("bare", image=False)
    succeeded(done)  # with the field's default options, which the form starts from
    response = action_post(client, [new, done, bare])
    assert response.status_code == 200
    html = response.content.decode()
    assert "Remove background" in html
    assert 'class="breadcrumbs"' in html and 'href="/admin/testapp/product/"' in html
    for name in ("add_shadow", "semitransparency", "bg_color", "bg_image_url", "force"):
        assert f'name="{name}"' in html
    assert 'value="ffffff"' in html  # the field's default options fill the form
    assert 'type="color"' in html  # the colour picker
    assert html.count('<fieldset class="module aligned') == 3  # Django's own fieldset template
    assert "remove.bg adds it to photos of cars only" in html
    assert "1 image will be sent." in html
    assert "1 skipped: no image." in html
    assert "1 skipped: already done with these options." in html
    assert "Today's budget: 7 of 10 background removals left." in html
    assert "new: original" in html and f'src="{new.photo.url}"' in html
    assert not RemovalJob.objects.exclude(status=JobStatus.SUCCEEDED).exists()


def test_update_counts_uses_the_options_entered(client, staff):
    done = make_product("done")
    succeeded(done)
    html = action_post(
        client, [done], _recount="1", field="photo", bg_color="0000ff", semitransparency="on"
    ).content.decode()
    assert "1 image will be sent." in html and "already done" not in html
    assert RemovalJob.objects.count() == 1  # nothing sent


def test_action_form_shows_option_errors(client, staff):
    products = [make_product("mug")]
    response = action_post(
        client, products, apply="1", field="photo", bg_color="not-a-colour", semitransparency="on"
    )
    assert response.status_code == 200
    form = response.context["form"]
    assert "bg_color" in form.errors and "hex colour" in form.errors["bg_color"][0]
    # Staff read the form's labels, not the API's option names.
    assert form.errors["bg_color"][0].startswith("Background colour must be")
    assert "Please correct the error below." in response.content.decode()
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
    errors = response.context["form"].non_field_errors()
    assert errors == ["Background colour and Background image URL cannot both be set; choose one."]


def test_action_queues_one_job_per_object_and_says_what_it_skipped(client, staff):
    products = [make_product("mug"), make_product("cup"), make_product("none", image=False)]
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
    messages = messages_of(response)
    assert any(m.startswith("Queued 2 background removals") for m in messages)
    assert "Not sent: 1 no image." in messages


def test_action_skips_images_already_done_with_the_same_options(client, staff):
    done, other = make_product("done"), make_product("other")
    succeeded(done)
    response = action_post(
        client, [done, other], apply="1", field="photo", bg_color="ffffff", semitransparency="on"
    )
    assert response.status_code == 302
    assert RemovalJob.objects.filter(status=JobStatus.QUEUED).get().object_id == str(other.pk)
    assert "Not sent: 1 already done with these options." in messages_of(response)


def test_action_checks_the_change_permission_per_object(client, staff):
    free, locked = make_product("free"), make_product("locked-mug")
    html = action_post(client, [free, locked]).content.decode()
    assert "1 skipped: you may not change it." in html
    response = action_post(client, [free, locked], apply="1", field="photo", semitransparency="on")
    assert [j.object_id for j in RemovalJob.objects.all()] == [str(free.pk)]
    assert "Not sent: 1 you may not change it." in messages_of(response)


def test_action_refuses_more_than_the_budget_left(client, staff, settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "DAILY_REMOVAL_LIMIT": 1}
    products = [make_product("mug"), make_product("cup")]
    response = action_post(client, products, apply="1", field="photo", semitransparency="on")
    assert response.status_code == 200
    assert "Only 1 background removals are left in today&#x27;s budget" in response.content.decode()
    assert not RemovalJob.objects.exists()


def test_budget_spent_while_sending_is_a_clear_admin_message(client, staff, settings, monkeypatch):
    from imagekit_bgremove.admin import pages

    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "DAILY_REMOVAL_LIMIT": 2}
    products = [make_product("mug"), make_product("cup")]
    real = pages.make_plan

    def plan_then_spend(*args, **kwargs):  # another process spends the budget meanwhile
        plan = real(*args, **kwargs)
        DailyUsage.objects.update_or_create(day=budget.today(), defaults={"requests": 1})
        return plan

    monkeypatch.setattr(pages, "make_plan", plan_then_spend)
    response = action_post(client, products, apply="1", field="photo", semitransparency="on")
    assert response.status_code == 302
    messages = messages_of(response)
    assert any("The daily budget of 2 background removals is spent" in m for m in messages)
    assert any("1 image was not sent." in m for m in messages)
    assert RemovalJob.objects.count() == 1


# ---------------------------------------------------------------------------------- change form


def test_change_form_preview_buttons_and_history(client, staff):
    product = make_product("mug")
    first = job_for(
        product,
        status=JobStatus.FAILED,
        error_code="invalid_options",
        error_message="The remove-bg options are invalid: bad. Change the options.",
        options={"bg_color": "zzz"},
    )
    good = succeeded(product, trigger=Trigger.ADMIN, requested_by=staff)
    running = job_for(product, status=JobStatus.PENDING, options={"bg_color": "0000ff"})
    html = client.get(f"{CHANGELIST}{product.pk}/change/").content.decode()
    # The preview: original and the last good cut-out side by side, the new state as a badge.
    assert f'src="{product.photo.url}"' in html and 'src="https://ik.example/mug.png"' in html
    assert "Previous result, shown until the new one is ready." in html
    assert "Background replaced by #ffffff" in html  # not "without background"
    assert "data-ikbg-unfinished" in html and "kind=preview" in html
    # The buttons.
    assert f'href="/admin/testapp/product/{product.pk}/remove-background/"' in html
    assert "data-ikbg-retry-tool hidden" in html  # shown by live.js if the job fails
    # The history, newest first, with who and the error.
    history = html[html.index("Background removal history") :]
    assert (
        history.index(f"#{running.pk}")
        < history.index(f"#{good.pk}")
        < history.index(f"#{first.pk}")
    )
    assert "admin" in history and "Change the options before retrying" in history
    assert "background #0000ff" in history
    # The options for a new image: a collapsed fieldset of its own.
    assert 'name="ikbg_photo_bg_color"' in html and "Background removal options" in html


def test_change_form_of_a_failed_job_shows_retry_and_the_error(client, staff):
    product = make_product("mug")
    job_for(
        product,
        status=JobStatus.FAILED,
        error_code="source_missing",
        error_message="The original is missing.",
    )
    html = client.get(f"{CHANGELIST}{product.pk}/change/").content.decode()
    assert "The original is missing." in html
    assert "upload the image again" in html
    assert f'href="/admin/testapp/product/{product.pk}/remove-background/retry/"' in html
    assert "data-ikbg-retry-tool hidden" not in html


def test_change_page_queries_do_not_grow_with_jobs(client, staff, django_assert_max_num_queries):
    product = make_product("mug")
    succeeded(product)
    url = f"{CHANGELIST}{product.pk}/change/"
    queries = count_queries(client, url)
    for i in range(25):
        job_for(product, status=JobStatus.FAILED, error_message=f"failure {i}", requested_by=staff)
    job_for(product, status=JobStatus.PENDING)
    with django_assert_max_num_queries(queries + 1):  # + the count of all jobs past the first 10
        html = client.get(url).content.decode()
    assert "All 27 jobs" in html


def test_options_at_upload_time_on_the_add_form(client, staff, run_on_commit, dummy_tasks):
    from tests.helpers import make_image

    add = client.get(f"{CHANGELIST}add/").content.decode()
    assert 'name="ikbg_photo_bg_color"' in add and 'value="ffffff"' in add
    with run_on_commit():
        response = client.post(
            f"{CHANGELIST}add/",
            {
                "name": "new",
                "photo": make_image("new.png"),
                "ikbg_photo_bg_color": "0000ff",
                "ikbg_photo_add_shadow": "on",
            },
        )
    assert response.status_code == 302, response.context["adminform"].form.errors
    job = RemovalJob.objects.get()
    assert (job.status, job.trigger) == (JobStatus.QUEUED, Trigger.SAVE)
    assert job.requested_by == staff  # the user who uploaded it
    assert job.options == {
        "add_shadow": True,
        "semitransparency": False,
        "bg_color": "0000ff",
        "bg_image_url": None,
    }


def test_upload_options_are_validated_on_the_form(client, staff):
    from tests.helpers import make_image

    response = client.post(
        f"{CHANGELIST}add/",
        {"name": "new", "photo": make_image("new.png"), "ikbg_photo_bg_color": "nope"},
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "hex colour" in errors["ikbg_photo_bg_color"][0]
    assert "bg_color" not in errors["ikbg_photo_bg_color"][0]
    assert not Product.objects.exists()


def test_changed_options_without_a_new_image_send_nothing_and_say_so(client, staff):
    product = make_product("mug")
    response = client.post(
        f"{CHANGELIST}{product.pk}/change/",
        {"name": "mug", "ikbg_photo_bg_color": "0000ff", "ikbg_photo_semitransparency": "on"},
    )
    assert response.status_code == 302
    assert not RemovalJob.objects.exists()
    assert any("apply to a newly uploaded image only" in m for m in messages_of(response))


def test_view_only_user_gets_no_buttons_and_no_option_fields(client):
    product = make_product("mug")
    job_for(product, status=JobStatus.FAILED)
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(codename="view_product", content_type__app_label="testapp")
    )
    client.force_login(user)
    html = client.get(f"{CHANGELIST}{product.pk}/change/").content.decode()
    assert "remove-background/" not in html and "ikbg_photo_bg_color" not in html
    assert client.get(f"{CHANGELIST}{product.pk}/remove-background/").status_code == 403
    assert client.get(f"{CHANGELIST}{product.pk}/remove-background/retry/").status_code == 403


def test_remove_background_page_of_one_object(client, staff):
    product = make_product("mug")
    url = f"{CHANGELIST}{product.pk}/remove-background/"
    html = client.get(url).content.decode()
    assert "1 image will be sent." in html
    assert f'href="/admin/testapp/product/{product.pk}/change/">mug</a>' in html  # breadcrumb
    response = client.post(url, {"apply": "1", "field": "photo", "bg_color": "red"})
    assert response.status_code == 302 and response["Location"].endswith(f"/{product.pk}/change/")
    job = RemovalJob.objects.get()
    assert (job.options["bg_color"], job.trigger, job.requested_by) == ("red", Trigger.ADMIN, staff)


def test_retry_page_prefills_the_failed_options_and_says_to_change_them(client, staff):
    product = make_product("mug")
    failed = job_for(
        product,
        status=JobStatus.FAILED,
        error_code="removal_failed",
        error_message="ImageKit could not remove the background: bg_color is not supported. "
        "Change the remove-bg options and request the removal again.",
        options={**DEFAULTS, "bg_color": "123456"},
    )
    url = f"{CHANGELIST}{product.pk}/remove-background/retry/"
    html = client.get(url).content.decode()
    assert "Change the options below before retrying" in html
    assert 'value="123456"' in html and 'name="force"' not in html
    response = client.post(url, {"apply": "1", "field": "photo", "bg_color": "white"})
    assert response.status_code == 302
    retry = RemovalJob.objects.get(retry_of=failed)
    assert (retry.trigger, retry.options["bg_color"]) == (Trigger.RETRY, "white")
    assert f"Job #{failed.pk} is being retried as job #{retry.pk}." in messages_of(response)
    # Nothing left to retry: back to the object with a message.
    response = client.get(url)
    assert response.status_code == 302


# ---------------------------------------------------------------------------------- jobs admin


def test_job_admin_is_read_only_and_refuses_a_change_post(client, staff):
    job = job_for(
        make_product("mug"), status=JobStatus.SUCCEEDED, result_url="https://ik.example/x.png"
    )
    url = f"{JOBS}{job.pk}/change/"
    html = client.get(url).content.decode()
    assert 'name="_save"' not in html and 'name="_continue"' not in html
    assert "https://ik.example/x.png" in html  # the preview
    response = client.post(url, {"status": JobStatus.FAILED, "error_message": "hacked"})
    assert response.status_code == 403
    job.refresh_from_db()
    assert (job.status, job.error_message) == (JobStatus.SUCCEEDED, "")
    assert client.get(f"{JOBS}add/").status_code == 403
    assert client.post(f"{JOBS}{job.pk}/delete/", {"post": "yes"}).status_code == 403
    assert RemovalJob.objects.filter(pk=job.pk).exists()


def test_job_list_links_a_failed_job_to_its_retry_and_filters_them_apart(client, staff):
    product = make_product("mug")
    failed = job_for(product, status=JobStatus.FAILED, error_message="boom")
    retry = job_for(product, status=JobStatus.QUEUED, retry_of=failed, trigger=Trigger.RETRY)
    still = job_for(make_product("cup"), status=JobStatus.FAILED, error_message="still broken")
    html = client.get(JOBS).content.decode()
    assert (
        f'href="/admin/imagekit_bgremove/removaljob/{retry.pk}/change/">retried as #{retry.pk}'
        in html
    )
    assert f"retry of #{failed.pk}" in html
    assert "Failed, retried" in html
    assert 'class="ikbg-error-cell" title="still broken"' in html

    def listed(query):
        return sorted(j.pk for j in client.get(f"{JOBS}?{query}").context["cl"].result_list)

    assert listed("status=failed") == [still.pk]
    assert listed("status=retried") == [failed.pk]
    assert listed("status=unfinished") == [retry.pk]


def test_job_list_model_filter_lists_only_models_with_the_field(client, staff):
    job_for(make_product("mug"), status=JobStatus.FAILED)
    html = client.get(JOBS).content.decode()
    filters = html[html.index('id="changelist-filter"') :]
    assert "?model=" in filters and "Products" in filters
    assert "Sessions" not in filters and "log entries" not in filters.lower()
    assert "Permissions" not in filters


def test_job_page_advice_fits_the_error(client, staff):
    job = job_for(
        make_product("mug"),
        status=JobStatus.FAILED,
        error_code="invalid_options",
        error_message="The remove-bg options are invalid: x. Change the options.",
    )
    html = client.get(f"{JOBS}{job.pk}/change/").content.decode()
    assert "Change the options before retrying: the same ones would fail again." in html
    assert "Retry if the problem was temporary" not in html
    assert f'href="/admin/imagekit_bgremove/removaljob/{job.pk}/retry/"' in html


def test_job_admin_retry_page_and_action_need_the_change_permission_on_the_object(client):
    product = make_product("mug")
    job = job_for(product, status=JobStatus.FAILED, error_message="nope")
    user = User.objects.create_user("clerk", password="x", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_removaljob", "change_removaljob"])
    )
    client.force_login(user)
    html = client.get(f"{JOBS}{job.pk}/change/").content.decode()
    assert "/retry/" not in html
    assert client.get(f"{JOBS}{job.pk}/retry/").status_code == 403
    response = client.post(JOBS, {"action": "retry_failed", ACTION_CHECKBOX_NAME: [str(job.pk)]})
    assert not RemovalJob.objects.filter(retry_of=job).exists()  # the action is not offered
    assert "No action selected" in " ".join(messages_of(response)) or response.status_code == 200

    user.user_permissions.add(
        Permission.objects.get(codename="change_product", content_type__app_label="testapp")
    )
    user = User.objects.get(pk=user.pk)  # drop the permission cache
    client.force_login(user)
    locked = job_for(make_product("locked-cup"), status=JobStatus.FAILED)
    response = client.post(
        JOBS, {"action": "retry_failed", ACTION_CHECKBOX_NAME: [str(job.pk), str(locked.pk)]}
    )
    assert response.status_code == 302
    assert RemovalJob.objects.filter(retry_of=job).exists()
    assert not RemovalJob.objects.filter(
        retry_of=locked
    ).exists()  # per object, as the product admin
    assert f"Not retried, because you may not change their objects: #{locked.pk}." in messages_of(
        response
    )


def test_job_admin_retry_page_retries_with_new_options(client, staff):
    job = job_for(make_product("mug"), status=JobStatus.FAILED, options=dict(DEFAULTS))
    url = f"{JOBS}{job.pk}/retry/"
    html = client.get(url).content.decode()
    assert (
        "Retry background removal" in html and 'href="/admin/imagekit_bgremove/removaljob/"' in html
    )
    response = client.post(url, {"apply": "1", "field": "photo", "bg_color": "black"})
    new = RemovalJob.objects.get(retry_of=job)
    assert response.status_code == 302 and new.options["bg_color"] == "black"


def test_job_admin_retry_action_budget_exhausted_is_a_clear_message(client, staff, settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "DAILY_REMOVAL_LIMIT": 1}
    DailyUsage.objects.create(day=budget.today(), requests=1)
    job = job_for(make_product("mug"), status=JobStatus.FAILED)
    other = job_for(make_product("cup"), status=JobStatus.FAILED)
    response = client.post(
        JOBS, {"action": "retry_failed", ACTION_CHECKBOX_NAME: [str(job.pk), str(other.pk)]}
    )
    assert any("daily budget of 1 background removals is spent" in m for m in messages_of(response))
    assert not RemovalJob.objects.filter(retry_of__in=[job, other]).exists()


def test_retry_action_on_one_job_opens_its_options_page(client, staff):
    job = job_for(make_product("mug"), status=JobStatus.FAILED)
    response = client.post(JOBS, {"action": "retry_failed", ACTION_CHECKBOX_NAME: [str(job.pk)]})
    assert response.status_code == 302
    assert response["Location"] == f"{JOBS}{job.pk}/retry/"
    assert not RemovalJob.objects.filter(retry_of=job).exists()


def test_retry_action_leaves_jobs_whose_options_would_fail_again(client, staff):
    doomed = job_for(
        make_product("mug"),
        status=JobStatus.FAILED,
        error_code="invalid_options",
        error_message="The remove-bg options are invalid: x. Change the options.",
    )
    transient = job_for(make_product("cup"), status=JobStatus.FAILED, error_message="timeout")
    response = client.post(
        JOBS,
        {"action": "retry_failed", ACTION_CHECKBOX_NAME: [str(doomed.pk), str(transient.pk)]},
    )
    assert RemovalJob.objects.filter(retry_of=transient).exists()
    assert not RemovalJob.objects.filter(retry_of=doomed).exists()
    warning = next(m for m in messages_of(response) if "would fail again" in m)
    assert f'<a href="{JOBS}{doomed.pk}/retry/">#{doomed.pk}</a>' in warning


def test_job_admin_lists_objects_and_deleted_ones(client, staff):
    product = make_product("mug")
    job_for(product, status=JobStatus.FAILED, error_message="nope", file_id="fid_1")
    gone = job_for(make_product("gone"), status=JobStatus.FAILED)
    Product.objects.filter(name="gone").delete()
    html = client.get(JOBS).content.decode()
    assert f'<a href="/admin/testapp/product/{product.pk}/change/">mug</a>' in html
    assert f"product {gone.object_id} <em>(deleted)</em>" in html
    assert client.get(f"{JOBS}?q=fid_1").context["cl"].result_count == 1


def reconcile_now(client, job):
    # An object tool of the jobs list, POSTed with no job selected.
    assert (
        'action="/admin/imagekit_bgremove/removaljob/reconcile/"'
        in client.get(JOBS).content.decode()
    )
    return client.post(f"{JOBS}reconcile/", follow=True)


def test_reconcile_now_is_a_post_for_those_allowed(client, staff, dummy_tasks):
    assert client.get(f"{JOBS}reconcile/").status_code == 405
    assert '"reconcile_now"' not in client.get(JOBS).content.decode()  # no longer an action
    staff.is_superuser = False
    staff.save()
    assert client.post(f"{JOBS}reconcile/").status_code == 403


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


def test_job_list_queries_do_not_grow_with_rows(client, staff, django_assert_max_num_queries):
    def add(name):
        product = make_product(name)
        failed = job_for(product, status=JobStatus.FAILED, requested_by=staff)
        job_for(product, status=JobStatus.QUEUED, retry_of=failed)

    add("first")
    queries = count_queries(client, JOBS)
    for i in range(6):
        add(f"more{i}")
    with django_assert_max_num_queries(queries):
        response = client.get(JOBS)
    html = response.content.decode()
    assert len(re.findall(r'href="/admin/testapp/product/\d+/change/"', html)) == 14


def test_job_page_queries_do_not_depend_on_other_jobs(client, staff, django_assert_max_num_queries):
    product = make_product("mug")
    job = job_for(product, status=JobStatus.FAILED, error_details={"message": "x"})
    url = f"{JOBS}{job.pk}/change/"
    queries = count_queries(client, url)
    for _ in range(10):
        job_for(product, status=JobStatus.FAILED)
    with django_assert_max_num_queries(queries):
        client.get(url)


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
    url = f"/admin/imagekit_bgremove/webhookdelivery/{delivery.pk}/change/"
    response = client.get(url)
    assert response.status_code == 200
    assert (
        "ImageKit" in response.content.decode() and 'name="_save"' not in response.content.decode()
    )
    assert client.post(url, {"body": "x"}).status_code == 403
    assert client.get("/admin/imagekit_bgremove/webhookdelivery/add/").status_code == 403


# ---------------------------------------------------------------------------------- accessibility


def test_every_image_has_alt_text_and_every_badge_has_text(client, staff):
    mug, cup = make_product("mug"), make_product("cup")
    succeeded(mug)
    job_for(cup, status=JobStatus.FAILED, error_message="nope")
    pages = [
        CHANGELIST,
        f"{CHANGELIST}{mug.pk}/change/",
        f"{CHANGELIST}{cup.pk}/change/",
        f"{CHANGELIST}{mug.pk}/remove-background/",
        f"{CHANGELIST}{cup.pk}/remove-background/retry/",
        JOBS,
        f"{JOBS}{RemovalJob.objects.first().pk}/change/",
    ]
    for url in pages:
        html = client.get(url).content.decode()
        for img in re.findall(r"<img\b[^>]*>", html):
            assert re.search(r'\salt="[^"]+"', img), (url, img)
        for text in re.findall(r'<span class="ikbg-badge[^"]*"[^>]*>([^<]*)<', html):
            assert text.strip(), url


def test_badge_colours_keep_white_text_readable():
    """WCAG AA for small text: 4.5:1 between each badge colour and its white text."""
    from pathlib import Path

    import imagekit_bgremove

    css = (
        Path(imagekit_bgremove.__file__).parent / "static/imagekit_bgremove/admin/ikbg.css"
    ).read_text()
    colours = re.findall(
        r"\.ikbg-s-[a-z-]+(?:, \.ikbg-s-[a-z-]+)* \{ background: (#[0-9a-f]{6}); \}", css
    )
    assert len(colours) >= 7

    def luminance(hex_colour: str) -> float:
        channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    for colour in colours:
        assert (1.05) / (luminance(colour) + 0.05) >= 4.5, colour


def test_status_json_is_json(client, staff):
    response = client.get("/admin/testapp/product/removal-status/")
    assert json.loads(response.content) == {"objects": {}, "unfinished": 0}


def test_delivery_page_shows_the_headers_once(client, staff):
    delivery = WebhookDelivery.objects.create(
        verdict=DeliveryVerdict.ACCEPTED, status_code=200, body="{}", headers={"x-test": "1"}
    )
    html = client.get(f"/admin/imagekit_bgremove/webhookdelivery/{delivery.pk}/change/")
    html = html.content.decode()
    assert len(re.findall(r"<label>Headers:</label>", html, re.IGNORECASE)) == 1
    assert "<code>1</code>" in html


def test_cancel_a_running_job_from_the_object_page_and_the_job_page(client, staff):
    product = make_product("mug")
    job = job_for(product, status=JobStatus.PENDING)
    change = f"{CHANGELIST}{product.pk}/change/"
    html = client.get(change).content.decode()
    cancel = f"{JOBS}{job.pk}/cancel/"
    assert f'action="{cancel}"' in html
    assert client.get(cancel).status_code == 405
    response = client.post(cancel, {"next": change})
    assert response.status_code == 302 and response["Location"] == change
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.error_message == "Cancelled by admin."
    assert f'action="{cancel}"' not in client.get(change).content.decode()
    assert f'action="{cancel}"' not in client.get(f"{JOBS}{job.pk}/change/").content.decode()
    # Too late now: said so, nothing changes; and a foreign "next" is not followed.
    response = client.post(cancel, {"next": "https://evil.example/"}, follow=True)
    assert response.redirect_chain[-1][0] == f"{JOBS}{job.pk}/change/"
    assert any("only a queued, waiting or pending" in m for m in messages_of(response))

    queued = job_for(make_product("cup"), status=JobStatus.QUEUED)
    assert f"{JOBS}{queued.pk}/cancel/" in client.get(f"{JOBS}{queued.pk}/change/").content.decode()


def test_cancel_needs_the_change_permission_on_the_object(client):
    job = job_for(make_product("mug"), status=JobStatus.QUEUED)
    user = User.objects.create_user("clerk", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename="view_removaljob"))
    client.force_login(user)
    assert "/cancel/" not in client.get(f"{JOBS}{job.pk}/change/").content.decode()
    assert client.post(f"{JOBS}{job.pk}/cancel/").status_code == 403
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED


def test_cancel_with_an_id_that_is_no_number_is_not_found(admin_client):
    response = admin_client.post("/admin/imagekit_bgremove/removaljob/abc/cancel/")
    assert response.status_code in (403, 404)
