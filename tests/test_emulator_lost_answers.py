""" "Work done, answer lost": faults applied after the upload stored the file or the PATCH
started its extension, the central idempotency cases of the app; and callbacks retried with
their original signature. Over HTTP only."""

from __future__ import annotations

import json
import time

import pytest
import requests

from imagekit_bgremove.signatures import SignatureStale, verify
from imagekit_emulator.testing import CallbackReceiver, running_emulator, sample_image

# The emulator over real HTTP.
pytestmark = pytest.mark.integration

UPLOAD = "/api/v1/files/upload"


@pytest.fixture(scope="module")
def shared():
    with running_emulator(seed=7) as emulator:
        yield emulator


@pytest.fixture
def ik(shared):
    shared.reset()
    return shared


def upload(ik, *, extensions=None, webhook_url=None, timeout=10):
    data = {"fileName": "lost.jpg"}
    if extensions is not None:
        data["extensions"] = json.dumps(extensions)
    if webhook_url:
        data["webhookUrl"] = webhook_url
    return requests.post(
        ik.url + UPLOAD,
        auth=ik.auth,
        data=data,
        timeout=timeout,
        files={"file": ("lost.jpg", sample_image())},
    )


def test_upload_stored_then_connection_dropped(ik):
    ik.faults = {"answer_drop_rate": 1.0, "endpoints": ["upload"]}
    with pytest.raises(requests.ConnectionError):
        upload(ik, extensions=[{"name": "remove-bg"}])
    assert ik.wait_idle(20)
    state = ik.state()
    [file] = state["files"]  # the upload was stored all the same
    assert state["removeBgRunCount"] == 1  # and its paid run started
    [entry] = [r for r in state["requests"] if r["endpoint"] == "upload"]
    assert entry["fault"] == "answer_drop" and entry["status"] is None
    assert state["faults"]["_api_faults_fired"] == 1
    # The file can be found by its name in its folder (what the app does to recover).
    found = requests.get(
        ik.url + "/v1/files",
        auth=ik.auth,
        params={"path": "/", "searchQuery": f'name = "{file["name"]}"'},
        timeout=10,
    ).json()
    assert [f["fileId"] for f in found] == [file["fileId"]]


def test_patch_applied_then_5xx(ik):
    file_id = upload(ik).json()["fileId"]
    ik.faults = {"answer_error_rate": 1.0, "error_statuses": [502], "endpoints": ["update_details"]}
    r = requests.patch(
        f"{ik.url}/v1/files/{file_id}/details",
        auth=ik.auth,
        json={"tags": ["applied"], "extensions": [{"name": "remove-bg"}]},
        timeout=10,
    )
    assert r.status_code == 502
    assert set(r.json()) == {"message", "help"}
    assert ik.wait_idle(20)
    state = ik.state()
    assert state["removeBgRunCount"] == 1
    [job] = state["jobs"]
    assert job["status"] == "success" and job["origin"] == "update"
    details = requests.get(f"{ik.url}/v1/files/{file_id}/details", auth=ik.auth, timeout=10)
    assert details.json()["tags"] == ["applied"]
    assert details.json()["versionInfo"]["name"] == "Version 2"


def test_answer_later_than_the_clients_timeout(ik):
    ik.faults = {"answer_late_rate": 1.0, "answer_late_seconds": 1.0}
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        upload(ik, timeout=0.3)
    # Stored before the answer was held back.
    assert len(ik.state()["files"]) == 1
    assert time.monotonic() - started < 1.0
    entry = next(r for r in ik.state()["requests"] if r["endpoint"] == "upload")
    assert entry["fault"] == "answer_late" and entry["status"] == 200
    ik.faults = {"answer_late_rate": 1.0, "answer_late_seconds": 0.2}
    patient = upload(ik, timeout=5)  # a patient client gets the real answer
    assert patient.status_code == 200 and patient.json()["fileId"]


def test_answer_faults_are_seeded_and_budgeted():
    def run():
        with running_emulator(seed=3, faults={"answer_error_rate": 0.5}) as ik:
            statuses = [upload(ik).status_code for _ in range(10)]
            return statuses, len(ik.state()["files"])

    first, stored = run()
    assert set(first) == {200, 500}
    assert stored == 10  # every one was stored, whatever it answered
    assert run() == (first, stored)
    with running_emulator(faults={"answer_error_rate": 1.0, "max_api_faults": 1}) as ik:
        assert [upload(ik).status_code for _ in range(3)] == [500, 200, 200]


def test_failed_requests_get_no_after_work_fault(ik):
    ik.faults = {"answer_drop_rate": 1.0}
    r = requests.get(f"{ik.url}/v1/files/{'0' * 24}/details", auth=ik.auth, timeout=10)
    assert r.status_code == 404  # nothing was done, so nothing to lose


def test_retries_keep_the_original_signature_when_asked(ik):
    ik.faults = {"retry_original_signature": True}
    with CallbackReceiver(statuses=[500, 500]) as hooks:
        upload(ik, extensions=[{"name": "remove-bg"}], webhook_url=hooks.url)
        assert ik.wait_idle(20)
        calls = hooks.requests
    assert len(calls) == 3
    signatures = {(c.headers["webhook-timestamp"], c.headers["x-ik-signature"]) for c in calls}
    assert len(signatures) == 1  # the very same headers each time
    assert verify(calls[-1].body, calls[-1].headers, ik.webhook_secrets)
    # A receiver with a tolerance window sees the retry as stale once it is old enough.
    late = float(calls[0].headers["webhook-timestamp"]) + 600
    with pytest.raises(SignatureStale):
        verify(calls[-1].body, calls[-1].headers, ik.webhook_secrets, now=late)
    [callback] = ik.state()["callbacks"]
    assert [a["signatureTimestamp"] for a in callback["attempts"]] == [
        calls[0].headers["webhook-timestamp"]
    ] * 3


def test_retries_are_signed_afresh_by_default(ik):
    with CallbackReceiver(statuses=[500]) as hooks:
        upload(ik, extensions=[{"name": "remove-bg"}], webhook_url=hooks.url)
        assert ik.wait_idle(20)
        first, second = hooks.requests
    # Same webhook-id (one message), separately signed attempts.
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert verify(second.body, second.headers, ik.webhook_secrets)
