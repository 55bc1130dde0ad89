"""The Telegram poller and outbox run on exactly one replica and move when it dies."""

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest

from claude_net.testing import HubProcess

from .test_replicas import _holder_pid, call

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "telegram"))
from tg_botapi import FakeBotAPI  # noqa: E402
from tg_helpers import ADMIN_ID, CHAT_ID, TOKEN, eventually  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.db("postgresql")]


def config(api) -> str:
    return (
        'admins = ["chasclaude"]\n'
        '[plugins]\nallow = ["permissions", "activity", "telegram"]\n'
        f'[telegram]\ntoken = "{TOKEN}"\nchat_id = {CHAT_ID}\nadmin_ids = [{ADMIN_ID}]\n'
        f'base_url = "{api.base_url}"\npoll_timeout = 2\nrequest_timeout = 3.0\nsend_interval = 0.05\n'
        "retry_initial = 0.05\nretry_max = 0.4\n"
    )


async def test_one_replica_polls_echoes_from_all_and_fails_over(database_url, tmp_path):
    api = FakeBotAPI(TOKEN)
    await api.start()
    hubs = []
    try:
        for i in range(2):
            (tmp_path / f"r{i}").mkdir()
            hubs.append(HubProcess(config(api), database_url=database_url, workdir=str(tmp_path / f"r{i}")))
        await asyncio.gather(*(asyncio.to_thread(h.start) for h in hubs))
        by_pid = {h.proc.pid: h for h in hubs}
        leader = await asyncio.to_thread(_holder_pid, database_url, "telegram", time.monotonic() + 20)
        assert leader in by_pid
        follower = next(h for pid, h in by_pid.items() if pid != leader)

        # a denial on the follower is echoed by the leader
        agent = await asyncio.to_thread(follower.token, "agentx")
        status, _ = await asyncio.to_thread(call, follower, "POST", "/api/exec", agent,
                                            {"target": "somewhere", "command": "cat /etc/shadow"})
        assert status == 403
        await api.wait_sent(lambda m: "agentx" in m.get("text", "") and "shadow" in m.get("text", ""), timeout=15)

        # kill the leader: the follower takes over polling and answers commands
        by_pid[leader].proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(by_pid[leader].proc.wait, 10)
        new_leader = await asyncio.to_thread(_holder_pid, database_url, "telegram", time.monotonic() + 20)
        assert new_leader == follower.proc.pid
        message = api.send_text("@chasclaude status", user_id=ADMIN_ID, chat_id=CHAT_ID)
        reply = await api.reply_to(message, timeout=20)
        assert "agentx" in reply["text"]  # the status lists the nodes, token holders included
    finally:
        for hub in hubs:
            await asyncio.to_thread(hub.stop)
        await api.stop()
