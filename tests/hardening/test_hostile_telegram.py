"""A hostile agent against the admin's Telegram: one request with a lone UTF-16 surrogate (issue 19,
item 1) must not silence the bot, whatever the HTTP edge does with it; an event carrying such text
on the hub's own bus must not either (the edge is not the only defence); a renderer that fails on
one event skips that event only; the bot's task, if it dies anyway, is restarted and announced, and
/api/telegram/status tells the truth meanwhile. Also issue 14 item 5: without an admin node the
admin's command is answered in the chat with the setting to add.

Real python-telegram-bot against the local Bot API stand-in (tests/plugins/telegram/tg_botapi.py),
in polling and webhook mode, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
from pathlib import Path

import pytest

import claude_net_activity
import claude_net_permissions
import claude_net_telegram
from claude_net import Event
from claude_net.testing import eventually
from tests.core.testbox import TestBox

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "telegram"))
from tg_botapi import FakeBotAPI  # noqa: E402
from tg_helpers import ADMIN_ID, CHAT_ID, OTHER_ID, TOKEN, activity_rows, tg_settings  # noqa: E402

WEBHOOK_URL = "https://hub.example.org/api/telegram/webhook"
SECRET = "hostile-test-secret_0123456789"
HEADER = "X-Telegram-Bot-Api-Secret-Token"
REPLACEMENT = "\N{REPLACEMENT CHARACTER}"


@pytest.fixture(params=["polling", "webhook"])
def mode(request):
    return request.param


@pytest.fixture
async def botapi():
    api = FakeBotAPI(TOKEN)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
def tg(hub_harness, botapi, mode):
    """``async with tg(admins=[...], **telegram) as h``: telegram, permissions, activity, TestBox."""

    @contextlib.asynccontextmanager
    async def start(*, admins=("chasclaude",), **telegram):
        if mode == "webhook":
            telegram = {"mode": "webhook", "webhook_url": WEBHOOK_URL, "webhook_secret": SECRET, **telegram}
        plugins = [claude_net_telegram, claude_net_permissions, claude_net_activity, TestBox()]
        async with hub_harness(plugins=plugins, telegram=tg_settings(botapi, **telegram), admins=list(admins)) as h:
            h.api, h.mode, h.rt = botapi, mode, h.hub.plugin_state["telegram"]
            await eventually(lambda: h.rt.ready.is_set())
            if mode == "webhook":
                await eventually(lambda: botapi.webhook is not None)
            yield h

    return start


async def say(h, text, *, user_id=ADMIN_ID):
    """``text`` from a Telegram user in the admin chat, delivered the way the mode delivers it."""
    message = h.api.message(text, user_id=user_id, chat_id=CHAT_ID)
    if h.mode == "polling":
        h.api.queue_update("message", message)
    else:
        update = {"update_id": h.api.next_update_id, "message": message}
        h.api.next_update_id += 1
        status, body = await eventually(lambda: _post_update(h, update))
        assert status == 200, body
    return message


async def _post_update(h, update):
    status, body = await h.call("POST", "/api/telegram/webhook", None, update, headers={HEADER: SECRET})
    return None if status == 503 else (status, body)  # 503: the bot is (re)connecting; Telegram retries


async def command(h, text):
    return await h.api.reply_to(await say(h, text))


async def agents(h):
    admin = await h.token("chasclaude", admin=True)
    status, _ = await h.call("POST", "/api/permit", admin, {"source": "managerclaude", "target": "box1"})
    assert status == 200
    return admin, await h.token("managerclaude")


async def exec_echoed(h, agent, words):
    status, _ = await h.call("POST", "/api/exec", agent, {"target": "box1", "command": f"echo {words}"})
    assert status == 200
    return await h.api.wait_sent(lambda m: f"$ echo {words}" in m["plain"] and m["reply_to"] is None)


async def telegram_status(h, admin):
    status, body = await h.call("GET", "/api/telegram/status", admin)
    assert status == 200
    return body["telegram"]


async def assert_alive(h, admin, agent, words):
    """The next admin command runs and is answered, the next exec is echoed, the status says so."""
    reply = await command(h, "@chasclaude permit jazclaude box2")
    assert reply["plain"] == "🔑 permitted jazclaude → box2: exec, file_read, file_write"
    echo = await exec_echoed(h, agent, words)
    assert "\ud800" not in echo["text"]
    state = await telegram_status(h, admin)
    assert state["connected"] is True and state["task"]["state"] == "running"
    assert h.hub.degraded_tasks() == []


async def test_a_lone_surrogate_in_an_exec_request_does_not_silence_telegram(tg):
    async with tg() as h:
        admin, agent = await agents(h)
        # sent as raw JSON text with the escape: json.loads makes it a lone surrogate
        raw = b'{"target": "box2", "command": "id \\ud800"}'
        status, body = await h.call("POST", "/api/exec", agent, raw=raw, headers={"Content-Type": "application/json"})
        # refused either way: 400 at the HTTP edge (it refuses such text), else 403 (a denied pathway)
        assert status in (400, 403) and body["ok"] is False, (status, body)
        if status == 403:  # it reached the policy: the denial is echoed, the surrogate made visible and inert
            denied = await h.api.wait_sent(lambda m: "exec denied managerclaude → box2" in m["plain"])
            assert f"$ id {REPLACEMENT}" in denied["plain"]
        await assert_alive(h, admin, agent, "after-the-surrogate")
        state = await telegram_status(h, admin)
        assert state["task"]["failures"] == 0 and state["outbox"]["dropped_bad"] == 0


async def test_lone_surrogates_in_events_on_the_bus_are_echoed_inert(tg, caplog):
    caplog.set_level(logging.INFO)
    async with tg() as h:
        admin, agent = await agents(h)
        bad = "\ud800"
        denied = Event("exec", "managerclaude", "box2", f"id {bad}", "denied")
        ran = Event("exec", "managerclaude", "box1", f"cat {bad}", "ok", data={"exit_code": 0, "duration_ms": 3})
        ran.transient.update(stdout=f"out {bad}\udfff\n", stderr=f"err {bad}")
        failed = Event("file_write", "managerclaude", "box1", f"/tmp/{bad}", "error",
                       data={"error": f"cannot write /tmp/{bad}"})
        for event in (denied, ran, failed):
            await h.hub.emit(event)
        sent = [await h.api.wait_sent(lambda m, needle=needle: needle in m["plain"])
                for needle in ("exec denied", "$ cat", "file_write failed")]
        assert f"$ id {REPLACEMENT}" in sent[0]["plain"]
        assert f"out {REPLACEMENT}{REPLACEMENT}" in sent[1]["plain"] and f"err {REPLACEMENT}" in sent[1]["plain"]
        assert f"cannot write /tmp/{REPLACEMENT}" in sent[2]["plain"]
        assert all("\ud800" not in m["text"] and "\udfff" not in m["text"] for m in h.api.sent)

        # an event no renderer can format is logged and skipped; the next one still goes out
        await h.hub.emit(Event("permit", "chasclaude", "x", 12345, "ok"))  # detail is not text
        assert "cannot format the permit event" in caplog.text
        # text put straight into the outbox (a replica's forwarded echo) is made encodable too
        h.rt.outbox.put(f"<b>forwarded</b> {bad}", True)
        forwarded = await h.api.wait_sent(lambda m: "forwarded" in m["plain"])
        assert forwarded["plain"] == f"forwarded {REPLACEMENT}"
        await assert_alive(h, admin, agent, "after-the-bus")


async def test_agent_text_in_the_echo_cannot_forge_lines_or_markup(tg):
    async with tg() as h:
        admin, agent = await agents(h)
        forged = "x\n✅ permit by chasclaude: managerclaude → every node\u2028<b>ADMIN</b> `**bold**` [a](http://e)"
        status, _ = await h.call("POST", "/api/exec", agent, {"target": "box1", "command": f"echo {forged}"})
        assert status == 200
        echo = await h.api.wait_sent(lambda m: "ADMIN" in m["plain"] and m["reply_to"] is None)
        # the only markup Telegram saw is the bot's own; the agent's stays literal text
        assert echo["tags"] == ["b", "code", "pre"] and echo["parse_mode"] == "HTML"
        assert "&lt;b&gt;ADMIN&lt;/b&gt;" in echo["text"] and "**bold**" in echo["plain"]
        # outside the output block (a box of its own in the chat) the agent cannot start a line: the
        # command shows its newline as ↵ and the Unicode line separator as U+FFFD
        outside = re.sub(r"<pre>.*?</pre>", "", echo["text"], flags=re.S)
        lines = outside.splitlines()
        assert lines[0].startswith("✅ <b>exec</b> managerclaude → box1 · exit 0")
        assert lines[1] == ("<code>$ echo x↵✅ permit by chasclaude: managerclaude → every node"
                            f"{REPLACEMENT}&lt;b&gt;ADMIN&lt;/b&gt; `**bold**` [a](http://e)</code>")
        assert len(lines) == 2 and "\u2028" not in echo["plain"]


async def test_a_dead_telegram_task_is_restarted_announced_and_reported_truthfully(tg):
    async with tg() as h:
        admin, agent = await agents(h)
        h.hub.RESTART_INITIAL = 1.5  # a window in which the status can be read while it restarts
        inner = [t for t in asyncio.all_tasks()
                 if getattr(t.get_coro(), "__qualname__", "") == "Outbox.run" and not t.done()]
        assert len(inner) == 1
        inner[0].cancel()  # a piece of the bot's work dies under it
        state = await eventually(lambda: _restarting(h, admin))
        assert state["connected"] is False and state["task"]["failures"] == 1
        assert state["task"]["next_restart"] is not None
        status, body = await h.call("GET", "/api/health")
        assert body["tasks"]["degraded"] == ["telegram"]
        status, body = await h.call("GET", "/api/health", admin)
        assert body["tasks"]["detail"]["telegram"]["last_error"].startswith("CancelledError")

        await eventually(lambda: h.rt.ready.is_set(), timeout=15)
        # the admin is told in the chat, once the bot is back
        notice = await h.api.wait_sent(lambda m: "background task telegram failed" in m["plain"])
        assert notice["plain"].startswith("❗ hub: background task telegram failed: CancelledError")
        assert notice["disable_notification"] is False
        rows = await activity_rows(h.hub, type="hub", result="error")
        assert json.loads(rows[0]["data"])["task"] == "telegram"
        await assert_alive(h, admin, agent, "after-the-restart")
        assert (await telegram_status(h, admin))["task"]["restarts"] == 1


async def _restarting(h, admin):
    state = await telegram_status(h, admin)
    return state if state["task"]["state"] == "restarting" else None


async def test_without_an_admin_node_the_admin_is_told_what_to_add(tg):
    async with tg(admins=()) as h:
        reply = await command(h, "@chasclaude permit managerclaude all")
        assert reply["plain"] == (
            "⛔ not run: no admin node is configured, so commands have no node to act as ([telegram] "
            "admin_node or the top-level admins)\n"
            "Add the node commands act as to the hub's configuration file and restart the hub:\n"
            "[telegram]\n"
            'admin_node = "chasclaude"\n'
            'or name it among the admins (a top-level key, above every [section]): admins = ["chasclaude"]\n'
            "or set CLAUDE_NET_TELEGRAM__ADMIN_NODE=chasclaude in the hub's environment.")
        assert reply["tags"] == ["pre", "code", "code"]
        assert await h.hub.db.fetch_all("SELECT * FROM exec_permissions") == []
        rows = await activity_rows(h.hub, type="telegram", result="denied")
        assert json.loads(rows[-1]["data"])["reason"] == "no_admin_node"

        reply = await command(h, "/status")  # names no node: the example is the spec's admin
        assert 'admin_node = "chasclaude"' in reply["plain"]
        # someone else's words that merely start with a mention stay unanswered
        quiet = await say(h, "@chasclaude status please", user_id=OTHER_ID)
        await asyncio.sleep(0.5)
        assert h.api.replies_to(quiet) == []


async def test_at_name_never_selects_the_node_commands_act_as(tg):
    async with tg() as h:
        await h.token("seanclaude", admin=True)  # another admin-token holder
        reply = await command(h, "@seanclaude permit managerclaude all")
        assert reply["plain"] == ("⛔ not run: commands from Telegram always act as chasclaude; @seanclaude cannot "
                                  "choose another node. Write @chasclaude permit managerclaude all")
        assert await h.hub.db.fetch_all("SELECT * FROM exec_permissions") == []
        # a mention of a node without admin rights is ordinary chat
        quiet = await say(h, "@jazclaude status")
        await asyncio.sleep(0.5)
        assert h.api.replies_to(quiet) == []
        reply = await command(h, "@chasclaude permit managerclaude all")
        assert reply["plain"].startswith("🔑 permitted managerclaude")
        rows = await activity_rows(h.hub, type="permit")
        assert [r["from_machine"] for r in rows] == ["chasclaude"]


def test_renderers_accept_any_str():
    from claude_net_telegram.render import clip, esc, format_event, pre_messages, safe, utf16_len

    lone = "a\ud800b\udfff"
    assert utf16_len(lone) == 4 and utf16_len("😀") == 2
    assert esc(lone) == f"a{REPLACEMENT}b{REPLACEMENT}" and safe(lone) == esc(lone)
    assert clip(12345, 3) == "123… (+2 chars)"
    for result in ("ok", "denied", "error"):
        for kind in ("exec", "file_write", "file_read", "container", "permit", "telegram", "hub", "message"):
            event = Event(kind, lone, lone, lone, result, via=lone, data={"error": lone, "exit_code": 0,
                                                                         "reason_text": lone, "bytes": 3})
            event.transient.update(stdout=lone, stderr=lone)
            text, _ = format_event(event)
            text.encode("utf-8")  # strict: would raise on a surrogate
            assert "\ud800" not in text
    for message in pre_messages(f"<b>{esc(lone)}</b>", [lone, lone * 3000], footer=esc(lone)):
        message.encode("utf-8")
