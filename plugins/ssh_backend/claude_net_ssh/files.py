"""File read and write over SFTP on the node's pooled connection.

Reads check the size before transferring and stop as soon as the limit is passed. Writes go to a
temporary file in the target's directory, which is then renamed over the target with the
``posix-rename@openssh.com`` extension (an atomic ``rename(2)``): a reader sees the old file or the
new one, never half of one.

The streamed variants (:func:`open_stream`, :func:`write_stream`: the raw file endpoints) move
1 MiB at a time, so the hub holds a bounded amount whatever the file's size; the buffered ones
(the JSON endpoints) are the same code over bytes in memory. A streamed transfer has no overall
deadline (a large file over a slow link takes what it takes); each SFTP step does:
``[ssh] file_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
import stat
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import asyncssh

from claude_net import (
    BadRequest,
    FileStream,
    Forbidden,
    GatewayTimeout,
    HubError,
    NotFound,
    PayloadTooLarge,
    ReadOptions,
    Unavailable,
    WriteOptions,
)

from .connection import NodeConnection

CHUNK = 1024 * 1024
DEFAULT_MODE = 0o644
T = TypeVar("T")


#: what a file that is not a regular one is, by its ``S_IFMT`` bits and by its SFTP type
_SPECIAL_MODES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_SPECIAL_TYPES = {asyncssh.FILEXFER_TYPE_FIFO: "a named pipe (FIFO)", asyncssh.FILEXFER_TYPE_CHAR_DEVICE:
                  "a character device", asyncssh.FILEXFER_TYPE_BLOCK_DEVICE: "a block device",
                  asyncssh.FILEXFER_TYPE_SOCKET: "a socket", asyncssh.FILEXFER_TYPE_SPECIAL: "a special file"}


def _special(attrs: Any) -> str | None:
    """What the (followed) file ``attrs`` describes is when it is neither a regular file nor a
    directory, else None."""
    mode = attrs.permissions
    if mode is not None and stat.S_IFMT(mode):
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            return None
        return next((kind for test, kind in _SPECIAL_MODES if test(mode)), "not a regular file")
    return _SPECIAL_TYPES.get(attrs.type)


def _readable_size(attrs: Any, node: str, path: str, limit: int) -> int:
    """The size of the file ``attrs`` describes (0: unknown, like /proc files); refuses a
    directory, a FIFO, a device or a socket (opening a FIFO waits for a writer, holding an SFTP
    channel of the node) and a file over ``limit`` before any byte is read."""
    if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY or stat.S_ISDIR(attrs.permissions or 0):
        raise BadRequest(f"{path} on {node} is a directory", code="is_directory")
    kind = _special(attrs)
    if kind is not None:
        raise BadRequest(f"{path} on {node} is {kind}, not a regular file: the hub reads regular files only "
                         "(reading this one could wait forever)", code="not_a_regular_file")
    size = attrs.size or 0
    if size > limit:
        raise PayloadTooLarge(f"{path} on {node} is {size} bytes; the limit is {limit}", limit=limit, size=size)
    return size


def _sftp_error(exc: asyncssh.SFTPError, node: str, path: str) -> HubError:
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return NotFound(f"{path} does not exist on {node}", code="no_such_file")
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return Forbidden(f"the SSH user on {node} may not access {path} ({exc.reason})", code="remote_permission_denied")
    if isinstance(exc, asyncssh.SFTPFileIsADirectory):
        return BadRequest(f"{path} on {node} is a directory", code="is_directory")
    if isinstance(exc, asyncssh.SFTPNotADirectory):
        return BadRequest(f"a component of {path} on {node} is not a directory", code="not_a_directory")
    if isinstance(exc, asyncssh.SFTPNoSpaceOnFilesystem):
        return Unavailable(f"no space left on {node} for {path}", code="no_space")
    return Unavailable(f"SFTP error on {node} for {path}: {exc.reason}", code="sftp_error")


async def read_file(node: NodeConnection, path: str, options: ReadOptions) -> bytes:
    limit = options.max_size
    async with node.sftp(options.source) as sftp:
        try:
            attrs = await sftp.stat(path)  # follows symlinks on the node, never on the hub
            size = _readable_size(attrs, node.name, path, limit)
            data = bytearray()
            async with sftp.open(path, "rb") as f:
                # Files like /proc/* report size 0: read until EOF, but never past the limit.
                want = size + 1 if size else 65536
                while True:
                    block = await f.read(want, len(data))
                    if not block:
                        break
                    data += block
                    if len(data) > limit:
                        raise PayloadTooLarge(f"{path} on {node.name} is larger than the limit of {limit} bytes",
                                              limit=limit)
                    want = min(CHUNK, limit + 1 - len(data))
            return bytes(data)
        except asyncssh.SFTPError as exc:
            raise _sftp_error(exc, node.name, path) from None


async def open_stream(node: NodeConnection, path: str, options: ReadOptions, step_timeout: float) -> FileStream:
    """Check the file (size, kind) and return a stream of its bytes, holding an SFTP session until closed."""
    limit = options.max_size
    session = node.sftp(options.source)
    sftp = await _step(session.__aenter__(), step_timeout, node.name, path)
    try:
        try:
            attrs = await _step(sftp.stat(path), step_timeout, node.name, path)  # follows symlinks on the node
            size = _readable_size(attrs, node.name, path, limit)
            handle = await _step(sftp.open(path, "rb"), step_timeout, node.name, path)
        except asyncssh.SFTPError as exc:
            raise _sftp_error(exc, node.name, path) from None
    except BaseException:
        await session.__aexit__(None, None, None)
        raise

    async def chunks() -> AsyncIterator[bytes]:
        offset = 0
        while True:
            try:
                block = await _step(handle.read(CHUNK, offset), step_timeout, node.name, path)
            except asyncssh.SFTPError as exc:
                raise _sftp_error(exc, node.name, path) from None
            if not block:
                return
            offset += len(block)
            if offset > limit:  # it grew, or it reported size 0 (procfs)
                raise PayloadTooLarge(f"{path} on {node.name} is larger than the limit of {limit} bytes", limit=limit)
            yield block

    async def close() -> None:
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(handle.close(), step_timeout)
        finally:
            await session.__aexit__(None, None, None)

    # files like /proc/* report size 0: their length is only known at the end
    return FileStream(chunks(), size=size or None, close=close)


async def _step(awaitable: Awaitable[T], timeout: float, node: str, path: str) -> T:
    async with _steps(timeout, node, path):
        return await awaitable


@contextlib.asynccontextmanager
async def _steps(timeout: float | None, node: str, path: str) -> AsyncIterator[None]:
    """SFTP work that must end within ``timeout`` seconds (None: the caller bounds it as a whole)."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise GatewayTimeout(f"an SFTP step on {path} on {node} took more than {timeout:g}s ([ssh] file_timeout)",
                             code="timeout") from None


