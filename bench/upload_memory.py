"""Peak memory of sending a 25 MB original: ours against ImageKit's official Python SDK.

    python bench/upload_memory.py [--size-mb 25] [--max-ratio 0.25]

Starts a local HTTP server (stdlib, in a process of its own: tracemalloc counts every thread of
this one, and a server's read buffers would dwarf the clients') that reads and discards the
upload body and answers 200 JSON, writes a file of random bytes to disk, and uploads it with the
options of a submit (remove-bg, webhookUrl, a fixed name that overwrites) from a path, an open
file and a non-seekable stream: with ImageKitClient, and with the SDK (``imagekitio``, the
``bench`` extra). Each side's first upload (lazy imports, its connection pool) is a small one
left out. It reports the tracemalloc peak of Python allocations during each upload and the
growth of the process's maximum resident set size, and the ratio of our worst peak to the
SDK's worst; exits 1 above ``--max-ratio``. No Django settings are needed: the client gets
every setting as an argument.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagekit_bgremove.client import ImageKitClient

MB = 1024 * 1024
#: What a submit sends besides the file (services/submission.py).
EXTENSIONS = [{"name": "remove-bg", "options": {"add_shadow": False, "semitransparency": True}}]
WEBHOOK = "https://shop.example/imagekit-bgremove/webhooks/imagekit/token/"


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


def ours(client: ImageKitClient):
    def send(source) -> dict:
        return client.upload(
            source,
            "bench.jpg",
            folder="/bench",
            use_unique_file_name=False,
            overwrite_file=True,
            extensions=EXTENSIONS,
            webhook_url=WEBHOOK,
        )

    return send


def sdk(base: str):
    try:
        from imagekitio import ImageKit
    except ImportError:
        raise SystemExit("the SDK side needs imagekitio: pip install -e '.[bench]'") from None

    client = ImageKit(private_key="private_bench_key", base_url=base, max_retries=0)

    def send(source) -> dict:
        answer = client.files.upload(
            # A path as the SDK takes one; a file object with its name, as a multipart part.
            file=source if isinstance(source, Path) else ("bench.jpg", source),
            file_name="bench.jpg",
            folder="/bench",
            use_unique_file_name=False,
            overwrite_file=True,
            extensions=EXTENSIONS,
            webhook_url=WEBHOOK,
        )
        return answer.to_dict()

    return send


def measure(label: str, send, make_input, size: int) -> int | None:
    """The peak of one upload, or None (said) when the server did not receive the whole file."""
    source = make_input()
    rss_before = max_rss_bytes()
    tracemalloc.start()
    tracemalloc.reset_peak()
    started = time.perf_counter()
    try:
        result = send(source)
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if hasattr(source, "close"):
            source.close()
    rss_growth = max_rss_bytes() - rss_before
    if result.get("size", 0) < size:
        print(f"{label:<28} NOT SENT: the server received {result.get('size')} of {size} bytes")
        return None
    ratio = peak / size
    print(
        f"{label:<28} peak {peak / MB:8.2f} MiB  ratio {ratio:6.3f}  "
        f"max RSS growth {rss_growth / MB:6.2f} MiB (now {max_rss_bytes() / MB:.0f} MiB)  "
        f"({elapsed:.2f} s, "
        f"{size / MB / max(elapsed, 1e-9):.0f} MiB/s)"
    )
    return peak


def serve() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), DiscardingHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    if (argv if argv is not None else sys.argv[1:]) == ["--serve"]:
        serve()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=25.0)
    parser.add_argument(
        "--max-ratio", type=float, default=0.25, help="maximum peak, ours / the SDK's"
    )
    args = parser.parse_args(argv)
    size = int(args.size_mb * MB)

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    base = f"http://127.0.0.1:{server.stdout.readline().strip()}"
    client = ImageKitClient(
        private_key="private_bench_key",
        upload_base_url=base,
        api_base_url=base,
        timeout=(5, 60),
        max_retries=0,
        backoff=0.1,
        backoff_max=1,
    )
    try:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "bench.jpg"
            with path.open("wb") as handle:  # written in pieces: the file never sits in memory
                for _ in range(size // MB):
                    handle.write(os.urandom(MB))
                handle.write(os.urandom(size % MB))
            print(f"upload of {size / MB:.1f} MiB to {base}, the options of a submit")
            send, sdk_send = ours(client), sdk(base)
            # A worker sends many uploads: each side's first one (its lazy imports, its connection
            # pool) is left out of the figures.
            small = Path(directory) / "small.jpg"
            small.write_bytes(os.urandom(1024))
            for warm in (send, sdk_send):
                with small.open("rb") as handle:
                    warm(handle)
            inputs = {
                "from a path": lambda: path,
                "from an open file": lambda: path.open("rb"),
                "non-seekable stream": lambda: OneWay(path),
            }
            peaks: dict[str, dict[str, int | None]] = {"ours": {}, "SDK": {}}
            for kind, make_input in inputs.items():
                for side, sender in (("ours", send), ("SDK", sdk_send)):
                    peaks[side][kind] = measure(f"{side}, {kind}", sender, make_input, size)
    finally:
        client.close()
        server.terminate()
        server.wait(10)

    if None in peaks["ours"].values():
        print("FAIL: an upload of ours did not arrive whole")
        return 1
    # The SDK's worst over the inputs it can send at all.
    worst = max(p for p in peaks["ours"].values() if p is not None)
    sdk_worst = max(p for p in peaks["SDK"].values() if p is not None)
    ratio = worst / sdk_worst
    passed = ratio <= args.max_ratio
    for kind in inputs:
        ours_peak, sdk_peak = peaks["ours"][kind], peaks["SDK"][kind]
        shown = f"{ours_peak / sdk_peak:.3f}" if ours_peak and sdk_peak else "- (SDK: not sent)"
        print(f"  {kind:<22} ours / SDK {shown}")
    print(
        f"RATIO peak memory of a {size / MB:.0f} MiB upload, ours (worst) / imagekitio SDK: "
        f"{ratio:.3f} ({worst / MB:.2f} / {sdk_worst / MB:.2f} MiB; goal <= {args.max_ratio:g}) "
        + ("PASS" if passed else "FAIL")
    )
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
