"""claude-net-ssh: machines reached over SSH (the original deployment's ``ser-8``) as hub nodes.

:class:`Ssh` is a :class:`claude_net.Backend` that hands each call to the runtime in
``hub.plugin_state["ssh"]`` (:class:`claude_net_ssh.backend.SshBackend`). SSH nodes are not
containers: they list no ``container`` capability, so the core answers ``not_a_container``.
This module is imported whenever the ``claude-net`` CLI starts: asyncssh loads at startup.
"""

from __future__ import annotations

from dataclasses import replace

from claude_net import Backend, ConfigError

from .settings import SshSettings, check


class Ssh(Backend):
    name = "ssh"
    config = SshSettings

    @classmethod
    def validate_settings(cls, settings):  # the section, then each node on its own: every broken one named
        for key, part in [("", replace(settings, nodes={}))] + [
                (f"nodes.{name}", replace(settings, nodes={name: node})) for name, node in settings.nodes.items()]:
            try:
                check(part)
            except ConfigError as exc:
                yield key, str(exc).split("]: ", 1)[-1] if key else str(exc)
                if not key:
                    return

    @classmethod
    def configured_nodes(cls, settings):  # a hub opened without startup (CLI commands): status unknown
        return [cls.node(name, "unknown", host=node.host, port=node.port, user=node.user)
                for name, node in sorted(settings.nodes.items())]

    def __init__(self, hub, settings):
        super().__init__(hub, settings)
        from .backend import SshBackend  # imports asyncssh; checks the settings

        self.runtime = SshBackend(hub, settings)

    def start(self):
        return self.runtime.start()

    def close(self):
        return self.runtime.close()

    async def list_nodes(self):
        return self.runtime.list_nodes()

    def execute(self, node, command, options):
        return self.runtime.execute(node.name, command, options)

    def reap_exec(self, node, tag):
        return self.runtime.reap_exec(node.name, tag)

    def read_file(self, node, path, options):
        return self.runtime.read_file(node.name, path, options)

    def write_file(self, node, path, data, options):
        return self.runtime.write_file(node.name, path, data, options)

    def open_file_stream(self, node, path, options):
        return self.runtime.open_file_stream(node.name, path, options)

    def write_file_stream(self, node, path, chunks, options):
        return self.runtime.write_file_stream(node.name, path, chunks, options)


globals().update(Ssh.hookimpls())
