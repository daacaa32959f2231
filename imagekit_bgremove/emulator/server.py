"""The emulator's HTTP service and the ``Emulator`` that runs it.

One server stands in for both ``upload.imagekit.io`` (``POST /api/v1/files/upload``) and
``api.imagekit.io`` (``/v1/files/...``), delivers files under ``/ik/`` like a URL endpoint,
and offers ``/_emulator/...`` control endpoints (no auth) for tests and operators.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.message
import http.client
import io
import json
import logging
import mimetypes
import re
import secrets
import socket
import string
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qs, parse_qsl, unquote, urljoin, urlsplit

from imagekit_bgremove import __version__
from imagekit_bgremove.options import EXTENSION_NAME, OptionsError, RemoveBgOptions

from .callbacks import CallbackDispatcher, WorkerPool
from .config import (
    HELP_TEXT,
    REMOVE_BG_UNITS,
    EmulatorConfig,
    SegmentationModelError,
    display_host,
)
from .faults import ApiFault, FaultInjector, Faults, FaultsError
from .store import (
    Activity,
    FileRecord,
    Job,
    PathExistsError,
    Store,
    StoreError,
    Version,
    VersionLimitError,
    iso,
    now_ms,
)

logger = logging.getLogger("imagekit_bgremove.emulator")

CONTROL_PREFIX = "/_emulator"
DELIVERY_PREFIX = "/ik"
JOB_ACTIVITY = "jobs"

#: Text fields of a multipart upload, and JSON bodies, may not exceed this.
MAX_FIELD_BYTES = 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024
MAX_PARTS = 100
MAX_HEADER_BYTES = 16 * 1024
#: Oversized bodies are read and thrown away (to answer cleanly) up to this much; beyond it
#: the connection is closed.
DRAIN_LIMIT = 256 * 1024 * 1024
FETCH_TIMEOUT = 8.0  # ImageKit's limit for URL uploads

KNOWN_EXTENSIONS = (
    EXTENSION_NAME,
    "google-auto-tagging",
    "aws-auto-tagging",
    "ai-auto-description",
    "ai-tasks",
    "saved-extension",
)
UNSUPPORTED_EXTENSIONS = ("ai-tasks", "saved-extension")
RESPONSE_FIELDS = (
    "tags",
    "customCoordinates",
    "isPrivateFile",
    "embeddedMetadata",
    "isPublished",
    "customMetadata",
    "metadata",
    "selectedFieldsSchema",
)
_PROBE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
_SUFFIX_ALPHABET = string.ascii_letters + string.digits
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COORDS_RE = re.compile(r"\d+,\d+,\d+,\d+")

MSG_MISSING_FILE = "Your request is missing file parameter."
MSG_MISSING_NAME = "Your request is missing fileName parameter."
MSG_INVALID_FILE = "Your request contains invalid file parameter."
MSG_TOO_LARGE = "Your request contains invalid file parameter. The file size exceeds limits."
MSG_EXISTS = (
    "A file with the same name already exists at the exact location. We could not overwrite "
    "it because both overwriteFile and useUniqueFileName are set to false."
)
MSG_QUOTA = "Extensions quota exceeded."
MSG_NO_FILE = "The requested file does not exist."
MSG_NO_VERSION = "The requested file version does not exist."
MSG_VERSION_LIMIT = "A file can have a maximum of 100 versions."


# ============================================================================ errors


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        help_text: bool = True,
        close: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = dict(errors) if errors else None
        self.headers = dict(headers or {})
        self.help_text = help_text
        self.close = close

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.help_text:
            body["help"] = HELP_TEXT
        if self.errors:
            body["errors"] = self.errors
        return body


def bad_request(message: str, **kwargs: Any) -> ApiError:
    return ApiError(400, message, **kwargs)


class JobFailure(Exception):
    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.message = message
        self.reason = reason


class FetchError(Exception):
    def __init__(self, message: str, *, untrusted: bool = False):
        super().__init__(message)
        self.untrusted = untrusted


# ============================================================================ request bodies


class RequestBody:
    """The request body as a bounded stream (Content-Length or chunked)."""

    def __init__(self, rfile: IO[bytes], length: int | None, chunked: bool):
        self._rfile = rfile
        self._remaining = length or 0
        self._chunked = chunked
        self._chunk_left = 0
        self._done = not chunked and not length
        self.consumed = 0
        self.length = length

    @classmethod
    def from_handler(cls, handler: BaseHTTPRequestHandler) -> RequestBody:
        encoding = (handler.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in encoding:
            return cls(handler.rfile, None, True)
        raw = handler.headers.get("Content-Length")
        if raw is None:
            return cls(handler.rfile, 0, False)
        if not raw.strip().isdigit():
            raise ApiError(400, "Invalid Content-Length header.", close=True)
        return cls(handler.rfile, int(raw), False)

    @property
    def exhausted(self) -> bool:
        return self._done

    def read(self, size: int = 65536) -> bytes:
        if self._done or size <= 0:
            return b""
        data = self._read_chunked(size) if self._chunked else self._read_plain(size)
        self.consumed += len(data)
        return data

    def _read_plain(self, size: int) -> bytes:
        data = self._rfile.read(min(size, self._remaining))
        if not data:
            raise ApiError(400, "The request body ended early.", close=True)
        self._remaining -= len(data)
        if self._remaining <= 0:
            self._done = True
        return data

    def _read_chunked(self, size: int) -> bytes:
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise ApiError(400, "Malformed chunked request body.", close=True)
            try:
                self._chunk_left = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ApiError(400, "Malformed chunked request body.", close=True) from None
            if self._chunk_left == 0:
                while True:  # trailers
                    trailer = self._rfile.readline(8192)
                    if trailer in (b"\r\n", b"\n", b""):
                        break
                self._done = True
                return b""
        data = self._rfile.read(min(size, self._chunk_left))
        if not data:
            raise ApiError(400, "The request body ended early.", close=True)
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._rfile.readline(8) not in (b"\r\n", b"\n"):
            raise ApiError(400, "Malformed chunked request body.", close=True)
        return data

    def read_all(self, limit: int, too_large: Callable[[], ApiError]) -> bytes:
        if self.length is not None and self.length > limit:
            raise too_large()
        out = bytearray()
        while not self._done:
            out += self.read(65536)
            if len(out) > limit:
                raise too_large()
        return bytes(out)

    def drain(self, limit: int = DRAIN_LIMIT) -> bool:
        """Discard the rest; False when it is too much (the connection must then close)."""
        if self._done:
            return True
        if self.length is not None and self.length - self.consumed > limit:
            return False
        drained = 0
        while not self._done:
            chunk = self.read(256 * 1024)
            drained += len(chunk)
            if drained > limit:
                return False
        return True


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: Any  # SpooledTemporaryFile
    size: int = 0

    def read(self) -> bytes:
        self.data.seek(0)
        return self.data.read()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.data.close()


class MultipartError(Exception):
    pass


class _PartTooLarge(Exception):
    def __init__(self, part: str):
        super().__init__(part)
        self.part = part


def parse_multipart(
    body: RequestBody,
    boundary: bytes,
    *,
    file_fields: frozenset[str],
    file_limit: Callable[[str | None], int],
    field_limit: int = MAX_FIELD_BYTES,
) -> tuple[dict[str, str], dict[str, Part]]:
    """Stream-parse multipart/form-data. Parts named in ``file_fields`` are spooled to temporary
    files (whether or not they carry a filename); the others become strings."""
    delimiter = b"--" + boundary
    separator = b"\r\n" + delimiter
    buf = bytearray()
    fields: dict[str, str] = {}
    files: dict[str, Part] = {}
    eof = False

    def fill() -> None:
        nonlocal eof
        chunk = body.read(256 * 1024)
        if chunk:
            buf.extend(chunk)
        else:
            eof = True

    # Preamble: everything before the first delimiter.
    skipped = 0
    while True:
        index = buf.find(delimiter)
        if index >= 0:
            del buf[: index + len(delimiter)]
            break
        keep = len(delimiter) - 1
        if len(buf) > keep:
            skipped += len(buf) - keep
            del buf[: len(buf) - keep]
        if eof or skipped > MAX_HEADER_BYTES:
            raise MultipartError("no multipart boundary found in the body")
        fill()

    try:
        while True:
            while len(buf) < 2 and not eof:
                fill()
            if buf[:2] == b"--":
                break  # closing delimiter; the epilogue is ignored
            while True:  # transport padding, then CRLF
                stripped = buf.lstrip(b" \t")
                if len(stripped) >= 2 or eof:
                    break
                fill()
            del buf[: len(buf) - len(stripped)]
            if buf[:2] != b"\r\n":
                raise MultipartError("malformed boundary line")
            del buf[:2]
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    break
                if len(buf) > MAX_HEADER_BYTES:
                    raise MultipartError("part headers are too long")
                if eof:
                    raise MultipartError("the body ended inside part headers")
                fill()
            if len(files) + len(fields) >= MAX_PARTS:
                raise MultipartError(f"more than {MAX_PARTS} parts")
            name, filename, content_type = _part_headers(bytes(buf[:end]))
            del buf[: end + 4]
            is_file = name in file_fields
            limit = file_limit(filename) if is_file else field_limit
            sink: Any = (
                tempfile.SpooledTemporaryFile(max_size=1024 * 1024)  # noqa: SIM115 - closed below
                if is_file
                else io.BytesIO()
            )
            size = 0
            try:
                while True:
                    index = buf.find(separator)
                    if index >= 0:
                        piece, rest = buf[:index], len(separator) + index
                    else:
                        keep = len(separator) - 1
                        piece, rest = buf[: max(0, len(buf) - keep)], max(0, len(buf) - keep)
                    size += len(piece)
                    if size > limit:
                        raise _PartTooLarge(name)
                    sink.write(piece)
                    del buf[:rest]
                    if index >= 0:
                        break
                    if eof:
                        raise MultipartError("the body ended inside a part")
                    fill()
            except BaseException:
                sink.close()
                raise
            if is_file:
                previous = files.pop(name, None)
                if previous:
                    previous.close()
                files[name] = Part(name, filename, content_type, sink, size)
            else:
                fields[name] = sink.getvalue().decode("utf-8", errors="replace")
    except BaseException:
        for part in files.values():
            part.close()
        raise
    return fields, files


def _part_headers(raw: bytes) -> tuple[str, str | None, str | None]:
    message = email.message.Message()
    for line in raw.decode("utf-8", errors="replace").split("\r\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise MultipartError(f"malformed part header {line[:60]!r}")
        message[key.strip()] = value.strip()
    if message.get_content_disposition() != "form-data":
        raise MultipartError("a part lacks Content-Disposition: form-data")
    name = message.get_param("name", header="content-disposition")
    if not isinstance(name, str) or not name:
        raise MultipartError("a part has no name")
    filename = message.get_filename()
    content_type = message.get("Content-Type")
    return name, filename, content_type


# ============================================================================ helpers


def _form_bool(fields: Mapping[str, str], name: str, default: bool) -> bool:
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise bad_request(f"Your request contains invalid {name} parameter.")


def _parse_tags(raw: Any, *, form: bool) -> list[str] | None:
    if raw is None:
        return None
    if form:
        text = str(raw).strip()
        if text.startswith("["):
            try:
                raw = json.loads(text)
            except ValueError:
                raise bad_request("Your request contains invalid tags parameter.") from None
        else:
            raw = [t.strip() for t in text.split(",") if t.strip()]
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise bad_request("Your request contains invalid tags parameter.")
    tags = [t.strip() for t in raw if t.strip()]
    if any("%" in t for t in tags) or sum(len(t) for t in tags) > 500:
        raise bad_request(
            "Your request contains invalid tags parameter. Tags may not contain % and may have "
            "500 characters in all."
        )
    return tags or None


def _check_webhook_url(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_request("Your request contains invalid webhookUrl parameter.")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request(
            "Your request contains invalid webhookUrl parameter. It must be an absolute "
            "http(s) URL."
        )
    return value.strip()


def sanitize_name(name: str) -> str:
    """ImageKit keeps a-z, A-Z, 0-9, '.' and '-' in file names; anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9.\-]", "_", name.strip())[:255]


