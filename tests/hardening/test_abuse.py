"""Resource abuse: floods of output, huge files, many execs at once, slow clients.

Against real components: a real ``claude-net serve`` subprocess (so its memory can be measured)
with the LXD backend on a real container, a private sshd (MaxSessions 10), and a real Hypercorn
server for slow clients. Per-node request rate limits: test_rate_limits.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import claude_net_activity
from claude_net.config import load_settings
from claude_net.http import create_app
from claude_net.testing import HubProcess

from .conftest import LXD_PREFIX, ThreadedHub, http, in_box

MiB = 1024 * 1024
FILE_LIMIT = 8 * MiB


class RssSampler:
    """Samples a process's resident memory every 20 ms in a thread: ``with RssSampler(pid) as s: ... s.peak``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.rss())
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self.start = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def real_hub(lxd_box, tmp_path_factory):
    """``claude-net serve`` in a subprocess with every installed plugin, seeing only our container."""
    workdir = tmp_path_factory.mktemp("abuse-hub")
    config = f"""
[limits]
file_max_bytes = {FILE_LIMIT}

[lxd]
include = ["{LXD_PREFIX}-*"]
"""
    with HubProcess(config, workdir=str(workdir)) as hub:
        hub.boss = hub.token("boss", admin=True)
        hub.box = lxd_box
        yield hub


@pytest.mark.slow
@pytest.mark.lxd
def test_gigabytes_of_output_are_capped_the_process_ended_and_memory_bounded(real_hub):
    hub = real_hub
    http("POST", hub.url + "/api/exec", hub.boss, {"target": hub.box, "command": "true"})  # warm
    with RssSampler(hub.proc.pid) as rss:
        started = time.monotonic()
        # `yes` never ends on its own: several GB/s until something stops it
        status, body, _ = http("POST", hub.url + "/api/exec", hub.boss,
                               {"target": hub.box, "command": "yes claude-net-flood", "timeout": 120}, timeout=150)
        elapsed = time.monotonic() - started
    assert status == 200, body
    assert body["truncated"] is True
    assert len(body["stdout"].encode()) <= MiB  # [limits] exec_max_output
    assert body["stdout"].startswith("claude-net-flood\n")
    assert "max_log_bytes" in body["stderr"]  # stopped by the output watchdog, not by the timeout
    assert elapsed < 60, elapsed
    assert "yes" not in in_box(hub.box, "ps -o comm | grep -x yes || true")  # the process is gone
    growth = rss.peak - rss.start
    print(f"\nflood: {elapsed:.1f}s, hub RSS {rss.start / MiB:.1f} -> peak {rss.peak / MiB:.1f} MiB")
    assert growth < 64 * MiB, f"hub RSS grew by {growth / MiB:.1f} MiB (from {rss.start / MiB:.1f} MiB)"
    # the hub still answers, and the flood is in the activity feed as one exec, truncated
    status, body, _ = http("GET", hub.url + "/api/activity?type=exec&limit=5", hub.boss)
    row = next(r for r in body["events"] if r["detail"] == "yes claude-net-flood")
    assert row["result"] == "ok" and row["data"]["truncated"] is True


