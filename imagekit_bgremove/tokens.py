"""The token in each job's webhookUrl: names the job and cannot be forged or moved to another.

ImageKit may not sign per-request callbacks (see the contract), so the URL itself must prove that
we issued it. Django's signer keys it with SECRET_KEY; the salt keeps these signatures from being
valid anywhere else Django signs things.
"""

from __future__ import annotations

from django.core import signing

SALT = "imagekit_bgremove.webhook"


class InvalidToken(Exception):
    pass


def make_token(job_id: int) -> str:
    return signing.Signer(salt=SALT).sign(str(job_id))


def read_token(token: str) -> int:
    """The job id inside ``token``; raises InvalidToken if it was not issued by this site."""
    try:
        value = signing.Signer(salt=SALT).unsign(token)
    except signing.BadSignature as exc:
        raise InvalidToken("webhook token signature does not match") from exc
    if not value.isdigit():
        raise InvalidToken("webhook token does not name a job")
    return int(value)