def normalize_folder(folder: str | None) -> str:
    segments = [re.sub(r"[^A-Za-z0-9_\-]", "_", s.strip()) for s in (folder or "/").split("/")]
    segments = [s for s in segments if s]
    return "/" + "/".join(segments) if segments else "/"


def unique_name(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(9))
    return f"{stem}_{suffix}.{ext}" if ext else f"{stem}_{suffix}"


def _image_formats() -> tuple[str, ...]:
    from PIL import Image

    Image.init()
    # Image.open raises KeyError for a format whose plugin is not compiled in (AVIF).
    return tuple(fmt for fmt in _PROBE_FORMATS if fmt in Image.OPEN)


def probe(data: bytes, filename: str, declared: str | None) -> dict[str, Any]:
    """fileType, mime, width, height and hasAlpha of an uploaded file."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data), formats=_image_formats()) as im:
            width, height = im.size
            fmt = im.format or ""
            has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
            mime = "image/jpeg" if fmt == "MPO" else Image.MIME.get(fmt, f"image/{fmt.lower()}")
        return {
            "file_type": "image",
            "mime": mime,
            "width": width,
            "height": height,
            "has_alpha": bool(has_alpha),
        }
    except Exception:  # not an image Pillow can read (or no Pillow): any file is welcome
        guessed = mimetypes.guess_type(filename)[0]
        declared = (declared or "").split(";")[0].strip().lower() or None
        mime = guessed or declared or "application/octet-stream"
        if mime == "image/svg+xml":
            return {
                "file_type": "image",
                "mime": mime,
                "width": None,
                "height": None,
                "has_alpha": True,
            }
        return {
            "file_type": "non-image",
            "mime": mime,
            "width": None,
            "height": None,
            "has_alpha": False,
        }


def decodable(data: bytes, max_pixels: int) -> bool:
    """Whether remove-bg could read the image at all (fully decoded when small enough)."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data), formats=_image_formats()) as im:
            if im.size[0] * im.size[1] <= max_pixels:
                im.load()
        return True
    except Exception:
        return False


