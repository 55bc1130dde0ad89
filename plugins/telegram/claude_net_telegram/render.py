"""Telegram HTML for echoes and replies. Pure functions, no I/O, no telegram import.

Everything that comes from agents, nodes or users (commands, output, paths, names, error texts)
goes through :func:`esc`: HTML-escaped (so ``<b>`` or ``</pre>`` in a command is shown, never
interpreted) and stripped of control and bidirectional-override characters (so it cannot
re-order a line to look like something the bot said). Agent text is always inside ``<code>`` or
``<pre>``, visually apart from the bot's own words.

Every function here accepts any ``str``, lone UTF-16 surrogates included (``"\\ud800"`` is a valid
Python string that no encoder takes): :func:`clean` replaces them, :func:`utf16_len` counts them,
and :func:`safe` makes a whole message encodable. One odd character must never stop the bot.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Telegram's limit for one message, in UTF-16 code units of the text after entity parsing.
#: We measure the HTML source, which is never shorter, and keep a margin.
MESSAGE_LIMIT = 4096
BUDGET = 3900
#: one echo never exceeds this (so a batch always has room for at least one)
MAX_ITEM = 3000
COMMAND_CHARS = 200
ERROR_CHARS = 300

#: C0/C1 controls except tab and newline, bidi embeddings/overrides/isolates, zero-width joiners
#: ... and lone surrogates (no encoder accepts them; the Bot API could not receive them)
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff"
                     "\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean(text: Any) -> str:
    return _UNSAFE.sub("\N{REPLACEMENT CHARACTER}", str(text))


def safe(text: Any) -> str:
    """A whole message made encodable: lone surrogates become U+FFFD (markup untouched)."""
    text = str(text)
    return _SURROGATE.sub("\N{REPLACEMENT CHARACTER}", text) if _SURROGATE.search(text) else text


def esc(text: Any) -> str:
    """Untrusted text made inert for ``parse_mode=HTML``, on one line: a newline shows as ``↵``,
    so a command, path or error cannot start a line that looks like the bot's own."""
    return html.escape(clean(text), quote=False).replace("\n", "↵")


def esc_block(text: Any) -> str:
    """Like :func:`esc`, keeping newlines: for output shown inside ``<pre>`` (a block apart)."""
    return html.escape(clean(text), quote=False)


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters; a cut is marked with an ellipsis and the number dropped."""
    text = text if isinstance(text, str) else str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… (+{len(text) - limit} chars)"


def utf16_len(text: str) -> int:
    # surrogatepass: a lone surrogate is one code unit, as it would be in UTF-16
    return len(str(text).encode("utf-16-le", "surrogatepass")) // 2


ICONS = {"ok": "✅", "error": "❗", "denied": "⛔", "pending": "⏳"}


def _who(event) -> str:
    who = esc(event.actor or "unknown")
    if event.unauthenticated:
        who += " (unauthenticated)"
    if event.via not in ("http", "", None):
        who += f" via {esc(event.via)}"
    return who


def _arrow(event) -> str:
    return f"{_who(event)} → {esc(event.target or '?')}"


def _output(event, limit: int) -> str:
    """The start of an exec's output in a ``<pre>`` block, and how much there was when cut."""
    out = str(event.transient.get("stdout") or "").rstrip("\n")
    err = str(event.transient.get("stderr") or "").rstrip("\n")
    if err:
        out = f"{out}\n[stderr]\n{err}" if out else f"[stderr]\n{err}"
    if not out:
        return ""
    limit = max(0, limit)
    total = event.transient.get("output_bytes")
    capped = bool(event.data.get("truncated"))
    if len(out) <= limit and not capped:
        return f"<pre>{esc_block(out)}</pre>"
    size = f"{total} bytes of output" if isinstance(total, int) else "output cut"
    if capped:
        size += ", capped by the hub"
    return f"<pre>{esc_block(out[:limit])}…</pre>\n({size})"


