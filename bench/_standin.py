"""An ImageKit stand-in for the benchmarks: it does no work and keeps nothing. By default it
answers at once, so what is timed is the client's side; with UPLOAD_MS and MB_PER_S an upload
takes ImageKit-like time (UPLOAD_MS plus the body's transfer at MB_PER_S) before its answer.
HTTP/1.1 with keep-alive, one thread per connection.

    python bench/_standin.py PORT [UPLOAD_MS MB_PER_S]

- ``POST /api/v1/files/upload`` reads the whole body and answers 200 with a file object
  (``extensionStatus`` ``{"remove-bg": "pending"}``): a remove-bg upload accepted;
- ``GET /v1/files`` answers ``[]``; other GETs a file's details; anything else 404.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ids = itertools.count(1)
#: Seconds an upload takes at ImageKit, and its transfer rate (bytes/s); 0: at once.
UPLOAD_SECONDS = 0.0
BYTES_PER_SECOND = 0.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body in one write (flushed after each request): written apart, the body
    # waits for the client's delayed ACK of the headers (Nagle), 40 ms on every request, which
    # made this "zero-latency" stand-in the slowest part of what it measured.
    wbufsize = 1 << 16

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, name: str = "image.jpg") -> dict:
        number = next(_ids)
        file_id = f"{number:024x}"
        return {
            "fileId": file_id,
            "name": name,
            "filePath": f"/bgremove/{name}",
            "url": f"http://127.0.0.1/ik/bgremove/{name}",
            "fileType": "image",
            "size": 1,
            "versionInfo": {"id": file_id, "name": "Version 1"},
            "extensionStatus": {"remove-bg": "pending"},
        }

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
        if self.path.startswith("/api/v1/files/upload"):
            if UPLOAD_SECONDS or BYTES_PER_SECOND:
                time.sleep(UPLOAD_SECONDS + (length / BYTES_PER_SECOND if BYTES_PER_SECOND else 0))
            self._answer(200, self._file())
        else:
            self._answer(404, {"message": "not found"})

    def do_GET(self) -> None:
        if self.path.startswith("/v1/files?") or self.path == "/v1/files":
            self._answer(200, [])
        else:
            self._answer(200, self._file())


def main() -> None:
    global UPLOAD_SECONDS, BYTES_PER_SECOND
    if len(sys.argv) > 2:
        UPLOAD_SECONDS = float(sys.argv[2]) / 1000
        BYTES_PER_SECOND = float(sys.argv[3]) * 1_000_000
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
