"""The admin as staff use it: headless Chromium against a live server, with the emulator calling
back that server (``live_emulator``). Each test saves its screenshots under
var/screenshots/<test name>/ and checks the pages it visits for what Django's own admin passes
(alt text, labels, headings, names of links and buttons, unique ids) plus the contrast of our
badges."""

from __future__ import annotations

import io
import mimetypes
import re

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404
from django.urls import include, path, re_path

from imagekit_bgremove.models import JobStatus, RemovalJob, WebhookDelivery
from tests.conftest import set_faults, wait_for
from tests.testapp.models import Product

from .test_admin import ProductAdmin

site = admin.AdminSite(name="browser_admin")
site.register(Product, ProductAdmin)
site.register(RemovalJob, type(admin.site._registry[RemovalJob]))
site.register(WebhookDelivery, type(admin.site._registry[WebhookDelivery]))


def serve_media(request, name):
    """The tests' InMemoryStorage, served to the browser."""
    if not default_storage.exists(name):
        raise Http404(name)
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse(default_storage.open(name, "rb"), content_type=content_type)


urlpatterns = [
    path("admin/", site.urls),
    path("imagekit-bgremove/", include("imagekit_bgremove.urls")),
    re_path(r"^media/(?P<name>.+)$", serve_media),
]

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls(__name__)]

PASSWORD = "browser-test-pw"
SETTLE = 45_000  # ms: the emulator's work, its callback and the copy of the result
EXPECT = {"timeout": SETTLE}


def product_photo(seed: int = 0, size: tuple[int, int] = (360, 270)) -> bytes:
    """A "product" on a plain studio background: what the emulator's segmentation handles well."""
    from PIL import Image, ImageDraw

    width, height = size
    colours = [(200, 40, 50), (30, 110, 190), (40, 150, 80), (230, 150, 20)]
    colour = colours[seed % len(colours)]
    image = Image.new("RGB", size, (243, 243, 240))
    draw = ImageDraw.Draw(image)
    left, top = width * 0.3, height * 0.22
    right, bottom = width * 0.62, height * 0.8
    draw.rounded_rectangle((left, top, right, bottom), radius=18, fill=colour)
    draw.ellipse((right - 14, height * 0.35, right + 46, height * 0.62), outline=colour, width=12)
    draw.rectangle((left + 12, top + 20, right - 12, top + 40), fill=(250, 250, 250))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def new_product(name: str, seed: int = 0, *, save: bool = False) -> Product:
    """With ``save`` the save requests the removal (and the emulator does it); without, the
    product is written without signals, so no job exists yet."""
    product = Product(name=name)
    product.photo.save(f"{name}.png", ContentFile(product_photo(seed)), save=False)
    if save:
        product.save()
        return product
    [product] = Product.objects.bulk_create([product])
    return product


@pytest.fixture
def media(settings):
    settings.MEDIA_URL = "/media/"


@pytest.fixture
def staff_page(page, live_server, live_emulator, media):
    User.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r".*/admin/$"))
    page.base = live_server.url
    return page


