"""Run one image through the whole remove-bg loop, without the web server or a task worker.

    python manage.py remove_background photo.jpg --output photo_nobg.png [--bg-color fff]

1. uploads the image with the remove-bg extension (``client.get_client()``, so whatever ImageKit
   the settings point at: ImageKit with ``PRIVATE_KEY``, or the running emulator at
   ``EMULATOR_URL``);
2. receives the callback on a temporary listener on ``127.0.0.1:<free port>`` (the upload's
   ``webhookUrl``), checking its signature like the real endpoint does;
3. downloads the result and writes it to ``--output``.

A real ImageKit account cannot reach a listener on 127.0.0.1: with a real account the command
also polls the file's details every few seconds and takes the first new version as the result.
The uploaded file stays in the ImageKit media library (under ``FOLDER``/cli). Each run counts
against ``DAILY_REMOVAL_LIMIT`` like a request from the site.
"""

from __future__ import annotations

import io
import json
import os
import queue
import secrets
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from imagekit_bgremove import safejson, signatures
from imagekit_bgremove.callback import CallbackError, RemoteFile, parse_callback
from imagekit_bgremove.conf import app_settings
from imagekit_bgremove.exceptions import ImageKitError
from imagekit_bgremove.images import sniff_image
from imagekit_bgremove.inputs import InputError, check_options, check_pixels
from imagekit_bgremove.lifecycle import Refused
from imagekit_bgremove.removebg import OptionsError, RemoveBgOptions, extension_status
from imagekit_bgremove.services import budget, remote
from imagekit_bgremove.services.finalization import fetch_result

MAX_CALLBACK_BYTES = 1024 * 1024
POLL_INTERVAL = 3.0


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an image, by Pillow when installed, else from a PNG header."""
    try:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except ImportError:
        pass
    except Exception:
        return None
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def as_png(data: bytes) -> bytes:
    """``data`` as PNG: unchanged when it already is one (or when Pillow is not installed)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    try:
        import io

        from PIL import Image
    except ImportError:
        return data
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()


