"""The ``[ssh]`` configuration section and its ``[ssh.nodes.<name>]`` tables.

Plain dataclasses (no I/O, no asyncssh): the CLI loads them to validate configs and write the
starter file. :func:`check` does the semantic checks the type system cannot express and is run
when the hub starts, so a broken node definition stops the start with a sentence naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from claude_net import ConfigError, HubError, help_field, validate_node_name

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass
class SshNodeSettings:
    host: str = help_field("", "Host name or IP address of the machine's SSH server (required).")
    port: int = help_field(22, "Port of the SSH server.")
    user: str = help_field("root", "User to log in as; commands and file operations run as this user.")
    key_file: str = help_field(
        "",
        "Private key for the login (OpenSSH format, no passphrase). Relative paths are relative to the "
        "config file. Empty: the hub user's ssh-agent and ~/.ssh/id_* keys.",
    )
    host_key: str = help_field(
        "",
        "The server's pinned public host key, e.g. \"ssh-ed25519 AAAAC3...\" (a line of `ssh-keyscan` "
        "output is accepted; several keys may be given on separate lines). Takes precedence over known_hosts.",
    )
    known_hosts: str = help_field(
        "",
        "known_hosts file to verify the host key against (OpenSSH format, '[host]:port' entries for "
        "non-22 ports). Empty and no host_key: the hub user's ~/.ssh/known_hosts.",
    )
    trust_on_first_use: bool = help_field(
        False,
        "Accept an unknown host key on the first connection and append it to known_hosts (which must "
        "be set). A key that later changes is still refused. Off: unknown keys are refused.",
    )
    shell: str = help_field(
        "",
        "Shell that runs each command as `shell -c COMMAND`, e.g. /bin/bash. Empty: the SSH user's login shell "
        "runs it, exactly as `ssh host COMMAND` would (cheapest; the login shell must be POSIX: sh, bash, zsh, ...).",
    )
    cwd: str = help_field("", "Working directory for commands (absolute). Empty: the user's home directory.")
    env: dict[str, str] = help_field({}, "Environment variables set for every command on this node.")
    max_channels: int = help_field(0, "Concurrent channels on this node's connection. 0: [ssh] max_channels.")


@dataclass
class SshSettings:
    connect_timeout: float = help_field(
        10.0, "Seconds to establish a connection (TCP, SSH handshake, login); separate from command timeouts.")
    keepalive_interval: float = help_field(
        15.0, "Seconds between SSH keepalive probes on idle connections (0 disables them).")
    keepalive_count_max: int = help_field(
        3, "Unanswered keepalives after which a connection is considered dead and reopened.")
    max_channels: int = help_field(
        6,
        "Concurrent commands/SFTP sessions per node; extra calls wait their turn. Keep it well below the "
        "server's MaxSessions (OpenSSH default 10): OpenSSH frees a session slot a moment after its channel "
        "closes, and one more channel is used to stop timed-out commands.",
    )
    status_cache_seconds: float = help_field(
        5.0, "How long a node's reachable/unreachable status is reused before it is probed again.")
    kill_grace: float = help_field(
        2.0, "Seconds a timed-out command gets after SIGTERM before its process group is killed.")
    file_timeout: float = help_field(
        120.0, "Seconds a file read or write over SFTP may take (a streamed raw transfer: each SFTP step of it).")
    asyncssh_log_level: str = help_field(
        "warning",
        "Log level of the asyncssh library (debug, info, warning, error). At info it logs every channel "
        "and every command line, so it is kept at warning unless you are debugging.",
    )
    nodes: dict[str, SshNodeSettings] = help_field(
        {}, "SSH nodes, one [ssh.nodes.NAME] table each (NAME is the node name agents use).")


def resolve_path(value: str, base: Path | None) -> Path:
    """``~`` expanded; relative paths are relative to the config file's directory."""
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def check(settings: SshSettings) -> None:
    """Raise :class:`ConfigError` for a node definition the backend cannot use."""
    for key in ("connect_timeout", "max_channels", "status_cache_seconds", "file_timeout"):
        if getattr(settings, key) <= 0:
            raise ConfigError(f"[ssh] {key} must be greater than 0")
    for key in ("keepalive_interval", "keepalive_count_max", "kill_grace"):
        if getattr(settings, key) < 0:
            raise ConfigError(f"[ssh] {key} must not be negative")
    if settings.asyncssh_log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("[ssh] asyncssh_log_level must be debug, info, warning or error")
    for name, node in settings.nodes.items():
        where = f"[ssh.nodes.{name}]"
        try:
            validate_node_name(name, field_name="SSH node name")
        except HubError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
        if not node.host:
            raise ConfigError(f"{where}: host is required")
        if not 0 < node.port < 65536:
            raise ConfigError(f"{where}: port must be between 1 and 65535")
        if not node.user:
            raise ConfigError(f"{where}: user must not be empty")
        if node.shell and not node.shell.startswith("/"):
            raise ConfigError(f"{where}: shell must be an absolute path such as /bin/bash, or empty for the login shell")
        if node.cwd and not node.cwd.startswith("/"):
            raise ConfigError(f"{where}: cwd must be an absolute path")
        if node.max_channels < 0:
            raise ConfigError(f"{where}: max_channels must not be negative")
        for key, value in node.env.items():
            if not ENV_NAME.fullmatch(key):
                raise ConfigError(f"{where}: env name {key!r} is not a valid variable name")
            if "\x00" in value:
                raise ConfigError(f"{where}: env {key} must not contain NUL bytes")
        if node.trust_on_first_use and not node.known_hosts:
            raise ConfigError(
                f"{where}: trust_on_first_use needs a known_hosts file to remember the key it trusts")
        if node.trust_on_first_use and node.host_key:
            raise ConfigError(f"{where}: trust_on_first_use makes no sense with a pinned host_key; drop one")
