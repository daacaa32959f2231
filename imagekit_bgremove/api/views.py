"""The jobs endpoints: permissions, throttling, the viewset."""

from __future__ import annotations

import contextlib
from typing import Any

from django.contrib.auth import get_permission_codename
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import (
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.db import models
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, PermissionDenied, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from .. import services
from ..api_schema import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    header,
)
from ..models import JobStatus, RemovalJob, Trigger
from ..removebg import OptionsError, RemoveBgOptions
from .helpers import (
    etag_matches,
    job_content_type,
    job_etag,
    job_url,
    options_errors,
    resolve_model,
    seconds_until_tomorrow,
)
from .parsers import PARSER_CLASSES
from .responses import ACCEPTED_HEADERS, accepted_response, error_responses
from .serializers import (
    RemovalFilterSerializer,
    RemovalJobSerializer,
    RemovalRequestSerializer,
    RetryRequestSerializer,
)

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


class CodedErrorsMixin:
    # For any DRF view: error bodies carry "code" next to "detail" (as the schema's error answers
    # say), and Django's own upload limits answer 413 instead of 400.

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, RequestDataTooBig | TooManyFieldsSent | TooManyFilesSent):
            exc = PayloadTooLarge(str(exc) or PayloadTooLarge.default_detail)
        response = super().handle_exception(exc)
        data = response.data
        if isinstance(data, dict) and set(data) == {"detail"}:
            code = exc.get_codes() if isinstance(exc, APIException) else None
            if not isinstance(code, str):
                code = {404: "not_found", 403: "permission_denied"}.get(response.status_code)
            if code:
                response.data = {"detail": data["detail"], "code": code}
        return response


class RemovalAPIViewMixin(CodedErrorsMixin):
    # What the views of this app (and imagekit_bgremove.rest_framework's mixin) add to a DRF
    # view (comments, not a docstring: schema generators would show it on your endpoints):
    # - 401 with WWW-Authenticate whenever *one* of the authentication classes can ask for
    #   credentials (DRF asks only the first one, so Session before Basic answered 403);
    # - 413 for a body over get_max_body_bytes(), checked from Content-Length before anything
    #   reads or parses the body (and for Django's own upload limits);
    # - 429 with Retry-After when the daily budget is spent;
    # - "code" next to "detail" in error bodies;
    # - the RemovalRateThrottle on the actions in removal_throttled_actions.

    #: JSON nested too deeply or with numbers that are not finite is a 400, never a 500.
    parser_classes = PARSER_CLASSES
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
        if isinstance(exc, services.BudgetExhausted):
            exc = BudgetSpent(str(exc), wait=seconds_until_tomorrow())
        return super().handle_exception(exc)

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
            **error_responses(400, 401, 403, 409, 413, 415, 429),
        },
        description="Refused with 409 while a job for that image is unfinished, as the "
        "remove-background endpoint of a project's own API is.",
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
                only_if_idle=True,
            )
        except services.JobInProgress as exc:
            return self.conflict(exc, exc.job, "job_in_progress")
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
            **error_responses(400, 401, 403, 404, 409, 413, 415, 429),
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

    @extend_schema(
        summary="Cancel a job",
        description="Only a queued, waiting or pending job: one ImageKit is already working on "
        "goes on there (and is paid for), but its result is ignored. 409 for any other job.",
        request=None,
        responses={200: RemovalJobSerializer, **error_responses(401, 403, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk: str | None = None) -> Response:
        job = self.get_object()
        target = job.get_target()
        if target is not None:
            self.check_object_permissions(request, target)
        try:
            job = services.cancel(job, user=request.user)
        except services.NotCancellable as exc:
            return self.conflict(exc, job, "not_cancellable")
        return Response(self.get_serializer(job).data)