AUDIT = """
() => {
  const problems = [];
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const name = (el) => (el.getAttribute("aria-label") || el.textContent || el.value ||
                        el.getAttribute("title") || "").trim();
  document.querySelectorAll("img").forEach((img) => {
    if (!img.hasAttribute("alt")) problems.push("img without alt: " + img.src);
    else if (!img.alt.trim() && img.getAttribute("role") !== "presentation")
      problems.push("img with empty alt: " + img.src);
  });
  document.querySelectorAll("input, select, textarea").forEach((el) => {
    if (["hidden", "submit", "button", "reset"].includes(el.type) || !visible(el)) return;
    const labelled = (el.labels && el.labels.length) || el.getAttribute("aria-label") ||
                     el.getAttribute("aria-labelledby") || el.getAttribute("title") ||
                     (el.closest("fieldset") &&
                      el.closest("fieldset").querySelector(":scope > legend"));
    if (!labelled) problems.push("control without label: " + (el.name || el.id || el.type));
  });
  const headings = [...document.querySelectorAll("h1, h2, h3, h4, h5, h6")].filter(visible);
  if (document.querySelectorAll("h1").length !== 1) problems.push("not exactly one h1");
  let last = 0;
  headings.forEach((h) => {
    const level = Number(h.tagName[1]);
    if (last && level > last + 1) problems.push("heading skips a level: " + h.textContent.trim());
    if (!h.textContent.trim()) problems.push("empty heading");
    last = level;
  });
  document.querySelectorAll("a[href], button, input[type=submit]").forEach((el) => {
    if (visible(el) && !name(el) && !el.querySelector("img[alt]:not([alt=''])"))
      problems.push("link or button without a name: " + el.outerHTML.slice(0, 80));
  });
  const ids = {};
  document.querySelectorAll("[id]").forEach((el) => { ids[el.id] = (ids[el.id] || 0) + 1; });
  Object.entries(ids).forEach(([id, n]) => { if (n > 1) problems.push("duplicate id " + id); });
  const rgb = (s) => s.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number);
  const lum = (c) => {
    const [r, g, b] = c.map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  document.querySelectorAll(".ikbg-badge").forEach((badge) => {
    if (!badge.textContent.trim()) problems.push("badge without text");
    const style = getComputedStyle(badge);
    const [a, b] = [lum(rgb(style.color)), lum(rgb(style.backgroundColor))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) problems.push("badge contrast " + ratio.toFixed(2) + ": " + badge.textContent);
  });
  return problems;
}
"""


def audit(page) -> None:
    problems = page.evaluate(AUDIT)
    assert problems == [], f"{page.url}: {problems}"


def badges(page, selector: str = ".ikbg-badge") -> list[str]:
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def marked(page) -> None:
    """Mark the document: the mark survives only if the page is never reloaded."""
    page.evaluate("window.__ikbgNoReload = true")


def still_marked(page) -> bool:
    return page.evaluate("window.__ikbgNoReload === true")


# ------------------------------------------------------------------------------------------ tests


def test_action_with_options_on_three_products_to_success(staff_page):
    page = staff_page
    products = [new_product(name, seed) for seed, name in enumerate(["Mug", "Kettle", "Jar"])]
    page.goto(f"{page.base}/admin/testapp/product/")
    audit(page)
    page.shots.take("list-before")
    for product in products:
        page.check(f"input.action-select[value='{product.pk}']")
    page.select_option("select[name=action]", "remove_background_action")
    page.click("button[name=index]")
    page.wait_for_selector("text=What will be sent")
    assert page.locator(".breadcrumbs").first.is_visible()
    assert "3 images will be sent." in page.inner_text(".ikbg-summary")
    audit(page)
    page.shots.take("options-page")

    page.fill("input[name=bg_color]", "#cfe8ff")
    assert page.input_value("input[type=color]") == "#cfe8ff"  # the picker follows the box
    page.check("input[name=add_shadow]")
    page.click("input[name=_recount]")
    assert "3 images will be sent." in page.inner_text(".ikbg-summary")
    page.shots.take("options-filled")
    page.click("input[name=apply]")
    page.wait_for_url(re.compile(r".*/admin/testapp/product/$"))
    assert "Queued 3 background removals" in page.inner_text(".messagelist")
    marked(page)
    page.shots.take("queued")

    page.wait_for_function(
        "document.querySelectorAll('.ikbg-s-succeeded').length === 3", timeout=SETTLE
    )
    assert still_marked(page)
    assert page.locator("img.ikbg-checker").count() == 3
    jobs = RemovalJob.objects.order_by("pk")
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 3
    assert all(j.options["bg_color"] == "cfe8ff" and j.options["add_shadow"] for j in jobs)
    audit(page)
    page.shots.take("succeeded")
    assert page.console_errors == []


