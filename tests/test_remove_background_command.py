"""``manage.py remove_background``: one image through upload, callback and download."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from imagekit_emulator.testing import running_emulator

# The emulator over real HTTP.
pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parent.parent / "example_project" / "sample_images"


@pytest.fixture(scope="module")
def emulator():
    with running_emulator() as ik:
        yield ik


@pytest.fixture
def ik_settings(settings, emulator):
    settings.IMAGEKIT_BGREMOVE = {
        **settings.IMAGEKIT_BGREMOVE,
        "EMULATOR_URL": emulator.url,
    }
    return settings


def run(*args) -> str:
    out = io.StringIO()
    call_command("remove_background", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_writes_a_png_with_alpha(ik_settings, tmp_path):
    from PIL import Image

    source = tmp_path / "product.jpg"
    shutil.copy(SAMPLES / "synthetic_product_white.jpg", source)
    output = tmp_path / "product_nobg.png"
    text = run(str(source), "--output", str(output), "--timeout", "60")
    assert "uploading product.jpg" in text
    assert "pending at ImageKit (fileId " in text
    assert "result received" in text
    assert f"wrote {output} (512x384)" in text
    with Image.open(output) as image:
        assert image.format == "PNG"
        assert image.mode in ("RGBA", "LA")
        alpha = image.getchannel("A")
        low, high = alpha.getextrema()
        assert low == 0 and high == 255  # transparent background, opaque subject


def test_background_colour_gives_an_opaque_result(ik_settings, tmp_path):
    from PIL import Image

    output = tmp_path / "out.png"
    run(str(SAMPLES / "synthetic_product_white.jpg"), "-o", str(output), "--bg-color", "00ff00")
    with Image.open(output) as image:
        rgba = image.convert("RGBA")
        assert rgba.getpixel((2, 2))[:3] == (0, 255, 0)


def test_missing_image_is_a_clear_error(ik_settings, tmp_path):
    with pytest.raises(CommandError, match=r"No such file: .*nope\.jpg"):
        run(str(tmp_path / "nope.jpg"), "--output", str(tmp_path / "out.png"))


def test_directory_is_not_a_file(ik_settings, tmp_path):
    with pytest.raises(CommandError, match="Not a file"):
        run(str(tmp_path), "--output", str(tmp_path / "out.png"))


def test_non_image_is_refused_before_upload(ik_settings, tmp_path):
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("these are not pixels")
    with pytest.raises(CommandError, match="is not an image"):
        run(str(text_file), "--output", str(tmp_path / "out.png"))
    assert not (tmp_path / "out.png").exists()


def test_invalid_options_are_refused(ik_settings, tmp_path):
    with pytest.raises(CommandError, match="bg_color"):
        run(str(SAMPLES / "coffee.jpg"), "-o", str(tmp_path / "o.png"), "--bg-color", "nope!")


def test_missing_output_directory(ik_settings, tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        run(str(SAMPLES / "coffee.jpg"), "-o", str(tmp_path / "missing" / "o.png"))


def test_imagekit_error_is_reported(settings, tmp_path):
    # Nothing listens on this port and autostart is off: the upload cannot connect.
    settings.IMAGEKIT_BGREMOVE = {
        **settings.IMAGEKIT_BGREMOVE,
        "PRIVATE_KEY": "private_x",
        "UPLOAD_BASE_URL": "http://127.0.0.1:9",
        "MAX_RETRIES": 0,
    }
    with pytest.raises(CommandError, match="Upload failed"):
        run(str(SAMPLES / "coffee.jpg"), "-o", str(tmp_path / "o.png"), "--timeout", "5")


def test_failure_callback_is_reported(settings, tmp_path):
    with running_emulator(faults={"extension_failure_rate": 1.0}) as ik:
        settings.IMAGEKIT_BGREMOVE = {
            **settings.IMAGEKIT_BGREMOVE,
            "EMULATOR_URL": ik.url,
        }
        with pytest.raises(CommandError, match="could not remove the background"):
            run(str(SAMPLES / "coffee.jpg"), "-o", str(tmp_path / "o.png"), "--timeout", "30")


def test_timeout_is_a_clear_error(ik_settings, tmp_path):
    with pytest.raises(CommandError, match=r"No callback from ImageKit within 0\.05 s"):
        run(str(SAMPLES / "coffee.jpg"), "-o", str(tmp_path / "o.png"), "--timeout", "0.05")
    assert not (tmp_path / "o.png").exists()


def test_real_account_falls_back_to_polling(settings, tmp_path, monkeypatch):
    """With a real account the local listener is unreachable; a new version found by polling
    the file's details is the result. Here: the emulator with every callback lost."""
    from imagekit_bgremove.conf import EMULATOR_PRIVATE_KEY
    from imagekit_bgremove.management.commands import remove_background

    monkeypatch.setattr(remove_background, "POLL_INTERVAL", 0.2)
    with running_emulator(faults={"lost_rate": 1.0}) as ik:
        settings.IMAGEKIT_BGREMOVE = {
            **settings.IMAGEKIT_BGREMOVE,
            "PRIVATE_KEY": EMULATOR_PRIVATE_KEY,
            "UPLOAD_BASE_URL": ik.url,
            "API_BASE_URL": ik.url,
            "URL_ENDPOINT": ik.url_endpoint,  # where results may be downloaded from
        }
        output = tmp_path / "polled.png"
        text = run(
            str(SAMPLES / "synthetic_product_white.jpg"), "-o", str(output), "--timeout", "30"
        )
    assert "result received" in text
    assert output.read_bytes().startswith(b"\x89PNG")


def test_the_callback_port_can_be_chosen_and_a_taken_one_is_named(emulator, tmp_path):
    import socket

    from django.core.management import CommandError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"127.0.0.1:{port}.*--callback-port"):
            run(
                str(SAMPLES / "coffee.jpg"),
                "-o",
                str(tmp_path / "x.png"),
                "--callback-port",
                str(port),
            )


@pytest.mark.django_db
def test_an_exhausted_daily_budget_sends_nothing(ik_settings, emulator, tmp_path):
    from imagekit_bgremove.services import budget

    ik_settings.IMAGEKIT_BGREMOVE = {**ik_settings.IMAGEKIT_BGREMOVE, "DAILY_REMOVAL_LIMIT": 1}
    budget.reserve(1)  # the site spent today's only unit
    before = len(emulator.state()["files"])
    source = tmp_path / "product.jpg"
    shutil.copy(SAMPLES / "synthetic_product_white.jpg", source)
    with pytest.raises(CommandError, match="Nothing was sent: The daily budget of 1"):
        run(str(source), "--output", str(tmp_path / "out.png"))
    assert len(emulator.state()["files"]) == before
    assert not (tmp_path / "out.png").exists()


@pytest.mark.django_db
def test_a_run_counts_against_the_daily_budget(ik_settings, tmp_path):
    from imagekit_bgremove.services import budget

    ik_settings.IMAGEKIT_BGREMOVE = {**ik_settings.IMAGEKIT_BGREMOVE, "DAILY_REMOVAL_LIMIT": 5}
    source = tmp_path / "product.jpg"
    shutil.copy(SAMPLES / "synthetic_product_white.jpg", source)
    run(str(source), "--output", str(tmp_path / "out.png"), "--timeout", "60")
    assert budget.used() == 1
