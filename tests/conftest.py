"""Shared fixtures.

Sections: test images · the ImageKit emulator · jobs and tasks · (result side: webhooks, API).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

# ------------------------------------------------------------------------------ test images


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (48, 32), *, seed: int = 0) -> bytes:
    """A small, valid image: a coloured subject on a white studio background. ``seed`` varies
    the content so that two images are not byte-identical."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    shade = (seed * 37) % 200
    draw.rectangle(
        (width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(200, shade, 40)
    )
    draw.point((seed % width, 0), fill=(250, 250, 250 - seed % 5))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_image(
    name: str = "photo.png",
    fmt: str | None = None,
    size: tuple[int, int] = (48, 32),
    *,
    seed: int = 0,
) -> SimpleUploadedFile:
    """An uploaded image file, ready to assign to an ImageField."""
    fmt = fmt or ("JPEG" if name.lower().endswith((".jpg", ".jpeg")) else "PNG")
    content_type = "image/jpeg" if fmt == "JPEG" else "image/png"
    return SimpleUploadedFile(name, image_bytes(fmt, size, seed=seed), content_type=content_type)


@pytest.fixture
def image_factory() -> Callable[..., SimpleUploadedFile]:
    counter = iter(range(1, 1_000_000))

    def factory(name: str = "photo.png", **kwargs: Any) -> SimpleUploadedFile:
        kwargs.setdefault("seed", next(counter))
        return make_image(name, **kwargs)

    return factory


# ------------------------------------------------------------------------------ the emulator


def emulator_settings(emulator: Any, **extra: Any) -> dict[str, Any]:
    from django.conf import settings

    return {
        **getattr(settings, "IMAGEKIT_BGREMOVE", {}),
        "PRIVATE_KEY": emulator.private_key,
        "UPLOAD_BASE_URL": emulator.url,
        "API_BASE_URL": emulator.url,
        "URL_ENDPOINT": emulator.url_endpoint,
        "WEBHOOK_SECRETS": list(emulator.webhook_secrets),
        "MAX_RETRIES": 0,
        "TASK_RETRY_DELAY": 0,
        **extra,
    }


def set_faults(emulator: Any, **faults: Any) -> None:
    """Replace the emulator's faults (knobs not given go back to "no fault")."""
    emulator.faults = faults


@pytest.fixture(scope="session")
def _emulator_server() -> Iterator[Any]:
    """One emulator for the session; each test gets it reset (``emulator``/``live_emulator``)."""
    from imagekit_emulator.testing import running_emulator

    with running_emulator() as server:
        yield server


def _reset(server: Any) -> None:
    server.faults = {"lost_rate": 1.0}
    server.wait_idle(10)
    server.reset()


@pytest.fixture
def emulator(_emulator_server: Any, settings: Any) -> Iterator[Any]:
    """A clean emulator for this test, with ``settings.IMAGEKIT_BGREMOVE`` pointed at it.

    Callbacks are not delivered here (``lost_rate=1``: they are still recorded in the emulator's
    state, payload included); use ``live_emulator`` for the full loop over HTTP."""
    _reset(_emulator_server)
    set_faults(_emulator_server, lost_rate=1.0)
    settings.IMAGEKIT_BGREMOVE = emulator_settings(_emulator_server)
    yield _emulator_server
    _reset(_emulator_server)


@pytest.fixture
def live_emulator(_emulator_server: Any, settings: Any, live_server: Any) -> Iterator[Any]:
    """The emulator delivering its callbacks to this test's ``live_server``."""
    _reset(_emulator_server)
    _emulator_server.faults = {}
    settings.IMAGEKIT_BGREMOVE = emulator_settings(
        _emulator_server, WEBHOOK_BASE_URL=live_server.url
    )
    yield _emulator_server
    _reset(_emulator_server)


def uploads(emulator: Any) -> list[dict[str, Any]]:
    """Every upload the emulator stored (ground truth): one version per upload, an overwrite of
    the same file name included."""
    return [
        {**version, "fileId": record["fileId"], "filePath": record["filePath"]}
        for record in emulator.state()["files"]
        for version in record["versions"]
        if version["source"] in ("upload", "overwrite")
    ]


def emulator_jobs(emulator: Any) -> list[dict[str, Any]]:
    return emulator.state()["jobs"]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# ------------------------------------------------------------------------------ the fake ImageKit


@pytest.fixture
def imagekit() -> Iterator[Any]:
    """The in-memory fake ImageKit (imagekit_bgremove.testing) in place of the client: for
    tests of the app's own logic, no server involved."""
    from imagekit_bgremove.testing import FakeImageKit

    with FakeImageKit() as fake:
        yield fake


# ------------------------------------------------------------------------------ jobs and tasks


@pytest.fixture
def run_on_commit(django_capture_on_commit_callbacks: Any) -> Callable[..., Any]:
    """``with run_on_commit(): ...`` runs the on-commit callbacks (and the ImmediateBackend
    tasks they enqueue) at the end of the block, as a real commit would."""

    def runner():
        return django_capture_on_commit_callbacks(execute=True)

    return runner


def task_backend(name: str) -> str:
    """The dotted path of a built-in task backend: ``task_backend("dummy.DummyBackend")``."""
    try:
        import django.tasks  # noqa: F401

        return f"django.tasks.backends.{name}"
    except ImportError:  # Django 5.2 + backport
        return f"django_tasks.backends.{name}"


@pytest.fixture
def dummy_tasks(settings: Any) -> None:
    """Tasks are recorded, not run (Django's DummyBackend)."""
    settings.TASKS = {"default": {"BACKEND": task_backend("dummy.DummyBackend")}}


# ------------------------------------------------------------------------------ result side
# (webhook view, API and admin fixtures go here)


# ------------------------------------------------------------------------------ the browser

CHROMIUM = "/usr/bin/chromium"
# As the machine's own check starts it: no sandbox (root), and no background connections,
# which a closed network refuses many at a time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright. Skipped (with the reason) when Chromium is
    missing outside CI; in CI (CI=true, set by .ci/run) a missing browser is a failure."""
    if not os.access(CHROMIUM, os.X_OK):
        message = f"Chromium is not installed at {CHROMIUM} (./dev test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
    # from it are still synchronous.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


class Screenshots:
    """Numbered screenshots of one test, under var/screenshots/<test name>/."""

    def __init__(self, page: Any, test_name: str):
        self.page = page
        self.folder = SCREENSHOTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def take(self, name: str, **kwargs: Any) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True, **kwargs)
        return path


@pytest.fixture
def page(browser: Any, request: Any) -> Iterator[Any]:
    """A fresh page (1280x900) recording console errors and failed responses in
    ``page.console_errors``, and taking screenshots with ``page.shots.take(name)``."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []

    def on_console(msg: Any) -> None:
        # A failed resource is reported below with its URL (and the favicon is not ours).
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            errors.append(msg.text)

    def on_response(response: Any) -> None:
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            errors.append(f"HTTP {response.status} for {response.url}")

    tab.on("console", on_console)
    tab.on("response", on_response)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.console_errors = errors
    tab.shots = Screenshots(tab, request.node.name)
    tab.set_default_timeout(15_000)
    yield tab
    context.close()
