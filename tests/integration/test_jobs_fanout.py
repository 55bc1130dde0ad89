"""Fan-out over ten real LXD containers and the SSH node, with a mix of permitted and denied targets
(the permissions plugin decides per target), foreground and background; a thread round-trips through
a job into the activity feed's thread filter."""

from __future__ import annotations

import pytest

import claude_net_activity
import claude_net_lxd
import claude_net_permissions
import claude_net_ssh
from claude_net.testing import eventually, require_component
from claude_net_ssh.testserver import PrivateSshd, sshd_available

from tests.plugins.lxd_backend.conftest import RUN_ID, Containers, _lxd_state

pytestmark = pytest.mark.lxd


@pytest.fixture(scope="module")
def ten(tmp_path_factory):
    ok, why = _lxd_state()
    require_component("LXD", ok, why)
    boxes = Containers(f"{RUN_ID}-fan")
    try:
        yield [boxes.launch(f"n{i}") for i in range(10)]
    finally:
        boxes.delete_all()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    ok, why = sshd_available()
    require_component("OpenSSH sshd", ok, why)
    server = PrivateSshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def fan_hub(hub_harness, sshd):
    return hub_harness(plugins=[claude_net_lxd, claude_net_ssh, claude_net_permissions, claude_net_activity],
                       lxd={"include": [f"{RUN_ID}-fan-*"], "shell": "/bin/sh"},
                       ssh={"connect_timeout": 3.0, "nodes": {"ser-8": sshd.node_config()}},
                       admins=["chasclaude"])


async def test_fanout_over_ten_containers_and_the_ssh_node_with_denied_targets(hub_harness, ten, sshd):
    async with fan_hub(hub_harness, sshd) as h:
        admin, agent = await h.token("chasclaude"), await h.token("managerclaude")
        permitted = ten[::2] + ["ser-8"]  # five containers and the SSH node
        for target in permitted:
            status, body = await h.call("POST", "/api/permit", admin, {"source": "managerclaude", "target": target})
            assert status == 200, body
        order = ["ser-8", *ten]
        status, body = await h.call("POST", "/api/exec", agent, {"targets": order, "command": "echo hi-$((6*7))"})
        assert status == 200, body
        assert [r["target"] for r in body["results"]] == order
        for result in body["results"]:
            if result["target"] in permitted:
                assert result["ok"] is True and result["stdout"] == "hi-42\n" and result["exitCode"] == 0, result
            else:
                assert result["ok"] is False and result["code"] == "denied" and result["status"] == 403, result
        assert body["summary"] == {"ok": 6, "failed": 0, "denied": 5}
        # every target has its own row: the denials are recorded, one each
        rows = await h.hub.db.fetch_all("SELECT target, result FROM activity_log WHERE type = 'exec'"
                                        " AND from_machine = 'managerclaude' AND result <> 'pending'")
        assert sorted(r["target"] for r in rows if r["result"] == "denied") == sorted(ten[1::2])
        assert sorted(r["target"] for r in rows if r["result"] == "ok") == sorted(permitted)

        # the same by pattern, in the background: each permitted target gets a job
        status, body = await h.call("POST", "/api/exec", agent, {"targets": f"{RUN_ID}-fan-*", "command": "echo bg",
                                                                  "background": True, "thread": "fan-1"})
        assert status == 200, body
        assert [r["target"] for r in body["results"]] == sorted(ten)
        jobs = [r["job"] for r in body["results"] if r["ok"]]
        assert len(jobs) == 5 and body["summary"]["denied"] == 5

        async def all_ended():
            _, listing = await h.call("GET", "/api/jobs?thread=fan-1", agent)
            states = [j["state"] for j in listing["jobs"]]
            return listing["jobs"] if len(states) == 5 and all(s == "exited" for s in states) else None

        ended = await eventually(all_ended, timeout=20)
        assert all(j["thread"] == "fan-1" for j in ended)
        # the thread reaches the feed: the exec rows carry it and the job id, the job's final event too
        async def feed_rows():
            status, feed = await h.call("GET", "/api/activity?hours=1&thread=fan-1&limit=1000", admin)
            assert status == 200, feed
            return feed["events"]

        def ids(events, kind):
            return sorted(e["data"]["job_id"] for e in events if e["type"] == kind and e["result"] == "ok")

        wanted = sorted(j["id"] for j in jobs)
        events = await eventually(lambda: _all_there(feed_rows, ids, wanted), timeout=10)
        assert ids(events, "exec") == wanted and ids(events, "job") == wanted
        job_rows = [e for e in events if e["type"] == "job"]
        assert all(e["data"]["state"] == "exited" for e in job_rows)


async def _all_there(feed_rows, ids, wanted):
    events = await feed_rows()
    return events if ids(events, "exec") == wanted and ids(events, "job") == wanted else None
