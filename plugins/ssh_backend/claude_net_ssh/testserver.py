"""A private OpenSSH server on a loopback port, for this plugin's tests and benchmark.

Everything lives in one directory: its own host key, ``sshd_config``, client key pair,
``authorized_keys`` and a ``known_hosts`` file for the client side. ``sshd -D`` runs in the
foreground as a child of the caller, which stops it (and the per-connection processes it forked)
by process id. Not imported by the plugin itself.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def sshd_available() -> tuple[bool, str]:
    if not os.path.exists(SSHD):
        return False, f"{SSHD} not found (apt-get install openssh-server)"
    for tool in ("ssh-keygen",):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return False, f"{tool} not found (apt-get install openssh-client)"
    return True, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True)
    return Path(f"{path}.pub").read_text().strip()


class PrivateSshd:
    """``with PrivateSshd(tmpdir) as sshd:`` a running sshd; ``sshd.port``, ``sshd.client_key``, ..."""

    def __init__(self, directory: str | os.PathLike[str], *, port: int | None = None, max_sessions: int = 10,
                 log_level: str = "ERROR", skip_bashrc: bool = True) -> None:
        self.dir = Path(directory)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.user = getpass.getuser()
        self.max_sessions = max_sessions
        self.log_level = log_level
        #: bash sources ~/.bashrc for every sshd session; on a machine whose root .bashrc runs
        #: `pyenv init` that alone costs ~100 ms per command. SHLVL=1 in the session makes bash
        #: skip it, so tests and the benchmark measure SSH and the hub, not the login user's rc files.
        self.skip_bashrc = skip_bashrc
        self.process: subprocess.Popen[bytes] | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = self.dir / "client_ed25519"
        self.config = self.dir / "sshd_config"
        self.known_hosts = self.dir / "known_hosts"
        self.log = self.dir / "sshd.log"
        self.host_public_key = _keygen(self.host_key)  # "ssh-ed25519 AAAA... comment"
        self.client_public_key = _keygen(self.client_key)
        (self.dir / "authorized_keys").write_text(self.client_public_key + "\n")
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {self.host_public_key}\n")
        self.write_config()

    def write_config(self) -> None:
        self.config.write_text("\n".join([
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            f"MaxSessions {self.max_sessions}",
            "MaxStartups 100:30:200",
            "UseDNS no",
            "PrintMotd no",
            f"LogLevel {self.log_level}",
            "Subsystem sftp internal-sftp",
            *(["SetEnv SHLVL=1"] if self.skip_bashrc else []),
            "",
        ]))

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None, "already running"
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        log = self.log.open("ab")
        try:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"sshd exited at start: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not answer on port {self.port}: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the listener and every connection it serves, as a crash or host reboot would."""
        process, self.process = self.process, None
        if process is None:
            return
        doomed = [process.pid, *_descendants(process.pid)]
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL if pid != process.pid else signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def connection_processes(self) -> list[int]:
        """PIDs of the processes serving current connections (everything below the listener)."""
        return _descendants(self.process.pid) if self.process is not None else []

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> PrivateSshd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for clients ----------------------------------------------------------------------------

    def node_config(self, **extra: object) -> dict[str, object]:
        """An ``[ssh.nodes.NAME]`` table for this server, host key pinned."""
        return {"host": self.host, "port": self.port, "user": self.user, "key_file": str(self.client_key),
                "host_key": self.host_public_key, **extra}

    def ssh_command(self, *command: str) -> list[str]:
        """An OpenSSH client command line for this server, host key verified against known_hosts."""
        return ["ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(self.client_key),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR", f"{self.user}@{self.host}", *command]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (sshd's per-connection children and their sessions), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found
