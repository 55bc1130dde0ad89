"""File read and write through LXD's file API.

LXD performs every file operation inside the container's mount namespace, so paths, including
symlinks in the middle of a path, resolve inside the container, never on the host. A symlink
as the *last* component is returned by LXD as the link itself; we follow it (again through
LXD, so again inside the container), up to 40 hops like the kernel.

Before a read, one exec (:data:`scripts.FILE_KIND`, ~13 ms) makes sure the path is not a FIFO,
a device or a socket: LXD's file API opens whatever it is given, and opening a FIFO waits for a
writer, which holds the request, a connection and LXD's ``forkfile`` helper for as long as
nobody writes (an agent could tie LXD up that way in its own container). The size announced by
LXD is checked before any content is read, and at most ``max_size + 1`` bytes are ever read. Writes upload to a temporary file next to the target and rename it over the
target with one exec (readers never see a half-written file).

Two ways through: :func:`open_stream` / :func:`write_stream` (the ``open_file_stream`` /
``write_file_stream`` hooks, ``GET``/``PUT /api/file/raw``) move the bytes in chunks over
:mod:`claude_net_lxd.streams` on the event loop, with bounded memory; :func:`read` /
:func:`write` (the buffered ``read_file`` / ``write_file`` hooks: the JSON endpoints, and an
https endpoint) go through pylxd in a worker thread with the whole file in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
import uuid
from collections.abc import AsyncIterator, Mapping

from pylxd import exceptions as lxd_exc

from claude_net import BadRequest, Conflict, FileStream, Node, NotFound, PayloadTooLarge, Unavailable

from . import scripts
from .backend import LxdBackend, LxdError, lxd_message
from .streams import CHUNK, StreamConnection, WaitingExec
from .transport import RestError

log = logging.getLogger("claude_net_lxd")

MAX_SYMLINK_HOPS = 40
#: seconds the check of what a path is (:func:`refuse_special`) may take
KIND_TIMEOUT = 10.0


def _refuse_directory(kind: str, path: str, name: str) -> None:
    if kind == "directory":
        raise BadRequest(f"{path} is a directory on {name}; list it with exec (ls)", code="is_directory")


def _hop(hops: int, path: str) -> int:
    """One more symlink followed; refuses a loop past the kernel's limit."""
    if hops + 1 > MAX_SYMLINK_HOPS:
        raise BadRequest(f"{path}: too many levels of symbolic links", code="symlink_loop")
    return hops + 1


