"""A whole admin session, as the admin chat shows it. The transcript in docs/telegram.md is the
output of this test (run with ``CLAUDE_NET_TELEGRAM_TRANSCRIPT=FILE`` to write it, or ``-s`` to
print it): the real plugin and python-telegram-bot against the local Bot API server, with the
TestBox backend standing in for the LXD containers of the original deployment."""

from __future__ import annotations

import os

from tg_helpers import ADMIN_ID, CHAT_ID, OTHER_ID, eventually

NODES = {"seanclaude": "running", "jazclaude": "running", "managerclaude": "running"}


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

    transcript = "\n".join(lines)
    print(transcript)
    target = os.environ.get("CLAUDE_NET_TELEGRAM_TRANSCRIPT")
    if target:
        with open(target, "w") as out:
            out.write(transcript + "\n")
    assert "⛔ not run: Telegram user 222222222 is not allowed" in transcript
    assert "📸 snapshot 2026-01-01 of seanclaude taken" in transcript
    assert "⛔ exec denied jazclaude → seanclaude" in transcript
