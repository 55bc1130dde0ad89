"""Webhook mode: the hub serves POST /api/telegram/webhook, checks Telegram's secret-token header,
and registers itself with setWebhook at startup. Also: the idle plugin and the status route."""

from __future__ import annotations

import json
import logging

import claude_net_activity
import claude_net_permissions
import claude_net_telegram
from tg_helpers import ADMIN_ID, CHAT_ID, TOKEN, activity_rows, eventually

URL = "https://hub.example.org/api/telegram/webhook"
SECRET = "s3cret-Webhook_value-0123456789"
HEADER = "X-Telegram-Bot-Api-Secret-Token"
PATH = "/api/telegram/webhook"


def update(api, text, update_id, **kw):
    return {"update_id": update_id, "message": api.message(text, user_id=ADMIN_ID, chat_id=CHAT_ID, **kw)}


async def test_webhook_mode_with_good_and_bad_secrets(tg_hub, caplog):
    caplog.set_level(logging.DEBUG)
    async with tg_hub(mode="webhook", webhook_url=URL, webhook_secret=SECRET) as h:
        await eventually(lambda: h.api.webhook is not None)
        assert h.api.webhook["url"] == URL and h.api.webhook["secret_token"] == SECRET
        assert h.api.webhook["allowed_updates"] == ["message", "edited_message", "channel_post",
                                                    "edited_channel_post", "callback_query"]
        assert h.api.calls_of("getUpdates") == []  # no polling in webhook mode

        good = update(h.api, "@chasclaude permit managerclaude all", 9001)
        status, body = await h.call("POST", PATH, None, good, headers={HEADER: SECRET})
        assert (status, body) == (200, {"ok": True})
        reply = await h.api.reply_to(good["message"])
        assert reply["plain"] == "🔑 permitted managerclaude → every node: exec, file_read, file_write"

        # Telegram re-delivers an update whose answer was lost: it runs once
        status, body = await h.call("POST", PATH, None, good, headers={HEADER: SECRET})
        assert (status, body) == (200, {"ok": True, "duplicate": True})

        bad = update(h.api, "@chasclaude revoke managerclaude all", 9002)
        h.hub.auth_refusals.every = 0  # record every refusal (flood throttling is tested below)
        status, body = await h.call("POST", PATH, None, bad, headers={HEADER: SECRET[:-1] + "X"})
        assert status == 403 and body["code"] == "webhook_secret_mismatch"
        status, body = await h.call("POST", PATH, None, bad)
        assert status == 401 and body["code"] == "webhook_secret_missing"
        status, body = await h.call("POST", PATH, None, bad, headers={HEADER: ""})
        assert status == 403
        # a bearer token of the hub is no substitute for the secret
        admin = await h.token("chasclaude", admin=True)
        status, _ = await h.call("POST", PATH, admin, bad)
        assert status == 401

        await eventually(lambda: h.rt.updates.empty())
        assert await h.hub.db.fetch_all("SELECT source, target FROM exec_permissions") != []  # not revoked
        assert h.api.replies_to(bad["message"]) == []
        auth = await activity_rows(h.hub, type="auth", result="denied")
        assert [r["detail"].split(" on ")[0] for r in auth] == [
            f"wrong {HEADER}", f"missing {HEADER}", f"wrong {HEADER}", f"missing {HEADER}"]

        # a flood of bad calls is refused every time but recorded once per window, with a count
        h.hub.auth_refusals.every = 3600
        for _ in range(30):
            status, _ = await h.call("POST", PATH, None, bad, headers={HEADER: "guess"})
            assert status == 403
        auth = await activity_rows(h.hub, type="auth", result="denied")
        assert len(auth) == 4  # the address was recorded moments ago: the flood is only counted
        h.hub.auth_refusals.every = 0  # the window is over: the next refusal records the count
        status, _ = await h.call("POST", PATH, None, bad, headers={HEADER: "guess"})
        auth = await activity_rows(h.hub, type="auth", result="denied")
        assert len(auth) == 5 and auth[-1]["detail"].endswith("(31 refused)"), auth[-1]["detail"]

        for junk in ({"no": "update"}, {"update_id": 9003, "message": {"text": "no chat, no date"}}):
            status, body = await h.call("POST", PATH, None, junk, headers={HEADER: SECRET})
            assert status == 400 and body["code"] == "invalid_update", body
        status, body = await h.call("POST", PATH, None, raw=b"{not json", headers={HEADER: SECRET})
        assert status == 400 and body["code"] == "invalid_json"
    assert SECRET not in caplog.text and TOKEN not in caplog.text


async def test_webhook_route_exists_only_in_webhook_mode(tg_hub):
    async with tg_hub() as h:  # polling
        status, body = await h.call("POST", PATH, None, update(h.api, "/status", 1), headers={HEADER: SECRET})
        assert status == 404
        assert h.api.webhook is None and h.api.calls_of("deleteWebhook")  # polling clears any old webhook


async def test_without_a_token_the_plugin_is_idle_and_the_hub_works(hub_harness, caplog):
    caplog.set_level(logging.INFO)
    async with hub_harness(plugins=[claude_net_telegram, claude_net_permissions, claude_net_activity],
                           admins=["chasclaude"]) as h:
        admin = await h.token("chasclaude", admin=True)
        status, body = await h.call("GET", "/api/telegram/status", admin)
        assert status == 200 and body["telegram"] == {
            "active": False, "idle": "no bot token is configured ([telegram] token)"}
        status, _ = await h.call("POST", "/api/permit", admin, {"source": "a", "target": "all"})
        assert status == 200
        status, _ = await h.call("GET", "/api/telegram/status", await h.token("a"))
        assert status == 403
    idle = [r for r in caplog.records if "stays idle" in r.getMessage()]
    assert len(idle) == 1 and idle[0].levelno == logging.INFO
    assert "telegram" not in [r.name.split(".")[0] for r in caplog.records]


async def test_a_token_without_a_chat_is_an_error_but_the_hub_starts(hub_harness, caplog):
    async with hub_harness(plugins=[claude_net_telegram], telegram={"token": TOKEN}) as h:
        assert h.hub.plugin_state["telegram"].active is False
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "stays idle" in r.getMessage()]
    assert len(errors) == 1 and "chat_id" in errors[0].getMessage()


async def test_status_route_reports_the_bot(tg_hub):
    async with tg_hub() as h:
        admin = await h.token("chasclaude", admin=True)
        status, body = await h.call("GET", "/api/telegram/status", admin)
        info = body["telegram"]
        assert status == 200 and info["connected"] is True and info["mode"] == "polling"
        assert info["bot"] == "@claude_net_test_bot" and info["admin_node"] == "chasclaude"
        assert info["admin_ids"] == [ADMIN_ID] and info["outbox"]["queued"] == 0
        assert TOKEN not in json.dumps(body)
