"""Shared fixtures.

Sections: test images · the ImageKit emulator · jobs and tasks · (result side: webhooks, API).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Screenshots,
    emulator_settings,
    make_image,
    set_faults,
    task_backend,
)

# ------------------------------------------------------------------------------ layers

#: Fixtures that put a test on the emulator over real HTTP: the integration layer.
EMULATOR_FIXTURES = {"emulator", "live_emulator", "_emulator_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests on the emulator ``integration`` (``-m integration`` / ``-m "not
    integration"``); the others are the fast unit layer (the fake ImageKit or no ImageKit)."""
    for item in items:
        if EMULATOR_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


# The machine is offline: the public names the tests use in bg_image_url resolve as they would
# on the internet (the app refuses names that do not resolve, or resolve to private addresses).
PUBLIC_NAMES = {"example.com": "93.184.215.14", "images.example.net": "2606:2800:21f:cb07::1"}


@pytest.fixture(autouse=True)
def public_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        address = PUBLIC_NAMES.get(host)
        if address is None:
            return real(host, *args, **kwargs)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# ------------------------------------------------------------------------------ test images


@pytest.fixture
def image_factory() -> Callable[..., SimpleUploadedFile]:
    counter = iter(range(1, 1_000_000))

    def factory(name: str = "photo.png", **kwargs: Any) -> SimpleUploadedFile:
        kwargs.setdefault("seed", next(counter))
        return make_image(name, **kwargs)

    return factory


# ------------------------------------------------------------------------------ the emulator


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


@pytest.fixture
def dummy_tasks(settings: Any) -> None:
    """Tasks are recorded, not run (Django's DummyBackend)."""
    settings.TASKS = {"default": {"BACKEND": task_backend("dummy.DummyBackend")}}


# ------------------------------------------------------------------------------ result side
# (webhook view, API and admin fixtures go here)


# ------------------------------------------------------------------------------ the browser


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
