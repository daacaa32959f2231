"""What the app must cope with from the real service, each behind a knob: the result as a
new file, a synchronous success, the upload's too-many-requests 400, the plan's size limit,
rate limits; and the ground truth of paid runs. Plus the time scale. Over HTTP only."""

from __future__ import annotations

import hashlib
import itertools
import json
import time

import pytest
import requests

from imagekit_bgremove.emulator.testing import (
    FAST_CALLBACKS,
    FAST_TIME_SCALE,
    CallbackReceiver,
    running_emulator,
    sample_image,
)

UPLOAD = "/api/v1/files/upload"
HELP = "For support kindly contact us at support@imagekit.io."


@pytest.fixture(scope="module")
def shared():
    with running_emulator(seed=5) as emulator:
        yield emulator


@pytest.fixture
def ik(shared):
    shared.reset()
    return shared


def upload(ik, data=None, *, name="v.jpg", extensions=None, webhook_url=None, **fields):
    payload = {"fileName": name, **fields}
    if extensions is not None:
        payload["extensions"] = json.dumps(extensions)
    if webhook_url:
        payload["webhookUrl"] = webhook_url
    return requests.post(
        ik.url + UPLOAD,
        auth=ik.auth,
        data=payload,
        files={"file": (name, sample_image() if data is None else data)},
        timeout=10,
    )


def test_result_as_a_new_file(ik):
    ik.faults = {"result_as_new_file_rate": 1.0}
    with CallbackReceiver() as hooks:
        uploaded = upload(
            ik, folder="/shop", extensions=[{"name": "remove-bg"}], webhook_url=hooks.url
        ).json()
        assert ik.wait_idle(20)
        [call] = hooks.requests
    result = call.json()["fileObject"]
    assert call.json()["status"] == "SUCCESS"
    assert result["fileId"] != uploaded["fileId"]
    assert result["filePath"].startswith("/shop/") and result["mime"] == "image/png"
    assert result["versionInfo"]["name"] == "Version 1"
    original = requests.get(
        f"{ik.url}/v1/files/{uploaded['fileId']}/details", auth=ik.auth, timeout=10
    ).json()
    assert original["versionInfo"]["name"] == "Version 1"  # untouched
    assert requests.get(result["url"], timeout=5).headers["Content-Type"] == "image/png"
    [job] = ik.state()["jobs"]
    assert job["resultFileId"] == result["fileId"]


def test_synchronous_success(ik):
    ik.faults = {"sync_success_rate": 1.0}
    with CallbackReceiver() as hooks:
        r = upload(ik, extensions=[{"name": "remove-bg"}], webhook_url=hooks.url)
        assert r.status_code == 200
        body = r.json()
        assert body["extensionStatus"] == {"remove-bg": "success"}
        assert body["versionInfo"]["name"] == "Version 2"  # the result, already there
        patch = requests.patch(
            f"{ik.url}/v1/files/{body['fileId']}/details",
            auth=ik.auth,
            json={"extensions": [{"name": "remove-bg"}], "webhookUrl": hooks.url},
            timeout=10,
        ).json()
        assert patch["extensionStatus"] == {"remove-bg": "success"}
        assert patch["versionInfo"]["name"] == "Version 3" and patch["mime"] == "image/png"
        assert ik.wait_idle(20)
        time.sleep(0.1)
        assert hooks.requests == []  # no callback for a synchronous result
    state = ik.state()
    assert [j["synchronous"] for j in state["jobs"]] == [True, True]
    assert state["callbacks"] == []
    assert state["removeBgRunCount"] == 2


def test_synchronous_failure_is_failed(ik):
    ik.faults = {"sync_success_rate": 1.0}
    r = upload(ik, b"not an image", name="x.txt", extensions=[{"name": "remove-bg"}])
    assert r.json()["extensionStatus"] == {"remove-bg": "failed"}


def test_upload_too_many_requests_400(ik):
    ik.faults = {"upload_too_many_requests_rate": 1.0, "max_api_faults": 1}
    refused = upload(ik)
    assert refused.status_code == 400
    assert refused.json() == {
        "message": "You have sent too many requests to update the file recently. "
        "Please try again later.",
        "help": HELP,
    }
    assert ik.state()["files"] == []  # refused before anything was stored
    assert upload(ik).status_code == 200  # later it works


def test_plan_size_limit():
    with running_emulator(max_upload_bytes=5000) as small:
        big = upload(small, b"x" * 5001, name="big.bin")
        assert big.status_code == 400
        assert big.json() == {
            "message": "Your request contains invalid file parameter. The file size exceeds "
            "limits.",
            "help": HELP,
        }
        assert small.state()["files"] == []
        assert small.state()["emulator"]["maxUploadBytes"] == 5000


def test_default_plan_limit_is_25_mb():
    with running_emulator() as ik:
        assert ik.config.max_upload_bytes == 25 * 1024 * 1024


def test_ground_truth_of_paid_runs(ik):
    image = sample_image()
    upload(ik, image, extensions=[{"name": "remove-bg"}])
    upload(ik, image, extensions=[{"name": "remove-bg", "options": {"bg_color": "fff"}}])
    other = upload(
        ik, extensions=[{"name": "google-auto-tagging", "minConfidence": 1, "maxTags": 1}]
    )
    assert other.json()["extensionStatus"] == {"google-auto-tagging": "success"}
    assert ik.wait_idle(20)
    state = ik.state()
    assert state["removeBgRunCount"] == 2
    runs = state["removeBgRuns"]
    digest = hashlib.sha256(image).hexdigest()
    assert [r["inputSha256"] for r in runs] == [digest, digest]
    assert runs[0]["options"] == {
        "add_shadow": False,
        "semitransparency": True,
        "bg_color": None,
        "bg_image_url": None,
    }
    assert runs[1]["options"]["bg_color"] == "fff"
    assert runs[1]["requestedOptions"] == {"bg_color": "fff"}
    assert {r["jobId"] for r in runs} == {j["id"] for j in state["jobs"]}
    assert len({(r["inputSha256"], json.dumps(r["options"], sort_keys=True)) for r in runs}) == 2


