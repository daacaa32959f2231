"""Everything the app knows about ImageKit's remove-bg extension; the pipeline calls these.

- its name, in the ``extensions`` item, the callback's ``service`` and ``extensionStatus``;
- its four options as one validated value (:class:`RemoveBgOptions`), shared by model
  defaults, admin and API, and the request item built from them (``to_extension``);
- its status in an upload or update answer (:func:`extension_status`);
- its result: a file, namely a new version of the file it ran on (:func:`is_result`), which
  the callback's ``fileObject`` or the file details describe and finalization copies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import safejson

if TYPE_CHECKING:
    from .callback import RemoteFile

NAME = "remove-bg"
MAX_URL_LENGTH = 2048
NON_FIELD = "__all__"

_HEX_COLOUR = re.compile(r"#?([0-9a-fA-F]{3}|[0-9a-fA-F]{4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")

# CSS Color Module Level 4 named colours (remove.bg accepts colour names as well as hex).
CSS_COLOUR_NAMES = frozenset(
    """
    aliceblue antiquewhite aqua aquamarine azure beige bisque black blanchedalmond blue blueviolet
    brown burlywood cadetblue chartreuse chocolate coral cornflowerblue cornsilk crimson cyan
    darkblue darkcyan darkgoldenrod darkgray darkgreen darkgrey darkkhaki darkmagenta
    darkolivegreen darkorange darkorchid darkred darksalmon darkseagreen darkslateblue
    darkslategray darkslategrey darkturquoise darkviolet deeppink deepskyblue dimgray dimgrey
    dodgerblue firebrick floralwhite forestgreen fuchsia gainsboro ghostwhite gold goldenrod gray
    green greenyellow grey honeydew hotpink indianred indigo ivory khaki lavender lavenderblush
    lawngreen lemonchiffon lightblue lightcoral lightcyan lightgoldenrodyellow lightgray
    lightgreen lightgrey lightpink lightsalmon lightseagreen lightskyblue lightslategray
    lightslategrey lightsteelblue lightyellow lime limegreen linen magenta maroon
    mediumaquamarine mediumblue mediumorchid mediumpurple mediumseagreen mediumslateblue
    mediumspringgreen mediumturquoise mediumvioletred midnightblue mintcream mistyrose moccasin
    navajowhite navy oldlace olive olivedrab orange orangered orchid palegoldenrod palegreen
    paleturquoise palevioletred papayawhip peachpuff peru pink plum powderblue purple
    rebeccapurple red rosybrown royalblue saddlebrown salmon sandybrown seagreen seashell sienna
    silver skyblue slateblue slategray slategrey snow springgreen steelblue tan teal thistle
    tomato turquoise violet wheat white whitesmoke yellow yellowgreen
    """.split()
)

_FORM_TRUE = {"true", "on", "1", "yes"}
_FORM_FALSE = {"false", "off", "0", "no", ""}


class OptionsError(ValueError):
    """Invalid remove-bg options. ``errors`` maps each field (or ``__all__``) to its messages."""

    def __init__(self, errors: Mapping[str, list[str]]):
        self.errors = {key: list(messages) for key, messages in errors.items()}
        super().__init__(
            " ".join(message for messages in self.errors.values() for message in messages)
        )

    def as_validation_error(self):  # -> django.core.exceptions.ValidationError
        from django.core.exceptions import ValidationError

        return ValidationError(
            {
                key: [ValidationError(m, code="invalid") for m in msgs]
                for key, msgs in self.errors.items()
            }
        )


@dataclass(frozen=True)
class RemoveBgOptions:
    add_shadow: bool = False
    semitransparency: bool = True
    bg_color: str | None = None
    bg_image_url: str | None = None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return _FIELD_NAMES

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any] | None,
        *,
        base: RemoveBgOptions | None = None,
        form: bool = False,
    ) -> RemoveBgOptions:
        """Validate ``data`` (keys override ``base``). ``form=True`` accepts the string booleans
        that HTML forms and query strings send ("on", "true", "0", ...)."""
        data = dict(data or {})
        errors: dict[str, list[str]] = {}
        allowed = cls.field_names()
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            errors[NON_FIELD] = [
                f"Unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(sorted(allowed))}."
            ]
        values = (base or _DEFAULTS).to_dict()
        for name in ("add_shadow", "semitransparency"):
            if name in data:
                try:
                    values[name] = _boolean(data[name], form=form)
                except ValueError as exc:
                    errors.setdefault(name, []).append(f"{name} {exc}")
        if "bg_color" in data:
            try:
                values["bg_color"] = _colour(data["bg_color"])
            except ValueError as exc:
                errors.setdefault("bg_color", []).append(f"bg_color {exc}")
        if "bg_image_url" in data:
            try:
                values["bg_image_url"] = _image_url(data["bg_image_url"])
            except ValueError as exc:
                errors.setdefault("bg_image_url", []).append(f"bg_image_url {exc}")
        if not errors and values["bg_color"] and values["bg_image_url"]:
            if "bg_color" in data and "bg_image_url" not in data:
                values["bg_image_url"] = None  # the caller's explicit choice wins over the base
            elif "bg_image_url" in data and "bg_color" not in data:
                values["bg_color"] = None
            else:
                errors[NON_FIELD] = ["bg_color and bg_image_url cannot both be set; choose one."]
        if errors:
            raise OptionsError(errors)
        return cls(**values)

    @classmethod
    def from_json(
        cls, text: str | bytes, *, base: RemoveBgOptions | None = None
    ) -> RemoveBgOptions:
        try:
            data = safejson.loads(text) if text else {}
        except ValueError as exc:
            raise OptionsError({NON_FIELD: [f"Options are not valid JSON: {exc}."]}) from exc
        if not isinstance(data, dict):
            raise OptionsError({NON_FIELD: ["Options must be a JSON object."]})
        return cls.from_dict(data, base=base)

    @classmethod
    def from_form(
        cls, data: Mapping[str, Any], *, base: RemoveBgOptions | None = None, prefix: str = ""
    ) -> RemoveBgOptions:
        """Read the option fields present in form data (a QueryDict or dict); other keys are
        ignored because a form carries more than options."""
        picked = {name: data[prefix + name] for name in cls.field_names() if prefix + name in data}
        return cls.from_dict(picked, base=base, form=True)

    @classmethod
    def coerce(
        cls,
        value: RemoveBgOptions | Mapping[str, Any] | str | bytes | None,
        *,
        base: RemoveBgOptions | None = None,
    ) -> RemoveBgOptions:
        if isinstance(value, RemoveBgOptions):
            return value  # already complete and valid: a base has nothing to add
        if isinstance(value, str | bytes):
            return cls.from_json(value, base=base)
        return cls.from_dict(value, base=base)

    def explicit(self) -> dict[str, Any]:
        """Only the options that differ from remove.bg's defaults."""
        return {k: v for k, v in self.to_dict().items() if getattr(_DEFAULTS, k) != v}

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict, whose deep copy of four scalars was a visible part of a save.
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    def to_extension(self) -> dict[str, Any]:
        """The exact item for ImageKit's ``extensions`` array."""
        options: dict[str, Any] = {
            "add_shadow": self.add_shadow,
            "semitransparency": self.semitransparency,
        }
        if self.bg_color:
            options["bg_color"] = self.bg_color
        if self.bg_image_url:
            options["bg_image_url"] = self.bg_image_url
        return {"name": NAME, "options": options}

    def cache_key(self) -> str:
        """A stable string: equal options give equal keys (used to avoid paying twice)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def replace(self, **changes: Any) -> RemoveBgOptions:
        return self.from_dict(changes, base=self) if changes else self

    def __str__(self) -> str:
        parts = [
            k.replace("_", " ") if v is True else f"{k}={v}" for k, v in self.explicit().items()
        ]
        return ", ".join(parts) or "defaults"


_FIELD_NAMES = tuple(f.name for f in fields(RemoveBgOptions))
_DEFAULTS = RemoveBgOptions()


def extension_status(response: Mapping[str, Any]) -> str:
    """remove-bg's status in an upload or update answer: pending, success or failed."""
    statuses = response.get("extensionStatus")
    if not isinstance(statuses, Mapping):
        return "pending"
    value = statuses.get(NAME, "pending")
    return str(value).lower() if isinstance(value, str) else "pending"


