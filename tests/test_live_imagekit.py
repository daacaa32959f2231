"""Against a real ImageKit account: settles what the contract marks UNCONFIRMED.

Skipped unless these are set (see the README, "Using a real ImageKit account"):

    IMAGEKIT_LIVE_PRIVATE_KEY     private_...            (costs 2-3 remove-bg runs per run)
    IMAGEKIT_LIVE_URL_ENDPOINT    https://ik.imagekit.io/<your id>
    IMAGEKIT_LIVE_WEBHOOK_URL     a public https URL forwarded to this machine (e.g. a tunnel)
    IMAGEKIT_LIVE_WEBHOOK_PORT    the local port that URL reaches (default 8791)
    IMAGEKIT_LIVE_WEBHOOK_SECRET  optional: the dashboard's whsec_ secret, to check signatures
    IMAGEKIT_LIVE_RETRY_WAIT      optional: seconds to wait for a retried callback (default 0:
                                  not checked; ImageKit's retry interval is not documented)

What each run records, in var/live-imagekit/findings.json and on stdout:

- whether the result is a new version of the uploaded file or another file (``fileId``);
- the result's ``mime``, ``name``, ``hasAlpha`` and ``versionInfo``;
- whether callbacks to a per-request ``webhookUrl`` are signed, with which schemes, and whether
  a retry carries a fresh timestamp;
- the fields of a FAILURE callback's ``error``.

The assertions are only on what the app relies on: every callback parses with the app's parser,
a signed one verifies with the configured secret, and the result downloads with ``orig-true``
from the endpoint's host. docs/EMULATOR.md lists the assumptions this module settles.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from imagekit_bgremove.callback import parse_callback
from imagekit_bgremove.client import ImageKitClient, original_url
from imagekit_bgremove.images import sniff_image
from imagekit_bgremove.removebg import RemoveBgOptions
from imagekit_bgremove.signatures import SIGNATURE_HEADERS, has_signature, verify_callback

KEY = os.environ.get("IMAGEKIT_LIVE_PRIVATE_KEY", "")
ENDPOINT = os.environ.get("IMAGEKIT_LIVE_URL_ENDPOINT", "").rstrip("/")
HOOK = os.environ.get("IMAGEKIT_LIVE_WEBHOOK_URL", "").rstrip("/")
PORT = int(os.environ.get("IMAGEKIT_LIVE_WEBHOOK_PORT", "8791"))
SECRET = os.environ.get("IMAGEKIT_LIVE_WEBHOOK_SECRET", "")
RETRY_WAIT = float(os.environ.get("IMAGEKIT_LIVE_RETRY_WAIT", "0"))
# Only to rehearse this module against the emulator; a real run leaves them unset.
UPLOAD_BASE = os.environ.get("IMAGEKIT_LIVE_UPLOAD_BASE", "https://upload.imagekit.io")
API_BASE = os.environ.get("IMAGEKIT_LIVE_API_BASE", "https://api.imagekit.io")
FOLDER = "/imagekit-bgremove-live"
PHOTO = Path(__file__).resolve().parent.parent / "example_project" / "sample_images" / "coffee.jpg"
FINDINGS = Path(__file__).resolve().parent.parent / "var" / "live-imagekit" / "findings.json"

pytestmark = pytest.mark.skipif(
    not (KEY and ENDPOINT and HOOK),
    reason="set IMAGEKIT_LIVE_PRIVATE_KEY, IMAGEKIT_LIVE_URL_ENDPOINT and "
    "IMAGEKIT_LIVE_WEBHOOK_URL to run against a real ImageKit account",
)


class Receiver:
    """Takes callbacks on PORT; answers the first ``fail_first`` of each path with 500."""

    def __init__(self, fail_first: int = 0):
        self.calls: queue.Queue[dict[str, Any]] = queue.Queue()
        self.fail_first = fail_first
        self.seen: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                count = receiver.seen[self.path] = receiver.seen.get(self.path, 0) + 1
                status = 500 if count <= receiver.fail_first else 200
                receiver.calls.put(
                    {
                        "path": self.path,
                        "at": time.time(),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "answered": status,
                    }
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def next(self, path: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                call = self.calls.get(timeout=left)
            except queue.Empty:
                return None
            if call["path"] == path:
                return call
        return None


@pytest.fixture(scope="module")
def client() -> ImageKitClient:
    parts = urlsplit(ENDPOINT)
    with ImageKitClient(
        private_key=KEY,
        upload_base_url=UPLOAD_BASE,
        api_base_url=API_BASE,
        timeout=(10, 120),
        max_retries=2,
        backoff=1,
        backoff_max=30,
    ) as live:
        live.test_host = parts.netloc  # type: ignore[attr-defined]
        yield live


@pytest.fixture(scope="module")
def findings() -> dict[str, Any]:
    found: dict[str, Any] = {}
    yield found
    FINDINGS.parent.mkdir(parents=True, exist_ok=True)
    FINDINGS.write_text(json.dumps(found, indent=2, default=str))
    print("\nfindings:", json.dumps(found, indent=2, default=str))


def _signature_facts(call: dict[str, Any]) -> dict[str, Any]:
    headers = call["headers"]
    facts: dict[str, Any] = {
        "signed": has_signature(headers),
        "schemes": [h for h in SIGNATURE_HEADERS if h in headers],
        "timestamp": headers.get("webhook-timestamp") or headers.get("x-ik-signature", "")[:16],
    }
    if facts["signed"] and SECRET:
        verified = verify_callback(call["body"], headers, [SECRET], required=True, tolerance=900)
        facts["verifies_with_secret"] = verified.scheme if verified else None
    return facts


def test_a_successful_removal(client, findings):
    path = f"/live-success-{int(time.time())}"
    with Receiver(fail_first=1 if RETRY_WAIT else 0) as receiver:
        uploaded = client.upload(
            PHOTO.read_bytes(),
            "live-coffee.jpg",
            folder=FOLDER,
            extensions=[RemoveBgOptions().to_extension()],
            webhook_url=f"{HOOK}{path}",
        )
        findings["upload_extension_status"] = uploaded.get("extensionStatus")
        first = receiver.next(path, timeout=180)
        assert first is not None, "no callback within 3 minutes (is the webhook URL reachable?)"
        payload = json.loads(first["body"])
        callback = parse_callback(payload)
        assert callback.succeeded and callback.result is not None
        result = callback.result
        findings["success"] = {
            "same_file_id": result.file_id == uploaded["fileId"],
            "uploaded_file_id": uploaded["fileId"],
            "result_file_id": result.file_id,
            "uploaded_version": (uploaded.get("versionInfo") or {}).get("id"),
            "result_version": result.version_id,
            "mime": result.mime,
            "name": result.name,
            "has_alpha": payload.get("fileObject", {}).get("hasAlpha"),
            "top_level_keys": sorted(payload),
            "file_object_keys": sorted(payload.get("fileObject") or {}),
            **_signature_facts(first),
        }
        if SECRET and findings["success"]["signed"]:
            assert findings["success"]["verifies_with_secret"]
        if RETRY_WAIT:
            retry = receiver.next(path, timeout=RETRY_WAIT)
            findings["retry"] = (
                {"after_seconds": retry["at"] - first["at"], **_signature_facts(retry)}
                if retry
                else f"no retry within {RETRY_WAIT:g} s after a 500"
            )
        data, media_type = client.download(
            original_url(result.url), max_bytes=50 * 1024 * 1024, allowed_hosts=[client.test_host]
        )
        findings["download"] = {"media_type": media_type, "format": sniff_image(data[:16])}
        assert sniff_image(data[:16]) is not None


def test_a_failing_removal(client, findings):
    path = f"/live-failure-{int(time.time())}"
    with Receiver() as receiver:
        uploaded = client.upload(
            b"this is not an image",
            "live-not-an-image.jpg",
            folder=FOLDER,
            extensions=[RemoveBgOptions().to_extension()],
            webhook_url=f"{HOOK}{path}",
        )
        findings["failure_upload_extension_status"] = uploaded.get("extensionStatus")
        call = receiver.next(path, timeout=180)
        if call is None:
            findings["failure"] = "no callback within 3 minutes"
            return
        payload = json.loads(call["body"])
        callback = parse_callback(payload)
        findings["failure"] = {
            "succeeded": callback.succeeded,
            "error": payload.get("error"),
            "reason_the_app_shows": callback.reason,
            "top_level_keys": sorted(payload),
            **_signature_facts(call),
        }
