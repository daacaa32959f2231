"""The JSON parser of this app's views: :func:`imagekit_bgremove.safejson.loads` behind DRF."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from ..safejson import JSONError, loads


class BoundedJSONParser(parsers.JSONParser):
    """DRF's JSON parser, but deep nesting, ``NaN``, ``Infinity`` and ``1e999`` are a 400 like
    any other malformed body (DRF's own answers 500 to a deeply nested one)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            return loads(stream.read().decode(encoding))
        except (JSONError, UnicodeDecodeError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc


#: What the app's views parse: JSON (bounded), forms and multipart.
PARSER_CLASSES = [BoundedJSONParser, parsers.FormParser, parsers.MultiPartParser]
