"""A small, careful HTTP client for the parts of ImageKit's API this app uses.

* One ``requests.Session`` per client for the API; HTTP Basic auth with the private key as the user
  name and an empty password, sent only to the API and upload bases. Downloads of delivery URLs use
  a second session that sends no credentials and keeps no cookies.
* Uploads stream: the multipart body is produced chunk by chunk from the file, with an exact
  Content-Length, so a large upload never sits in memory whole. Retries re-send it from the start.
* Retries connection errors, timeouts, 408/409/429 and 5xx with capped exponential backoff and full
  jitter; a 429 waits as long as ImageKit says (``X-RateLimit-Reset`` in ms, or ``Retry-After``).
  The upload's 400 "too many requests ... try again later" is a rate limit too: retried alike.
* Requests that start a paid extension run (an upload or a details update with ``extensions``) are
  never re-sent once they may have reached ImageKit: after a read timeout, a connection lost after
  sending, a 408/5xx or a body that is not JSON the error is raised at once with
  ``maybe_applied=True``. They are retried only when they certainly took no effect: the connection
  could not be made (nothing was sent), a 429, or the rate-limit 400.
* Downloads fetch only http(s) URLs on hosts the caller allows, follow at most
  ``MAX_REDIRECTS`` redirects by hand (each checked against the same list before connecting), and
  never send credentials or cookies.
* Errors become the classes in :mod:`imagekit_bgremove.exceptions`, with ImageKit's message, help
  and ``x-ik-requestId``. The private key never appears in an error, a ``repr`` or a log line.
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import json
import logging
import mimetypes
import os
import random
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any, BinaryIO
from urllib.parse import quote, unquote, urlencode, urljoin, urlsplit, urlunsplit

import idna
import requests
import urllib3.exceptions
import urllib3.util
from requests.auth import AuthBase

from . import __version__
from .exceptions import (
    REQUEST_ID_HEADER,
    DisallowedURLError,
    ImageKitError,
    ImageKitTimeout,
    RateLimitedError,
    ResponseTooLargeError,
    TransportError,
    error_from_response,
)

logger = logging.getLogger(__name__)

UPLOAD_PATH = "/api/v1/files/upload"
FILES_PATH = "/v1/files"
USER_AGENT = f"imagekit-bgremove/{__version__} python-requests/{requests.__version__}"

CHUNK_SIZE = 64 * 1024
# How many redirects a download follows (each one checked against the allowed hosts).
MAX_REDIRECTS = 5
# How much of an error response body to read from a streamed download.
ERROR_BODY_LIMIT = 64 * 1024

FileInput = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO | Any
Timeout = float | tuple[float, float]


class _KeyAuth(AuthBase):
    """HTTP Basic auth with the private key as user name and an empty password."""

    def __init__(self, private_key: str):
        token = base64.b64encode(f"{private_key}:".encode()).decode("ascii")
        self._header = f"Basic {token}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return "<ImageKit private key auth>"


class _NoAuth(AuthBase):
    """Explicitly no credentials (also keeps requests from looking into ~/.netrc)."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


# ---------------------------------------------------------------------------------------------
# Streaming multipart bodies


class _UploadSource:
    """The file of an upload, readable again from its start for every attempt.

    bytes are used in place; a path is opened once; a seekable file object is read from where it
    stands now; anything else is first spooled to an anonymous temporary file on disk."""

    def __init__(self, file: FileInput):
        self._data: memoryview | None = None
        self._stream: Any = None
        self._owned: Any = None
        self._start = 0
        if isinstance(file, bytes | bytearray | memoryview):
            self._data = memoryview(file).cast("B")
            self.size = self._data.nbytes
        elif isinstance(file, str | os.PathLike):
            self._owned = self._stream = open(file, "rb")  # noqa: SIM115 - closed in close()
            self.size = os.fstat(self._stream.fileno()).st_size
        elif hasattr(file, "read"):
            if isinstance(file, io.TextIOBase):
                raise TypeError("the file must be opened in binary mode ('rb'), not text mode")
            if _seekable(file):
                self._stream = file
                self._start = file.tell()
                file.seek(0, os.SEEK_END)
                self.size = max(0, file.tell() - self._start)
                file.seek(self._start)
            else:
                # Not seekable (a pipe, a network stream): keep a copy on disk for retries.
                self._owned = self._stream = tempfile.TemporaryFile()  # noqa: SIM115
                self.size = 0
                try:
                    while True:
                        chunk = file.read(CHUNK_SIZE)
                        if not chunk:
                            break
                        self._stream.write(_as_bytes(chunk))
                        self.size += len(chunk)
                    self._stream.seek(0)
                except BaseException:
                    self.close()
                    raise
        else:
            raise TypeError(
                f"file must be bytes, a path or a binary file object, not {type(file).__name__}"
            )

    def rewind(self) -> Callable[[int], bytes]:
        """Start again from the beginning; returns a ``read(n)`` for this attempt."""
        if self._data is not None:
            data = self._data
            position = 0

            def read_bytes(n: int) -> bytes:
                nonlocal position
                chunk = data[position : position + n].tobytes()
                position += len(chunk)
                return chunk

            return read_bytes
        self._stream.seek(self._start)
        stream = self._stream

        def read_stream(n: int) -> bytes:
            return _as_bytes(stream.read(n))

        return read_stream

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None


