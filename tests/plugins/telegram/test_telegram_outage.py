"""Telegram slow, failing or gone: the hub's requests never wait for it; the echoes wait in the
bounded outbox and arrive once it is back; overflow is counted and reported; 429 is honoured."""

from __future__ import annotations

import asyncio
import time

import pytest

from tg_helpers import ADMIN_ID, CHAT_ID, eventually


async def permitted_agent(h):
    admin = await h.token("chasclaude", admin=True)
    status, _ = await h.call("POST", "/api/permit", admin, {"source": "managerclaude", "target": "box1"})
    assert status == 200
    await h.api.wait_sent(lambda m: "permit by chasclaude" in m["plain"])
    return await h.token("managerclaude")


async def timed_execs(h, agent, label, n):
    """Run ``n`` execs one after another; returns the slowest answer in seconds."""
    slowest = 0.0
    for i in range(n):
        started = time.monotonic()
        status, body = await h.call("POST", "/api/exec", agent, {"target": "box1", "command": f"echo {label}-{i}"})
        slowest = max(slowest, time.monotonic() - started)
        assert status == 200 and body["stdout"] == f"box1: echo {label}-{i}\n"
    return slowest


def echoed(h, label):
    return {line for m in h.api.sent for line in m["plain"].splitlines() if line.startswith(f"$ echo {label}-")}


async def test_telegram_answering_errors_for_a_while_slows_nothing_and_the_backlog_arrives(tg_hub):
    async with tg_hub() as h:
        agent = await permitted_agent(h)
        baseline = await timed_execs(h, agent, "before", 5)
        await eventually(lambda: len(echoed(h, "before")) == 5)

        h.api.down_status = 500  # every Bot API call fails: sendMessage and getUpdates alike
        during = await timed_execs(h, agent, "during", 10)
        await eventually(lambda: h.rt.outbox.failing_since is not None)
        await asyncio.sleep(1.0)  # a while: several failed attempts with back-off
        assert echoed(h, "during") == set()
        assert during < max(1.0, 5 * baseline), (baseline, during)
        failures = h.rt.outbox.failures
        assert failures >= 2

        h.api.down_status = None
        await eventually(lambda: len(echoed(h, "during")) == 10)
        assert not [m for m in h.api.sent if "dropped" in m["plain"]]  # nothing was lost
        # polling recovered too: a command works again
        message = h.api.send_text("/status", user_id=ADMIN_ID, chat_id=CHAT_ID)
        assert (await h.api.reply_to(message))["plain"].startswith("📋 status")


async def test_telegram_stopped_then_restarted(tg_hub):
    async with tg_hub() as h:
        agent = await permitted_agent(h)
        await h.api.stop()  # connection refused, the long poll cut
        slowest = await timed_execs(h, agent, "gone", 8)
        assert slowest < 1.0
        await asyncio.sleep(1.0)
        await h.api.start()  # same port
        await eventually(lambda: len(echoed(h, "gone")) == 8)
        message = h.api.send_text("@chasclaude status", user_id=ADMIN_ID, chat_id=CHAT_ID)
        assert (await h.api.reply_to(message))["plain"].startswith("📋 status")


async def test_a_slow_telegram_never_slows_a_request(tg_hub):
    async with tg_hub(request_timeout=2.0) as h:
        agent = await permitted_agent(h)
        h.api.delay = 2.5  # every sendMessage takes longer than the client's timeout
        slowest = await timed_execs(h, agent, "slow", 6)
        assert slowest < 1.0
        h.api.delay = 0
        await eventually(lambda: len(echoed(h, "slow")) == 6, timeout=20)


async def test_overflow_is_counted_and_reported_once_telegram_is_back(tg_hub):
    async with tg_hub(outbox_size=5) as h:
        agent = await permitted_agent(h)
        h.api.down_status = 500
        await timed_execs(h, agent, "first", 1)
        await eventually(lambda: h.rt.outbox.failing_since is not None)
        slowest = await timed_execs(h, agent, "burst", 11)
        assert slowest < 1.0
        # one echo is being retried, five wait in the outbox, six were dropped
        assert h.rt.outbox.dropped_total == 6
        h.api.down_status = None
        notice = await h.api.wait_sent(lambda m: "dropped" in m["plain"])
        # the report leads the next message after the first successful send
        assert notice["plain"].splitlines()[0] == "⚠️ 6 echo messages were dropped while Telegram was unreachable"
        assert notice["disable_notification"] is False
        await eventually(lambda: len(echoed(h, "burst")) == 5)
        assert echoed(h, "first") == {"$ echo first-0"}
        admin = await h.token("chasclaude", admin=True)
        status, body = await h.call("GET", "/api/telegram/status", admin)
        assert status == 200 and body["telegram"]["outbox"]["dropped_total"] == 6
        assert body["telegram"]["outbox"]["dropped_unreported"] == 0


async def test_429_retry_after_is_honoured_for_echoes_and_replies(tg_hub):
    async with tg_hub() as h:
        agent = await permitted_agent(h)
        h.api.script.append((429, 1))
        await timed_execs(h, agent, "flood", 1)
        await eventually(lambda: echoed(h, "flood"))
        sends = [(status, at) for method, _, status, at in h.api.calls if method == "sendMessage"]
        limited = [i for i, (status, _) in enumerate(sends) if status == 429]
        assert len(limited) == 1 and sends[limited[0] + 1][0] == 200
        assert sends[limited[0] + 1][1] - sends[limited[0]][1] >= 0.95  # waited retry_after
        assert len([m for m in h.api.sent if "$ echo flood-0" in m["plain"]]) == 1

        h.api.script.append((429, 1))
        started = time.monotonic()
        message = h.api.send_text("@chasclaude status", user_id=ADMIN_ID, chat_id=CHAT_ID)
        await h.api.reply_to(message)
        assert time.monotonic() - started >= 0.95
        assert len(h.api.replies_to(message)) == 1


async def test_the_hub_starts_and_serves_while_telegram_is_unreachable(tg_hub, botapi):
    await botapi.stop()
    started = time.monotonic()
    async with tg_hub(wait_ready=False) as h:
        assert time.monotonic() - started < 5
        assert not h.rt.ready.is_set()
        agent = await h.token("managerclaude")
        status, _ = await h.call("GET", "/api/machines", agent)
        assert status == 200
        admin = await h.token("chasclaude", admin=True)
        await h.call("POST", "/api/permit", admin, {"source": "managerclaude", "target": "box1"})
        await botapi.start()
        await eventually(lambda: h.rt.ready.is_set())
        echo = await h.api.wait_sent(lambda m: "permit by chasclaude" in m["plain"])
        assert echo["chat_id"] == CHAT_ID
