"""One pooled, host-key-verified SSH connection per node.

:class:`NodeConnection` owns the connection of one node: it connects on first use (one attempt
at a time, shared by every caller waiting for it), verifies the server's host key against the
pinned key or known_hosts (trust on first use only when configured), keeps the connection alive
with keepalives, notices when it drops and reconnects on the next call, and bounds the number of
channels open at once below the server's ``MaxSessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh

from claude_net import ConfigError, Event, FairShares, Unavailable, isotime

from .settings import SshNodeSettings, SshSettings, resolve_path

log = logging.getLogger("claude_net_ssh")

#: errors that mean "this connection is unusable" (as opposed to "the server refused this request")
CONNECTION_ERRORS = (asyncssh.DisconnectError, asyncssh.ConnectionLost, ConnectionError, OSError, EOFError)

#: AES-GCM first: with AES-NI it costs noticeably less CPU per packet in asyncssh than ChaCha20
#: (whose per-packet setup is done in Python); the rest of asyncssh's defaults follow as fallbacks.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                     "aes256-ctr", "aes192-ctr", "aes128-ctr")

#: calls of one agent that may wait for a channel of one node; past that they are refused (429)
CHANNEL_QUEUE_PER_SOURCE = 64

#: channel-open refusals that mean "too many sessions right now" (retried) rather than "never"
BUSY_CODES = frozenset({asyncssh.OPEN_CONNECT_FAILED, asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                        asyncssh.OPEN_RESOURCE_SHORTAGE})


def parse_host_keys(text: str, where: str) -> list[asyncssh.SSHKey]:
    """Public keys from ``host_key``: 'ALG BASE64 [comment]' or an ssh-keyscan / known_hosts line."""
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        for i, token in enumerate(tokens[:-1]):
            if token.startswith(("ssh-", "ecdsa-", "sk-", "rsa-")):
                try:
                    keys.append(asyncssh.import_public_key(f"{token} {tokens[i + 1]}"))
                except (asyncssh.KeyImportError, ValueError) as exc:
                    raise ConfigError(f"{where}: host_key {line[:60]!r} is not a valid public key ({exc})") from None
                break
        else:
            raise ConfigError(f"{where}: host_key {line[:60]!r} is not a public key line "
                              "(expected e.g. 'ssh-ed25519 AAAA...', as printed by ssh-keyscan)")
    if not keys:
        raise ConfigError(f"{where}: host_key is empty")
    return keys


def known_hosts_pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def describe_key(key: asyncssh.SSHKey) -> str:
    return f"{key.get_algorithm()} {key.get_fingerprint()}"


class _Attempt:
    """What one connection attempt learned about the server's host key."""

    def __init__(self, trust_unknown: bool) -> None:
        self.trust_unknown = trust_unknown
        self.presented: asyncssh.SSHKey | None = None
        self.learned: asyncssh.SSHKey | None = None


class _Client(asyncssh.SSHClient):
    """Connection callbacks: host key decisions asyncssh cannot make alone, and loss detection."""

    def __init__(self, owner: NodeConnection, attempt: _Attempt) -> None:
        self._owner = owner
        self._attempt = attempt
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        # asyncssh asks only when the key is not among the trusted ones.
        self._attempt.presented = key
        if self._attempt.trust_unknown:
            self._attempt.learned = key
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner._lost(self._conn, exc)


