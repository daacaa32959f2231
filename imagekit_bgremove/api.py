"""The REST API (Django REST framework) for front-ends: removal jobs.

==========================================  ======================================================
``POST   api/removals/``                    request a removal; body ``{"model": "catalogue.product",
                                            "object_id": "1", "field": "photo", "options": {...},
                                            "force": false}`` -> 202 with the job, ``Location`` and
                                            ``Retry-After``
``GET    api/removals/``                    jobs, newest first, paginated; filters ``model``,
                                            ``object_id``, ``field``, ``status``
``GET    api/removals/<id>/``               one job, with an ``ETag``: ``If-None-Match`` -> 304
                                            while nothing changed (cheap polling)
``POST   api/removals/<id>/retry/``         try a failed job again, optionally with new options
                                            -> 202 with the new job (409 for a job that has not
                                            failed or that was retried already)
==========================================  ======================================================

Input is strict: a key the endpoint does not take is a 400 naming it, and ``options`` is an
object or the same object as a JSON string (multipart forms). Errors other than validation are
``{"detail": ..., "code": ...}``: 401 (with ``WWW-Authenticate`` when one of the configured
authentication classes can ask for credentials), 403, 404, 409 (with the job concerned), 413
(body too large), 429 (the ``imagekit_bgremove`` throttle scope, or the daily budget).

Who may do what: an authenticated user with Django's ``change`` permission on the target model
(:class:`CanChangeTarget`); creating or retrying a job also runs the permission classes'
``has_object_permission`` on the target object itself (a retry also on the job). Replace it per
project by subclassing :class:`RemovalViewSet` and setting ``permission_classes``;
authentication comes from the project's DRF settings.

The pieces a project's own API needs (the image field, the ``remove-background`` action) are in
:mod:`imagekit_bgremove.rest_framework`; the views here only resolve, check and delegate to
:mod:`imagekit_bgremove.services`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, time, timedelta
from typing import Any

from django.apps import apps
from django.contrib.auth import get_permission_codename
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import (
    ObjectDoesNotExist,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.files.storage import default_storage
from django.db import models
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.http import parse_etags
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, PermissionDenied, ValidationError
from rest_framework.fields import empty
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from . import services
from .api_schema import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
    extend_schema_view,
    header,
)
from .models import JobStatus, RemovalJob, Trigger
from .options import NON_FIELD, OptionsError, RemoveBgOptions

# ---------------------------------------------------------------------------------------------
# Helpers shared by serializers and views


def model_label(model: type[models.Model]) -> str:
    return f"{model._meta.app_label}.{model._meta.model_name}"


def resolve_model(label: str) -> type[models.Model]:
    """``"catalogue.product"`` -> the model class; ValueError if there is none."""
    app_label, dot, model_name = (label or "").strip().lower().partition(".")
    if not dot or not app_label or not model_name:
        raise ValueError(f"{label!r} is not of the form app_label.model_name.")
    try:
        return apps.get_model(app_label, model_name)
    except LookupError as exc:
        raise ValueError(f"There is no model {label!r}.") from exc


def job_content_type(job: RemovalJob) -> ContentType:
    """The job's content type from ContentType's own cache: no query, and no join to make."""
    return ContentType.objects.get_for_id(job.content_type_id)


def result_file_url(job: RemovalJob, request=None) -> str | None:
    """The URL of the copy of the result in Django storage, if there is one."""
    if not job.result_name:
        return None
    storage = default_storage
    model = job_content_type(job).model_class()
    if model is not None:
        # A renamed or removed field: the default storage is the best guess.
        with contextlib.suppress(Exception):
            storage = model._meta.get_field(job.field_name).storage
    try:
        url = storage.url(job.result_name)
    except Exception:
        return None
    return absolute(url, request)


def absolute(url: str | None, request=None) -> str | None:
    if url and request is not None and url.startswith("/"):
        return request.build_absolute_uri(url)
    return url


def job_url(job: RemovalJob | int, request=None) -> str | None:
    """The job's URL in this app's API (None when the app's URLs are not included)."""
    pk = job if isinstance(job, int) else job.pk
    try:
        path = reverse("imagekit_bgremove:removal-detail", kwargs={"pk": pk})
    except NoReverseMatch:
        return None
    return absolute(path, request)


def options_errors(error: OptionsError) -> dict[str, list[str]]:
    """RemoveBgOptions' errors in DRF's shape (``__all__`` -> ``non_field_errors``)."""
    return {
        (api_settings.NON_FIELD_ERRORS_KEY if key == NON_FIELD else key): messages
        for key, messages in error.errors.items()
    }


def seconds_until_tomorrow() -> int:
    """Until the daily budget starts again (midnight in the site's time zone)."""
    now = timezone.localtime()
    midnight = datetime.combine(now.date() + timedelta(days=1), time(), tzinfo=now.tzinfo)
    return max(1, int((midnight - now).total_seconds()))


# ETags: a digest of everything the job's representation is made of. Bump the version when
# the representation changes, so that clients holding an old tag get the new shape.
ETAG_VERSION = 1


def job_etag(job: RemovalJob) -> str:
    """A weak ETag of ``job`` (loaded with ``requested_by`` and ``retry``), without rendering it:
    every column, the newer attempt and the requester's name. Any change to the row changes it."""
    values = [getattr(job, field.attname) for field in job._meta.concrete_fields]
    try:
        newer = job.retry.pk
    except ObjectDoesNotExist:
        newer = None
    user = job.requested_by.get_username() if job.requested_by_id else None
    digest = hashlib.blake2b(
        repr((ETAG_VERSION, values, newer, user)).encode(), digest_size=12
    ).hexdigest()
    return f'W/"{digest}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison, as If-None-Match asks for (RFC 9110 13.1.2)."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    return any(tag == "*" or tag.removeprefix("W/") == wanted for tag in parse_etags(if_none_match))


# ---------------------------------------------------------------------------------------------
# Errors, throttling and the behaviour every view of this app shares


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class BudgetSpent(APIException):
    """The daily budget (``DAILY_REMOVAL_LIMIT``) is spent: 429 with ``Retry-After`` until the
    budget starts again."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "budget_exhausted"

    def __init__(self, detail: str, wait: int):
        super().__init__(detail)
        self.wait = wait


class RemovalRateThrottle(SimpleRateThrottle):
    """Requests that start paid work (create, retry, remove-background, an image upload), per
    user (per address for anonymous requests), in the DRF scope ``imagekit_bgremove``.

    Active unless the project removes it: without a rate for the scope in
    ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]`` it uses :attr:`default_rate`; set the scope to
    ``None`` there to switch it off, or another rate such as ``"200/hour"``. Counts live in
    Django's default cache: use a cache shared by your processes (Redis, Memcached, database)."""

    scope = "imagekit_bgremove"
    default_rate = "60/hour"

    def get_rate(self) -> str | None:
        rates = api_settings.DEFAULT_THROTTLE_RATES or {}
        return rates.get(self.scope, self.default_rate)  # None there: switched off

    def get_cache_key(self, request, view) -> str:
        user = getattr(request, "user", None)
        ident = user.pk if user is not None and user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}


