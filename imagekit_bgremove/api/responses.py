"""What the OpenAPI schema says each endpoint answers (drf-spectacular, when installed)."""

from __future__ import annotations

from typing import Any

from ..api_schema import (
    OpenApiExample,
    OpenApiResponse,
    header,
)
from .serializers import ConflictSerializer, ErrorSerializer, RemovalJobSerializer

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
    415: _error(
        "The body's Content-Type is not one this endpoint parses (JSON, multipart or form).",
        ("Unsupported media type", 'Unsupported media type "text/plain" in request.'),
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
