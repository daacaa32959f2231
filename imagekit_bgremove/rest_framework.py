"""Background removal in your own Django REST framework API.

A front-end uploads a product through ``/api/products/``, not through a generic jobs endpoint.
Three pieces make that work on your own serializer and viewset::

    from rest_framework import serializers, viewsets
    from imagekit_bgremove.rest_framework import (
        BackgroundRemovalField,
        BackgroundRemovalViewSetMixin,
        RemovalOptionsField,
        StrictFieldsMixin,
    )


    class ProductSerializer(StrictFieldsMixin, serializers.ModelSerializer):
        photo = BackgroundRemovalField(required=False)
        photo_options = RemovalOptionsField()  # optional: options for the uploaded photo

        class Meta:
            model = Product
            fields = ["id", "name", "photo", "photo_options"]


    class ProductViewSet(BackgroundRemovalViewSetMixin, viewsets.ModelViewSet):
        queryset = Product.objects.all()
        serializer_class = ProductSerializer
        permission_classes = [...]  # yours: they also decide who may remove a background

- :class:`BackgroundRemovalField` takes the image upload (multipart) like an ``ImageField`` and
  renders ``{"url", "status", "status_display", "finished", "result_url", "result_file_url",
  "error", "job", "job_id"}``: the original, where its latest removal stands and the cut-out.
  It reads the object's state from the jobs (``imagekit_bgremove.state``): a list costs two
  queries per page, not one per row, when its objects go through
  :func:`~imagekit_bgremove.state.prefetch_removal_state` (the mixin does it for ``list``).
- :class:`RemovalOptionsField`, named ``<image field>_options``, takes the remove-bg options for
  the image uploaded in the same request (an object, or a JSON string in multipart); they apply
  to the removal that saving the image requests.
- :class:`BackgroundRemovalViewSetMixin` adds ``POST <resource>/<pk>/remove-background/``
  (body ``{"options": {...}, "field": "photo", "force": false}``, all optional): 202 with the
  job (``Location``, ``Retry-After``), 409 while a job for that image is unfinished (its URL in
  the body and ``Location``), and the viewset's own permission classes, object-level ones
  included (``get_object()`` runs ``check_object_permissions``). It throttles the requests that
  start paid work (scope ``imagekit_bgremove``), answers 401 with ``WWW-Authenticate`` and 413
  for oversized bodies.

Job URLs point at this app's jobs API (``include("imagekit_bgremove.urls")``), where a
front-end polls the job with ``If-None-Match`` (304 while nothing changed).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.base import File
from django.db import models
from django.db.models.fields.files import FieldFile
from django.db.models.signals import pre_save
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.fields import empty
from rest_framework.response import Response
from rest_framework.settings import api_settings

from . import services
from .api import (
    ACCEPTED_HEADERS,
    PARSER_CLASSES,
    CodedErrorsMixin,
    OptionsField,
    PayloadTooLarge,
    RemovalAPIViewMixin,
    RemovalRateThrottle,
    StrictFieldsMixin,
    absolute,
    accepted_response,
    error_responses,
    job_url,
    options_errors,
)
from .api_schema import OpenApiExample, extend_schema
from .conf import app_settings
from .inputs import InputError, check_pixels
from .models import JobStatus, Trigger
from .removebg import OptionsError
from .state import prefetch_removal_state

__all__ = [
    "PARSER_CLASSES",
    "BackgroundRemovalField",
    "BackgroundRemovalStateSerializer",
    "BackgroundRemovalViewSetMixin",
    "CodedErrorsMixin",
    "RemovalOptionsField",
    "RemovalRateThrottle",
    "StrictFieldsMixin",
]

#: Where RemovalOptionsField leaves the options on the uploaded file until the model is saved.
UPLOAD_OPTIONS_ATTR = "_imagekit_bgremove_options"
UPLOAD_USER_ATTR = "_imagekit_bgremove_user"


def removal_fields(model: type[models.Model]) -> list[Any]:
    return [f for f in model._meta.fields if getattr(f, "removes_background", False)]


# ---------------------------------------------------------------------------------------------
# Serializer fields


class BackgroundRemovalStateSerializer(serializers.Serializer):
    """How :class:`BackgroundRemovalField` renders an image (documentation and schema only)."""

    url = serializers.URLField(help_text="The original image.")
    status = serializers.ChoiceField(
        choices=JobStatus.choices,
        allow_null=True,
        help_text="Where the latest removal stands (null: none requested yet).",
    )
    status_display = serializers.CharField(allow_null=True)
    finished = serializers.BooleanField(allow_null=True)
    result_url = serializers.URLField(
        allow_null=True, help_text="ImageKit's URL of this image's cut-out, once there is one."
    )
    result_file_url = serializers.URLField(
        allow_null=True, help_text="The cut-out copied next to the original in your storage."
    )
    error = serializers.CharField(allow_blank=True, help_text="Why the latest removal failed.")
    job = serializers.URLField(allow_null=True, help_text="The latest job: poll it.")
    job_id = serializers.IntegerField(allow_null=True)


class BackgroundRemovalField(serializers.ImageField):
    """For a ``BackgroundRemovalImageField``: the upload in (validated as an image, at most
    ``max_upload_bytes``, default the ``MAX_UPLOAD_BYTES`` setting: larger is a 413), and out
    the original's URL with its removal state (``null`` when there is no image)."""

    def __init__(self, *, max_upload_bytes: int | None = None, **kwargs: Any):
        self.max_upload_bytes = max_upload_bytes
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        limit = self.max_upload_bytes or int(app_settings.MAX_UPLOAD_BYTES or 0)
        size = getattr(data, "size", None)
        if limit and isinstance(size, int) and size > limit:
            raise PayloadTooLarge(f"The image is {size} bytes; the limit is {limit}.")
        upload = super().to_internal_value(data)
        try:
            check_pixels(upload)
        except InputError as exc:
            raise ValidationError(str(exc), code="too_many_pixels") from exc
        request = self.context.get("request")
        if request is not None:
            # The removal the save requests is recorded as this user's.
            setattr(upload, UPLOAD_USER_ATTR, request.user)
        return upload

    def to_representation(self, value: Any) -> dict[str, Any] | None:
        if not value or not getattr(value, "name", None):
            return None
        request = self.context.get("request")
        try:
            original = value.url
        except Exception:  # a storage that cannot name a URL
            original = None
        job = getattr(value, "removal", None)
        result_file = getattr(value, "result_file", None)
        result_file_url = None
        if result_file:
            try:
                result_file_url = result_file.url
            except Exception:
                result_file_url = None
        return {
            "url": absolute(original, request),
            "status": job.status if job is not None else None,
            "status_display": job.get_status_display() if job is not None else None,
            "finished": job.is_finished if job is not None else None,
            "result_url": getattr(value, "result_url", None),
            "result_file_url": absolute(result_file_url, request),
            "error": (job.error_message or "") if job is not None else "",
            "job": job_url(job, request) if job is not None else None,
            "job_id": job.pk if job is not None else None,
        }


