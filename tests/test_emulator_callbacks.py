"""remove-bg jobs and their webhook callbacks: real background removal, new versions, signed
SUCCESS/FAILURE bodies, and ImageKit's delivery rule (only HTTP 200 counts, else retry)."""

from __future__ import annotations

import io
import itertools
import json

import pytest
import requests
from PIL import Image

from imagekit_bgremove.signatures import (
    LEGACY_HEADER,
    STANDARD_SIGNATURE_HEADER,
    SignatureMismatch,
    verify,
)
from imagekit_emulator.testing import CallbackReceiver, running_emulator, sample_image

# The emulator over real HTTP.
pytestmark = pytest.mark.integration

UPLOAD = "/api/v1/files/upload"
DETAIL_KEYS = {
    "fileId",
    "type",
    "name",
    "filePath",
    "tags",
    "AITags",
    "versionInfo",
    "isPrivateFile",
    "isPublished",
    "customCoordinates",
    "url",
    "thumbnail",
    "fileType",
    "mime",
    "width",
    "height",
    "size",
    "hasAlpha",
    "customMetadata",
    "createdAt",
    "updatedAt",
}


@pytest.fixture(scope="module")
def shared():
    with running_emulator(webhook_secrets=("whsec_current", "whsec_previous")) as emulator:
        yield emulator


@pytest.fixture
def ik(shared):
    shared.reset()
    return shared


@pytest.fixture
def hooks():
    with CallbackReceiver() as receiver:
        yield receiver