@dataclass
class ExtensionRequest:
    name: str
    item: dict[str, Any]
    options: RemoveBgOptions | None = None


def parse_extensions(raw: Any) -> tuple[list[ExtensionRequest], dict[str, list[str]]]:
    """Validate an ``extensions`` array; raises ApiError 400 (with ``errors`` for details)."""
    if raw is None:
        return [], {}
    if not isinstance(raw, list):
        raise bad_request(
            "Your request contains invalid extensions parameter. It must be an "
            "array of extension objects."
        )
    seen: set[str] = set()
    requests: list[ExtensionRequest] = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise bad_request(
                f"Your request contains invalid extensions parameter: item "
                f"{position} must be an object with a name."
            )
        name = item["name"]
        if name not in KNOWN_EXTENSIONS:
            raise bad_request(
                f"Your request contains an invalid extension name: {name!r}. "
                f"Known extensions: {', '.join(KNOWN_EXTENSIONS)}."
            )
        if name in UNSUPPORTED_EXTENSIONS:
            raise bad_request(f"The {name} extension is not supported by the ImageKit emulator.")
        if name in seen:
            raise bad_request(f"Your request contains the {name} extension more than once.")
        seen.add(name)
        request = ExtensionRequest(name, item)
        if name == EXTENSION_NAME:
            options = item.get("options", {})
            if options is None:
                options = {}
            if not isinstance(options, dict):
                raise bad_request(
                    "Invalid remove-bg options: options must be an object.",
                    errors={"options": ["must be an object"]},
                )
            try:
                request.options = RemoveBgOptions.from_dict(options)
            except OptionsError as exc:
                raise bad_request(
                    f"Invalid remove-bg options: {exc}",
                    errors={f"remove-bg.{k}": v for k, v in exc.errors.items()},
                ) from None
        elif name in ("google-auto-tagging", "aws-auto-tagging"):
            for key in ("minConfidence", "maxTags"):
                value = item.get(key)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise bad_request(
                        f"Your request contains invalid {name} extension: {key} "
                        f"must be a non-negative integer."
                    )
        requests.append(request)
    return requests, {}


# ============================================================================ rendering


def file_details(record: FileRecord, version: Version, endpoint: str) -> dict[str, Any]:
    """The FileDetails object (``type`` file for the current version, else file-version)."""
    current = version.id == record.current_version_id
    query = f"updatedAt={version.updated_at}"
    if not current:
        query = f"ik-obj-version={version.id}&{query}"
    url = f"{endpoint}{record.file_path}?{query}"
    details: dict[str, Any] = {
        "fileId": record.id,
        "type": "file" if current else "file-version",
        "name": record.name,
        "filePath": record.file_path,
        "tags": version.tags,
        "AITags": version.ai_tags,
        "versionInfo": {"id": version.id, "name": version.name},
        "isPrivateFile": record.is_private,
        "isPublished": version.is_published,
        "customCoordinates": version.custom_coordinates,
        "url": url,
        "thumbnail": f"{url}&tr=n-ik_ml_thumbnail",
        "fileType": version.file_type,
        "mime": version.mime,
        "width": version.width or 0,
        "height": version.height or 0,
        "size": version.size,
        "hasAlpha": version.has_alpha,
        "customMetadata": dict(version.custom_metadata),
        "createdAt": iso(record.created_at if current else version.created_at),
        "updatedAt": iso(version.updated_at),
    }
    if version.description is not None:
        details["description"] = version.description
    return details


def upload_response(
    record: FileRecord,
    version: Version,
    endpoint: str,
    response_fields: list[str],
    statuses: dict[str, str],
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "fileId": record.id,
        "name": record.name,
        "size": version.size,
        "versionInfo": {"id": version.id, "name": version.name},
        "filePath": record.file_path,
        "url": f"{endpoint}{record.file_path}",
        "fileType": version.file_type,
    }
    if version.file_type == "image" and version.width is not None:
        body["height"] = version.height
        body["width"] = version.width
    body["thumbnailUrl"] = (
        f"{endpoint}/tr:n-ik_ml_thumbnail{record.file_path}" if version.file_type == "image" else ""
    )
    body["AITags"] = version.ai_tags
    if version.description is not None:
        body["description"] = version.description
    extras = {
        "tags": version.tags,
        "customCoordinates": version.custom_coordinates,
        "isPrivateFile": record.is_private,
        "isPublished": version.is_published,
        "customMetadata": dict(version.custom_metadata),
        "embeddedMetadata": {},
        "selectedFieldsSchema": {},
        "metadata": {
            "height": version.height or 0,
            "width": version.width or 0,
            "size": version.size,
            "format": (version.mime.split("/")[-1] if version.file_type == "image" else ""),
            "hasTransparency": version.has_alpha,
        },
    }
    for name in response_fields:
        if name in extras:
            body[name] = extras[name]
    if statuses:
        body["extensionStatus"] = statuses
    return body


# ============================================================================ HTTP handler


@dataclass
class Route:
    kind: str  # api, control, delivery
    endpoint: str
    handler: Callable[..., None]
    params: dict[str, str] = field(default_factory=dict)


