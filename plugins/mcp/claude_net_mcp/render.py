"""Plain-text forms of the hub's answers, sized for an agent's context, and the notes that say so.

Text that someone other than the hub wrote (a message, command output, a file, an audit detail) is
framed so that it cannot pass for the hub's words or for another sender's (see docs/mcp.md, "Text
is data"): a message body or an audit detail is one JSON string literal, which cannot end early or
start a line; bulk output sits between delimiter lines that carry a random tag chosen for this one
answer, after the output was produced, so the output cannot contain the closing line.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from claude_net import printable, quoted


def clip_middle(text: str, limit: int) -> tuple[str, int]:
    """``text`` cut to about ``limit`` characters, keeping its start and (the larger part) its end.

    Command output tends to say what went wrong at the end and what ran at the start. Returns the
    shown text and how many characters were left out (0: nothing).
    """
    if len(text) <= limit:
        return text, 0
    head = limit * 2 // 5
    tail = limit - head
    omitted = len(text) - head - tail
    marker = f"\n[... {omitted:,} characters omitted ...]\n"
    return text[:head] + marker + text[len(text) - tail:], omitted


def clip_head(text: str, limit: int) -> tuple[str, int]:
    """The first ``limit`` characters of ``text`` and how many were left out."""
    if len(text) <= limit:
        return text, 0
    return text[:limit], len(text) - limit


def plural(n: float, word: str, words: str | None = None) -> str:
    return f"{n:g} {word if n == 1 else (words or word + 's')}"


def shell_quote(text: str) -> str:
    if text and all(c.isalnum() or c in "-_./:=@%+," for c in text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"


def fence_tag() -> str:
    """A fresh tag for one answer's delimiters (48 random bits: not guessable by the text it fences)."""
    return secrets.token_hex(6)


def fenced(label: str, text: str, tag: str) -> list[str]:
    """``text`` between an opening line that names its closing line and that closing line."""
    end = f"--- end of {label} {tag} ---"
    return [f"--- {label} (verbatim, up to the line \"{end}\") ---", text, end]


def exec_text(target: str, command: str, result: Mapping[str, Any], notes: Sequence[str],
              tag: str | None = None) -> str:
    exit_code = result.get("exitCode")
    status = "exit code " + ("unknown" if exit_code is None else str(exit_code))
    lines = [f"$ {command}", f"[{target}: {status}, {result.get('durationMs', 0):g} ms]"]
    stdout, stderr = result.get("stdout", ""), result.get("stderr", "")
    tag = tag or fence_tag()
    if stdout:
        lines += fenced("stdout", stdout.rstrip("\n"), tag)
    if stderr:
        lines += fenced("stderr", stderr.rstrip("\n"), tag)
    if not stdout and not stderr:
        lines.append("(no output)")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def machines_text(me: str, machines: Sequence[Mapping[str, Any]], unavailable: Mapping[str, str]) -> str:
    if not machines:
        lines = ["No nodes are known to the hub yet."]
    else:
        lines = [f"{plural(len(machines), 'node')} (you are {me}):"]
        width = max(len(printable(m["name"])) for m in machines)
        for m in machines:
            caps = printable(", ".join(m.get("capabilities") or ())) or "messages only"
            seen = m.get("lastSeen")
            parts = [f"  {printable(m['name']):<{width}}  {printable(m.get('backend', '?')):<4} "
                     f"{printable(m.get('state', '?')):<11} {caps}"]
            if m.get("unread"):
                parts.append(f"{printable(m['unread'])} unread")
            if seen:
                parts.append(f"last seen {printable(seen)}")
            lines.append("  ".join(parts) + ("  <- you" if m["name"] == me else ""))
    for backend, reason in sorted(unavailable.items()):
        lines.append(f"backend {printable(backend)} is unavailable ({printable(reason)}); its nodes are missing "
                     "from this list")
    return "\n".join(lines)


def message_text(m: Mapping[str, Any]) -> str:
    """The hub's header line (id, the true sender, time, thread and reply), then the body as one JSON
    string literal."""
    flag = " (unauthenticated v1 sender)" if m.get("unauthenticated") else ""
    # the hub validated the thread (a short identifier) and reply_to (an integer); printable() all the same
    if m.get("thread"):
        flag += f" in thread {printable(m['thread'])}"
    if m.get("reply_to") is not None:
        flag += f", replying to #{printable(m['reply_to'])}"
    if m.get("pushed") is True:  # the channel pushed it into a session: it may be known already
        flag += " (already pushed as a channel event)"
    return (f"#{printable(m['id'])} from {printable(m['from'])} at {printable(m['time'])}{flag}:\n"
            f"{quoted(str(m.get('message', '')))}")


def rule_text(rule: Mapping[str, Any]) -> str:
    caps = rule.get("capabilities") or []
    what = ", ".join(caps) if caps else "explicit deny"
    extra = []
    if rule.get("granted_by"):
        extra.append(f"by {rule['granted_by']}")
    if rule.get("granted_at"):
        extra.append(str(rule["granted_at"]))
    if rule.get("expires_at"):
        extra.append(("expired " if rule.get("expired") else "until ") + str(rule["expires_at"]))
    return printable(f"{rule.get('source')} -> {rule.get('target')}: {what}"
                     + (f" ({', '.join(extra)})" if extra else ""))


def event_text(e: Mapping[str, Any]) -> str:
    """One line per row; the detail (what the actor wrote: a command, a path, a message) last, as a
    JSON string literal, so it can neither add fields nor lines."""
    detail = str(e.get("detail") or "")
    if len(detail) > 160:
        detail = detail[:159] + "…"
    via = e.get("via")
    thread = e.get("thread")
    return printable(f"{e.get('time')}  {e.get('from') or '-'}  {e.get('type')}  {e.get('target') or '-'}  "
                     f"{e.get('result')}" + (f"  via {via}" if via and via != "http" else "")
                     + (f"  thread {thread}" if thread else "")) \
        + (f"  {quoted(detail)}" if detail else "")
