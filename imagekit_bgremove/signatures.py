"""ImageKit webhook signatures: the legacy ``x-ik-signature`` scheme and Standard Webhooks.

Both are HMAC-SHA256 keyed with the raw UTF-8 bytes of the whole secret, ``whsec_`` prefix
included. Generic Standard Webhooks libraries base64-decode the secret first, which gives the
wrong key for ImageKit, so this module does the keying itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

LEGACY_HEADER = "x-ik-signature"
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
SIGNATURE_HEADERS = (
    LEGACY_HEADER,
    STANDARD_ID_HEADER,
    STANDARD_TIMESTAMP_HEADER,
    STANDARD_SIGNATURE_HEADER,
)


class SignatureError(Exception):
    """Why a signature was refused; ``reason`` is one of missing, malformed, stale, mismatch."""

    reason = "invalid"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class SignatureMissing(SignatureError):
    reason = "missing"


class SignatureMalformed(SignatureError):
    reason = "malformed"


class SignatureStale(SignatureError):
    reason = "stale"


class SignatureMismatch(SignatureError):
    reason = "mismatch"


@dataclass(frozen=True)
class VerifiedSignature:
    scheme: str  # "legacy" or "standard"
    timestamp: float  # unix seconds
    webhook_id: str | None = None


def _mac(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


def sign_legacy(body: bytes, secret: str, timestamp_ms: int) -> str:
    """The ``x-ik-signature`` header value for ``body``."""
    digest = _mac(secret, str(timestamp_ms).encode() + b"." + body).hex()
    return f"t={timestamp_ms},v1={digest}"


def sign_standard(body: bytes, secret: str, webhook_id: str, timestamp_s: int) -> str:
    """The ``webhook-signature`` header value for ``body``."""
    signed = f"{webhook_id}.{timestamp_s}.".encode() + body
    return "v1," + base64.b64encode(_mac(secret, signed)).decode("ascii")


def signature_headers(
    body: bytes,
    secrets: str | Iterable[str],
    *,
    now: float | None = None,
    webhook_id: str | None = None,
) -> dict[str, str]:
    """Headers signing ``body`` with both schemes, once per secret (as during rotation)."""
    secrets = [secrets] if isinstance(secrets, str) else list(secrets)
    now = time.time() if now is None else now
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    ms, seconds = int(now * 1000), int(now)
    legacy = [sign_legacy(body, s, ms) for s in secrets]
    return {
        # Several legacy signatures share one timestamp, so they fold into one header.
        LEGACY_HEADER: ",".join([legacy[0]] + [part.split(",", 1)[1] for part in legacy[1:]]),
        STANDARD_ID_HEADER: webhook_id,
        STANDARD_TIMESTAMP_HEADER: str(seconds),
        STANDARD_SIGNATURE_HEADER: " ".join(
            sign_standard(body, s, webhook_id, seconds) for s in secrets
        ),
    }


def _is_timestamp(value: str) -> bool:
    # ASCII digits only ("²".isdigit() is True but int() refuses it), and short enough for
    # int() and float division not to raise.
    return value.isascii() and value.isdigit() and len(value) <= 20


def _same(expected: str, candidate: str) -> bool:
    # Bytes: compare_digest raises TypeError on str with non-ASCII characters.
    return hmac.compare_digest(expected.encode(), candidate.encode("utf-8", "replace"))


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def has_signature(headers: Mapping[str, str]) -> bool:
    lowered = _lower(headers)
    return LEGACY_HEADER in lowered or STANDARD_SIGNATURE_HEADER in lowered


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    tolerance: float = 300,
    now: float | Callable[[], float] | None = None,
) -> VerifiedSignature:
    """Check ``body`` against whichever schemes ``headers`` carry, with every secret.

    Succeeds if any present scheme verifies; otherwise raises the most telling SignatureError
    (a Standard Webhooks failure is preferred, as it is the newer scheme)."""
    if not secrets:
        raise SignatureMismatch("no webhook secret is configured to check the signature with")
    current = now() if callable(now) else (time.time() if now is None else now)
    lowered = _lower(headers)
    attempts: list[Callable[[], VerifiedSignature]] = []
    if STANDARD_SIGNATURE_HEADER in lowered:
        attempts.append(lambda: _verify_standard(body, lowered, secrets, tolerance, current))
    if LEGACY_HEADER in lowered:
        attempts.append(lambda: _verify_legacy(body, lowered, secrets, tolerance, current))
    if not attempts:
        raise SignatureMissing(
            f"no signature header ({LEGACY_HEADER} or {STANDARD_SIGNATURE_HEADER}) is present"
        )
    errors: list[SignatureError] = []
    for attempt in attempts:
        try:
            return attempt()
        except SignatureError as exc:
            errors.append(exc)
    raise errors[0]


def verify_callback(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    required: bool,
    tolerance: float = 300,
    now: float | Callable[[], float] | None = None,
) -> VerifiedSignature | None:
    """The receiving side's policy: ImageKit may send callbacks unsigned, so a signature is
    checked when ``required``, or when one is present and there is a secret to check it with.
    Returns None when nothing was checked; raises SignatureError when the check fails."""
    if required or (secrets and has_signature(headers)):
        return verify(body, headers, secrets, tolerance=tolerance, now=now)
    return None


def _check_age(timestamp: float, current: float, tolerance: float) -> None:
    if abs(current - timestamp) > tolerance:
        raise SignatureStale(
            f"signature timestamp is {abs(current - timestamp):.0f} s away from now; "
            f"the tolerance is {tolerance:.0f} s"
        )


def _verify_legacy(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    tolerance: float,
    current: float,
) -> VerifiedSignature:
    raw = headers[LEGACY_HEADER]
    timestamp: str | None = None
    candidates: list[str] = []
    for part in raw.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureMalformed(f"{LEGACY_HEADER} is not of the form t=...,v1=...")
        if key == "t":
            timestamp = value
        elif key == "v1":
            candidates.append(value.lower())
    if timestamp is None or not _is_timestamp(timestamp) or not candidates:
        raise SignatureMalformed(f"{LEGACY_HEADER} lacks a numeric t= or a v1= signature")
    _check_age(int(timestamp) / 1000, current, tolerance)
    signed = timestamp.encode() + b"." + body
    for secret in secrets:
        expected = _mac(secret, signed).hex()
        if any(_same(expected, candidate) for candidate in candidates):
            return VerifiedSignature("legacy", int(timestamp) / 1000)
    raise SignatureMismatch(f"{LEGACY_HEADER} does not match the body with any configured secret")


def _verify_standard(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    tolerance: float,
    current: float,
) -> VerifiedSignature:
    webhook_id = headers.get(STANDARD_ID_HEADER, "")
    timestamp = headers.get(STANDARD_TIMESTAMP_HEADER, "")
    if not webhook_id or not _is_timestamp(timestamp):
        raise SignatureMalformed(
            f"{STANDARD_SIGNATURE_HEADER} needs {STANDARD_ID_HEADER} and a numeric "
            f"{STANDARD_TIMESTAMP_HEADER}"
        )
    candidates = []
    for entry in headers[STANDARD_SIGNATURE_HEADER].split():
        version, sep, value = entry.partition(",")
        if not sep:
            raise SignatureMalformed(
                f"{STANDARD_SIGNATURE_HEADER} entry {entry!r} is not v1,<base64>"
            )
        if version == "v1":
            candidates.append(value)
    if not candidates:
        raise SignatureMalformed(f"{STANDARD_SIGNATURE_HEADER} has no v1 signature")
    _check_age(int(timestamp), current, tolerance)
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    for secret in secrets:
        expected = base64.b64encode(_mac(secret, signed)).decode("ascii")
        if any(_same(expected, candidate) for candidate in candidates):
            return VerifiedSignature("standard", int(timestamp), webhook_id)
    raise SignatureMismatch(
        f"{STANDARD_SIGNATURE_HEADER} does not match the body with any configured secret"
    )
