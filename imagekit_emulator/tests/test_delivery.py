"""File delivery: a URL endpoint with a path, ``tr=orig-true`` (query and path forms) and the
account's automatic format (WebP for clients that accept it). Over HTTP only."""

from __future__ import annotations

import io
import socket

import pytest
import requests
from PIL import Image

from imagekit_emulator.testing import running_emulator, sample_image

UPLOAD = "/api/v1/files/upload"
WEBP = {"Accept": "image/avif,image/webp,image/apng,*/*;q=0.8"}  # what browsers send


def upload(ik, data, name="d.png", **fields):
    r = requests.post(
        ik.url + UPLOAD,
        auth=ik.auth,
        data={"fileName": name, **fields},
        files={"file": (name, data)},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_url_endpoint_with_a_path_is_served():
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/demo"
    with running_emulator(port=port, url_endpoint=endpoint) as ik:
        data = sample_image(fmt="PNG")
        body = upload(ik, data, folder="/shop")
        assert body["url"] == f"{endpoint}/shop/{body['name']}"
        served = requests.get(body["url"], timeout=5)
        assert served.status_code == 200 and served.content == data
        details = requests.get(
            f"{ik.url}/v1/files/{body['fileId']}/details", auth=ik.auth, timeout=5
        ).json()
        assert requests.get(details["url"], timeout=5).content == data  # ?updatedAt=
        assert requests.get(body["thumbnailUrl"], timeout=5).status_code == 200
        assert requests.get(f"{endpoint}/shop/missing.png", timeout=5).status_code == 404
        # /ik/ keeps working, and the API is not shadowed.
        assert requests.get(f"{ik.url}/ik/shop/{body['name']}", timeout=5).content == data
        assert requests.get(ik.url + "/_emulator/health", timeout=5).status_code == 200


def test_url_endpoint_at_the_root_does_not_shadow_the_api():
    port = free_port()
    with running_emulator(port=port, url_endpoint=f"http://localhost:{port}") as ik:
        data = sample_image(fmt="PNG")
        body = upload(ik, data)
        assert body["url"] == f"http://localhost:{port}/{body['name']}"
        assert requests.get(body["url"], timeout=5).content == data
        assert requests.get(ik.url + "/_emulator/health", timeout=5).json()["emulator"]
        missing = requests.get(f"{ik.url}/v1/files/{'0' * 24}/details", auth=ik.auth, timeout=5)
        assert missing.status_code == 404


def test_a_foreign_url_endpoint_is_not_mounted():
    with running_emulator(url_endpoint="https://ik.imagekit.io/demo") as ik:
        body = upload(ik, sample_image(fmt="PNG"))
        assert body["url"].startswith("https://ik.imagekit.io/demo/")
        assert requests.get(f"{ik.url}/demo/{body['name']}", timeout=5).status_code == 404
        assert requests.get(f"{ik.url}/ik/{body['name']}", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def ik():
    with running_emulator() as emulator:
        yield emulator


def test_auto_format_gives_webp_to_clients_that_accept_it(ik):
    data = sample_image(fmt="JPEG")
    body = upload(ik, data, name="auto.jpg")
    plain = requests.get(body["url"], timeout=5)  # requests sends Accept: */*
    assert plain.content == data and plain.headers["Content-Type"] == "image/jpeg"
    converted = requests.get(body["url"], headers=WEBP, timeout=5)
    assert converted.status_code == 200
    assert converted.headers["Content-Type"] == "image/webp"
    assert converted.headers["Vary"] == "Accept"
    assert converted.content != data
    assert Image.open(io.BytesIO(converted.content)).format == "WEBP"


@pytest.mark.parametrize(
    "form", ["{url}?tr=orig-true", "{url}?updatedAt=1&tr=orig-true", "{base}/tr:orig-true{path}"]
)
def test_orig_true_serves_the_stored_bytes_exactly(ik, form):
    data = sample_image(fmt="PNG")
    body = upload(ik, data, name="orig.png", folder="/x")
    url = form.format(url=body["url"], base=ik.url_endpoint, path=body["filePath"])
    served = requests.get(url, headers=WEBP, timeout=5)
    assert served.status_code == 200
    assert served.content == data and served.headers["Content-Type"] == "image/png"


def test_orig_true_in_a_transformation_chain(ik):
    data = sample_image(fmt="PNG")
    body = upload(ik, data, name="chain.png")
    served = requests.get(body["url"] + "?tr=w-100,orig-true", headers=WEBP, timeout=5)
    assert served.content == data


def test_transparent_png_keeps_alpha_in_webp(ik):
    im = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    im.paste((0, 0, 255, 255), (10, 10, 30, 20))
    buffer = io.BytesIO()
    im.save(buffer, "PNG")
    body = upload(ik, buffer.getvalue(), name="alpha.png")
    webp = Image.open(io.BytesIO(requests.get(body["url"], headers=WEBP, timeout=5).content))
    assert webp.mode == "RGBA" and webp.getpixel((2, 2))[3] == 0


def test_non_images_are_never_converted(ik):
    body = upload(ik, b"just text", name="notes.txt")
    served = requests.get(body["url"], headers=WEBP, timeout=5)
    assert served.content == b"just text"


def test_auto_format_can_be_switched_off():
    with running_emulator(auto_format=False) as plain:
        data = sample_image(fmt="JPEG")
        body = upload(plain, data, name="off.jpg")
        assert requests.get(body["url"], headers=WEBP, timeout=5).content == data
