"""How much memory does a 25 MB upload take? Target: peak <= 2x the file size.

    python bench/upload_memory.py [--size-mb 25] [--target 2.0]

Starts a local HTTP server (stdlib, in a thread) that reads and discards the upload body and
answers 200 JSON, writes a file of random bytes to disk, uploads it with ImageKitClient (from the
path, and from a non-seekable stream, which the client spools to a temporary file first) and
reports the tracemalloc peak of Python allocations during each upload and the growth of the
process's maximum resident set size. Exits 1 if a peak exceeds the target ratio.
No Django settings are needed: the client gets every setting as an argument.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tempfile
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagekit_bgremove.client import ImageKitClient

MB = 1024 * 1024


class DiscardingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        remaining = int(self.headers.get("Content-Length", "0"))
        total = 0
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 256 * 1024))
            if not chunk:
                break
            total += len(chunk)
            remaining -= len(chunk)
        body = json.dumps({"fileId": "bench", "size": total}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class OneWay(io.RawIOBase):
    """A pipe-like stream over a file: readable once, not seekable."""

    def __init__(self, path: Path):
        self._file = path.open("rb")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:
        return self._file.readinto(buffer)

    def close(self) -> None:
        self._file.close()
        super().close()


def max_rss_bytes() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024  # Linux reports KiB


def measure(label: str, client: ImageKitClient, make_input, size: int) -> tuple[float, int, int]:
    source = make_input()
    rss_before = max_rss_bytes()
    tracemalloc.start()
    tracemalloc.reset_peak()
    started = time.perf_counter()
    try:
        result = client.upload(source, "bench.jpg", folder="/bench", tags=["bench"])
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if hasattr(source, "close"):
            source.close()
    rss_growth = max_rss_bytes() - rss_before
    if result.get("size", 0) < size:
        raise SystemExit(f"{label}: the server received {result.get('size')} of {size} bytes")
    ratio = peak / size
    print(
        f"{label:<28} peak {peak / MB:8.2f} MiB  ratio {ratio:6.3f}  "
        f"max RSS growth {rss_growth / MB:6.2f} MiB (now {max_rss_bytes() / MB:.0f} MiB)  "
        f"({elapsed:.2f} s, "
        f"{size / MB / max(elapsed, 1e-9):.0f} MiB/s)"
    )
    return ratio, peak, rss_growth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=25.0)
    parser.add_argument("--target", type=float, default=2.0, help="maximum peak / file size")
    args = parser.parse_args(argv)
    size = int(args.size_mb * MB)

    server = ThreadingHTTPServer(("127.0.0.1", 0), DiscardingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    client = ImageKitClient(
        private_key="private_bench_key",
        upload_base_url=base,
        api_base_url=base,
        timeout=(5, 60),
        max_retries=0,
        backoff=0.1,
        backoff_max=1,
    )
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.jpg"
        with path.open("wb") as handle:  # written in pieces: the file never sits in memory
            for _ in range(size // MB):
                handle.write(os.urandom(MB))
            handle.write(os.urandom(size % MB))
        print(f"upload of {size / MB:.1f} MiB to {base}; target peak <= {args.target:.1f}x size")
        results = [
            measure("from a path", client, lambda: path, size),
            measure("from an open file", client, lambda: path.open("rb"), size),
            measure("from a non-seekable stream", client, lambda: OneWay(path), size),
        ]
    client.close()
    server.shutdown()
    server.server_close()

    worst = max(ratio for ratio, _, _ in results)
    verdict = "OK" if worst <= args.target else "MISSED"
    print(f"worst ratio {worst:.3f} (target <= {args.target:.1f}): {verdict}")
    return 0 if worst <= args.target else 1


if __name__ == "__main__":
    raise SystemExit(main())
