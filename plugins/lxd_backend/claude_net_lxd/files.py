"""File read and write through LXD's file API.

LXD performs every file operation inside the container's mount namespace, so paths, including
symlinks in the middle of a path, resolve inside the container, never on the host. A symlink
as the *last* component is returned by LXD as the link itself; we follow it (again through
LXD, so again inside the container), up to 40 hops like the kernel.

Reads stream: the size announced by LXD is checked before any content is read, and at most
``max_size + 1`` bytes are ever read. Writes upload to a temporary file next to the target and
rename it over the target with one exec (readers never see a half-written file).
"""

from __future__ import annotations

import posixpath
import uuid

from pylxd import exceptions as lxd_exc

from claude_net import BadRequest, Node, NotFound, PayloadTooLarge

from . import scripts
from .backend import LxdBackend, LxdError, lxd_message

MAX_SYMLINK_HOPS = 40


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
            if kind == "directory":
                raise BadRequest(f"{path} is a directory on {name}; list it with exec (ls)", code="is_directory")
            if kind == "symlink":
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise BadRequest(f"{path}: too many levels of symbolic links", code="symlink_loop")
                target = response.raw.read(4097).decode("utf-8", errors="surrogateescape")
                current = posixpath.normpath(posixpath.join(posixpath.dirname(current), target))
                continue
            length = response.headers.get("Content-Length")
            if length is not None and int(length) > max_size:
                raise PayloadTooLarge(f"{path} is {int(length)} bytes; the limit is {max_size}",
                                      limit=max_size, size=int(length))
            data = response.raw.read(max_size + 1) or b""
            if len(data) > max_size:
                raise PayloadTooLarge(f"{path} is larger than the limit of {max_size} bytes", limit=max_size)
            return data
        finally:
            response.close()


async def read(backend: LxdBackend, node: Node, path: str, options) -> bytes:
    await backend.require_running(node)
    return await backend.run(read_sync, backend, node.name, path, options.max_size, name=node.name)


def write_sync(backend: LxdBackend, name: str, path: str, data: bytes, options) -> dict:
    api = backend.api()
    directory, base = posixpath.split(path)
    if not base:
        raise BadRequest(f"{path} names a directory, not a file", code="is_directory")
    temp = posixpath.join(directory, f".{base[:180]}.claude-net-{uuid.uuid4().hex[:12]}.tmp")
    headers = {"X-LXD-type": "file", "X-LXD-write": "overwrite"}
    if options.mode is not None:
        headers["X-LXD-mode"] = f"{options.mode:04o}"
    if options.uid is not None:
        headers["X-LXD-uid"] = str(options.uid)
    if options.gid is not None:
        headers["X-LXD-gid"] = str(options.gid)

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
        code, _out, err, _t = backend.exec_raw(name, ["mkdir", "-p", "--", directory], timeout=30)
        if code != 0:
            raise BadRequest(f"cannot create {directory} on {name}: "
                             f"{err.decode(errors='replace').strip() or f'exit {code}'}", code="mkdir_failed")
        if not upload():
            raise NotFound(f"the directory {directory} vanished on {name} while writing", code="no_such_directory")
    code, _out, err, timed_out = backend.exec_raw(
        name,
        [scripts.SH, "-c", scripts.WRITE_COMMIT, "claude-net-write", temp, path,
         "1" if options.mode is not None else "0",
         "1" if options.uid is not None or options.gid is not None else "0"],
        timeout=30,
    )
    if code == 21:
        raise BadRequest(f"{path} is a directory on {name}", code="is_directory")
    if code != 0:
        if timed_out or code is None:
            backend.later(backend.exec_raw, name, ["rm", "-f", "--", temp], timeout=10.0)
        raise LxdError(f"could not put {path} in place on {name}: "
                       f"{err.decode(errors='replace').strip() or f'exit {code}'}")
    return {}


async def write(backend: LxdBackend, node: Node, path: str, data: bytes, options) -> dict:
    await backend.require_running(node)
    return await backend.run(write_sync, backend, node.name, path, data, options, name=node.name)
