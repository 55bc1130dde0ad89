"""A small JSON Schema subset validator for request bodies and query strings.

Supported: ``type`` (object, string, integer, number, boolean, array, null; or a list),
``properties``, ``required``, ``additionalProperties: false``, ``minLength``, ``maxLength``,
``pattern``, ``enum``, ``minimum``, ``maximum``, ``items``, ``maxItems``, ``minItems``,
``maxProperties``, ``propertyNames``, ``allOf``; ``x-code`` names the error code of a string that fails its
length or pattern (default ``invalid_field``), ``x-pattern-help`` says what the pattern wants.
The same dicts are published in the OpenAPI document, so what is documented is what is enforced.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import itertools
import re
from collections import deque
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from .errors import BadRequest, PayloadTooLarge

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
    if "const" in schema and (value != schema["const"] or type(value) is not type(schema["const"])):
        # a schema that says const must not be a silent no-op (it was: any value passed)
        raise BadRequest(f"{_name(path)} must be {schema['const']!r}", code="invalid_field", field=path or None)
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


# -- accepted input: what text the hub takes, and how much JSON structure ------------------------
#
# The HTTP edge (claude_net.http) applies these to every request before a handler runs, so no later
# layer (database, Telegram, logs, renderers) meets text it cannot encode: PostgreSQL cannot store
# NUL in text, and a lone UTF-16 surrogate cannot be encoded as UTF-8 at all.

#: the published form of "no NUL in this string" (ECMA-262 and Python read ``\u0000`` alike)
NUL_FREE = r"^[^\u0000]*$"
#: schema keyword of a string field where NUL is content (a file's bytes), not text
ALLOW_NUL = "x-allow-nul"

_SURROGATE = re.compile("[\ud800-\udfff]")
#: a JSON escape that may decode to a lone surrogate or to NUL; a UTF-8 body without one cannot
#: yield either (raw surrogate bytes are not UTF-8, raw control bytes are not JSON)
_RISKY_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes
#: characters of a string searched per call, so a worker thread hands the GIL back in between
_SLICE = 1 << 20


class JsonShape:
    """The structure of a JSON text counted from its bytes as they arrive, before any parsing.

    Outside strings it counts nesting depth (``[`` and ``{``) and values (commas and containers),
    and refuses as soon as either passes its cap: 100,000 nested ``[`` never reach the recursive
    parser, and an object with millions of keys is refused after its first few kilobytes instead
    of seconds of parsing. Every step is a C-level bytes operation over the piece (replace, count,
    split, translate), so the cost per piece is small and linear, and the quotes (counted before
    the split) bound how many parts a split can make; nothing here recurses.

    Where the count and a real parser disagree the text is invalid JSON (a backslash outside a
    string, a stray bracket), and the parser stops at the first such byte, so what it parses up to
    there was counted right.
    """

    def __init__(self, max_depth: int, max_items: int) -> None:
        self.max_depth = max_depth
        self.max_items = max_items
        self.depth = 0
        self.items = 0
        self.quotes = 0
        #: a JSON escape that may decode to NUL or a lone surrogate was seen (see check_text)
        self.risky_escape = False
        self._in_string = False
        self._escape_pending = False  # the previous piece ended in the backslash of an escape
        self._tail = b""  # the last bytes of the previous piece, for escapes split between pieces

    def feed(self, data: bytes) -> None:
        if not data:
            return
        tail, self._tail = self._tail, (self._tail + data[-5:])[-5:]  # an escape is at most 6 bytes
        if b"\\" in data or b"\\" in tail:
            if not self.risky_escape:
                self.risky_escape = _RISKY_ESCAPE.search(tail + data) is not None
            if self._escape_pending:
                data = data[1:]
                self._escape_pending = False
            # Left to right, as a JSON parser reads escapes: pairs of backslashes first, then escaped
            # quotes; other escapes (\n, \u0041) hold no quote. Plain bytes operations, no regex.
            data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
            if data.endswith(b"\\"):  # an odd run of backslashes ends the piece: it escapes the next byte
                data = data[:-1]
                self._escape_pending = True
        quotes = data.count(b'"')
        if quotes:
            # Valid JSON has at most two strings (a name and a value) per value counted below, so the
            # quotes bound the values too; checked first, the split below only ever sees a bounded
            # number of them however the text is made.
            self.quotes += quotes
            if self.quotes > 4 * (self.max_items + 1):
                raise self._too_many()
            parts = data.split(b'"')
            outside = b"".join(parts[1::2] if self._in_string else parts[0::2])
            if len(parts) % 2 == 0:
                self._in_string = not self._in_string
        elif self._in_string:
            return
        else:
            outside = data
        opens = outside.count(b"[") + outside.count(b"{")
        closes = outside.count(b"]") + outside.count(b"}")
        if closes > self.depth + opens:
            raise BadRequest("the body is not valid JSON: a ']' or '}' closes nothing", code="invalid_json")
        if self.depth + opens > self.max_depth:  # (only then is the running depth worth computing)
            steps = memoryview(outside.translate(_BRACKET_STEP, _NOT_BRACKET)).cast("b")
            if max(itertools.accumulate(steps, initial=self.depth)) > self.max_depth:
                raise BadRequest(f"the JSON body is nested more than {self.max_depth} levels deep",
                                 code="too_deep", limit=self.max_depth)
        self.items += opens + outside.count(b",")
        if self.items > self.max_items:
            raise self._too_many()
        self.depth += opens - closes

    def _too_many(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the JSON body has more than {self.max_items} values; the limit is {self.max_items}",
                               code="too_many_items", limit=self.max_items)

    def feed_all(self, data: bytes, piece: int = 256 * 1024) -> None:
        """Feed a whole body in pieces (each a short C call: a worker thread lets the loop run between)."""
        for start in range(0, len(data), piece):
            self.feed(data[start:start + piece])


def text_problem(value: str, *, nul_allowed: bool = False) -> str | None:
    """Why ``value`` is not text the hub accepts (a lone surrogate, or NUL where not allowed), else None."""
    if not value.isascii():  # (constant time: CPython knows whether a string is ASCII)
        for start in range(0, len(value), _SLICE):
            found = _SURROGATE.search(value, start, start + _SLICE)
            if found:
                return (f"contains a lone UTF-16 surrogate (U+{ord(found.group()):04X} at character "
                        f"{found.start()}), which is not a character and cannot be stored")
    if not nul_allowed and "\x00" in value:
        return (f"contains a NUL character (U+0000 at character {value.index(chr(0))}), which the hub does not "
                "accept in text")
    return None


def storable(text: str) -> str:
    """``text`` safe to show, log and store: lone surrogates and NUL written as escapes."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def check_text(value: Any, schema: Mapping[str, Any] | None = None, path: str = "",
               *, what: str = "") -> BadRequest | None:
    """The first string in ``value`` (keys included, at any depth) that is not accepted text, as a
    400 ``invalid_text`` naming its dotted path; None when all of it is. Iterative: no depth limit
    of its own. NUL passes only in string fields whose schema says ``x-allow-nul``."""
    queue: deque[tuple[Any, Mapping[str, Any] | None, str]] = deque([(value, schema, path)])
    while queue:
        item, spec, where = queue.popleft()
        if isinstance(item, str):
            problem = text_problem(item, nul_allowed=bool(spec and spec.get(ALLOW_NUL)))
            if problem:
                return BadRequest(f"{what}{where or 'the request body'} {problem}", code="invalid_text",
                                  field=where or None)
        elif isinstance(item, dict):
            props = spec.get("properties", {}) if spec else {}
            extra = spec.get("additionalProperties") if spec else None
            for key, sub in item.items():
                key_path = _join(where, storable(key))
                problem = text_problem(key)
                if problem:
                    return BadRequest(f"{what}{key_path} (a name) {problem}", code="invalid_text",
                                      field=key_path)
                queue.append((sub, props.get(key) or (extra if isinstance(extra, dict) else None), key_path))
        elif isinstance(item, list):
            items = spec.get("items") if spec else None
            queue.extend((sub, items, f"{where}[{i}]") for i, sub in enumerate(item))
    return None


def published(schema: Any) -> Any:
    """``schema`` as the OpenAPI document states it: every string that may not hold NUL says so
    with a pattern (the edge refuses NUL outside ``x-allow-nul`` fields, and lone surrogates
    everywhere, which no pattern can express), and so do the names of open objects."""
    if isinstance(schema, list):
        return [published(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: (value if key in ("enum", "const", "pattern") else published(value)) for key, value in schema.items()}
    kinds = out.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "string" in kinds and not out.get(ALLOW_NUL) and "enum" not in out and "const" not in out \
            and not _excludes_nul(out):
        if "pattern" not in out:
            out["pattern"] = NUL_FREE
        else:
            out["allOf"] = [*out.get("allOf", ()), {"pattern": NUL_FREE}]
    if "object" in kinds and out.get("additionalProperties", True) is not False and "propertyNames" not in out:
        out["propertyNames"] = {"pattern": NUL_FREE}
    return out


def _excludes_nul(schema: Mapping[str, Any]) -> bool:
    patterns = [schema.get("pattern", "")] + [s.get("pattern", "") for s in schema.get("allOf", ())]
    return any("\\u0000" in p or p == NUL_FREE for p in patterns)


def decode_utf8(pieces: list[bytes]) -> str:
    """The pieces of a body (UTF-8, an optional BOM) as one text, decoded in slices without joining
    the bytes first: in a worker thread the event loop gets the GIL back between slices instead of
    waiting out one long call. Raises ValueError naming the byte where the body stops being UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    parts = []
    offset = 0
    for piece in pieces:
        view = memoryview(piece)
        for start in range(0, len(piece), _SLICE):
            try:
                parts.append(decoder.decode(view[start:start + _SLICE]))
            except UnicodeDecodeError as exc:
                raise ValueError(f"the body is not valid UTF-8 (near byte {offset + start + exc.start})") from None
        offset += len(piece)
    try:
        parts.append(decoder.decode(b"", True))
    except UnicodeDecodeError:
        raise ValueError("the body is not valid UTF-8 (it ends inside a character)") from None
    return parts[0] if len(parts) == 1 else "".join(parts)


async def decode_base64(text: str) -> bytes:
    """Strict base64 (as ``base64.b64decode(text, validate=True)``), off the event loop when large: a
    worker thread decodes slices, so the loop gets the GIL back between them (one call over a 64 MiB
    upload held it for ~0.4 s). Raises ``binascii.Error`` or ``ValueError`` for invalid input."""
    if len(text) <= _SLICE:
        return base64.b64decode(text, validate=True)

    def run() -> bytes:
        if len(text) % 4 or text.find("=", 0, len(text) - 2) != -1:  # padding only at the very end
            raise binascii.Error("invalid base64 length or padding")
        return b"".join(base64.b64decode(text[i:i + _SLICE], validate=True) for i in range(0, len(text), _SLICE))

    return await asyncio.to_thread(run)


#: an approval's id as the approvals plugin makes them (lowercase letters and digits)
APPROVAL_ID_PATTERN = r"^[a-z0-9]{4,40}$"
#: longest ``approval_wait`` a request may give; the hub clamps it to ``[approvals] wait_max``
APPROVAL_WAIT_LIMIT = 3600
#: the fields exec and the file calls accept for actions under an ``ask`` grant (docs/approvals.md)
APPROVAL_PROPS: dict[str, Any] = {
    "approval": {"type": "string", "pattern": APPROVAL_ID_PATTERN,
                 "x-pattern-help": "be an approval id as the hub gave it (lowercase letters and digits)"},
    "approval_wait": {"type": "number", "minimum": 0, "maximum": APPROVAL_WAIT_LIMIT},
}
