"""The endpoint ImageKit calls when a remove-bg job finishes.

What it trusts: the signed token in the URL (issued by this site for one job) names the job;
an ImageKit signature, when present or required, must verify. The body only says what happened:
the result's bytes are later fetched from ImageKit's API, not from a URL in the body (see
``services.finalize``).

What it stores: a request that is refused, repeated or ignored is only counted (``WebhookCount``:
one row per kind and minute, however many requests), so a flood costs bounded storage. A
callback that changes a job gets a ``WebhookDelivery`` row with its verdict, in the transaction
that applies it; when applying fails, that is rolled back and the delivery is recorded on its
own, with the error.

=====================================  ======  ===========================================
check                                  status  kept
=====================================  ======  ===========================================
Content-Length / body over the cap     413     counted (body_too_large)
token forged, altered or unreadable    403     counted (bad_token)
ImageKit signature wrong / stale /     401     counted (signature_<reason>)
missing when required
body not JSON (or nested too deep),    400     counted (malformed)
not an object, not a remove-bg
callback of the documented shape
repeated, or ignored (changes nothing)  200     counted (duplicate / ignored)
accepted (changes a job)               200     delivery row
anything unexpected (bug, DB error)    500     delivery row (ImageKit retries for 24 h)
=====================================  ======  ===========================================

ImageKit treats anything other than exactly 200 as a failure and retries, so every callback we
have dealt with (including ones we deliberately ignore) gets a 200, and only our own trouble gets
a 5xx. The view never talks to the network: the slow work is a task.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.db import connections, transaction
from django.db.models import F
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from . import services, signatures, tokens
from .conf import app_settings
from .models import DeliveryVerdict, RemovalJob, WebhookCount, WebhookDelivery

logger = logging.getLogger(__name__)

# What is kept of each request's headers: enough to debug a delivery, nothing that identifies users.
RECORDED_HEADERS = (
    "content-type",
    "content-length",
    "user-agent",
    "x-ik-requestid",
    *signatures.SIGNATURE_HEADERS,
)
# A stored body is cut to this many characters (a remove-bg callback is a couple of kilobytes).
STORED_BODY_CHARS = 64 * 1024
_READ_CHUNK = 64 * 1024


class BodyTooLarge(Exception):
    pass


def _remote_addr(request: HttpRequest) -> str | None:
    value = request.META.get("REMOTE_ADDR") or ""
    try:
        return str(ipaddress.ip_address(value.split("%", 1)[0]))
    except ValueError:
        return None  # a unix socket, or a proxy that left it empty


def _recorded_headers(request: HttpRequest) -> dict[str, str]:
    headers = request.headers
    return {name: headers[name][:1000] for name in RECORDED_HEADERS if name in headers}


def _declared_length(request: HttpRequest) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _read_body(request: HttpRequest, limit: int) -> bytes:
    """The raw body, exactly as received, refusing to hold more than ``limit`` bytes.

    Reads the stream rather than ``request.body`` so that a body without a trustworthy
    Content-Length (chunked, or under ASGI) is capped too, and Django's own
    DATA_UPLOAD_MAX_MEMORY_SIZE does not turn a big body into a confusing 400."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = request.read(min(_READ_CHUNK, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is over the {limit}-byte limit")
    return b"".join(chunks)


def _reply(status: int, verdict: str, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"verdict": verdict, "message": message, **extra}, status=status)