def test_upload_with_options_on_the_add_form_to_success(staff_page):
    page = staff_page
    page.goto(f"{page.base}/admin/testapp/product/add/")
    audit(page)
    page.fill("input[name=name]", "Teapot")
    page.set_input_files(
        "input[name=photo]",
        files=[{"name": "teapot.png", "mimeType": "image/png", "buffer": product_photo(3)}],
    )
    page.fill("input[name=ikbg_photo_bg_color]", "")
    page.locator("input[type=color]").fill("#ffd700")  # the picker fills the box
    assert page.input_value("input[name=ikbg_photo_bg_color]") == "ffd700"
    page.shots.take("add-form")
    page.click("input[name=_continue]")
    page.wait_for_selector(".ikbg-preview")
    marked(page)
    page.shots.take("saved")
    page.wait_for_selector(".ikbg-preview .ikbg-s-succeeded", **EXPECT)
    assert still_marked(page)  # the preview updated in place
    preview = page.inner_text(".ikbg-preview")
    assert "Background replaced by #ffd700" in preview
    assert page.locator(".ikbg-preview img").count() == 2  # original and cut-out side by side
    job = RemovalJob.objects.get()
    assert (job.status, job.options["bg_color"]) == (JobStatus.SUCCEEDED, "ffd700")
    page.reload()
    assert "#" + str(job.pk) in page.inner_text("#ikbg-history-group")
    audit(page)
    page.shots.take("change-form-succeeded")
    assert page.console_errors == []


def test_failure_then_retry_from_the_object_page(staff_page, live_emulator):
    page = staff_page
    set_faults(live_emulator, extension_failure_rate=1.0)
    product = new_product("Vase", 1, save=True)
    page.goto(f"{page.base}/admin/testapp/product/{product.pk}/change/")
    page.wait_for_selector(".ikbg-preview .ikbg-s-failed", **EXPECT)
    retry_tool = page.locator("[data-ikbg-retry-tool]")
    assert retry_tool.is_visible()  # shown in place once the job failed
    assert "could not remove the background" in page.inner_text(".ikbg-preview")
    page.shots.take("failed")

    set_faults(live_emulator)  # ImageKit works again
    retry_tool.locator("a").click()
    page.wait_for_selector("text=Retry background removal")
    assert "could not remove the background" in page.inner_text("#content-main")
    audit(page)
    page.shots.take("retry-page")
    page.click("input[name=apply]")
    page.wait_for_url(re.compile(rf".*/product/{product.pk}/change/$"))
    assert "is being retried as job" in page.inner_text(".messagelist")
    page.wait_for_selector(".ikbg-preview .ikbg-s-succeeded", **EXPECT)
    failed, retried = RemovalJob.objects.order_by("pk")
    assert (failed.status, retried.status, retried.retry_of_id) == (
        JobStatus.FAILED,
        JobStatus.SUCCEEDED,
        failed.pk,
    )
    page.reload()
    history = page.inner_text("#ikbg-history-group")
    assert "Failed, retried" in history and "Succeeded" in history
    audit(page)
    page.shots.take("retried")


