"""A small JSON Schema checker for the keywords ImageKit's OpenAPI spec uses in the schemas
the emulator ships (``spec_schemas``): type, const, enum, required, properties,
additionalProperties, items, min/maxItems, min/maxLength, minimum/maximum, anyOf, oneOf,
``$ref`` to ``#/components/schemas/...`` and OpenAPI's ``discriminator`` (used to report the
error of the branch a value names instead of "matches none of the alternatives").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .spec_schemas import REF_PREFIX, SCHEMAS

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class SchemaProblem:
    path: Path
    message: str

    def where(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out or "(the value)"

    def __str__(self) -> str:
        return f"{self.where()} {self.message}"


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return True


def _resolve(schema: Mapping[str, Any], definitions: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith(REF_PREFIX):
            raise ValueError(f"unsupported $ref {ref!r}")
        schema = definitions[ref[len(REF_PREFIX) :]]
    return schema


def _named(value: Any, prop: str, branch: Mapping[str, Any], defs: Mapping[str, Any]) -> bool:
    """Whether ``branch`` is the alternative the discriminator property of ``value`` names."""
    spec = _resolve(branch, defs).get("properties", {}).get(prop, {})
    wanted = value.get(prop)
    if "const" in spec:
        return wanted == spec["const"]
    if "enum" in spec:
        return wanted in spec["enum"]
    return False


def check(
    value: Any,
    schema: Mapping[str, Any],
    path: Path = (),
    definitions: Mapping[str, Any] = SCHEMAS,
) -> list[SchemaProblem]:
    """Every problem of ``value`` against ``schema`` (empty when it conforms)."""
    schema = _resolve(schema, definitions)
    problems: list[SchemaProblem] = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_type_ok(value, k) for k in kinds):
            article = "an" if kinds[0][0] in "aeiou" else "a"
            return [SchemaProblem(path, f"must be {article} {' or '.join(kinds)}")]
    if "const" in schema and value != schema["const"]:
        problems.append(SchemaProblem(path, f"must be {schema['const']!r}"))
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) for v in schema["enum"])
        problems.append(SchemaProblem(path, f"must be one of {allowed}"))
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(SchemaProblem(path, f"must be at least {schema['minLength']} long"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(SchemaProblem(path, f"must be at most {schema['maxLength']} long"))
    if _type_ok(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(SchemaProblem(path, f"must be >= {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(SchemaProblem(path, f"must be <= {schema['maximum']}"))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            problems.append(SchemaProblem(path, f"must have at least {schema['minItems']} items"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(SchemaProblem(path, f"must have at most {schema['maxItems']} items"))
        if "items" in schema:
            for index, item in enumerate(value):
                problems += check(item, schema["items"], (*path, index), definitions)
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                problems.append(SchemaProblem((*path, name), "is required"))
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                problems += check(item, properties[name], (*path, name), definitions)
            elif extra is False:
                problems.append(SchemaProblem((*path, name), "is not allowed"))
            elif isinstance(extra, Mapping):
                problems += check(item, extra, (*path, name), definitions)
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema:
            problems += _alternatives(value, schema, keyword, path, definitions)
    return problems


def _alternatives(
    value: Any, schema: Mapping[str, Any], keyword: str, path: Path, defs: Mapping[str, Any]
) -> list[SchemaProblem]:
    branches = list(schema[keyword])
    prop = (schema.get("discriminator") or {}).get("propertyName")
    if prop and isinstance(value, dict):
        if not isinstance(value.get(prop), str):
            return [SchemaProblem((*path, prop), "is required and must be a string")]
        named = [b for b in branches if _named(value, prop, b, defs)]
        if not named:
            known = []
            for branch in branches:
                spec = _resolve(branch, defs).get("properties", {}).get(prop, {})
                known += [spec["const"]] if "const" in spec else list(spec.get("enum", ()))
            return [
                SchemaProblem(
                    (*path, prop),
                    f"{value[prop]!r} is not one of {', '.join(repr(k) for k in known)}",
                )
            ]
        branches = named
    results = [check(value, branch, path, defs) for branch in branches]
    matching = sum(1 for r in results if not r)
    if keyword == "anyOf" and matching:
        return []
    if keyword == "oneOf" and matching == 1:
        return []
    if keyword == "oneOf" and matching > 1:
        return [SchemaProblem(path, "matches more than one alternative")]
    if len(branches) == 1:
        return results[0]
    return [SchemaProblem(path, "matches none of the allowed alternatives")]


__all__ = ["SchemaProblem", "check"]