@pytest.mark.slow
@pytest.mark.lxd
def test_huge_files_are_413_or_within_limits(real_hub):
    hub = real_hub
    in_box(hub.box, "head -c 20971520 /dev/zero > /tmp/big && head -c 6291456 /dev/urandom > /tmp/ok")
    with RssSampler(hub.proc.pid) as rss:
        # reads: the size is checked before the content is fetched
        status, body, _ = http("POST", hub.url + "/api/file/read", hub.boss, {"target": hub.box, "path": "/tmp/big"})
        assert status == 413 and body["code"] == "too_large", body
        status, body, _ = http("GET", f"{hub.url}/api/file/raw?target={hub.box}&path=/tmp/big", hub.boss)
        assert status == 413, body
        # writes: a body over the limit is refused (by Content-Length, before it is read)
        raw_path = f"/api/file/raw?target={hub.box}&path=/tmp/up"
        assert _upload(hub.port, "PUT", raw_path, hub.boss, 20 * MiB) == 413
        json_body = json.dumps({"target": hub.box, "path": "/tmp/up", "content": "x" * (20 * MiB)}).encode()
        assert _upload(hub.port, "POST", "/api/file/write", hub.boss, len(json_body), json_body) == 413
        # ... and without a Content-Length (chunked), cut off at the limit while streaming
        assert _upload(hub.port, "PUT", raw_path, hub.boss, 20 * MiB, chunked=True) == 413
        assert _upload(hub.port, "POST", "/api/file/write", hub.boss, len(json_body), json_body, chunked=True) == 413
        # within limits: a 6 MiB binary file round-trips exactly
        data = in_box(hub.box, "md5sum /tmp/ok").split()[0]
        request = urllib.request.Request(f"{hub.url}/api/file/raw?target={hub.box}&path=/tmp/ok",
                                         headers={"Authorization": f"Bearer {hub.boss}"})
        with urllib.request.urlopen(request, timeout=60) as r:
            content = r.read()
        import hashlib

        assert len(content) == 6291456 and hashlib.md5(content).hexdigest() == data
        status, body, _ = http("PUT", f"{hub.url}/api/file/raw?target={hub.box}&path=/tmp/ok2", hub.boss, raw=content,
                               headers={"Content-Type": "application/octet-stream"})
        assert status == 200 and body["size"] == 6291456, body
    assert in_box(hub.box, "md5sum /tmp/ok2").split()[0] == data
    assert in_box(hub.box, "test -e /tmp/up && echo exists || echo absent").strip() == "absent"
    growth = rss.peak - rss.start
    print(f"\nfiles: hub RSS {rss.start / MiB:.1f} -> peak {rss.peak / MiB:.1f} MiB")
    assert growth < 150 * MiB, f"hub RSS grew by {growth / MiB:.1f} MiB"