class JSONWhateverAccept(BaseContentNegotiation):
    """Always JSON: a caller's odd Accept header must never turn a callback into a 406."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ImageKitWebhookView(APIView):
    """``POST webhooks/imagekit/<token>/``: a remove-bg callback for the job named by ``token``."""

    http_method_names = ["post"]
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []
    parser_classes: list = []  # the raw body is read by hand; nothing may parse it first
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JSONWhateverAccept

    def post(self, request, token: str):
        django_request: HttpRequest = request._request
        limit = int(app_settings.WEBHOOK_MAX_BODY_BYTES)
        declared = _declared_length(django_request)
        if declared is not None and declared > limit:
            # Refused unread: a flood of large bodies costs us nothing but a count.
            return self._refuse(
                django_request,
                413,
                "body_too_large",
                f"body of {declared} bytes is over the {limit}-byte limit",
            )
        try:
            body = _read_body(django_request, limit)
        except BodyTooLarge as exc:
            return self._refuse(django_request, 413, "body_too_large", str(exc))

        # Authenticity first: the token we put in the webhookUrl, then ImageKit's signature.
        try:
            job_id = tokens.read_token(token)
        except tokens.InvalidToken as exc:
            return self._refuse(django_request, 403, "bad_token", str(exc))
        try:
            verified = signatures.verify_callback(
                body,
                django_request.headers,
                app_settings.webhook_secrets,
                required=bool(app_settings.WEBHOOK_REQUIRE_SIGNATURE),
                tolerance=float(app_settings.WEBHOOK_TOLERANCE_SECONDS),
            )
        except signatures.SignatureError as exc:
            return self._refuse(
                django_request,
                401,
                f"signature_{exc.reason}",
                f"signature {exc.reason}: {exc.message}",
                reason=exc.reason,
            )

        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            return self._refuse(django_request, 400, "malformed", f"body is not JSON: {reason}")
        try:
            callback = services.parse_callback(payload)
        except services.CallbackError as exc:
            return self._refuse(django_request, 400, "malformed", str(exc))

        delivery = WebhookDelivery(
            received_at=timezone.now(),
            remote_addr=_remote_addr(django_request),
            headers=_recorded_headers(django_request),
            body=body[: STORED_BODY_CHARS * 4].decode("utf-8", "replace")[:STORED_BODY_CHARS],
            body_size=len(body),
            job_id=job_id,
        )
        if verified is not None:
            delivery.signature_scheme = verified.scheme
        elif signatures.has_signature(django_request.headers):
            delivery.signature_scheme = "unchecked"  # signed, but no secret configured to check
        return self._process(
            django_request, delivery, job_id, callback, signed=verified is not None
        )

    def _process(
        self,
        request: HttpRequest,
        delivery: WebhookDelivery,
        job_id: int,
        callback: Any,
        *,
        signed: bool,
    ) -> JsonResponse:
        """Apply the callback and, when it changed a job, record the delivery with its verdict in
        the same transaction: one commit per callback. A callback that changed nothing (a
        repeat, or one that is ignored) is only counted. If anything fails, that transaction is
        rolled back as a whole and the delivery is recorded on its own with the error (a crash
        records nothing, but then ImageKit gets no 200 and delivers again)."""

        def record(outcome: Any) -> None:
            if not outcome.changed:
                return
            delivery.verdict, delivery.status_code = str(outcome.verdict), 200
            delivery.outcome = outcome.message
            delivery.job_id = outcome.job.pk if outcome.job else None
            delivery.save(force_insert=True)

        try:
            # One transaction: the job locked, decided, moved and the delivery recorded.
            outcome = services.apply_parsed_callback(job_id, callback, signed=signed, then=record)
        except Exception as exc:
            logger.exception("webhook delivery for job %s failed", job_id)
            # A fresh row: the rolled-back INSERT may have given this one a pk and an outcome.
            delivery.pk, delivery.outcome = None, ""
            delivery.verdict, delivery.status_code = DeliveryVerdict.ERROR, 500
            delivery.error = f"{type(exc).__name__}: {exc}"[:5000]
            try:
                # The job may be gone (deleted), and the row must still be written.
                delivery.job_id = job_id if RemovalJob.objects.filter(pk=job_id).exists() else None
                delivery.save(force_insert=True)
            except Exception:
                logger.exception("could not record webhook delivery for job %s", job_id)
            return _reply(500, DeliveryVerdict.ERROR, "processing failed; ImageKit will retry")
        if not outcome.changed:
            _count(request, str(outcome.verdict))
        return _reply(200, str(outcome.verdict), outcome.message, job=job_id)

    def _refuse(
        self, request: HttpRequest, status: int, kind: str, message: str, **extra: Any
    ) -> JsonResponse:
        """Answer a refusal: counted, never stored, and nothing in it acted upon."""
        _count(request, kind)
        logger.info("webhook request refused with %s: %s", status, message)
        verdict = DeliveryVerdict.UNAUTHENTIC if status in (401, 403) else DeliveryVerdict.MALFORMED
        return _reply(status, verdict, message, **extra)


def _count(request: HttpRequest, kind: str) -> None:
    """Add one to this minute's count of ``kind``; never raises: a count is not worth a 500."""
    minute = timezone.now().replace(second=0, microsecond=0)
    addr = _remote_addr(request)
    this_minute = WebhookCount.objects.filter(minute=minute, kind=kind)
    try:
        if not this_minute.update(count=F("count") + 1, last_remote_addr=addr):
            # The minute's first: the unique key lets one of two concurrent creators win.
            WebhookCount.objects.bulk_create(
                [WebhookCount(minute=minute, kind=kind, count=0)], ignore_conflicts=True
            )
            this_minute.update(count=F("count") + 1, last_remote_addr=addr)
    except Exception:
        logger.exception("could not count a webhook request (%s)", kind)


def _build_view():
    view = csrf_exempt(ImageKitWebhookView.as_view())
    # The delivery row must be committed before processing, even under ATOMIC_REQUESTS.
    for alias in connections:
        view = transaction.non_atomic_requests(using=alias)(view)
    # ImageKit never logs in: LoginRequiredMiddleware (Django 5.1+) must let it through.
    return login_not_required(view)


webhook_view = _build_view()
