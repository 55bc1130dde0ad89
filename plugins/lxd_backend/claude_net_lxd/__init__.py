"""claude-net backend for LXD containers (entry point ``lxd``).

Every instance of the configured LXD project is a node: exec, file read/write and container
operations (start, stop, snapshot, restore, list_snapshots) go through the LXD API with pylxd;
streamed file transfers (the raw file endpoints) speak HTTP to the daemon's socket directly.

:class:`Lxd` is a :class:`claude_net.Backend`: the base makes the hooks (ownership, "not
running", capabilities); each method hands over to the runtime in ``hub.plugin_state["lxd"]``
(:class:`claude_net_lxd.backend.LxdBackend`, created at startup). Nothing heavy is imported at
module level: the CLI loads this module for ``--help``; pylxd and requests load at startup.
"""

from __future__ import annotations

import asyncio

from claude_net import Backend

from .config import LxdSettings

__version__ = "0.1.0"


class Lxd(Backend):
    name = "lxd"
    config = LxdSettings

    @classmethod
    def enabled(cls, settings):
        return settings.enabled

    def __init__(self, hub, settings):
        super().__init__(hub, settings)
        from .backend import LxdBackend  # imports pylxd and requests

        self.runtime = LxdBackend(settings, exec_slots=hub.settings.limits.exec_concurrency)

    async def start(self):
        self.hub.spawn(self.runtime.watchdog(), name="lxd-output-watchdog")

    async def close(self):
        await asyncio.get_running_loop().run_in_executor(None, self.runtime.close)

    def list_nodes(self):
        return self.runtime.list_nodes()

    def execute(self, node, command, options):
        return self.runtime.execute(node, command, options)

    def reap_exec(self, node, tag):
        return self.runtime.reap(node, tag)

    def read_file(self, node, path, options):
        from . import files

        return files.read(self.runtime, node, path, options)

    def write_file(self, node, path, data, options):
        from . import files

        return files.write(self.runtime, node, path, data, options)

    def can_stream(self, node):
        return self.runtime.streams is not None  # None for an https endpoint: the buffered path

    def open_file_stream(self, node, path, options):
        from . import files

        return files.open_stream(self.runtime, node, path, options)

    def write_file_stream(self, node, path, chunks, options):
        from . import files

        return files.write_stream(self.runtime, node, path, chunks, options)

    def container_op(self, node, op, args):
        from . import containers

        return containers.container_op(self.runtime, node, op, dict(args))


globals().update(Lxd.hookimpls())
