"""The example project's demo page in headless Chromium: choose an image and options, upload it
through the Product API, watch the status change live (the emulator calls back this test's live
server), and see before and after side by side. Screenshots: var/screenshots/<test name>/.

This module is its URLconf: the example project's, plus the media it stores (in memory here)."""

from __future__ import annotations

import mimetypes
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404
from django.test import Client
from django.urls import re_path

from example_project.catalogue.models import Product
from example_project.urls import urlpatterns as example_urlpatterns
from imagekit_bgremove.models import JobStatus

SAMPLES = Path(__file__).resolve().parent.parent / "example_project" / "sample_images"


def media(request, path: str):
    if not default_storage.exists(path):
        raise Http404(path)
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return FileResponse(default_storage.open(path, "rb"), content_type=content_type)


urlpatterns = [*example_urlpatterns, re_path(r"^media/(?P<path>.+)$", media)]

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls(__name__)]


@pytest.fixture
def signed_in(page, live_server, live_emulator, settings):
    """The page, signed in as a superuser, with media served under /media/."""
    settings.MEDIA_URL = "/media/"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = User.objects.create_superuser("demo", password="demo-pw")
    client = Client()
    client.force_login(user)
    page.context.add_cookies(
        [
            {
                "name": "sessionid",
                "value": client.cookies["sessionid"].value,
                "url": live_server.url,
            }
        ]
    )
    page.emulator = live_emulator
    return page


def wait_until(page, expression: str, timeout: float = 15.0) -> None:
    """Poll ``expression`` from outside the page: Playwright's wait_for_function evaluates its
    predicate with eval inside the page, which the demo's CSP (rightly) refuses."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)


def upload_and_watch(page, live_server, *, image: str, name: str, colour: str | None = None):
    """Drive the page from choosing an image to the cut-out; returns the statuses seen."""
    seen: list[int] = []
    page.on(
        "response",
        lambda r: seen.append(r.status) if "/api/removals/" in r.url else None,
    )
    page.goto(f"{live_server.url}/demo/")
    page.wait_for_selector("#demo[data-ready='true']")
    page.set_input_files("input[name=photo]", str(SAMPLES / image))
    wait_until(page, "document.getElementById('before').naturalWidth > 0")
    page.fill("input[name=name]", name)
    if colour:
        page.check("input[name=background][value=color]")
        page.fill("input[name=bg_color]", colour)
    page.shots.take("chosen")
    page.click("#upload-button")
    page.wait_for_selector("#status:not([data-status='idle']):not([data-status='uploading'])")
    page.shots.take("watching")
    page.wait_for_selector("#status[data-status='succeeded']", timeout=60_000)
    wait_until(
        page,
        "(() => { const img = document.getElementById('after');"
        " return !img.hidden && img.complete && img.naturalWidth > 0; })()",
    )
    return seen


def test_upload_watch_and_compare(signed_in, live_server):
    page = signed_in
    seen = upload_and_watch(page, live_server, image="synthetic_product_white.jpg", name="Gadget")
    page.shots.take("succeeded")

    # The status went through its steps live, and the page says so.
    timeline = page.locator("#timeline li").all_inner_texts()
    assert len(timeline) >= 3, timeline  # uploading, at least one step, succeeded
    assert "Succeeded" in timeline[-1]
    assert page.locator("#status").inner_text() == "Succeeded"
    assert 200 in seen and all(status in (200, 304) for status in seen), seen

    # Before and after, side by side, the cut-out being the stored copy of the result.
    product = Product.objects.get(name="Gadget")
    job = product.photo.removal
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    after = page.locator("#after")
    assert after.is_visible() and page.locator("#before").is_visible()
    assert after.get_attribute("src").endswith(job.result_name)
    box_before = page.locator("#before").bounding_box()
    box_after = after.bounding_box()
    assert abs(box_before["width"] - box_after["width"]) < 2
    assert abs(box_before["height"] - box_after["height"]) < 2

    # The slider moves the boundary between them.
    page.locator("#slider").fill("20")
    position = page.evaluate(
        "getComputedStyle(document.getElementById('compare')).getPropertyValue('--pos')"
    )
    assert position.strip() == "20%"
    page.shots.take("slider-at-20")
    assert page.console_errors == []


def test_on_a_phone_with_a_coloured_background(signed_in, live_server):
    page = signed_in
    page.set_viewport_size({"width": 390, "height": 844})
    upload_and_watch(page, live_server, image="coffee.jpg", name="Cup", colour="#81d4fa")
    page.locator("#compare-panel").scroll_into_view_if_needed()
    page.shots.take("phone-succeeded")
    job = Product.objects.get(name="Cup").photo.removal
    assert job.options["bg_color"] == "81d4fa"
    # Nothing wider than the screen; the panels are stacked.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    upload_box = page.locator("#upload-panel").bounding_box()
    compare_box = page.locator("#compare-panel").bounding_box()
    assert compare_box["y"] > upload_box["y"] + upload_box["height"] - 1
    assert page.console_errors == []


def test_a_refused_upload_shows_the_errors(signed_in, live_server):
    page = signed_in
    Product.objects.create(name="Taken")
    page.goto(f"{live_server.url}/demo/")
    page.wait_for_selector("#demo[data-ready='true']")
    page.set_input_files("input[name=photo]", str(SAMPLES / "coffee.jpg"))
    page.fill("input[name=name]", "Taken")
    page.check("input[name=background][value=image]")
    page.fill("input[name=bg_image_url]", "not a url")
    page.click("#upload-button")
    page.wait_for_selector("#form-errors:not([hidden])")
    errors = page.locator("#form-errors").inner_text()
    page.shots.take("refused")
    assert "name" in errors and "bg_image_url" in errors
    assert Product.objects.filter(name="Taken").count() == 1
    # The refusal itself is the page's only "error": a 400 it shows to the user.
    assert [e for e in page.console_errors if "HTTP 400" not in e] == []
