"""A small REST API (Django REST framework) for front-ends.

==========================================  ======================================================
``POST   api/removals/``                    request a removal; body ``{"model": "catalogue.product",
                                            "object_id": "1", "field": "photo", "options": {...},
                                            "force": false}`` -> 202 with the job
``GET    api/removals/``                    jobs, newest first, paginated; filters ``model``,
                                            ``object_id``, ``field``, ``status``
``GET    api/removals/<id>/``               one job: status, result URLs, error
``POST   api/removals/<id>/retry/``         try a failed job again -> 202 with the new job
                                            (409 for a job that has not failed)
==========================================  ======================================================

Who may do what: an authenticated user with Django's ``change`` permission on the target model
(:class:`CanChangeTarget`). Replace it per project by subclassing :class:`RemovalViewSet` and
setting ``permission_classes``; authentication comes from the project's DRF settings.

The serializers below describe the wire format; the views only resolve, check and delegate to
:mod:`imagekit_bgremove.services`.
"""

from __future__ import annotations

import contextlib
from typing import Any

from django.apps import apps
from django.contrib.auth import get_permission_codename
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.files.storage import default_storage
from django.db import models
from django.urls import NoReverseMatch, reverse
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission
from rest_framework.response import Response

from . import services
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


def result_file_url(job: RemovalJob, request=None) -> str | None:
    """The URL of the copy of the result in Django storage, if there is one."""
    if not job.result_name:
        return None
    storage = default_storage
    model = job.content_type.model_class()
    if model is not None:
        # A renamed or removed field: the default storage is the best guess.
        with contextlib.suppress(Exception):
            storage = model._meta.get_field(job.field_name).storage
    try:
        url = storage.url(job.result_name)
    except Exception:
        return None
    if request is not None and url.startswith("/"):
        url = request.build_absolute_uri(url)
    return url


def options_errors(error: OptionsError) -> dict[str, list[str]]:
    """RemoveBgOptions' errors in DRF's shape (``__all__`` -> ``non_field_errors``)."""
    return {
        ("non_field_errors" if key == NON_FIELD else key): messages
        for key, messages in error.errors.items()
    }


# ---------------------------------------------------------------------------------------------
# Serializers


class OptionsField(serializers.DictField):
    """The remove-bg options object, checked by RemoveBgOptions; errors come back per option."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        data = super().to_internal_value(data)
        try:
            RemoveBgOptions.from_dict(data)
        except OptionsError as exc:
            raise ValidationError(options_errors(exc)) from exc
        return data


class RemovalRequestSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200, help_text='"app_label.model_name"')
    object_id = serializers.CharField(max_length=255)
    field = serializers.CharField(max_length=100)
    options = OptionsField(required=False, default=dict)
    force = serializers.BooleanField(required=False, default=False)

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
        except (ValueError, TypeError, DjangoValidationError):  # e.g. "x" for an int pk
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


class RemovalJobSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    model = serializers.SerializerMethodField()
    field = serializers.CharField(source="field_name", read_only=True)
    status_display = serializers.CharField(source="get_status_display", read_only=True)
    finished = serializers.BooleanField(source="is_finished", read_only=True)
    result_file_url = serializers.SerializerMethodField()
    requested_by = serializers.SerializerMethodField()

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
            "created_at",
            "submitted_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_url(self, job: RemovalJob) -> str | None:
        request = self.context.get("request")
        try:
            path = reverse("imagekit_bgremove:removal-detail", kwargs={"pk": job.pk})
        except NoReverseMatch:
            return None
        return request.build_absolute_uri(path) if request is not None else path

    def get_model(self, job: RemovalJob) -> str:
        return f"{job.content_type.app_label}.{job.content_type.model}"

    def get_result_file_url(self, job: RemovalJob) -> str | None:
        return result_file_url(job, self.context.get("request"))

    def get_requested_by(self, job: RemovalJob) -> str | None:
        user = job.requested_by
        return user.get_username() if user is not None else None


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


# ---------------------------------------------------------------------------------------------
# Permissions


class CanChangeTarget(BasePermission):
    """Authenticated, with the ``change`` permission on the model whose image is processed.

    Override :meth:`has_model_permission` (per model) or :meth:`has_object_permission`
    (per job) for finer rules; the viewset calls ``has_model_permission`` before creating a job
    and to decide which jobs a user may list."""

    message = "You may not change these objects."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated)

    def has_model_permission(self, request, view, model: type[models.Model]) -> bool:
        opts = model._meta
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    def has_object_permission(self, request, view, job: RemovalJob) -> bool:
        model = job.content_type.model_class()
        return model is not None and self.has_model_permission(request, view, model)


class RemovalPagination(PageNumberPagination):
    page_size = 25
    page_size_query_param = "page_size"
    max_page_size = 200


# ---------------------------------------------------------------------------------------------
# Views


class RemovalViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = RemovalJobSerializer
    permission_classes = [CanChangeTarget]
    pagination_class = RemovalPagination
    queryset = RemovalJob.objects.select_related("content_type", "requested_by")

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
        try:
            job = services.request_removal(
                data["instance"],
                data["field"],
                options=data["options"] or None,
                trigger=Trigger.API,
                user=request.user,
                force=data["force"],
            )
        except OptionsError as exc:
            raise ValidationError({"options": options_errors(exc)}) from exc
        except ValueError as exc:
            raise ValidationError({"non_field_errors": [str(exc)]}) from exc
        body = self.get_serializer(job).data
        return Response(
            body,
            status=status.HTTP_202_ACCEPTED,
            headers={"Location": body["url"]} if body.get("url") else {},
        )

    @action(detail=True, methods=["post"])
    def retry(self, request, pk: str | None = None) -> Response:
        job = self.get_object()
        try:
            new_job = services.retry(job, user=request.user)
        except ValueError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(self.get_serializer(new_job).data, status=status.HTTP_202_ACCEPTED)
