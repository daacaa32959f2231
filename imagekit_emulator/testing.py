"""Helpers for tests: a throw-away emulator and a webhook receiver that records callbacks.

```python
with running_emulator() as ik, CallbackReceiver() as hooks:
    ... upload with webhookUrl=hooks.url ...
    ik.wait_idle(10)
    [callback] = hooks.requests
```
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .config import EmulatorConfig
from .server import Emulator

#: Wall-clock seconds per ImageKit second in tests: 200x faster than real time. Callback
#: retries come after 50 ms, 100 ms, ... (10 s, 20 s, ... in ImageKit time) and end after
#: 7.2 minutes (ImageKit's 24 hours).
FAST_TIME_SCALE = 0.005
#: The settings ``running_emulator`` starts with: real ImageKit timings, compressed by
#: ``FAST_TIME_SCALE``; network timeouts (the webhook's 30 s) stay at least 5 wall seconds,
#: so a loaded test machine is not taken for a slow receiver.
FAST_CALLBACKS: dict[str, Any] = {"time_scale": FAST_TIME_SCALE, "min_timeout": 5.0}


def sample_image(
    width: int = 200,
    height: int = 150,
    *,
    fmt: str = "JPEG",
    colour: tuple[int, int, int] = (200, 30, 30),
    background: tuple[int, int, int] = (255, 255, 255),
) -> bytes:
    """A small encoded picture: a coloured ellipse on a plain background (needs Pillow)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height), background)
    ImageDraw.Draw(im).ellipse(
        (width // 4, height // 5, width * 3 // 4, height * 4 // 5), fill=colour
    )
    buffer = io.BytesIO()
    im.save(buffer, fmt)
    return buffer.getvalue()


@contextlib.contextmanager
def running_emulator(**config: Any) -> Iterator[Emulator]:
    """Start an emulator on a free port (``FAST_CALLBACKS``: ImageKit's timings compressed by
    ``FAST_TIME_SCALE``, unless overridden), yield it, stop it. Any ``EmulatorConfig`` field
    can be passed."""
    settings: dict[str, Any] = {"port": 0, **FAST_CALLBACKS, **config}
    emulator = Emulator(EmulatorConfig.from_mapping(settings))
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    received_at: float = field(default_factory=time.time)

    def json(self) -> Any:
        return json.loads(self.body)


class CallbackReceiver:
    """A tiny HTTP server that records every request and answers with the queued statuses
    (then ``default_status``). ``delay`` seconds are slept before answering."""

    def __init__(
        self,
        statuses: Iterable[int] = (),
        *,
        default_status: int = 200,
        delay: float = 0.0,
        host: str = "127.0.0.1",
    ):
        self.statuses = list(statuses)
        self.default_status = default_status
        self.delay = delay
        self.requests: list[ReceivedRequest] = []
        self._cond = threading.Condition()
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver._cond:
                    status = (
                        receiver.statuses.pop(0) if receiver.statuses else (receiver.default_status)
                    )
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._cond:
                    receiver.requests.append(
                        ReceivedRequest(
                            self.command, self.path, dict(self.headers.items()), body, status
                        )
                    )
                    receiver._cond.notify_all()
                reply = b'{"ok": true}'
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass

            do_PUT = do_GET = do_POST

        self._server = ThreadingHTTPServer((host, 0), _Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}/hook"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> CallbackReceiver:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Wait until at least ``count`` requests arrived; returns them all (maybe fewer)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return list(self.requests)


__all__ = [
    "FAST_CALLBACKS",
    "FAST_TIME_SCALE",
    "CallbackReceiver",
    "ReceivedRequest",
    "running_emulator",
    "sample_image",
]
