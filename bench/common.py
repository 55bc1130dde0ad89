"""Shared pieces of the benchmarks: result rows, component checks, hubs, PostgreSQL scratch databases.

Every benchmark module can run on its own (``python bench/bench_x.py``) and exposes a function
that returns plain dicts; ``python -m bench`` turns those into :class:`Row` objects and prints one
table. Imported as a top-level module (each script puts ``bench/`` on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from claude_net.testing import HubProcess, free_port, pg_available, scratch_pg_database

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
LXD_SOCKET = os.environ.get("LXD_SOCKET", "/var/lib/lxd/unix.socket")
LXD_IMAGE = os.environ.get("LXD_IMAGE_ALIAS", "claude-net-busybox")

__all__ = ["HubProcess", "free_port", "Row", "pct", "wrk_available", "lxd_available", "pg_available",
           "sshd_available", "pg_database", "ProbeHub", "rss_kib", "hwm_kib", "reset_hwm", "log"]


def log(*parts: object) -> None:
    """Progress lines go to stderr, so stdout carries only the result (table or JSON)."""
    print(*parts, file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the suite's table."""

    bench: str  # the benchmark's name (what --only matches)
    figure: str  # what was measured, with its value
    value: float | None = None
    baseline: float | None = None
    unit: str = ""
    baseline_label: str = ""
    ratio: float | None = None
    target: str = ""
    status: str = "info"  # PASS, FAIL, skipped, error, info
    note: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- components ------------------------------------------------------------------------------------


def exec_arguments(parser: Any) -> None:
    """The command-line options the LXD and SSH exec benchmarks share."""
    parser.add_argument("--n", type=int, default=200, help="latency samples per path (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per path (default 3)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--per-client", type=int, default=10, help="execs per client per round (default 10)")
    parser.add_argument("--all-plugins", action="store_true",
                        help="load every installed plugin in the hub (e.g. the activity log), not just the backend")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of the report")


def wrk_available() -> tuple[bool, str]:
    return (True, "") if shutil.which("wrk") else (False, "wrk not installed (scripts/dev-services installs it)")


def lxd_available() -> tuple[bool, str]:
    if not shutil.which("lxc"):
        return False, "lxc not installed (scripts/lxd-setup)"
    try:
        out = subprocess.run(["lxc", "image", "list", "--format", "json"], capture_output=True, text=True,
                             timeout=20)
    except subprocess.TimeoutExpired:
        return False, "the LXD daemon does not answer"
    if out.returncode != 0:
        return False, f"LXD is not running ({out.stderr.strip()[:120]}); run scripts/lxd-setup"
    aliases = {a["name"] for image in json.loads(out.stdout or "[]") for a in image.get("aliases", [])}
    if LXD_IMAGE not in aliases:
        return False, f"LXD image {LXD_IMAGE!r} missing (scripts/lxd-setup builds it)"
    return True, ""


def pg_database():
    """A fresh PostgreSQL database for one benchmark; dropped afterwards. Yields its URL."""
    return scratch_pg_database("cn_bench")


def sshd_available() -> tuple[bool, str]:
    try:
        from claude_net_ssh.testserver import sshd_available as check
    except ImportError:
        return False, "the SSH backend plugin (claude-net-ssh) is not installed"
    return check()


# -- process memory ---------------------------------------------------------------------------------


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    return _status(pid, "VmRSS")


def hwm_kib(pid: int) -> int:
    """Peak RSS since start or since :func:`reset_hwm`."""
    return _status(pid, "VmHWM")


def reset_hwm(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter of ``pid`` (``clear_refs`` 5); False if not permitted."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# -- a hub with extra in-process instruments ------------------------------------------------------------


class ProbeHub(HubProcess):
    """``claude-net serve`` exactly as shipped, plus the loop-lag probe plugin of ``bench/loopprobe.py``.

    The probe runs inside the hub's event loop and answers ``GET /api/bench/lag`` (token needed).
    """

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = {**self.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), self.env.get("PYTHONPATH")]))}
        return [sys.executable, "-m", "loopprobe", "serve"], env


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0