async def _one(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


async def write_file(node: NodeConnection, path: str, data: bytes, options: WriteOptions) -> dict[str, Any]:
    if len(data) > options.max_size:
        raise PayloadTooLarge(f"the file is {len(data)} bytes; the limit is {options.max_size}",
                              limit=options.max_size)
    return await write_stream(node, path, _one(data), options, step_timeout=None)


async def write_stream(node: NodeConnection, path: str, chunks: AsyncIterator[bytes], options: WriteOptions,
                       step_timeout: float | None) -> dict[str, Any]:
    """Write ``chunks`` as they arrive to a temporary file (0600), then rename it over the target.

    The target is looked at first (symlinks resolved on the node, directories refused, the mode
    and owner of a file it replaces kept); on any failure, cancellation included, the temporary
    file is removed and the target left as it was.
    """
    async with node.sftp(options.source) as sftp:
        async with _steps(step_timeout, node.name, path):
            target, existing = await _resolve_target(sftp, node.name, path)
            parent = posixpath.dirname(target) or "/"
            try:
                if options.mkdirs:
                    await sftp.makedirs(parent, exist_ok=True)
                parent_attrs = await sftp.stat(parent)
            except asyncssh.SFTPNoSuchFile:
                raise NotFound(f"the directory {parent} does not exist on {node.name} (pass mkdirs: true to create "
                               "it)", code="no_such_directory") from None
            except asyncssh.SFTPError as exc:
                raise _sftp_error(exc, node.name, parent) from None
        if not stat.S_ISDIR(parent_attrs.permissions or 0):
            raise BadRequest(f"{parent} on {node.name} is not a directory", code="not_a_directory")

        mode = options.mode if options.mode is not None else (
            stat.S_IMODE(existing.permissions) if existing is not None and existing.permissions is not None
            else DEFAULT_MODE)
        temp = posixpath.join(parent, f".{posixpath.basename(target)}.{secrets.token_hex(6)}.claude-net-tmp")
        try:
            # Created private (0600); the final mode is set once the content is complete.
            async with sftp.open(temp, "wb", attrs=asyncssh.SFTPAttrs(permissions=0o600)) as f:
                offset = 0
                async for chunk in chunks:
                    if offset + len(chunk) > options.max_size:
                        raise PayloadTooLarge(f"the file exceeds the limit of {options.max_size} bytes",
                                              limit=options.max_size)
                    async with _steps(step_timeout, node.name, path):
                        await f.write(chunk, offset)
                    offset += len(chunk)
                async with _steps(step_timeout, node.name, path):
                    await _set_owner(f, node.name, path, existing, options)
                    await f.chmod(mode)  # after chown, which may clear set-id bits
                    with contextlib.suppress(asyncssh.SFTPOpUnsupported, asyncssh.SFTPError):
                        await f.fsync()
            async with _steps(step_timeout, node.name, path):
                await sftp.posix_rename(temp, target)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await sftp.remove(temp)
            if isinstance(exc, asyncssh.SFTPError):
                raise _sftp_error(exc, node.name, path) from None
            raise
    result: dict[str, Any] = {"mode": f"{mode:04o}"}
    if target != path:
        result["resolvedPath"] = target
    return result


async def _resolve_target(sftp: asyncssh.SFTPClient, node: str, path: str) -> tuple[str, asyncssh.SFTPAttrs | None]:
    """Where the bytes go: the path itself, or a symlink's destination (resolved on the node)."""
    try:
        attrs = await sftp.lstat(path)
    except asyncssh.SFTPNoSuchFile:
        return path, None
    except asyncssh.SFTPError as exc:
        raise _sftp_error(exc, node, path) from None
    if stat.S_ISLNK(attrs.permissions or 0):
        try:
            target = await sftp.realpath(path)
            attrs = await sftp.stat(target)
        except asyncssh.SFTPNoSuchFile:
            with contextlib.suppress(asyncssh.SFTPError):
                path = f"{path} -> {await sftp.readlink(path)}"
            raise NotFound(f"{path} on {node} is a symbolic link to a file that does not exist",
                           code="no_such_file") from None
        except asyncssh.SFTPError as exc:
            raise _sftp_error(exc, node, path) from None
        path = target if isinstance(target, str) else target.decode()
    if stat.S_ISDIR(attrs.permissions or 0):
        raise BadRequest(f"{path} on {node} is a directory", code="is_directory")
    return path, attrs


async def _set_owner(f: asyncssh.SFTPClientFile, node: str, path: str, existing: asyncssh.SFTPAttrs | None,
                     options: WriteOptions) -> None:
    if options.uid is not None or options.gid is not None:
        uid = options.uid if options.uid is not None else (existing.uid if existing is not None else None)
        gid = options.gid if options.gid is not None else (existing.gid if existing is not None else None)
        current = await f.stat()
        try:
            await f.chown(uid if uid is not None else current.uid, gid if gid is not None else current.gid)
        except asyncssh.SFTPError as exc:
            raise Forbidden(f"cannot give {path} on {node} the owner {uid}:{gid} ({exc.reason}); only a root "
                            "SSH user can change ownership", code="remote_permission_denied") from None
    elif existing is not None and existing.uid is not None and existing.gid is not None:
        # Replacing a file keeps its owner where the SSH user may set it (root), like an in-place edit.
        current = await f.stat()
        if (current.uid, current.gid) != (existing.uid, existing.gid):
            with contextlib.suppress(asyncssh.SFTPError):
                await f.chown(existing.uid, existing.gid)
