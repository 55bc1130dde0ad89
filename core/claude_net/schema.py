"""A small JSON Schema subset validator for request bodies and query strings.

Supported: ``type`` (object, string, integer, number, boolean, array, null; or a list),
``properties``, ``required``, ``additionalProperties: false``, ``minLength``, ``maxLength``,
``pattern``, ``enum``, ``minimum``, ``maximum``, ``items``, ``maxItems``, ``minItems``,
``maxProperties``, ``propertyNames``, ``allOf``; ``x-code`` names the error code of a string that fails its
length or pattern (default ``invalid_field``), ``x-pattern-help`` says what the pattern wants.
The same dicts are published in the OpenAPI document, so what is documented is what is enforced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from .errors import BadRequest

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


@lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    r"""Compile a JSON Schema ``pattern`` (ECMA-262 semantics).

    In ECMA-262 ``$`` matches only at the end of the string; in Python it also matches before a
    trailing newline, so ``"box1\n"`` would pass ``^[a-z0-9-]+$``. ``$`` outside a character
    class therefore becomes ``\Z``.
    """
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = r"\Z"
        out.append(char)
        i += 1
    return re.compile("".join(out))


def _name(path: str) -> str:
    return path or "the request body"


def validate(value: Any, schema: Mapping[str, Any], path: str = "") -> Any:
    """Raise :class:`BadRequest` naming the first offending field; return ``value``."""
    expected = schema.get("type")
    if expected is not None:
        kinds = expected if isinstance(expected, list) else [expected]
        if not any(_TYPES[k](value) for k in kinds):
            raise BadRequest(f"{_name(path)} must be {' or '.join(_article(k) for k in kinds)}", code="invalid_field",
                             field=path or None)
    if "enum" in schema and value not in schema["enum"]:
        choices = ", ".join(repr(c) for c in schema["enum"])
        raise BadRequest(f"{_name(path)} must be one of {choices}", code="invalid_field", field=path or None)
    if isinstance(value, str):
        code = schema.get("x-code", "invalid_field")  # e.g. invalid_path for the path schema
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise BadRequest(f"{_name(path)} must not be empty" if schema["minLength"] == 1
                             else f"{_name(path)} must be at least {schema['minLength']} characters",
                             code=code, field=path or None)
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise BadRequest(f"{_name(path)} must be at most {schema['maxLength']} characters",
                             code=code, field=path or None)
        if "pattern" in schema and not _regex(schema["pattern"]).search(value):
            hint = schema.get("x-pattern-help") or f"match {schema['pattern']}"
            raise BadRequest(f"{_name(path)} {value[:80]!r} is not valid: it must {hint}",
                             code=code, field=path or None)
    for sub in schema.get("allOf", ()):  # each part may carry its own x-code and x-pattern-help
        validate(value, sub, path)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise BadRequest(f"{_name(path)} must be at least {schema['minimum']}", code="invalid_field",
                             field=path or None)
        if "maximum" in schema and value > schema["maximum"]:
            raise BadRequest(f"{_name(path)} must be at most {schema['maximum']}", code="invalid_field",
                             field=path or None)
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise BadRequest(f"{_name(path)} must have at most {schema['maxItems']} items", code="invalid_field",
                             field=path or None)
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise BadRequest(f"{_name(path)} must have at least {schema['minItems']} items", code="invalid_field",
                             field=path or None)
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in value:
                raise BadRequest(f"{_join(path, key)} is required", code="missing_field", field=_join(path, key))
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            raise BadRequest(f"{_name(path)} must have at most {schema['maxProperties']} entries",
                             code="invalid_field", field=path or None)
        if "propertyNames" in schema:
            for key in value:
                validate(key, {"type": "string", **schema["propertyNames"]}, _join(path, "<name>"))
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                validate(item, props[key], _join(path, key))
            elif extra is False:
                allowed = ", ".join(sorted(props)) or "none"
                raise BadRequest(f"unknown field {_join(path, key)!r} (allowed: {allowed})", code="unknown_field",
                                 field=_join(path, key))
            elif isinstance(extra, dict):
                validate(item, extra, _join(path, key))
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _article(kind: str) -> str:
    return {"object": "an object", "array": "an array", "integer": "an integer", "null": "null"}.get(kind, f"a {kind}")


def coerce_query(args: Mapping[str, str], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Turn query-string values into the types ``schema`` declares, then validate."""
    props = schema.get("properties", {})
    out: dict[str, Any] = {}
    for key, raw in args.items():
        spec = props.get(key)
        if spec is None:
            if schema.get("additionalProperties", True) is False:
                allowed = ", ".join(sorted(props)) or "none"
                raise BadRequest(f"unknown query parameter {key!r} (allowed: {allowed})", code="unknown_field",
                                 field=key)
            out[key] = raw
            continue
        kind = spec.get("type")
        try:
            if kind == "integer":
                out[key] = int(raw)
            elif kind == "number":
                out[key] = float(raw)
                if out[key] != out[key] or out[key] in (float("inf"), float("-inf")):
                    raise ValueError
            elif kind == "boolean":
                lowered = raw.lower()
                # an empty value is not "true": `?ack=` from a broken client must not mark messages read
                if lowered not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError
                out[key] = lowered in ("1", "true", "yes")
            else:
                out[key] = raw
        except ValueError:
            raise BadRequest(f"query parameter {key} must be {_article(kind)}, got {raw[:40]!r}",
                             code="invalid_field", field=key) from None
    validate(out, {**schema, "type": "object"}, "")
    return out
