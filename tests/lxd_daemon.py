"""The LXD daemon that scripts/lxd-setup starts, for the tests that stop and restart it on purpose
(the LXD backend's fault tests and the hardening suite). Never touches a daemon someone else
started."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def our_lxd_daemon() -> int | None:
    """The pid of the LXD daemon scripts/lxd-setup started (never anyone else's), or None."""
    out = subprocess.run(["pgrep", "-x", "lxd"], capture_output=True, text=True).stdout.split()
    for pid in out:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--logfile" in cmdline and any(arg.endswith(b"lxd-ci.log") for arg in cmdline):
            return int(pid)
    return None


def alive(pid: int) -> bool:
    """Whether ``pid`` is running (a zombie is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def restart_lxd() -> None:
    """scripts/lxd-setup, retried: other tests (and other people) need the daemon back."""
    last = None
    for _ in range(3):
        last = subprocess.run([str(ROOT / "scripts" / "lxd-setup")], timeout=180, capture_output=True, text=True)
        if last.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"could not restart LXD: {last.stderr[-2000:]}")
