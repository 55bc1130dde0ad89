"""Every admin command, driven by updates queued on the local Bot API server; assertions on what
the hub did (permissions table, backend calls, activity rows) and on the replies the bot sent."""

from __future__ import annotations

import json

import pytest

from tg_helpers import ADMIN_ID, CHAT_ID, activity_rows


async def command(h, text, *, user_id=ADMIN_ID, chat_id=CHAT_ID, **kw):
    """Queue ``text`` from the admin in the admin chat; return the bot's reply (plain text) and the message."""
    message = h.api.send_text(text, user_id=user_id, chat_id=chat_id, **kw)
    reply = await h.api.reply_to(message)
    return reply, message


async def rules(h):
    rows = await h.hub.db.fetch_all("SELECT source, target, can_exec, can_read, can_write, granted_by "
                                    "FROM exec_permissions ORDER BY source, target")
    return [(r["source"], r["target"], bool(r["can_exec"]), bool(r["can_read"]), bool(r["can_write"]),
             r["granted_by"]) for r in rows]


async def test_permit_and_revoke_in_the_spec_words_act_as_the_admin_via_telegram(tg_hub):
    async with tg_hub() as h:
        reply, _ = await command(h, "@chasclaude permit managerclaude all")
        assert reply["plain"] == "🔑 permitted managerclaude → every node: exec, file_read, file_write"
        assert reply["parse_mode"] == "HTML" and reply["chat_id"] == CHAT_ID
        assert await rules(h) == [("managerclaude", "*", True, True, True, "chasclaude")]

        reply, _ = await command(h, "@chasclaude permit jazclaude seanclaude")
        assert reply["plain"] == "🔑 permitted jazclaude → seanclaude: exec, file_read, file_write"

        reply, _ = await command(h, "@chasclaude revoke managerclaude all")
        assert reply["plain"] == "🚫 revoked: removed 1 rule of managerclaude: every node"
        assert await rules(h) == [("jazclaude", "seanclaude", True, True, True, "chasclaude")]

        # the same path as the HTTP API: permit events by chasclaude via telegram, in the activity feed
        permits = await activity_rows(h.hub, type="permit")
        assert [(r["from_machine"], r["via"], r["result"], r["target"]) for r in permits] == [
            ("chasclaude", "telegram", "ok", "managerclaude"),
            ("chasclaude", "telegram", "ok", "jazclaude"),
            ("chasclaude", "telegram", "ok", "managerclaude"),
        ]
        # and each accepted command is recorded with the Telegram user who sent it
        commands = await activity_rows(h.hub, type="telegram")
        assert [json.loads(r["data"])["user_id"] for r in commands] == [ADMIN_ID] * 3
        assert commands[0]["detail"] == "@chasclaude permit managerclaude all"
        assert commands[0]["from_machine"] == "chasclaude" and commands[0]["result"] == "ok"


async def test_slash_commands_and_bot_suffix(tg_hub):
    async with tg_hub() as h:
        reply, _ = await command(h, "/permit managerclaude all")
        assert reply["plain"].startswith("🔑 permitted managerclaude → every node")
        reply, _ = await command(h, f"/revoke@{h.rt.username} managerclaude box1")
        assert reply["plain"] == "🚫 revoked managerclaude → box1 (explicit deny; beats broader grants)"
        assert ("managerclaude", "box1", False, False, False, "chasclaude") in await rules(h)
        # a command for another bot, and ordinary chat, are not ours: no reply, nothing recorded
        before = len(h.api.sent)
        h.api.send_text("/permit@SomeOtherBot x all", user_id=ADMIN_ID, chat_id=CHAT_ID)
        h.api.send_text("good morning everyone", user_id=ADMIN_ID, chat_id=CHAT_ID)
        reply, _ = await command(h, "/help")
        assert len(h.api.sent) == before + 1
        assert "permit SOURCE TARGET" in reply["plain"] and "@chasclaude COMMAND" in reply["plain"]
        assert len(await activity_rows(h.hub, type="telegram")) == 3
        # read-only grant and expiry in the same words
        reply, _ = await command(h, "@chasclaude permit jazclaude box2 read for 2h")
        assert reply["plain"].startswith("🔑 permitted jazclaude → box2: file_read until 20")


async def test_permissions_matrix_is_a_monospace_grid(tg_hub):
    async with tg_hub() as h:
        await command(h, "@chasclaude permit managerclaude all")
        await command(h, "@chasclaude permit jazclaude box1 read")
        await command(h, "@chasclaude revoke managerclaude box2")
        reply, _ = await command(h, "@chasclaude permissions")
        assert reply["tags"] == ["b", "pre"]
        grid = reply["text"].split("<pre>")[1].split("</pre>")[0].splitlines()
        assert grid[0].split() == ["SOURCE", "\\", "TARGET", "*", "box1", "box2"]
        assert grid[1].split() == ["jazclaude", ".", "r", "."]
        assert grid[2].split() == ["managerclaude", "xrw", ".", "-"]
        assert grid[-1].startswith("legend:")
        reply, _ = await command(h, "@chasclaude permissions effective")
        assert "(resolved)" in reply["plain"] and "managerclaude" in reply["plain"]


async def test_status_is_one_line_per_node(tg_hub):
    async with tg_hub() as h:
        await h.token("managerclaude")  # a message-only node (holds a token)
        reply, _ = await command(h, "@chasclaude status")
        lines = reply["plain"].splitlines()
        assert lines[0] == "📋 status — 4 nodes"
        by_name = {line.split()[1]: line for line in lines[1:]}
        assert set(by_name) == {"box1", "box2", "boxoff", "managerclaude"}
        assert by_name["box1"].startswith("🟢 box1 · running · testbox")
        assert by_name["boxoff"].startswith("🔴 boxoff · stopped · testbox")
        assert "registered · hub" in by_name["managerclaude"]


