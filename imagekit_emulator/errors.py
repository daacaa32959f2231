"""ImageKit's error answers (``{"message": ..., "help": ...}``) and the emulator's internal
failure types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import HELP_TEXT

MSG_MISSING_FILE = "Your request is missing file parameter."
MSG_MISSING_NAME = "Your request is missing fileName parameter."
MSG_INVALID_FILE = "Your request contains invalid file parameter."
MSG_TOO_LARGE = "Your request contains invalid file parameter. The file size exceeds limits."
MSG_EXISTS = (
    "A file with the same name already exists at the exact location. We could not overwrite "
    "it because both overwriteFile and useUniqueFileName are set to false."
)
MSG_QUOTA = "Extensions quota exceeded."
MSG_NO_FILE = "The requested file does not exist."
MSG_NO_VERSION = "The requested file version does not exist."
MSG_VERSION_LIMIT = "A file can have a maximum of 100 versions."
MSG_TOO_MANY_UPDATES = (
    "You have sent too many requests to update the file recently. Please try again later."
)
MSG_RATE_LIMITED = "Too many requests. Please try again later."
MSG_INTERNAL = "We have encountered an internal error while processing your request."
MSG_AUTH_MISSING = "Your request does not contain private API key."
MSG_AUTH_FAILED = "Your account cannot be authenticated."


class ApiError(Exception):
    """An error answer: status, ImageKit's body, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        help_text: bool = True,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = dict(errors) if errors else None
        self.headers = dict(headers or {})
        self.help_text = help_text

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.help_text:
            body["help"] = HELP_TEXT
        if self.errors:
            body["errors"] = self.errors
        return body


def bad_request(message: str, **kwargs: Any) -> ApiError:
    return ApiError(400, message, **kwargs)


class JobFailure(Exception):
    """A remove-bg job ends in a FAILURE callback with ``{"message", "reason"}``."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.message = message
        self.reason = reason


class FetchError(Exception):
    def __init__(self, message: str, *, untrusted: bool = False):
        super().__init__(message)
        self.untrusted = untrusted
