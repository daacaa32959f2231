"""What can go wrong when talking to ImageKit, as a small exception hierarchy.

Every error carries what a log line or a retry decision needs: the HTTP ``status`` (``None`` when no
response arrived), ImageKit's ``message`` and ``help``, the ``request_id`` from the
``x-ik-requestId`` header, the parsed ``body`` and whether trying again may help (``retryable``).

    ImageKitError
    +-- TransportError            no response: connection refused, reset, DNS, ...
    |   +-- ImageKitTimeout       connect or read timeout (also a builtin TimeoutError)
    +-- BadRequestError           400
    |   +-- QuotaExceededError    400 "Extensions quota exceeded."
    +-- AuthenticationError       401, 403
    +-- NotFoundError             404
    +-- ConflictError             409 (retryable)
    +-- RateLimitedError          429 (retryable; ``reset_after`` seconds)
    |   +-- TooManyUpdatesError   400 "...too many requests to update the file recently..."
    |                             (also a BadRequestError; retryable like a 429)
    +-- ServerError               5xx (retryable)
    +-- ResponseTooLargeError     a download over its size limit
    +-- DisallowedURLError        a download URL (or redirect) outside the allowed hosts
                                  (also a ValueError)

``retryable`` says whether the trouble is transient. ``maybe_applied`` is about requests that start
paid work (an upload or a details update with ``extensions``): it is True when the request may have
reached ImageKit and taken effect although no clear answer came back (timeout after sending, a
dropped connection, a 5xx, a body that is not JSON). The client never re-sends such a request; the
caller should first ask ImageKit (file details, versions, a search by name) what happened.

No credentials are ever stored on an exception, so none can leak through ``str``, ``repr``,
logging or pickling.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

REQUEST_ID_HEADER = "x-ik-requestId"

# Statuses worth trying again: the request may well succeed later.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


class ImageKitError(Exception):
    """Base class of every error raised by :class:`imagekit_bgremove.client.ImageKitClient`."""

    default_retryable = False
    # Class-level default too, so errors pickled before the attribute existed still have it.
    maybe_applied: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        help: str | None = None,  # ImageKit's own field name
        request_id: str | None = None,
        body: Any = None,
        retryable: bool | None = None,
        errors: Any = None,
        method: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
        maybe_applied: bool = False,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.help = help
        self.request_id = request_id
        self.body = body
        self.retryable = self.default_retryable if retryable is None else bool(retryable)
        self.errors = errors
        self.method = method
        self.path = path
        # Seconds the server asked us to wait (Retry-After / X-RateLimit-Reset), if it said.
        self.retry_after = retry_after
        # How many requests were made before this error was raised (set by the client).
        self.attempts = 1
        # A request that starts paid work may have been applied although it failed (see above).
        self.maybe_applied = bool(maybe_applied)

    @property
    def reason(self) -> str:
        """The HTTP reason phrase of ``status`` ("Not Found"), or "" if unknown."""
        if self.status is None:
            return ""
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return ""

    def _prefix(self) -> str:
        if self.status is None:
            return "ImageKit request failed"
        return " ".join(part for part in ("ImageKit", str(self.status), self.reason) if part)

    def __str__(self) -> str:
        text = f"{self._prefix()}: {self.message}"
        details = _format_errors(self.errors)
        if details:
            text += f" [{details}]"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        parts = [f"status={self.status!r}", f"message={self.message!r}"]
        if self.request_id:
            parts.append(f"request_id={self.request_id!r}")
        if self.method and self.path:
            parts.append(f"request={self.method} {self.path}")
        if self.maybe_applied:
            parts.append("maybe_applied=True")
        return f"{type(self).__name__}({', '.join(parts)})"

    def __reduce__(self):
        # Keyword-only arguments do not survive the default Exception pickling.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[ImageKitError], state: dict[str, Any]) -> ImageKitError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


def _format_errors(errors: Any) -> str:
    """A compact rendering of the optional ``errors`` field of a 400 response."""
    if not errors:
        return ""
    if isinstance(errors, Mapping):
        return "; ".join(
            f"{key}: {_format_errors(value) or value}" for key, value in errors.items()
        )
    if isinstance(errors, list | tuple):
        return "; ".join(_format_errors(item) or str(item) for item in errors)
    return str(errors)


class TransportError(ImageKitError):
    """No usable response: the connection failed, was reset or the body was cut short."""

    default_retryable = True

    def _prefix(self) -> str:
        return "ImageKit connection error"


class ImageKitTimeout(TransportError, TimeoutError):
    """ImageKit did not connect or answer within the configured timeout."""

    def _prefix(self) -> str:
        return "ImageKit timeout"


class BadRequestError(ImageKitError):
    """400: ImageKit refused the request as sent; sending it again will not help."""


class QuotaExceededError(BadRequestError):
    """400 "Extensions quota exceeded.": the account has no extension units left."""


class AuthenticationError(ImageKitError):
    """401 (no key) or 403 (wrong or expired key, disabled account)."""


class NotFoundError(ImageKitError):
    """404: the file (or version) does not exist."""


class ConflictError(ImageKitError):
    """409: the resource is busy; ImageKit may accept the same request a little later."""

    default_retryable = True


class RateLimitedError(ImageKitError):
    """429: too many requests. ``reset_after`` is how many seconds ImageKit asked us to wait."""

    default_retryable = True

    @property
    def reset_after(self) -> float | None:
        return self.retry_after


class TooManyUpdatesError(RateLimitedError, BadRequestError):
    """400 "You have sent too many requests to update the file recently. Please try again later.":
    a rate limit answered with status 400 (documented for the upload API). Retried like a 429,
    honouring ``X-RateLimit-Reset`` / ``Retry-After`` when the answer carries them. It is both a
    :class:`RateLimitedError` and a :class:`BadRequestError`; ``status`` stays 400."""

    default_retryable = True


class ServerError(ImageKitError):
    """5xx: trouble on ImageKit's side."""

    default_retryable = True


