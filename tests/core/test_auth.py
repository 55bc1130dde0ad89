"""Identity: tokens, the public allow-list, `from` spoofing, admin-only routes."""

import re

import pytest

from claude_net import auth
from claude_net.http import PUBLIC_PATHS

from .testbox import Recorder, TestBox


async def test_tokens_are_stored_hashed_and_revocable(hub_harness):
    async with hub_harness() as h:
        token = await h.token("alpha")
        assert re.fullmatch(r"cn_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", token)
        rows = await h.hub.db.fetch_all("SELECT * FROM tokens")
        assert token.split("_", 2)[2] not in str(rows)  # the secret is never stored
        assert (await auth.verify_token(h.hub.db, token)).name == "alpha"
        assert await auth.verify_token(h.hub.db, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
        assert await auth.revoke_tokens(h.hub.db, "alpha") == 1
        assert await auth.verify_token(h.hub.db, token) is None
        status, body = await h.call("GET", "/api/inbox", token)
        assert status == 401 and body["code"] == "invalid_token"


async def test_create_twice_needs_replace(hub_harness):
    from claude_net import Conflict

    async with hub_harness() as h:
        await auth.create_token(h.hub.db, "alpha")
        with pytest.raises(Conflict):
            await auth.create_token(h.hub.db, "alpha")
        new = await auth.create_token(h.hub.db, "alpha", replace=True)
        assert len(await auth.list_tokens(h.hub.db)) == 1
        assert (await auth.verify_token(h.hub.db, new)).name == "alpha"


@pytest.mark.parametrize("header", ["", "Bearer", "Basic abc", "Bearer    ", "Bearer not-a-token", "Bearer cn_x_y"])
async def test_bad_authorization_headers_are_401(hub_harness, header):
    async with hub_harness() as h:
        status, body = await h.call("GET", "/api/inbox", None, headers={"Authorization": header} if header else {})
        assert status == 401 and body["ok"] is False and body["code"] in ("missing_token", "bad_auth_header",
                                                                             "invalid_token")


async def test_every_route_requires_a_token_except_the_allow_list(hub_harness):
    """Walk the app's URL map: anything not on the allow-list must answer 401 without a token."""
    async with hub_harness(plugins=[TestBox()], load_entrypoints=True) as h:
        checked = 0
        for rule in h.app.url_map.iter_rules():
            if rule.endpoint == "static":
                continue
            path = re.sub(r"<[^>]+>", "x", rule.rule)
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                status, _ = await h.call(method, path, None, {} if method != "GET" else None)
                if rule.rule in PUBLIC_PATHS:
                    assert status == 200, rule.rule
                else:
                    assert status == 401, f"{method} {rule.rule} answered {status} without a token"
                checked += 1
        assert checked >= 12


async def test_public_allow_list_is_enforced_for_plugins(hub_harness):
    from claude_net import Route, hookimpl

    class Sneaky:
        __name__ = "sneaky"

        @hookimpl
        def register_routes(self):
            async def handler(ctx):
                return {}
            return [Route("GET", "/api/backdoor", handler, auth=False)]

    with pytest.raises(ValueError, match="public allow-list"):
        async with hub_harness(plugins=[Sneaky()]):
            pass


async def test_spoofed_from_is_refused_and_recorded(hub_harness):
    rec = Recorder()
    async with hub_harness(plugins=[rec]) as h:
        a = await h.token("alpha")
        await h.token("beta")
        status, body = await h.call("POST", "/api/send", a, {"from": "beta", "to": "beta", "message": "x"})
        assert status == 403 and body["code"] == "from_mismatch"
        assert [(e[0], e[1], e[3]) for e in rec.events] == [("auth", "alpha", "denied")]
        status, _ = await h.call("POST", "/api/send", a, {"from": "alpha", "to": "beta", "message": "x"})
        assert status == 200


async def test_invalid_token_attempt_is_recorded(hub_harness):
    rec = Recorder()
    async with hub_harness(plugins=[rec]) as h:
        await h.call("GET", "/api/inbox", "cn_000000000000_" + "A" * 43)
        assert [(e[0], e[3]) for e in rec.events] == [("auth", "denied")]


async def test_config_admins_are_admins(hub_harness):
    async with hub_harness(plugins=[TestBox()], admins=["chasclaude"]) as h:
        tok = await h.token("chasclaude")
        status, _ = await h.call("POST", "/api/container/stop", tok, {"name": "box1"})
        assert status == 200


async def test_a_revoke_by_another_process_fails_the_very_next_call(hub_harness, database_url, tmp_path):
    """The hub may keep verified tokens in memory (SQLite), but a revoke made elsewhere — here
    ``claude-net token revoke`` in its own process, on the same database — must fail the next call."""
    import subprocess
    import sys

    async with hub_harness() as h:
        token = await h.token("alpha")
        for _ in range(3):  # verified, and (on SQLite) cached
            assert (await h.call("GET", "/api/inbox", token))[0] == 200
        config = tmp_path / "cli.toml"
        config.write_text(f'database_url = "{database_url}"\n')
        out = subprocess.run([sys.executable, "-m", "claude_net.cli", "-c", str(config), "token", "revoke", "alpha"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        status, body = await h.call("GET", "/api/inbox", token)
        assert status == 401 and body["code"] == "invalid_token"
        new = await auth.create_token(h.hub.db, "alpha")
        assert (await h.call("GET", "/api/inbox", new))[0] == 200


async def test_cached_tokens_expire_even_when_nothing_signals(hub_harness, monkeypatch):
    """A change no process signals (plain SQL on the table) still takes effect: on PostgreSQL at once
    (no cache there), on SQLite once the cache entry's short TTL is over."""
    import asyncio

    monkeypatch.setattr(auth.TokenCache, "TTL", 0.3)
    async with hub_harness() as h:
        token = await h.token("alpha")
        assert (await h.call("GET", "/api/inbox", token))[0] == 200
        await h.hub.db.execute("UPDATE tokens SET revoked_at = 'now' WHERE name = 'alpha'")
        cached = h.hub.db.is_sqlite
        assert (await h.call("GET", "/api/inbox", token))[0] == (200 if cached else 401)
        await asyncio.sleep(0.35)
        assert (await h.call("GET", "/api/inbox", token))[0] == 401


async def test_the_token_cache_keeps_only_valid_tokens_and_no_secrets(hub_harness):
    async with hub_harness() as h:
        token = await h.token("alpha")
        await h.call("GET", "/api/inbox", token)
        await h.call("GET", "/api/inbox", token[:-1] + ("A" if token[-1] != "A" else "B"))
        entries = h.hub._tokens._entries
        assert len(entries) == (1 if h.hub.db.is_sqlite else 0)
        assert token not in repr(entries) and token.split("_", 2)[2] not in repr(entries)