def test_list_updates_live_without_reload(staff_page, live_emulator):
    page = staff_page
    set_faults(live_emulator, delay_seconds=[3.0, 3.0])  # the callback comes 3 s late
    done = new_product("Done", 2, save=True)
    wait_for(lambda: RemovalJob.objects.filter(status=JobStatus.SUCCEEDED).exists(), timeout=30)
    # A second job for the same image: its last good cut-out stays while the new one runs.
    page.goto(f"{page.base}/admin/testapp/product/{done.pk}/remove-background/")
    page.fill("input[name=bg_color]", "lightgreen")
    page.click("input[name=apply]")
    fresh = new_product("Fresh", 0, save=True)
    page.goto(f"{page.base}/admin/testapp/product/")
    marked(page)
    rows = {
        p.pk: page.locator(f"tr:has(a[href$='/product/{p.pk}/change/'])") for p in (done, fresh)
    }
    assert rows[done.pk].locator("img.ikbg-previous").count() == 1  # the previous cut-out
    assert rows[fresh.pk].locator(".ikbg-s-succeeded").count() == 0
    page.shots.take("while-running")
    page.wait_for_function(
        "document.querySelectorAll('.ikbg-s-succeeded').length === 2", timeout=SETTLE
    )
    assert still_marked(page)
    assert rows[done.pk].locator("img.ikbg-previous").count() == 0
    assert "lightgreen" in rows[done.pk].locator("img.ikbg-checker").get_attribute("alt")
    # Polling stopped: nothing is left unfinished, so no request follows.
    requests = []
    page.on("request", lambda r: requests.append(r.url) if "removal-status" in r.url else None)
    page.wait_for_timeout(4500)
    assert requests == []
    audit(page)
    page.shots.take("after")
    assert page.console_errors == []


def test_jobs_admin_refuses_a_change_post(staff_page):
    page = staff_page
    product = new_product("Lamp", 1, save=True)
    job = wait_for(
        lambda: RemovalJob.objects.filter(status=JobStatus.SUCCEEDED).first(), timeout=30
    )
    assert job is not None
    RemovalJob.objects.create(
        content_type=job.content_type,
        object_id=job.object_id,
        field_name="photo",
        status=JobStatus.FAILED,
        error_code="removal_failed",
        error_message="ImageKit could not remove the background: the image has no clear "
        "subject. Try another image, or retry if the problem was temporary.",
    )
    page.goto(f"{page.base}/admin/imagekit_bgremove/removaljob/")
    # Compact: the whole table, error column included, fits the 1280 px window.
    fits = page.evaluate(
        "() => { const t = document.querySelector('#result_list');"
        " return t.getBoundingClientRect().right <= window.innerWidth; }"
    )
    assert fits
    assert page.locator("th.column-error_column").is_visible()
    audit(page)
    page.shots.take("jobs-list")

    page.goto(f"{page.base}/admin/imagekit_bgremove/removaljob/{job.pk}/change/")
    assert page.locator("input[name=_save]").count() == 0
    assert page.locator(".ikbg-pair img").count() == 2  # the preview
    audit(page)
    page.shots.take("job-page")
    status = page.evaluate(
        """async () => {
            const token = document.querySelector("[name=csrfmiddlewaretoken]").value;
            const body = new URLSearchParams({csrfmiddlewaretoken: token, status: "failed",
                                              error_message: "changed by hand", _save: "Save"});
            const response = await fetch(location.href, {method: "POST", body});
            return response.status;
        }"""
    )
    assert status == 403
    job.refresh_from_db()
    assert (job.status, job.error_message) == (JobStatus.SUCCEEDED, "")
    assert [e for e in page.console_errors if "403" not in e] == []
    assert product.pk


def test_object_page_history_follows_the_preview_live(staff_page, live_emulator):
    page = staff_page
    set_faults(live_emulator, delay_seconds=[3.0, 3.0])  # the callback comes 3 s late
    product = new_product("Bowl", 3, save=True)
    page.goto(f"{page.base}/admin/testapp/product/{product.pk}/change/")
    marked(page)
    history = page.locator("#ikbg-history-group tbody tr").first
    assert "Succeeded" not in history.inner_text()
    # The admin's table text size (13px), not the 16px of Django's inline tables.
    assert history.locator("td").first.evaluate("td => getComputedStyle(td).fontSize") == "13px"
    page.shots.take("running")
    page.wait_for_selector(".ikbg-preview .ikbg-s-succeeded", **EXPECT)
    page.wait_for_selector("#ikbg-history-group tbody tr .ikbg-s-succeeded", timeout=5_000)
    assert still_marked(page)
    assert page.locator("#ikbg-history-group .ikbg-s-succeeded").count() == 1
    audit(page)
    page.shots.take("succeeded")
    assert page.console_errors == []


