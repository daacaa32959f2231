"""The wire format: strict request serializers, the job, the errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import (
    ObjectDoesNotExist,
)
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.fields import empty

from .. import services
from ..api_schema import (
    extend_schema_serializer,
)
from ..inputs import check_options
from ..models import JobStatus, RemovalJob
from ..removebg import OptionsError, RemoveBgOptions
from ..safejson import loads
from .helpers import (
    job_content_type,
    job_url,
    model_label,
    options_errors,
    resolve_model,
    result_file_url,
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
                data = loads(data)
            except ValueError as exc:
                self.fail("json", error=exc)
        if not isinstance(data, Mapping):
            self.fail("type", type=type(data).__name__)
        for key, value in data.items():
            if isinstance(value, str) and "\x00" in value:  # no database stores it in JSON
                raise ValidationError({str(key): ["Null characters are not allowed."]})
        try:
            options = RemoveBgOptions.from_dict(data)
            check_options(options)
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
        required=False,
        max_length=100,
        help_text="The name of its BackgroundRemovalImageField (only needed when the model has "
        "several).",
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
        if not allowed:
            raise ValidationError(
                {"model": [f"{model_label(model)} has no background-removal image field."]}
            )
        if "field" not in attrs and len(allowed) == 1:
            attrs["field"] = allowed[0]
        elif attrs.get("field") not in allowed:
            named = f" {attrs['field']!r}" if "field" in attrs else ""
            raise ValidationError(
                {
                    "field": [
                        f"{model_label(model)} has no background-removal image field{named}; "
                        f"choose one of {', '.join(allowed)}."
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
    code = serializers.ChoiceField(
        choices=["job_in_progress", "already_retried", "not_retryable", "not_cancellable"]
    )
    job = JobRefSerializer(
        allow_null=True, help_text="The job in the way: the unfinished one, or the newer attempt."
    )