class RemovalOptionsField(OptionsField):
    """The remove-bg options for the image uploaded in the same request. Name it
    ``<image field>_options`` (or pass ``image_field``). An object, or a JSON string of one in
    multipart forms; errors per option. Options without a new image are a 400: to process the
    current image again, POST ``remove-background/``."""

    def __init__(self, *, image_field: str | None = None, **kwargs: Any):
        self.image_field = image_field
        kwargs.setdefault("write_only", True)
        kwargs["source"] = "*"  # nothing reaches the model: the options ride on the upload
        super().__init__(**kwargs)

    def bind(self, field_name: str, parent: Any) -> None:
        super().bind(field_name, parent)
        if self.image_field is None:
            self.image_field = field_name.removesuffix("_options")

    def get_value(self, dictionary: Any) -> Any:
        raw = super().get_value(dictionary)
        if raw is empty:
            return empty
        return (raw, dictionary.get(self.image_field))

    def validate_empty_values(self, data: Any) -> tuple[bool, Any]:
        if isinstance(data, tuple) and data[0] is None:
            return True, {}
        return super().validate_empty_values(data)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        raw, upload = data
        options = self.parse(raw)
        if not options:
            return {}
        if not isinstance(upload, File):
            raise ValidationError(
                f"Options apply to a new image: send them with {self.image_field!r}, or POST "
                "remove-background/ to process the current image again."
            )
        setattr(upload, UPLOAD_OPTIONS_ATTR, options)
        return {}


def _carry_upload_options(sender: type, instance: models.Model, raw: bool = False, **_: Any):
    """Before a save: options a RemovalOptionsField left on an uploaded image, and the user who
    uploaded it, become the field's ``next_removal_options`` and ``next_removal_user``, which
    the removal that this save requests uses."""
    if raw:
        return
    for field in _fields_of(sender):
        value = instance.__dict__.get(field.attname)
        upload = value
        if isinstance(value, FieldFile):
            if value._committed:
                continue
            upload = getattr(value, "_file", None)
        options = getattr(upload, UPLOAD_OPTIONS_ATTR, None)
        if options is not None:
            getattr(instance, field.attname).next_removal_options = options
        user = getattr(upload, UPLOAD_USER_ATTR, None)
        if user is not None:
            getattr(instance, field.attname).next_removal_user = user


_FIELDS: dict[type, tuple[Any, ...]] = {}


