"""Exec and node listing through the hub's HTTP API against the real LXD daemon."""

from __future__ import annotations

import asyncio
import time

import pytest

import claude_net_lxd

from .conftest import lxc, lxc_query

pytestmark = pytest.mark.lxd


@pytest.fixture(scope="module")
def box(containers):
    """One running busybox container shared by the read-only tests of this module."""
    return containers.launch("exec")


GUARDS = pytest.mark.parametrize("guard", ["hub", "container"])


def exec_logs(name: str) -> list[str]:
    return [p for p in lxc_query(f"/1.0/instances/{name}/logs") if "/exec_" in p]


def admin_hub(hub_harness, run_id, guard: str = "hub", **overrides):
    lxd = {"include": [f"{run_id}-*"], "output_guard": guard, **overrides.pop("lxd", {})}
    return hub_harness(plugins=[claude_net_lxd], lxd=lxd, **overrides)


async def test_machines_lists_containers(hub_harness, run_id, box):
    async with admin_hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("GET", "/api/machines", token)
        assert status == 200, body
        rows = {m["name"]: m for m in body["machines"]}
        assert box in rows
        row = rows[box]
        assert row["backend"] == "lxd"
        assert row["state"] == "running"
        assert row["capabilities"] == ["container", "exec", "file_read", "file_write"]
        assert row["info"]["type"] == "container"
        assert row["info"]["processes"] >= 1
        assert row["info"]["memoryBytes"] > 0
        assert body["unavailable"] == {}


async def test_include_exclude_patterns(hub_harness, run_id, box):
    async with hub_harness(plugins=[claude_net_lxd], lxd={"include": [f"{run_id}-*"], "exclude": [box]}) as h:
        token = await h.token("boss", admin=True)
        _, body = await h.call("GET", "/api/machines", token)
        assert box not in {m["name"] for m in body["machines"]}
        status, body = await h.call("POST", "/api/exec", token, {"target": box, "command": "true"})
        assert status == 404 and body["code"] == "unknown_node"


@GUARDS
async def test_exec_stdout_stderr_exit_code(hub_harness, run_id, box, guard):
    async with admin_hub(hub_harness, run_id, guard) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", token,
                                    {"target": box, "command": "echo out; echo err >&2; exit 3"})
        assert status == 200, body
        assert body["stdout"] == "out\n"
        assert body["stderr"] == "err\n"
        assert body["exitCode"] == 3
        assert "truncated" not in body
        assert body["durationMs"] > 0


@GUARDS
async def test_exec_command_is_not_split_or_interpreted_by_the_hub(hub_harness, run_id, box, guard):
    async with admin_hub(hub_harness, run_id, guard) as h:
        token = await h.token("boss", admin=True)
        command = "printf '%s|' \"$0\" 'a b' \"c'd\" '$(x)' ; echo"
        status, body = await h.call("POST", "/api/exec", token, {"target": box, "command": command})
        assert status == 200, body
        assert body["stdout"] == "/bin/sh|a b|c'd|$(x)|\n"  # busybox has no bash: /bin/sh


@GUARDS
async def test_exec_non_utf8_output(hub_harness, run_id, box, guard):
    async with admin_hub(hub_harness, run_id, guard) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", token,
                                    {"target": box, "command": r"printf 'a\377\376b'; printf '\300' >&2"})
        assert status == 200, body
        assert body["stdout"] == "a\ufffd\ufffdb"
        assert body["stderr"] == "\ufffd"


@GUARDS
async def test_exec_cwd_env_and_user(hub_harness, run_id, box, guard):
    overrides = {"lxd": {"env": {"GLOBAL_V": "g"}, "nodes": {box: {"user": 1000, "group": 1001, "env": {"NODE_V": "n"},
                                                                     "cwd": "/tmp"}}}}
    async with admin_hub(hub_harness, run_id, guard, **overrides) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", token, {
            "target": box, "command": 'echo "$(id -u):$(id -g) $PWD $GLOBAL_V $NODE_V $REQ_V"', "env": {"REQ_V": "r"}})
        assert status == 200, body
        assert body["stdout"] == "1000:1001 /tmp g n r\n"
        status, body = await h.call("POST", "/api/exec", token, {"target": box, "command": "pwd", "cwd": "/etc"})
        assert body["stdout"] == "/etc\n"