def _link_target(current: str, raw: bytes) -> str:
    """Where the symlink at ``current`` (whose content is ``raw``) points, inside the container.

    The hub names files with text: a target that is not UTF-8 cannot be asked for (nor shown)
    and is refused with a 400.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{current} is a symbolic link whose target is not valid UTF-8 "
                         f"({raw[:100]!r}); the hub cannot follow it", code="symlink_not_utf8") from None
    return posixpath.normpath(posixpath.join(posixpath.dirname(current), text))


async def refuse_special(backend: LxdBackend, name: str, path: str, source: str | None) -> None:
    """400 ``not_a_regular_file`` when ``path`` (symlinks followed) is a FIFO, a device or a socket.

    Asked with an exec before LXD's file API ever opens the path (see the module doc). On the
    local socket the exec and its wait run on the event loop; otherwise in a worker thread.
    """
    argv = [scripts.SH, "-c", scripts.FILE_KIND, "claude-net-kind", path]
    if backend.streams is not None:
        try:
            code = await backend.streams.exec_status(name, argv, KIND_TIMEOUT)
        except RestError as exc:
            raise backend.translate(exc, name) from None
    else:
        code = await backend.run(backend.exit_status_sync, name, argv, KIND_TIMEOUT, name=name, source=source)
    if code == 0:
        return
    if code is None:
        raise Unavailable(f"LXD did not say within {KIND_TIMEOUT:g}s what {path} on {name} is", code="lxd_timeout")
    kind = scripts.FILE_KINDS.get(code)
    if kind is not None:
        raise BadRequest(f"{path} on {name} is {kind}, not a regular file: the hub reads regular files only "
                         "(reading this one could wait forever)", code="not_a_regular_file")
    # no /bin/sh to ask with (exit 126/127): refuse rather than let LXD open what it may be
    raise Conflict(f"cannot check what {path} on {name} is before reading it: {scripts.SH} did not run there "
                   f"(exit {code}); the hub reads files only in containers that have it", code="no_shell")
#: bytes per read of a buffered download (never one read of the whole limit)
READ_CHUNK = 1024 * 1024


def read_sync(backend: LxdBackend, name: str, path: str, max_size: int) -> bytes:
    api = backend.api()
    current, hops = path, 0
    while True:
        try:
            response = api.instances[name].files.get(params={"path": current}, stream=True, is_api=False,
                                                     timeout=backend.timeouts)
        except lxd_exc.NotFound as exc:
            if "instance not found" in lxd_message(exc).lower():
                raise
            if current != path:
                raise NotFound(f"{path} is a symlink to {current}, which does not exist on {name}",
                               code="no_such_file") from None
            raise NotFound(f"{path}: no such file on {name}", code="no_such_file") from None
        try:
            kind = response.headers.get("X-LXD-type", "file")
            _refuse_directory(kind, path, name)
            if kind == "symlink":
                hops = _hop(hops, path)
                current = _link_target(current, response.raw.read(4097))
                continue
            length = response.headers.get("Content-Length")
            if length is not None and int(length) > max_size:
                raise PayloadTooLarge(f"{path} is {int(length)} bytes; the limit is {max_size}",
                                      limit=max_size, size=int(length))
            if length is not None:
                # exactly the announced size, in one allocation (reading in pieces and joining them
                # would hold the file twice at the end)
                data = response.raw.read(int(length)) or b""
                if len(data) != int(length):
                    raise LxdError(f"LXD sent {len(data)} of the {int(length)} bytes of {path} on {name}")
                return data
            pieces, size = [], 0  # no announced size: at most max_size + 1 bytes, 1 MiB at a time
            while block := response.raw.read(min(READ_CHUNK, max_size + 1 - size)):
                pieces.append(block)
                size += len(block)
                if size > max_size:
                    raise PayloadTooLarge(f"{path} is larger than the limit of {max_size} bytes", limit=max_size)
            return b"".join(pieces)
        finally:
            response.close()


async def read(backend: LxdBackend, node: Node, path: str, options) -> bytes:
    await backend.require_running(node)
    source = options.source
    await refuse_special(backend, node.name, path, source)
    return await backend.run(read_sync, backend, node.name, path, options.max_size, name=node.name, source=source)


def temp_for(path: str) -> tuple[str, str]:
    """(directory, temporary file) for a write of ``path``: a hidden name next to the target."""
    directory, base = posixpath.split(path)
    if not base:
        raise BadRequest(f"{path} names a directory, not a file", code="is_directory")
    return directory, posixpath.join(directory, f".{base[:180]}.claude-net-{uuid.uuid4().hex[:12]}.tmp")


def upload_headers(options) -> dict[str, str]:
    headers = {"X-LXD-type": "file", "X-LXD-write": "overwrite"}
    if options.mode is not None:
        headers["X-LXD-mode"] = f"{options.mode:04o}"
    if options.uid is not None:
        headers["X-LXD-uid"] = str(options.uid)
    if options.gid is not None:
        headers["X-LXD-gid"] = str(options.gid)
    return headers


def mkdirs_sync(backend: LxdBackend, name: str, directory: str) -> None:
    code, _out, err, _t = backend.exec_raw(name, ["mkdir", "-p", "--", directory], timeout=30)
    if code != 0:
        raise BadRequest(f"cannot create {directory} on {name}: "
                         f"{err.decode(errors='replace').strip() or f'exit {code}'}", code="mkdir_failed")


def commit_sync(backend: LxdBackend, name: str, path: str, temp: str, *, mode_given: bool,
                owner_given: bool) -> None:
    """Rename the uploaded ``temp`` over ``path`` (see :data:`scripts.WRITE_COMMIT`)."""
    code, _out, err, timed_out = backend.exec_raw(
        name,
        [scripts.SH, "-c", scripts.WRITE_COMMIT, "claude-net-write", temp, path,
         "1" if mode_given else "0", "1" if owner_given else "0"],
        timeout=30,
    )
    if code == 21:
        raise BadRequest(f"{path} is a directory on {name}", code="is_directory")
    if code != 0:
        if timed_out or code is None:
            backend.later(backend.exec_raw, name, ["rm", "-f", "--", temp], timeout=10.0)
        raise LxdError(f"could not put {path} in place on {name}: "
                       f"{err.decode(errors='replace').strip() or f'exit {code}'}")


def write_sync(backend: LxdBackend, name: str, path: str, data: bytes, options) -> dict:
    api = backend.api()
    directory, temp = temp_for(path)
    headers = upload_headers(options)

    def upload() -> bool:
        """Upload ``data`` to the temporary file; False when the directory does not exist."""
        try:
            api.instances[name].files.post(params={"path": temp}, data=data, headers=headers,
                                           timeout=backend.timeouts)
        except lxd_exc.NotFound as exc:
            if "instance not found" in lxd_message(exc).lower():
                raise
            return False
        except lxd_exc.LXDAPIException as exc:  # e.g. a parent that is a file, a read-only filesystem
            raise BadRequest(f"cannot write {path} on {name}: {lxd_message(exc)}", code="write_failed") from None
        return True

    if not upload():
        if not options.mkdirs:
            raise NotFound(f"the directory {directory} does not exist on {name} (pass mkdirs: true to create it)",
                           code="no_such_directory")
        mkdirs_sync(backend, name, directory)
        if not upload():
            raise NotFound(f"the directory {directory} vanished on {name} while writing", code="no_such_directory")
    commit_sync(backend, name, path, temp, mode_given=options.mode is not None,
                owner_given=options.uid is not None or options.gid is not None)
    return {}


async def write(backend: LxdBackend, node: Node, path: str, data: bytes, options) -> dict:
    await backend.require_running(node)
    return await backend.run(write_sync, backend, node.name, path, data, options, name=node.name,
                             source=options.source)


# -- streamed: GET/PUT /api/file/raw ----------------------------------------------------------------


def _not_found(backend: LxdBackend, name: str, error: RestError, what: str) -> BaseException:
    """A 404 from the file API: the instance (unknown node) or the file/directory (``what``)."""
    if "instance not found" in error.message.lower():
        return backend.translate(error, name)
    return NotFound(what, code="no_such_file")


async def open_stream(backend: LxdBackend, node: Node, path: str, options) -> FileStream:
    """Find and check the file (following symlinks inside the container), then stream its bytes."""
    await backend.require_running(node)
    streams, name, max_size = backend.streams, node.name, options.max_size
    assert streams is not None
    await refuse_special(backend, name, path, options.source)
    current, hops = path, 0
    while True:
        conn = await streams.request("GET", streams.files_url(name, current))
        try:
            if conn.status >= 400:
                error = await conn.error()
                if error.status == 404:
                    raise _not_found(backend, name, error,
                                     f"{path} is a symlink to {current}, which does not exist on {name}"
                                     if current != path else f"{path}: no such file on {name}")
                raise backend.translate(error, name)
            kind = conn.headers.get("x-lxd-type", "file")
            _refuse_directory(kind, path, name)
            if kind == "symlink":
                hops = _hop(hops, path)
                current = _link_target(current, await conn.read_body(4097))
                conn.close()
                continue
            size = conn.length
            if size is not None and size > max_size:
                raise PayloadTooLarge(f"{path} is {size} bytes; the limit is {max_size}", limit=max_size, size=size)
        except BaseException:
            conn.close()
            raise
        return FileStream(_capped(conn, path, max_size), size=size, close=conn.close)


async def _capped(conn: StreamConnection, path: str, max_size: int) -> AsyncIterator[bytes]:
    """The body in chunks of up to 1 MiB, never past ``max_size`` (a file of unannounced size)."""
    got = 0
    async for block in conn.iter_body(CHUNK):
        got += len(block)
        if got > max_size:
            raise PayloadTooLarge(f"{path} is larger than the limit of {max_size} bytes", limit=max_size)
        yield block


async def _head(backend: LxdBackend, name: str, path: str) -> tuple[int, dict[str, str]]:
    streams = backend.streams
    assert streams is not None
    conn = await streams.request("HEAD", streams.files_url(name, path))
    conn.close()
    return conn.status, conn.headers


async def _write_target(backend: LxdBackend, name: str, path: str) -> tuple[str, dict[str, str] | None]:
    """Where an upload of ``path`` goes and what is there: ``(target, X-LXD-* headers or None)``.

    A symlink is followed inside the container (as reads do). The headers hold the mode and owner
    of the file the upload replaces; ``None``: there is no file yet. A directory is refused before
    any byte of the upload is taken.
    """
    streams = backend.streams
    assert streams is not None
    current, hops = path, 0
    while True:
        status, headers = await _head(backend, name, current)
        if status >= 400:  # no such file (or worse: the upload will say)
            return current, None
        kind = headers.get("x-lxd-type", "file")
        if kind == "directory":
            raise BadRequest(f"{path} is a directory on {name}", code="is_directory")
        if kind != "symlink":
            return current, {f"X-LXD-{key}": headers[f"x-lxd-{key}"] for key in ("mode", "uid", "gid")
                             if f"x-lxd-{key}" in headers}
        hops = _hop(hops, path)
        link = await streams.request("GET", streams.files_url(name, current))
        try:
            current = _link_target(current, await link.read_body(4097))
        finally:
            link.close()


async def _require_directory(backend: LxdBackend, name: str, path: str, directory: str, mkdirs: bool,
                             source: str | None = None) -> None:
    """A new file's directory must exist (``mkdirs``: create it)."""
    status, headers = await _head(backend, name, directory)
    if status < 400:
        if headers.get("x-lxd-type", "directory") != "directory":
            raise BadRequest(f"cannot write {path} on {name}: {directory} is not a directory", code="write_failed")
        return
    if status != 404:
        raise BadRequest(f"cannot write {path} on {name}: LXD answered HTTP {status} for {directory}",
                         code="write_failed")
    if not mkdirs:
        raise NotFound(f"the directory {directory} does not exist on {name} (pass mkdirs: true to create it)",
                       code="no_such_directory")
    await backend.run(mkdirs_sync, backend, name, directory, name=name, source=source)