class RemovalAPIViewMixin:
    # What the views of this app (and imagekit_bgremove.rest_framework's mixin) add to a DRF
    # view (comments, not a docstring: schema generators would show it on your endpoints):
    # - 401 with WWW-Authenticate whenever *one* of the authentication classes can ask for
    #   credentials (DRF asks only the first one, so Session before Basic answered 403);
    # - 413 for a body over get_max_body_bytes(), checked from Content-Length before anything
    #   reads or parses the body (and for Django's own upload limits);
    # - 429 with Retry-After when the daily budget is spent;
    # - "code" next to "detail" in error bodies;
    # - the RemovalRateThrottle on the actions in removal_throttled_actions.

    #: Bodies larger than this are refused with 413 (None: no limit of ours).
    max_body_bytes: int | None = 64 * 1024
    #: Throttles applied to the actions that start paid work, on top of the view's own.
    removal_throttle_classes: list[type] = [RemovalRateThrottle]
    removal_throttled_actions: tuple[str, ...] = ()
    #: Seconds a client should wait before polling a job it has just started.
    poll_after_seconds = 2

    def get_max_body_bytes(self) -> int | None:
        return self.max_body_bytes

    def get_authenticate_header(self, request) -> str | None:
        """The challenge of the scheme the client tried (bad Basic credentials: Basic), else of
        the first authentication class that has one."""
        authenticators = getattr(request, "authenticators", None) or self.get_authenticators()
        challenges = [a.authenticate_header(request) for a in authenticators]
        challenges = [c for c in challenges if c]
        tried = request.META.get("HTTP_AUTHORIZATION", "").split(" ", 1)[0].lower()
        for challenge in challenges:
            if tried and challenge.split(" ", 1)[0].lower() == tried:
                return challenge
        return challenges[0] if challenges else None

    def starts_paid_work(self) -> bool:
        return getattr(self, "action", None) in self.removal_throttled_actions

    def get_throttles(self) -> list[Any]:
        throttles = list(super().get_throttles())
        if self.starts_paid_work():
            throttles += [throttle() for throttle in self.removal_throttle_classes]
        return throttles

    def initial(self, request, *args: Any, **kwargs: Any) -> None:
        limit = self.get_max_body_bytes()
        if limit is not None:
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > limit:
                raise PayloadTooLarge(
                    f"The request body is {length} bytes; this endpoint takes at most {limit}."
                )
        super().initial(request, *args, **kwargs)

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, RequestDataTooBig | TooManyFieldsSent | TooManyFilesSent):
            exc = PayloadTooLarge(str(exc) or PayloadTooLarge.default_detail)
        elif isinstance(exc, services.BudgetExhausted):
            exc = BudgetSpent(str(exc), wait=seconds_until_tomorrow())
        response = super().handle_exception(exc)
        data = response.data
        if isinstance(data, dict) and set(data) == {"detail"}:
            code = exc.get_codes() if isinstance(exc, APIException) else None
            if not isinstance(code, str):
                code = {404: "not_found", 403: "permission_denied"}.get(response.status_code)
            if code:
                response.data = {"detail": data["detail"], "code": code}
        return response

    def accepted(self, job: RemovalJob) -> Response:
        """202 with the job, its URL in ``Location`` and when to poll it in ``Retry-After``."""
        body = RemovalJobSerializer(job, context=self.get_serializer_context()).data
        headers = {"Retry-After": str(self.poll_after_seconds)}
        if body.get("url"):
            headers["Location"] = body["url"]
        return Response(body, status=status.HTTP_202_ACCEPTED, headers=headers)

    def conflict(self, exc: Exception, job: RemovalJob | None, code: str) -> Response:
        """409 naming the job that stands in the way (its URL also in ``Location``)."""
        request = getattr(self, "request", None)
        ref = None
        headers = {}
        if job is not None:
            ref = {"id": job.pk, "url": job_url(job, request), "status": job.status}
            if ref["url"]:
                headers["Location"] = ref["url"]
        return Response(
            {"detail": str(exc), "code": code, "job": ref},
            status=status.HTTP_409_CONFLICT,
            headers=headers,
        )


