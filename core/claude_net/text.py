"""Text written by agents, shown to people and models as data.

Anything an agent wrote (a message, a command, a path, command output) may try to pass for the
hub's own words: a newline that starts a fake table row or log line, a carriage return that
overwrites what is already on the line, an ESC or C1 sequence that moves the cursor or recolours
the terminal, a Unicode bidi override that shows ``txt.exe`` as ``exe.txt``. These helpers make
such characters visible instead of letting them act:

* :func:`printable` for one cell of a table or one value in a log line: every control character
  becomes a visible escape (``\\n``, ``\\x1b``, ``\\u202e``), so the value stays on its line;
  :func:`printable_block` for command output shown as lines (newlines and tabs kept).
* :func:`safe_json` / :func:`quoted` for JSON and for text a model reads: standard JSON (C0
  controls, quotes and backslashes escaped by ``json``), with the characters ``json`` leaves raw
  that a terminal or a line splitter would still act on (DEL, C1, bidi controls, U+2028/U+2029)
  written as ``\\uXXXX`` too. The result is still valid JSON that decodes to the same value.
* :class:`EscapingFormatter`, the log formatter ``claude-net serve`` installs.

Backslashes are not doubled by :func:`printable`: a value that contains a literal backslash-n
reads the same as one with a newline, which cannot fake a row or move the cursor (the JSON forms
are unambiguous where that matters).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

#: C0 controls (tab, newline and CR included), DEL, C1 controls, the bidi embeddings, overrides and
#: isolates (U+202A-U+202E, U+2066-U+2069), the implicit direction marks (U+200E, U+200F, U+061C)
#: and the Unicode line and paragraph separators (U+2028, U+2029)
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
#: what JSON leaves raw of the above (it escapes C0 itself)
_UNSAFE_AFTER_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: Any) -> str:
    """``value`` as text that stays on its line and cannot drive a terminal (``None`` -> ``""``)."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return UNSAFE.sub(_escape, text)


#: :data:`UNSAFE` but for the newline and the tab, which a block of output keeps
_UNSAFE_IN_BLOCK = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable_block(value: Any) -> str:
    """Like :func:`printable`, for many lines (command output): newlines and tabs stay as they are,
    every other control character (CR, ESC, bidi controls, ...) becomes a visible escape."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return _UNSAFE_IN_BLOCK.sub(_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def safe_json(value: Any, **kwargs: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, **kwargs)`` with no character left that a terminal or
    a line-based reader would act on. Decodes to the same value."""
    return _UNSAFE_AFTER_JSON.sub(_json_escape, json.dumps(value, ensure_ascii=False, **kwargs))


def quoted(text: str) -> str:
    """``text`` as one JSON string literal on one line: ``"a\\nb \\"c\\""``. Whatever it contains, it
    cannot end the literal or start a new line, so a reader always knows where it stops."""
    return safe_json(text)


# ---------------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------------

_TRACEBACK_FIXED = (
    "Traceback (most recent call last):\n",
    "\nThe above exception was the direct cause of the following exception:\n\n",
    "\nDuring handling of the above exception, another exception occurred:\n\n",
)


class EscapingFormatter(logging.Formatter):
    """A log formatter under which no logged value can start a line of its own.

    The message (the format string with its arguments, or text a library built with an f-string)
    is passed through :func:`printable`, so a file path or command with a newline, CR or ESC in it
    stays inside its record. A traceback keeps its lines: the hub's source lines are its own, and
    only the exception messages in it (which may quote what an agent sent) are escaped.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = printable(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message

    def formatException(self, ei: Any) -> str:
        import traceback  # only when there is one: `import claude_net` stays light

        _, value, tb = ei
        if value is None:
            return super().formatException(ei)
        parts = []
        for chunk in traceback.TracebackException(type(value), value, tb, compact=True).format():
            if chunk in _TRACEBACK_FIXED or chunk.startswith(("  File ", "  [Previous line repeated")):
                parts.append(chunk)  # the hub's code, and the fixed words between chained exceptions
            else:  # "ValueError: <message>", or a note: may carry anything
                parts.append(printable(chunk.rstrip("\n")) + "\n")
        return "".join(parts).rstrip("\n")

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_text:
            # formatted earlier (by another handler, or a filter that redacted it): its line breaks
            # can no longer be told apart, but nothing else in it acts on the terminal
            record.exc_text = "\n".join(printable(line) for line in record.exc_text.split("\n"))
        return super().format(record)


def escape_log_output(logger: logging.Logger | None = None) -> None:
    """Put :class:`EscapingFormatter` on every handler of ``logger`` (the root logger by default),
    keeping each handler's format string. Loggers that propagate to it (the hub's, the plugins',
    Hypercorn's when it is given the ``hypercorn.error`` logger) are covered."""
    for handler in (logger or logging.getLogger()).handlers:
        current = handler.formatter
        if isinstance(current, EscapingFormatter):
            continue
        fmt = current._fmt if current is not None else None  # noqa: SLF001 - the format it already has
        datefmt = current.datefmt if current is not None else None
        handler.setFormatter(EscapingFormatter(fmt, datefmt))