class NodeConnection:
    """The pooled connection of one SSH node, with its status."""

    def __init__(self, name: str, node: SshNodeSettings, settings: SshSettings, *, base_dir: Path | None,
                 emit: Callable[[Event], Awaitable[None]]) -> None:
        self.name = name
        self.node = node
        self.settings = settings
        self.host, self.port, self.user = node.host, node.port, node.user
        self.address = f"{node.host}:{node.port}"
        self._emit = emit
        where = f"[ssh.nodes.{name}]"
        self._pinned = parse_host_keys(node.host_key, where) if node.host_key else None
        if node.known_hosts:
            self._known_hosts_file: Path | None = resolve_path(node.known_hosts, base_dir)
        elif self._pinned is None:
            self._known_hosts_file = Path("~/.ssh/known_hosts").expanduser()
        else:
            self._known_hosts_file = None
        self._key_file = resolve_path(node.key_file, base_dir) if node.key_file else None
        self.max_channels = node.max_channels or settings.max_channels
        #: bounds the channels (exec sessions, SFTP sessions) open at once on this connection, shared
        #: fairly between agents: one agent holds at most half of them (admins and the hub only count
        #: against the total), and a channel that frees goes to the waiting agent holding the fewest
        self.channels = FairShares(self.max_channels, per_source=max(1, self.max_channels // 2),
                                   queue_per_source=CHANNEL_QUEUE_PER_SOURCE, what="SSH channels")
        #: one extra channel at most, to stop timed-out commands while their slot is still held
        self.kill_channel = asyncio.Semaphore(1)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connecting: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self._closed = False
        # status, for /api/machines
        self.error: str | None = None
        self.error_code: str | None = None
        self.checked_at = -1e9
        self.connected_since: str | None = None
        self.fingerprint: str | None = None
        self._reported: tuple[str, str] | None = None
        self._last_attempt = -1e9

    # -- status ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def state(self) -> str:
        if self.connected:
            return "reachable"
        return "unreachable" if self.error else "unknown"

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user,
                                "connected": self.connected}
        if self.fingerprint:
            info["hostKey"] = self.fingerprint
        if self.connected_since and self.connected:
            info["connectedSince"] = self.connected_since
        if self.error and not self.connected:
            info["error"] = self.error
            info["errorCode"] = self.error_code
        return info

    def probe_if_stale(self) -> None:
        """Refresh the status in the background when it is older than status_cache_seconds."""
        if self._closed or self.connected:
            return
        if time.monotonic() - self.checked_at < self.settings.status_cache_seconds:
            return
        if self._connecting is None or self._connecting.done():
            self._start_connect()

    # -- the connection -------------------------------------------------------------------------

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The live connection, opened (or reopened) if needed. Raises :class:`Unavailable`."""
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        if self._closed:
            raise Unavailable(f"the hub is shutting down; {self.name} is no longer served", code="ssh_closed")
        task = self._connecting
        if task is None or task.done():
            task = self._start_connect()
        return await asyncio.shield(task)

    def _start_connect(self) -> asyncio.Task[asyncssh.SSHClientConnection]:
        self._last_attempt = time.monotonic()
        task = asyncio.ensure_future(self._connect())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "never retrieved"
        self._connecting = task
        return task

    def drop(self, conn: asyncssh.SSHClientConnection) -> None:
        """Forget a connection that misbehaved; the next call opens a new one."""
        if self._conn is conn:
            self._conn = None
        conn.abort()

    def _lost(self, conn: asyncssh.SSHClientConnection, exc: Exception | None) -> None:
        if self._conn is not conn:
            return
        self._conn = None
        if self._closed:
            return
        reason = f"{exc}" if exc else "closed by the server"
        log.info("SSH connection to %s (%s) lost: %s", self.name, self.address, reason)
        self.error, self.error_code = f"connection lost: {reason}", "ssh_connection_lost"
        self.checked_at = time.monotonic()
        # Reconnect in the background so the pool is warm again (or the status honest) soon, but
        # not in a loop against a server that keeps dropping fresh connections.
        recent = time.monotonic() - self._last_attempt < self.settings.status_cache_seconds
        if not recent and (self._connecting is None or self._connecting.done()):
            self._start_connect()

    def _trust(self) -> tuple[Any, bool]:
        """``(known_hosts argument for asyncssh, whether any key for this host is known)``."""
        if self._pinned is not None:
            return (self._pinned, [], []), True
        path = self._known_hosts_file
        assert path is not None
        if not path.exists():
            if self.node.trust_on_first_use:
                return ([], [], []), False
            raise Unavailable(
                f"cannot verify the host key of {self.name}: known_hosts file {path} does not exist; "
                f"pin the key with host_key in [ssh.nodes.{self.name}] (see docs/ssh.md)",
                code="host_key_unknown")
        try:
            known = asyncssh.read_known_hosts(str(path))
        except (OSError, ValueError) as exc:
            raise Unavailable(f"cannot read known_hosts file {path} for {self.name}: {exc}",
                              code="ssh_config") from None
        matched = known.match(self.host, "", self.port if self.port != 22 else None)
        return known, bool(matched[0] or matched[1])

    def _client_keys(self) -> Any:
        if self._key_file is None:
            return ()  # asyncssh default: agent and ~/.ssh/id_*
        try:
            return [asyncssh.read_private_key(str(self._key_file))]
        except (OSError, asyncssh.KeyImportError, ValueError) as exc:
            raise Unavailable(f"cannot load key_file {self._key_file} for {self.name}: {exc}",
                              code="ssh_config") from None

    async def _connect(self) -> asyncssh.SSHClientConnection:
        timeout = self.settings.connect_timeout
        attempt: _Attempt | None = None
        known = False
        try:
            known_hosts, known = self._trust()
            attempt = _Attempt(trust_unknown=self.node.trust_on_first_use and not known)
            options: dict[str, Any] = {}
            client_keys = self._client_keys()
            if client_keys:
                options.update(client_keys=client_keys, agent_path=None)
            conn, _ = await asyncio.wait_for(
                asyncssh.create_connection(
                    lambda: _Client(self, attempt), self.host, self.port,
                    username=self.user, known_hosts=known_hosts, config=None,
                    connect_timeout=timeout, login_timeout=timeout,
                    keepalive_interval=self.settings.keepalive_interval,
                    keepalive_count_max=self.settings.keepalive_count_max or 1,
                    password=None, kbdint_auth=False, gss_auth=False, encryption_algs=list(PREFERRED_CIPHERS),
                    **options,
                ),
                timeout,
            )
        except Unavailable as exc:
            await self._failed(exc.message, exc.code)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message, code = self._explain(exc, attempt, known)
            await self._failed(message, code, attempt)
            raise Unavailable(message, code=code) from None
        if self._closed:
            conn.close()
            raise Unavailable(f"the hub is shutting down; {self.name} is no longer served", code="ssh_closed")
        key = conn.get_server_host_key()
        if attempt.learned is not None:
            self._remember(attempt.learned)
            await self._emit(Event("ssh", None, self.name,
                                   f"trusted the host key of {self.name} ({self.address}) on first use: "
                                   f"{describe_key(attempt.learned)}", "ok", via="ssh",
                                   data={"event": "host_key_learned", "fingerprint": attempt.learned.get_fingerprint(),
                                         "host": self.host, "port": self.port}))
        self._conn = conn
        self.fingerprint = describe_key(key) if key is not None else None
        self.connected_since = isotime()
        self.checked_at = time.monotonic()
        recovered = self._reported is not None
        self.error = self.error_code = None
        self._reported = None
        log.info("SSH connection to %s (%s) open", self.name, self.address)
        if recovered:
            await self._emit(Event("ssh", None, self.name, f"connected to {self.name} ({self.address}) again",
                                   "ok", via="ssh", data={"event": "connected", "host": self.host, "port": self.port}))
        return conn

    def _explain(self, exc: Exception, attempt: _Attempt | None, known: bool) -> tuple[str, str]:
        where = f"SSH node {self.name} ({self.address})"
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            presented = attempt.presented if attempt else None
            if presented is None:
                return (f"refusing to connect to {where}: its host key could not be verified ({exc.reason})",
                        "host_key_unverified")
            if known:
                return (f"refusing to connect to {where}: its host key has CHANGED. The server presented "
                        f"{describe_key(presented)}, which is not the key configured for it. This can be a "
                        "man-in-the-middle attack; if the server was reinstalled, verify the new key out of band "
                        f"and update host_key/known_hosts of [ssh.nodes.{self.name}]", "host_key_mismatch")
            return (f"refusing to connect to {where}: its host key {describe_key(presented)} is not known. "
                    f"Verify it (ssh-keyscan -p {self.port} {self.host} | ssh-keygen -lf -) and pin it with "
                    f"host_key in [ssh.nodes.{self.name}] (see docs/ssh.md)", "host_key_unknown")
        if isinstance(exc, asyncssh.PermissionDenied):
            return (f"{where} refused to log in user {self.user!r} with the configured key; check key_file and "
                    "the server's authorized_keys", "ssh_auth_failed")
        if isinstance(exc, asyncio.TimeoutError):
            return (f"{where} did not complete the SSH connection within {self.settings.connect_timeout:g}s "
                    "(is the host up, and is an SSH server listening on that port?)", "ssh_timeout")
        if isinstance(exc, ConnectionRefusedError):
            return f"{where} refused the connection (is sshd running on that port?)", "ssh_unreachable"
        if isinstance(exc, asyncssh.DisconnectError):
            return f"{where} closed the SSH connection: {exc.reason}", "ssh_unreachable"
        if isinstance(exc, OSError):
            return f"cannot reach {where}: {exc.strerror or exc}", "ssh_unreachable"
        log.exception("unexpected error connecting to %s", where, exc_info=exc)
        return f"cannot connect to {where}: {type(exc).__name__}: {exc}", "ssh_unreachable"

    async def _failed(self, message: str, code: str, attempt: _Attempt | None = None) -> None:
        self.error, self.error_code = message, code
        self.checked_at = time.monotonic()
        fingerprint = attempt.presented.get_fingerprint() if attempt and attempt.presented else ""
        key = (code, fingerprint)
        if self._reported == key:  # one event (and one warning) per distinct failure, not one per retry
            log.debug("%s", message)
            return
        log.warning("%s", message)
        self._reported = key
        data: dict[str, Any] = {"event": "connect_failed", "code": code, "host": self.host, "port": self.port}
        if fingerprint:
            data["fingerprint"] = fingerprint
        await self._emit(Event("ssh", None, self.name, message, "error", via="ssh", data=data))

    def _remember(self, key: asyncssh.SSHKey) -> None:
        """Append a key trusted on first use to known_hosts, as OpenSSH would."""
        path = self._known_hosts_file
        assert path is not None
        algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
        line = f"{known_hosts_pattern(self.host, self.port)} {algorithm} {blob}\n"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(line)
        except OSError as exc:
            log.error("could not record the host key of %s in %s: %s", self.name, path, exc)

    # -- channels -------------------------------------------------------------------------------

    @property
    def open_timeout(self) -> float:
        return self.settings.connect_timeout

    async def _open_channel(self, open_: Callable[[asyncssh.SSHClientConnection], Awaitable[Any]], what: str) -> Any:
        """Open a channel with ``open_(conn)``; reconnect once if the pooled connection turns out dead.

        Retrying is safe: a channel that was never opened ran nothing. A live server that refuses
        the channel is usually still tearing down sessions that just ended (OpenSSH frees a session
        slot a moment after the channel closes), so refusals are retried briefly before giving up.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.open_timeout
        reconnected = False
        delay = 0.005
        while True:
            conn = await self.connection()
            try:
                async with asyncio.timeout(max(0.1, deadline - loop.time())):
                    return await open_(conn)
            except asyncssh.ChannelOpenError as exc:
                if conn.is_closed() and not reconnected:
                    self.drop(conn)
                    reconnected = True
                    continue
                if exc.code in BUSY_CODES and not conn.is_closed() and loop.time() + delay < deadline:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.2)
                    continue
                raise Unavailable(
                    f"the SSH server of {self.name} refused to open {what} ({exc.reason}); lower "
                    f"max_channels (now {self.max_channels}) well below the server's MaxSessions",
                    code="ssh_channel_refused") from None
            except (asyncio.TimeoutError, *CONNECTION_ERRORS) as exc:
                self.drop(conn)
                if not reconnected:
                    reconnected = True
                    continue
                raise Unavailable(f"the SSH connection to {self.name} ({self.address}) failed while opening "
                                  f"{what}: {type(exc).__name__}: {exc}", code="ssh_connection_lost") from None

    async def open_session(self, factory: Callable[[], asyncssh.SSHClientSession], command: str
                           ) -> tuple[asyncssh.SSHClientChannel, Any]:
        """An exec channel running ``command`` (caller holds a ``channels`` slot)."""
        return await self._open_channel(
            lambda conn: conn.create_session(factory, command, encoding=None), "a session")

    def channel(self, source: str | None = None) -> contextlib.AbstractAsyncContextManager[bool]:
        """Hold one of the node's channel slots, out of ``source``'s share (None: the hub or an admin)."""
        return self.channels.slot(source or "(hub)", exempt=source is None)

    @contextlib.asynccontextmanager
    async def sftp(self, source: str | None = None) -> AsyncIterator[asyncssh.SFTPClient]:
        """An SFTP session on the pooled connection, holding one channel slot while in use."""
        async with self.channel(source):
            client = await self._open_channel(lambda conn: conn.start_sftp_client(),
                                              "an SFTP session (is `Subsystem sftp` configured?)")
            try:
                yield client
            finally:
                client.exit()

    async def run_quiet(self, command: str, timeout: float) -> None:
        """Run a short housekeeping command (outside the channel bound, one at a time); errors ignored."""
        async with self.kill_channel:
            try:
                conn = await asyncio.wait_for(self.connection(), timeout)
                await asyncio.wait_for(conn.run(command, encoding=None, stdin=asyncssh.DEVNULL), timeout)
            except (Exception, asyncio.TimeoutError) as exc:  # best effort
                log.warning("housekeeping command on %s failed: %s: %s", self.name, type(exc).__name__, exc)

    async def close(self) -> None:
        self._closed = True
        task = self._connecting
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), 2.0)
