"""File delivery: the URL endpoint's side of ImageKit (``https://ik.imagekit.io/<id>/...``).

Served under ``/ik/`` and, when the configured ``url_endpoint`` points at the emulator itself
(``http://127.0.0.1:PORT/demo``), under that endpoint's own path, so the URLs the API hands
out work. Transformations come as ``?tr=...`` or as a leading ``/tr:.../`` path segment; the
only one honoured is ``orig-true`` (the stored bytes, exactly). Without it, the account's
automatic format is emulated: a request whose Accept header includes ``image/webp`` gets a
WebP conversion of a JPEG/PNG/BMP/TIFF (``auto_format``, on by default like a new account).
``?ik-obj-version=<versionId>`` picks an older version; ``?updatedAt=`` is ignored.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from werkzeug.wrappers import Request, Response

from .errors import ApiError
from .store import FileRecord, Version

if TYPE_CHECKING:
    from .server import Emulator

logger = logging.getLogger("imagekit_emulator")

DELIVERY_PREFIX = "/ik"
_TR_SEGMENT = re.compile(r"tr[:,]")
_CONVERTIBLE = ("image/jpeg", "image/png", "image/bmp", "image/tiff")
WEBP_QUALITY = 80


def transformations(path: str, query: str) -> tuple[str, list[str]]:
    """(file path, transformation parameters) of a delivery path after the endpoint."""
    params: list[str] = []
    segments = path.split("/")
    if len(segments) > 2 and _TR_SEGMENT.match(segments[1]):
        params += re.split(r"[,:]", segments[1][3:])
        path = "/" + "/".join(segments[2:])
    for value in parse_qs(query).get("tr", []):
        params += re.split(r"[,:]", value)
    return path, [p.strip() for p in params if p.strip()]


def resolve(
    emulator: Emulator, path: str, query: str = ""
) -> tuple[FileRecord, Version, list[str]] | None:
    """The file, version and transformations a delivery path names, or None."""
    file_path, params = transformations(path, query)
    wanted = (parse_qs(query).get("ik-obj-version") or [None])[0]
    store = emulator.store
    with store.lock:
        record = store.file_at(file_path)
        if record is None:
            return None
        version = record.version(wanted) if wanted else record.current
        return (record, version, params) if version is not None else None


def mount_points(emulator: Emulator) -> list[str]:
    """Path prefixes that deliver files: ``/ik`` plus the endpoint's path when the endpoint
    is this emulator (same port, a loopback or the bound host)."""
    mounts = [DELIVERY_PREFIX]
    parts = urlsplit(emulator.url_endpoint)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return mounts
    host = (parts.hostname or "").lower()
    own_hosts = {"127.0.0.1", "localhost", "::1", emulator.host.strip("[]").lower()}
    if port == emulator.port and host in own_hosts:
        prefix = parts.path.rstrip("/")
        if prefix not in mounts:
            mounts.insert(0, prefix)
    return mounts


def delivery_path(emulator: Emulator, path: str) -> str | None:
    """The part of ``path`` after a delivery mount point, or None when it is not one."""
    for mount in mount_points(emulator):
        if mount == "" or path.startswith(mount + "/"):
            return path[len(mount) :]
    return None


class _WebpCache:
    """WebP conversions by version id (a version's bytes never change)."""

    def __init__(self, size: int = 64):
        self._lock = threading.Lock()
        self._items: dict[str, bytes] = {}
        self._size = size

    def get(self, key: str, make: Any) -> bytes:
        with self._lock:
            if key in self._items:
                return self._items[key]
        data = make()
        with self._lock:
            if len(self._items) >= self._size:
                self._items.pop(next(iter(self._items)))
            self._items[key] = data
        return data


_webp_cache = _WebpCache()


def _to_webp(data: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode not in ("RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
        out = io.BytesIO()
        im.save(out, "WEBP", quality=WEBP_QUALITY)
        return out.getvalue()


def deliver(emulator: Emulator, request: Request, path: str) -> Response:
    found = resolve(emulator, path, request.query_string.decode("latin-1"))
    if found is None:
        raise ApiError(404, "The requested resource does not exist.", help_text=False)
    _record, version, params = found
    data = emulator.store.blob(version.id)
    mime = version.mime
    original = "orig-true" in params
    converted = False
    accept = request.headers.get("Accept") or ""
    if (
        not original
        and emulator.config.auto_format
        and version.file_type == "image"
        and mime in _CONVERTIBLE
        and "image/webp" in accept.lower()
    ):
        try:
            data = _webp_cache.get(version.id, lambda: _to_webp(emulator.store.blob(version.id)))
        except Exception:  # an image Pillow cannot convert is served as stored
            logger.debug("no WebP conversion of version %s", version.id, exc_info=True)
        else:
            mime, converted = "image/webp", True
    digest = version.sha256 if not converted else hashlib.sha256(data).hexdigest()
    etag = f'"{digest[:32]}"'
    headers = {
        "ETag": etag,
        "Cache-Control": "no-cache",
        "Last-Modified": time.strftime(
            "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(version.created_at / 1000)
        ),
        "x-ik-versionId": version.id,
        "Vary": "Accept",
    }
    if request.headers.get("If-None-Match") == etag:
        return Response(b"", status=304, headers={**headers, "Content-Length": "0"})
    return Response(data, status=200, content_type=mime, headers=headers)


__all__ = ["DELIVERY_PREFIX", "deliver", "delivery_path", "mount_points", "resolve"]
