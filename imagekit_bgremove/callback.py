"""ImageKit's extension callback and file details, parsed once into typed values.

The webhook, the scheduled checks, reconcile and the ``remove_background`` command all read
ImageKit's answers through these functions, so there is one idea of what a result is.

Callback bodies (CONTRACT.md)::

    {"service": "remove-bg", "status": "SUCCESS", "fileObject": {...file details...}}
    {"service": "remove-bg", "status": "FAILURE", "fileId": "...", "error": {...}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import removebg

MAX_ID_CHARS = 100
MAX_URL_CHARS = 2000


class CallbackError(ValueError):
    """The payload is not a remove-bg callback of the documented shape (answered with 400)."""


@dataclass(frozen=True)
class RemoteFile:
    """One version of a file at ImageKit, as its file details describe it."""

    file_id: str
    version_id: str
    url: str
    mime: str = ""
    size: int | None = None
    width: int | None = None
    height: int | None = None
    file_path: str = ""
    name: str = ""
    #: ISO 8601 as ImageKit writes it (sortable as text).
    created_at: str = ""
    updated_at: str = ""

    def job_fields(self) -> dict[str, Any]:
        """The ``RemovalJob`` fields that record this file as a job's result."""
        return {
            "result_file_id": self.file_id,
            "result_version_id": self.version_id,
            "result_url": self.url,
            "result_mime": self.mime,
            "result_size": self.size,
            "result_width": self.width,
            "result_height": self.height,
        }


@dataclass(frozen=True)
class Callback:
    succeeded: bool
    #: The file the callback is about: the result's for a SUCCESS, ``fileId`` for a FAILURE.
    file_id: str
    result: RemoteFile | None = None
    #: ImageKit's ``error`` object of a FAILURE, kept whole (its fields are not documented).
    error: Any = None

    @property
    def reason(self) -> str:
        return failure_reason(self.error)


def _text(value: Any, what: str, *, limit: int, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise CallbackError(f"{what} is missing.")
        return ""
    if not isinstance(value, str):
        raise CallbackError(f"{what} must be a string, not {type(value).__name__}.")
    if len(value) > limit:
        raise CallbackError(f"{what} is longer than {limit} characters.")
    return value


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value >= 0 else None


def parse_file(data: Any, what: str = "fileObject") -> RemoteFile:
    """A file-details object (callback ``fileObject``, details or a version) → RemoteFile."""
    if not isinstance(data, Mapping):
        raise CallbackError(f"{what} must be an object.")
    version = data.get("versionInfo")
    if version is not None and not isinstance(version, Mapping):
        raise CallbackError(f"{what}.versionInfo must be an object.")
    return RemoteFile(
        file_id=_text(data.get("fileId"), f"{what}.fileId", limit=MAX_ID_CHARS, required=True),
        version_id=_text((version or {}).get("id"), f"{what}.versionInfo.id", limit=MAX_ID_CHARS),
        url=_text(data.get("url"), f"{what}.url", limit=MAX_URL_CHARS, required=True),
        mime=_text(data.get("mime") or data.get("fileType"), f"{what}.mime", limit=100),
        size=_count(data.get("size")),
        width=_count(data.get("width")),
        height=_count(data.get("height")),
        file_path=_text(data.get("filePath"), f"{what}.filePath", limit=500),
        name=_text(data.get("name"), f"{what}.name", limit=500),
        created_at=_text(data.get("createdAt"), f"{what}.createdAt", limit=40),
        updated_at=_text(data.get("updatedAt"), f"{what}.updatedAt", limit=40),
    )


def parse_callback(payload: Any) -> Callback:
    """A callback body (already decoded from JSON) → Callback; CallbackError names what is
    wrong with it."""
    if not isinstance(payload, Mapping):
        raise CallbackError("The callback body must be a JSON object.")
    service = payload.get("service")
    if service != removebg.NAME:
        shown = service if isinstance(service, str) else type(service).__name__
        raise CallbackError(f"Not a remove-bg callback (service {shown[:50]!r}).")
    status = payload.get("status")
    if not isinstance(status, str) or status.upper() not in ("SUCCESS", "FAILURE"):
        raise CallbackError("Unknown callback status; expected SUCCESS or FAILURE.")
    if status.upper() == "SUCCESS":
        result = parse_file(payload.get("fileObject"))
        return Callback(succeeded=True, file_id=result.file_id, result=result)
    file_id = _text(payload.get("fileId"), "fileId", limit=MAX_ID_CHARS)
    file_object = payload.get("fileObject")
    if not file_id and isinstance(file_object, Mapping):
        file_id = _text(file_object.get("fileId"), "fileObject.fileId", limit=MAX_ID_CHARS)
    return Callback(succeeded=False, file_id=file_id, error=payload.get("error"))


def failure_reason(error: Any) -> str:
    """A readable reason from ImageKit's error object (whatever shape it has)."""
    if isinstance(error, Mapping):
        for key in ("message", "reason", "detail", "title", "code"):
            value = error.get(key)
            if isinstance(value, str | int) and str(value):
                return str(value)[:1000]
    if isinstance(error, str) and error:
        return error[:1000]
    return "no reason given"
