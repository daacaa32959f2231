"""When a failed request may be sent again: whether it may have been sent, and applied."""

from __future__ import annotations

import requests
import urllib3.exceptions
import urllib3.util

from ..exceptions import (
    ImageKitError,
    RateLimitedError,
    TransportError,
)
from .constants import Timeout


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
