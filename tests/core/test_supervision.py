"""Supervised background tasks: a long-lived task that raises is restarted with exponential back-off
and jitter, its failures show in Hub.task_status and /api/health (names for anyone, detail for
admins), each failure is announced as a ``hub`` error event recorded in the activity feed, and
stop() still ends everything at once. One-shot tasks never loop. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import claude_net_activity
from claude_net import hookimpl
from claude_net.testing import eventually


class Events:
    __name__ = "supervision_events"

    def __init__(self) -> None:
        self.events = []

    @hookimpl
    def on_event(self, event):
        self.events.append(event)

    def hub_errors(self):
        return [e for e in self.events if e.type == "hub" and e.result == "error"]


class Flaky:
    """Fails its first ``fail`` runs (recording when each started), then runs until cancelled."""

    def __init__(self, fail: int, error: str = "boom") -> None:
        self.fail = fail
        self.error = error
        self.starts: list[float] = []
        self.cancelled = 0

    async def __call__(self) -> None:
        self.starts.append(time.monotonic())
        if len(self.starts) <= self.fail:
            raise ValueError(f"{self.error} {len(self.starts)}")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def fast(hub, initial=0.1, most=0.4, healthy=60.0):
    hub.RESTART_INITIAL, hub.RESTART_MAX, hub.RESTART_HEALTHY = initial, most, healthy


async def test_a_failing_task_restarts_with_doubling_jittered_back_off(hub_harness):
    events = Events()
    async with hub_harness(plugins=[claude_net_activity, events]) as h:
        fast(h.hub)
        work = Flaky(fail=5)
        h.hub.spawn(lambda: work(), name="flaky")
        await eventually(lambda: len(work.starts) == 6, timeout=10)
        gaps = [b - a for a, b in zip(work.starts, work.starts[1:])]
        # 0.1, 0.2, 0.4, 0.4, 0.4 (capped at RESTART_MAX), each within the ±20 % jitter (plus scheduling slack)
        for gap, expected in zip(gaps, [0.1, 0.2, 0.4, 0.4, 0.4]):
            assert expected * 0.8 - 0.01 <= gap <= expected * 1.2 + 0.15, gaps
        status = h.hub.task_status()["flaky"]
        assert status["state"] == "running" and status["failures"] == 5 and status["restarts"] == 5
        assert status["last_error"] == "ValueError: boom 5" and status["next_restart"] is None
        assert h.hub.degraded_tasks() == []

        # every failure was announced once, with the sentence and the wait, and recorded
        announced = events.hub_errors()
        assert [e.data["failures"] for e in announced] == [1, 2, 3, 4, 5]
        assert announced[0].detail.startswith("background task flaky failed: ValueError: boom 1; restarting in 0.")
        assert announced[0].data["task"] == "flaky" and announced[0].via == "hub"
        rows = await eventually(lambda: _rows_when(h, 5))
        assert [r["result"] for r in rows] == ["error"] * 5
        assert rows[-1]["detail"].startswith("background task flaky failed: ValueError: boom 5; restarting in ")


async def _rows_when(h, count):
    rows = await h.hub.db.fetch_all("SELECT detail, result FROM activity_log WHERE type = 'hub' ORDER BY id")
    return rows if len(rows) >= count else None


async def test_health_names_degraded_tasks_for_anyone_and_details_them_for_admins(hub_harness):
    async with hub_harness(plugins=[claude_net_activity], admins=["chasclaude"]) as h:
        fast(h.hub, initial=30, most=60)  # it stays "restarting" for the whole test
        work = Flaky(fail=1, error="cannot reach /srv/secret-host")
        h.hub.spawn(lambda: work(), name="poller")
        await eventually(lambda: h.hub.task_status().get("poller", {}).get("state") == "restarting")

        status, body = await h.call("GET", "/api/health")
        assert status == 200
        assert body["status"] == "up" and body["tasks"] == {"degraded": ["poller"]}
        assert "secret-host" not in str(body)  # errors are for admins only

        agent = await h.token("managerclaude")
        status, body = await h.call("GET", "/api/health", agent)
        assert status == 200 and "detail" not in body["tasks"]

        admin = await h.token("chasclaude", admin=True)
        status, body = await h.call("GET", "/api/health", admin)
        assert status == 200 and body["tasks"]["degraded"] == ["poller"]
        detail = body["tasks"]["detail"]["poller"]
        assert detail["state"] == "restarting" and detail["failures"] == 1 and detail["streak"] == 1
        assert detail["last_error"] == "ValueError: cannot reach /srv/secret-host 1"
        assert detail["last_failure"] < detail["next_restart"]  # ISO times: restarts ~30 s after the failure
        assert body["tasks"]["detail"]["last-seen"]["state"] == "running"  # the hub's own task is there too

        # a public route: any other credentials get the public answer, never the detail
        for token in ("cn_not-a-token", None):
            headers = {"Authorization": "Basic YWxwaGE6YmV0YQ=="} if token is None else None
            status, body = await h.call("GET", "/api/health", token, headers=headers)
            assert status == 200 and body["tasks"] == {"degraded": ["poller"]}


async def test_stop_ends_running_and_restarting_tasks_at_once(hub_harness):
    async with hub_harness(plugins=[claude_net_activity]) as h:
        fast(h.hub, initial=30, most=60)
        waiting, running = Flaky(fail=1), Flaky(fail=0)
        h.hub.spawn(lambda: waiting(), name="waiting")
        h.hub.spawn(running, name="running")
        await eventually(lambda: h.hub.task_status().get("waiting", {}).get("state") == "restarting"
                         and running.starts)
        started = time.monotonic()
        await h.hub.stop()
        assert time.monotonic() - started < 2.0  # not the 30 s back-off
        assert running.cancelled == 1 and len(waiting.starts) == 1  # never restarted after stop
        assert h.hub.task_status() == {}


async def test_one_shot_tasks_never_loop_and_finished_tasks_leave_no_trace(hub_harness):
    events = Events()
    async with hub_harness(plugins=[claude_net_activity, events]) as h:
        fast(h.hub)
        once = Flaky(fail=1)
        h.hub.spawn(once(), name="once")  # a coroutine: one run only
        await eventually(lambda: h.hub.task_status().get("once", {}).get("state") == "failed")
        await asyncio.sleep(0.5)
        assert len(once.starts) == 1
        assert h.hub.degraded_tasks() == ["once"]
        assert events.hub_errors()[-1].detail == ("background task once failed: ValueError: boom 1; "
                                                  "it does not restart (one-shot)")

        calls = []

        async def finishes():
            calls.append(1)

        h.hub.spawn(finishes, name="finishes")  # returning normally is not a failure
        await eventually(lambda: "finishes" not in h.hub.task_status())
        await asyncio.sleep(0.3)
        assert calls == [1]

        later = Flaky(fail=1)
        h.hub.spawn(lambda: later(), name="later", restart=False)  # a factory, run once on request
        await eventually(lambda: h.hub.task_status().get("later", {}).get("state") == "failed")
        await asyncio.sleep(0.3)
        assert len(later.starts) == 1


async def test_a_healthy_run_resets_the_back_off(hub_harness):
    async with hub_harness(plugins=[claude_net_activity]) as h:
        fast(h.hub, initial=0.1, most=5.0, healthy=0.5)
        starts: list[float] = []

        async def work():
            starts.append(time.monotonic())
            if len(starts) == 3:
                await asyncio.sleep(0.7)  # healthy for longer than RESTART_HEALTHY, then fails again
            if len(starts) <= 3:
                raise RuntimeError(f"failure {len(starts)}")
            await asyncio.Event().wait()

        h.hub.spawn(work, name="resets")
        await eventually(lambda: len(starts) == 4, timeout=10)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert 0.08 <= gaps[0] <= 0.3 and 0.16 <= gaps[1] <= 0.4, gaps
        # after the healthy run the wait is the initial 0.1 s again, not 0.4 s
        assert 0.7 + 0.08 <= gaps[2] <= 0.7 + 0.25, gaps
        status = h.hub.task_status()["resets"]
        assert status["failures"] == 3 and status["streak"] == 1


async def test_singleton_work_that_raises_is_restarted_and_its_text_is_made_safe(hub_harness):
    events = Events()
    async with hub_harness(plugins=[claude_net_activity, events]) as h:
        fast(h.hub)
        runs = []

        async def work():
            runs.append(h.hub.runs_singleton("lonely"))
            if len(runs) == 1:
                # a lone surrogate and a newline in an error text: no database, log or chat can take
                # the first, the second would forge a log line
                raise ValueError("bad path /tmp/\ud800\nFAKE LOG LINE")
            await asyncio.Event().wait()

        h.hub.spawn_singleton("lonely", work, retry=0.2)
        await eventually(lambda: len(runs) == 2, timeout=15)
        assert runs == [True, True]  # on PostgreSQL the lock was let go and taken again
        status = h.hub.task_status()["lonely"]
        assert status["state"] == "running" and status["failures"] == 1
        assert status["last_error"] == "ValueError: bad path /tmp/\\ud800\\nFAKE LOG LINE"
        rows = await eventually(lambda: _rows_when(h, 1))
        assert "\\ud800\\nFAKE LOG LINE; restarting in" in rows[0]["detail"]


async def test_a_cancellation_from_inside_is_a_failure_but_the_owner_may_cancel(hub_harness):
    async with hub_harness(plugins=[claude_net_activity]) as h:
        fast(h.hub)
        inner: list[asyncio.Task] = []

        async def work():
            task = asyncio.ensure_future(asyncio.Event().wait())
            inner.append(task)
            await task

        owned = h.hub.spawn(work, name="inner")
        await eventually(lambda: inner)
        inner[0].cancel()  # something the task awaited was cancelled: the task did not ask to stop
        await eventually(lambda: len(inner) == 2)
        assert h.hub.task_status()["inner"]["last_error"] == "CancelledError"
        owned.cancel()  # its owner cancels it: it ends, no restart
        await asyncio.sleep(0.3)
        assert owned.cancelled() and len(inner) == 2 and "inner" not in h.hub.task_status()


async def test_the_version_comes_from_the_package_metadata(hub_harness):
    import subprocess
    import sys
    from importlib.metadata import version
    from pathlib import Path

    import claude_net

    installed = version("claude-net")
    assert claude_net.__version__ == installed
    async with hub_harness() as h:
        status, body = await h.call("GET", "/api/health")
        assert status == 200 and body["version"] == installed
        status, doc = await h.call("GET", "/api/openapi.json")
        assert doc["info"]["version"] == installed
    script = Path(sys.executable).parent / "claude-net"  # the console script pip installed
    command = [str(script)] if script.exists() else [sys.executable, "-m", "claude_net.cli"]
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"claude-net {installed}\n", done