def test_unpaid_requests_are_not_runs():
    with running_emulator(extension_quota_units=0) as ik:
        assert upload(ik, extensions=[{"name": "remove-bg"}]).status_code == 400
        assert ik.state()["removeBgRunCount"] == 0


def test_rate_limiter_on_every_api_but_upload():
    # 3 requests per 1000 ImageKit ms = 5 wall ms at the test scale; use real time here.
    with running_emulator(
        rate_limit_requests=3, rate_limit_interval_ms=60_000, time_scale=1.0
    ) as ik:
        url = f"{ik.url}/v1/files/{'0' * 24}/details"
        answers = [requests.get(url, auth=ik.auth, timeout=5) for _ in range(4)]
        assert [a.status_code for a in answers] == [404, 404, 404, 429]
        limited = answers[-1]
        assert limited.headers["X-RateLimit-Limit"] == "3"
        assert limited.headers["X-RateLimit-Interval"] == "60000"
        assert 0 < int(limited.headers["X-RateLimit-Reset"]) <= 60000
        assert "message" in limited.json()
        assert requests.get(ik.url + "/v1/files", auth=ik.auth, timeout=5).status_code == 429
        assert all(upload(ik).status_code == 200 for _ in range(4))  # upload is not limited


def test_rate_limit_window_follows_the_time_scale():
    with running_emulator(rate_limit_requests=1, rate_limit_interval_ms=40_000) as ik:
        url = f"{ik.url}/v1/files"
        assert requests.get(url, auth=ik.auth, timeout=5).status_code == 200
        limited = requests.get(url, auth=ik.auth, timeout=5)
        assert limited.status_code == 429
        assert limited.headers["X-RateLimit-Interval"] == "200"  # 40 s x 0.005, wall ms
        time.sleep(int(limited.headers["X-RateLimit-Reset"]) / 1000)
        assert requests.get(url, auth=ik.auth, timeout=5).status_code == 200


def test_real_world_defaults_and_the_test_time_scale():
    from imagekit_bgremove.emulator import EmulatorConfig

    real = EmulatorConfig()
    assert (real.time_scale, real.callback_timeout, real.callback_retry_seconds) == (
        1.0,
        30.0,
        86400.0,
    )
    assert FAST_CALLBACKS["time_scale"] == FAST_TIME_SCALE
    with running_emulator() as ik:
        health = requests.get(ik.url + "/_emulator/health", timeout=5).json()
        assert health["timeScale"] == FAST_TIME_SCALE
        assert ik.state()["emulator"]["timeScale"] == FAST_TIME_SCALE
    with pytest.raises(ValueError):
        EmulatorConfig(time_scale=0)


def test_time_scale_compresses_the_retry_schedule():
    # Backoff of 10, 20, 40 ImageKit seconds: 1 s, 2 s, 4 s at scale 0.1 ...
    with (
        CallbackReceiver(statuses=[500, 500]) as hooks,
        running_emulator(time_scale=0.002) as ik,  # ... and 20, 40 ms here
    ):
        upload(ik, extensions=[{"name": "remove-bg"}], webhook_url=hooks.url)
        assert ik.wait_idle(20)
        attempts = ik.state()["callbacks"][0]["attempts"]
    gaps = [b["sentAtMs"] - a["sentAtMs"] for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 3
    assert 15 <= gaps[0] < 1000 and 30 <= gaps[1] < 1000


def test_cli_time_scale_flag():
    from imagekit_bgremove.emulator.__main__ import build_parser, config_from_args

    config = config_from_args(
        build_parser().parse_args(
            [
                *("--time-scale", "0.01", "--min-timeout", "2", "--no-auto-format"),
                *("--rate-limit-requests", "10", "--answer-drop-rate", "0.5"),
                *("--webhook-retry-original-signature", "--sync-success-rate", "0.1"),
            ]
        )
    )
    assert config.time_scale == 0.01 and config.min_timeout == 2.0
    assert config.auto_format is False and config.rate_limit_requests == 10
    assert config.faults.answer_drop_rate == 0.5
    assert config.faults.retry_original_signature is True
    assert config.faults.sync_success_rate == 0.1
    defaults = config_from_args(build_parser().parse_args([]))
    assert defaults.callback_timeout == 30.0 and defaults.callback_retry_seconds == 86400.0


def test_add_shadow_changes_nothing_offline(ik):
    # remove.bg shadows photos of cars only; the emulator cannot tell a car, so it adds none
    # (as the admin's help text says), and the option is still accepted and recorded.
    results = []
    for options in ({}, {"add_shadow": True}):
        with CallbackReceiver() as hooks:
            upload(
                ik, extensions=[{"name": "remove-bg", "options": options}], webhook_url=hooks.url
            )
            assert ik.wait_idle(20)
            [call] = hooks.requests
        url = call.json()["fileObject"]["url"]
        results.append(requests.get(url, params={"tr": "orig-true"}, timeout=5).content)
    assert results[0] == results[1] and results[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["options"]["add_shadow"] for r in ik.state()["removeBgRuns"]] == [False, True]
