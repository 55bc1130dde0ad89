"""Approvals decided with Telegram buttons: the real approvals and permissions plugins, the real
python-telegram-bot against the local Bot API server, an agent's exec under an ``ask`` grant
waiting on the HTTP API. Approve once, approve for 1 h (the allowance exists and expires), deny,
expiry, a stranger's press, a press from another chat, a double press, a press after a decision
through the API, the text commands — and a press delivered by webhook."""

from __future__ import annotations

import asyncio
import json

import claude_net_activity
import claude_net_approvals
import claude_net_permissions
import claude_net_telegram
from tg_helpers import ADMIN_ID, CHAT_ID, OTHER_ID, activity_rows, eventually

def plugins(box):
    return [claude_net_telegram, claude_net_permissions, claude_net_activity, claude_net_approvals, box]


def approvals_hub(tg_hub, box, *, approvals=None, **telegram):
    return tg_hub(plugins=plugins(box), settings_overrides={"approvals": {"wait_default": 10, **(approvals or {})}},
                  edit_interval=0.2, **telegram)


async def ask_grant(h, source="managerclaude", target="box1"):
    """The admin grants exec with approval, in the chat's words; returns the agent's token."""
    message = h.api.send_text(f"@chasclaude permit {source} {target} exec ask", user_id=ADMIN_ID, chat_id=CHAT_ID)
    reply = await h.api.reply_to(message)
    assert reply["plain"] == f"🔑 permitted {source} → {target}: exec (ask)", reply["plain"]
    return await h.token(source)


def exec_in_background(h, token, command, target="box1", wait=10):
    return asyncio.ensure_future(h.call("POST", "/api/exec", token, {"target": target, "command": command,
                                                                     "approval_wait": wait}))


async def approval_card(h, needle):
    """The approval message about ``needle`` (a command), once the bot has sent it."""
    message = await h.api.wait_sent(lambda m: m["plain"].startswith("🙋 approval") and needle in m["plain"])
    return message["message_id"]


async def waiting_exec(h, command):
    """An ask grant for managerclaude on box1, then its exec of ``command`` waiting for approval:
    (the agent's token, the running call, the card's message id)."""
    agent = await ask_grant(h)
    running = exec_in_background(h, agent, command)
    return agent, running, await approval_card(h, f"$ {command}")


async def press(h, mid, button, *, user_id=ADMIN_ID, **where):
    """Press ``button`` on message ``mid`` and return the bot's answer to it."""
    return await h.api.wait_answer(h.api.press(mid, button, user_id=user_id, **where))


def approval_id_of(h, mid):
    return h.api.messages[mid]["plain"].splitlines()[0].split()[-1]


def stale_press(h, mid, approval_id, choice="once"):
    """A press from a client that still shows the old buttons (Telegram delivers it even after
    the bot removed them, e.g. from a phone that was offline): returns the query id."""
    h.api.messages[mid]["markup"] = [[("✅ Approve once", f"ap:{approval_id}:{choice}")]]
    return h.api.press(mid, f"ap:{approval_id}:{choice}", user_id=ADMIN_ID)


async def approval_rows(h):
    rows = await activity_rows(h.hub, type="approval")
    return [(json.loads(r["data"])["state"], r["result"], json.loads(r["data"]).get("decided_via")) for r in rows]


