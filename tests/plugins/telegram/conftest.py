"""Fixtures for the Telegram plugin: a local Bot API server and a hub wired to it.

The real python-telegram-bot library talks to :class:`tg_botapi.FakeBotAPI` through the plugin's
``base_url`` setting. Like every test of the suite, each runs on SQLite and on PostgreSQL (the
core's ``database_url`` fixture).
"""

from __future__ import annotations

import contextlib

import pytest

import claude_net_activity
import claude_net_permissions
import claude_net_telegram
from tests.core.testbox import TestBox
from tg_botapi import FakeBotAPI
from tg_helpers import TOKEN, eventually, tg_settings


@pytest.fixture
async def botapi():
    api = FakeBotAPI(TOKEN)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
def box():
    return TestBox()


@pytest.fixture
def tg_hub(hub_harness, botapi, box):
    """``async with tg_hub(**telegram_overrides) as h``: a hub with telegram, permissions, activity and
    the TestBox backend, connected to the fake Bot API (``h.api``), admin ``chasclaude``."""

    @contextlib.asynccontextmanager
    async def start(*, plugins=None, settings_overrides=None, wait_ready=True, **telegram):
        plugins = plugins or [claude_net_telegram, claude_net_permissions, claude_net_activity, box]
        async with hub_harness(plugins=plugins, telegram=tg_settings(botapi, **telegram), admins=["chasclaude"],
                               **(settings_overrides or {})) as h:
            h.api = botapi
            h.box = box
            h.rt = h.hub.plugin_state["telegram"]
            if wait_ready and getattr(h.rt, "active", False):
                await eventually(lambda: h.rt.ready.is_set())
            yield h

    return start
