"""The one JSON parser for bytes from outside: bounded nesting, finite numbers only.

Python's ``json`` recurses once per level (20,000 ``[`` raise ``RecursionError``, which nothing
answers as bad input) and accepts ``NaN``, ``Infinity`` and ``1e999`` (a float infinity), which
no database stores in JSON and no client can read back. Request bodies (``api.BoundedJSONParser``),
option strings, callbacks and ImageKit's answers are all read with :func:`loads`.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: Deepest nesting accepted. A callback's file details are 3 levels deep, options 1.
MAX_DEPTH = 32


class JSONError(ValueError):
    """Not JSON, nested too deeply, or a number that is not finite."""


def _constant(name: str) -> Any:
    raise JSONError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONError(f"the number {text[:30]} is out of range")
    return value


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return False


def loads(data: str | bytes | bytearray, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises :class:`JSONError` (a ValueError) for anything but finite
    JSON nested at most ``max_depth`` levels."""
    try:
        value = json.loads(data, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise JSONError(f"nested too deeply (more than {max_depth} levels)") from None
    except JSONError:
        raise
    except ValueError as exc:  # not JSON, not UTF-8, an integer of over 4300 digits
        raise JSONError(str(exc)) from exc
    if _too_deep(value, max_depth):
        raise JSONError(f"nested too deeply (more than {max_depth} levels)")
    return value