@GUARDS
async def test_exec_output_is_capped_and_marked_truncated(hub_harness, run_id, box, guard):
    async with admin_hub(hub_harness, run_id, guard, limits={"exec_max_output": 1000}) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", token, {
            "target": box, "command": "yes | head -c 5000; yes e | head -c 3000 >&2; echo done >&2; exit 4"})
        assert status == 200, body
        assert body["stdout"] == "y\n" * 500
        assert len(body["stderr"]) == 1000
        assert body["truncated"] is True
        assert body["exitCode"] == 4
        # exactly at the cap is not truncated
        status, body = await h.call("POST", "/api/exec", token, {"target": box, "command": "yes | head -c 1000"})
        assert len(body["stdout"]) == 1000 and "truncated" not in body


async def test_huge_output_container_guard(hub_harness, run_id, box):
    """output_guard = "container": 100 MB of output; the command finishes, the hub returns the
    capped part, and the recorded logs on the host never hold more than the cap."""
    async with admin_hub(hub_harness, run_id, "container", limits={"exec_max_output": 4096}) as h:
        token = await h.token("boss", admin=True)
        started = time.monotonic()
        status, body = await h.call("POST", "/api/exec", token, {
            "target": box, "command": "head -c 100000000 /dev/zero | tr '\\0' x; echo finished >&2"})
        assert status == 200, body
        assert body["stdout"] == "x" * 4096 and body["truncated"] is True
        assert body["stderr"] == "finished\n"  # ran to completion: the excess was drained, not fatal
        assert time.monotonic() - started < 20


async def test_big_output_hub_guard_runs_to_completion(hub_harness, run_id, box):
    """output_guard = "hub": 10 MB of output (under max_log_bytes) finishes; the hub reads only the cap."""
    async with admin_hub(hub_harness, run_id, "hub", limits={"exec_max_output": 4096}) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", token, {
            "target": box, "command": "head -c 10000000 /dev/zero | tr '\\0' x; echo finished >&2"})
        assert status == 200, body
        assert body["stdout"] == "x" * 4096 and body["truncated"] is True
        assert body["stderr"] == "finished\n"
        assert body["exitCode"] == 0


@pytest.mark.parametrize("log_dir", ["", "/nonexistent"], ids=["local-files", "through-the-api"])
async def test_runaway_output_is_stopped_by_the_watchdog(hub_harness, run_id, box, log_dir):
    """output_guard = "hub": endless output is stopped soon after it passes max_log_bytes."""
    async with admin_hub(hub_harness, run_id, "hub", lxd={"max_log_bytes": 5_000_000, "log_dir": log_dir},
                         limits={"exec_max_output": 1000}) as h:
        token = await h.token("boss", admin=True)
        started = time.monotonic()
        status, body = await h.call("POST", "/api/exec", token, {
            "target": box, "command": "yes runaway", "timeout": 60})
        elapsed = time.monotonic() - started
        assert status == 200, body
        assert body["truncated"] is True
        assert body["stdout"] == "runaway\n" * 125
        assert "max_log_bytes" in body["stderr"]
        assert body["exitCode"] != 0
        assert elapsed < 5, elapsed
        status, body = await h.call("POST", "/api/exec", token, {"target": box, "command": "ps -o args"})
        assert "yes runaway" not in body["stdout"]


