"""Running one command on an SSH node: quoting, output caps, timeouts that really stop it.

sshd hands the command string to the login user's shell (``$SHELL -c STRING``), so the string is
built from :func:`shlex.quote`d parts only. It first prints a marker line with its own PID: sshd
runs every session in a new session and process group whose id is that PID, so on a timeout the
backend can end the whole process group from a second channel (``kill -s TERM -- -PID``, then
KILL) — closing the channel alone would leave the command running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shlex
import signal as signals
from collections.abc import Callable, Mapping
from typing import Any

import asyncssh

from claude_net import BadRequest, ExecOptions, ExecResult, Unavailable

from .connection import NodeConnection
from .settings import ENV_NAME

log = logging.getLogger("claude_net_ssh")

PID_MARKER = b"claude-net-pid:"
#: what the remote shell prints (with a nonce) and exits with when it cannot enter the working directory
NO_CWD_MARKER = "claude-net-no-cwd:"
NO_CWD_STATUS = 125
#: output a login shell may print before the marker (motd-like noise from rc files) is kept up to this
MAX_PREAMBLE = 64 * 1024


def remote_command(shell: str, command: str, *, cwd: str | None, env: Mapping[str, str], nonce: str = "") -> str:
    """The string the remote login shell runs: report its PID, cd, set env, run the command.

    A working directory that cannot be entered ends it before the command: the line
    ``claude-net-no-cwd:NONCE`` on stderr and exit status 125 (``nonce``: a value only the hub
    knows, so the command's own output cannot pass for it).

    With no ``shell`` configured the login shell itself evaluates the command, exactly like
    ``ssh host COMMAND`` (and without starting a second shell). Otherwise it runs
    ``shell -c COMMAND`` as a child and exits with its status: not ``exec``, because bash lowers
    SHLVL when it execs, and a bash that sees SHLVL below 2 under sshd sources ~/.bashrc a second
    time. Every caller-supplied part is a single-quoted word.
    """
    for key in env:
        if not ENV_NAME.fullmatch(key):
            raise BadRequest(f"env name {key!r} is not a valid variable name", code="invalid_field", field="env")
    steps = ["echo claude-net-pid:$$"]
    if cwd:
        steps.append(f"{{ cd -- {shlex.quote(cwd)} 2>/dev/null || {{ echo {NO_CWD_MARKER}{nonce} >&2; "
                     f"exit {NO_CWD_STATUS}; }}; }}")
    assignments = [shlex.quote(f"{key}={value}") for key, value in env.items()]
    if shell:
        steps.append(" ".join([*(["env", "--", *assignments] if env else []),
                               shlex.quote(shell), "-c", shlex.quote(command)]))
        return " && ".join(steps) + "; exit $?"
    if env:
        steps.append("export " + " ".join(assignments))
    steps.append(f"eval {shlex.quote(command)}")
    return " && ".join(steps)


def kill_command(pid: int, grace: float) -> str:
    """TERM the process group, wait up to ``grace`` seconds for it to go, then KILL what is left."""
    rounds = max(1, int(grace / 0.1))
    group = f"-{int(pid)}"
    return (f"kill -s TERM -- {group} 2>/dev/null || exit 0; i=0; "
            f"while [ $i -lt {rounds} ]; do kill -s 0 -- {group} 2>/dev/null || exit 0; sleep 0.1; i=$((i+1)); done; "
            f"kill -s KILL -- {group} 2>/dev/null; exit 0")


def signal_exit_code(name: str | None) -> int | None:
    """Shell convention for a process killed by a signal: 128 + signal number."""
    if not name:
        return None
    try:
        return 128 + signals.Signals[f"SIG{name}"].value
    except KeyError:
        return 255


class ExecSession(asyncssh.SSHClientSession[bytes]):
    """Collects a command's output in bytes, capped per stream, and learns its PID from the marker."""

    def __init__(self, cap: int, loop: asyncio.AbstractEventLoop,
                 on_output: Callable[[str, bytes], None] | None = None) -> None:
        self.cap = cap
        #: ``ExecOptions.on_output``: what is kept is handed over as it arrives (a job's live output)
        self.on_output = on_output
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.truncated = False
        self.pid: int | None = None
        self._preamble: bytearray | None = bytearray()  # stdout until the marker line has been seen
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.done: asyncio.Future[Exception | None] = loop.create_future()

    def _keep(self, buffer: bytearray, data: bytes) -> None:
        room = self.cap - len(buffer)
        if len(data) > room:
            # Keep reading (and dropping) the rest: a stalled channel would block the command.
            data = data[:max(room, 0)]
            self.truncated = True
        buffer += data
        if data and self.on_output is not None:
            try:
                self.on_output("stderr" if buffer is self.stderr else "stdout", data)
            except Exception:  # a subscriber's failure must not break the session
                log.exception("on_output failed")

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self._keep(self.stderr, data)
            return
        if self._preamble is None:
            self._keep(self.stdout, data)
            return
        self._preamble += data
        start = self._preamble.find(PID_MARKER)
        if start < 0:
            if len(self._preamble) > MAX_PREAMBLE:
                self._flush_preamble()
            return
        end = self._preamble.find(b"\n", start)
        if end < 0:
            return
        digits = bytes(self._preamble[start + len(PID_MARKER):end]).strip()
        self.pid = int(digits) if digits.isdigit() else None
        before, after = bytes(self._preamble[:start]), bytes(self._preamble[end + 1:])
        self._preamble = None
        self._keep(self.stdout, before)
        self._keep(self.stdout, after)

    def _flush_preamble(self) -> None:
        if self._preamble is not None:
            data, self._preamble = bytes(self._preamble), None
            self._keep(self.stdout, data)

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        self._flush_preamble()
        if not self.done.done():
            self.done.set_result(exc)

    @property
    def exit_code(self) -> int | None:
        if self.exit_status is not None:
            return self.exit_status
        return signal_exit_code(self.exit_signal)


async def execute(node: NodeConnection, command: str, options: ExecOptions, *, shell: str, cwd: str | None,
                  env: Mapping[str, str], kill_grace: float, spawn: Callable[[Any], Any]) -> ExecResult:
    nonce = secrets.token_hex(8)
    line = remote_command(shell, command, cwd=cwd, env=env, nonce=nonce)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the command or its environment is not valid Unicode", code="invalid_field") from None
    loop = asyncio.get_running_loop()
    async with node.channel(options.source):
        started = loop.time()
        channel, session = await node.open_session(
            lambda: ExecSession(options.max_output, loop, getattr(options, "on_output", None)), line)
        timed_out = False
        try:
            channel.write_eof()  # no stdin: commands that read it see EOF instead of hanging
            try:
                async with asyncio.timeout(options.timeout):
                    await asyncio.shield(session.done)  # shielded: a timeout must not cancel the future itself
            except TimeoutError:
                timed_out = True
                await stop(node, session, kill_grace)
        except BaseException as exc:
            # Cancelled (the caller went away, the hub's deadline passed, a job was cancelled) or
            # broken: never leave the command running on the node. A cancel waits (bounded) until the
            # process group is gone, so a cancelled job's command is gone when the cancel answers.
            if not session.done.done() and session.pid is not None:
                kill = spawn(node.run_quiet(kill_command(session.pid, kill_grace), kill_grace + node.open_timeout))
                if isinstance(exc, asyncio.CancelledError) and kill is not None:
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(asyncio.shield(kill), kill_grace + node.open_timeout + 1)
            raise
        finally:
            channel.close()
        duration_ms = (loop.time() - started) * 1000
    if not timed_out and session.exit_status is None and session.exit_signal is None:
        reason = session.done.result()
        raise Unavailable(f"the connection to {node.name} was lost while the command was running "
                          f"({reason or 'no exit status'}); it may or may not have completed",
                          code="ssh_connection_lost")
    if (cwd and session.exit_status == NO_CWD_STATUS
            and f"{NO_CWD_MARKER}{nonce}\n".encode() in session.stderr):
        raise BadRequest(f"the working directory {cwd} does not exist on {node.name} (or is not a directory "
                         f"{node.user} may enter); the command was not run", code="no_such_cwd", field="cwd")
    return ExecResult(exit_code=session.exit_code, stdout=bytes(session.stdout), stderr=bytes(session.stderr),
                      truncated=session.truncated, timed_out=timed_out, duration_ms=duration_ms)


async def stop(node: NodeConnection, session: ExecSession, grace: float) -> None:
    """End a timed-out command's whole process group, then give its exit status a moment to arrive."""
    if session.pid is not None:
        await node.run_quiet(kill_command(session.pid, grace), grace + node.open_timeout)
    else:
        log.warning("command on %s timed out before reporting its PID; closing its channel only", node.name)
    try:
        await asyncio.wait_for(asyncio.shield(session.done), 1.0)
    except asyncio.TimeoutError:
        pass
