"""The ``[lxd]`` configuration section (plain dataclasses: imported by the CLI, keep it light)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from claude_net import help_field


@dataclass
class LxdNodeSettings:
    """``[lxd.nodes.NAME]``: settings for one container; unset keys fall back to ``[lxd]``."""

    shell: str = help_field("", "Shell for exec in this container ('' = the [lxd] shell / auto-detect).")
    user: int = help_field(-1, "uid commands run as in this container (-1 = the [lxd] user).")
    group: int = help_field(-1, "gid commands run as in this container (-1 = the [lxd] group).")
    cwd: str = help_field("", "Working directory for exec in this container ('' = [lxd] cwd).")
    env: dict[str, str] = help_field({}, "Extra environment for exec in this container (added to [lxd] env).")


@dataclass
class LxdSettings:
    enabled: bool = help_field(True, "Serve the LXD instances of this host as nodes.")
    endpoint: str = help_field(
        "",
        "LXD API: '' = the local unix socket ($LXD_DIR, the snap's, or /var/lib/lxd/unix.socket), "
        "a socket path, or https://host:8443 (then set cert, key and server_cert).",
    )
    project: str = help_field("default", "LXD project whose instances are nodes.")
    cert: str = help_field("", "Client certificate (PEM) for an https endpoint.")
    key: str = help_field("", "Client key (PEM) for an https endpoint.")
    server_cert: str = help_field("", "Pinned server certificate (PEM) for an https endpoint ('' = system CAs).")
    include: list[str] = help_field([], "Only instances whose name matches one of these glob patterns (empty: all).")
    exclude: list[str] = help_field([], "Hide instances whose name matches one of these glob patterns.")
    shell: str = help_field(
        "", "Shell commands run under ('' = bash when the container has it, else /bin/sh; detected once)."
    )
    user: int = help_field(0, "uid commands run as (0 = root).")
    group: int = help_field(0, "gid commands run as.")
    cwd: str = help_field("", "Working directory for exec ('' = LXD's default, the user's home).")
    env: dict[str, str] = help_field({}, "Extra environment variables for every exec.")
    workers: int = help_field(8, "Worker threads for short LXD API calls (listing, files, container ops).")
    connect_timeout: float = help_field(1.5, "Seconds to connect to the LXD daemon before reporting it unavailable.")
    request_timeout: float = help_field(30.0, "Seconds an ordinary LXD API call may take.")
    stop_timeout: float = help_field(30.0, "Seconds a graceful stop may take before the container is forced off.")
    operation_timeout: float = help_field(300.0, "Seconds start, snapshot and restore may take.")
    output_guard: Literal["hub", "container"] = help_field(
        "hub",
        "How exec output is bounded. 'hub': the command writes straight to LXD's recorded output "
        "(no extra processes); the hub reads at most the cap, and a watchdog stops a command whose "
        "output passes max_log_bytes. 'container': output is capped inside the container with "
        "head -c (strict bound on the host's log directory, about 3-5 ms more per exec).",
    )
    max_log_bytes: int = help_field(
        64 * 1024 * 1024,
        "output_guard = 'hub': a command whose recorded stdout or stderr grows past this many bytes "
        "is stopped as runaway (its result is marked truncated).",
    )
    log_dir: str = help_field(
        "",
        "Where LXD keeps instance logs on this host, for the output watchdog ('' = detect: "
        "/var/log/lxd, the snap's, $LXD_DIR/logs; remote daemons are asked over the API).",
    )
    status_details: bool = help_field(True, "Show memory, process count and addresses in `machines`.")
    nodes: dict[str, LxdNodeSettings] = help_field({}, "Per-container overrides: [lxd.nodes.NAME].")

    def node(self, name: str) -> LxdNodeSettings | None:
        return self.nodes.get(name)


SECTIONS = {"lxd": LxdSettings}
