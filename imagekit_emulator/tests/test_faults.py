"""Fault injection in the ImageKit emulator: every knob, observable over HTTP and in
``/_emulator/state``, set at start or at run time."""

from __future__ import annotations

import json
import time

import pytest
import requests

from imagekit_emulator import Faults, FaultsError
from imagekit_emulator.testing import CallbackReceiver, running_emulator, sample_image

UPLOAD = "/api/v1/files/upload"


@pytest.fixture(scope="module")
def shared():
    with running_emulator(seed=1) as emulator:
        yield emulator


@pytest.fixture
def ik(shared):
    shared.reset()
    return shared


@pytest.fixture
def hooks():
    with CallbackReceiver() as receiver:
        yield receiver


def upload(ik, *, name="f.jpg", extensions=None, webhook_url=None):
    data = {"fileName": name}
    if extensions is not None:
        data["extensions"] = json.dumps(extensions)
    if webhook_url:
        data["webhookUrl"] = webhook_url
    return requests.post(
        ik.url + UPLOAD, auth=ik.auth, data=data, timeout=10, files={"file": (name, sample_image())}
    )


def details(ik, file_id="0" * 24):
    return requests.get(f"{ik.url}/v1/files/{file_id}/details", auth=ik.auth, timeout=10)


def remove_bg(ik, hooks_url, name="f.jpg"):
    r = upload(ik, name=name, extensions=[{"name": "remove-bg"}], webhook_url=hooks_url)
    assert r.status_code == 200, r.text
    return r.json()


# ----------------------------------------------------------------------------- API faults


def test_5xx_on_api_endpoints_only(ik):
    ik.set_faults(error_rate_5xx=1.0, error_statuses=[503])
    r = details(ik)
    assert r.status_code == 503
    assert set(r.json()) == {"message", "help"} and r.headers["x-ik-requestId"]
    assert upload(ik).status_code == 503
    assert requests.get(ik.url + "/_emulator/health", timeout=5).status_code == 200
    faults = requests.get(ik.url + "/_emulator/faults", timeout=5).json()
    assert faults["error_rate_5xx"] == 1.0 and faults["_api_faults_fired"] == 2
    assert [(r["endpoint"], r["status"], r["fault"]) for r in ik.state()["requests"][:2]] == [
        ("get_details", 503, "error"),
        ("upload", 503, "error"),
    ]


def test_rate_limit_headers_and_upload_exemption(ik):
    ik.set_faults(
        rate_limit_rate=1.0,
        rate_limit_reset_ms=1500,
        rate_limit_limit=7,
        rate_limit_interval_ms=60000,
    )
    limited = details(ik)
    assert limited.status_code == 429
    assert limited.headers["X-RateLimit-Reset"] == "1500"
    assert limited.headers["X-RateLimit-Limit"] == "7"
    assert limited.headers["X-RateLimit-Interval"] == "60000"
    assert "message" in limited.json()
    assert upload(ik).status_code == 200  # the real upload API is not rate limited
    ik.set_faults(rate_limit_upload=True)
    assert upload(ik).status_code == 429


def test_slow_responses(ik):
    ik.set_faults(slow_rate=1.0, slow_seconds=0.3)
    started = time.monotonic()
    assert details(ik).status_code == 404
    assert time.monotonic() - started >= 0.3
    assert ik.state()["requests"][-1]["fault"] == "slow"