def remove_bg(ik, hooks_url, data=None, options=None, name="shoe.jpg", **fields):
    extension = {"name": "remove-bg"}
    if options is not None:
        extension["options"] = options
    r = requests.post(
        ik.url + UPLOAD,
        auth=ik.auth,
        files={"file": (name, sample_image() if data is None else data, "image/jpeg")},
        data={
            "fileName": name,
            "extensions": json.dumps([extension]),
            "webhookUrl": hooks_url,
            **fields,
        },
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["extensionStatus"] == {"remove-bg": "pending"}
    return r.json()


def test_success_callback_is_signed_exact_and_points_at_a_new_png_version(ik, hooks):
    uploaded = remove_bg(ik, hooks.url)
    assert ik.wait_idle(20)
    [call] = hooks.requests
    assert call.method == "POST" and call.path == "/hook"
    assert call.headers["Content-Type"] == "application/json"

    # Both schemes verify, with either secret of the rotation...
    assert verify(call.body, call.headers, ["whsec_current"]).scheme == "standard"
    assert verify(call.body, call.headers, ["whsec_previous"]).scheme == "standard"
    legacy_only = {k: v for k, v in call.headers.items() if k.lower() == LEGACY_HEADER}
    assert verify(call.body, legacy_only, ["whsec_previous"]).scheme == "legacy"
    standard_only = {k: v for k, v in call.headers.items() if k.lower() != LEGACY_HEADER}
    assert STANDARD_SIGNATURE_HEADER in {k.lower() for k in standard_only}
    assert verify(call.body, standard_only, ["whsec_current"]).scheme == "standard"
    # ...and nothing else does.
    with pytest.raises(SignatureMismatch):
        verify(call.body, call.headers, ["whsec_other"])
    with pytest.raises(SignatureMismatch):
        verify(call.body + b" ", call.headers, ["whsec_current"])

    body = call.json()
    assert set(body) == {"service", "status", "fileObject"}
    assert body["service"] == "remove-bg" and body["status"] == "SUCCESS"
    result = body["fileObject"]
    assert set(result) == DETAIL_KEYS
    assert result["fileId"] == uploaded["fileId"]
    assert result["type"] == "file"
    assert result["name"] == uploaded["name"]  # the name keeps .jpg
    assert result["versionInfo"]["name"] == "Version 2"
    assert result["versionInfo"]["id"] != uploaded["versionInfo"]["id"]
    assert result["mime"] == "image/png" and result["hasAlpha"] is True
    assert (result["width"], result["height"]) == (200, 150)
    assert result["url"].startswith(uploaded["url"] + "?updatedAt=")

    image_response = requests.get(result["url"], timeout=5)
    assert image_response.headers["Content-Type"] == "image/png"
    assert len(image_response.content) == result["size"]
    cut = Image.open(io.BytesIO(image_response.content))
    assert cut.mode == "RGBA"
    assert cut.getpixel((2, 2))[3] == 0  # white studio background: gone
    assert cut.getpixel((100, 75))[3] == 255  # the red subject: kept

    details = requests.get(
        f"{ik.url}/v1/files/{uploaded['fileId']}/details", auth=ik.auth, timeout=5
    ).json()
    assert details == result
    state = ik.state()
    [job] = state["jobs"]
    assert job["status"] == "success"
    assert job["sourceVersionId"] == uploaded["versionInfo"]["id"]
    assert job["resultVersionId"] == result["versionInfo"]["id"]
    assert job["options"] == {
        "add_shadow": False,
        "semitransparency": True,
        "bg_color": None,
        "bg_image_url": None,
    }
    [callback] = state["callbacks"]
    assert callback["status"] == "delivered" and callback["webhookId"] == call.headers["webhook-id"]
    [attempt] = state["callbackAttempts"]
    assert attempt["status"] == 200 and attempt["delivered"] is True and attempt["attempt"] == 1


def test_bg_color_gives_an_opaque_result(ik, hooks):
    remove_bg(ik, hooks.url, options={"bg_color": "81d4fa"})
    assert ik.wait_idle(20)
    result = hooks.requests[0].json()["fileObject"]
    assert result["mime"] == "image/png" and result["hasAlpha"] is False
    pixels = Image.open(io.BytesIO(requests.get(result["url"], timeout=5).content))
    assert pixels.mode == "RGB"
    assert pixels.getpixel((2, 2)) == pytest.approx((0x81, 0xD4, 0xFA), abs=3)


def test_bg_image_url_from_a_trusted_host(ik, hooks):
    backdrop = requests.post(
        ik.url + UPLOAD,
        auth=ik.auth,
        timeout=10,
        files={
            "file": ("bg.png", sample_image(fmt="PNG", colour=(0, 255, 0), background=(0, 255, 0)))
        },
        data={"fileName": "bg.png"},
    ).json()
    remove_bg(ik, hooks.url, options={"bg_image_url": backdrop["url"]})
    assert ik.wait_idle(20)
    body = hooks.requests[0].json()
    assert body["status"] == "SUCCESS", body
    pixels = Image.open(io.BytesIO(requests.get(body["fileObject"]["url"], timeout=5).content))
    assert pixels.getpixel((2, 2))[:3] == pytest.approx((0, 255, 0), abs=3)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/background.png", "untrusted_bg_image_url"),
        ("http://127.0.0.1:9/missing.png", "bg_image_url_fetch_failed"),
    ],
)
def test_bad_bg_image_url_fails_the_job_with_a_failure_callback(ik, hooks, url, reason):
    uploaded = remove_bg(ik, hooks.url, options={"bg_image_url": url})
    assert ik.wait_idle(20)
    [call] = hooks.requests
    assert verify(call.body, call.headers, ik.webhook_secrets)
    body = call.json()
    assert set(body) == {"service", "status", "fileId", "error"}
    assert body["service"] == "remove-bg" and body["status"] == "FAILURE"
    assert body["fileId"] == uploaded["fileId"]
    assert set(body["error"]) == {"message", "reason"}
    assert body["error"]["reason"] == reason
    assert "bg_image_url" in body["error"]["message"]
    [job] = ik.state()["jobs"]
    assert job["status"] == "failed" and job["error"] == body["error"]
    assert job["resultVersionId"] is None
    [file] = ik.state()["files"]
    assert len(file["versions"]) == 1  # no version was added


def test_callback_is_retried_until_it_gets_a_200(ik):
    with CallbackReceiver(statuses=[500, 201, 204]) as hooks:
        remove_bg(ik, hooks.url)
        assert ik.wait_idle(20)
        calls = hooks.requests
    assert [c.status for c in calls] == [500, 201, 204, 200]
    assert len({c.body for c in calls}) == 1  # the same body every time
    assert len({c.headers["webhook-id"] for c in calls}) == 1
    [callback] = ik.state()["callbacks"]
    assert callback["status"] == "delivered"
    assert [(a["attempt"], a["status"], a["delivered"]) for a in callback["attempts"]] == [
        (1, 500, False),
        (2, 201, False),
        (3, 204, False),
        (4, 200, True),
    ]
    sent = [a["sentAtMs"] for a in callback["attempts"]]
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert gaps[2] > gaps[0] + 100  # exponential backoff: 50 ms, 100 ms, 200 ms


