import asyncio
import time

import pytest


async def test_send_inbox_ack_roundtrip(hub_harness):
    async with hub_harness() as h:
        a, b = await h.token("alpha"), await h.token("beta")
        ids = []
        for text in ("one", "two", "three"):
            status, body = await h.call("POST", "/api/send", a, {"to": "beta", "message": text})
            assert status == 200
            ids.append(body["id"])
        status, body = await h.call("GET", "/api/inbox?limit=2", b)
        assert [m["message"] for m in body["messages"]] == ["one", "two"]
        m = body["messages"][0]
        assert set(m) >= {"id", "from", "to", "message", "time"} and m["from"] == "alpha" and m["to"] == "beta"
        # without ack nothing is consumed
        status, body = await h.call("GET", "/api/inbox?limit=2&ack=true", b)
        assert [m["message"] for m in body["messages"]] == ["one", "two"]
        status, body = await h.call("GET", "/api/inbox", b)
        assert [m["message"] for m in body["messages"]] == ["three"]
        # ack after processing: only the caller's own messages
        status, body = await h.call("POST", "/api/inbox/ack", a, {"ids": [ids[2]]})
        assert body["acked"] == [] and body["ignored"] == [ids[2]]
        status, body = await h.call("POST", "/api/inbox/ack", b, {"ids": [ids[2]]})
        assert body["acked"] == [ids[2]]
        status, body = await h.call("GET", "/api/inbox", b)
        assert body["messages"] == []


async def test_broadcast_reaches_every_known_node_but_sender(hub_harness):
    async with hub_harness() as h:
        toks = {n: await h.token(n) for n in ("alpha", "beta", "gamma")}
        status, body = await h.call("POST", "/api/send", toks["alpha"], {"to": "*", "message": "all hands"})
        assert status == 200 and sorted(body["recipients"]) == ["beta", "gamma"]
        for n in ("beta", "gamma"):
            _, inbox = await h.call("GET", "/api/inbox", toks[n])
            assert [m["message"] for m in inbox["messages"]] == ["all hands"]
        _, inbox = await h.call("GET", "/api/inbox", toks["alpha"])
        assert inbox["messages"] == []


async def test_long_poll_returns_as_soon_as_a_message_arrives(hub_harness):
    async with hub_harness() as h:
        a, b = await h.token("alpha"), await h.token("beta")
        started = time.monotonic()
        waiter = asyncio.create_task(h.call("GET", "/api/inbox?wait=10&ack=true", b))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await h.call("POST", "/api/send", a, {"to": "beta", "message": "wake up"})
        status, body = await asyncio.wait_for(waiter, 5)
        assert status == 200 and [m["message"] for m in body["messages"]] == ["wake up"]
        assert time.monotonic() - started < 3


async def test_long_poll_times_out_empty(hub_harness):
    async with hub_harness() as h:
        b = await h.token("beta")
        started = time.monotonic()
        status, body = await h.call("GET", "/api/inbox?wait=0.5", b)
        assert status == 200 and body["messages"] == [] and 0.4 < time.monotonic() - started < 3


async def test_idempotency_key_stores_once(hub_harness):
    async with hub_harness() as h:
        a, b = await h.token("alpha"), await h.token("beta")
        hdr = {"Idempotency-Key": "k-123"}
        s1, r1 = await h.call("POST", "/api/send", a, {"to": "beta", "message": "once"}, headers=hdr)
        s2, r2 = await h.call("POST", "/api/send", a, {"to": "beta", "message": "once"}, headers=hdr)
        assert s1 == s2 == 200 and r1["id"] == r2["id"] and r2["duplicate"] is True
        _, inbox = await h.call("GET", "/api/inbox", b)
        assert len(inbox["messages"]) == 1


@pytest.mark.parametrize(
    "payload, status, code",
    [
        ({"to": "nobody", "message": "x"}, 404, "unknown_node"),
        ({"to": "beta", "message": ""}, 400, "invalid_field"),
        ({"to": "beta"}, 400, "missing_field"),
        ({"to": "BETA", "message": "x"}, 400, "invalid_field"),
        ({"to": "beta; rm -rf /", "message": "x"}, 400, "invalid_field"),
        ({"to": ["beta"], "message": "x"}, 400, "invalid_field"),
        ({"to": "beta", "message": "x", "extra": True}, 400, "unknown_field"),
        ({"to": "beta", "message": "x" * 70000}, 413, "too_large"),
    ],
)
async def test_send_validation(hub_harness, payload, status, code):
    async with hub_harness() as h:
        a = await h.token("alpha")
        await h.token("beta")
        got, body = await h.call("POST", "/api/send", a, payload)
        assert (got, body["code"]) == (status, code), body


async def test_machines_lists_token_holders_with_unread(hub_harness):
    async with hub_harness() as h:
        a, b = await h.token("alpha"), await h.token("beta")
        await h.call("POST", "/api/send", a, {"to": "beta", "message": "x"})
        status, body = await h.call("GET", "/api/machines", a)
        rows = {m["name"]: m for m in body["machines"]}
        assert rows["beta"]["unread"] == 1 and rows["alpha"]["unread"] == 0
        assert rows["alpha"]["lastSeen"] is not None and rows["beta"]["backend"] == "hub"


async def test_legacy_unauthenticated_messaging_is_off_by_default(hub_harness):
    async with hub_harness() as h:
        await h.token("beta")
        status, body = await h.call("POST", "/api/send", None, {"from": "alpha", "to": "beta", "message": "x"})
        assert status == 401 and body["code"] == "missing_token"


async def test_legacy_unauthenticated_messaging_opt_in(hub_harness):
    async with hub_harness(messaging={"allow_unauthenticated": True}) as h:
        b = await h.token("beta")
        status, body = await h.call("POST", "/api/send", None, {"from": "oldclient", "to": "beta", "message": "v1"})
        assert status == 200, body
        _, inbox = await h.call("GET", "/api/inbox", b)
        assert inbox["messages"][0]["unauthenticated"] is True and inbox["messages"][0]["from"] == "oldclient"
        # never for exec, files or admin routes
        status, body = await h.call("POST", "/api/exec", None, {"from": "oldclient", "target": "beta", "command": "id"})
        assert status == 401
        # a bad token is never downgraded to the legacy path
        status, _ = await h.call("GET", "/api/inbox", "cn_000000000000_" + "A" * 43)
        assert status == 401
        # a node that has a token cannot be impersonated through the legacy path
        status, body = await h.call("GET", "/api/inbox?from=beta", None)
        assert status == 401 and "has a token" in body["error"]
        status, _ = await h.call("POST", "/api/send", None, {"from": "beta", "to": "beta", "message": "spoof"})
        assert status == 401