async def test_approve_once_runs_the_waiting_exec_once(tg_hub, box):
    async with approvals_hub(tg_hub, box) as h:
        _, running, mid = await waiting_exec(h, "deploy --prod")
        approval_id = approval_id_of(h, mid)
        lines = h.api.messages[mid]["plain"].splitlines()
        assert lines[0] == f"🙋 approval {approval_id}"
        assert lines[1:3] == ["managerclaude asks to run a command on box1", "$ deploy --prod"]
        assert lines[3].startswith("expires ") and lines[3].endswith(" UTC unless decided")
        assert h.api.buttons(mid) == ["✅ Approve once", "✅ Approve for 1 h", "⛔ Deny"]
        assert h.api.messages[mid]["disable_notification"] is False  # a request rings
        assert ("exec", "box1", "deploy --prod") not in box.calls  # waiting, not run

        assert (await press(h, mid, "✅ Approve once"))["text"] == "✅ approved once"
        status, body = await running
        assert status == 200 and body["stdout"] == "box1: deploy --prod\n"
        assert box.calls.count(("exec", "box1", "deploy --prod")) == 1
        shown = await h.api.wait_message(mid, lambda m: "approved" in m["plain"])
        assert shown["plain"].splitlines()[-1] == ("✅ approved once by chasclaude via telegram "
                                                   f"(Telegram user {ADMIN_ID})")
        assert h.api.buttons(mid) == []

        # recorded: requested and approved (via telegram), the exec carries the approval id,
        # the press carries the Telegram user id
        assert await approval_rows(h) == [("requested", "pending", None), ("approved", "ok", "telegram")]
        execs = await activity_rows(h.hub, type="exec")
        assert [json.loads(r["data"]).get("approval_id") for r in execs] == [approval_id]
        presses = [json.loads(r["data"]) for r in await activity_rows(h.hub, type="telegram")
                   if json.loads(r["data"])["update"] == "callback_query"]
        assert [(p["user_id"], p["button"]) for p in presses] == [(ADMIN_ID, f"ap:{approval_id}:once")]

        # a press from a client that still shows the buttons: answered, nothing runs again
        query = stale_press(h, mid, approval_id)
        answer = await h.api.wait_answer(query)
        assert answer["text"] == "already approved by chasclaude via telegram; nothing changed"
        assert box.calls.count(("exec", "box1", "deploy --prod")) == 1


async def test_a_double_press_and_a_press_after_the_decision_change_nothing(tg_hub, box):
    async with approvals_hub(tg_hub, box) as h:
        _, running, mid = await waiting_exec(h, "make release")
        approval_id = approval_id_of(h, mid)
        # two taps before the first is handled (a phone double tap): both are delivered
        first = h.api.press(mid, "✅ Approve once", user_id=ADMIN_ID)
        second = h.api.press(mid, "⛔ Deny", user_id=ADMIN_ID)
        assert (await h.api.wait_answer(first))["text"] == "✅ approved once"
        answer = await h.api.wait_answer(second)
        assert answer["text"] == "already approved by chasclaude via telegram; nothing changed"
        status, _ = await running
        assert status == 200 and box.calls.count(("exec", "box1", "make release")) == 1
        assert await approval_rows(h) == [("requested", "pending", None), ("approved", "ok", "telegram")]
        got = await claude_net_approvals.service.get(h.hub, approval_id)
        assert got["state"] == "approved"


async def test_approve_for_an_hour_creates_an_expiring_allowance(tg_hub, box):
    async with approvals_hub(tg_hub, box) as h:
        agent, running, mid = await waiting_exec(h, "apt upgrade")
        assert (await press(h, mid, "✅ Approve for 1 h"))["text"] == "✅ approved for 1 h"
        assert (await running)[0] == 200
        shown = await h.api.wait_message(mid, lambda m: "approved" in m["plain"])
        assert shown["plain"].splitlines()[-1].startswith("✅ approved for 1h by chasclaude via telegram")

        # the allowance: a recorded permit, expiring in an hour; meanwhile no more asking
        admin = await h.token("chasclaude", admin=True)
        status, body = await h.call("GET", "/api/permissions", admin)
        allowances = body["allowances"]
        assert [(a["source"], a["target"], a["capability"]) for a in allowances] == [
            ("managerclaude", "box1", "exec")]
        from datetime import datetime, timedelta, timezone

        until = datetime.fromisoformat(allowances[0]["expires_at"].replace("Z", "+00:00"))
        left = until - datetime.now(timezone.utc)
        assert timedelta(minutes=59) < left <= timedelta(hours=1)
        status, body = await h.call("POST", "/api/exec", agent, {"target": "box1", "command": "apt autoremove",
                                                                 "approval_wait": 1})
        assert status == 200, body
        permits = await activity_rows(h.hub, type="permit")
        assert permits[-1]["from_machine"] == "chasclaude" and permits[-1]["via"] == "telegram"
        assert "without asking until" in permits[-1]["detail"]

        # when it expires, the ask level is back (moved into the past rather than waiting an hour)
        await h.hub.db.execute("UPDATE permission_allowances SET expires_at = :past",
                               {"past": "2020-01-01T00:00:00.000Z"})
        status, body = await h.call("POST", "/api/exec", agent, {"target": "box1", "command": "apt purge",
                                                                 "approval_wait": 0.2})
        assert status == 202 and body["code"] == "approval_pending"
        await approval_card(h, "$ apt purge")