def is_result(version: RemoteFile, source_version: str, source_size: int | None) -> bool:
    """Whether ``version`` of the file remove-bg ran on is its result: a version other than the
    one it started from, and not that original uploaded again (a repeated upload makes a new
    version of the same size, which a cut-out is not)."""
    if not version.version_id or version.version_id == source_version:
        return False
    return not (source_size and version.size == source_size)


def _boolean(value: Any, *, form: bool) -> bool:
    if isinstance(value, bool):
        return value
    if form and isinstance(value, str) and value.strip().lower() in _FORM_TRUE | _FORM_FALSE:
        return value.strip().lower() in _FORM_TRUE
    raise ValueError(f"must be true or false, not {value!r}.")


def _colour(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a hex colour or a CSS colour name, not {value!r}.")
    text = value.strip()
    match = _HEX_COLOUR.fullmatch(text)
    if match:
        return match.group(1).lower()
    if text.lower() in CSS_COLOUR_NAMES:
        return text.lower()
    raise ValueError(
        f"must be a hex colour (3, 4, 6 or 8 digits, like 81d4fa or #fff) or a CSS colour name "
        f"(like green), not {value!r}."
    )


def _image_url(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be an absolute http(s) URL, not {value!r}.")
    text = value.strip()
    if len(text) > MAX_URL_LENGTH:
        raise ValueError(f"is {len(text)} characters long; the limit is {MAX_URL_LENGTH}.")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc}).") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an absolute http(s) URL, not {value!r}.")
    if any(ch.isspace() for ch in text):
        raise ValueError("must not contain spaces.")
    return text
