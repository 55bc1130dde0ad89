"""Approval cards with two hub replicas on PostgreSQL: the request waits on the replica that does
not talk to Telegram; the card is posted and edited by the one that does (echoes and card updates
travel over the bus), a press there releases the request waiting on the other, and a decision
taken through the API of the other replica edits the same message."""

from __future__ import annotations

import asyncio

import pytest

from tests.replicas import call
from tg_helpers import ADMIN_ID
from tg_replicas import telegram_replicas

pytestmark = [pytest.mark.postgres, pytest.mark.db("postgresql")]


async def test_cards_follow_approvals_across_replicas(database_url, tmp_path):
    async with telegram_replicas(database_url, tmp_path, plugins=["permissions", "activity", "approvals", "telegram"],
                                 telegram="edit_interval = 0.2\n") as replicas:
        api, follower = replicas.api, replicas.follower
        admin = await asyncio.to_thread(follower.token, "chasclaude", admin=True)
        agent = await asyncio.to_thread(follower.token, "agentx")
        status, body = await asyncio.to_thread(call, follower, "POST", "/api/permit", admin,
                                               {"source": "agentx", "target": "webbox", "capabilities": ["exec"],
                                                "ask": ["exec"]})
        assert status == 200, body

        # 1. the request waits on the follower; the leader posts the card; a press there denies it
        waiting = asyncio.ensure_future(asyncio.to_thread(
            call, follower, "POST", "/api/exec", agent, {"target": "webbox", "command": "deploy one",
                                                         "approval_wait": 30}))
        card = await api.wait_sent(lambda m: "$ deploy one" in m["plain"], timeout=20)
        mid = card["message_id"]
        assert api.buttons(mid) == ["✅ Approve once", "✅ Approve for 1 h", "⛔ Deny"]
        query = api.press(mid, "⛔ Deny", user_id=ADMIN_ID)
        assert (await api.wait_answer(query, timeout=20))["text"] == "⛔ denied"
        status, body = await asyncio.wait_for(waiting, 20)
        assert status == 403 and body["code"] == "approval_denied", body
        await api.wait_message(mid, lambda m: "⛔ denied by chasclaude via telegram" in m["plain"])

        # 2. a decision through the follower's API edits the card the leader sent
        status, body = await asyncio.to_thread(call, follower, "POST", "/api/exec", agent,
                                               {"target": "webbox", "command": "deploy two", "approval_wait": 0})
        assert status == 202, body
        card = await api.wait_sent(lambda m: "$ deploy two" in m["plain"], timeout=20)
        status, body = await asyncio.to_thread(call, follower, "POST", f"/api/approvals/{body['approval']['id']}",
                                               admin, {"decision": "deny"})
        assert status == 200, body
        shown = await api.wait_message(card["message_id"], lambda m: "denied" in m["plain"], timeout=20)
        assert shown["plain"].splitlines()[-1] == "⛔ denied by chasclaude via http"
        assert api.buttons(card["message_id"]) == []
        assert len([m for m in api.sent if "$ deploy two" in m["plain"]]) == 1  # edited, not sent again