async def test_deny_refuses_the_exec_and_it_never_runs(tg_hub, box):
    async with approvals_hub(tg_hub, box) as h:
        _, running, mid = await waiting_exec(h, "rm -rf /srv")
        assert (await press(h, mid, "⛔ Deny"))["text"] == "⛔ denied"
        status, body = await running
        assert status == 403 and body["code"] == "approval_denied", body
        assert ("exec", "box1", "rm -rf /srv") not in box.calls
        shown = await h.api.wait_message(mid, lambda m: "denied" in m["plain"].splitlines()[-1])
        assert shown["plain"].splitlines()[-1] == f"⛔ denied by chasclaude via telegram (Telegram user {ADMIN_ID})"
        assert h.api.buttons(mid) == []


async def test_an_expired_request_is_shown_expired_and_a_late_press_changes_nothing(tg_hub, box):
    async with approvals_hub(tg_hub, box, approvals={"expiry": 1.5, "wait_default": 0.5}) as h:
        agent = await ask_grant(h)
        status, body = await h.call("POST", "/api/exec", agent, {"target": "box1", "command": "reboot"})
        assert status == 202 and body["code"] == "approval_pending"
        approval_id = body["approval"]["id"]
        mid = await approval_card(h, "$ reboot")
        await asyncio.sleep(1.6)
        # the agent comes back for it: expired (whoever looks first records the expiry)
        status, body = await h.call("POST", "/api/exec", agent, {"target": "box1", "command": "reboot",
                                                                 "approval": approval_id})
        assert status == 403 and body["code"] == "approval_expired", body
        shown = await h.api.wait_message(mid, lambda m: "expired" in m["plain"])
        assert shown["plain"].splitlines()[-1] == "⌛ expired: nobody decided in time; the request was refused"
        assert h.api.buttons(mid) == []
        query = stale_press(h, mid, approval_id)
        assert (await h.api.wait_answer(query))["text"] == "this request expired; nothing changed"
        assert ("exec", "box1", "reboot") not in box.calls
        assert [state for state, _, _ in await approval_rows(h)] == ["requested", "expired"]


async def test_a_strangers_press_and_a_press_from_another_chat_are_refused_and_recorded(tg_hub, box):
    async with approvals_hub(tg_hub, box) as h:
        _, running, mid = await waiting_exec(h, "cat /etc/shadow")
        approval_id = approval_id_of(h, mid)

        answer = await press(h, mid, "✅ Approve once", user_id=OTHER_ID, username="mallory")
        assert answer["show_alert"] is True
        assert answer["text"] == (f"⛔ not done: Telegram user {OTHER_ID} is not allowed to decide for this hub "
                                  "(admin_ids)")
        answer = await press(h, mid, "✅ Approve once", chat_id=-100999)
        assert answer["text"] == "⛔ not done: buttons work only in the admin chat, not in chat -100999"
        # nothing changed: still pending, the exec still waits, the buttons are still there
        assert (await claude_net_approvals.service.get(h.hub, approval_id))["state"] == "pending"
        assert not running.done() and h.api.buttons(mid) == ["✅ Approve once", "✅ Approve for 1 h", "⛔ Deny"]
        refused = [(r["from_machine"], json.loads(r["data"])["reason"], r["detail"])
                   for r in await activity_rows(h.hub, type="telegram", result="denied")]
        assert refused == [(f"telegram:{OTHER_ID}", "not_admin", f"button: approve once (approval {approval_id})"),
                           (f"telegram:{ADMIN_ID}", "wrong_chat", f"button: approve once (approval {approval_id})")]
        # and the admin chat is told (the presser alone saw the answer)
        told = await h.api.wait_sent(lambda m: "Telegram button press refused" in m["plain"]
                                     and "-100999" in m["plain"])
        assert told["chat_id"] == CHAT_ID
        await h.api.wait_sent(lambda m: "Telegram button press refused" in m["plain"] and str(OTHER_ID) in m["plain"])

        assert (await press(h, mid, "⛔ Deny"))["text"] == "⛔ denied"
        assert (await running)[0] == 403