_API_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"/api/v1/files/upload"), "upload"),
    ("GET", re.compile(r"/v1/files/(?P<file_id>[^/]+)/details"), "get_details"),
    ("PATCH", re.compile(r"/v1/files/(?P<file_id>[^/]+)/details"), "update_details"),
    ("GET", re.compile(r"/v1/files/(?P<file_id>[^/]+)/versions"), "list_versions"),
    (
        "GET",
        re.compile(r"/v1/files/(?P<file_id>[^/]+)/versions/(?P<version_id>[^/]+)"),
        "get_version",
    ),
    (
        "PUT",
        re.compile(r"/v1/files/(?P<file_id>[^/]+)/versions/(?P<version_id>[^/]+)/restore"),
        "restore_version",
    ),
]
_CONTROL_ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/health", "health"),
    ("GET", "/state", "state"),
    ("POST", "/reset", "reset"),
    ("GET", "/faults", "get_faults"),
    ("PUT", "/faults", "put_faults"),
    ("PATCH", "/faults", "put_faults"),
    ("DELETE", "/faults", "delete_faults"),
    ("GET", "/wait-idle", "wait_idle"),
    ("POST", "/wait-idle", "wait_idle"),
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"ImageKitEmulator/{__version__}"
    server: _Server

    # ------------------------------------------------------------------ plumbing

    @property
    def emulator(self) -> Emulator:
        return self.server.emulator

    def setup(self) -> None:
        self.timeout = self.server.emulator.config.idle_timeout
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def handle_one_request(self) -> None:
        self._request_id: str | None = None
        self._responded = False
        self._body: RequestBody | None = None
        self._log_entry: dict[str, Any] | None = None
        self._logged = True
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def version_string(self) -> str:
        return self.server_version

    def request_id(self) -> str:
        if not self._request_id:
            self._request_id = str(uuid.uuid4())
        return self._request_id

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        self.send_header("x-ik-requestId", self.request_id())
        self._responded = True
        entry = getattr(self, "_log_entry", None)
        if entry is not None:
            entry["status"] = code
            self._log()

    def log_message(self, format: str, *args: Any) -> None:
        level = logging.INFO if self.emulator.config.log_requests else logging.DEBUG
        logger.log(level, "%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    # ------------------------------------------------------------------ responses

    def _send(
        self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        if self._body is not None and not self._body.exhausted:
            pending = (self._body.length or 0) - self._body.consumed
            if self._body.length is None or pending > DRAIN_LIMIT:
                self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8", headers)

    def _error(self, error: ApiError) -> None:
        if error.close:
            self.close_connection = True
        self._json(error.status, error.body(), error.headers)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self) -> None:
        started = time.monotonic()
        # Logged (API and delivery requests only) as soon as the status line is sent, so a
        # client reading /_emulator/state right after its answer finds its request there.
        self._log_entry = {
            "requestId": self.request_id(),
            "method": self.command,
            "path": self.path,
            "endpoint": None,
            "status": None,
            "fault": None,
            "at": iso(now_ms()),
            "durationMs": None,
        }
        self._logged = False
        route: Route | None = None
        try:
            self._body = RequestBody.from_handler(self)
            route = self._route()
            self._log_entry["endpoint"] = route.endpoint
            if route.kind == "control":
                self._logged = True  # never logged
            if route.kind == "api":
                injector = self.emulator.injector
                pause = injector.slow_seconds(route.endpoint)
                if pause:
                    self._log_entry["fault"] = "slow"
                    self.emulator.stop_event.wait(pause)
                api_fault = injector.api_fault(route.endpoint)
                if api_fault is not None:
                    self._log_entry["fault"] = api_fault.kind
                    self._inject(api_fault)
                    return
                self._authenticate()
            route.handler(**route.params)
        except ApiError as exc:
            if not self._responded:
                self._error(exc)
            else:
                self.close_connection = True
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            logger.exception("emulator error handling %s %s", self.command, self.path)
            self.close_connection = True
            if not self._responded:
                with contextlib.suppress(OSError):
                    self._json(500, {"message": "Internal emulator error.", "help": HELP_TEXT})
        finally:
            with contextlib.suppress(OSError, ApiError, ValueError):
                if self._body is not None and not self.close_connection and not self._body.drain():
                    self.close_connection = True
            self._log_entry["durationMs"] = int((time.monotonic() - started) * 1000)
            self._log()

    def _log(self) -> None:
        if not self._logged:
            self._logged = True
            self.emulator.store.log_request(self._log_entry)

    def _route(self) -> Route:
        path = urlsplit(self.path).path
        if path.startswith(DELIVERY_PREFIX + "/") and self.command in ("GET", "HEAD"):
            return Route("delivery", "delivery", self._deliver, {"path": path})
        if len(path) > 1:
            path = path.rstrip("/")
        if path.startswith(CONTROL_PREFIX + "/") or path == CONTROL_PREFIX:
            sub = path[len(CONTROL_PREFIX) :]
            allowed = [m for m, p, _ in _CONTROL_ROUTES if p == sub]
            for method, pattern, name in _CONTROL_ROUTES:
                if pattern == sub and method == self.command:
                    return Route("control", name, getattr(self, f"_control_{name}"))
            if allowed:
                raise ApiError(405, "Method not allowed.", headers={"Allow": ", ".join(allowed)})
            raise ApiError(404, "Unknown emulator control endpoint.")
        allowed = []
        for method, pattern, name in _API_ROUTES:
            match = pattern.fullmatch(path)
            if match:
                if method == self.command:
                    params = {k: unquote(v) for k, v in match.groupdict().items()}
                    return Route("api", name, getattr(self, f"_api_{name}"), params)
                allowed.append(method)
        if allowed:
            raise ApiError(405, "Method not allowed.", headers={"Allow": ", ".join(allowed)})
        raise ApiError(404, "Not found.")

    def _inject(self, fault: ApiFault) -> None:
        if fault.kind == "drop":
            with contextlib.suppress(Exception):
                self._body.drain()  # type: ignore[union-attr]
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault.kind == "rate_limit":
            f = self.emulator.injector.faults
            self._json(
                429,
                {"message": "Too many requests. Please try again later."},
                {
                    "X-RateLimit-Limit": str(f.rate_limit_limit),
                    "X-RateLimit-Reset": str(f.rate_limit_reset_ms),
                    "X-RateLimit-Interval": str(f.rate_limit_interval_ms),
                },
            )
            return
        self._json(
            fault.status,
            {
                "message": "We have encountered an internal error while processing your request.",
                "help": HELP_TEXT,
            },
        )

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization")
        if not header:
            raise ApiError(401, "Your request does not contain private API key.")
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "basic":
            raise ApiError(403, "Your account cannot be authenticated.")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise ApiError(403, "Your account cannot be authenticated.") from None
        user = decoded.partition(":")[0]
        if not secrets.compare_digest(user.encode(), self.emulator.private_key.encode()):
            raise ApiError(403, "Your account cannot be authenticated.")

    # ------------------------------------------------------------------ API: upload

    def _api_upload(self) -> None:
        emulator = self.emulator
        config = emulator.config
        content_type = self.headers.get("Content-Type") or ""
        message = email.message.Message()
        message["Content-Type"] = content_type
        media = message.get_content_type()
        base64_limit = config.max_upload_bytes * 4 // 3 + 4096
        files: dict[str, Part] = {}
        try:
            if media == "multipart/form-data":
                boundary = message.get_param("boundary")
                if not isinstance(boundary, str) or not boundary or len(boundary) > 200:
                    raise bad_request("Malformed multipart/form-data request: no boundary.")
                try:
                    fields, files = parse_multipart(
                        self._body,  # type: ignore[arg-type]
                        boundary.encode("latin-1", errors="replace"),
                        file_fields=frozenset({"file"}),
                        file_limit=lambda name: config.max_upload_bytes if name else base64_limit,
                    )
                except _PartTooLarge as exc:
                    if exc.part == "file":
                        raise bad_request(MSG_TOO_LARGE) from None
                    raise bad_request(
                        f"Your request contains a {exc.part} field that is too large."
                    ) from None
                except MultipartError as exc:
                    raise bad_request(f"Malformed multipart/form-data request: {exc}.") from None
            elif media == "application/x-www-form-urlencoded":
                raw = self._body.read_all(  # type: ignore[union-attr]
                    base64_limit * 3 + MAX_FIELD_BYTES, lambda: bad_request(MSG_TOO_LARGE)
                )
                fields = dict(
                    parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
                )
            else:
                raise bad_request(MSG_MISSING_FILE + " Uploads must be multipart/form-data.")
            self._upload(fields, files)
        finally:
            for part in files.values():
                part.close()

    def _file_bytes(
        self, fields: Mapping[str, str], files: Mapping[str, Part]
    ) -> tuple[bytes, str | None]:
        config = self.emulator.config
        part = files.get("file")
        text: str | None = fields.get("file")
        declared: str | None = None
        if part is not None:
            declared = part.content_type
            raw = part.read()
            if part.filename is not None or (
                declared and not declared.lower().startswith("text/plain")
            ):
                return raw, declared
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw, declared  # binary bytes without a filename
        if text is None or not text.strip():
            raise bad_request(MSG_MISSING_FILE)
        text = text.strip()
        if re.match(r"https?://", text, re.IGNORECASE):
            try:
                return self.emulator.fetch(text, limit=config.max_upload_bytes), None
            except FetchError as exc:
                if "exceeds" in str(exc):
                    raise bad_request(MSG_TOO_LARGE) from None
                raise bad_request(f"{MSG_INVALID_FILE} {exc}") from None
        match = re.match(r"data:([^;,]*)(;[^,]*)?,", text)
        if match:
            declared = match.group(1) or None
            if "base64" not in (match.group(2) or ""):
                raise bad_request(f"{MSG_INVALID_FILE} Only base64 data URIs are supported.")
            text = text[match.end() :]
        try:
            return base64.b64decode("".join(text.split()), validate=True), declared
        except (binascii.Error, ValueError):
            raise bad_request(
                f"{MSG_INVALID_FILE} Send binary data, an http(s) URL or base64."
            ) from None

    def _upload(self, fields: dict[str, str], files: dict[str, Part]) -> None:
        emulator = self.emulator
        config = emulator.config
        if "file" not in files and not (fields.get("file") or "").strip():
            raise bad_request(MSG_MISSING_FILE)
        requested_name = (fields.get("fileName") or "").strip()
        if not requested_name:
            raise bad_request(MSG_MISSING_NAME)
        data, declared = self._file_bytes(fields, files)
        if len(data) > config.max_upload_bytes:
            raise bad_request(MSG_TOO_LARGE)
        if not data:
            raise bad_request(f"{MSG_INVALID_FILE} The file is empty.")
        use_unique = _form_bool(fields, "useUniqueFileName", True)
        overwrite = _form_bool(fields, "overwriteFile", True)
        is_private = _form_bool(fields, "isPrivateFile", False)
        keep = {
            "tags": not _form_bool(fields, "overwriteTags", True),
            "custom_metadata": not _form_bool(fields, "overwriteCustomMetadata", True),
            "ai_tags": not _form_bool(fields, "overwriteAITags", True),
        }
        tags = _parse_tags(fields.get("tags"), form=True)
        custom_metadata: dict[str, Any] | None = None
        if fields.get("customMetadata", "").strip():
            try:
                custom_metadata = json.loads(fields["customMetadata"])
            except ValueError:
                custom_metadata = None
            if not isinstance(custom_metadata, dict):
                raise bad_request("Invalid custom metadata.")
        coordinates = (fields.get("customCoordinates") or "").strip() or None
        if coordinates is not None and not _COORDS_RE.fullmatch(coordinates):
            raise bad_request("Your request contains invalid customCoordinates parameter.")
        extensions_raw: Any = None
        if (fields.get("extensions") or "").strip():
            try:
                extensions_raw = json.loads(fields["extensions"])
            except ValueError:
                raise bad_request(
                    "Your request contains invalid extensions parameter. It must be a JSON array."
                ) from None
        extensions, _ = parse_extensions(extensions_raw)
        webhook_url = _check_webhook_url(fields.get("webhookUrl"))
        response_fields = _response_fields(fields.get("responseFields"))
        name = sanitize_name(requested_name)
        if not name.strip("._"):
            raise bad_request("Your request contains invalid fileName parameter.")
        info = probe(data, name, declared)
        wants_removal = any(e.name == EXTENSION_NAME for e in extensions)
        if wants_removal and not (
            info["file_type"] == "image" and decodable(data, config.max_pixels)
        ):
            raise bad_request(
                "The remove-bg extension can only be applied to image files; the "
                "file is not a decodable image."
            )
        folder = normalize_folder(fields.get("folder"))
        meta = {
            "tags": tags,
            "custom_metadata": custom_metadata,
            "custom_coordinates": coordinates,
            "description": fields.get("description"),
        }
        units = REMOVE_BG_UNITS if wants_removal else 0
        if units and not emulator.store.consume_quota(units, config.extension_quota_units):
            raise bad_request(MSG_QUOTA)
        prefix = folder.rstrip("/") + "/"
        try:
            while True:
                final_name = unique_name(name) if use_unique else name
                if use_unique and emulator.store.file_at(prefix + final_name) is not None:
                    continue
                try:
                    record, version, _created = emulator.store.put_upload(
                        file_path=prefix + final_name,
                        name=final_name,
                        requested_name=requested_name,
                        data=data,
                        info=info,
                        meta=meta,
                        is_private=is_private,
                        overwrite=overwrite and not use_unique,
                        keep=keep,
                        max_versions=config.max_versions,
                    )
                except PathExistsError:
                    if use_unique:
                        continue  # a concurrent upload took the same random name
                    raise bad_request(MSG_EXISTS) from None
                break
        except (ApiError, VersionLimitError) as exc:
            if units:
                emulator.store.consume_quota(-units, None)
            if isinstance(exc, VersionLimitError):
                raise bad_request(MSG_VERSION_LIMIT) from None
            raise
        statuses = emulator.start_extensions(
            record, extensions, webhook_url, "upload", self.request_id(), source=version.id
        )
        if units and statuses.get(EXTENSION_NAME) == "failed":
            emulator.store.consume_quota(-units, None)  # the version limit was hit: no charge
        self._json(
            200, upload_response(record, version, emulator.url_endpoint, response_fields, statuses)
        )

    # ------------------------------------------------------------------ API: files

    def _file(self, file_id: str) -> FileRecord:
        if not _ID_RE.fullmatch(file_id):
            raise bad_request("Your request contains invalid fileId parameter.")
        record = self.emulator.store.get_file(file_id)
        if record is None:
            raise ApiError(404, MSG_NO_FILE)
        return record

    def _version(self, record: FileRecord, version_id: str) -> Version:
        if not _ID_RE.fullmatch(version_id):
            raise bad_request("Your request contains invalid versionId parameter.")
        version = record.version(version_id)
        if version is None:
            raise ApiError(404, MSG_NO_VERSION)
        return version

    def _api_get_details(self, file_id: str) -> None:
        with self.emulator.store.lock:
            record = self._file(file_id)
            body = file_details(record, record.current, self.emulator.url_endpoint)
        self._json(200, body)

    def _api_list_versions(self, file_id: str) -> None:
        with self.emulator.store.lock:
            record = self._file(file_id)
            body = [file_details(record, v, self.emulator.url_endpoint) for v in record.versions]
        self._json(200, body)

    def _api_get_version(self, file_id: str, version_id: str) -> None:
        with self.emulator.store.lock:
            record = self._file(file_id)
            body = file_details(
                record, self._version(record, version_id), self.emulator.url_endpoint
            )
        self._json(200, body)

    def _api_restore_version(self, file_id: str, version_id: str) -> None:
        store = self.emulator.store
        with store.lock:
            record = self._file(file_id)
            self._version(record, version_id)
            record = store.restore(file_id, version_id)
            body = file_details(record, record.current, self.emulator.url_endpoint)
        self._json(200, body)

    def _json_body(self) -> Any:
        assert self._body is not None
        raw = self._body.read_all(
            MAX_JSON_BYTES, lambda: ApiError(413, "The request body is too large.")
        )
        try:
            return json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (UnicodeDecodeError, ValueError):
            raise bad_request("Your request contains invalid JSON.") from None

    def _api_update_details(self, file_id: str) -> None:
        emulator = self.emulator
        data = self._json_body()
        record = self._file(file_id)
        if not isinstance(data, dict):
            raise bad_request("Your request body must be a JSON object.")
        changes: dict[str, Any] = {}
        errors: dict[str, list[str]] = {}
        if "tags" in data:
            try:
                changes["tags"] = _parse_tags(data["tags"], form=False)
            except ApiError as exc:
                errors["tags"] = [exc.message]
        if "customCoordinates" in data:
            value = data["customCoordinates"]
            if value is not None and (
                not isinstance(value, str) or not _COORDS_RE.fullmatch(value.strip())
            ):
                errors["customCoordinates"] = ["must be x,y,width,height or null"]
            else:
                changes["custom_coordinates"] = value.strip() if value else None
        if "customMetadata" in data:
            value = data["customMetadata"]
            if not isinstance(value, dict):
                raise bad_request(
                    "Invalid custom metadata.", errors={"customMetadata": ["must be an object"]}
                )
            merged = dict(record.current.custom_metadata)
            for key, item in value.items():
                if item is None:
                    merged.pop(key, None)
                else:
                    merged[key] = item
            changes["custom_metadata"] = merged
        if "description" in data:
            if data["description"] is not None and not isinstance(data["description"], str):
                errors["description"] = ["must be a string"]
            else:
                changes["description"] = data["description"]
        if "removeAITags" in data:
            value = data["removeAITags"]
            current = record.current.ai_tags
            if value == "all":
                changes["ai_tags"] = None
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                kept = [t for t in (current or []) if t.get("name") not in value]
                changes["ai_tags"] = kept or None
            else:
                errors["removeAITags"] = ['must be an array of tag names or "all"']
        if "publish" in data:
            value = data["publish"]
            if not isinstance(value, dict) or not isinstance(value.get("isPublished"), bool):
                errors["publish"] = ["must be an object with a boolean isPublished"]
            else:
                changes["is_published"] = value["isPublished"]
        if errors:
            first = next(iter(errors.items()))
            raise bad_request(f"Your request contains invalid {first[0]} parameter.", errors=errors)
        extensions, _ = parse_extensions(data.get("extensions"))
        webhook_url = _check_webhook_url(data.get("webhookUrl"))
        wants_removal = any(e.name == EXTENSION_NAME for e in extensions)
        store = emulator.store
        if wants_removal:
            current = record.current
            if current.file_type != "image" or not decodable(
                store.blob(current.id), emulator.config.max_pixels
            ):
                raise bad_request(
                    "The remove-bg extension can only be applied to image files; "
                    "the file is not a decodable image."
                )
        with store.lock:
            record = self._file(file_id)
            if (
                wants_removal
                and len(record.versions) < emulator.config.max_versions
                and not store.consume_quota(REMOVE_BG_UNITS, emulator.config.extension_quota_units)
            ):
                raise bad_request(MSG_QUOTA)
            if changes:
                record = store.update_current(file_id, changes)
            statuses = emulator.start_extensions(
                record, extensions, webhook_url, "update", self.request_id()
            )
            body = file_details(record, record.current, emulator.url_endpoint)
        if extensions:
            body["extensionStatus"] = statuses
        self._json(200, body)

    # ------------------------------------------------------------------ delivery

    def _deliver(self, path: str) -> None:
        store = self.emulator.store
        with store.lock:
            found = self.emulator.resolve_delivery(
                path[len(DELIVERY_PREFIX) :], urlsplit(self.path).query
            )
            if found is None:
                raise ApiError(404, "The requested resource does not exist.", help_text=False)
            version = found[1]
            data = store.blob(version.id)
            mime = version.mime
            etag = f'"{version.sha256[:32]}"'
            modified = version.created_at
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(
            200,
            data,
            mime,
            {
                "ETag": etag,
                "Cache-Control": "no-cache",
                "Last-Modified": time.strftime(
                    "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(modified / 1000)
                ),
                "x-ik-versionId": version.id,
            },
        )

    # ------------------------------------------------------------------ control

    def _control_health(self) -> None:
        emulator = self.emulator
        self._json(
            200,
            {
                "emulator": True,
                "version": __version__,
                "url": emulator.url,
                "urlEndpoint": emulator.url_endpoint,
            },
        )

    def _control_state(self) -> None:
        self._json(200, self.emulator.state())

    def _control_reset(self) -> None:
        self.emulator.reset()
        self._json(200, {"reset": True})

    def _control_get_faults(self) -> None:
        self._json(200, self.emulator.injector.state())

    def _control_put_faults(self) -> None:
        data = self._json_body()
        try:
            self.emulator.injector.update(data or {})
        except FaultsError as exc:
            raise bad_request("Invalid faults.", errors=exc.errors, help_text=False) from None
        self._json(200, self.emulator.injector.state())

    def _control_delete_faults(self) -> None:
        self.emulator.injector.set(None)
        self._json(200, self.emulator.injector.state())

    def _control_wait_idle(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        try:
            timeout = min(float((query.get("timeout") or ["10"])[0]), 120.0)
        except ValueError:
            raise bad_request("timeout must be a number of seconds", help_text=False) from None
        idle = self.emulator.wait_idle(timeout)
        self._json(200, {"idle": idle, "activity": self.emulator.activity.snapshot()})


def _response_fields(raw: str | None) -> list[str]:
    if not raw or not raw.strip():
        return []
    text = raw.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            raise bad_request("Your request contains invalid responseFields parameter.") from None
        if not isinstance(items, list):
            raise bad_request("Your request contains invalid responseFields parameter.")
        return [str(i) for i in items if str(i) in RESPONSE_FIELDS]
    return [p.strip() for p in text.split(",") if p.strip() in RESPONSE_FIELDS]


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    allow_reuse_port = False
    request_queue_size = 128
    block_on_close = True

    def __init__(self, address: tuple[str, int], emulator: Emulator):
        self.emulator = emulator
        self.daemon_threads = emulator.config.daemon_threads
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s failed", client_address, exc_info=True)


# ============================================================================ the emulator


def _load_segmentation_model(config: EmulatorConfig) -> Any:
    """The configured ONNX model (a ``removal.SegmentationModel``) or None; loaded once here,
    raising SegmentationModelError naming the file when it cannot be used."""
    if not config.segmentation_model:
        return None
    try:
        from .removal import SegmentationModel
    except ImportError as exc:  # the emulator extra is not installed
        raise SegmentationModelError(
            f"segmentation model {config.segmentation_model!r} needs the emulator extra "
            f"(pip install 'imagekit-bgremove[emulator]'): {exc}"
        ) from None
    model = SegmentationModel(
        config.segmentation_model,
        input_size=config.segmentation_input_size,
        mean=config.segmentation_mean,
        std=config.segmentation_std,
    )
    logger.info(
        "remove-bg uses the segmentation model %s (input %dx%d)",
        model.path,
        model.input_size,
        model.input_size,
    )
    return model


class Emulator:
    """A running ImageKit emulator: ``Emulator(EmulatorConfig(port=0)).start()``."""

    def __init__(self, config: EmulatorConfig | None = None, **overrides: Any):
        config = config or EmulatorConfig()
        if overrides:
            config = config.updated(**overrides)
        self.config = config
        # First, so a bad model stops the emulator before it touches anything else.
        self.segmentation_model = _load_segmentation_model(config)
        self.store = Store(config.data_dir)
        self.activity = Activity()
        self.injector = FaultInjector(config.faults, seed=config.seed)
        self.stop_event = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self._port = config.port
        self._jobs = WorkerPool(
            "ik-emulator-job",
            config.workers,
            daemon=config.daemon_threads,
            on_discard=lambda _item: self.activity.done(JOB_ACTIVITY),
        )
        self._callbacks = CallbackDispatcher(
            store=self.store,
            config=config,
            injector=self.injector,
            activity=self.activity,
            secrets_=config.webhook_secrets,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        with self._lifecycle:
            if self._server is not None:
                return self
            if self.stop_event.is_set():
                raise RuntimeError("a stopped Emulator cannot be started again; create a new one")
            host = self.config.host
            server = _Server((host.strip("[]"), self.config.port), self)
            self._port = server.server_address[1]
            self._server = server
            self._jobs.start()
            self._callbacks.start()
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"ik-emulator-http-{self._port}",
                daemon=self.config.daemon_threads,
            )
            self._thread.start()
            self._resume()
        logger.info("ImageKit emulator listening on %s", self.url)
        return self

    def _resume(self) -> None:
        with self.store.lock:
            unfinished = [j for j in self.store.jobs.values() if j.status in ("pending", "running")]
        for job in unfinished:
            self.store.update_job(job.id, status="pending")
            self._enqueue(job.id)
        self._callbacks.resume()

    def stop(self, timeout: float = 30.0) -> None:
        with self._lifecycle:
            server, self._server = self._server, None
            self.stop_event.set()
            if server is None:
                return
            server.shutdown()
            server.close_connections()
            server.server_close()  # joins the request threads (non-daemon mode)
            if self._thread is not None:
                self._thread.join(timeout)
            self._jobs.stop(timeout)
            self._callbacks.stop()
        logger.info("ImageKit emulator on port %s stopped", self._port)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    # ------------------------------------------------------------------ addresses & credentials

    @property
    def host(self) -> str:
        return display_host(self.config.host)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url_endpoint(self) -> str:
        return (self.config.url_endpoint or f"{self.url}{DELIVERY_PREFIX}").rstrip("/")

    @property
    def private_key(self) -> str:
        return self.config.private_key

    @property
    def webhook_secrets(self) -> list[str]:
        return list(self.config.webhook_secrets)

    @property
    def auth(self) -> tuple[str, str]:
        """``(private_key, "")`` for ``requests``' ``auth=``."""
        return (self.private_key, "")

    # ------------------------------------------------------------------ faults, state

    @property
    def faults(self) -> Faults:
        return self.injector.faults

    @faults.setter
    def faults(self, value: Faults | Mapping[str, Any] | None) -> None:
        self.injector.set(value)

    def set_faults(self, **changes: Any) -> Faults:
        """Change only the given knobs."""
        return self.injector.update(changes)

    def state(self) -> dict[str, Any]:
        state = self.store.state()
        state["faults"] = self.injector.state()
        state["activity"] = self.activity.snapshot()
        state["emulator"] = {
            "url": self.url,
            "urlEndpoint": self.url_endpoint,
            "dataDir": self.config.data_dir,
            "workers": self.config.workers,
            "maxUploadBytes": self.config.max_upload_bytes,
            "trustHosts": sorted(self.trusted_hosts()),
            "segmentationModel": self.config.segmentation_model,
        }
        state["quota"]["limit"] = self.config.extension_quota_units
        return state

    def reset(self) -> None:
        """Forget all files, jobs and callbacks; faults go back to their start values."""
        self._callbacks.clear()
        self.store.reset()
        self.injector.reset()

    def wait_idle(self, timeout: float | None = 30.0) -> bool:
        """Wait until no remove-bg job is queued or running and no callback delivery is
        scheduled or in flight. Returns False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            step = 0.25 if remaining is None else max(0.0, min(0.25, remaining))
            if self.activity.wait_idle(step):
                return True
            if self.stop_event.is_set() or (remaining is not None and remaining <= step):
                return self.activity.wait_idle(0)

    # ------------------------------------------------------------------ extensions

    def start_extensions(
        self,
        record: FileRecord,
        extensions: list[ExtensionRequest],
        webhook_url: str | None,
        origin: str,
        request_id: str,
        *,
        source: str | None = None,
    ) -> dict[str, str]:
        """Answer each requested extension's status, queueing remove-bg jobs on ``source`` (a
        version id; default the current version). The caller has already taken the quota for
        a remove-bg that can run; a file at its version limit gets ``failed`` at once."""
        statuses: dict[str, str] = {}
        for extension in extensions:
            if extension.name != EXTENSION_NAME:
                statuses[extension.name] = "success"  # accepted, no effect in the emulator
                continue
            if len(record.versions) >= self.config.max_versions:
                statuses[extension.name] = "failed"
                continue
            assert extension.options is not None
            job = Job(
                id=f"job_{secrets.token_hex(8)}",
                file_id=record.id,
                service=EXTENSION_NAME,
                options=extension.options.to_dict(),
                source_version_id=source or record.current_version_id,
                webhook_url=webhook_url,
                origin=origin,
                request_id=request_id,
                created_at=now_ms(),
            )
            self.store.add_job(job)
            self._enqueue(job.id)
            statuses[extension.name] = "pending"
        return statuses

    def _enqueue(self, job_id: str) -> None:
        self.activity.add(JOB_ACTIVITY)
        self._jobs.submit(self._run_job, job_id)

    def _run_job(self, job_id: str) -> None:
        try:
            job = self.store.jobs.get(job_id)
            if job is None or job.status != "pending" or self.stop_event.is_set():
                return
            self.store.update_job(job_id, status="running", started_at=now_ms())
            try:
                record, version = self._remove_background(job)
            except JobFailure as failure:
                error = {"message": failure.message, "reason": failure.reason}
                payload: dict[str, Any] = {
                    "service": EXTENSION_NAME,
                    "status": "FAILURE",
                    "fileId": job.file_id,
                    "error": error,
                }
                done = self.store.update_job(
                    job_id, status="failed", error=error, finished_at=now_ms()
                )
            else:
                with self.store.lock:
                    payload = {
                        "service": EXTENSION_NAME,
                        "status": "SUCCESS",
                        "fileObject": file_details(record, version, self.url_endpoint),
                    }
                done = self.store.update_job(
                    job_id, status="success", result_version_id=version.id, finished_at=now_ms()
                )
            if done is not None:  # None: reset meanwhile. While stopping, the callback is still
                self._callbacks.submit(done, payload)  # recorded (and resumed after a restart).
        finally:
            self.activity.done(JOB_ACTIVITY)

    def _remove_background(self, job: Job) -> tuple[FileRecord, Version]:
        if self.injector.chance(self.injector.faults.extension_failure_rate):
            raise JobFailure(
                "Background removal failed (emulator fault injection).", "simulated_failure"
            )
        try:
            source = self.store.blob(job.source_version_id)
        except (KeyError, OSError):
            raise JobFailure(
                "The file version to process no longer exists.", "source_missing"
            ) from None
        options = RemoveBgOptions.from_dict(job.options)
        background = None
        if options.bg_image_url:
            try:
                background = self.fetch(options.bg_image_url, limit=self.config.max_upload_bytes)
            except FetchError as exc:
                reason = "untrusted_bg_image_url" if exc.untrusted else "bg_image_url_fetch_failed"
                raise JobFailure(f"Could not use bg_image_url: {exc}", reason) from None
        try:
            from .removal import RemovalError, remove_background
        except ImportError as exc:  # pragma: no cover - the emulator extra is not installed
            raise JobFailure(
                f"The emulator cannot remove backgrounds here: {exc}", "internal_error"
            ) from None
        try:
            result = remove_background(
                source,
                add_shadow=options.add_shadow,
                semitransparency=options.semitransparency,
                bg_color=options.bg_color,
                background=background,
                max_pixels=self.config.max_pixels,
                segmentation_model=self.segmentation_model,
            )
        except RemovalError as exc:
            raise JobFailure(f"Background removal failed: {exc}", "invalid_image") from None
        except Exception as exc:
            logger.exception("remove-bg job %s crashed", job.id)
            raise JobFailure(
                f"Background removal failed: {type(exc).__name__}", "internal_error"
            ) from None
        info = {
            "mime": result.mime,
            "file_type": "image",
            "width": result.width,
            "height": result.height,
            "has_alpha": result.has_alpha,
        }
        try:
            return self.store.add_result_version(
                job.file_id, result.data, info, job.id, self.config.max_versions
            )
        except VersionLimitError:
            raise JobFailure(MSG_VERSION_LIMIT, "version_limit") from None
        except StoreError as exc:
            raise JobFailure(str(exc), "source_missing") from None

    # ------------------------------------------------------------------ fetching URLs

    def resolve_delivery(self, path: str, query: str = "") -> tuple[FileRecord, Version] | None:
        """The file and version a delivery path (after the URL endpoint) names: a leading
        transformation segment (``/tr:w-100/...``) and ``?tr=`` are ignored, ``?updatedAt=`` too;
        ``?ik-obj-version=<versionId>`` picks an older version."""
        file_path = unquote(path)
        segments = file_path.split("/")
        if len(segments) > 2 and re.match(r"tr[:,]", segments[1]):
            file_path = "/" + "/".join(segments[2:])
        wanted = (parse_qs(query).get("ik-obj-version") or [None])[0]
        with self.store.lock:
            record = self.store.file_at(file_path)
            if record is None:
                return None
            version = record.version(wanted) if wanted else record.current
            return (record, version) if version is not None else None

    def _own_file(self, url: str) -> bytes | None:
        """The bytes behind one of this emulator's delivery URLs, if ``url`` is one."""
        endpoint = self.url_endpoint
        if not url.startswith(endpoint + "/"):
            return None
        parts = urlsplit(url[len(endpoint) :])
        with self.store.lock:
            found = self.resolve_delivery(parts.path, parts.query)
            if found is None:
                raise FetchError(f"fetching {url} answered HTTP 404")
            return self.store.blob(found[1].id)

    def trusted_hosts(self) -> set[str]:
        hosts = {self.host.strip("[]").lower()}
        endpoint_host = urlsplit(self.url_endpoint).hostname
        if endpoint_host:
            hosts.add(endpoint_host.lower())
        hosts.update(self.config.trust_hosts or ("127.0.0.1", "localhost"))
        return hosts

    def is_trusted(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        trusted = self.trusted_hosts()
        return host in trusted or f"{host}:{port}" in trusted

    def fetch(
        self, url: str, *, limit: int, timeout: float = FETCH_TIMEOUT, max_redirects: int = 3
    ) -> bytes:
        """GET ``url`` from a trusted host (redirects are checked too); FetchError otherwise.
        The emulator's own delivery URLs are read straight from the store."""
        for _ in range(max_redirects + 1):
            own = self._own_file(url)
            if own is not None:
                if len(own) > limit:
                    raise FetchError(f"the file at {url} exceeds {limit} bytes")
                return own
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise FetchError(f"{url!r} is not an absolute http(s) URL")
            if not self.is_trusted(url):
                raise FetchError(
                    f"host {parts.hostname!r} is not trusted by the emulator (trusted: "
                    f"{', '.join(sorted(self.trusted_hosts()))}; add more with --trust-host)",
                    untrusted=True,
                )
            cls = (
                http.client.HTTPSConnection
                if parts.scheme == "https"
                else http.client.HTTPConnection
            )
            try:
                conn = cls(parts.hostname, parts.port, timeout=timeout)
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                try:
                    conn.request(
                        "GET", target, headers={"User-Agent": f"ImageKit-Emulator/{__version__}"}
                    )
                    response = conn.getresponse()
                    location = response.getheader("Location")
                    if response.status in (301, 302, 303, 307, 308) and location:
                        url = urljoin(url, location)
                        continue
                    if response.status != 200:
                        raise FetchError(f"fetching {url} answered HTTP {response.status}")
                    data = response.read(limit + 1)
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise FetchError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from None
            if len(data) > limit:
                raise FetchError(f"the file at {url} exceeds {limit} bytes")
            return data
        raise FetchError(f"too many redirects fetching {url}")
