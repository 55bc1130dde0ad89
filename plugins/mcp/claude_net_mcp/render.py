"""Plain-text forms of the hub's answers, sized for an agent's context, and the notes that say so."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


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


def exec_text(target: str, command: str, result: Mapping[str, Any], notes: Sequence[str]) -> str:
    exit_code = result.get("exitCode")
    status = "exit code " + ("unknown" if exit_code is None else str(exit_code))
    lines = [f"$ {command}", f"[{target}: {status}, {result.get('durationMs', 0):g} ms]"]
    stdout, stderr = result.get("stdout", ""), result.get("stderr", "")
    if stdout:
        lines += ["--- stdout ---", stdout.rstrip("\n")]
    if stderr:
        lines += ["--- stderr ---", stderr.rstrip("\n")]
    if not stdout and not stderr:
        lines.append("(no output)")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def machines_text(me: str, machines: Sequence[Mapping[str, Any]], unavailable: Mapping[str, str]) -> str:
    if not machines:
        lines = ["No nodes are known to the hub yet."]
    else:
        lines = [f"{plural(len(machines), 'node')} (you are {me}):"]
        width = max(len(m["name"]) for m in machines)
        for m in machines:
            caps = ", ".join(m.get("capabilities") or ()) or "messages only"
            seen = m.get("lastSeen")
            parts = [f"  {m['name']:<{width}}  {m.get('backend', '?'):<4} {m.get('state', '?'):<11} {caps}"]
            if m.get("unread"):
                parts.append(f"{m['unread']} unread")
            if seen:
                parts.append(f"last seen {seen}")
            lines.append("  ".join(parts) + ("  <- you" if m["name"] == me else ""))
    for backend, reason in sorted(unavailable.items()):
        lines.append(f"backend {backend} is unavailable ({reason}); its nodes are missing from this list")
    return "\n".join(lines)


def message_text(m: Mapping[str, Any]) -> str:
    flag = " (unauthenticated v1 sender)" if m.get("unauthenticated") else ""
    return f"#{m['id']} from {m['from']} at {m['time']}{flag}:\n{m['message']}"


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
    return f"{rule.get('source')} -> {rule.get('target')}: {what}" + (f" ({', '.join(extra)})" if extra else "")


def event_text(e: Mapping[str, Any]) -> str:
    detail = " ".join(str(e.get("detail") or "").split())
    if len(detail) > 160:
        detail = detail[:159] + "…"
    via = e.get("via")
    return (f"{e.get('time')}  {e.get('from') or '-'}  {e.get('type')}  {e.get('target') or '-'}  "
            f"{e.get('result')}" + (f"  via {via}" if via and via != "http" else "")
            + (f"  {detail}" if detail else ""))
