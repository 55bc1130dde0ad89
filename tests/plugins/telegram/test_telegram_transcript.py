"""A whole admin session, as the admin chat shows it. The transcript in docs/telegram.md is the
output of this test (run with ``CLAUDE_NET_TELEGRAM_TRANSCRIPT=FILE`` to write it, or ``-s`` to
print it): the real plugin and python-telegram-bot against the local Bot API server, with the
TestBox backend standing in for the LXD containers of the original deployment."""

from __future__ import annotations

import os

from tg_helpers import ADMIN_ID, CHAT_ID, OTHER_ID, eventually

NODES = {"seanclaude": "running", "jazclaude": "running", "managerclaude": "running"}


def publish(lines: list[str], variable: str) -> str:
    """The transcript as one text: printed (seen with ``-s``) and, when the environment variable
    ``variable`` names a file, written there (how docs/telegram.md gets it)."""
    transcript = "\n".join(lines)
    print(transcript)
    target = os.environ.get(variable)
    if target:
        with open(target, "w") as out:
            out.write(transcript + "\n")
    return transcript


async def test_admin_session_transcript(tg_hub, box):
    box.states = dict(NODES)
    lines: list[str] = []
    shown = 0

    async def settle(h):
        nonlocal shown
        await eventually(lambda: h.rt.outbox.pending() == 0)
        for message in h.api.sent[shown:]:
            tag = "reply" if message["reply_to"] is not None else "echo"
            silent = ", silent" if message.get("disable_notification") else ""
            lines.append(f"[bot {tag}{silent}]")
            lines.extend("    " + line for line in message["plain"].splitlines())
        shown = len(h.api.sent)

    async def say(h, text, user_id=ADMIN_ID, who="chas"):
        await settle(h)
        lines.append(f"[{who} ({user_id})] {text}")
        message = h.api.send_text(text, user_id=user_id, chat_id=CHAT_ID, username=who)
        await h.api.reply_to(message)
        await settle(h)

    async def agent_exec(h, token, name, target, command):
        await settle(h)
        status, _ = await h.call("POST", "/api/exec", token, {"target": target, "command": command})
        lines.append(f"(hub: {name} runs `{command}` on {target} over the HTTP API -> {status})")
        await eventually(lambda: len(h.api.sent) > shown)
        raw = h.api.sent[-1]["text"]
        await settle(h)
        if "<" in command:  # show what went over the wire: the agent's markup arrives escaped
            lines.append("(the HTML the bot sent for that echo:)")
            lines.extend("    " + line for line in raw.splitlines())

    async with tg_hub() as h:
        manager = await h.token("managerclaude")
        jaz = await h.token("jazclaude")
        await say(h, "@chasclaude status")
        await say(h, "@chasclaude permit managerclaude all")
        await agent_exec(h, manager, "managerclaude", "seanclaude", "git -C /srv/app status --short")
        await agent_exec(h, jaz, "jazclaude", "seanclaude", "cat /etc/hostname")
        await say(h, "@chasclaude permit jazclaude seanclaude")
        await agent_exec(h, jaz, "jazclaude", "seanclaude", "echo '<b>fake</b> </pre> bot message'")
        await say(h, "@chasclaude permissions")
        await say(h, "@chasclaude snapshot seanclaude")
        await say(h, "/restore seanclaude 2026-01-01")
        await say(h, "@chasclaude stop seanclaude", user_id=OTHER_ID, who="chas_")
        await say(h, "@chasclaude revoke managerclaude all")
        await say(h, "@chasclaude activity 1")

    transcript = publish(lines, "CLAUDE_NET_TELEGRAM_TRANSCRIPT")
    assert "⛔ not run: Telegram user 222222222 is not allowed" in transcript
    assert "📸 snapshot 2026-01-01 of seanclaude taken" in transcript
    assert "⛔ exec denied jazclaude → seanclaude" in transcript


def render_step(kind: str, record: dict, who: dict[int, str]) -> list[str]:
    """One step of the stand-in's transcript (what the admin chat shows), as text."""
    def buttons(markup):
        return ["    " + "  ".join(f"[{text}]" for text, _ in row) for row in markup]

    if kind == "send":
        tag = "reply" if record["reply_to"] is not None else "message"
        silent = ", silent" if record.get("disable_notification") else ""
        return ([f"[bot {tag} #{record['message_id']}{silent}]"]
                + ["    " + line for line in record["plain"].splitlines()] + buttons(record["markup"]))
    if kind == "edit":
        lines = [f"[bot edits #{record['message_id']}]"]
        if "plain" in record:
            lines += ["    " + line for line in record["plain"].splitlines()]
        return lines + (buttons(record["markup"]) or ["    (no buttons)"])
    if kind == "press":
        return [f"[{who.get(record['user_id'], 'someone')} ({record['user_id']}) taps [{record['button']}] "
                f"on #{record['message_id']}]"]
    alert = " (alert)" if record.get("show_alert") else ""
    return [f"[bot answers the tap{alert}: {record['text']}]"]