def test_dropped_connections(ik):
    ik.set_faults(drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        details(ik)
    with pytest.raises(requests.ConnectionError):
        upload(ik)
    assert ik.state()["files"] == []
    assert requests.get(ik.url + "/_emulator/health", timeout=5).status_code == 200


def test_fault_budget_and_endpoint_filter(ik):
    ik.set_faults(error_rate_5xx=1.0, max_api_faults=2, endpoints=["get_details"])
    assert upload(ik).status_code == 200  # not a chosen endpoint
    assert [details(ik).status_code for _ in range(4)] == [500, 500, 404, 404]


def test_seeded_faults_repeat():
    def run():
        with running_emulator(seed=42, faults={"error_rate_5xx": 0.5}) as ik:
            return [details(ik).status_code for _ in range(16)]

    first = run()
    assert set(first) == {404, 500}
    assert run() == first


def test_faults_endpoint_get_put_delete_and_reset(ik):
    url = ik.url + "/_emulator/faults"
    assert requests.get(url, timeout=5).json()["error_rate_5xx"] == 0.0
    changed = requests.put(
        url, json={"duplicate_rate": 0.5, "delay_seconds": [0.1, 0.2]}, timeout=5
    )
    assert changed.status_code == 200
    assert changed.json()["duplicate_rate"] == 0.5
    assert changed.json()["delay_seconds"] == [0.1, 0.2]
    again = requests.put(url, json={"reorder": True}, timeout=5).json()
    assert again["duplicate_rate"] == 0.5 and again["reorder"] is True  # partial update
    round_trip = requests.put(url, json=requests.get(url, timeout=5).json(), timeout=5)
    assert round_trip.status_code == 200
    bad = requests.put(url, json={"drop_rate": 3, "nonsense": 1}, timeout=5)
    assert bad.status_code == 400
    assert set(bad.json()["errors"]) == {"drop_rate", "nonsense"}
    assert requests.delete(url, timeout=5).json()["reorder"] is False
    ik.faults = {"lost_rate": 1.0}
    assert ik.faults == Faults(lost_rate=1.0)
    requests.post(ik.url + "/_emulator/reset", timeout=5).raise_for_status()
    assert ik.faults == Faults()  # back to the faults it started with
    with pytest.raises(FaultsError):
        Faults.from_dict({"delay_seconds": [2, 1]})


def test_start_time_faults_are_what_reset_restores():
    with running_emulator(faults={"error_rate_5xx": 1.0}) as ik:
        assert details(ik).status_code == 500
        ik.set_faults(error_rate_5xx=0)
        assert details(ik).status_code == 404
        ik.reset()
        assert details(ik).status_code == 500


# ----------------------------------------------------------------------------- extension faults


def test_extension_failure(ik, hooks):
    ik.set_faults(extension_failure_rate=1.0)
    uploaded = remove_bg(ik, hooks.url)
    assert ik.wait_idle(20)
    [call] = hooks.requests
    body = call.json()
    assert body["status"] == "FAILURE" and body["fileId"] == uploaded["fileId"]
    assert body["error"]["reason"] == "simulated_failure"
    assert ik.state()["jobs"][0]["status"] == "failed"


# ----------------------------------------------------------------------------- webhook faults


def test_duplicates(ik, hooks):
    ik.set_faults(duplicate_rate=1.0, duplicate_max=2)
    remove_bg(ik, hooks.url)
    assert ik.wait_idle(20)
    calls = hooks.requests
    assert 2 <= len(calls) <= 3
    assert len({c.body for c in calls}) == 1
    assert len({c.headers["webhook-id"] for c in calls}) == 1
    [callback] = ik.state()["callbacks"]
    assert callback["copies"] == len(calls) == callback["deliveries"]
    assert callback["status"] == "delivered"
    assert [a["copy"] for a in callback["attempts"]] == list(range(1, len(calls) + 1))


def test_delay(ik, hooks):
    ik.set_faults(delay_seconds=[0.4, 0.4])
    remove_bg(ik, hooks.url)
    assert ik.wait_idle(20)
    state = ik.state()
    finished = state["jobs"][0]["finishedAt"]
    [attempt] = state["callbackAttempts"]
    from datetime import datetime

    gap = datetime.fromisoformat(attempt["sentAt"].replace("Z", "+00:00")) - (
        datetime.fromisoformat(finished.replace("Z", "+00:00"))
    )
    assert gap.total_seconds() >= 0.39


def test_reorder(hooks):
    with running_emulator(
        workers=1, faults={"reorder": True, "reorder_window": 2, "reorder_hold_seconds": 5}
    ) as ik:
        first = remove_bg(ik, hooks.url, name="first.jpg")
        second = remove_bg(ik, hooks.url, name="second.jpg")
        assert ik.wait_idle(20)
        jobs = ik.state()["jobs"]
    assert jobs[0]["finishedAt"] <= jobs[1]["finishedAt"]  # one worker: in order
    order = [c.json()["fileObject"]["fileId"] for c in hooks.requests]
    assert order == [second["fileId"], first["fileId"]]


def test_reorder_releases_a_lone_callback_after_the_hold(ik, hooks):
    ik.set_faults(reorder=True, reorder_hold_seconds=0.3)
    remove_bg(ik, hooks.url)
    assert ik.wait_idle(20)
    assert len(hooks.requests) == 1


def test_fail_first_attempts_are_really_sent(ik, hooks):
    ik.set_faults(fail_first_attempts=2)
    remove_bg(ik, hooks.url)
    assert ik.wait_idle(20)
    assert len(hooks.requests) == 3
    assert len({c.body for c in hooks.requests}) == 1
    [callback] = ik.state()["callbacks"]
    assert [(a["status"], a["simulatedFailure"], a["delivered"]) for a in callback["attempts"]] == [
        (200, True, False),
        (200, True, False),
        (200, False, True),
    ]


def test_lost_callbacks(ik, hooks):
    ik.set_faults(lost_rate=1.0)
    remove_bg(ik, hooks.url)
    assert ik.wait_idle(20)
    time.sleep(0.1)
    assert hooks.requests == []
    [callback] = ik.state()["callbacks"]
    assert callback["status"] == "lost" and callback["attempts"] == []
    assert ik.state()["jobs"][0]["status"] == "success"


def test_unsigned_knob(ik, hooks):
    ik.set_faults(unsigned_callbacks=True)
    remove_bg(ik, hooks.url)
    assert ik.wait_idle(20)
    assert "x-ik-signature" not in {k.lower() for k in hooks.requests[0].headers}


def test_wait_idle_endpoint(ik, hooks):
    ik.set_faults(delay_seconds=[0.3, 0.3])
    remove_bg(ik, hooks.url)
    busy = requests.post(ik.url + "/_emulator/wait-idle?timeout=0", timeout=5).json()
    assert busy["idle"] is False and busy["activity"]
    idle = requests.post(ik.url + "/_emulator/wait-idle?timeout=20", timeout=25).json()
    assert idle == {"idle": True, "activity": {}}
    assert len(hooks.requests) == 1
