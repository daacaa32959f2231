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
import logging
import mimetypes
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import quote, urlencode, urljoin

import requests

from ..exceptions import (
    ImageKitError,
)
from .bodies import (
    _bool,
    _comma_list,
    _compact_json,
    _extensions,
    _folder_path,
    _multipart_factory,
    _tags,
    _UploadSource,
)
from .constants import (
    CHUNK_SIZE,
    FILES_PATH,
    MAX_REDIRECTS,
    UPLOAD_PATH,
    USER_AGENT,
    FileInput,
    Timeout,
)
from .hosts import (
    _allowed_hosts,
    _download_target,
    _Redirect,
    original_url,
)
from .policy import (
    _timeout,
)
from .transport import Transport, _KeyAuth, _NoAuth

logger = logging.getLogger(__name__)


class ImageKitClient(Transport):
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
            from ..conf import app_settings

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

    def delete_file(self, file_id: str) -> None:
        """Delete the file and all its versions. A file that is not there (404) counts as
        deleted: a retried or repeated deletion finds it gone."""
        try:
            self._request("DELETE", self._file_url(file_id), handle=lambda response: None)
        except ImageKitError as exc:
            if exc.status != 404:
                raise

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


# ---------------------------------------------------------------------------------------------
# The shared client

_local = threading.local()
# Set by imagekit_bgremove.testing.FakeImageKit while it is installed: every thread gets it.
_fake: Any = None


def get_client() -> ImageKitClient:
    """A client built from the current settings, reused per thread while they stay the same
    (``override_settings`` therefore gets a fresh one). ImproperlyConfigured when the settings
    name no ImageKit."""
    from ..conf import app_settings

    if _fake is not None:
        return _fake
    app_settings.require_imagekit()
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
