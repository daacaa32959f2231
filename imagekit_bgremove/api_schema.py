"""OpenAPI descriptions of the REST API, through drf-spectacular when it is installed.

drf-spectacular is an optional extra (``pip install "imagekit-bgremove[openapi]"``): without it,
every decorator and helper below is a no-op stand-in with the same signature, so the API imports
and works the same and only the schema is missing. With it, the extensions at the bottom
describe what spectacular cannot infer: the strict request bodies (``additionalProperties:
false``), the remove-bg options object, and the image field of
:mod:`imagekit_bgremove.rest_framework` (a file upload in, the removal state out).
"""

from __future__ import annotations

from typing import Any

try:
    from drf_spectacular.utils import (
        OpenApiExample,
        OpenApiParameter,
        OpenApiResponse,
        extend_schema,
        extend_schema_serializer,
        extend_schema_view,
    )

    HAVE_SPECTACULAR = True
except ImportError:  # the optional extra is not installed: describe nothing, change nothing
    HAVE_SPECTACULAR = False

    def _identity(obj: Any) -> Any:
        return obj

    def extend_schema(*args: Any, **kwargs: Any) -> Any:
        return _identity

    def extend_schema_view(**kwargs: Any) -> Any:
        return _identity

    def extend_schema_serializer(*args: Any, **kwargs: Any) -> Any:
        return _identity

    class _Described:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.args, self.kwargs = args, kwargs

    class OpenApiExample(_Described):  # type: ignore[no-redef]
        pass

    class OpenApiResponse(_Described):  # type: ignore[no-redef]
        pass

    class OpenApiParameter(_Described):  # type: ignore[no-redef]
        QUERY, PATH, HEADER, COOKIE = "query", "path", "header", "cookie"


__all__ = [
    "HAVE_SPECTACULAR",
    "OpenApiExample",
    "OpenApiParameter",
    "OpenApiResponse",
    "extend_schema",
    "extend_schema_serializer",
    "extend_schema_view",
    "header",
]


def header(
    name: str, description: str, *, statuses: list[int], type: Any = str, required: bool = False
) -> Any:
    """A response header, documented on the given statuses."""
    return OpenApiParameter(
        name,
        type=type,
        location=OpenApiParameter.HEADER,
        description=description,
        response=statuses,
        required=required,
    )


OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "remove-bg options; keys left out keep the field's defaults. Also accepted as the same "
        "object in a JSON string (as multipart forms send it)."
    ),
    "properties": {
        "add_shadow": {"type": "boolean", "description": "Add a soft drop shadow."},
        "semitransparency": {
            "type": "boolean",
            "description": "Keep semi-transparent areas (glass, hair) soft.",
        },
        "bg_color": {
            "type": "string",
            "nullable": True,
            "maxLength": 40,
            "description": "Background colour: hex (3, 4, 6 or 8 digits, # optional) or a CSS "
            "colour name. Not with bg_image_url.",
            "example": "81d4fa",
        },
        "bg_image_url": {
            "type": "string",
            "format": "uri",
            "nullable": True,
            "maxLength": 2048,
            "description": "An absolute http(s) URL of a background image. Not with bg_color.",
        },
    },
    "additionalProperties": False,
}


if HAVE_SPECTACULAR:
    from drf_spectacular.extensions import (
        OpenApiSerializerExtension,
        OpenApiSerializerFieldExtension,
        OpenApiViewExtension,
    )
    from drf_spectacular.plumbing import build_basic_type, get_doc
    from drf_spectacular.types import OpenApiTypes

    class StrictRequestExtension(OpenApiSerializerExtension):
        """Request bodies of strict serializers allow no other keys (they answer 400)."""

        target_class = "imagekit_bgremove.api.serializers.StrictFieldsMixin"
        match_subclasses = True

        def map_serializer(self, auto_schema: Any, direction: str) -> dict[str, Any]:
            schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
            if direction == "request":
                schema["additionalProperties"] = False
            from .api.serializers import StrictFieldsMixin

            if schema.get("description") == get_doc(StrictFieldsMixin):
                del schema["description"]  # the mixin's docstring, not the serializer's
            return schema

    class WebhookViewExtension(OpenApiViewExtension):
        """ImageKit's callbacks are no part of the API a front-end uses: left out."""

        target_class = "imagekit_bgremove.webhooks.ImageKitWebhookView"

        def view_replacement(self) -> Any:
            return extend_schema(exclude=True)(self.target_class)

    class OptionsFieldExtension(OpenApiSerializerFieldExtension):
        target_class = "imagekit_bgremove.api.serializers.OptionsField"
        match_subclasses = True

        def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
            if direction == "response":
                return {**OPTIONS_SCHEMA, "description": "The options the job runs with."}
            return dict(OPTIONS_SCHEMA)

    class BackgroundRemovalFieldExtension(OpenApiSerializerFieldExtension):
        """In: the image file (multipart). Out: the original and its removal state."""

        target_class = "imagekit_bgremove.rest_framework.BackgroundRemovalField"
        match_subclasses = True

        def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
            if direction == "request":
                return {
                    **build_basic_type(OpenApiTypes.BINARY),
                    "description": "The image (multipart/form-data); a new image is sent to "
                    "remove-bg when saved.",
                }
            from .rest_framework import BackgroundRemovalStateSerializer

            component = auto_schema.resolve_serializer(BackgroundRemovalStateSerializer, direction)
            # null when the object has no image
            return {**component.ref, "nullable": True}
