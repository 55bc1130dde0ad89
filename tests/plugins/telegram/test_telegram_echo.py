"""The echo: every exec (and denials, file writes, container ops, permission changes) goes to the
admin chat with who, where, the command, the exit code and the start of the output — escaped,
final events only, batched into few messages."""

from __future__ import annotations

import asyncio

import pytest

from claude_net import Event
from claude_net_telegram.render import format_event
from tg_helpers import CHAT_ID, eventually


async def permitted_agent(h, name="managerclaude", targets=("box1",)):
    admin = await h.token("chasclaude", admin=True)
    for target in targets:
        status, _ = await h.call("POST", "/api/permit", admin, {"source": name, "target": target})
        assert status == 200
    return admin, await h.token(name)


async def exec_(h, token, command, target="box1"):
    return await h.call("POST", "/api/exec", token, {"target": target, "command": command})


def echo_with(h, needle):
    return h.api.wait_sent(lambda m: needle in m["plain"] and m["reply_to"] is None)


async def test_an_exec_is_echoed_with_who_where_command_exit_code_and_output(tg_hub):
    async with tg_hub() as h:
        _, agent = await permitted_agent(h)
        status, body = await exec_(h, agent, "git status")
        assert status == 200 and body["stdout"] == "box1: git status\n"
        echo = await echo_with(h, "$ git status")
        lines = echo["plain"].splitlines()
        assert lines[0].startswith("✅ exec managerclaude → box1 · exit 0 · ")
        assert lines[1:] == ["$ git status", "box1: git status"]
        assert echo["chat_id"] == CHAT_ID and echo["parse_mode"] == "HTML"
        assert echo["disable_notification"] is True  # routine success: no sound
        assert echo["tags"] == ["b", "code", "pre"]

        status, _ = await exec_(h, agent, "exit 3")
        echo = await echo_with(h, "$ exit 3")
        assert echo["plain"].splitlines() == ["❌ exec managerclaude → box1 · exit 3 · 0 ms", "$ exit 3",
                                              "[stderr]", "failed"]
        assert echo["disable_notification"] is False  # a failure rings


async def test_output_is_truncated_to_a_few_hundred_characters(tg_hub):
    async with tg_hub() as h:
        _, agent = await permitted_agent(h)
        await exec_(h, agent, "spew 5000")
        echo = await echo_with(h, "$ spew 5000")
        assert echo["plain"].splitlines()[2:] == ["x" * 300 + "…", "(5000 bytes of output)"]
    async with tg_hub(echo_output_chars=40) as h:
        _, agent = await permitted_agent(h)
        await exec_(h, agent, "spew 100")
        echo = await echo_with(h, "$ spew 100")
        assert echo["plain"].splitlines()[2:] == ["x" * 40 + "…", "(100 bytes of output)"]


async def test_agent_text_cannot_format_or_impersonate(tg_hub):
    async with tg_hub() as h:
        _, agent = await permitted_agent(h)
        nasty = "echo <b>admin</b></pre><a href='https://evil'>click</a> &amp; \u202eevil"
        status, body = await exec_(h, agent, nasty)
        assert status == 200
        echo = await echo_with(h, "click")
        # Telegram parsed only our own tags; the agent's show up as literal text
        assert echo["tags"] == ["b", "code", "pre"]
        assert "$ echo <b>admin</b></pre><a href='https://evil'>click</a> &amp; �evil" in echo["plain"]
        assert "box1: echo <b>admin</b></pre><a href='https://evil'>click</a> &amp; �evil" in echo["plain"]
        assert "\u202e" not in echo["plain"]  # no right-to-left override to disguise a line
        assert "&lt;/pre&gt;" in echo["text"] and "&amp;amp;" in echo["text"]


async def test_denials_file_writes_container_ops_and_permits_are_echoed(tg_hub):
    async with tg_hub() as h:
        admin, agent = await permitted_agent(h)
        permit = await echo_with(h, "permit by chasclaude")
        assert permit["plain"] == "🔑 permit by chasclaude: managerclaude → box1: exec, file_read, file_write"

        status, _ = await exec_(h, agent, "rm -rf /", target="box2")
        assert status == 403
        denied = await echo_with(h, "exec denied")
        assert denied["plain"] == "⛔ exec denied managerclaude → box2\n$ rm -rf /"
        assert denied["disable_notification"] is False

        status, _ = await h.call("POST", "/api/file/write", agent,
                                 {"target": "box1", "path": "/etc/motd", "content": "hello"})
        assert status == 200
        write = await echo_with(h, "✅ file_write")
        assert write["plain"] == "✅ file_write managerclaude → box1 · 5 bytes\n/etc/motd"

        status, _ = await h.call("POST", "/api/file/read", agent, {"target": "box2", "path": "/etc/shadow"})
        assert status == 403  # file reads are not echoed, but their denials are
        read = await echo_with(h, "file_read denied")
        assert read["plain"] == "⛔ file_read denied managerclaude → box2\n/etc/shadow"

        status, _ = await h.call("POST", "/api/container/stop", admin, {"name": "box2"})
        assert status == 200
        stop = await echo_with(h, "container")
        assert stop["plain"] == "✅ container stop box2 by chasclaude"

        status, _ = await h.call("POST", "/api/container/stop", agent, {"name": "box1"})
        assert status == 403
        await echo_with(h, "container denied stop box1 by managerclaude")
        # successful file reads were not echoed
        assert not [m for m in h.api.sent if "file_read ✅" in m["plain"] or "✅ file_read" in m["plain"]]


