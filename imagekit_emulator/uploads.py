"""The upload API (``POST /api/v1/files/upload``): multipart parsing with werkzeug (chunked
bodies included), the file as binary, base64 or a URL to fetch, ImageKit's naming rules, the
plan's size limit, and the stored file with its extensions started."""

from __future__ import annotations

import base64
import binascii
import io
import json
import mimetypes
import re
import secrets
import string
import tempfile
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.formparser import parse_form_data

from .calls import Call, Reply
from .config import REMOVE_BG_UNITS
from .errors import (
    MSG_EXISTS,
    MSG_INVALID_FILE,
    MSG_MISSING_FILE,
    MSG_MISSING_NAME,
    MSG_QUOTA,
    MSG_TOO_LARGE,
    MSG_VERSION_LIMIT,
    ApiError,
    FetchError,
    bad_request,
)
from .extensions import REMOVE_BG, parse_extensions, parse_webhook_url
from .rendering import upload_response
from .store import PathExistsError, VersionLimitError

if TYPE_CHECKING:
    from .server import Emulator

#: Text fields of a multipart upload may not exceed this (the file as base64 excepted).
MAX_FIELD_BYTES = 1024 * 1024
MAX_PARTS = 100
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
COORDS_RE = re.compile(r"\d+,\d+,\d+,\d+")


def form_bool(fields: Mapping[str, str], name: str, default: bool) -> bool:
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise bad_request(f"Your request contains invalid {name} parameter.")


def parse_tags(raw: Any, *, form: bool) -> list[str] | None:
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


def response_fields(raw: str | None) -> list[str]:
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


class _PartTooLarge(Exception):
    pass


class _LimitedSpool:
    """Where werkzeug writes an uploaded file part: spooled to disk, refused past ``limit``."""

    def __init__(self, limit: int):
        self._limit = limit
        self._size = 0
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=1024 * 1024)  # noqa: SIM115

    def write(self, data: bytes) -> int:
        self._size += len(data)
        if self._size > self._limit:
            raise _PartTooLarge()
        return self._file.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def _parse_form(call: Call) -> tuple[dict[str, str], dict[str, FileStorage]]:
    config = call.emulator.config
    media = call.request.mimetype
    if media not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise bad_request(MSG_MISSING_FILE + " Uploads must be multipart/form-data.")
    base64_limit = config.max_upload_bytes * 4 // 3 + 4096
    try:
        _, form, files = parse_form_data(
            call.request.environ,
            stream_factory=lambda *_args, **_kw: _LimitedSpool(config.max_upload_bytes),
            max_form_memory_size=base64_limit,
            max_form_parts=MAX_PARTS,
            silent=False,
        )
    except (_PartTooLarge, RequestEntityTooLarge):
        raise bad_request(MSG_TOO_LARGE) from None
    except ValueError as exc:
        raise bad_request(f"Malformed {media} request: {exc}.") from None
    except HTTPException as exc:  # the body ended early, ...
        raise bad_request(f"Malformed {media} request: {exc.description}") from None
    fields = {key: form.get(key, "") for key in form}
    for key, value in fields.items():
        if key != "file" and len(value) > MAX_FIELD_BYTES:
            raise bad_request(f"Your request contains a {key} field that is too large.")
    return fields, {key: files[key] for key in files}


def _file_bytes(
    emulator: Emulator, fields: Mapping[str, str], files: Mapping[str, FileStorage]
) -> tuple[bytes, str | None]:
    limit = emulator.config.max_upload_bytes
    part = files.get("file")
    if part is not None:
        return part.stream.read() if hasattr(part.stream, "read") else b"", part.mimetype or None
    text = (fields.get("file") or "").strip()
    if not text:
        raise bad_request(MSG_MISSING_FILE)
    if re.match(r"https?://", text, re.IGNORECASE):
        try:
            return emulator.fetcher.fetch(text, limit=limit), None
        except FetchError as exc:
            if "exceeds" in str(exc):
                raise bad_request(MSG_TOO_LARGE) from None
            raise bad_request(f"{MSG_INVALID_FILE} {exc}") from None
    declared = None
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


