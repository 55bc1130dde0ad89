"""The Telegram poller and outbox run on exactly one replica and move when it dies."""

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.replicas import call, holder_pid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "telegram"))
from tg_helpers import ADMIN_ID, CHAT_ID  # noqa: E402
from tg_replicas import telegram_replicas  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.db("postgresql")]


async def test_one_replica_polls_echoes_from_all_and_fails_over(database_url, tmp_path):
    async with telegram_replicas(database_url, tmp_path, plugins=["permissions", "activity", "telegram"]) as replicas:
        api, leader, follower = replicas.api, replicas.leader, replicas.follower

        # a denial on the follower is echoed by the leader
        agent = await asyncio.to_thread(follower.token, "agentx")
        status, _ = await asyncio.to_thread(call, follower, "POST", "/api/exec", agent,
                                            {"target": "somewhere", "command": "cat /etc/shadow"})
        assert status == 403
        await api.wait_sent(lambda m: "agentx" in m.get("text", "") and "shadow" in m.get("text", ""), timeout=15)

        # kill the leader: the follower takes over polling and answers commands
        leader.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(leader.proc.wait, 10)
        new_leader = await asyncio.to_thread(holder_pid, database_url, "telegram", time.monotonic() + 20)
        assert new_leader == follower.proc.pid
        message = api.send_text("@chasclaude status", user_id=ADMIN_ID, chat_id=CHAT_ID)
        reply = await api.reply_to(message, timeout=20)
        assert "agentx" in reply["text"]  # the status lists the nodes, token holders included