def _fields_of(model: type) -> tuple[Any, ...]:
    fields = _FIELDS.get(model)
    if fields is None:
        fields = _FIELDS[model] = tuple(removal_fields(model))
    return fields


pre_save.connect(_carry_upload_options, dispatch_uid="imagekit_bgremove.rest_framework.options")


# ---------------------------------------------------------------------------------------------
# The viewset mixin


class RemoveBackgroundSerializer(StrictFieldsMixin, serializers.Serializer):
    """The body of ``remove-background/``; every key is optional."""

    field = serializers.CharField(
        required=False,
        max_length=100,
        help_text="Which image field (only needed when the model has several).",
    )
    options = OptionsField(help_text="Options over the field's defaults.")
    force = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Submit even if an identical image with the same options has a result.",
    )


class BackgroundRemovalViewSetMixin(RemovalAPIViewMixin):
    # For a GenericViewSet (usually a ModelViewSet) of a model with a
    # BackgroundRemovalImageField; see the module's documentation. (A comment, not a docstring:
    # schema generators would show it as the description of your endpoints.)

    #: Multipart bodies carry the image: up to MAX_UPLOAD_BYTES plus the form's other fields.
    max_body_bytes = None
    removal_throttled_actions = ("remove_background",)
    upload_actions = ("create", "update", "partial_update")

    def get_max_body_bytes(self) -> int | None:
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        if getattr(self, "action", None) == "remove_background":
            return RemovalAPIViewMixin.max_body_bytes  # options only: no image in this body
        upload = int(app_settings.MAX_UPLOAD_BYTES or 0)
        return upload + int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0) if upload else None

    def get_serializer(self, *args, **kwargs):
        if kwargs.get("many") and args:
            # A page of objects: their removal state in two queries, not one per row.
            args = (prefetch_removal_state(args[0]), *args[1:])
        return super().get_serializer(*args, **kwargs)

    def starts_paid_work(self) -> bool:
        if super().starts_paid_work():
            return True
        # Saving a new image requests a removal: uploads count against the same throttle.
        if getattr(self, "action", None) in self.upload_actions:
            return any(isinstance(f, File) for f in self.request.FILES.values())
        return False

    def get_serializer_class(self):
        action = getattr(self, "action", None)
        if action == "metadata":  # OPTIONS describes what a POST to this URL takes
            action = getattr(self, "action_map", {}).get("post")
        if action == "remove_background":
            return self.get_remove_background_serializer_class()
        return super().get_serializer_class()

    def get_remove_background_serializer_class(self) -> type[serializers.Serializer]:
        model = self.get_queryset().model
        cached = _REQUEST_SERIALIZERS.get(model)
        if cached is None:
            names = [f.name for f in removal_fields(model)]
            field = serializers.ChoiceField(
                choices=names,
                required=len(names) != 1,
                help_text="Which image field"
                + (" (the model has only one: optional)." if len(names) == 1 else "."),
            )
            cached = _REQUEST_SERIALIZERS[model] = type(
                f"{model.__name__}RemoveBackgroundSerializer",
                (RemoveBackgroundSerializer,),
                {"field": field, "__module__": __name__},
            )
        return cached

    @extend_schema(
        summary="Remove the background of this object's image (again)",
        description="Starts a removal of the current image with the options given. Refused "
        "with 409 while a job for that image is unfinished.",
        parameters=ACCEPTED_HEADERS,
        responses={
            202: accepted_response("Queued; poll the job at Location."),
            **error_responses(400, 401, 403, 404, 409, 413, 415, 429),
        },
        examples=[
            OpenApiExample(
                "With a shadow, on white",
                value={"options": {"bg_color": "white", "add_shadow": True}},
                request_only=True,
            )
        ],
    )
    @action(
        detail=True, methods=["post"], url_path="remove-background", url_name="remove-background"
    )
    def remove_background(self, request, *args: Any, **kwargs: Any) -> Response:
        instance = self.get_object()  # the viewset's permissions, object-level included
        incoming = self.get_serializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = incoming.validated_data
        names = [f.name for f in removal_fields(type(instance))]
        field_name = data.get("field") or (names[0] if len(names) == 1 else "")
        try:
            job = services.request_removal(
                instance,
                field_name,
                options=data.get("options") or None,
                trigger=Trigger.API,
                user=request.user,
                force=data.get("force", False),
                only_if_idle=True,
            )
        except services.JobInProgress as exc:
            return self.conflict(exc, exc.job, "job_in_progress")
        except OptionsError as exc:
            raise ValidationError({"options": options_errors(exc)}) from exc
        except services.RequestError as exc:
            raise ValidationError({api_settings.NON_FIELD_ERRORS_KEY: [str(exc)]}) from exc
        return self.accepted(job)


_REQUEST_SERIALIZERS: dict[type, type[serializers.Serializer]] = {}
