"""Delivery apart from reading: ``POST /api/inbox/pushed`` and ``GET /api/inbox?unpushed=true``.

The MCP channel marks a message pushed once its notification was written into the agent's session;
the message stays unread (the session may have dropped it) until the agent acks it. docs/api.md,
docs/mcp.md "Channel". Runs on SQLite and PostgreSQL (db_kind).
"""

import asyncio
import time

import pytest


async def _send(h, token, to, text):
    status, body = await h.call("POST", "/api/send", token, {"to": to, "message": text})
    assert status == 200, body
    return body["id"]


async def test_pushed_marks_delivery_and_leaves_the_message_unread(hub_harness):
    async with hub_harness() as h:
        a, b = await h.token("alpha"), await h.token("beta")
        ids = [await _send(h, a, "beta", text) for text in ("one", "two", "three")]
        status, body = await h.call("GET", "/api/inbox?unpushed=true", b)
        assert status == 200 and [(m["id"], m["pushed"]) for m in body["messages"]] == [(i, False) for i in ids]
        status, body = await h.call("POST", "/api/inbox/pushed", b, {"ids": ids[:2]})
        assert status == 200 and body == {"ok": True, "pushed": ids[:2], "ignored": []}
        # left out of the push loop's wait from now on ...
        _, body = await h.call("GET", "/api/inbox?unpushed=true", b)
        assert [m["id"] for m in body["messages"]] == [ids[2]]
        # ... yet still unread for everything else, and marked
        _, body = await h.call("GET", "/api/inbox", b)
        assert [(m["id"], m["pushed"]) for m in body["messages"]] == [(ids[0], True), (ids[1], True), (ids[2], False)]
        _, machines = await h.call("GET", "/api/machines", a)
        assert {m["name"]: m["unread"] for m in machines["machines"]}["beta"] == 3
        # marking again changes nothing (the first push's time is kept)
        status, body = await h.call("POST", "/api/inbox/pushed", b, {"ids": [ids[0], ids[0]]})
        assert status == 200 and body["pushed"] == [] and body["ignored"] == [ids[0]]
        # read only when acked
        status, body = await h.call("POST", "/api/inbox/ack", b, {"ids": [ids[0]]})
        assert body["acked"] == [ids[0]]
        _, body = await h.call("GET", "/api/inbox", b)
        assert [m["id"] for m in body["messages"]] == ids[1:]
        status, body = await h.call("POST", "/api/inbox/pushed", b, {"ids": []})
        assert status == 200 and body["pushed"] == [] and body["ignored"] == []


async def test_another_nodes_ids_are_ignored(hub_harness):
    async with hub_harness() as h:
        a, b, c = await h.token("alpha"), await h.token("beta"), await h.token("gamma")
        to_beta = await _send(h, a, "beta", "for beta")
        own = await _send(h, a, "gamma", "for gamma")
        status, body = await h.call("POST", "/api/inbox/pushed", c, {"ids": [to_beta, own, 999999]})
        assert status == 200 and body["pushed"] == [own] and body["ignored"] == [to_beta, 999999]
        # the sender cannot mark what it sent either
        status, body = await h.call("POST", "/api/inbox/pushed", a, {"ids": [to_beta]})
        assert status == 200 and body["pushed"] == [] and body["ignored"] == [to_beta]
        _, body = await h.call("GET", "/api/inbox?unpushed=true", b)
        assert [(m["id"], m["pushed"]) for m in body["messages"]] == [(to_beta, False)]
        # the largest id is valid (and nobody's), an integral number counts as an integer (JSON Schema)
        status, body = await h.call("POST", "/api/inbox/pushed", b, {"ids": [2**63 - 1, float(to_beta)]})
        assert status == 200 and body["pushed"] == [to_beta] and body["ignored"] == [2**63 - 1], body


async def test_unpushed_long_poll_wakes_only_for_new_messages(hub_harness):
    async with hub_harness() as h:
        a, b = await h.token("alpha"), await h.token("beta")
        old = await _send(h, a, "beta", "already pushed")
        await h.call("POST", "/api/inbox/pushed", b, {"ids": [old]})
        # an unread but pushed message does not end the wait
        started = time.monotonic()
        status, body = await h.call("GET", "/api/inbox?unpushed=true&wait=0.6&ack=false", b)
        assert status == 200 and body["messages"] == [] and time.monotonic() - started >= 0.5
        waiter = asyncio.create_task(h.call("GET", "/api/inbox?unpushed=true&wait=10&ack=false", b))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        started = time.monotonic()
        new = await _send(h, a, "beta", "wake up")
        status, body = await asyncio.wait_for(waiter, 5)
        assert status == 200 and [m["id"] for m in body["messages"]] == [new]
        assert time.monotonic() - started < 3


async def test_unpushed_with_ack_and_authenticated_only(hub_harness):
    async with hub_harness(messaging={"allow_unauthenticated": True}) as h:
        a, b = await h.token("alpha"), await h.token("beta")
        status, v1 = await h.call("POST", "/api/send", None, {"from": "oldclient", "to": "beta", "message": "v1"})
        assert status == 200, v1
        pushed = await _send(h, a, "beta", "pushed")
        fresh = await _send(h, a, "beta", "fresh")
        await h.call("POST", "/api/inbox/pushed", b, {"ids": [pushed]})
        _, body = await h.call("GET", "/api/inbox?unpushed=true&authenticated_only=true", b)
        assert [m["id"] for m in body["messages"]] == [fresh]
        # ack with unpushed marks read exactly what it returned
        _, body = await h.call("GET", "/api/inbox?unpushed=true&ack=true", b)
        assert [m["id"] for m in body["messages"]] == [v1["id"], fresh]
        _, body = await h.call("GET", "/api/inbox", b)
        assert [(m["id"], m["pushed"]) for m in body["messages"]] == [(pushed, True)]


@pytest.mark.parametrize("payload", [
    {},
    {"ids": "1"},
    {"ids": [0]},
    {"ids": [-3]},
    {"ids": [True]},
    {"ids": ["1"]},
    {"ids": [1.5]},
    {"ids": [None]},
    {"ids": [2**63]},
    {"ids": list(range(1, 1002))},
    {"ids": [1], "extra": True},
])
async def test_pushed_refuses_bad_input(hub_harness, payload):
    async with hub_harness() as h:
        a, b = await h.token("alpha"), await h.token("beta")
        sent = await _send(h, a, "beta", "untouched")
        status, body = await h.call("POST", "/api/inbox/pushed", b, payload)
        assert status == 400, body
        assert body["ok"] is False and body["code"] in ("invalid_field", "invalid_body", "missing_field", "unknown_field") \
            and body["error"], body
        _, inbox = await h.call("GET", "/api/inbox", b)
        assert [(m["id"], m["pushed"]) for m in inbox["messages"]] == [(sent, False)]


async def test_pushed_needs_a_token_and_unpushed_a_boolean(hub_harness):
    async with hub_harness(messaging={"allow_unauthenticated": True}) as h:
        b = await h.token("beta")
        status, body = await h.call("POST", "/api/inbox/pushed", None, {"ids": [1]})
        assert status == 401 and body["ok"] is False
        status, body = await h.call("GET", "/api/inbox?unpushed=maybe", b)
        assert status == 400 and body["code"] == "invalid_field" and body.get("field") == "unpushed", body
        status, body = await h.call("POST", "/api/inbox/pushed", b, {"ids": list(range(1, 1001))})
        assert status == 200 and body["pushed"] == [] and len(body["ignored"]) == 1000