def format_event(event, *, output_chars: int = 300) -> tuple[str, bool]:
    """``(html, loud)`` for one final event; ``loud`` is False for routine successes."""
    data: Mapping[str, Any] = event.data or {}
    result = event.result
    icon = ICONS.get(result, "•")
    error = f": {esc(clip(str(data.get('error', '')), ERROR_CHARS))}" if result == "error" else ""
    loud = result != "ok"
    kind = event.type
    if kind == "exec":
        command = f"<code>$ {esc(clip(event.detail or '', COMMAND_CHARS))}</code>"
        if result == "ok":
            code = data.get("exit_code")
            loud = code != 0
            icon = "✅" if code == 0 else "❌"
            took = f" · {data['duration_ms']:.0f} ms" if isinstance(data.get("duration_ms"), (int, float)) else ""
            head = f"{icon} <b>exec</b> {_arrow(event)} · exit {esc(code)}{took}"
            text = f"{head}\n{command}"
            output = _output(event, min(output_chars, MAX_ITEM // 2))
            if output:
                text += f"\n{output}"
            if utf16_len(text) > MAX_ITEM:
                text = f"{head}\n{command}\n(output too long to show)"
            return text, loud
        verb = "denied" if result == "denied" else "failed"
        return f"{icon} <b>exec {verb}</b> {_arrow(event)}{error}\n{command}", loud
    if kind in ("file_write", "file_read"):
        size = f" · {data['bytes']} bytes" if isinstance(data.get("bytes"), int) else ""
        verb = {"ok": "", "denied": " denied", "error": " failed"}.get(result, "")
        return (f"{icon} <b>{kind}{verb}</b> {_arrow(event)}{size}{error}\n"
                f"<code>{esc(clip(event.detail or '', COMMAND_CHARS))}</code>"), loud
    if kind == "container":
        verb = {"ok": "", "denied": " denied", "error": " failed"}.get(result, "")
        return (f"{icon} <b>container{verb}</b> <code>{esc(clip(event.detail or '', COMMAND_CHARS))}</code> "
                f"by {_who(event)}{error}"), loud
    if kind == "permit":  # detail: "permit a -> b: exec, ..." / "revoke a -> *: remove every rule of a"
        action, _, rest = (event.detail or "permit").partition(" ")
        verb = {"ok": "", "denied": " denied", "error": " failed"}.get(result, "")
        return (f"🔑 <b>{esc(action)}{verb}</b> by {_who(event)}: "
                f"{esc(clip(rest.replace(' -> ', ' → '), COMMAND_CHARS))}{error}"), loud
    if kind == "hub":  # the hub's own trouble; the text may quote an agent's (an error message)
        return f"{icon} <b>hub</b>: <code>{esc(clip(event.detail or '', 600))}</code>", result != "ok"
    if kind == "telegram" and result == "denied":
        reason = esc(data.get("reason_text") or data.get("reason") or "refused")
        what = "button press" if data.get("update") == "callback_query" else "command"
        return (f"⛔ <b>Telegram {what} refused</b>: {reason} "
                f"(user {esc(data.get('user_id', '?'))}, chat {esc(data.get('chat_id', '?'))})\n"
                f"<code>{esc(clip(event.detail or '', COMMAND_CHARS))}</code>"), True
    target = f" → {esc(event.target)}" if event.target else ""
    detail = f": <code>{esc(clip(event.detail, COMMAND_CHARS))}</code>" if event.detail else ""
    return f"{icon} <b>{esc(kind)}</b> {_who(event)}{target}{detail}{error}", loud


# -- replies ------------------------------------------------------------------------------------


def pre_messages(title: str, lines: Sequence[str], footer: str = "") -> list[str]:
    """``title`` (HTML) then ``lines`` (plain text) in a ``<pre>`` block, split into as many
    messages as Telegram's length limit needs; ``footer`` (HTML) ends the last one."""
    messages: list[str] = []
    current: list[str] = []
    size = utf16_len(title) + 11

    def flush() -> None:
        head = title if not messages else f"{title} (continued)"
        messages.append(f"{head}\n<pre>{chr(10).join(current)}</pre>")

    for raw in lines:
        line = esc(clip(raw, 500))
        cost = utf16_len(line) + 1
        if current and size + cost > BUDGET - utf16_len(footer):
            flush()
            current, size = [], utf16_len(title) + 25
        current.append(line)
        size += cost
    if current or not messages:
        flush()
    if footer:
        messages[-1] += f"\n{footer}"
    return messages


def join_batch(items: Iterable[str]) -> str:
    return "\n\n".join(items)
