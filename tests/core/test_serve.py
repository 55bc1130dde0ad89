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


def test_sigterm_ends_long_polls_and_streams_promptly():
    import threading
    import time
    import urllib.request

    hub = HubProcess("[plugins]\nallow = [\"activity\"]\n").start()
    try:
        admin, agent = hub.token("stopadmin", admin=True), hub.token("stopagent")
        results = {}

        def long_poll():
            req = urllib.request.Request(hub.url + "/api/inbox?wait=60", headers={"Authorization": f"Bearer {agent}"})
            started = time.monotonic()
            with urllib.request.urlopen(req, timeout=30) as resp:
                results["poll"] = (resp.status, time.monotonic() - started)

        def stream():
            req = urllib.request.Request(hub.url + "/api/activity/stream", headers={"Authorization": f"Bearer {admin}"})
            started = time.monotonic()
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = resp.read().decode()
            results["stream"] = (body, time.monotonic() - started)

        threads = [threading.Thread(target=long_poll), threading.Thread(target=stream)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        hub.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(20)
        assert hub.proc.wait(20) == 0
        assert results["poll"][0] == 200 and results["poll"][1] < 8
        assert "event: end" in results["stream"][0] and results["stream"][1] < 8
    finally:
        hub.stop()


async def test_serving_freezes_the_startup_heap_after_the_hub_started(make_settings):
    """`claude-net serve` hides the startup heap from the garbage collector (no ~100 ms full
    collections under load) and collects the young generation less often, once the hub is up."""
    import gc

    from claude_net.http import create_app
    from claude_net.serve import GC_YOUNG_THRESHOLD, _tune_gc

    before = gc.get_threshold()
    app = create_app(make_settings(), load_entrypoints=False)
    _tune_gc(app)
    try:
        assert gc.get_freeze_count() == 0
        async with app.test_app():
            assert app.hub.started
            assert gc.get_freeze_count() > 1000
            assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