def test_a_long_error_stays_on_the_page(staff_page):
    page = staff_page
    product = new_product("Crate", 1)
    long_word = "https://ik.example/" + "x" * 600
    job = RemovalJob.objects.create(
        content_type=ContentType.objects.get_for_model(Product),
        object_id=str(product.pk),
        field_name="photo",
        status=JobStatus.FAILED,
        error_code="remove_bg_failed",
        error_message=f"remove.bg refused {long_word}",
        error_details={"message": long_word, "nested": {"help": long_word}},
    )
    fits = "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    for url in (
        f"/admin/imagekit_bgremove/removaljob/{job.pk}/change/",
        f"/admin/testapp/product/{product.pk}/change/",
    ):
        page.goto(page.base + url)
        assert page.evaluate(fits), url
        page.shots.take(url.split("/")[3])


def test_reconcile_now_is_an_object_tool(staff_page):
    page = staff_page
    page.goto(f"{page.base}/admin/imagekit_bgremove/removaljob/")
    tool = page.locator(".object-tools button", has_text="Reconcile now")
    # Drawn like the admin's own object tools (a pill), and needs no row ticked.
    assert tool.evaluate("b => getComputedStyle(b).borderRadius") == "15px"
    assert page.locator("select[name=action] option", has_text="Reconcile").count() == 0
    page.shots.take("jobs-list")
    tool.click()
    page.wait_for_selector(".messagelist")
    assert "Reconcil" in page.inner_text(".messagelist")
    audit(page)
    page.shots.take("reconciled")


def test_retry_action_shows_the_options_page_with_labelled_errors(staff_page):
    page = staff_page
    product = new_product("Jug", 2)
    job = RemovalJob.objects.create(
        content_type=ContentType.objects.get_for_model(Product),
        object_id=str(product.pk),
        field_name="photo",
        status=JobStatus.FAILED,
        error_code="invalid_options",
        error_message="The remove-bg options are invalid: x. Change the options.",
    )
    page.goto(f"{page.base}/admin/imagekit_bgremove/removaljob/")
    page.check(f"input[name=_selected_action][value='{job.pk}']")
    page.select_option("select[name=action]", "retry_failed")
    page.click("button[name=index]")
    page.wait_for_url(re.compile(rf".*/removaljob/{job.pk}/retry/$"))
    assert "Change the options" in page.inner_text("#content-main")
    page.fill("input[name=bg_color]", "white")
    page.fill("input[name=bg_image_url]", "https://example.com/bg.jpg")
    page.click("input[name=apply]")
    errors = page.inner_text("#content-main ul.errorlist")
    assert "Background colour and Background image URL cannot both be set" in errors
    assert "bg_color" not in errors
    audit(page)
    page.shots.take("options-error")
    assert not RemovalJob.objects.filter(retry_of=job).exists()


def test_cancel_a_pending_job_from_the_object_page(staff_page, live_emulator):
    page = staff_page
    set_faults(live_emulator, delay_seconds=[20.0, 20.0])  # ImageKit's answer is slow to come
    product = new_product("Tray", 1, save=True)
    wait_for(lambda: RemovalJob.objects.filter(status=JobStatus.PENDING).exists(), timeout=30)
    page.goto(f"{page.base}/admin/testapp/product/{product.pk}/change/")
    page.shots.take("pending")
    page.click("[data-ikbg-cancel-tool] button")
    page.wait_for_url(re.compile(rf".*/product/{product.pk}/change/$"))
    assert "is cancelled" in page.inner_text(".messagelist")
    assert "Cancelled" in page.inner_text(".ikbg-preview")
    assert "Cancelled" in page.inner_text("#ikbg-history-group")
    assert page.locator("[data-ikbg-cancel-tool]").count() == 0
    assert RemovalJob.objects.get().status == JobStatus.CANCELLED
    audit(page)
    page.shots.take("cancelled")
