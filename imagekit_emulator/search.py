"""``searchQuery`` of the list-and-search API: ImageKit's Lucene-like filter language, the
part the emulator supports.

``field op value`` terms joined with ``AND``/``OR`` and grouped with parentheses. Operators:
``=`` (exact), ``:`` (begins with; for ``path``: within the folder or its subfolders),
``IN [..]``, ``NOT =``, ``NOT IN [..]``, ``<``, ``<=``, ``>``, ``>=``, ``EXISTS``,
``NOT EXISTS``. Values: "double-quoted strings", numbers, true/false, [lists]. Dates
(``createdAt``, ``updatedAt``) take ISO 8601 or a relative "7d" / "12h" / "30m" meaning that
long ago. Fields: name, path, tags, type, fileType, format, size, width, height, createdAt,
updatedAt, private, published, transparency and "customMetadata.<key>".
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

Item = dict[str, Any]
Predicate = Callable[[Item], bool]


class SearchQueryError(ValueError):
    pass


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<op><=|>=|=|:|<|>)
      | (?P<punct>[()\[\],])
      | (?P<word>[A-Za-z_][A-Za-z0-9_.\-]*)
      | (?P<number>-?\d+(?:\.\d+)?)
    )""",
    re.VERBOSE,
)
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdwMy])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise SearchQueryError(f"unexpected text at {text[pos : pos + 20]!r}")
        pos = match.end()
        kind = match.lastgroup
        value = match.group(kind)  # type: ignore[arg-type]
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        elif kind == "number":
            value = float(value)
        out.append((kind, value))  # type: ignore[arg-type]
    return out


def _date_ms(value: Any) -> float:
    if isinstance(value, float):
        return value
    text = str(value).strip()
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return (time.time() - float(relative.group(1)) * _UNITS[relative.group(2)]) * 1000
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000
    except ValueError:
        raise SearchQueryError(f"invalid date {value!r}") from None


def _compare(op: str, have: Any, want: Any, field: str) -> bool:
    if have is None:
        return False
    if isinstance(have, list):  # tags: any of them
        return any(_compare(op, h, want, field) for h in have)
    if field in ("createdAt", "updatedAt"):
        want = _date_ms(want)
    if op == "=":
        if isinstance(have, bool) or isinstance(want, bool):
            return have == want
        if isinstance(have, int | float) and isinstance(want, int | float):
            return float(have) == float(want)
        return str(have) == str(want)
    if op == ":":
        if field == "path":
            folder = str(want).rstrip("/")
            return str(have) == folder or str(have).startswith(folder + "/")
        return str(have).lower().startswith(str(want).lower())
    try:
        a, b = float(have), float(want)
    except (TypeError, ValueError):
        a, b = str(have), str(want)  # type: ignore[assignment]
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]  # type: ignore[operator]


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, Any]:
        token = self.peek()
        if token is None:
            raise SearchQueryError("the query ends too early")
        self.pos += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token and token[0] == "word" and str(token[1]).upper() == word:
            self.pos += 1
            return True
        return False

    def parse(self) -> Predicate:
        predicate = self.disjunction()
        if self.peek() is not None:
            raise SearchQueryError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return predicate

    def disjunction(self) -> Predicate:
        parts = [self.conjunction()]
        while self.keyword("OR"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else (lambda item: any(p(item) for p in parts))

    def conjunction(self) -> Predicate:
        parts = [self.term()]
        while self.keyword("AND"):
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else (lambda item: all(p(item) for p in parts))

    def term(self) -> Predicate:
        token = self.peek()
        if token == ("punct", "("):
            self.take()
            inner = self.disjunction()
            if self.take() != ("punct", ")"):
                raise SearchQueryError("missing )")
            return inner
        kind, field = self.take()
        if kind not in ("word", "string"):
            raise SearchQueryError(f"expected a field name, not {field!r}")
        negate = self.keyword("NOT")
        if self.keyword("EXISTS"):
            return lambda item: (item.get(field) not in (None, [], "")) != negate
        if self.keyword("IN"):
            values = self.values()
            return lambda item: (
                any(_compare("=", item.get(field), v, field) for v in values) != (negate)
            )
        kind, op = self.take()
        if kind != "op" or (negate and op != "="):
            raise SearchQueryError(f"expected an operator after {field!r}")
        value = self.value()
        return lambda item: _compare(op, item.get(field), value, field) != negate

    def value(self) -> Any:
        kind, value = self.take()
        if kind in ("string", "number"):
            return value
        if kind == "word" and str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise SearchQueryError(f"expected a value, not {value!r}")

    def values(self) -> list[Any]:
        if self.take() != ("punct", "["):
            raise SearchQueryError("IN needs a [list]")
        values = [self.value()]
        while self.peek() == ("punct", ","):
            self.take()
            values.append(self.value())
        if self.take() != ("punct", "]"):
            raise SearchQueryError("missing ]")
        return values


def compile_query(text: str) -> Predicate:
    """A predicate over search items (see ``api_files.search_item``); SearchQueryError when
    the query is not understood."""
    return _Parser(text).parse()


__all__ = ["SearchQueryError", "compile_query"]
