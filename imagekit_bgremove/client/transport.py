"""The plumbing under ImageKitClient: authentication, one request with its retries, and the
translation of failures into :mod:`imagekit_bgremove.exceptions` (scrubbed of the key)."""

from __future__ import annotations

import base64
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3.exceptions
import urllib3.util
from requests.auth import AuthBase

from .. import safejson
from ..exceptions import (
    REQUEST_ID_HEADER,
    ImageKitError,
    ImageKitTimeout,
    ResponseTooLargeError,
    TransportError,
    error_from_response,
)
from .constants import (
    CHUNK_SIZE,
    ERROR_BODY_LIMIT,
    FILES_PATH,
)
from .hosts import (
    _DEFAULT_PORTS,
    _display_host,
)
from .policy import (
    _certainly_not_applied,
    _connection_not_made,
    _exception_chain,
    _may_have_been_applied,
    _may_have_been_sent,
)

# One logger for the whole client, whichever module of it speaks.
logger = logging.getLogger("imagekit_bgremove.client")


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


# The client


class Transport:
    """Sends requests to ImageKit for :class:`~imagekit_bgremove.client.ImageKitClient`."""

    upload_base_url: str
    api_base_url: str
    timeout: tuple[float, float]
    max_retries: int
    backoff: float
    backoff_max: float

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
                body = safejson.loads(text)
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
            return safejson.loads(raw)
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