async def test_buttons_transcript(tg_hub, box):
    """Approval buttons, a job with Cancel and a Restore offer, as the admin chat shows them
    (docs/telegram.md, "Transcript with buttons"; ``CLAUDE_NET_TELEGRAM_BUTTONS_TRANSCRIPT=FILE``)."""
    import asyncio

    import claude_net_activity
    import claude_net_approvals
    import claude_net_permissions
    import claude_net_telegram

    box.states = dict(NODES)
    who = {ADMIN_ID: "chas", OTHER_ID: "chas_"}
    lines: list[str] = []
    shown = 0

    async def settle(h, pause=0.4):
        nonlocal shown
        await asyncio.sleep(pause)
        await eventually(lambda: h.rt.outbox.pending() == 0 and h.rt.cards.stats()["pending"] == 0)
        for kind, record in h.api.transcript[shown:]:
            lines.extend(render_step(kind, record, who))
        shown = len(h.api.transcript)

    async def say(h, text, user_id=ADMIN_ID):
        await settle(h)
        message = h.api.send_text(text, user_id=user_id, chat_id=CHAT_ID, username=who[user_id])
        lines.append(f"[{who[user_id]} ({user_id})] {text}")
        await h.api.reply_to(message)
        await settle(h)

    async def tap(h, mid, button, user_id=ADMIN_ID):
        await settle(h)
        query = h.api.press(mid, button, user_id=user_id, username=who[user_id])
        await h.api.wait_answer(query)
        await settle(h)

    def card(h, needle):
        return next(m["message_id"] for m in h.api.sent if needle in m["plain"])

    plugins = [claude_net_telegram, claude_net_permissions, claude_net_activity, claude_net_approvals, box]
    async with tg_hub(plugins=plugins, edit_interval=0.5,
                      settings_overrides={"approvals": {"wait_default": 30}}) as h:
        manager = await h.token("managerclaude")
        await say(h, "@chasclaude permit managerclaude seanclaude exec ask")
        lines.append("(hub: managerclaude runs `git push --force origin main` on seanclaude over the HTTP API; "
                     "the request waits)")
        waiting = asyncio.ensure_future(h.call("POST", "/api/exec", manager, {
            "target": "seanclaude", "command": "git push --force origin main"}))
        await eventually(lambda: any("git push" in m["plain"] for m in h.api.sent))
        await settle(h)
        mid = card(h, "git push")
        await tap(h, mid, "✅ Approve once", user_id=OTHER_ID)
        await tap(h, mid, "✅ Approve once")
        status, _ = await waiting
        lines.append(f"(hub: the waiting request runs and answers {status})")
        await settle(h)
        await tap(h, mid, "⛔ Deny") if h.api.buttons(mid) else None
        h.api.messages[mid]["markup"] = [[("⛔ Deny", f"ap:{approval_id(h, mid)}:deny")]]
        lines.append("(a second admin's phone still shows the old buttons and taps Deny)")
        await tap(h, mid, "⛔ Deny")

        lines.append("(hub: managerclaude asks to run `rm -rf /srv/cache` on seanclaude)")
        waiting = asyncio.ensure_future(h.call("POST", "/api/exec", manager, {
            "target": "seanclaude", "command": "rm -rf /srv/cache"}))
        await eventually(lambda: any("rm -rf /srv/cache" in m["plain"] for m in h.api.sent))
        await settle(h)
        await tap(h, card(h, "rm -rf /srv/cache"), "⛔ Deny")
        status, body = await waiting
        lines.append(f"(hub: the waiting request is refused: {status} {body['code']})")

        await say(h, "@chasclaude permit managerclaude seanclaude exec snapshot-before")
        lines.append("(hub: managerclaude runs `rm -rf /srv/app/data` on seanclaude; a snapshot is taken first)")
        await h.call("POST", "/api/exec", manager, {"target": "seanclaude", "command": "rm -rf /srv/app/data"})
        await eventually(lambda: any("📸" in m["plain"] for m in h.api.sent))
        await settle(h)
        mid = card(h, "📸")
        await tap(h, mid, "⏪ Restore")
        await tap(h, mid, "⚠️ Tap to confirm restore")

        await say(h, "@chasclaude permit managerclaude seanclaude exec")
        lines.append("(hub: managerclaude starts `sleep 600` on seanclaude as a background job)")
        status, body = await h.call("POST", "/api/exec", manager, {"target": "seanclaude", "command": "sleep 600",
                                                                  "background": True})
        assert status == 202
        await eventually(lambda: any(f"job {body['job']['id']}" in m["plain"] for m in h.api.sent))
        await settle(h)
        await tap(h, card(h, f"job {body['job']['id']}"), "🛑 Cancel")
        await settle(h, 1.0)

    transcript = publish(lines, "CLAUDE_NET_TELEGRAM_BUTTONS_TRANSCRIPT")
    assert "[bot answers the tap (alert): ⛔ not done: Telegram user 222222222 is not allowed" in transcript
    assert "✅ approved once by chasclaude via telegram (Telegram user 111111111)" in transcript
    assert "already approved by chasclaude via telegram; nothing changed" in transcript
    assert "⛔ denied by chasclaude via telegram" in transcript
    assert "⏪ restored by chasclaude via telegram" in transcript
    assert "🛑 job managerclaude → seanclaude · cancelled by chasclaude" in transcript


def approval_id(h, mid):
    return h.api.messages[mid]["plain"].splitlines()[0].split()[-1]
