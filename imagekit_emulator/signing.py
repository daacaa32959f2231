"""ImageKit's two published webhook signature schemes, as ImageKit applies them.

Written here from ImageKit's documentation rather than shared with the Django app, so that a
mistake on either side shows up as a refused callback instead of being mirrored: both are
HMAC-SHA256 keyed with the raw UTF-8 bytes of the whole secret, ``whsec_`` prefix included.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterable


def _mac(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


def signature_headers(
    body: bytes, secrets: Iterable[str], *, webhook_id: str | None = None
) -> dict[str, str]:
    """``x-ik-signature`` (``t=<ms>,v1=<hex>``) and the Standard Webhooks headers for ``body``,
    one signature per secret (as during a rotation)."""
    secrets = list(secrets)
    now = time.time()
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    ms, seconds = int(now * 1000), int(now)
    legacy = ",".join(f"v1={_mac(s, str(ms).encode() + b'.' + body).hex()}" for s in secrets)
    standard = " ".join(
        "v1," + base64.b64encode(_mac(s, f"{webhook_id}.{seconds}.".encode() + body)).decode()
        for s in secrets
    )
    return {
        "x-ik-signature": f"t={ms},{legacy}",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(seconds),
        "webhook-signature": standard,
    }
