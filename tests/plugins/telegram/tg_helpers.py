"""Constants and helpers shared by the Telegram plugin tests."""

from __future__ import annotations

from claude_net.testing import eventually  # noqa: F401 - the Telegram tests import it from here

#: shaped like a real token (bot id, colon, 35 characters), so the log redaction is really tested
TOKEN = "7000000001:AAFakeTokenOnlyForTests_abcdefghij12"
ADMIN_ID = 111111111
OTHER_ID = 222222222
CHAT_ID = -1001234567890


def tg_settings(api, **overrides):
    """Fast settings for tests: short back-off and pacing, the fake server as base_url."""
    return {"token": TOKEN, "chat_id": CHAT_ID, "admin_ids": [ADMIN_ID], "base_url": api.base_url,
            "poll_timeout": 5, "request_timeout": 3.0, "send_interval": 0.05, "retry_initial": 0.05,
            "retry_max": 0.4, "shutdown_drain": 1.0, "max_command_age": 300.0, **overrides}


async def activity_rows(hub, **filters):
    where = " AND ".join(f"{k} = :{k}" for k in filters) or "1 = 1"
    return await hub.db.fetch_all(f"SELECT * FROM activity_log WHERE {where} ORDER BY id", filters)