async def write_stream(backend: LxdBackend, node: Node, path: str, chunks, options) -> Mapping[str, object]:
    """Upload ``chunks`` to a temporary file as they arrive, then rename it over ``path``.

    Before any byte of the upload is taken (a stream cannot be sent twice) the target is looked at
    with HEAD requests: symlinks are followed inside the container, a directory is refused, the
    mode and owner of a file the upload replaces are kept (unless given), and a new file's
    directory must exist (``mkdirs``: it is created). The temporary file, next to the target, gets
    its final mode and owner with the upload, so the commit is a single ``mv -T`` exec (the shell
    script of the buffered path, :data:`scripts.WRITE_COMMIT`, only when that fails). On any
    failure, cancellation included, the request to LXD is ended and the temporary file deleted in
    the background (a task that outlives the cancelled request); the target is never touched
    before the final rename.
    """
    started = time.monotonic()
    await backend.require_running(node)
    streams, name = backend.streams, node.name
    assert streams is not None
    target, existing = await _write_target(backend, name, path)
    directory, temp = temp_for(target)
    if existing is None:
        await _require_directory(backend, name, path, directory, options.mkdirs, options.source)
    headers = upload_headers(options)
    if options.mode is None and existing and "X-LXD-mode" in existing:
        headers["X-LXD-mode"] = existing["X-LXD-mode"]
    if options.uid is None and options.gid is None and existing:
        headers.update({k: v for k, v in existing.items() if k != "X-LXD-mode"})
    url = streams.files_url(name, temp)
    conn: StreamConnection | None = None
    # the commit's exec starts now and waits for its cue: its cost overlaps the upload
    committer = WaitingExec(streams, name, [scripts.SH, "-c", scripts.COMMIT_ON_LINE, "claude-net-commit", temp,
                                            target, f"{temp}.old"])
    ready = asyncio.ensure_future(committer.start())
    try:
        conn = await streams.connect()
        uploading = time.monotonic()
        try:
            sent = await streams.upload(conn, url, headers, chunks)
        except RestError as exc:
            if exc.status == 404 and "instance not found" in exc.message.lower():
                raise backend.translate(exc, name) from None
            raise BadRequest(f"cannot write {path} on {name}: {exc.message}", code="write_failed") from None
        conn.close()
        conn = None
        committing = time.monotonic()
        code = None
        try:
            await ready
        except Exception as exc:  # noqa: BLE001 - the commit then takes an exec of its own
            log.info("LXD: no waiting commit for %s on %s (%s); committing with an exec", path, name, exc)
        else:
            code = await committer.finish(b"commit\n")
            if code != 0:
                log.info("LXD: the waiting commit of %s on %s exited %s; committing with an exec", path, name, code)
        if code != 0:
            await backend.run(rename_sync, backend, name, target, temp, name=name,
                              source=options.source)
        log.debug("LXD upload of %s on %s: %d bytes; checks %.1f ms, upload %.1f ms, commit %.1f ms%s", path, name,
                  sent, (uploading - started) * 1000, (committing - uploading) * 1000,
                  (time.monotonic() - committing) * 1000, "" if code == 0 else " (exec after the upload)")
    except BaseException:
        backend.background(_discard(backend, name, temp, conn, committer, ready))
        raise
    committer.close()
    return {"resolvedPath": target} if target != path else {}


