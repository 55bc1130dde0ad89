"""Two hub replicas on PostgreSQL that share one Telegram bot (a :class:`FakeBotAPI`): the one
holding the ``telegram`` singleton polls and sends, the other does not. Imported by name, like
tg_helpers (from tests/integration too, which puts this folder on ``sys.path``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from claude_net.testing import HubProcess
from tests.replicas import holder_pid, replicas_async
from tg_botapi import FakeBotAPI
from tg_helpers import ADMIN_ID, CHAT_ID, TOKEN


def config(api: FakeBotAPI, plugins: list[str], telegram: str = "") -> str:
    """chasclaude is an admin; ``plugins`` are allowed; the bot talks to ``api`` with short waits
    and retries, plus the ``[telegram]`` lines in ``telegram``."""
    return (
        'admins = ["chasclaude"]\n'
        f"[plugins]\nallow = {json.dumps(plugins)}\n"
        f'[telegram]\ntoken = "{TOKEN}"\nchat_id = {CHAT_ID}\nadmin_ids = [{ADMIN_ID}]\n'
        f'base_url = "{api.base_url}"\npoll_timeout = 2\nrequest_timeout = 3.0\nsend_interval = 0.05\n'
        "retry_initial = 0.05\nretry_max = 0.4\n" + telegram
    )


@dataclass
class TelegramReplicas:
    api: FakeBotAPI
    hubs: list[HubProcess]
    leader: HubProcess  # holds the telegram singleton: it polls the bot and sends
    follower: HubProcess


@contextlib.asynccontextmanager
async def telegram_replicas(database_url: str, directory: Path, *, plugins: list[str], telegram: str = ""
                            ) -> AsyncIterator[TelegramReplicas]:
    """A started FakeBotAPI and two replicas on it (see :func:`config`), once one of them holds the
    telegram singleton; the replicas stop, then the API, on exit."""
    api = FakeBotAPI(TOKEN)
    await api.start()
    try:
        async with replicas_async(config(api, plugins, telegram), database_url, directory) as hubs:
            by_pid = {h.proc.pid: h for h in hubs}
            leader = await asyncio.to_thread(holder_pid, database_url, "telegram", time.monotonic() + 20)
            assert leader in by_pid, (leader, list(by_pid))
            follower = next(h for pid, h in by_pid.items() if pid != leader)
            yield TelegramReplicas(api, hubs, by_pid[leader], follower)
    finally:
        await api.stop()