class ResponseTooLargeError(ImageKitError):
    """A download was refused because it is larger than the allowed number of bytes."""

    def __init__(self, message: str, *, limit: int, size: int | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.limit = limit
        self.size = size


class DisallowedURLError(ImageKitError, ValueError):
    """A download was refused before any connection was made: the URL (or a redirect it led to)
    is not an http(s) URL on one of the allowed hosts, carries user info, or cannot be parsed.
    ``host`` is the refused host (``host:port`` for a non-default port), or ``None`` when the URL
    names none. Never retryable. Also a ``ValueError``, which ``download`` raised for bad URLs
    before."""

    def __init__(self, message: str, *, host: str | None = None, **kwargs: Any):
        kwargs.setdefault("retryable", False)
        super().__init__(message, **kwargs)
        self.host = host

    def _prefix(self) -> str:
        return "Download refused"


def is_quota_message(message: str | None) -> bool:
    text = (message or "").lower()
    return "quota" in text and "extension" in text


def is_rate_limit_message(message: str | None) -> bool:
    """Whether a 400's message is a rate limit in disguise. The spec documents one such message for
    the upload API ("You have sent too many requests to update the file recently. Please try again
    later."); any 400 saying "too many requests" or "try again later" is treated the same way.
    ("Upload Limit Exceeded." is a plan limit, not a rate limit: it stays final.)"""
    text = " ".join((message or "").lower().split())
    return "too many requests" in text or "try again later" in text


def error_class_for(status: int, message: str | None = None) -> type[ImageKitError]:
    """The exception class for an HTTP error ``status`` (and, for 400, its message)."""
    if status == 400:
        if is_quota_message(message):
            return QuotaExceededError
        return TooManyUpdatesError if is_rate_limit_message(message) else BadRequestError
    if status in (401, 403):
        return AuthenticationError
    if status == 404:
        return NotFoundError
    if status == 409:
        return ConflictError
    if status == 429:
        return RateLimitedError
    if status >= 500:
        return ServerError
    return ImageKitError


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait before trying again, from ``X-RateLimit-Reset`` (MILLISECONDS, ImageKit's
    header) or else ``Retry-After`` (seconds or an HTTP date). ``None`` when neither says."""
    lowered = {str(key).lower(): str(value).strip() for key, value in headers.items()}
    reset = lowered.get("x-ratelimit-reset")
    if reset:
        try:
            milliseconds = float(reset)
        except ValueError:
            pass
        else:
            if milliseconds >= 0 and milliseconds == milliseconds:  # not NaN
                return milliseconds / 1000.0
    retry_after = lowered.get("retry-after")
    if retry_after:
        try:
            seconds = float(retry_after)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(retry_after)
            except (TypeError, ValueError, IndexError):
                return None
            if when is None:
                return None
            current = time.time() if now is None else now
            return max(0.0, when.timestamp() - current)
        if seconds >= 0 and seconds == seconds:
            return seconds
    return None


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    *,
    method: str | None = None,
    path: str | None = None,
) -> ImageKitError:
    """Build the right exception for an error response. ``body`` is the parsed JSON (a dict for
    ImageKit's ``{"message", "help"}`` errors) or the response text."""
    message = help_text = errors = None
    if isinstance(body, Mapping):
        raw_message = body.get("message")
        message = str(raw_message) if raw_message not in (None, "") else None
        raw_help = body.get("help")
        help_text = str(raw_help) if raw_help not in (None, "") else None
        errors = body.get("errors")
    elif isinstance(body, str) and body.strip() and not body.lstrip().startswith("<"):
        # Plain text is worth showing; an HTML error page from a proxy is not.
        text = " ".join(body.split())
        message = text if len(text) <= 300 else text[:297] + "..."
    if not message:
        try:
            message = HTTPStatus(status).description or HTTPStatus(status).phrase
        except ValueError:
            message = "unexpected response"
    request_id = None
    for key, value in headers.items():
        if str(key).lower() == REQUEST_ID_HEADER.lower():
            request_id = str(value)
            break
    cls = error_class_for(status, message)
    retryable = status in RETRYABLE_STATUSES or status >= 500 or issubclass(cls, RateLimitedError)
    return cls(
        message,
        status=status,
        help=help_text,
        request_id=request_id,
        body=body,
        retryable=retryable,
        errors=errors,
        method=method,
        path=path,
        retry_after=parse_retry_after(headers),
    )