def rename_sync(backend: LxdBackend, name: str, target: str, temp: str) -> None:
    """``mv -f -T temp target``: one process; the full commit script when it fails (say, a directory)."""
    code, _out, _err, _t = backend.exec_raw(name, ["mv", "-f", "-T", "--", temp, target], timeout=30)
    if code != 0:
        commit_sync(backend, name, target, temp, mode_given=True, owner_given=True)  # temp has them already


async def _discard(backend: LxdBackend, name: str, temp: str, conn: StreamConnection | None,
                   committer: WaitingExec | None = None, ready: asyncio.Future | None = None) -> None:
    """End an unfinished upload and its waiting commit, then delete the temporary file (and the
    replaced file's second name): the target was never touched."""
    if conn is not None:
        await conn.abandon()
    if committer is not None:
        if ready is not None:
            with contextlib.suppress(BaseException):
                await ready
        await committer.abort()  # it reads EOF, removes the second name and ends
        committer.close()
    for leftover in (temp, f"{temp}.old"):
        await _delete(backend, name, leftover)


async def _delete(backend: LxdBackend, name: str, path: str) -> None:
    streams = backend.streams
    assert streams is not None
    try:
        answer = await streams.request("DELETE", streams.files_url(name, path))
        answer.close()
        if answer.status < 400 or answer.status == 404:
            return
    except Exception:  # noqa: BLE001 - try the other way
        pass
    loop = asyncio.get_running_loop()  # a daemon without the file_delete API extension
    await loop.run_in_executor(backend.chores, lambda: backend.exec_raw(name, ["rm", "-f", "--", path], timeout=10.0))