# ---------------------------------------------------------------------------------------------
# Serializers


class StrictFieldsMixin:
    """Refuse the keys a serializer does not take with a 400 naming each of them, instead of
    ignoring them silently. Read-only fields cannot be set either. Put it first:
    ``class ProductSerializer(StrictFieldsMixin, serializers.ModelSerializer)``."""

    #: Keys that browsers' forms add and that are never data.
    ignored_keys = frozenset({"csrfmiddlewaretoken"})

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            fields = self.fields
            writable = [name for name, field in fields.items() if not field.read_only]
            errors = {}
            for key in data:
                if key in self.ignored_keys or key in writable:
                    continue
                if key in fields:
                    errors[str(key)] = ["This field is read-only."]
                else:
                    errors[str(key)] = [f"Unknown field. Allowed: {', '.join(writable) or 'none'}."]
            if errors:
                raise ValidationError(errors)
        return super().to_internal_value(data)


class OptionsField(serializers.Field):
    """The remove-bg options: an object, or the same object as a JSON string (as multipart forms
    send it). Checked by RemoveBgOptions, errors per option. The value is the options given,
    normalised (``"#FFF"`` -> ``"fff"``); keys left out keep the field's defaults."""

    default_error_messages = {
        "json": "Options are not valid JSON: {error}.",
        "type": "Options must be an object (or a JSON string of one), not {type}.",
    }

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def get_value(self, dictionary: Any) -> Any:
        # Not DictField's form parsing (``options.key`` inputs): a form sends one JSON string.
        return dictionary.get(self.field_name, empty)

    def parse(self, data: Any) -> dict[str, Any]:
        if data is None:
            return {}
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        if isinstance(data, str):
            if not data.strip():
                return {}
            try:
                data = json.loads(data)
            except ValueError as exc:
                self.fail("json", error=exc)
        if not isinstance(data, Mapping):
            self.fail("type", type=type(data).__name__)
        for key, value in data.items():
            if isinstance(value, str) and "\x00" in value:  # no database stores it in JSON
                raise ValidationError({str(key): ["Null characters are not allowed."]})
        try:
            options = RemoveBgOptions.from_dict(data)
        except OptionsError as exc:
            raise ValidationError(options_errors(exc)) from exc
        return {key: getattr(options, key) for key in data}

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        return self.parse(data)

    def validate_empty_values(self, data: Any) -> tuple[bool, Any]:
        if data is None:
            return True, {}
        return super().validate_empty_values(data)

    def to_representation(self, value: Any) -> Any:
        return value