async def test_container_commands_go_through_the_guarded_path(tg_hub):
    async with tg_hub() as h:
        reply, _ = await command(h, "@chasclaude snapshot seanclaude")
        assert reply["plain"] == "⚠️ unknown node 'seanclaude'"
        reply, _ = await command(h, "@chasclaude snapshot box1")
        assert reply["plain"] == "📸 snapshot 2026-01-01 of box1 taken"
        reply, _ = await command(h, "@chasclaude snapshot box1 before-upgrade")
        assert reply["plain"] == "📸 snapshot before-upgrade of box1 taken"
        reply, _ = await command(h, "@chasclaude snapshots box1")
        assert reply["plain"].splitlines()[1:] == ["2026-01-01", "before-upgrade"]
        reply, _ = await command(h, "@chasclaude stop box1")
        assert reply["plain"] == "⏹ stopped box1" and h.box.states["box1"] == "stopped"
        reply, _ = await command(h, "@chasclaude start box1")
        assert reply["plain"] == "▶️ started box1" and h.box.states["box1"] == "running"
        reply, _ = await command(h, "@chasclaude restore box1 before-upgrade")
        assert reply["plain"] == "⏪ restored box1 to before-upgrade"
        reply, _ = await command(h, "@chasclaude restore box1 nope")
        assert reply["plain"] == "⚠️ box1 has no snapshot 'nope'"
        reply, _ = await command(h, "@chasclaude restore box1")
        assert reply["plain"] == "usage: restore NAME SNAPSHOT"
        reply, _ = await command(h, "/snapshot box1 bad/name")
        assert "not a valid snapshot name" in reply["plain"]
        reply, _ = await command(h, "@chasclaude stop Box2 force")  # phones capitalise: names are lowercased
        assert reply["plain"] == "⏹ stopped box2"

        assert [c[:2] for c in h.box.calls] == [
            ("snapshot", "box1"), ("snapshot", "box1"), ("list_snapshots", "box1"), ("stop", "box1"),
            ("start", "box1"), ("restore", "box1"), ("restore", "box1"), ("stop", "box2")]
        assert h.box.calls[-1][2] == {"force": True}
        rows = await activity_rows(h.hub, type="container")
        assert {(r["from_machine"], r["via"]) for r in rows} == {("chasclaude", "telegram")}
        assert [(r["detail"], r["result"]) for r in rows] == [
            ("snapshot seanclaude", "error"), ("snapshot box1", "ok"), ("snapshot box1 before-upgrade", "ok"),
            ("list_snapshots box1", "ok"), ("stop box1", "ok"), ("start box1", "ok"),
            ("restore box1 before-upgrade", "ok"), ("restore box1 nope", "error"), ("stop box2", "ok")]


async def test_activity_command(tg_hub):
    async with tg_hub() as h:
        await command(h, "@chasclaude permit managerclaude box1")
        agent = await h.token("managerclaude")
        status, _ = await h.call("POST", "/api/exec", agent, {"target": "box1", "command": "uptime"})
        assert status == 200
        reply, _ = await command(h, "@chasclaude activity 2")
        lines = reply["plain"].splitlines()
        assert lines[0] == "📜 activity, last 2 h — UTC"
        assert any(" managerclaude exec → box1 ok: uptime" in line for line in lines)
        assert any("chasclaude (telegram) permit → managerclaude ok: " in line for line in lines)
        reply, _ = await command(h, "@chasclaude activity soon")
        assert reply["plain"] == "⚠️ hours must be a number, not 'soon'"
        reply, _ = await command(h, "/activity")
        assert reply["plain"].startswith("📜 activity, last 24 h")


async def test_unknown_and_malformed_commands_get_a_hint(tg_hub):
    async with tg_hub() as h:
        reply, _ = await command(h, "@chasclaude frobnicate box1")
        assert reply["plain"] == "❓ unknown command frobnicate; send help for the list"
        reply, _ = await command(h, "@chasclaude permit onlyone")
        assert reply["plain"] == "usage: permit SOURCE TARGET [read|write|exec [ask] ...] [snapshot-before] [for 2h]"
        reply, _ = await command(h, "@chasclaude permit Bad_Name all")
        assert "is not a valid node name" in reply["plain"]
        reply, _ = await command(h, "/start")  # Telegram's greeting command shows the help
        assert "commands act as chasclaude" in reply["plain"]
        reply, _ = await command(h, "@chasclaude")
        assert "commands act as chasclaude" in reply["plain"]


def test_parse_addresses():
    from claude_net_telegram.commands import parse

    def p(text):
        parsed = parse(text, admin_node="chasclaude", bot_username="CN_bot")
        return None if parsed is None else (parsed.verb, parsed.args, parsed.unknown)

    assert p("@chasclaude permit managerclaude all") == ("permit", ["managerclaude", "all"], False)
    assert p("@ChasClaude:  Permit  a   all") == ("permit", ["a", "all"], False)
    assert p("@cn_bot status") == ("status", [], False)
    assert p("/status@CN_bot") == ("status", [], False)
    assert p("/status@other_bot") is None
    assert p("/frobnicate") is None  # a bare unknown slash command may belong to someone else
    assert p("/frobnicate@CN_bot") == ("frobnicate", [], True)
    assert p("@chasclaude frobnicate") == ("frobnicate", [], True)
    # addressed to another node: never run (foreign); answered only in the cases runtime decides
    assert parse("@seanclaude status", admin_node="chasclaude", bot_username="CN_bot").foreign is True
    assert p("@seanclaude how are you") is None
    assert p("hey @chasclaude status") is None
    assert p("/machines") == ("status", [], False)
    assert p("") is None and p("   ") is None and p("/") is None