class CallbackListener:
    """A one-shot local HTTP server that takes ImageKit's callback and hands it over."""

    def __init__(
        self, secrets_: list[str], *, require_signature: bool, tolerance: float, port: int = 0
    ):
        self.path = f"/callback/{secrets.token_urlsafe(16)}/"
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.problems: queue.Queue[str] = queue.Queue()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != listener.path:
                    return self._answer(404, "unknown path")
                try:
                    length = int(self.headers.get("Content-Length") or "0")
                except ValueError:
                    return self._answer(400, "bad Content-Length")
                if length > MAX_CALLBACK_BYTES:
                    return self._answer(413, "too large")
                body = self.rfile.read(length)
                headers = dict(self.headers.items())
                try:
                    signatures.verify_callback(
                        body, headers, secrets_, required=require_signature, tolerance=tolerance
                    )
                except signatures.SignatureError as exc:
                    listener.problems.put(f"refused a callback: signature {exc.reason}")
                    return self._answer(401, exc.reason)
                try:
                    payload = safejson.loads(body)
                except ValueError:
                    listener.problems.put("refused a callback: body is not JSON")
                    return self._answer(400, "not JSON")
                if not isinstance(payload, dict):
                    return self._answer(400, "not a JSON object")
                listener.received.put(payload)
                return self._answer(200, "ok")

            def do_GET(self) -> None:
                self._answer(405, "POST only")

            def _answer(self, status: int, message: str) -> None:
                data = json.dumps({"message": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the command prints its own progress

        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise CommandError(
                f"Cannot listen for the callback on 127.0.0.1:{port} ({exc.strerror or exc}); "
                "choose another --callback-port, or 0 for any free port."
            ) from exc
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="remove_background-callback", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{self.path}"

    def __enter__(self) -> CallbackListener:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Command(BaseCommand):
    help = (
        "Remove the background of one image file through ImageKit (or the emulator at "
        "EMULATOR_URL when no PRIVATE_KEY is configured) and write the result as a PNG. Needs no "
        "web server and no task worker."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("image", help="Path of the image to process.")
        parser.add_argument("--output", "-o", required=True, help="Where to write the PNG result.")
        parser.add_argument("--bg-color", help="Background colour: hex (81d4fa, #fff) or a name.")
        parser.add_argument("--bg-image-url", help="URL of a background image.")
        parser.add_argument("--add-shadow", action="store_true", help="Add a shadow (cars only).")
        parser.add_argument(
            "--no-semitransparency",
            action="store_true",
            help="Turn off semi-transparency (car windows).",
        )
        parser.add_argument(
            "--callback-port",
            type=int,
            default=0,
            help="Local port that receives ImageKit's callback (default 0: any free port; the "
            "command prints it).",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=120.0,
            help="Seconds to wait for the result (default 120).",
        )

    def say(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()

    def handle(self, *args: Any, **opts: Any) -> None:
        source = Path(opts["image"]).expanduser()
        output = Path(opts["output"]).expanduser()
        timeout = float(opts["timeout"])
        if timeout <= 0:
            raise CommandError("--timeout must be more than 0 seconds.")
        data = self._read_image(source)
        if not output.parent.is_dir():
            raise CommandError(f"Cannot write {output}: directory {output.parent} does not exist.")
        options = self._options(opts)
        try:
            # A run spends extension units like any other request: it counts against the
            # day's budget before anything is sent (a failed upload does not give it back).
            budget.reserve(1)
        except budget.BudgetExhausted as exc:
            raise CommandError(f"Nothing was sent: {exc}") from exc

        try:
            app_settings.require_imagekit()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        self._run(source, data, output, options, timeout, opts["callback_port"])

    def _run(
        self,
        source: Path,
        data: bytes,
        output: Path,
        options: RemoveBgOptions,
        timeout: float,
        callback_port: int,
    ) -> None:
        from imagekit_bgremove.client import get_client

        client = get_client()
        secrets_ = app_settings.webhook_secrets
        with CallbackListener(
            secrets_,
            require_signature=bool(app_settings.WEBHOOK_REQUIRE_SIGNATURE),
            tolerance=float(app_settings.WEBHOOK_TOLERANCE_SECONDS),
            port=callback_port,
        ) as listener:
            self.say(f"waiting for the callback on {listener.url}")
            self.say(
                f"uploading {source.name} ({len(data) // 1024 or 1} KB) to "
                f"{client.upload_base_url} with remove-bg ({options})…"
            )
            folder = str(app_settings.FOLDER or "/").rstrip("/") + "/cli"
            try:
                uploaded = client.upload(
                    data,
                    source.name,
                    folder=folder,
                    use_unique_file_name=True,
                    extensions=[options.to_extension()],
                    webhook_url=listener.url,
                )
            except ImageKitError as exc:
                raise CommandError(f"Upload failed: {exc}") from exc
            file_id = str(uploaded.get("fileId") or "")
            state = extension_status(uploaded)
            if state == "failed":
                raise CommandError(
                    f"ImageKit refused to run remove-bg on {source.name} (fileId {file_id}); "
                    "check the account's extension units and the options."
                )
            self.say(f"pending at ImageKit (fileId {file_id})")
            version = str((uploaded.get("versionInfo") or {}).get("id") or "")
            poll = state == "success" or not app_settings.emulator_mode
            result = self._wait(listener, file_id, version, timeout, poll=poll)
        self.say(f"result received (version {result.version_id or '?'})")
        try:
            content, _fmt = fetch_result(result.url)
        except (ImageKitError, Refused) as exc:
            raise CommandError(f"Downloading the result failed: {exc}") from exc
        try:
            png = as_png(content)
        except Exception as exc:
            raise CommandError(f"The result is not an image ({exc}).") from exc
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(png)
            tmp.replace(output)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CommandError(f"Cannot write {output}: {exc.strerror or exc}") from exc
        size = image_size(png)
        self.say(f"wrote {output} ({size[0]}x{size[1]})" if size else f"wrote {output}")

    # -- steps -----------------------------------------------------------------------------------
    def _read_image(self, source: Path) -> bytes:
        if not source.exists():
            raise CommandError(f"No such file: {source}")
        if not source.is_file():
            raise CommandError(f"Not a file: {source}")
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {source}: {exc.strerror or exc}") from exc
        if not data:
            raise CommandError(f"{source} is empty.")
        if sniff_image(data[:16]) is None:
            raise CommandError(
                f"{source} is not an image (expected JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF)."
            )
        try:
            check_pixels(io.BytesIO(data))
        except InputError as exc:
            raise CommandError(f"{exc} Nothing was sent.") from exc
        return data

    def _options(self, opts: dict[str, Any]) -> RemoveBgOptions:
        given: dict[str, Any] = {}
        if opts.get("bg_color"):
            given["bg_color"] = opts["bg_color"]
        if opts.get("bg_image_url"):
            given["bg_image_url"] = opts["bg_image_url"]
        if opts.get("add_shadow"):
            given["add_shadow"] = True
        if opts.get("no_semitransparency"):
            given["semitransparency"] = False
        try:
            options = RemoveBgOptions.from_dict(given)
            check_options(options)
            return options
        except OptionsError as exc:
            raise CommandError(f"Invalid options: {exc}") from exc

    def _wait(
        self,
        listener: CallbackListener,
        file_id: str,
        version: str,
        timeout: float,
        *,
        poll: bool,
    ) -> RemoteFile:
        """The result, from the callback or (a real account, which cannot reach this machine's
        listener) by asking ImageKit for a new version of the file."""
        deadline = time.monotonic() + timeout
        poll = poll and bool(file_id)
        next_poll = time.monotonic() + (0 if poll else POLL_INTERVAL)
        while True:
            while not listener.problems.empty():
                self.stderr.write(listener.problems.get_nowait())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                how = "callback or new version" if poll else "callback"
                raise CommandError(
                    f"No {how} from ImageKit within {timeout:g} s (fileId {file_id}); "
                    "try a longer --timeout."
                )
            try:
                payload = listener.received.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                payload = None
            if payload is not None:
                result = self._from_callback(payload, file_id)
                if result is not None:
                    return result
                continue
            if poll and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + POLL_INTERVAL
                try:
                    found = remote.find_new_version(file_id, version)
                except ImageKitError as exc:
                    if not exc.retryable:
                        raise CommandError(f"Checking the file failed: {exc}") from exc
                    continue
                if found is not None:
                    return found

    def _from_callback(self, payload: Any, file_id: str) -> RemoteFile | None:
        try:
            callback = parse_callback(payload)
        except CallbackError as exc:
            self.stderr.write(f"ignoring a callback: {exc}")
            return None
        if not callback.succeeded:
            raise CommandError(f"ImageKit could not remove the background: {callback.reason}")
        assert callback.result is not None
        if file_id and callback.result.file_id != file_id:
            self.stderr.write(f"note: the result is another file ({callback.result.file_id})")
        return callback.result