async def test_a_runaway_that_survives_the_kill_is_killed_again_while_the_exec_runs(hub_harness, run_id, box,
                                                                                  caplog):
    """A command whose main process cleared its environment (``env -i``: the marker the kill looks for
    is gone) survives the watchdog's kill while its output keeps growing: the watchdog kills again
    every RUNAWAY_RETRY seconds, logging each attempt, for as long as the exec runs (here until its
    timeout gives up on it too), and then stops."""
    import logging
    import secrets

    from claude_net_lxd.backend import RUNAWAY_RETRY

    word = f"runaway-escapes-{secrets.token_hex(4)}"
    caplog.set_level(logging.WARNING, logger="claude_net_lxd")
    try:
        async with admin_hub(hub_harness, run_id, "hub", lxd={"max_log_bytes": 2000}) as h:
            token = await h.token("boss", admin=True)
            command = f"exec env -i /bin/sh -c 'while :; do echo {word}; sleep 0.02; done'"
            status, body = await h.call("POST", "/api/exec", token, {"target": box, "command": command, "timeout": 7})
            assert status == 504, body  # the timeout's own kill cannot find it either
            retries = [r for r in caplog.records if "killing it again" in r.getMessage()]
            assert len(retries) >= 2, [r.getMessage() for r in caplog.records]
            assert all("did not end it" in r.getMessage() for r in retries)
            gaps = [b.created - a.created for a, b in zip(retries, retries[1:])]
            assert all(RUNAWAY_RETRY - 0.2 < gap < RUNAWAY_RETRY + 1.5 for gap in gaps), gaps
            await asyncio.sleep(RUNAWAY_RETRY + 0.5)  # the exec is over: no more kills
            assert len([r for r in caplog.records if "killing it again" in r.getMessage()]) == len(retries)
    finally:  # it escaped every kill of the hub: end it by hand
        lxc("exec", box, "--", "sh", "-c", f"for f in $(grep -l '[{word[0]}]{word[1:]}' /proc/[0-9]*/cmdline "
            "2>/dev/null); do p=${f#/proc/}; kill -9 ${p%/cmdline}; done", check=False)
    assert word not in lxc("exec", box, "--", "ps", "-o", "args").stdout


@pytest.mark.parametrize("log_dir", ["", "/nonexistent"], ids=["local-files", "through-the-api"])
async def test_exec_logs_are_deleted(hub_harness, run_id, box, log_dir):
    """Recorded output is read and deleted directly on the LXD host, or through the API when the
    hub cannot see LXD's log directory (a remote daemon, a hub that is not root)."""
    async with admin_hub(hub_harness, run_id, lxd={"log_dir": log_dir}) as h:
        token = await h.token("boss", admin=True)
        for i in range(5):
            status, _ = await h.call("POST", "/api/exec", token, {"target": box, "command": f"echo {i}"})
            assert status == 200
    # the hub is stopped: its housekeeping pool finished every pending deletion
    assert exec_logs(box) == []


@GUARDS
async def test_exec_timeout_kills_the_whole_process_tree(hub_harness, run_id, box, guard):
    async with admin_hub(hub_harness, run_id, guard) as h:
        token = await h.token("boss", admin=True)
        started = time.monotonic()
        status, body = await h.call("POST", "/api/exec", token, {
            "target": box, "timeout": 1.5,
            "command": "echo started; (sleep 300; echo never) & sleep 301 & sleep 302"})
        elapsed = time.monotonic() - started
        assert status == 504, body
        assert body["code"] == "timeout"
        assert body["stdout"] == "started\n"
        assert 1.4 < elapsed < 6, elapsed
        status, body = await h.call("POST", "/api/exec", token, {"target": box, "command": "ps -o args"})
        assert "sleep 30" not in body["stdout"], body["stdout"]


async def test_background_job_with_redirected_output_does_not_block(hub_harness, run_id, box):
    async with admin_hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        started = time.monotonic()
        status, body = await h.call("POST", "/api/exec", token, {
            "target": box, "command": "sleep 5 >/dev/null 2>&1 & echo bg"})
        assert status == 200 and body["stdout"] == "bg\n"
        assert time.monotonic() - started < 3
        await h.call("POST", "/api/exec", token, {"target": box, "command": "pkill sleep; true"})


async def test_shell_detection_prefers_bash(hub_harness, run_id, fresh_container):
    name = fresh_container("bash")
    # a stand-in "bash" the probe will find: it marks the environment, then runs busybox sh
    lxc("exec", name, "--", "sh", "-c",
        "printf '#!/bin/sh\\nexport VIA_BASH=yes\\nexec /bin/sh \"$@\"\\n' > /bin/bash; chmod 755 /bin/bash")
    async with admin_hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", token, {"target": name, "command": 'echo "$VIA_BASH"'})
        assert status == 200, body
        assert body["stdout"] == "yes\n"


