"""Faults: server down, a server that never speaks SSH, restarts, host keys, logins, config."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import types

import pytest

import claude_net_ssh
from claude_net import ConfigError
from claude_net.testing import free_port
from claude_net_ssh.testserver import PrivateSshd


@contextlib.asynccontextmanager
async def silent_server():
    """Accepts TCP connections and never says a word (no SSH banner)."""
    accepted = []
    writers = []

    async def handle(reader, writer):
        accepted.append(writer.get_extra_info("peername"))
        writers.append(writer)
        with contextlib.suppress(Exception):
            await reader.read()  # until the client gives up

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_server_down_fails_fast_with_503(ssh_hub, sshd):
    node = sshd.node_config(port=free_port())  # nothing listens there
    async with ssh_hub(nodes={"ser-8": node}, connect_timeout=2.0) as s:
        started = time.monotonic()
        status, body = await s.exec("true")
        assert status == 503, body
        assert body["code"] == "ssh_unreachable" and "refused" in body["error"]
        assert time.monotonic() - started < 2.0
        status, body = await s.read("/etc/hostname")
        assert status == 503, body
        s.hub.nodes.invalidate()  # the core caches listings for [nodes] cache_seconds
        status, body = await s.h.call("GET", "/api/machines", s.admin)
        (row,) = [m for m in body["machines"] if m["name"] == "ser-8"]
        assert row["backend"] == "ssh" and row["state"] == "unreachable"
        assert "refused" in row["info"]["error"]
        errors = s.recorder.of_type("ssh", "error")
        assert len(errors) == 1, errors  # one event per distinct failure, not one per attempt


async def test_a_server_that_never_speaks_ssh_fails_within_the_connect_timeout(ssh_hub, sshd):
    async with silent_server() as (port, accepted):
        async with ssh_hub(nodes={"ser-8": sshd.node_config(port=port)}, connect_timeout=1.0) as s:
            started = time.monotonic()
            status, body = await s.exec("true", timeout=30)
            elapsed = time.monotonic() - started
            assert status == 503, body
            assert body["code"] == "ssh_timeout" and "1s" in body["error"]
            assert elapsed < 2.5, elapsed
            assert accepted


async def test_status_is_cached_and_never_blocks_machines(ssh_hub, sshd):
    async with silent_server() as (port, accepted):
        async with ssh_hub(nodes={"ser-8": sshd.node_config(port=port)}, connect_timeout=1.0,
                           status_cache_seconds=60) as s:
            for _ in range(10):
                s.hub.nodes.invalidate()  # defeat the core's own cache: ask the backend every time
                started = time.monotonic()
                status, body = await s.h.call("GET", "/api/machines", s.admin)
                assert status == 200 and time.monotonic() - started < 0.5
            (row,) = [m for m in body["machines"] if m["name"] == "ser-8"]
            assert row["state"] in ("unknown", "unreachable")
            await asyncio.sleep(1.5)
            status, body = await s.h.call("GET", "/api/machines", s.admin)
            assert len(accepted) == 1  # one probe, not one per listing


async def test_machines_shows_a_reachable_node(ssh_hub, sshd):
    async with ssh_hub() as s:
        await s.wait_connected()
        s.hub.nodes.invalidate()
        status, body = await s.h.call("GET", "/api/machines", s.plain)
        (row,) = [m for m in body["machines"] if m["name"] == "ser-8"]
        assert row["backend"] == "ssh" and row["state"] == "reachable"
        assert row["capabilities"] == ["exec", "file_read", "file_write"]
        assert row["info"]["host"] == "127.0.0.1" and row["info"]["port"] == sshd.port
        assert row["info"]["hostKey"].startswith("ssh-ed25519 SHA256:")


async def test_restarted_server_next_call_reconnects_by_itself(ssh_hub, own_sshd):
    async with ssh_hub(nodes={"ser-8": own_sshd.node_config()}) as s:
        first = (await s.ok("echo $SSH_CLIENT"))["stdout"].split()[1]
        own_sshd.restart()  # every connection is cut, a new server listens on the same port
        body = await s.ok("echo $SSH_CLIENT")
        assert body["stdout"].split()[1] != first  # a new connection
        own_sshd.stop()
        await asyncio.sleep(0.2)
        status, body = await s.exec("true")
        assert status == 503, body
        own_sshd.start()
        assert (await s.ok("echo back"))["stdout"] == "back\n"
        assert s.recorder.of_type("ssh", "ok")  # the recovery is recorded too


async def test_keepalives_drop_a_connection_whose_server_hangs(ssh_hub, own_sshd):
    async with ssh_hub(nodes={"ser-8": own_sshd.node_config()}, keepalive_interval=0.3, keepalive_count_max=2) as s:
        first = (await s.ok("echo $SSH_CLIENT"))["stdout"].split()[1]
        node = s.backend.nodes["ser-8"]
        frozen = own_sshd.connection_processes()
        assert frozen
        for pid in frozen:  # the server side of our connection stops answering, TCP stays up
            os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 5
            while node.connected:
                assert time.monotonic() < deadline, "keepalives did not notice the hung server"
                await asyncio.sleep(0.05)
            body = await s.ok("echo $SSH_CLIENT")  # a fresh connection from the still-running listener
            assert body["stdout"].split()[1] != first
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


async def test_changed_host_key_is_refused_with_an_error_and_an_event(ssh_hub, sshd, tmp_path):
    impostor = PrivateSshd(tmp_path / "impostor")  # a different host key
    async with ssh_hub(nodes={"ser-8": sshd.node_config(host_key=impostor.host_public_key)}) as s:
        status, body = await s.exec("true")
        assert status == 503, body
        assert body["code"] == "host_key_mismatch"
        assert "CHANGED" in body["error"] and "SHA256:" in body["error"]
        (event,) = s.recorder.of_type("ssh", "error")
        assert event.target == "ser-8" and event.data["code"] == "host_key_mismatch"
        assert event.data["fingerprint"].startswith("SHA256:")
        status, body = await s.read("/etc/hostname")
        assert status == 503 and body["code"] == "host_key_mismatch"


async def test_unknown_host_key_is_refused_unless_trust_on_first_use(ssh_hub, sshd, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    node = sshd.node_config(host_key="", known_hosts=str(known_hosts))
    async with ssh_hub(nodes={"ser-8": node}) as s:
        status, body = await s.exec("true")
        assert status == 503 and body["code"] == "host_key_unknown", body
        assert "ssh-keyscan" in body["error"]
        assert s.recorder.of_type("ssh", "error")
    assert known_hosts.read_text() == ""

    node["trust_on_first_use"] = True
    async with ssh_hub(nodes={"ser-8": node}) as s:
        assert (await s.ok("echo trusted"))["stdout"] == "trusted\n"
        learned = s.recorder.of_type("ssh", "ok")
        assert learned and learned[0].data["event"] == "host_key_learned"
    line = known_hosts.read_text()
    assert line.startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    assert line.split()[2] == sshd.host_public_key.split()[1]
    # OpenSSH's own client accepts the file the hub wrote
    assert subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{sshd.port}", "-f", str(known_hosts)],
                          capture_output=True).returncode == 0

    # once learned, a different key is a change, and refused even with trust_on_first_use
    impostor = PrivateSshd(tmp_path / "impostor", port=free_port())
    with impostor:
        node = impostor.node_config(host_key="", known_hosts=str(known_hosts), trust_on_first_use=True)
        known_hosts.write_text(f"[127.0.0.1]:{impostor.port} {sshd.host_public_key}\n")
        async with ssh_hub(nodes={"ser-8": node}) as s:
            status, body = await s.exec("true")
            assert status == 503 and body["code"] == "host_key_mismatch", body


async def test_known_hosts_file_verifies(ssh_hub, sshd):
    async with ssh_hub(nodes={"ser-8": sshd.node_config(host_key="", known_hosts=str(sshd.known_hosts))}) as s:
        assert (await s.ok("echo via-known-hosts"))["stdout"] == "via-known-hosts\n"


async def test_rejected_login_is_a_clear_error(ssh_hub, sshd, tmp_path):
    stranger = PrivateSshd(tmp_path / "stranger")  # only for its client key, not authorized on sshd
    async with ssh_hub(nodes={"ser-8": sshd.node_config(key_file=str(stranger.client_key))}) as s:
        status, body = await s.exec("true")
        assert status == 503 and body["code"] == "ssh_auth_failed", body
        assert "authorized_keys" in body["error"]


async def test_container_operations_say_this_is_not_a_container(ssh_hub):
    async with ssh_hub() as s:
        for op, extra in (("snapshot", {}), ("restore", {"snapshot": "x"}), ("start", {}), ("stop", {})):
            status, body = await s.h.call("POST", f"/api/container/{op}", s.admin, {"name": "ser-8", **extra})
            assert status == 400, (op, body)
            assert body["code"] == "not_a_container"
            assert body["error"].startswith("ser-8 is not a container (backend ssh)")
        status, body = await s.h.call("GET", "/api/container/snapshots?name=ser-8", s.admin)
        assert status == 400 and body["code"] == "not_a_container"


@pytest.mark.parametrize("nodes, message", [
    ({"Ser_8": {"host": "h", "host_key": "x"}}, "not a valid node name"),
    ({"ser-8": {"host": ""}}, "host is required"),
    ({"ser-8": {"host": "h", "host_key": "not a key"}}, "not a public key line"),
    ({"ser-8": {"host": "h", "trust_on_first_use": True}}, "needs a known_hosts file"),
    ({"ser-8": {"host": "h", "env": {"BAD-NAME": "x"}}}, "not a valid variable name"),
    ({"ser-8": {"host": "h", "shell": "bash"}}, "absolute path"),
])
def test_bad_node_config_stops_the_start_with_a_sentence(make_settings, nodes, message):
    # The startup hook alone, on a stand-in hub: a real hub whose start fails leaves its
    # database open (see the plugin's report), which would keep the test process alive.
    settings = make_settings(ssh={"nodes": nodes})
    settings.bind_sections(claude_net_ssh.config_sections(), strict=True)
    hub = types.SimpleNamespace(settings=settings, plugin_state={})
    with pytest.raises(ConfigError) as info:
        claude_net_ssh.startup(hub)
    assert message in str(info.value) and "[ssh.nodes." in str(info.value)
    assert "ssh" not in hub.plugin_state