async def test_a_decision_through_the_api_edits_the_message_and_a_later_press_changes_nothing(tg_hub, box):
    async with approvals_hub(tg_hub, box) as h:
        _, running, mid = await waiting_exec(h, "drop table users")
        approval_id = approval_id_of(h, mid)
        admin = await h.token("chasclaude", admin=True)
        status, body = await h.call("POST", f"/api/approvals/{approval_id}", admin, {"decision": "deny"})
        assert status == 200 and body["approval"]["state"] == "denied", body
        shown = await h.api.wait_message(mid, lambda m: "denied" in m["plain"].splitlines()[-1])
        assert shown["plain"].splitlines()[-1] == "⛔ denied by chasclaude via http"
        assert h.api.buttons(mid) == []
        assert (await running)[0] == 403

        # a client that still shows the buttons: its press is answered with the state, nothing runs
        query = stale_press(h, mid, approval_id)
        assert (await h.api.wait_answer(query))["text"] == "already denied by chasclaude via http; nothing changed"
        assert ("exec", "box1", "drop table users") not in box.calls
        assert await approval_rows(h) == [("requested", "pending", None), ("denied", "denied", "http")]


async def test_text_commands_approve_deny_and_list(tg_hub, box):
    async with approvals_hub(tg_hub, box) as h:
        agent = await ask_grant(h)
        first = exec_in_background(h, agent, "echo one")
        mid1 = await approval_card(h, "$ echo one")
        second = exec_in_background(h, agent, "echo two")
        mid2 = await approval_card(h, "$ echo two")
        one, two = approval_id_of(h, mid1), approval_id_of(h, mid2)

        message = h.api.send_text("@chasclaude approvals", user_id=ADMIN_ID, chat_id=CHAT_ID)
        listing = (await h.api.reply_to(message))["plain"].splitlines()
        assert listing[0] == "🙋 approvals waiting (2)"
        assert sorted(listing[1:3]) == sorted([f"{one} managerclaude exec → box1: echo one",
                                               f"{two} managerclaude exec → box1: echo two"])

        message = h.api.send_text(f"@chasclaude approve {one}", user_id=ADMIN_ID, chat_id=CHAT_ID)
        assert (await h.api.reply_to(message))["plain"] == (f"✅ approved once {one}: {one} managerclaude exec → "
                                                            "box1: echo one")
        message = h.api.send_text(f"/deny {two}", user_id=ADMIN_ID, chat_id=CHAT_ID)
        assert (await h.api.reply_to(message))["plain"] == (f"⛔ denied {two}: {two} managerclaude exec → box1: "
                                                            "echo two")
        assert (await first)[0] == 200 and (await second)[0] == 403
        # the cards follow decisions taken by text too
        await h.api.wait_message(mid1, lambda m: m["plain"].endswith(f"via telegram (Telegram user {ADMIN_ID})"))
        await h.api.wait_message(mid2, lambda m: "⛔ denied by chasclaude" in m["plain"])
        message = h.api.send_text(f"@chasclaude deny {one}", user_id=ADMIN_ID, chat_id=CHAT_ID)
        assert (await h.api.reply_to(message))["plain"] == f"⚠️ approval {one} is already approved; nothing changed"
        message = h.api.send_text("@chasclaude approve nosuchid", user_id=ADMIN_ID, chat_id=CHAT_ID)
        assert (await h.api.reply_to(message))["plain"] == "⚠️ there is no approval 'nosuchid'"
        # a stranger's text command is refused like every command
        message = h.api.send_text(f"@chasclaude approve {one}", user_id=OTHER_ID, chat_id=CHAT_ID)
        assert (await h.api.reply_to(message))["plain"].startswith("⛔ not run: Telegram user")