@extend_schema_serializer(component_name="RemovalCreate")
class RemovalRequestSerializer(StrictFieldsMixin, serializers.Serializer):
    model = serializers.CharField(max_length=200, help_text='"app_label.model_name"')
    object_id = serializers.CharField(max_length=255, help_text="The object's primary key.")
    field = serializers.CharField(
        max_length=100, help_text="The name of its BackgroundRemovalImageField."
    )
    options = OptionsField()
    force = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Submit even if an identical image with the same options has a result.",
    )

    def validate_model(self, value: str) -> type[models.Model]:
        try:
            return resolve_model(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        model = attrs["model"]
        allowed = services.removal_field_names(model)
        if attrs["field"] not in allowed:
            raise ValidationError(
                {
                    "field": [
                        f"{model_label(model)} has no background-removal image field "
                        f"{attrs['field']!r}"
                        + (f"; choose one of {', '.join(allowed)}." if allowed else ".")
                    ]
                }
            )
        try:
            instance = model._default_manager.filter(pk=attrs["object_id"]).first()
        except (ValueError, TypeError, OverflowError, DjangoValidationError):  # "x" for an int pk
            instance = None
        if instance is None:
            raise ValidationError(
                {
                    "object_id": [
                        f"There is no {model._meta.verbose_name} with id {attrs['object_id']!r}."
                    ]
                }
            )
        if not getattr(instance, attrs["field"]):
            raise ValidationError({"field": [f"{attrs['field']!r} of this object has no image."]})
        attrs["instance"] = instance
        return attrs


@extend_schema_serializer(component_name="RemovalRetry")
class RetryRequestSerializer(StrictFieldsMixin, serializers.Serializer):
    options = OptionsField(
        help_text="Options for the new attempt, over the failed job's; left out: the same ones."
    )


class RemovalJobSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    model = serializers.SerializerMethodField()
    field = serializers.CharField(source="field_name", read_only=True)
    status_display = serializers.CharField(source="get_status_display", read_only=True)
    finished = serializers.BooleanField(source="is_finished", read_only=True)
    options = OptionsField(read_only=True)
    result_url = serializers.SerializerMethodField()
    result_file_url = serializers.SerializerMethodField()
    requested_by = serializers.SerializerMethodField()
    retried_as = serializers.SerializerMethodField()

    class Meta:
        model = RemovalJob
        fields = [
            "id",
            "url",
            "model",
            "object_id",
            "field",
            "status",
            "status_display",
            "finished",
            "options",
            "force",
            "trigger",
            "requested_by",
            "attempts",
            "file_id",
            "result_url",
            "result_file_url",
            "result_mime",
            "result_width",
            "result_height",
            "error_code",
            "error_message",
            "duplicate_of",
            "superseded_by",
            "retry_of",
            "retried_as",
            "created_at",
            "submitted_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_url(self, job: RemovalJob) -> str | None:
        return job_url(job, self.context.get("request"))

    def get_model(self, job: RemovalJob) -> str:
        content_type = job_content_type(job)
        return f"{content_type.app_label}.{content_type.model}"

    def get_result_url(self, job: RemovalJob) -> str | None:
        """ImageKit's URL of the cut-out (null until there is one)."""
        return job.result_url or None

    def get_result_file_url(self, job: RemovalJob) -> str | None:
        return result_file_url(job, self.context.get("request"))

    def get_requested_by(self, job: RemovalJob) -> str | None:
        user = job.requested_by
        return user.get_username() if user is not None else None

    def get_retried_as(self, job: RemovalJob) -> int | None:
        """The newer attempt that retried this job, if any."""
        try:
            return job.retry.pk
        except ObjectDoesNotExist:
            return None


class RemovalFilterSerializer(serializers.Serializer):
    model = serializers.CharField(required=False)
    object_id = serializers.CharField(required=False)
    field = serializers.CharField(required=False)
    status = serializers.ChoiceField(choices=JobStatus.choices, required=False)

    def validate_model(self, value: str) -> type[models.Model]:
        try:
            return resolve_model(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc


# Response bodies, for the schema.


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()


class JobRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.URLField(allow_null=True)
    status = serializers.ChoiceField(choices=JobStatus.choices)


class ConflictSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.ChoiceField(choices=["job_in_progress", "already_retried", "not_retryable"])
    job = JobRefSerializer(
        allow_null=True, help_text="The job in the way: the unfinished one, or the newer attempt."
    )


VALIDATION_ERRORS_SCHEMA = {
    "type": "object",
    "description": "Errors per field (a list of messages, or per option for options); "
    "request-wide ones under non_field_errors.",
    "additionalProperties": {
        "anyOf": [
            {"type": "array", "items": {"type": "string"}},
            {"type": "object", "additionalProperties": {"type": "array", "items": {}}},
            {"type": "string"},
        ]
    },
}


def _error(description: str, *examples: tuple[str, str]) -> OpenApiResponse:
    """An error answer; each example is (name, detail) and its code is the name in snake case."""
    return OpenApiResponse(
        ErrorSerializer,
        description=description,
        examples=[
            OpenApiExample(
                name,
                value={"detail": detail, "code": name.lower().replace(" ", "_")},
                response_only=True,
            )
            for name, detail in examples
        ],
    )


ERROR_RESPONSES: dict[int, Any] = {
    400: OpenApiResponse(
        VALIDATION_ERRORS_SCHEMA,
        description="Invalid input: errors per field; an unknown field is named.",
        examples=[
            OpenApiExample(
                "Invalid options",
                value={
                    "options": {"bg_color": ["bg_color must be a hex colour or a CSS colour ..."]}
                },
                response_only=True,
            ),
            OpenApiExample(
                "Unknown field",
                value={"colour": ["Unknown field. Allowed: model, object_id, field, options."]},
                response_only=True,
            ),
        ],
    ),
    401: _error(
        "No or invalid credentials; WWW-Authenticate names the scheme to use.",
        ("Not authenticated", "Authentication credentials were not provided."),
    ),
    403: _error(
        "Authenticated, but not allowed to change this object (or a CSRF failure).",
        ("Permission denied", "You do not have permission to perform this action."),
    ),
    404: _error("No such object.", ("Not found", "No RemovalJob matches the given query.")),
    409: OpenApiResponse(
        ConflictSerializer,
        description="A job stands in the way; its URL is in the body and in Location.",
        examples=[
            OpenApiExample(
                "Already retried",
                value={
                    "detail": "Job #7 has already been retried as job #9; retry job #9 instead "
                    "if it fails too.",
                    "code": "already_retried",
                    "job": {
                        "id": 9,
                        "url": "https://example.com/imagekit-bgremove/api/removals/9/",
                        "status": "pending",
                    },
                },
                response_only=True,
            )
        ],
    ),
    413: _error(
        "The body (or the image) is too large.",
        (
            "Payload too large",
            "The request body is 90000 bytes; this endpoint takes at most 65536.",
        ),
    ),
    429: _error(
        "Throttled (scope imagekit_bgremove), or the daily budget of removals is spent; "
        "Retry-After says when to try again.",
        ("Throttled", "Request was throttled. Expected available in 52 seconds."),
        (
            "Budget exhausted",
            "The daily budget of 500 background removals is spent (0 left, 1 asked for); try "
            "again tomorrow, or raise DAILY_REMOVAL_LIMIT.",
        ),
    ),
}


def error_responses(*codes: int) -> dict[int, Any]:
    """The documented error answers, for ``extend_schema(responses={...})`` of your own views."""
    return {code: ERROR_RESPONSES[code] for code in codes}


ACCEPTED_HEADERS = [
    header("Location", "The job's URL: poll it.", statuses=[202], required=True),
    header(
        "Retry-After",
        "Seconds to wait before the first poll.",
        statuses=[202],
        type=int,
        required=True,
    ),
    header("Retry-After", "Seconds until the request may be made again.", statuses=[429], type=int),
    header(
        "WWW-Authenticate",
        "The authentication scheme to use (when one of the configured ones can ask).",
        statuses=[401],
    ),
]

JOB_EXAMPLE = {
    "id": 12,
    "url": "https://example.com/imagekit-bgremove/api/removals/12/",
    "model": "catalogue.product",
    "object_id": "1",
    "field": "photo",
    "status": "queued",
    "status_display": "Queued",
    "finished": False,
    "options": {
        "add_shadow": False,
        "semitransparency": True,
        "bg_color": "ffffff",
        "bg_image_url": None,
    },
    "force": False,
    "trigger": "api",
    "requested_by": "editor",
    "attempts": 0,
    "file_id": "",
    "result_url": None,
    "result_file_url": None,
    "result_mime": "",
    "result_width": None,
    "result_height": None,
    "error_code": "",
    "error_message": "",
    "duplicate_of": None,
    "superseded_by": None,
    "retry_of": None,
    "retried_as": None,
    "created_at": "2026-01-01T12:00:00Z",
    "submitted_at": None,
    "finished_at": None,
}


def accepted_response(description: str) -> OpenApiResponse:
    return OpenApiResponse(
        RemovalJobSerializer,
        description=description,
        examples=[OpenApiExample("Queued job", value=JOB_EXAMPLE, response_only=True)],
    )


# ---------------------------------------------------------------------------------------------
# Permissions


class CanChangeTarget(BasePermission):
    """Authenticated, with the ``change`` permission on the model whose image is processed.

    ``has_object_permission`` receives a :class:`RemovalJob` (retrieve, retry) or the target
    object itself (create and retry, before paid work starts). Override
    :meth:`has_model_permission` (per model) or :meth:`has_object_permission` for finer rules;
    the viewset calls ``has_model_permission`` before creating a job and to decide which jobs a
    user may list."""

    message = "You may not change these objects."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated)

    def has_model_permission(self, request, view, model: type[models.Model]) -> bool:
        opts = model._meta
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    def has_object_permission(self, request, view, obj: Any) -> bool:
        model = job_content_type(obj).model_class() if isinstance(obj, RemovalJob) else type(obj)
        return model is not None and self.has_model_permission(request, view, model)


class RemovalPagination(PageNumberPagination):
    page_size = 25
    page_size_query_param = "page_size"
    max_page_size = 200


# ---------------------------------------------------------------------------------------------
# Views


@extend_schema(tags=["removal jobs"])
@extend_schema_view(
    list=extend_schema(
        summary="List removal jobs",
        description="Newest first, paginated; only jobs of models the user may change.",
        parameters=[
            OpenApiParameter("model", str, description='"app_label.model_name"'),
            OpenApiParameter("object_id", str, description="The object's primary key."),
            OpenApiParameter("field", str, description="The image field's name."),
            OpenApiParameter("status", str, enum=JobStatus.values),
        ],
        responses={200: RemovalJobSerializer(many=True), **error_responses(400, 401, 403, 404)},
    ),
    retrieve=extend_schema(
        summary="One removal job",
        description="Poll it with If-None-Match: 304 while nothing changed.",
        parameters=[
            OpenApiParameter(
                "If-None-Match",
                str,
                location=OpenApiParameter.HEADER,
                description="The ETag of the last answer.",
            ),
            header("ETag", "A tag of this state of the job.", statuses=[200, 304], required=True),
            header("Cache-Control", "private, no-cache", statuses=[200, 304]),
        ],
        responses={
            200: RemovalJobSerializer,
            304: OpenApiResponse(description="Not modified since the ETag given."),
            **error_responses(401, 403, 404),
        },
    ),
)
class RemovalViewSet(
    RemovalAPIViewMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = RemovalJobSerializer
    permission_classes = [CanChangeTarget]
    pagination_class = RemovalPagination
    # The content type comes from ContentType's cache (job_content_type), not from a join.
    queryset = RemovalJob.objects.select_related("requested_by", "retry")
    removal_throttled_actions = ("create", "retry")

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        # What a POST takes (the browsable API's form, OPTIONS); answers are jobs.
        request = getattr(self, "request", None)
        if request is not None and request.method == "POST":
            target = self.action_map.get("post") if self.action == "metadata" else self.action
            if target == "create":
                return RemovalRequestSerializer
            if target == "retry":
                return RetryRequestSerializer
        return RemovalJobSerializer

    # -- permission helpers --------------------------------------------------------------------
    def may_change_model(self, model: type[models.Model]) -> bool:
        checks = [p for p in self.get_permissions() if hasattr(p, "has_model_permission")]
        return all(p.has_model_permission(self.request, self, model) for p in checks)

    def check_model_permission(self, model: type[models.Model]) -> None:
        if not self.may_change_model(model):
            raise PermissionDenied(f"You may not change {model._meta.verbose_name_plural}.")

    # -- queryset --------------------------------------------------------------------------------
    def get_queryset(self):
        qs = super().get_queryset()
        if self.action != "list":
            return qs
        params = RemovalFilterSerializer(data=self.request.query_params)
        params.is_valid(raise_exception=True)
        filters = params.validated_data
        if "model" in filters:
            self.check_model_permission(filters["model"])
            qs = qs.filter(
                content_type=ContentType.objects.get_for_model(
                    filters["model"]._meta.concrete_model
                )
            )
        elif not self.request.user.is_superuser:
            allowed = [
                ct_id
                for ct_id in qs.order_by().values_list("content_type", flat=True).distinct()
                if self._content_type_allowed(ct_id)
            ]
            qs = qs.filter(content_type__in=allowed)
        if "object_id" in filters:
            qs = qs.filter(object_id=filters["object_id"])
        if "field" in filters:
            qs = qs.filter(field_name=filters["field"])
        if "status" in filters:
            qs = qs.filter(status=filters["status"])
        return qs

    def _content_type_allowed(self, content_type_id: int) -> bool:
        model = ContentType.objects.get_for_id(content_type_id).model_class()
        return model is not None and self.may_change_model(model)

    # -- actions ---------------------------------------------------------------------------------
    def retrieve(self, request, *args: Any, **kwargs: Any) -> Response:
        job = self.get_object()
        etag = job_etag(job)
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if etag_matches(request.headers.get("If-None-Match"), etag):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
        return Response(self.get_serializer(job).data, headers=headers)

    @extend_schema(
        summary="Request a background removal",
        request=RemovalRequestSerializer,
        parameters=ACCEPTED_HEADERS,
        responses={
            202: accepted_response("Queued; poll the job at Location."),
            **error_responses(400, 401, 403, 413, 429),
        },
        examples=[
            OpenApiExample(
                "Remove the background of product 1's photo, on white",
                value={
                    "model": "catalogue.product",
                    "object_id": "1",
                    "field": "photo",
                    "options": {"bg_color": "white"},
                },
                request_only=True,
            )
        ],
    )
    def create(self, request, *args: Any, **kwargs: Any) -> Response:
        # Permission before validation, so that nobody learns which objects exist.
        label = request.data.get("model") if hasattr(request.data, "get") else None
        if isinstance(label, str):
            with contextlib.suppress(ValueError):  # an unknown model: the serializer says so
                self.check_model_permission(resolve_model(label))
        incoming = RemovalRequestSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        self.check_model_permission(data["model"])
        self.check_object_permissions(request, data["instance"])
        try:
            job = services.request_removal(
                data["instance"],
                data["field"],
                options=data.get("options") or None,
                trigger=Trigger.API,
                user=request.user,
                force=data["force"],
            )
        except OptionsError as exc:
            raise ValidationError({"options": options_errors(exc)}) from exc
        except services.RequestError as exc:
            raise ValidationError({api_settings.NON_FIELD_ERRORS_KEY: [str(exc)]}) from exc
        return self.accepted(job)

    @extend_schema(
        summary="Retry a failed job",
        description="A new attempt linked to this one (its retry_of), with the same options or "
        "new ones over them. A job is retried once: retry its newer attempt after that.",
        request=RetryRequestSerializer,
        parameters=ACCEPTED_HEADERS,
        responses={
            202: accepted_response("The new attempt, queued; poll it at Location."),
            **error_responses(400, 401, 403, 404, 409, 413, 429),
        },
        examples=[
            OpenApiExample(
                "Again, on a light blue background",
                value={"options": {"bg_color": "81d4fa"}},
                request_only=True,
            )
        ],
    )
    @action(detail=True, methods=["post"])
    def retry(self, request, pk: str | None = None) -> Response:
        job = self.get_object()
        incoming = RetryRequestSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        target = job.get_target()
        if target is not None:
            self.check_object_permissions(request, target)
        options = incoming.validated_data.get("options")
        try:
            if options:
                options = RemoveBgOptions.from_dict(options, base=job.remove_bg_options)
            new_job = services.retry(job, user=request.user, options=options or None)
        except services.AlreadyRetried as exc:
            return self.conflict(exc, exc.newer, "already_retried")
        except services.NotRetryable as exc:
            return self.conflict(exc, job, "not_retryable")
        except OptionsError as exc:
            raise ValidationError({"options": options_errors(exc)}) from exc
        except services.RequestError as exc:
            raise ValidationError({api_settings.NON_FIELD_ERRORS_KEY: [str(exc)]}) from exc
        return self.accepted(new_job)