async def test_only_final_events_are_echoed_and_telegram_commands_are_not_echoed_twice(tg_hub):
    async with tg_hub() as h:
        _, agent = await permitted_agent(h)
        await echo_with(h, "permit by chasclaude")
        h.box.gate = asyncio.Event()
        running = asyncio.ensure_future(exec_(h, agent, "wait-gate"))
        await eventually(lambda: ("exec", "box1", "wait-gate") in h.box.calls)
        await asyncio.sleep(0.3)
        assert not [m for m in h.api.sent if "wait-gate" in m["plain"]]  # pending: nothing yet
        h.box.gate.set()
        assert (await running)[0] == 200
        await echo_with(h, "$ wait-gate")
        assert len([m for m in h.api.sent if "wait-gate" in m["plain"]]) == 1

        # a command from the admin chat is answered, not echoed as well
        message = h.api.send_text("@chasclaude snapshot box1", user_id=111111111, chat_id=CHAT_ID)
        await h.api.reply_to(message)
        await asyncio.sleep(0.3)
        assert [m["plain"] for m in h.api.sent if "snapshot" in m["plain"]] == ["📸 snapshot 2026-01-01 of box1 taken"]


async def test_echo_settings_select_types_and_results(tg_hub):
    async with tg_hub(echo_types=["exec"], echo_results=["error"], echo_denials=False) as h:
        admin, agent = await permitted_agent(h, targets=("box1", "boxoff"))
        await exec_(h, agent, "echo fine")
        await exec_(h, agent, "sleep 5", target="boxoff")  # a stopped node: the exec fails (409)
        await exec_(h, agent, "echo no", target="box2")  # denied: not echoed with echo_denials off
        echo = await echo_with(h, "exec failed")
        assert echo["plain"].startswith("❗ exec failed managerclaude → boxoff: ")
        await asyncio.sleep(0.3)
        assert [m["plain"].split("\n")[0][:30] for m in h.api.echoes()] == [echo["plain"].split("\n")[0][:30]]
    async with tg_hub(echo=False) as h:
        _, agent = await permitted_agent(h)
        await exec_(h, agent, "echo quiet")
        await asyncio.sleep(0.3)
        assert not [m for m in h.api.sent if "quiet" in m["plain"]]


async def test_bursts_are_batched_within_the_length_limit(tg_hub):
    async with tg_hub(send_interval=1.0) as h:
        _, agent = await permitted_agent(h)
        await echo_with(h, "permit by chasclaude")
        first = len(h.api.sent)
        results = await asyncio.gather(*(exec_(h, agent, f"spew {250 + i}") for i in range(30)))
        assert all(status == 200 for status, _ in results)
        await eventually(lambda: sum(m["plain"].count("$ spew") for m in h.api.sent[first:]) == 30, timeout=15)
        batch = h.api.sent[first:]
        # 30 echoes of ~300 characters: a handful of messages, each under Telegram's limit, paced
        assert 3 <= len(batch) <= 6, [len(m["plain"]) for m in batch]
        assert all(len(m["plain"]) <= 4096 for m in batch)
        gaps = [b["at"] - a["at"] for a, b in zip(batch, batch[1:])]
        assert all(gap >= 0.9 for gap in gaps), gaps
        shown = sorted(int(line.split()[2]) for m in batch for line in m["plain"].splitlines()
                       if line.startswith("$ spew"))
        assert shown == list(range(250, 280))


def test_format_event_without_a_hub():
    event = Event("exec", "a", "b", "ls", "ok", via="mcp", data={"exit_code": 0, "truncated": True})
    event.transient.update(stdout="x" * 10, stderr="")
    text, loud = format_event(event, output_chars=5)
    assert text == ("✅ <b>exec</b> a via mcp → b · exit 0\n<code>$ ls</code>\n<pre>xxxxx…</pre>\n"
                    "(output cut, capped by the hub)")
    assert loud is False
    text, loud = format_event(Event("auth", None, None, "invalid token <x>", "denied"))
    assert text == "⛔ <b>auth</b> unknown: <code>invalid token &lt;x&gt;</code>" and loud is True