def _upload(port: int, method: str, path: str, token: str, total: int, body: bytes | None = None, *,
            chunked: bool = False) -> int:
    """Send a ``total``-byte body (with Content-Length, or chunked) and return the status. The hub
    may answer and close before the body is through: a broken pipe after that is expected."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall((f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                   f"Content-Type: application/octet-stream\r\n{framing}\r\n\r\n").encode())
        chunk = b"\0" * 65536
        sent = 0
        with contextlib.suppress(OSError):
            while sent < total:
                piece = body[sent:sent + 65536] if body is not None else chunk[: total - sent]
                s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece)
                sent += len(piece)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in answer:
                part = s.recv(4096)
                if not part:
                    break
                answer += part
    return int(answer.split(b" ", 2)[1])


@pytest.mark.slow
@pytest.mark.lxd
def test_200_concurrent_execs_on_lxd_are_queued_never_a_crash(real_hub):
    hub = real_hub

    def one(i: int):
        return http("POST", hub.url + "/api/exec", hub.boss,
                    {"target": hub.box, "command": f"sleep 0.2; echo {i}"}, timeout=120)

    with RssSampler(hub.proc.pid) as rss, concurrent.futures.ThreadPoolExecutor(200) as pool:
        started = time.monotonic()
        results = list(pool.map(one, range(200)))
        elapsed = time.monotonic() - started
    statuses = [status for status, _, _ in results]
    assert all(status in (200, 429, 503) for status in statuses), statuses  # queued or refused, never a 5xx crash
    ok = [(i, body) for i, (status, body, _) in enumerate(results) if status == 200]
    assert len(ok) >= 190, statuses  # with the default limits every one is queued and runs
    assert all(body["stdout"] == f"{i}\n" for i, body in ok)
    assert hub.proc.poll() is None
    status, body, _ = http("GET", hub.url + "/api/health")
    assert status == 200
    # [limits] exec_concurrency (64) at a time: at least ceil(200 / 64) waves of 0.2 s
    assert elapsed >= 0.6, elapsed
    print(f"\n200 execs: {elapsed:.1f}s, hub RSS {rss.start / MiB:.1f} -> peak {rss.peak / MiB:.1f} MiB")
    assert rss.peak - rss.start < 100 * MiB


@pytest.mark.slow
@pytest.mark.ssh
async def test_200_concurrent_execs_on_ssh_stay_within_max_sessions(hub_harness, tmp_path):
    from claude_net.testing import require_component
    from claude_net_ssh.testserver import PrivateSshd, sshd_available

    import claude_net_ssh

    ok, why = sshd_available()
    require_component("OpenSSH sshd", ok, why)
    log = tmp_path / "spans"
    log.mkdir()
    with PrivateSshd(tmp_path / "sshd", max_sessions=10) as sshd:
        async with hub_harness(plugins=[claude_net_ssh, claude_net_activity],
                               ssh={"connect_timeout": 5.0, "nodes": {"ser-8": sshd.node_config()}}) as h:
            boss = await h.token("boss", admin=True)
            # each command notes when it started and ended on the server
            command = (f"s=$(date +%s.%N); sleep 0.05; e=$(date +%s.%N); echo \"$s $e\" > {log}/$$.span; echo {{i}}")
            results = await asyncio.gather(*(h.call("POST", "/api/exec", boss, {"target": "ser-8",
                                                                             "command": command.replace("{i}", str(i))})
                                             for i in range(200)))
            statuses = [status for status, _ in results]
            assert statuses == [200] * 200, [b for s, b in results if s != 200][:3]
            assert [body["stdout"] for _, body in results] == [f"{i}\n" for i in range(200)]
            spans = [tuple(map(float, p.read_text().split())) for p in log.iterdir()]
            assert len(spans) == 200
            points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
            running = peak = 0
            for _, delta in points:
                running += delta
                peak = max(peak, running)
            settings = h.hub.settings.section("ssh")
            assert peak <= settings.max_channels < sshd.max_sessions, peak
            rows = await h.hub.db.fetch_all("SELECT result FROM activity_log WHERE type = 'exec'")
            assert len(rows) == 200 and {r["result"] for r in rows} == {"ok"}


@pytest.mark.slow
def test_slow_clients_are_dropped_without_hurting_others(tmp_path):
    """Clients that trickle a body get 408 after [limits] body_timeout; everyone else is served at once."""
    settings = load_settings(None, environ={}, overrides={
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}", "limits": {"body_timeout": 2.0}})
    with ThreadedHub(create_app(settings, plugins=[claude_net_activity], load_entrypoints=False)) as hub:
        token = hub.token("alpha")
        results: list[tuple[float, bytes]] = []

        def trickle() -> None:
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", hub.port), timeout=15) as s:
                s.sendall((f"POST /api/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                           "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode())
                with contextlib.suppress(OSError):
                    for _ in range(40):  # one byte every 0.25 s: 10 s for the body if nobody stops it
                        s.sendall(b" ")
                        time.sleep(0.25)
                answer = b""
                with contextlib.suppress(OSError):
                    answer = s.recv(4096)
            results.append((time.monotonic() - started, answer))

        slow = [threading.Thread(target=trickle) for _ in range(30)]
        for t in slow:
            t.start()
        time.sleep(0.3)
        latencies = []
        for i in range(40):  # meanwhile, normal clients
            t0 = time.monotonic()
            status, body, _ = http("POST", hub.url + "/api/send", token, {"to": "alpha", "message": f"m{i}"})
            latencies.append(time.monotonic() - t0)
            assert status == 200, body
        for t in slow:
            t.join(20)
        assert len(results) == 30
        for elapsed, answer in results:
            assert elapsed < 6, elapsed  # dropped after ~2 s, not after the 10 s the body would take
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert any(answer.startswith(b"HTTP/1.1 408") for _, answer in results)
        assert max(latencies) < 1.0, latencies
        status, body, _ = http("GET", hub.url + "/api/inbox?limit=500", token)
        assert body["count"] == 40  # nothing half-sent was stored
        assert json.dumps(body)
