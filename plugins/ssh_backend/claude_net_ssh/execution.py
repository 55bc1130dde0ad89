"""Running one command on an SSH node: quoting, output caps, timeouts that really stop it.

sshd hands the command string to the login user's shell (``$SHELL -c STRING``), so the string is
built from :func:`shlex.quote`d parts only. It first prints a marker line with its own PID: sshd
runs every session in a new session and process group whose id is that PID, so on a timeout the
backend can end the whole process group from a second channel (``kill -s TERM -- -PID``, then
KILL) — closing the channel alone would leave the command running.

A background job's command also carries the job's tag (:attr:`ExecOptions.tag`): the login
shell's command line holds ``CLAUDE_NET_EXEC=<tag>`` and every process it starts has that variable
in its environment, so a hub restarted after a crash can find and end them (:data:`REAP`) although
the PID it learnt died with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import shlex
import signal as signals
from collections.abc import Callable, Mapping
from typing import Any

import asyncssh

from claude_net import BadRequest, ExecOptions, ExecResult, NotSupported, Unavailable

from .connection import NodeConnection
from .settings import ENV_NAME

log = logging.getLogger("claude_net_ssh")

PID_MARKER = b"claude-net-pid:"
#: what the remote shell prints (with a nonce) and exits with when it cannot enter the working directory
NO_CWD_MARKER = "claude-net-no-cwd:"
NO_CWD_STATUS = 125
#: output a login shell may print before the marker (motd-like noise from rc files) is kept up to this
MAX_PREAMBLE = 64 * 1024
#: the variable (and command-line word) that carries a job's tag
TAG_ENV = "CLAUDE_NET_EXEC"
TAG = re.compile(r"[0-9a-f]{16,64}")
#: exit status of :data:`REAP` on a machine without Linux's /proc
NO_PROC_STATUS = 3

#: Kills every process of the login user carrying the tag ``$1``: in its environment (each process a
#: job's command started) or, as ``CLAUDE_NET_EXEC=<tag>``, in its command line (the job's login
#: shell, whose environment predates the export), with the process group such a process leads (the
#: session sshd made for the job: children that dropped the variable go too). Needs Linux's /proc
#: (exit 3 without it); prints how many processes it killed. The needle is only ever assembled
#: here, so this script's own command line (which holds the tag as a separate word) never matches;
#: ``case`` does the matching so that no helper process holds the needle in its arguments either.
REAP = r"""m="CLAUDE_NET_EXEC=$1"
[ -r /proc/self/environ ] || { echo "no /proc"; exit 3; }
s=$(printf '\001')
n=0; killed=" "; u=$(id -u)
for pass in 1 2 3 4; do
  hits=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    [ "$p" = "$PPID" ] && continue
    [ "$u" = 0 ] || [ -O "$d" ] || continue
    e=$(tr '\000' '\001' 2>/dev/null < "$d/environ") || e=
    case "$s$e$s" in
      *"$s$m$s"*) hits="$hits $p" ;;
      *) c=$(tr '\000' ' ' 2>/dev/null < "$d/cmdline") || c=
         case " $c " in *"$m"[!0-9a-f]*) hits="$hits $p" ;; esac ;;
    esac
  done
  [ -z "$hits" ] && break
  for p in $hits; do
    g=
    st=$(cat "/proc/$p/stat" 2>/dev/null) && { st=${st##*) }; set -- $st; g=$3; }
    kill -s KILL "$p" 2>/dev/null
    [ "$g" = "$p" ] && kill -s KILL -- "-$p" 2>/dev/null
    case "$killed" in *" $p "*) ;; *) killed="$killed$p "; n=$((n+1)) ;; esac
  done
