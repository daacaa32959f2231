"""remove-bg on real photos whose subject touches the image border, through the emulator's
HTTP API. The regions were checked by looking at the cut-outs: the first version removed the
astronaut's neck and helmet ring, detaching her head, and cut the cat's ears off.

(The emulator segments with classical methods; ImageKit uses remove.bg, a neural model.
These tests pin the emulator's own behaviour, not remove.bg's.)"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import requests

np = pytest.importorskip("numpy")
cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")

from imagekit_emulator.testing import running_emulator  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "example_project" / "sample_images"


@pytest.fixture(scope="module")
def ik():
    with running_emulator() as emulator:
        yield emulator


def cut_out(ik, name: str) -> np.ndarray:
    """The alpha channel of remove-bg's result for a sample photo."""
    data = (PHOTOS / name).read_bytes()
    r = requests.post(
        ik.url + "/api/v1/files/upload",
        auth=ik.auth,
        data={"fileName": name, "extensions": json.dumps([{"name": "remove-bg"}])},
        files={"file": (name, data, "image/jpeg")},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert ik.wait_idle(60)
    details = requests.get(
        f"{ik.url}/v1/files/{r.json()['fileId']}/details", auth=ik.auth, timeout=10
    ).json()
    assert details["versionInfo"]["name"] == "Version 2", details
    png = requests.get(details["url"] + "&tr=orig-true", timeout=10).content
    rgba = np.asarray(Image.open(io.BytesIO(png)))
    assert rgba.shape[2] == 4
    return rgba[..., 3]


def kept(alpha: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    return float((alpha[y0:y1, x0:x1] >= 128).mean())


def one_subject(alpha: np.ndarray) -> bool:
    """Everything kept is one connected region (specks under 0.5% aside)."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(
        (alpha >= 128).astype(np.uint8), connectivity=8
    )
    areas = sorted(stats[1:, cv2.CC_STAT_AREA].tolist(), reverse=True)
    return bool(areas) and sum(areas[1:]) < 0.005 * areas[0]


def test_astronaut_keeps_face_neck_and_helmet_ring_in_one_piece(ik):
    alpha = cut_out(ik, "astronaut.jpg")  # 512x512
    assert kept(alpha, (195, 90, 255, 150)) > 0.95  # face
    assert kept(alpha, (200, 180, 250, 215)) > 0.95  # the black collar under the chin
    assert kept(alpha, (118, 185, 135, 225)) > 0.4  # the helmet's neck ring, left side
    assert one_subject(alpha)  # the head is attached
    assert kept(alpha, (330, 20, 370, 60)) < 0.05  # the studio backdrop
    assert kept(alpha, (10, 100, 50, 200)) < 0.05  # the flag


def test_cat_filling_the_frame_keeps_its_ear_and_body(ik):
    alpha = cut_out(ik, "chelsea.jpg")  # 451x300
    assert kept(alpha, (50, 0, 100, 25)) > 0.9  # the left ear, touching the top edge
    assert kept(alpha, (240, 225, 280, 255)) > 0.9  # nose
    assert kept(alpha, (100, 250, 200, 295)) > 0.9  # chest, running off the bottom
    assert kept(alpha, (0, 120, 20, 200)) > 0.9  # cheek, running off the left edge
    assert kept(alpha, (400, 100, 440, 200)) < 0.05  # the blurred room on the right
    assert one_subject(alpha)


def test_coffee_cup_on_a_table(ik):
    alpha = cut_out(ik, "coffee.jpg")  # 600x400
    assert kept(alpha, (250, 60, 350, 150)) > 0.95  # the cup
    assert kept(alpha, (0, 0, 60, 60)) < 0.05  # the table in the corner
    assert one_subject(alpha)
