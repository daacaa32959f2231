"""The ``extensions`` parameter: checked against ImageKit's OpenAPI schema when the request
arrives (a 400 when the schema refuses it), and remove-bg's options checked the way remove.bg
would when the job runs (a FAILURE callback), since ImageKit passes them "to remove.bg as it
is". Nothing here comes from the Django app: a drift between the app and ImageKit must show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ApiError, bad_request
from .schema import check
from .spec_schemas import SCHEMAS

REMOVE_BG = "remove-bg"
#: Extensions the emulator accepts but does not perform: reported ``success`` at once.
NO_OP_EXTENSIONS = ("google-auto-tagging", "aws-auto-tagging", "ai-auto-description")
#: Valid per the spec but refused by the emulator (it has no AI tasks or saved extensions).
UNSUPPORTED_EXTENSIONS = ("ai-tasks", "saved-extension")
#: remove.bg's defaults for the options ImageKit documents.
REMOVE_BG_DEFAULTS: dict[str, Any] = {
    "add_shadow": False,
    "semitransparency": True,
    "bg_color": None,
    "bg_image_url": None,
}

_HEX = re.compile(r"#?([0-9a-fA-F]{3}|[0-9a-fA-F]{4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")
_NAME = re.compile(r"[A-Za-z]+")


@dataclass
class ExtensionRequest:
    name: str
    item: dict[str, Any]
    #: remove-bg only: the options as given, and with remove.bg's defaults filled in.
    requested_options: dict[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, Any]:
        return {**REMOVE_BG_DEFAULTS, **self.requested_options}


def _error_key(path: tuple[str | int, ...], items: list[Any]) -> str:
    """``remove-bg.bg_color`` for ``[0, "options", "bg_color"]``; ``extensions[1]`` when the
    item has no usable name."""
    if not path or not isinstance(path[0], int):
        return "extensions"
    item = items[path[0]] if path[0] < len(items) else None
    name = item.get("name") if isinstance(item, dict) else None
    rest = [str(p) for p in path[1:]]
    if rest[:1] == ["options"] and len(rest) > 1:
        rest = rest[1:]
    if not isinstance(name, str) or not rest or rest == ["name"]:
        return f"extensions[{path[0]}]" + ("." + ".".join(rest) if rest else "")
    return f"{name}.{'.'.join(rest)}"


def parse_extensions(raw: Any) -> list[ExtensionRequest]:
    """Validate an ``extensions`` value (already JSON-decoded) against the spec's schema.

    Raises ApiError 400 with ImageKit's body shape (``message``, ``help``) plus ``errors``
    mapping each offending field to its problems."""
    if raw is None:
        return []
    problems = check(raw, SCHEMAS["Extensions"], ())
    if problems:
        items = raw if isinstance(raw, list) else []
        errors: dict[str, list[str]] = {}
        for problem in problems:
            errors.setdefault(_error_key(problem.path, items), []).append(problem.message)
        first = problems[0]
        detail = (
            "it must be an array of extension objects"
            if not first.path
            else f"{_error_key(first.path, items)} {first.message}"
        )
        raise bad_request(
            f"Your request contains invalid extensions parameter: {detail}.", errors=errors
        )
    requests: list[ExtensionRequest] = []
    seen: set[str] = set()
    for item in raw:
        name = item["name"]
        if name in UNSUPPORTED_EXTENSIONS:
            raise bad_request(f"The {name} extension is not supported by the ImageKit emulator.")
        if name in seen:
            # The spec does not forbid it, but extensionStatus has one entry per name, so the
            # outcome would be ambiguous: the emulator refuses it (an assumption, see docs).
            raise bad_request(f"Your request contains the {name} extension more than once.")
        seen.add(name)
        request = ExtensionRequest(name, item)
        if name == REMOVE_BG:
            request.requested_options = dict(item.get("options") or {})
        requests.append(request)
    return requests


class OptionRejected(Exception):
    """remove.bg would refuse these options; ``reason`` names which check failed."""

    def __init__(self, message: str, reason: str = "invalid_options"):
        super().__init__(message)
        self.message = message
        self.reason = reason


def colour_ok(value: str) -> bool:
    """A hex colour (3, 4, 6 or 8 digits, ``#`` optional) or a colour name Pillow knows (the
    CSS names). remove.bg's exact list of names is not published: an assumption."""
    text = value.strip()
    if _HEX.fullmatch(text):
        return True
    if not _NAME.fullmatch(text):
        return False
    try:
        from PIL import ImageColor
    except ImportError:  # pragma: no cover - the emulator extra is not installed
        return True
    try:
        ImageColor.getrgb(text.lower())
    except ValueError:
        return False
    return True


def check_remove_bg_options(options: dict[str, Any]) -> None:
    """What remove.bg would refuse among values the schema lets through; raises OptionRejected.

    Options the emulator does not know (remove.bg has more, ``size`` or ``type`` for
    instance) are accepted and ignored."""
    colour = options.get("bg_color")
    url = options.get("bg_image_url")
    if colour and url:
        raise OptionRejected(
            "bg_color and bg_image_url cannot both be set; remove.bg accepts one background.",
            "conflicting_background",
        )
    if colour is not None and not colour_ok(colour):
        raise OptionRejected(
            f"invalid bg_color {colour!r}: expected a hex colour (like 81d4fa or fff) or a "
            "colour name (like green)",
            "invalid_bg_color",
        )
    if url is not None and url != "":
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OptionRejected(
                f"invalid bg_image_url {url!r}: expected an absolute http(s) URL",
                "invalid_bg_image_url",
            )


def parse_webhook_url(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_request("Your request contains invalid webhookUrl parameter.")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request(
            "Your request contains invalid webhookUrl parameter. It must be an absolute "
            "http(s) URL."
        )
    return value.strip()


__all__ = [
    "NO_OP_EXTENSIONS",
    "REMOVE_BG",
    "REMOVE_BG_DEFAULTS",
    "UNSUPPORTED_EXTENSIONS",
    "ApiError",
    "ExtensionRequest",
    "OptionRejected",
    "check_remove_bg_options",
    "colour_ok",
    "parse_extensions",
    "parse_webhook_url",
]
