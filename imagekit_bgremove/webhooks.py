"""The endpoint ImageKit calls when a remove-bg job finishes.

One request, one :class:`~imagekit_bgremove.models.WebhookDelivery` row, committed before anything
else happens, so that a delivery that later fails (a bug, a database hiccup) is still on record.
Then, in this order:

=====================================  ======  ==================================================
check                                  status  verdict
=====================================  ======  ==================================================
not POST                               405     (nothing recorded)
Content-Length / body over the cap     413     malformed
token forged, altered or unreadable    403     unauthentic
ImageKit signature wrong / stale /     401     unauthentic
missing when required
body not JSON or not a JSON object     400     malformed
``services.apply_callback`` refuses    400     malformed
the payload (``CallbackError``)
accepted, duplicate or ignored         200     accepted / duplicate / ignored
anything unexpected (bug, DB error)    500     error (ImageKit retries for up to 24 h)
=====================================  ======  ==================================================

ImageKit treats anything other than exactly 200 as a failure and retries, so every callback we
have dealt with (including ones we deliberately ignore) gets a 200, and only our own trouble gets
a 5xx. The view never talks to the network: the service layer enqueues the slow work (copying the
result into storage) as a task.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.db import connections, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from . import services, signatures, tokens
from .conf import app_settings
from .models import DeliveryVerdict, WebhookDelivery

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
        delivery = WebhookDelivery(
            received_at=timezone.now(),
            remote_addr=_remote_addr(django_request),
            headers=_recorded_headers(django_request),
        )
        limit = int(app_settings.WEBHOOK_MAX_BODY_BYTES)
        declared = _declared_length(django_request)
        if declared is not None and declared > limit:
            # Refused unread: a flood of large bodies costs us nothing but this row.
            delivery.body_size = min(declared, 2**31 - 1)
            return self._answer_now(
                delivery,
                413,
                DeliveryVerdict.MALFORMED,
                f"body of {declared} bytes is over the {limit}-byte limit",
            )
        try:
            body = _read_body(django_request, limit)
        except BodyTooLarge as exc:
            delivery.body_size = limit + 1
            return self._answer_now(delivery, 413, DeliveryVerdict.MALFORMED, str(exc))
        delivery.body_size = len(body)
        delivery.body = body[: STORED_BODY_CHARS * 4].decode("utf-8", "replace")[:STORED_BODY_CHARS]

        # Authenticity first: the token we put in the webhookUrl, then ImageKit's signature.
        try:
            job_id = tokens.read_token(token)
        except tokens.InvalidToken as exc:
            return self._answer_now(delivery, 403, DeliveryVerdict.UNAUTHENTIC, str(exc))
        secrets = app_settings.webhook_secrets
        try:
            verified = signatures.verify_callback(
                body,
                django_request.headers,
                secrets,
                required=bool(app_settings.WEBHOOK_REQUIRE_SIGNATURE),
                tolerance=float(app_settings.WEBHOOK_TOLERANCE_SECONDS),
            )
        except signatures.SignatureError as exc:
            return self._answer_now(
                delivery,
                401,
                DeliveryVerdict.UNAUTHENTIC,
                f"signature {exc.reason}: {exc.message}",
                reason=exc.reason,
            )
        if verified is not None:
            delivery.signature_scheme = verified.scheme
        elif signatures.has_signature(django_request.headers):
            delivery.signature_scheme = "unchecked"  # signed, but no secret configured to check

        try:
            payload = json.loads(body)
        except ValueError as exc:  # UnicodeDecodeError is a ValueError too
            return self._answer_now(
                delivery, 400, DeliveryVerdict.MALFORMED, f"body is not JSON: {exc}"
            )
        if not isinstance(payload, dict):
            return self._answer_now(
                delivery, 400, DeliveryVerdict.MALFORMED, "body is not a JSON object"
            )

        # ImageKit repeats callbacks (it retries for 24 h): a repeat of a result that is already
        # recorded is answered from one read, and recorded with its verdict in one write.
        try:
            known = services.recorded_result_version(job_id, payload)
        except Exception:
            known = None  # database trouble: the full path below deals with it and records it
        if known is not None:
            delivery.job_id = job_id
            return self._answer_now(
                delivery,
                200,
                DeliveryVerdict.DUPLICATE,
                f"Result version {known} of job #{job_id} is already recorded.",
                job=job_id,
            )

        # From here on the payload is acted upon: commit the record first, so that it survives
        # whatever processing does.
        try:
            delivery.save(force_insert=True)
        except Exception:
            logger.exception("could not record webhook delivery for job %s", job_id)
            return _reply(500, DeliveryVerdict.ERROR, "could not record the delivery; retry later")
        return self._process(delivery, job_id, payload)

    def _process(self, delivery: WebhookDelivery, job_id: int, payload: dict) -> JsonResponse:
        update: dict[str, Any]
        try:
            # apply_callback runs in its own transaction, with the job row locked.
            outcome = services.apply_callback(job_id, payload)
        except services.CallbackError as exc:
            status, verdict, message = 400, DeliveryVerdict.MALFORMED, str(exc)
            update = {"outcome": message}
        except Exception as exc:
            logger.exception("webhook delivery %s for job %s failed", delivery.pk, job_id)
            status, verdict = 500, DeliveryVerdict.ERROR
            message = "processing failed; ImageKit will retry"
            update = {"error": f"{type(exc).__name__}: {exc}"[:5000]}
        else:
            status, verdict, message = 200, str(outcome.verdict), outcome.message
            update = {"outcome": message, "job_id": outcome.job.pk if outcome.job else None}
        try:
            WebhookDelivery.objects.filter(pk=delivery.pk).update(
                verdict=verdict, status_code=status, **update
            )
        except Exception:
            # The callback itself took effect (or not) already; only the record is incomplete.
            logger.exception("could not update webhook delivery %s", delivery.pk)
        extra = {"job": job_id} if status == 200 else {}
        return _reply(status, verdict, message, **extra)

    def _answer_now(
        self, delivery: WebhookDelivery, status: int, verdict: str, message: str, **extra: Any
    ) -> JsonResponse:
        """Answer without processing (a refusal, or a known repeat), recorded in one INSERT."""
        delivery.verdict = verdict
        delivery.status_code = status
        delivery.outcome = message
        try:
            delivery.save(force_insert=True)
        except Exception:
            logger.exception("could not record webhook delivery (%s %s)", status, message)
            if status == 200:
                return _reply(500, DeliveryVerdict.ERROR, "could not record the delivery")
        if status >= 400:
            logger.info("webhook delivery refused with %s: %s", status, message)
        return _reply(status, verdict, message, **extra)


def _build_view():
    view = csrf_exempt(ImageKitWebhookView.as_view())
    # The delivery row must be committed before processing, even under ATOMIC_REQUESTS.
    for alias in connections:
        view = transaction.non_atomic_requests(using=alias)(view)
    # ImageKit never logs in: LoginRequiredMiddleware (Django 5.1+) must let it through.
    return login_not_required(view)


webhook_view = _build_view()