def _seekable(file: Any) -> bool:
    try:
        seekable = getattr(file, "seekable", None)
        if seekable is not None and not seekable():
            return False
        file.tell()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _as_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, str):
        raise TypeError("the file must be opened in binary mode ('rb'), not text mode")
    return bytes(chunk) if not isinstance(chunk, bytes) else chunk


class _MultipartStream:
    """A multipart/form-data body produced on demand: text parts from memory, the file part read
    in chunks. ``len()`` is the exact body size, so requests sends a Content-Length."""

    def __init__(self, preamble: bytes, source: _UploadSource, epilogue: bytes):
        self._parts: list[bytes | tuple[Callable[[int], bytes], int]] = [
            preamble,
            (source.rewind(), source.size),
            epilogue,
        ]
        self._length = len(preamble) + source.size + len(epilogue)
        self._index = 0
        self._offset = 0  # within the current part

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK_SIZE), b""))
        while self._index < len(self._parts):
            part = self._parts[self._index]
            if isinstance(part, bytes):
                chunk = part[self._offset : self._offset + size]
            else:
                read, total = part
                remaining = total - self._offset
                chunk = read(min(size, remaining)) if remaining > 0 else b""
                if remaining > 0 and not chunk:
                    raise ImageKitError(
                        f"the file ended after {self._offset} of its {total} bytes while "
                        "uploading; was it changed meanwhile?",
                        retryable=False,
                    )
            if chunk:
                self._offset += len(chunk)
                return chunk
            self._index += 1
            self._offset = 0
        return b""

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.read(CHUNK_SIZE), b"")


