"""The permission relay: Claude Code's permission prompts, filed by ``claude-net-mcp --permission-relay``
as agent_tool approvals on a real hub (the approvals plugin, SQLite and PostgreSQL), decided by the
admin (HTTP API, or a button in the Telegram stand-in), answered back to the client as
``notifications/claude/channel/permission``. Docs: docs/mcp.md "Permission relay"."""

from __future__ import annotations

import time

import anyio
import pytest

from test_channel_support import api, channel_hub, channel_session

REQUEST = "notifications/claude/channel/permission_request"
#: seconds a pending approval lives on the test hub (short, for the expiry case)
EXPIRY = 6


def prompt(request_id: str, command: str = "ls -la /etc") -> dict:
    """What Claude Code 2.1.197 sends: a 5-letter id, the tool, its description, a JSON preview."""
    return {"request_id": request_id, "tool_name": "Bash", "description": f"Run {command}",
            "input_preview": '{"command": "' + command + '"}'}


@pytest.fixture(scope="module")
def hub(package_db_kind, tmp_path_factory):
    from claude_net.testing import database_for

    config = (f'admins = ["chasclaude"]\n[approvals]\nexpiry = {EXPIRY}\nrelay = ["alpha", "beta", "delta"]\n')
    with database_for(package_db_kind, tmp_path_factory.mktemp("relay-db")) as url:
        with channel_hub(config, url) as h:
            h.tokens = {name: h.token(name) for name in ("chasclaude", "alpha", "beta", "gamma", "delta")}
            yield h


async def until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await anyio.sleep(0.02)
    return result


def approvals(hub, request_id: str, state: str | None = None) -> list[dict]:
    status, body = api(hub.url, "GET", "/api/approvals" + (f"?state={state}" if state else ""),
                       hub.tokens["chasclaude"])
    assert status == 200, body
    return [a for a in body["approvals"] if a.get("request_id") == request_id]


def decide(hub, approval_id: str, decision: str) -> dict:
    status, body = api(hub.url, "POST", f"/api/approvals/{approval_id}", hub.tokens["chasclaude"],
                       {"decision": decision})
    assert status == 200, body
    return body["approval"]


def feed(hub, approval_id: str) -> list[tuple[str, str]]:
    status, body = api(hub.url, "GET", "/api/activity?hours=1&type=approval&limit=500", hub.tokens["chasclaude"])
    assert status == 200, body
    return [(e["result"], (e.get("data") or {}).get("state") or "") for e in body["events"]
            if (e.get("data") or {}).get("approval_id") == approval_id]


@pytest.mark.parametrize("decision, behavior", [("approve", "allow"), ("deny", "deny")])
async def test_the_admins_decision_comes_back_as_the_verdict(hub, decision, behavior):
    request_id = "abcd" + decision[0]
    async with channel_session(hub.url, hub.tokens["beta"], "--permission-relay") as ch:
        await ch.notify(REQUEST, prompt(request_id))
        [pending] = await until(lambda: approvals(hub, request_id, "pending"), 10, "the pending approval")
        assert pending["kind"] == "agent_tool" and pending["requester"] == "beta"
        assert pending["particulars"]["tool_name"] == "Bash"
        assert pending["particulars"]["input_preview"] == '{"command": "ls -la /etc"}'
        assert ch.tap.permission == []  # nothing is answered before the admin decides
        decide(hub, pending["id"], decision)
        await until(lambda: ch.tap.permission, 10, "the verdict")
        await anyio.sleep(0.5)
    assert ch.tap.permission == [{"request_id": request_id, "behavior": behavior}]
    states = [s for _, s in feed(hub, pending["id"])]
    assert "requested" in states and ("approved" if decision == "approve" else "denied") in states


async def test_an_undecided_prompt_expires_and_is_denied(hub):
    request_id = "expzz"
    async with channel_session(hub.url, hub.tokens["alpha"], "--permission-relay") as ch:
        await ch.notify(REQUEST, prompt(request_id, "rm -rf /tmp/x"))
        [pending] = await until(lambda: approvals(hub, request_id, "pending"), 10, "the pending approval")
        started = time.monotonic()
        await until(lambda: ch.tap.permission, EXPIRY + 20, "the verdict after expiry")
        assert time.monotonic() - started >= EXPIRY - 2  # not before it expired
    assert ch.tap.permission == [{"request_id": request_id, "behavior": "deny"}]
    assert approvals(hub, request_id)[0]["state"] == "expired"