def test_timeouts_count_as_failures():
    # ImageKit seconds, compressed by the test time scale: 40 s -> 0.2 s of wall clock.
    with running_emulator(callback_timeout=40, min_timeout=0) as ik:
        with CallbackReceiver(delay=0.5) as hooks:
            remove_bg(ik, hooks.url)
            hooks.wait_for(1, timeout=10)
            hooks.delay = 0
            assert ik.wait_idle(20)
        [callback] = ik.state()["callbacks"]
    assert callback["status"] == "delivered"
    assert "timed out" in callback["attempts"][0]["error"]
    assert callback["attempts"][-1]["status"] == 200


def test_delivery_gives_up_after_the_retry_window():
    # 80 ImageKit seconds = 0.4 s at the test time scale; retries after 0.05 s, 0.1 s, ...
    with running_emulator(callback_retry_seconds=80) as ik:
        with CallbackReceiver(default_status=503) as hooks:
            remove_bg(ik, hooks.url)
            assert ik.wait_idle(20)
        [callback] = ik.state()["callbacks"]
    assert callback["status"] == "gave_up"
    assert 2 <= len(callback["attempts"]) == len(hooks.requests)
    assert not any(a["delivered"] for a in callback["attempts"])


def test_unreachable_webhook_is_retried_as_an_error():
    with running_emulator(callback_retry_seconds=60) as ik:
        remove_bg(ik, "http://127.0.0.1:9/hook")
        assert ik.wait_idle(20)
        [callback] = ik.state()["callbacks"]
    assert callback["status"] == "gave_up"
    assert all(a["status"] is None and a["error"] for a in callback["attempts"])


def test_second_removal_works_on_the_current_version_and_restore_resets(ik, hooks):
    uploaded = remove_bg(ik, hooks.url)
    file_id = uploaded["fileId"]
    assert ik.wait_idle(20)
    path = f"{ik.url}/v1/files/{file_id}/details"
    again = requests.patch(
        path,
        auth=ik.auth,
        timeout=10,
        json={
            "extensions": [{"name": "remove-bg", "options": {"semitransparency": False}}],
            "webhookUrl": hooks.url,
        },
    )
    assert again.json()["extensionStatus"] == {"remove-bg": "pending"}
    assert ik.wait_idle(20)
    first, second = (c.json()["fileObject"]["versionInfo"] for c in hooks.requests)
    assert second["name"] == "Version 3"
    jobs = ik.state()["jobs"]
    assert jobs[1]["sourceVersionId"] == first["id"]

    original = uploaded["versionInfo"]["id"]
    requests.put(
        f"{ik.url}/v1/files/{file_id}/versions/{original}/restore", auth=ik.auth, timeout=5
    ).raise_for_status()
    requests.patch(
        path,
        auth=ik.auth,
        timeout=10,
        json={"extensions": [{"name": "remove-bg"}], "webhookUrl": hooks.url},
    )
    assert ik.wait_idle(20)
    assert ik.state()["jobs"][2]["sourceVersionId"] == original
    assert hooks.requests[2].json()["fileObject"]["versionInfo"]["name"] == "Version 4"


def test_unsigned_callbacks_when_configured(hooks):
    with running_emulator(sign_callbacks=False) as ik:
        remove_bg(ik, hooks.url)
        assert ik.wait_idle(20)
    [call] = hooks.requests
    assert {k.lower() for k in call.headers} & {"x-ik-signature", "webhook-signature"} == set()
    assert call.json()["status"] == "SUCCESS"


def test_pending_callbacks_and_jobs_survive_a_restart(tmp_path):
    # A first retry 400 ImageKit seconds (2 s of wall clock) after the failed attempt.
    settings = {"data_dir": str(tmp_path), "callback_backoff_base": 400}
    with CallbackReceiver(statuses=[500]) as hooks:
        with running_emulator(**settings) as ik:
            remove_bg(ik, hooks.url)
            hooks.wait_for(1, timeout=20)  # the first attempt failed; a retry is scheduled
            port = ik.port
        with running_emulator(port=port, **settings) as ik:
            assert ik.wait_idle(20)
            [callback] = ik.state()["callbacks"]
        assert [c.status for c in hooks.requests] == [500, 200]
    assert callback["status"] == "delivered"
