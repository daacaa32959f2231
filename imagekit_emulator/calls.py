"""What an API or control handler gets (``Call``) and gives back (``Reply``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request

from .errors import ApiError, bad_request

if TYPE_CHECKING:
    from .server import Emulator

#: JSON bodies may not exceed this.
MAX_JSON_BYTES = 1024 * 1024


@dataclass
class Call:
    emulator: Emulator
    request: Request
    request_id: str
    endpoint: str
    params: dict[str, str] = field(default_factory=dict)

    def json_body(self) -> Any:
        """The JSON body (None when empty); 400 when it is not JSON, 413 when too large."""
        length = self.request.content_length
        if length is not None and length > MAX_JSON_BYTES:
            raise ApiError(413, "The request body is too large.")
        raw = self.request.stream.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise ApiError(413, "The request body is too large.")
        try:
            return json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (UnicodeDecodeError, ValueError):
            raise bad_request("Your request contains invalid JSON.") from None


@dataclass
class Reply:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)
