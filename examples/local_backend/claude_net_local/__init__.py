"""claude-net-local: directories of the hub's own host as nodes, each confined to its root.

An example backend written on :class:`claude_net.Backend` from the docs alone
(docs/writing-plugins.md). ``[local.nodes.NAME] root = "/srv/x"`` makes node NAME: commands run
with that directory as their working directory, file paths are inside it (``/a.txt`` is
``/srv/x/a.txt``) and may not leave it, by ``..`` or by a symlink. It is not a sandbox: a
command can still reach the whole host; file access through the hub cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from claude_net import Backend, BadRequest, ExecResult, NotFound, PayloadTooLarge, help_field

__version__ = "0.1.0"


@dataclass
class LocalNode:
    root: str = help_field("", "Directory that is this node (absolute; must exist).")
    shell: str = help_field("/bin/sh", "Shell that runs each command as `shell -c COMMAND`.")


@dataclass
class LocalSettings:
    nodes: dict[str, LocalNode] = help_field({}, "Nodes, one [local.nodes.NAME] table each.")
    path: str = help_field("/usr/local/bin:/usr/bin:/bin", "PATH of commands (they never see the hub's environment).")
    kill_grace: float = help_field(1.0, "Seconds a timed-out command's process group gets between SIGTERM and SIGKILL.")


class LocalBackend(Backend):
    name = "local"
    config = LocalSettings

    @classmethod
    def validate_settings(cls, settings):
        for name, node in settings.nodes.items():
            if not os.path.isabs(node.root) or not os.path.isdir(node.root):
                yield f"nodes.{name}.root", f"must be an existing absolute directory, not {node.root!r}"
        if settings.kill_grace < 0:
            yield "kill_grace", "must not be negative"

    async def list_nodes(self):
        return [self.node(name, "running" if os.path.isdir(node.root) else "unavailable", root=node.root)
                for name, node in sorted(self.settings.nodes.items())]

    def inside(self, node, path: str) -> Path:
        """``path`` of the node as a host path under its root, every symlink resolved; refused outside."""
        root = Path(self.settings.nodes[node.name].root).resolve()
        real = (root / path.lstrip("/")).resolve()
        if real != root and root not in real.parents:
            raise BadRequest(f"{path} on {node.name} leads outside the node's directory", code="outside_root")
        return real

    async def execute(self, node, command, options):
        config = self.settings.nodes[node.name]
        cwd = self.inside(node, options.cwd or "/")
        env = {"PATH": self.settings.path, "HOME": config.root, "LANG": "C.UTF-8", **options.env}
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            config.shell, "-c", command, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        out, err, cut = bytearray(), bytearray(), []

        async def pump(stream, kept: bytearray):
            while chunk := await stream.read(65536):  # read to the end, keep the first max_output bytes
                room = options.max_output - len(kept)
                kept += chunk[:max(room, 0)]
                if len(chunk) > room:
                    cut.append(True)

        reading = asyncio.gather(pump(process.stdout, out), pump(process.stderr, err), process.wait())
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(reading), options.timeout)
        except TimeoutError:
            timed_out = True
            await self.stop(process, reading)
        except BaseException:  # cancelled: never leave the command running
            await asyncio.shield(self.stop(process, reading))
            raise
        code = process.returncode
        return ExecResult(exit_code=128 - code if code is not None and code < 0 else code, stdout=bytes(out),
                          stderr=bytes(err), truncated=bool(cut), timed_out=timed_out,
                          duration_ms=(time.monotonic() - started) * 1000)

    async def stop(self, process, reading) -> None:
        """SIGTERM to the whole process group, SIGKILL after the grace; then the pipes close."""
        for sig, wait in ((signal.SIGTERM, self.settings.kill_grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(reading), wait)

    async def read_file(self, node, path, options):
        real = self.inside(node, path)

        def read() -> bytes:
            if real.is_dir():
                raise BadRequest(f"{path} on {node.name} is a directory", code="is_directory")
            if not real.exists():
                raise NotFound(f"{path} does not exist on {node.name}", code="no_such_file")
            if real.stat().st_size > options.max_size:
                raise PayloadTooLarge(f"{path} is larger than {options.max_size} bytes", limit=options.max_size)
            with open(real, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)) as handle:
                return handle.read(options.max_size + 1)[:options.max_size]

        return await asyncio.to_thread(read)

    async def write_file(self, node, path, data, options):
        real = self.inside(node, path)

        def write() -> None:
            if options.mkdirs:
                real.parent.mkdir(parents=True, exist_ok=True)
                self.inside(node, path)  # a directory created meanwhile must not have moved it out
            elif not real.parent.is_dir():
                raise NotFound(f"the directory of {path} does not exist on {node.name} (mkdirs)", code="no_such_dir")
            if real.is_dir():
                raise BadRequest(f"{path} on {node.name} is a directory", code="is_directory")
            temp = real.with_name(f".{real.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
            try:  # readers see the old file or the new one, never half of it
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, options.mode or 0o644)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                if options.mode is not None:
                    os.chmod(temp, options.mode)
                if options.uid is not None or options.gid is not None:
                    os.chown(temp, -1 if options.uid is None else options.uid, -1 if options.gid is None else options.gid)
                os.replace(temp, real)
            finally:
                temp.unlink(missing_ok=True)

        await asyncio.to_thread(write)
        return None


globals().update(LocalBackend.hookimpls())