async def test_a_node_the_admin_does_not_let_relay_is_denied_at_once_and_recorded(hub):
    request_id = "refus"
    async with channel_session(hub.url, hub.tokens["gamma"], "--permission-relay") as ch:
        await ch.notify(REQUEST, prompt(request_id))
        await until(lambda: ch.tap.permission, 5, "the immediate deny")
        stderr = ch.stderr()
    assert ch.tap.permission == [{"request_id": request_id, "behavior": "deny"}]
    assert approvals(hub, request_id) == []
    assert "the hub refused to relay permission prompt refus (Bash)" in stderr and "answered deny" in stderr
    status, body = api(hub.url, "GET", "/api/activity?hours=1&result=denied&limit=500", hub.tokens["chasclaude"])
    assert any((e.get("data") or {}).get("code") == "relay_refused" and e["from"] == "gamma" for e in body["events"])


async def test_relay_off_on_the_agent_side_files_nothing(hub):
    request_id = "offzz"
    async with channel_session(hub.url, hub.tokens["delta"]) as ch:
        assert "claude/channel/permission" not in (ch.init.capabilities.experimental or {})
        await ch.notify(REQUEST, prompt(request_id))
        await anyio.sleep(2.0)
        assert ch.tap.permission == []
    assert approvals(hub, request_id) == []


async def test_a_session_that_ends_cancels_its_pending_prompts(hub):
    request_id = "gonez"
    async with channel_session(hub.url, hub.tokens["delta"], "--permission-relay") as ch:
        await ch.notify(REQUEST, prompt(request_id))
        await until(lambda: approvals(hub, request_id, "pending"), 10, "the pending approval")
    await until(lambda: approvals(hub, request_id)[0]["state"] == "cancelled", 10, "the cancellation")


async def test_the_admin_approves_with_the_telegram_button(database_url, tmp_path):
    """The issue's end-to-end case: a permission_request from the client becomes an approval card in the
    admin chat (the real python-telegram-bot against the local Bot API stand-in), the admin presses
    its *Approve* button, and the client receives ``behavior: allow`` with the same request_id."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "telegram"))
    from tg_botapi import FakeBotAPI
    from tg_helpers import ADMIN_ID, CHAT_ID, TOKEN

    bot = FakeBotAPI(TOKEN)
    await bot.start()
    config = ('admins = ["chasclaude"]\n[approvals]\nexpiry = 60\n'
              f'[telegram]\ntoken = "{TOKEN}"\nchat_id = {CHAT_ID}\nadmin_ids = [{ADMIN_ID}]\n'
              f'base_url = "{bot.base_url}"\npoll_timeout = 2\nrequest_timeout = 3.0\nretry_initial = 0.05\n'
              'retry_max = 0.4\nedit_interval = 0.2\n')
    try:
        cm = channel_hub(config, database_url)
        hub = await anyio.to_thread.run_sync(cm.__enter__)
        try:
            token = await anyio.to_thread.run_sync(hub.token, "seanclaude")
            async with channel_session(hub.url, token, "--permission-relay") as ch:
                await ch.notify(REQUEST, prompt("tgokz", "make deploy"))
                card = await bot.wait_sent(lambda m: "make deploy" in m["plain"] and m.get("markup"), timeout=20)
                assert "Bash" in card["plain"] and "seanclaude" in card["plain"]
                # the approve button of the card (its label differs between kinds; its data ends in ":once")
                approve = next(data for row in bot.messages[card["message_id"]]["markup"] for _, data in row
                               if data.endswith(":once"))
                bot.press(card["message_id"], approve, user_id=ADMIN_ID)
                await until(lambda: ch.tap.permission, 15, "the verdict from the button")
                await bot.wait_message(card["message_id"], lambda m: not m["markup"], timeout=15)
            assert ch.tap.permission == [{"request_id": "tgokz", "behavior": "allow"}]
            status, body = api(hub.url, "GET", "/api/activity?hours=1&type=approval&limit=50",
                               await anyio.to_thread.run_sync(hub.token, "chasclaude"))
            assert any((e.get("data") or {}).get("decided_via") == "telegram" for e in body["events"]), body
        finally:
            await anyio.to_thread.run_sync(cm.__exit__, None, None, None)
    finally:
        await bot.stop()
