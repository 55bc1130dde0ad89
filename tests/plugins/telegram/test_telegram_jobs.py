"""The job echo: a background job is ONE message in the admin chat, edited as its output arrives
(at most once per ``edit_interval``) and ending with the final state; while it runs an admin's
*Cancel* press ends it. On a real LXD container (the process is gone afterwards) and on the
TestBox backend."""

from __future__ import annotations

import asyncio
import json

import pytest

import claude_net_activity
import claude_net_lxd
import claude_net_permissions
import claude_net_telegram
from tests.plugins.lxd_backend.conftest import Containers, _lxd_state, lxc
from claude_net.testing import require_component
from tg_helpers import ADMIN_ID, OTHER_ID, activity_rows, eventually

LOOP = "i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo tick-$i; sleep 0.4; done"


@pytest.fixture(scope="module")
def lxd_box(run_id_tg):
    ok, why = _lxd_state()
    require_component("LXD", ok, why)
    boxes = Containers(run_id_tg)
    try:
        yield boxes.launch("tgjob")
    finally:
        boxes.delete_all()


@pytest.fixture(scope="module")
def run_id_tg():
    from tests.plugins.lxd_backend.conftest import RUN_ID

    return RUN_ID


def is_card(message, job_id):
    return message["plain"].splitlines()[-1] == f"job {job_id}"


def job_card(h, job_id):
    for message in h.api.sent:
        if is_card(message, job_id):
            return message
    return None


async def start_job(h, token, target, command):
    status, body = await h.call("POST", "/api/exec", token, {"target": target, "command": command,
                                                           "background": True})
    assert status == 202, body
    return body["job"]


def in_container_ps(name: str) -> str:
    return lxc("exec", name, "--", "ps", "-o", "pid,args", check=False).stdout


async def test_a_job_is_one_message_edited_as_output_arrives_and_cancel_ends_it_in_lxd(tg_hub, run_id_tg, lxd_box):
    plugins = [claude_net_telegram, claude_net_permissions, claude_net_activity, claude_net_lxd]
    async with tg_hub(plugins=plugins, edit_interval=1.0,
                      settings_overrides={"lxd": {"include": [f"{run_id_tg}-*"]}}) as h:
        admin = await h.token("chasclaude", admin=True)
        status, _ = await h.call("POST", "/api/permit", admin, {"source": "managerclaude", "target": lxd_box})
        assert status == 200
        agent = await h.token("managerclaude")
        job = await start_job(h, agent, lxd_box, LOOP)

        await eventually(lambda: job_card(h, job["id"]) is not None, timeout=10)
        card = job_card(h, job["id"])
        mid = card["message_id"]
        assert card["plain"].splitlines()[0] == f"⏳ job managerclaude → {lxd_box} · running"
        assert h.api.buttons(mid) == ["🛑 Cancel"]
        assert card["disable_notification"] is True  # a job starting is routine: no sound

        # the same message grows: edited, never a second message for this job
        shown = await h.api.wait_message(mid, lambda m: "tick-4" in m["plain"], timeout=15)
        assert "⏳ job" in shown["plain"]
        edits = [e for e in shown["edits"] if e["method"] == "editMessageText"]
        assert len(edits) >= 2
        gaps = [b["at"] - a["at"] for a, b in zip(edits, edits[1:])]
        assert all(gap >= 0.95 for gap in gaps), gaps  # at most one edit per edit_interval
        assert len([m for m in h.api.sent if is_card(m, job["id"])]) == 1
        assert "sleep 0.4" in in_container_ps(lxd_box)

        # a stranger's Cancel changes nothing
        query = h.api.press(mid, "🛑 Cancel", user_id=OTHER_ID)
        answer = await h.api.wait_answer(query)
        assert answer["show_alert"] is True and "not allowed" in answer["text"]
        status, body = await h.call("GET", f"/api/jobs/{job['id']}", admin)
        assert status == 200 and body["job"]["state"] == "running"

        query = h.api.press(mid, "🛑 Cancel", user_id=ADMIN_ID)
        answer = await h.api.wait_answer(query, timeout=15)
        assert answer["text"] == "🛑 cancelled"
        final = await h.api.wait_message(mid, lambda m: "cancelled" in m["plain"].splitlines()[0], timeout=10)
        assert final["plain"].splitlines()[0] == f"🛑 job managerclaude → {lxd_box} · cancelled by chasclaude"
        assert h.api.buttons(mid) == []  # no Cancel on a job that is over
        assert "tick-" in final["plain"]
        # the process tree is gone from the container
        await eventually(lambda: "sleep 0.4" not in in_container_ps(lxd_box), timeout=10)
        status, body = await h.call("GET", f"/api/jobs/{job['id']}", admin)
        assert body["job"]["state"] == "cancelled" and body["job"]["ended_by"] == "chasclaude"

        # recorded: the press (with the Telegram user), the cancel as chasclaude via telegram
        presses = [json.loads(r["data"]) for r in await activity_rows(h.hub, type="telegram")]
        assert [(p["update"], p["user_id"], p.get("reason")) for p in presses] == [
            ("callback_query", OTHER_ID, "not_admin"), ("callback_query", ADMIN_ID, None)]
        cancels = await activity_rows(h.hub, type="job_cancel")
        assert [(r["from_machine"], r["via"], r["result"]) for r in cancels] == [("chasclaude", "telegram", "ok")]
        assert len([m for m in h.api.sent if is_card(m, job["id"])]) == 1


async def test_a_job_that_ends_shows_its_exit_code_and_output(tg_hub):
    async with tg_hub(edit_interval=0.2) as h:
        admin = await h.token("chasclaude", admin=True)
        await h.call("POST", "/api/permit", admin, {"source": "managerclaude", "target": "box1"})
        agent = await h.token("managerclaude")
        job = await start_job(h, agent, "box1", "exit 3")
        await eventually(lambda: (job_card(h, job["id"]) or {}).get("message_id") is not None)
        mid = job_card(h, job["id"])["message_id"]
        final = await h.api.wait_message(mid, lambda m: "· exit" in m["plain"].splitlines()[0], timeout=10)
        lines = final["plain"].splitlines()
        assert lines[:2] == ["❌ job managerclaude → box1 · exit 3", "$ exit 3"]
        assert lines[-1] == f"job {job['id']}" and "failed" in lines[2:-1]  # the job's output (stderr)
        assert h.api.buttons(mid) == []
        # the exec's own rows do not make a second, plain echo of the same command
        await asyncio.sleep(0.3)
        assert [m["message_id"] for m in h.api.sent if "$ exit 3" in m["plain"]] == [mid]


async def test_job_echo_can_be_turned_off(tg_hub):
    async with tg_hub(job_echo=False) as h:
        admin = await h.token("chasclaude", admin=True)
        await h.call("POST", "/api/permit", admin, {"source": "managerclaude", "target": "box1"})
        agent = await h.token("managerclaude")
        await start_job(h, agent, "box1", "echo quiet-job")
        await asyncio.sleep(0.5)
        assert not [m for m in h.api.sent if "quiet-job" in m["plain"]]