async def test_hostile_request_text_is_inert_on_the_card(tg_hub, box):
    async with approvals_hub(tg_hub, box) as h:
        agent = await ask_grant(h)
        nasty = "echo </code><b>APPROVED</b>\u202e\nby chasclaude"
        running = exec_in_background(h, agent, nasty, wait=0.3)
        mid = await approval_card(h, "APPROVED")
        shown = h.api.messages[mid]
        assert shown["tags"] == ["b", "code", "b", "b", "code"]  # only the bot's own markup
        assert "$ echo </code><b>APPROVED</b>�↵by chasclaude" in shown["plain"]
        assert "\u202e" not in shown["plain"] and "\nby chasclaude" not in shown["plain"]
        await running


async def test_a_press_through_the_webhook(tg_hub, box):
    secret = "s3cret-Webhook_value-0123456789"
    async with approvals_hub(tg_hub, box, mode="webhook", webhook_url="https://hub.example.org/api/telegram/webhook",
                             webhook_secret=secret) as h:
        await eventually(lambda: h.api.webhook is not None)
        assert "callback_query" in h.api.webhook["allowed_updates"]
        admin = await h.token("chasclaude", admin=True)
        status, _ = await h.call("POST", "/api/permit", admin, {"source": "managerclaude", "target": "box1",
                                                                "capabilities": ["exec"], "ask": ["exec"]})
        assert status == 200
        agent = await h.token("managerclaude")
        running = exec_in_background(h, agent, "systemctl restart app")
        mid = await approval_card(h, "$ systemctl restart app")
        update = h.api.callback_update(mid, "✅ Approve once", user_id=ADMIN_ID)
        status, body = await h.call("POST", "/api/telegram/webhook", None, update,
                                    headers={"X-Telegram-Bot-Api-Secret-Token": secret})
        assert (status, body) == (200, {"ok": True})
        assert (await h.api.wait_answer(update["callback_query"]["id"]))["text"] == "✅ approved once"
        status, body = await running
        assert status == 200 and body["stdout"] == "box1: systemctl restart app\n"
        await h.api.wait_message(mid, lambda m: "approved once" in m["plain"])
        assert h.api.buttons(mid) == []


async def test_an_agents_tool_prompt_is_approved_with_a_button(tg_hub, box):
    async with approvals_hub(tg_hub, box) as h:
        agent = await h.token("managerclaude")
        status, body = await h.call("POST", "/api/approvals", agent, {
            "kind": "agent_tool", "tool_name": "Bash", "description": "run the migrations",
            "input_preview": '{"command": "alembic upgrade head </pre><b>x</b>"}', "request_id": "req-1"})
        assert status == 201, body
        approval_id = body["approval"]["id"]
        mid = await approval_card(h, "run the migrations")
        lines = h.api.messages[mid]["plain"].splitlines()
        assert lines[1:4] == ["managerclaude's agent asks to use the tool Bash", "run the migrations",
                              '{"command": "alembic upgrade head </pre><b>x</b>"}']
        # one use of a tool: approve or deny, no allowance to open
        assert h.api.buttons(mid) == ["✅ Approve", "⛔ Deny"]
        assert (await press(h, mid, "✅ Approve"))["text"] == "✅ approved"
        shown = await h.api.wait_message(mid, lambda m: "approved" in m["plain"].splitlines()[-1])
        assert shown["plain"].splitlines()[-1] == f"✅ approved by chasclaude via telegram (Telegram user {ADMIN_ID})"
        status, body = await h.call("GET", f"/api/approvals/{approval_id}", agent)
        assert status == 200 and body["approval"]["state"] == "approved"
        assert body["approval"]["telegram_user"] == str(ADMIN_ID)