def _quote_header_value(value: str) -> str:
    """Escape a form-data name or filename as browsers do (WHATWG HTML): ", CR and LF."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _multipart_factory(
    fields: Sequence[tuple[str, str]], source: _UploadSource, file_name: str, content_type: str
) -> Callable[[], tuple[_MultipartStream, dict[str, str]]]:
    """A function returning a fresh body (and its headers) for each attempt."""
    boundary = f"imagekit-bgremove-{uuid.uuid4().hex}"
    dash = f"--{boundary}\r\n".encode()
    pieces = []
    for name, value in fields:
        pieces.append(dash)
        pieces.append(
            f'Content-Disposition: form-data; name="{_quote_header_value(name)}"\r\n\r\n'.encode()
        )
        pieces.append(value.encode("utf-8"))
        pieces.append(b"\r\n")
    pieces.append(dash)
    pieces.append(
        (
            'Content-Disposition: form-data; name="file"; '
            f'filename="{_quote_header_value(file_name)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
    )
    preamble = b"".join(pieces)
    epilogue = f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def make() -> tuple[_MultipartStream, dict[str, str]]:
        return _MultipartStream(preamble, source, epilogue), dict(headers)

    return make


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _extensions(extensions: Any) -> list[Any]:
    """Extension items as dicts; RemoveBgOptions (anything with ``to_extension``) is converted."""
    if isinstance(extensions, Mapping) or hasattr(extensions, "to_extension"):
        extensions = [extensions]
    return [item.to_extension() if hasattr(item, "to_extension") else item for item in extensions]


def _tags(tags: Iterable[str] | str) -> list[str]:
    if isinstance(tags, str):
        tags = tags.split(",")
    cleaned = [str(tag).strip() for tag in tags]
    for tag in cleaned:
        if "," in tag:
            raise ValueError(f"tag {tag!r} contains a comma; ImageKit tags cannot")
    return [tag for tag in cleaned if tag]


def _comma_list(values: Iterable[str] | str) -> str:
    return values if isinstance(values, str) else ",".join(str(v) for v in values)


def _folder_path(folder: str) -> str:
    """A folder as ImageKit writes it in ``filePath``: ``/`` or ``/a/b`` (no trailing slash)."""
    if not isinstance(folder, str):
        raise TypeError(f"folder must be a string, not {type(folder).__name__}")
    return "/" + "/".join(segment for segment in folder.split("/") if segment)


# ---------------------------------------------------------------------------------------------
# Download URLs: which hosts may be fetched

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
# Characters no download URL may contain at all: whitespace, controls and backslashes are where
# URL parsers disagree (and so where allow-list checks get bypassed).
_BAD_URL_CHARACTER = re.compile(
    r"[\x00-\x20\x7f-\xa0\\\u1680\u2000-\u200f\u2028-\u202f\u205f\u3000\ufeff]"
)

AllowedHosts = frozenset[tuple[str, int | None]]


def _canonical_host(host: str) -> str:
    """A host name or IP literal in the form the connection will use: lower case, IDNA (UTS 46)
    for non-ASCII names as requests encodes them, no trailing dot, IPv6 compressed. ValueError
    when it is neither a host name nor an IP literal."""
    text = host.lower()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if not text:
        raise ValueError("empty host")
    if ":" in text:
        if "%" in text:
            raise ValueError("IPv6 zone ids are not allowed")
        return ipaddress.IPv6Address(text).compressed
    if not text.isascii():
        try:
            text = idna.encode(text, uts46=True).decode("ascii").lower()
        except (UnicodeError, idna.IDNAError) as exc:
            raise ValueError("not a valid international host name") from exc
    if not _HOST_NAME.fullmatch(text):
        raise ValueError("not a valid host name")
    return text


def _display_host(host: str, port: int | None) -> str:
    name = f"[{host}]" if ":" in host else host
    return f"{name}:{port}" if port is not None else name


def _allowed_hosts(allowed_hosts: Collection[str]) -> AllowedHosts:
    """``allowed_hosts`` as ``(canonical host, port or None)`` pairs."""
    if isinstance(allowed_hosts, str | bytes):
        raise TypeError("allowed_hosts must be a collection of host names, not one string")
    result: set[tuple[str, int | None]] = set()
    for entry in allowed_hosts:
        if not isinstance(entry, str):
            raise TypeError(f"allowed_hosts must hold strings, not {type(entry).__name__}")
        text = entry.strip()
        port: int | None = None
        if text.startswith("["):  # [IPv6] or [IPv6]:port
            host, bracket, rest = text[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"allowed host {entry!r} is not host or host:port")
            port_text = rest[1:] if rest else None
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:  # a name, an IPv4 address, or a bare IPv6 address
            host, port_text = text, None
        if port_text is not None:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"allowed host {entry!r} has an invalid port")
            port = int(port_text)
        if _BAD_URL_CHARACTER.search(host) or any(c in host for c in "/?#@"):
            raise ValueError(f"allowed host {entry!r} is not host or host:port")
        try:
            result.add((_canonical_host(host), port))
        except ValueError as exc:
            raise ValueError(f"allowed host {entry!r}: {exc}") from None
    return frozenset(result)


@dataclass(frozen=True)
class _DownloadTarget:
    url: str  # the URL actually fetched, rebuilt from its checked parts
    host: str  # the allowed host, with its port when that is not the scheme's default
    path: str


def _download_target(url: Any, allowed: AllowedHosts) -> _DownloadTarget:
    """Check ``url`` against ``allowed``; DisallowedURLError (before any connection) if refused."""
    if not isinstance(url, str):
        raise DisallowedURLError(f"the URL must be a string, not {type(url).__name__}")
    if _BAD_URL_CHARACTER.search(url):
        raise DisallowedURLError("the URL contains spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        hostname = parts.hostname
        port = parts.port
    except ValueError:
        raise DisallowedURLError("the URL cannot be parsed") from None
    if scheme not in _DEFAULT_PORTS:
        shown = f"{scheme}: URLs" if scheme else "relative URLs"
        raise DisallowedURLError(f"only http and https URLs are downloaded, not {shown}")
    if not hostname:
        raise DisallowedURLError("the URL names no host")
    try:
        host = _canonical_host(hostname)
    except ValueError:
        shown = hostname if len(hostname) <= 100 else hostname[:97] + "..."
        raise DisallowedURLError(f"{shown!r} is not a valid host name") from None
    default = _DEFAULT_PORTS[scheme]
    shown_host = _display_host(host, port if port not in (None, default) else None)
    if "@" in parts.netloc:
        raise DisallowedURLError(
            f"URLs with user info are not downloaded (host {shown_host})", host=shown_host
        )
    if port == 0:
        raise DisallowedURLError(f"port 0 of {host} is not a valid port", host=shown_host)
    effective = default if port is None else port
    if (host, effective) not in allowed and not (effective == default and (host, None) in allowed):
        raise DisallowedURLError(f"{shown_host} is not one of the allowed hosts", host=shown_host)
    netloc = _display_host(host, port)
    path = parts.path or "/"
    rebuilt = urlunsplit((scheme, netloc, path, parts.query, ""))
    # What requests/urllib3 will parse must be the very host that was checked.
    parsed = urllib3.util.parse_url(rebuilt)
    if (parsed.host or "").strip("[]").lower() != host.strip("[]") or parsed.port != port:
        raise DisallowedURLError("the URL is ambiguous", host=shown_host)
    return _DownloadTarget(rebuilt, shown_host, path)


@dataclass(frozen=True)
class _Redirect:
    location: str


# ---------------------------------------------------------------------------------------------
# Delivery URLs

ORIGINAL_TRANSFORMATION = "orig-true"


def original_url(url: str) -> str:
    """``url`` (an ImageKit delivery URL) with the query parameter ``tr=orig-true`` added, so the
    bytes served are exactly the stored file, e.g. remove-bg's PNG, and not a copy converted by
    the account's automatic format and quality settings.

    Other query parameters (``updatedAt=...``, ``ik-obj-version=...``) are kept byte for byte, in
    their order. An existing ``tr`` parameter is REPLACED, not chained: ``orig-true`` means
    "serve the original file without applying any transformations" (ImageKit's spec and its
    "Deliver original file as-is" docs), so chaining it with others (``tr=w-100:orig-true``)
    would ask for two contradictory things. A transformation in the path (``/tr:w-100/...``) is
    left alone: the URLs ImageKit's API returns never have one. Signed URLs (``ik-s``) cannot be
    changed without re-signing them; this function does not do that."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a string, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.netloc:
        raise ValueError("not an absolute http(s) URL")
    kept = [
        piece
        for piece in parts.query.split("&")
        if piece and unquote(piece.partition("=")[0].replace("+", " ")) != "tr"
    ]
    kept.append(f"tr={ORIGINAL_TRANSFORMATION}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(kept), parts.fragment))


# ---------------------------------------------------------------------------------------------
# The client


class ImageKitClient:
    """ImageKit API client. Every argument defaults to the ``IMAGEKIT_BGREMOVE`` setting behind it;
    passing all of them needs no Django settings at all."""

    def __init__(
        self,
        *,
        private_key: str | None = None,
        upload_base_url: str | None = None,
        api_base_url: str | None = None,
        timeout: Timeout | None = None,
        max_retries: int | None = None,
        backoff: float | None = None,
        backoff_max: float | None = None,
        sleep: Callable[[float], Any] | None = None,
        session: requests.Session | None = None,
    ):
        def setting(value: Any, name: str) -> Any:
            if value is not None:
                return value
            from .conf import app_settings

            return getattr(app_settings, name)

        key = str(setting(private_key, "private_key"))
        self.upload_base_url = str(setting(upload_base_url, "upload_base_url")).rstrip("/")
        self.api_base_url = str(setting(api_base_url, "api_base_url")).rstrip("/")
        self.timeout = _timeout(setting(timeout, "timeout"))
        self.max_retries = int(setting(max_retries, "MAX_RETRIES"))
        self.backoff = float(setting(backoff, "RETRY_BACKOFF"))
        self.backoff_max = float(setting(backoff_max, "RETRY_BACKOFF_MAX"))
        if self.max_retries < 0 or self.backoff < 0 or self.backoff_max < 0:
            raise ValueError("max_retries, backoff and backoff_max must not be negative")
        self._sleep = sleep or time.sleep
        self._auth = _KeyAuth(key)
        self._no_auth = _NoAuth()
        # Only kept to scrub it out of anything the server might echo back.
        self._secrets = tuple(
            s for s in (key, base64.b64encode(f"{key}:".encode()).decode("ascii")) if len(s) >= 4
        )
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        # Downloads get a session of their own that never stores or sends cookies.
        self._download_session = requests.Session()
        self._download_session.headers["User-Agent"] = USER_AGENT
        self._download_session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        self.closed = False

    def __repr__(self) -> str:
        return f"<ImageKitClient upload={self.upload_base_url!r} api={self.api_base_url!r}>"

    def close(self) -> None:
        self._session.close()
        self._download_session.close()
        self.closed = True

    def __enter__(self) -> ImageKitClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- API ----------------------------------------------------------------------------------

    def upload(
        self,
        file: FileInput,
        file_name: str,
        *,
        folder: str | None = None,
        use_unique_file_name: bool | None = None,
        overwrite_file: bool | None = None,
        tags: Iterable[str] | str = (),
        extensions: Iterable[Any] | None = None,
        webhook_url: str | None = None,
        custom_metadata: Mapping[str, Any] | None = None,
        description: str | None = None,
        is_private_file: bool | None = None,
        response_fields: Iterable[str] | str | None = None,
    ) -> dict[str, Any]:
        """Upload ``file`` (bytes, a path or a binary file object) as ``file_name``.

        Returns ImageKit's JSON: ``fileId``, ``url``, ``versionInfo``, ``extensionStatus``, ...
        A retried upload can create a second file: callers make submission idempotent.

        With ``extensions`` the upload starts paid work and is only retried when it certainly took
        no effect; otherwise the error has ``maybe_applied=True`` (see :meth:`find_file`)."""
        if not file_name:
            raise ValueError("file_name is required")
        fields: list[tuple[str, str]] = [("fileName", file_name)]
        if folder is not None:
            fields.append(("folder", folder))
        if use_unique_file_name is not None:
            fields.append(("useUniqueFileName", _bool(use_unique_file_name)))
        if overwrite_file is not None:
            fields.append(("overwriteFile", _bool(overwrite_file)))
        tag_list = _tags(tags or ())
        if tag_list:
            fields.append(("tags", ",".join(tag_list)))
        if is_private_file is not None:
            fields.append(("isPrivateFile", _bool(is_private_file)))
        if custom_metadata is not None:
            fields.append(("customMetadata", _compact_json(dict(custom_metadata))))
        if response_fields:
            fields.append(("responseFields", _comma_list(response_fields)))
        if description is not None:
            fields.append(("description", description))
        paid = False
        if extensions is not None:
            if isinstance(extensions, str):
                items = extensions
                paid = extensions.strip() not in ("", "[]")
            else:
                extension_list = _extensions(extensions)
                items = _compact_json(extension_list)
                paid = bool(extension_list)
            fields.append(("extensions", items))
        if webhook_url is not None:
            fields.append(("webhookUrl", webhook_url))
        content_type = (
            getattr(file, "content_type", None)
            or mimetypes.guess_type(file_name)[0]
            or "application/octet-stream"
        )
        source = _UploadSource(file)
        try:
            make_body = _multipart_factory(fields, source, file_name, str(content_type))
            return self._call(
                "POST", self.upload_base_url + UPLOAD_PATH, make_body=make_body, paid=paid
            )
        finally:
            source.close()

    def update_file_details(
        self,
        file_id: str,
        *,
        extensions: Iterable[Any] | None = None,
        webhook_url: str | None = None,
        tags: Iterable[str] | None = None,
        custom_metadata: Mapping[str, Any] | None = None,
        description: str | None = None,
        remove_ai_tags: Iterable[str] | str | None = None,
        custom_coordinates: str | None = None,
    ) -> dict[str, Any]:
        """PATCH the file's details; sends only the arguments given (camelCase on the wire).

        With ``extensions`` this starts paid work: it is only retried when it certainly took no
        effect; otherwise the error has ``maybe_applied=True`` and the caller should look at the
        file's details or versions before asking again."""
        body: dict[str, Any] = {}
        if extensions is not None:
            body["extensions"] = _extensions(extensions)
        if webhook_url is not None:
            body["webhookUrl"] = webhook_url
        if tags is not None:
            body["tags"] = _tags(tags)
        if custom_coordinates is not None:
            body["customCoordinates"] = custom_coordinates
        if custom_metadata is not None:
            body["customMetadata"] = dict(custom_metadata)
        if remove_ai_tags is not None:
            body["removeAITags"] = (
                remove_ai_tags if isinstance(remove_ai_tags, str) else list(remove_ai_tags)
            )
        if description is not None:
            body["description"] = description
        paid = bool(body.get("extensions"))
        return self._call("PATCH", self._file_url(file_id, "details"), json_body=body, paid=paid)

    def get_file_details(self, file_id: str) -> dict[str, Any]:
        return self._call("GET", self._file_url(file_id, "details"))

    def list_versions(self, file_id: str) -> list[dict[str, Any]]:
        return self._call("GET", self._file_url(file_id, "versions"))

    def restore_version(self, file_id: str, version_id: str) -> dict[str, Any]:
        url = self._file_url(file_id, "versions", version_id, "restore")
        return self._call("PUT", url)

    def list_files(
        self,
        *,
        path: str | None = None,
        search_query: str | None = None,
        file_type: str | None = None,
        limit: int | None = None,
        skip: int | None = None,
    ) -> list[dict[str, Any]]:
        """List and search assets (``GET /v1/files``); returns ImageKit's list of file (and,
        depending on the query, folder or file-version) objects.

        Sends only the parameters given, as ``path`` (a folder such as ``"/bgremove/"``),
        ``searchQuery`` (ImageKit's Lucene-like syntax, e.g. ``name = "cat.jpg"``), ``fileType``
        (``"all"``, ``"image"``, ``"non-image"``), ``limit`` (1 to 1000) and ``skip`` (0 or
        more); everything else is the server's default (``type=file``, which ImageKit ignores
        when ``searchQuery`` is given, sorted by creation, at most 1000 results)."""
        params: list[tuple[str, str]] = []
        if path is not None:
            params.append(("path", str(path)))
        if search_query is not None:
            params.append(("searchQuery", str(search_query)))
        if file_type is not None:
            params.append(("fileType", str(file_type)))
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
                raise ValueError("limit must be an integer from 1 to 1000")
            params.append(("limit", str(limit)))
        if skip is not None:
            if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
                raise ValueError("skip must be an integer of 0 or more")
            params.append(("skip", str(skip)))
        url = f"{self.api_base_url}{FILES_PATH}"
        if params:  # spaces as %20, not "+": unambiguous for any server
            url += "?" + urlencode(params, quote_via=quote)
        result = self._call("GET", url)
        if not isinstance(result, list):
            raise ImageKitError(
                "ImageKit answered the file list with something that is not a list",
                body=self._redact(result),
                method="GET",
                path=FILES_PATH,
            )
        return result

    def find_file(self, folder: str, name: str) -> dict[str, Any] | None:
        """The file called exactly ``name`` directly in ``folder`` (``"/"`` for the root;
        leading, trailing and repeated slashes do not matter), or ``None``.

        For an upload whose answer was lost: search before uploading again. It asks ImageKit
        for ``path=<folder>/`` and ``searchQuery=name = "<name>"`` (backslashes and double
        quotes in the name escaped with a backslash), then keeps only a result of type ``file``
        whose ``name`` is exactly ``name`` and whose ``filePath`` lies directly in ``folder``,
        so a loose match by the search cannot be mistaken for the file. ``name`` is compared as
        ImageKit stores it: ImageKit replaces characters other than letters, digits, ``.`` and
        ``-`` in uploaded names with ``_``, and ``useUniqueFileName`` (default true) adds a
        random suffix. ImageKit's search index may lag behind a just-finished upload, so
        ``None`` is evidence, not proof, that no such file exists."""
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError("name must be a file name without slashes")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            raise ValueError("name must not contain control characters")
        folder_path = _folder_path(folder)
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        results = self.list_files(
            path=folder_path if folder_path == "/" else folder_path + "/",
            search_query=f'name = "{escaped}"',
        )
        for item in results:
            if not isinstance(item, Mapping) or item.get("type", "file") != "file":
                continue
            if item.get("name") != name:
                continue
            file_path = str(item.get("filePath") or "")
            if _folder_path(file_path.rpartition("/")[0]) == folder_path:
                return dict(item)
        return None

    def download(
        self, url: str, *, max_bytes: int, allowed_hosts: Collection[str]
    ) -> tuple[bytes, str]:
        """GET a delivery URL and return ``(content, media type)``, e.g. ``"image/png"``.

        Only ``http``/``https`` URLs on ``allowed_hosts`` are fetched. Each entry is a host name
        or IP address, optionally with a port: ``"ik.imagekit.io"``, ``"127.0.0.1:8790"``,
        ``"[::1]:8080"``. A host WITHOUT a port allows only the default port of the URL's scheme
        (80 for http, 443 for https); ``host:port`` allows exactly that port, for either scheme.
        Hosts are compared lower-cased and IDNA-encoded (as requests connects to them), without a
        trailing dot; IP addresses are compared as written (``localhost`` is not ``127.0.0.1``).
        URLs with user info (``user@host``), whitespace, control characters or backslashes are
        refused. Anything refused raises :class:`DisallowedURLError` (not retryable) naming the
        host, before any connection is made. Redirects are followed by hand, at most
        ``MAX_REDIRECTS`` of them, and every hop is checked against the same list before it is
        contacted. No credentials and no cookies are ever sent. DNS is not pinned: an allowed
        name is trusted to resolve where its owner says.

        Refuses, with :class:`ResponseTooLargeError`, anything over ``max_bytes``: at once when
        Content-Length says so, otherwise as soon as more than ``max_bytes`` have arrived.
        Transport errors name only the allowed host, never the underlying exception's text
        (that stays in ``__cause__``)."""
        allowed = _allowed_hosts(allowed_hosts)
        target = _download_target(url, allowed)
        session = self._download_session

        def read(response: requests.Response) -> tuple[bytes, str] | _Redirect:
            if response.is_redirect:
                return _Redirect(session.get_redirect_target(response) or "")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise self._too_large(response, target.host, max_bytes, int(declared))
            buffer = bytearray()
            for chunk in response.iter_content(CHUNK_SIZE):
                buffer += chunk
                if len(buffer) > max_bytes:
                    raise self._too_large(response, target.host, max_bytes, None)
            content_type = response.headers.get("Content-Type", "")
            media_type = content_type.split(";", 1)[0].strip().lower()
            return bytes(buffer), media_type or "application/octet-stream"

        for _hop in range(MAX_REDIRECTS + 1):
            result = self._request(
                "GET",
                target.url,
                authenticated=False,
                stream=True,
                handle=read,
                redirects=True,
                label="download",
            )
            if not isinstance(result, _Redirect):
                return result
            # Checked before anything connects to it, like the first URL.
            target = _download_target(urljoin(target.url, result.location), allowed)
        raise ImageKitError(
            f"download from {target.host} was redirected more than {MAX_REDIRECTS} times",
            retryable=False,
            method="GET",
            path=target.path,
        )

    # -- plumbing -----------------------------------------------------------------------------

    def _file_url(self, file_id: str, *segments: str) -> str:
        if not file_id:
            raise ValueError("file_id is required")
        path = "/".join(quote(str(s), safe="") for s in (file_id, *segments))
        return f"{self.api_base_url}{FILES_PATH}/{path}"

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        return self._request(method, url, handle=self._parse_json, **kwargs)

    def _request(
        self,
        method: str,
        url: str,
        *,
        handle: Callable[[requests.Response], Any],
        json_body: Any = None,
        make_body: Callable[[], tuple[Any, dict[str, str]]] | None = None,
        authenticated: bool = True,
        stream: bool = False,
        paid: bool = False,
        redirects: bool = False,
        label: str | None = None,
    ) -> Any:
        """Send one request, retrying what is worth retrying. ``paid``: the request starts paid
        work, so it is re-sent only when it certainly took no effect (see the module docstring).
        ``redirects``: hand redirect responses to ``handle`` too (downloads follow them by hand).
        Unauthenticated requests (downloads) go through the cookie-less download session.
        ``label`` names the request in transport errors (default: method and path)."""
        parts = urlsplit(url)
        path = parts.path
        host = _display_host(
            parts.hostname or "",
            parts.port if parts.port != _DEFAULT_PORTS.get(parts.scheme) else None,
        )
        label = label or f"{method} {path}"
        attempt = 0
        while True:
            attempt += 1
            headers = {"Accept": "application/json"} if authenticated else {}
            data = None
            if make_body is not None:
                data, extra = make_body()
                headers.update(extra)
            error: ImageKitError
            sent = True  # whether the request may have reached the server
            session = self._session if authenticated else self._download_session
            try:
                response = session.request(
                    method,
                    url,
                    data=data,
                    json=json_body,
                    headers=headers,
                    timeout=self.timeout,
                    auth=self._auth if authenticated else self._no_auth,
                    stream=stream,
                    # An API redirect would re-send a consumed body (ImageKit does not redirect);
                    # downloads follow redirects by hand, checking every hop.
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                sent = _may_have_been_sent(exc)
                error = self._transport_error(exc, method, path, label, host)
            else:
                try:
                    if response.status_code < 300 or (redirects and response.is_redirect):
                        try:
                            return handle(response)
                        except (
                            requests.ConnectionError,
                            requests.Timeout,
                            requests.exceptions.ChunkedEncodingError,
                        ) as exc:
                            error = self._transport_error(exc, method, path, label, host)
                        except ImageKitError as exc:  # e.g. a body that is not JSON
                            if not paid:
                                raise
                            error = exc
                    else:
                        error = self._error_from(response, method, path, streamed=stream)
                finally:
                    response.close()
            error.attempts = attempt
            if paid and _may_have_been_applied(error, sent):
                error.maybe_applied = True
                logger.warning(
                    "ImageKit %s %s failed (%s, request id %s) after it may have reached "
                    "ImageKit; not re-sending a request that starts paid work",
                    method,
                    path,
                    error.status if error.status is not None else type(error).__name__,
                    error.request_id or "-",
                )
                raise error from error.__cause__
            if not error.retryable or attempt > self.max_retries:
                raise error from error.__cause__
            if paid and not _certainly_not_applied(error, sent):
                raise error from error.__cause__
            delay = self._retry_delay(attempt, error)
            if delay is None:
                logger.warning(
                    "ImageKit %s %s: asked to wait %.1f s (request id %s), longer than "
                    "RETRY_BACKOFF_MAX %.1f s; giving up",
                    method,
                    path,
                    error.retry_after,
                    error.request_id or "-",
                    self.backoff_max,
                )
                raise error from error.__cause__
            logger.warning(
                "ImageKit %s %s failed (%s, request id %s); retry %d of %d in %.2f s",
                method,
                path,
                error.status if error.status is not None else type(error).__name__,
                error.request_id or "-",
                attempt,
                self.max_retries,
                delay,
            )
            self._sleep(delay)

    def _retry_delay(self, attempt: int, error: ImageKitError) -> float | None:
        """Full-jitter exponential backoff; at least what the server asked for, or ``None``
        (give up) when it asked for longer than ``backoff_max``."""
        ceiling = min(self.backoff_max, self.backoff * 2 ** min(attempt - 1, 60))
        delay = random.uniform(0, ceiling)
        if error.retry_after is not None:
            if error.retry_after > self.backoff_max:
                return None
            delay = min(max(delay, error.retry_after), self.backoff_max)
        return delay

    def _redact(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, "[redacted]")
            return value
        if isinstance(value, Mapping):
            return {self._redact(k): self._redact(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._redact(v) for v in value]
        return value

    def _transport_error(
        self, exc: requests.RequestException, method: str, path: str, label: str, host: str
    ) -> TransportError:
        """The error for a request that got no usable answer. Its message names only ``label``
        (the request) and ``host`` (the configured ImageKit host or the allowed download host):
        never the underlying exception's text, which can tell whoever reads a job's error about
        addresses, ports and their states. That text stays in ``__cause__`` for logs."""
        connect, read = self.timeout
        # A read timeout while streaming a body comes wrapped in a ConnectionError.
        timed_out = isinstance(exc, requests.Timeout) or any(
            isinstance(e, urllib3.exceptions.ReadTimeoutError) for e in _exception_chain(exc)
        )
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            what = f"could not connect to {host} in time (connect timeout {connect:g} s)"
        elif timed_out:
            what = f"{host} timed out (no answer within the read timeout of {read:g} s)"
        elif isinstance(exc, requests.exceptions.SSLError):
            what = f"the TLS connection to {host} failed"
        elif isinstance(exc, requests.exceptions.ProxyError):
            what = f"could not reach {host} through the proxy"
        elif isinstance(exc, requests.ConnectionError):
            if _connection_not_made(exc):
                what = f"could not connect to {host} (connection failed)"
            else:
                what = f"the connection to {host} broke off before the answer was complete"
        elif isinstance(exc, requests.exceptions.ChunkedEncodingError):
            what = f"the answer from {host} was cut short"
        elif isinstance(exc, requests.exceptions.ContentDecodingError):
            what = f"the answer from {host} could not be decoded"
        else:
            what = f"the request to {host} could not be sent ({type(exc).__name__})"
        message = f"{label}: {what}"
        if timed_out:
            error: TransportError = ImageKitTimeout(message, method=method, path=path)
        else:
            retryable = isinstance(
                exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError
            )
            error = TransportError(message, method=method, path=path, retryable=retryable)
        error.__cause__ = exc
        return error

    def _error_from(
        self, response: requests.Response, method: str, path: str, *, streamed: bool = False
    ) -> ImageKitError:
        if streamed:  # read no more of a (possibly huge) streamed body than an error needs
            raw = b""
            try:
                for chunk in response.iter_content(CHUNK_SIZE):
                    raw += chunk
                    if len(raw) >= ERROR_BODY_LIMIT:
                        break
            except requests.RequestException:
                pass
        else:
            raw = response.content or b""
        text = raw.decode(response.encoding or "utf-8", errors="replace")
        body: Any = text
        if text.strip()[:1] in ("{", "["):
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        error = error_from_response(
            response.status_code, response.headers, self._redact(body), method=method, path=path
        )
        if response.status_code < 400:  # an unexpected redirect
            error.retryable = False
        return error

    def _parse_json(self, response: requests.Response) -> Any:
        raw = response.content
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ImageKitError(
                f"ImageKit answered {response.status_code} with a body that is not JSON",
                status=response.status_code,
                request_id=response.headers.get(REQUEST_ID_HEADER),
                body=self._redact(raw[:2000].decode("utf-8", errors="replace")),
                method=response.request.method,
                path=urlsplit(response.url).path,
            ) from exc

    def _too_large(
        self, response: requests.Response, host: str, limit: int, size: int | None
    ) -> ResponseTooLargeError:
        path = urlsplit(response.url).path
        said = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        return ResponseTooLargeError(
            f"download from {host} is {said}; the limit is {limit} bytes",
            limit=limit,
            size=size,
            status=response.status_code,
            request_id=response.headers.get(REQUEST_ID_HEADER),
            method="GET",
            path=path,
        )


def _may_have_been_sent(exc: requests.RequestException) -> bool:
    """Whether a request that failed with ``exc`` may have reached the server.

    Only a failure to open the connection proves nothing was sent: a connect timeout, or a
    connection error caused by urllib3's ``NewConnectionError`` (refused, unreachable, DNS).
    A read timeout, a connection reset or closed after sending (``RemoteDisconnected``,
    ``ProtocolError``), TLS or proxy trouble may all come after the request went out. Errors
    raised while preparing the request (invalid URL, headers, JSON) come before anything is sent.
    This relies on the transport adapter not retrying by itself (requests' default)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    if isinstance(exc, requests.exceptions.SSLError | requests.exceptions.ProxyError):
        return True
    if isinstance(exc, requests.ConnectionError):
        return not _connection_not_made(exc)
    return isinstance(
        exc,
        requests.Timeout
        | requests.exceptions.ChunkedEncodingError
        | requests.exceptions.ContentDecodingError
        | requests.exceptions.RetryError,
    )


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions behind it: causes, contexts, urllib3's ``reason`` and
    exceptions passed as arguments (requests wraps urllib3's errors that way)."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending and len(seen) < 50:
        current = pending.pop()
        if any(current is known for known in seen):
            continue
        seen.append(current)
        linked = [getattr(current, "reason", None), current.__cause__, current.__context__]
        linked.extend(arg for arg in current.args if isinstance(arg, BaseException))
        pending.extend(item for item in linked if isinstance(item, BaseException))
    return seen


def _connection_not_made(exc: BaseException) -> bool:
    """Whether the chain behind ``exc`` shows the connection was never established: urllib3's
    ``NewConnectionError`` (refused, unreachable, DNS) and no sign of a connection that broke."""
    chain = _exception_chain(exc)
    return any(isinstance(e, urllib3.exceptions.NewConnectionError) for e in chain) and not any(
        isinstance(e, urllib3.exceptions.ProtocolError | urllib3.exceptions.ReadTimeoutError)
        for e in chain
    )


def _may_have_been_applied(error: ImageKitError, sent: bool) -> bool:
    """Whether a failed request may still have taken effect at ImageKit: it may have been sent
    and no clear refusal came back (no answer, a 408 or 5xx, or a success we could not read)."""
    if isinstance(error, TransportError):
        return sent
    if error.status is None:
        return False
    return error.status < 300 or error.status == 408 or error.status >= 500


def _certainly_not_applied(error: ImageKitError, sent: bool) -> bool:
    """Failures after which a request that starts paid work may be sent again: nothing was sent,
    or ImageKit refused it for its rate (429, or the rate-limit 400)."""
    if isinstance(error, TransportError):
        return not sent
    return isinstance(error, RateLimitedError)


def _timeout(value: Timeout) -> tuple[float, float]:
    if isinstance(value, int | float):
        return (float(value), float(value))
    connect, read = value
    return (float(connect), float(read))


# ---------------------------------------------------------------------------------------------
# The shared client

_local = threading.local()


def get_client() -> ImageKitClient:
    """A client built from the current settings, reused per thread while they stay the same
    (``override_settings`` therefore gets a fresh one). In emulator mode with
    ``EMULATOR_AUTOSTART`` the bundled emulator is started first if nothing answers."""
    from .conf import app_settings

    if app_settings.emulator_mode and app_settings.EMULATOR_AUTOSTART:
        from .emulator.embedded import ensure_emulator

        ensure_emulator(str(app_settings.EMULATOR_URL).rstrip("/"))
    key = (
        hashlib.sha256(app_settings.private_key.encode()).hexdigest(),
        app_settings.upload_base_url,
        app_settings.api_base_url,
        app_settings.timeout,
        app_settings.MAX_RETRIES,
        app_settings.RETRY_BACKOFF,
        app_settings.RETRY_BACKOFF_MAX,
    )
    cached = getattr(_local, "client", None)
    if cached is not None:
        cached_key, client = cached
        if cached_key == key and not client.closed:
            return client
        client.close()
    client = ImageKitClient()
    _local.client = (key, client)
    return client


__all__ = ["MAX_REDIRECTS", "ImageKitClient", "get_client", "original_url"]
