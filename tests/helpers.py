"""Helpers for the tests: test images, the emulator's settings and ground truth, waiting, the
task backends and the browser's screenshots. Imported by tests and by conftest.py's fixtures."""

from __future__ import annotations

import io
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile


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


def task_backend(name: str) -> str:
    """The dotted path of a built-in task backend: ``task_backend("dummy.DummyBackend")``."""
    try:
        import django.tasks  # noqa: F401

        return f"django.tasks.backends.{name}"
    except ImportError:  # Django 5.2 + backport
        return f"django_tasks.backends.{name}"


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