done
echo "$n"
exit 0
"""


def remote_command(shell: str, command: str, *, cwd: str | None, env: Mapping[str, str], nonce: str = "",
                   tag: str | None = None) -> str:
    """The string the remote login shell runs: report its PID, cd, set env, run the command.

    A working directory that cannot be entered ends it before the command: the line
    ``claude-net-no-cwd:NONCE`` on stderr and exit status 125 (``nonce``: a value only the hub
    knows, so the command's own output cannot pass for it).

    With no ``shell`` configured the login shell itself evaluates the command, exactly like
    ``ssh host COMMAND`` (and without starting a second shell). Otherwise it runs
    ``shell -c COMMAND`` as a child and exits with its status: not ``exec``, because bash lowers
    SHLVL when it execs, and a bash that sees SHLVL below 2 under sshd sources ~/.bashrc a second
    time. Every caller-supplied part is a single-quoted word.

    ``tag`` (a job's :attr:`ExecOptions.tag`) is set last, as ``CLAUDE_NET_EXEC``, over any value
    the caller gave that variable.
    """
    for key in env:
        if not ENV_NAME.fullmatch(key):
            raise BadRequest(f"env name {key!r} is not a valid variable name", code="invalid_field", field="env")
    if tag is not None:
        if not TAG.fullmatch(tag):
            raise BadRequest("an exec tag is 16 to 64 lowercase hex characters", code="invalid_tag")
        env = {key: value for key, value in env.items() if key != TAG_ENV}
        env[TAG_ENV] = tag
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


def reap_command(tag: str) -> str:
    """The line that runs :data:`REAP` for ``tag`` (checked: hex only) under the login shell."""
    if not TAG.fullmatch(tag):
        raise BadRequest("an exec tag is 16 to 64 lowercase hex characters", code="invalid_tag")
    return f"sh -c {shlex.quote(REAP)} claude-net-reap {tag}"


async def reap(node: NodeConnection, tag: str, timeout: float) -> int:
    """End every process of ``node``'s login user that carries ``tag``; how many (see :data:`REAP`)."""
    line = reap_command(tag)
    async with node.kill_channel:
        try:
            conn = await asyncio.wait_for(node.connection(), node.open_timeout)
            done = await asyncio.wait_for(conn.run(line, encoding=None, stdin=asyncssh.DEVNULL), timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"ending the processes of an earlier command on {node.name} did not finish within "
                              f"{timeout:g}s", code="ssh_timeout") from None
        except (OSError, asyncssh.Error) as exc:
            raise Unavailable(f"the SSH connection to {node.name} failed: {type(exc).__name__}: {exc}",
                              code="ssh_connection_lost") from None
    out = bytes(done.stdout or b"").split()
    if done.exit_status == NO_PROC_STATUS:
        raise NotSupported(f"{node.name} has no Linux /proc: the hub cannot find the processes of an earlier "
                           "command there (end them by hand)", code="no_proc")
    if done.exit_status != 0 or not out or not out[-1].isdigit():
        err = bytes(done.stderr or b"")[:200].decode(errors="replace").strip()
        raise Unavailable(f"ending the processes of an earlier command on {node.name} failed (exit "
                          f"{done.exit_status}: {err})", code="reap_failed")
    return int(out[-1])


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
    tag = getattr(options, "tag", None)
    line = remote_command(shell, command, cwd=cwd, env=env, nonce=nonce, tag=tag)
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
                await stop(node, session, kill_grace, tag)
        except BaseException as exc:
            # Cancelled (the caller went away, the hub's deadline passed, a job was cancelled) or
            # broken: never leave the command running on the node. A cancel waits (bounded) until the
            # process group is gone, so a cancelled job's command is gone when the cancel answers.
            if not session.done.done() and (session.pid is not None or tag is not None):
                kill = spawn(end_command(node, session.pid, kill_grace, tag))
                if isinstance(exc, asyncio.CancelledError) and kill is not None:
                    bound = (kill_grace + node.open_timeout) * (2 if tag is not None else 1) + 1
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(asyncio.shield(kill), bound)
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


async def end_command(node: NodeConnection, pid: int | None, grace: float, tag: str | None) -> None:
    """End a command: its session's process group (TERM, then KILL after ``grace``); with a job's
    ``tag``, then also every process still carrying it (those that left the session: ``setsid``,
    daemons), which the process group does not reach."""
    if pid is not None:
        await node.run_quiet(kill_command(pid, grace), grace + node.open_timeout)
    if tag is not None:
        try:
            await reap(node, tag, grace + node.open_timeout)
        except (BadRequest, NotSupported, Unavailable) as exc:
            log.warning("could not end what is left of a job's command on %s: %s", node.name, exc.message)


async def stop(node: NodeConnection, session: ExecSession, grace: float, tag: str | None = None) -> None:
    """End a timed-out command's whole process group, then give its exit status a moment to arrive."""
    if session.pid is not None or tag is not None:
        await end_command(node, session.pid, grace, tag)
    else:
        log.warning("command on %s timed out before reporting its PID; closing its channel only", node.name)
    try:
        await asyncio.wait_for(asyncio.shield(session.done), 1.0)
    except asyncio.TimeoutError:
        pass
