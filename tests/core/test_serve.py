"""A real `claude-net serve` (Hypercorn) with the CLI's client verbs against it."""

import os
import signal
import subprocess
import sys

import pytest

from claude_net.testing import HubProcess


@pytest.fixture(scope="module")
def live_hub():
    hub = HubProcess("[plugins]\nallow = [\"permissions\", \"activity\"]\n").start()
    yield hub
    hub.stop()


def cli(hub, *args, token=None, check=True):
    env = {**hub.env, "CLAUDE_NET_URL": hub.url}
    if token:
        env["CLAUDE_NET_TOKEN"] = token
    out = subprocess.run([sys.executable, "-m", "claude_net.cli", *args], env=env, cwd=hub.dir,
                         capture_output=True, text=True)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_client_verbs_against_a_running_hub(live_hub):
    a, b = live_hub.token("clialpha"), live_hub.token("clibeta")
    assert cli(live_hub, "send", "clibeta", "hello over http", token=a).stdout.startswith("sent (id ")
    inbox = cli(live_hub, "inbox", "--ack", token=b).stdout
    assert "clialpha: hello over http" in inbox
    assert cli(live_hub, "inbox", token=b).stderr.strip() == "no unread messages"
    machines = cli(live_hub, "machines", token=a).stdout
    assert "clibeta" in machines and "clialpha" in machines
    bad = cli(live_hub, "send", "nobody-here", "x", token=a, check=False)
    assert bad.returncode == 1 and "unknown node" in bad.stderr


def test_long_poll_over_real_http(live_hub):
    import threading
    import time

    a, b = live_hub.token("pollalpha"), live_hub.token("pollbeta")
    threading.Timer(0.5, lambda: cli(live_hub, "send", "pollbeta", "ping", token=a)).start()
    started = time.monotonic()
    out = cli(live_hub, "inbox", "--wait", "10", "--ack", token=b).stdout
    assert "ping" in out and time.monotonic() - started < 5


def test_serve_refuses_bad_config_naming_the_key(tmp_path):
    cfg = tmp_path / "claude-net.toml"
    cfg.write_text("[messaging]\nmax_bytez = 5\n")
    out = subprocess.run([sys.executable, "-m", "claude_net.cli", "serve"], capture_output=True, text=True,
                         env={**os.environ, "CLAUDE_NET_CONFIG": str(cfg)}, timeout=60)
    assert out.returncode == 2 and "messaging.max_bytez" in out.stderr and str(cfg) in out.stderr


def test_sigterm_stops_gracefully():
    hub = HubProcess().start()
    hub.proc.send_signal(signal.SIGTERM)
    assert hub.proc.wait(20) == 0
    hub.stop()