async def test_configured_shell_and_missing_shell(hub_harness, run_id, box):
    overrides = {"lxd": {"nodes": {box: {"shell": "/bin/ash"}}}}
    async with admin_hub(hub_harness, run_id, **overrides) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", token, {"target": box, "command": 'echo "$0"'})
        assert body["stdout"] == "/bin/ash\n"
    overrides = {"lxd": {"nodes": {box: {"shell": "/bin/zsh"}}}}
    async with admin_hub(hub_harness, run_id, **overrides) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", token, {"target": box, "command": "echo hi"})
        assert status == 200, body
        assert body["exitCode"] == 127
        assert "zsh" in body["stderr"]


async def test_non_admin_without_grant_is_denied(hub_harness, run_id, box):
    async with admin_hub(hub_harness, run_id) as h:
        token = await h.token("worker")
        status, body = await h.call("POST", "/api/exec", token, {"target": box, "command": "true"})
        assert status == 403 and body["code"] == "denied"
        status, body = await h.call("POST", "/api/container/stop", token, {"name": box})
        assert status == 403


async def test_concurrent_long_execs_do_not_slow_cheap_requests(hub_harness, run_id, containers, box):
    others = [containers.launch(f"conc{i}") for i in range(3)]
    targets = [box, *others]
    async with admin_hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        await h.call("GET", "/api/machines", token)
        for t in targets:  # warm the per-container probe
            await h.call("POST", "/api/exec", token, {"target": t, "command": "true"})
        started = time.monotonic()
        execs = [asyncio.ensure_future(h.call("POST", "/api/exec", token,
                                              {"target": targets[i % 4], "command": "sleep 2; echo slept"}))
                 for i in range(20)]
        await asyncio.sleep(0.3)
        worst = 0.0
        for _ in range(10):
            for path in ("/api/health", "/api/machines"):
                t0 = time.monotonic()
                status, body = await h.call("GET", path, token)
                worst = max(worst, time.monotonic() - t0)
                assert status == 200, body
            await asyncio.sleep(0.05)
        results = await asyncio.gather(*execs)
        total = time.monotonic() - started
        assert all(status == 200 and body["stdout"] == "slept\n" for status, body in results), results
        assert worst < 0.5, f"a cheap request took {worst:.3f}s while 20 execs ran"
        assert total < 6, f"20 concurrent 2 s execs took {total:.1f}s"


async def test_stopped_container_is_409(hub_harness, run_id, fresh_container):
    name = fresh_container("stopped", start=False)
    async with admin_hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        status, body = await h.call("POST", "/api/exec", token, {"target": name, "command": "true"})
        assert status == 409 and body["code"] == "not_running", body
        status, body = await h.call("POST", "/api/file/read", token, {"target": name, "path": "/etc/passwd"})
        assert status == 409, body
        status, body = await h.call("POST", "/api/file/write", token,
                                    {"target": name, "path": "/tmp/x", "content": "x"})
        assert status == 409, body
        _, body = await h.call("GET", "/api/machines", token)
        assert {m["name"]: m["state"] for m in body["machines"]}[name] == "stopped"


async def test_hub_stop_ends_running_execs(hub_harness, run_id, box):
    """Stopping the hub kills the commands it started instead of waiting for them."""
    started = time.monotonic()
    async with admin_hub(hub_harness, run_id) as h:
        token = await h.token("boss", admin=True)
        pending = asyncio.ensure_future(h.call("POST", "/api/exec", token, {
            "target": box, "command": "sleep 299; echo never", "timeout": 600}))
        await asyncio.sleep(1.0)
        backend = h.hub.plugin_state["lxd"]
        assert len(backend.running) == 1
    pending.cancel()
    assert time.monotonic() - started < 15
    ps = lxc("exec", box, "--", "ps", "-o", "args").stdout
    assert "sleep 299" not in ps, ps