def upload(call: Call) -> Reply:
    fields, files = _parse_form(call)
    try:
        return _upload(call, fields, files)
    finally:
        for part in files.values():
            part.close()


def _upload(call: Call, fields: dict[str, str], files: dict[str, FileStorage]) -> Reply:
    emulator = call.emulator
    config = emulator.config
    store = emulator.store
    if "file" not in files and not (fields.get("file") or "").strip():
        raise bad_request(MSG_MISSING_FILE)
    requested_name = (fields.get("fileName") or "").strip()
    if not requested_name:
        raise bad_request(MSG_MISSING_NAME)
    if "file" in files:
        files["file"].stream.seek(0)
    data, declared = _file_bytes(emulator, fields, files)
    if len(data) > config.max_upload_bytes:
        raise bad_request(MSG_TOO_LARGE)
    if not data:
        raise bad_request(f"{MSG_INVALID_FILE} The file is empty.")
    use_unique = form_bool(fields, "useUniqueFileName", True)
    overwrite = form_bool(fields, "overwriteFile", True)
    is_private = form_bool(fields, "isPrivateFile", False)
    keep = {
        "tags": not form_bool(fields, "overwriteTags", True),
        "custom_metadata": not form_bool(fields, "overwriteCustomMetadata", True),
        "ai_tags": not form_bool(fields, "overwriteAITags", True),
    }
    tags = parse_tags(fields.get("tags"), form=True)
    custom_metadata: dict[str, Any] | None = None
    if fields.get("customMetadata", "").strip():
        try:
            custom_metadata = json.loads(fields["customMetadata"])
        except ValueError:
            custom_metadata = None
        if not isinstance(custom_metadata, dict):
            raise bad_request("Invalid custom metadata.")
    coordinates = (fields.get("customCoordinates") or "").strip() or None
    if coordinates is not None and not COORDS_RE.fullmatch(coordinates):
        raise bad_request("Your request contains invalid customCoordinates parameter.")
    extensions_raw: Any = None
    if (fields.get("extensions") or "").strip():
        try:
            extensions_raw = json.loads(fields["extensions"])
        except ValueError:
            raise bad_request(
                "Your request contains invalid extensions parameter. It must be a JSON array."
            ) from None
    extensions = parse_extensions(extensions_raw)
    webhook_url = parse_webhook_url(fields.get("webhookUrl"))
    wanted_fields = response_fields(fields.get("responseFields"))
    name = sanitize_name(requested_name)
    if not name.strip("._"):
        raise bad_request("Your request contains invalid fileName parameter.")
    info = probe(data, name, declared)
    folder = normalize_folder(fields.get("folder"))
    meta = {
        "tags": tags,
        "custom_metadata": custom_metadata,
        "custom_coordinates": coordinates,
        "description": fields.get("description"),
    }
    # remove-bg on a non-image is accepted: ImageKit stores any file, and the extension
    # then fails (a FAILURE callback), as remove.bg cannot read it.
    units = REMOVE_BG_UNITS if any(e.name == REMOVE_BG for e in extensions) else 0
    if units and not store.consume_quota(units, config.extension_quota_units):
        raise bad_request(MSG_QUOTA)
    prefix = folder.rstrip("/") + "/"
    try:
        while True:
            final_name = unique_name(name) if use_unique else name
            if use_unique and store.file_at(prefix + final_name) is not None:
                continue
            try:
                record, version, _created = store.put_upload(
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
            store.consume_quota(-units, None)
        if isinstance(exc, VersionLimitError):
            raise bad_request(MSG_VERSION_LIMIT) from None
        raise
    started = emulator.jobs.start_extensions(
        record, extensions, webhook_url, "upload", call.request_id, source=version.id
    )
    if units and not started.runs:
        store.consume_quota(-units, None)  # the version limit was hit: no run, no charge
    record = started.record
    if started.statuses.get(REMOVE_BG) == "success":
        version = record.current  # the work was done before the answer
    body = upload_response(record, version, emulator.url_endpoint, wanted_fields, started.statuses)
    return Reply(200, body)
