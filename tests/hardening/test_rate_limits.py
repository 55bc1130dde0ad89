"""Per-node rate limits ([limits] rate_per_minute, rate_burst): 429 rate_limited with Retry-After,
recorded (once per episode, with a count), per node, public endpoints exempt, 0 = off."""

from __future__ import annotations

import asyncio

import pytest

import claude_net_activity
from claude_net.ratelimit import RateLimiter

pytestmark = pytest.mark.db("sqlite")


def test_token_bucket_arithmetic():
    limiter = RateLimiter(per_minute=60, burst=3)
    assert [limiter.take("a", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", now=100.0) == pytest.approx(1.0)  # empty: one token per second
    assert limiter.take("b", now=100.0) == 0.0  # buckets are per node
    assert limiter.take("a", now=100.5) == pytest.approx(0.5)
    assert limiter.take("a", now=101.0) == 0.0  # refilled one token
    assert limiter.take("a", now=1000.0) == 0.0  # refill is capped at the burst
    assert [limiter.take("a", now=1000.0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("a", now=1000.0) > 0
    off = RateLimiter(per_minute=0, burst=1)
    assert not off.enabled and all(off.take("a") == 0.0 for _ in range(1000))


def test_refusals_are_recorded_once_per_window():
    limiter = RateLimiter(per_minute=60, burst=1)
    assert limiter.should_record("a", now=0.0) == 1
    assert [limiter.should_record("a", now=t) for t in (1.0, 2.0, 3.0)] == [0, 0, 0]
    assert limiter.should_record("a", now=RateLimiter.RECORD_EVERY + 0.1) == 4  # the count of the quiet ones


def test_buckets_are_bounded():
    limiter = RateLimiter(per_minute=60, burst=2)
    limiter.MAX_BUCKETS = 100
    for i in range(1000):
        limiter.take(f"n{i}", now=float(i))
    assert len(limiter._buckets) <= 101


async def test_a_flooding_node_gets_429_with_retry_after_and_others_do_not(hub_harness):
    async with hub_harness(plugins=[claude_net_activity], limits={"rate_per_minute": 60, "rate_burst": 5}) as h:
        flood = await h.token("flood")
        calm = await h.token("calm")
        boss = await h.token("boss", admin=True)
        statuses = []
        for _ in range(25):
            response = await h.client.get("/api/whoami", headers={"Authorization": f"Bearer {flood}"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                last = response
        assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}, statuses
        body = await last.get_json()
        assert body["code"] == "rate_limited" and "flood" in body["error"] and body["retryAfter"] >= 1
        assert last.headers["Retry-After"] == "1"  # 60/min: a token a second
        assert last.headers["X-Request-Id"]
        # another node, the public endpoints and a message to the flooder are unaffected
        status, _ = await h.call("GET", "/api/whoami", calm)
        assert status == 200
        for _ in range(20):
            status, _ = await h.call("GET", "/api/health")
            assert status == 200
        status, _ = await h.call("POST", "/api/send", calm, {"to": "flood", "message": "slow down"})
        assert status == 200
        # recorded: one row for the episode (not one per refused request: that would amplify the flood)
        status, body = await h.call("GET", "/api/activity?type=rate_limit", boss)
        rows = body["events"]
        assert len(rows) == 1 and rows[0]["from"] == "flood" and rows[0]["result"] == "denied", rows
        assert "GET /api/whoami" in rows[0]["detail"] and rows[0]["data"]["refused"] == 1
        await asyncio.sleep(1.05)  # one token back
        status, _ = await h.call("GET", "/api/whoami", flood)
        assert status == 200


async def test_every_authenticated_route_is_limited_and_zero_is_off(hub_harness):
    async with hub_harness(limits={"rate_per_minute": 6, "rate_burst": 1}) as h:
        a = await h.token("alpha")
        assert (await h.call("GET", "/api/inbox", a))[0] == 200
        for method, path, body in [("GET", "/api/inbox", None), ("POST", "/api/send", {"to": "alpha", "message": "x"}),
                                   ("GET", "/api/machines", None), ("POST", "/api/exec", {"target": "x", "command": "y"})]:
            status, answer = await h.call(method, path, a, body)
            assert status == 429 and answer["code"] == "rate_limited", (path, answer)
            assert answer["retryAfter"] == 10
    async with hub_harness(limits={"rate_per_minute": 0, "rate_burst": 1}) as h:
        a = await h.token("alpha")
        for _ in range(300):
            status, _ = await h.call("GET", "/api/whoami", a)
            assert status == 200


async def test_invalid_tokens_are_not_counted_against_the_node(hub_harness):
    """The bucket is keyed by the authenticated node: garbage tokens cannot drain someone's bucket."""
    async with hub_harness(limits={"rate_per_minute": 60, "rate_burst": 2}) as h:
        a = await h.token("alpha")
        for _ in range(10):
            status, _ = await h.call("GET", "/api/whoami", a[:-4] + "AAAA")
            assert status == 401
        assert [(await h.call("GET", "/api/whoami", a))[0] for _ in range(2)] == [200, 200]


def test_the_defaults_are_generous_and_documented():
    from claude_net.config import load_settings

    limits = load_settings(None, environ={}).limits
    assert limits.rate_per_minute >= 6000 and limits.rate_burst >= 100 and limits.body_timeout == 30.0
