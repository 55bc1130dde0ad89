"""The base of backend plugins: plain ``async def`` methods on a class, the hooks made for you.

A backend plugin subclasses :class:`Backend`, names itself (``name`` is the ``node.backend``
value of the nodes it owns) and exports the hook implementations the class produces::

    class LocalBackend(Backend):
        name = "local"
        config = LocalSettings

        async def list_nodes(self): ...
        async def execute(self, node, command, options): ...

    globals().update(LocalBackend.hookimpls())

The generated hooks are the contract of :mod:`claude_net.hookspecs`, unchanged; the base only
writes the parts every backend used to repeat: the ownership test, the rule that a firstresult
hook answers ``None`` synchronously for a foreign node and an awaitable for its own, the runtime
kept in ``hub.plugin_state`` from ``startup`` to ``shutdown``, "not running" answers, capability
checks and not-a-container answers. See docs/writing-plugins.md.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar

from .errors import BadRequest, NotSupported, Unavailable
from .hookspecs import hookimpl
from .types import ExecOptions, ExecResult, FileStream, Node, ReadOptions, WriteOptions

#: the capability a node must list for each operation (``Node.capabilities``)
CAPABILITY = {
    "execute": "exec",
    "read_file": "file_read",
    "open_file_stream": "file_read",
    "write_file": "file_write",
    "write_file_stream": "file_write",
    "container_op": "container",
    "reap_exec": "exec",
}
#: methods a backend may leave out without losing a capability: their hook then answers ``None``
#: for its nodes (the core falls back, or says the backend cannot do it)
OPTIONAL = frozenset({"open_file_stream", "write_file_stream", "reap_exec"})
_VERB = {"exec": "run commands", "file_read": "read files", "file_write": "write files"}
#: where the base keeps the running Backend instances of a hub, by backend name
REGISTRY_KEY = "claude_net.backends"


def refusal(node: Node, capability: str) -> NotSupported:
    """The error for an operation ``node`` does not list in its capabilities (400)."""
    if capability == "container":
        return NotSupported(
            f"{node.name} is not a container (backend {node.backend}): start, stop, snapshot, restore and "
            "snapshot listing are not available there; manage that machine directly", code="not_a_container")
    verb = _VERB.get(capability, capability)
    return NotSupported(f"{node.name} cannot {verb}: its {node.backend} backend lists it without the "
                        f"{capability!r} capability", code="not_capable")


async def _raise(exc: BaseException) -> Any:
    raise exc


async def _value(value: Any) -> Any:
    return value


def _awaitable(value: Any) -> Awaitable[Any]:
    return value if inspect.isawaitable(value) else _value(value)


class Backend:
    """Subclass it, set ``name`` (and ``config``), write ``async def`` methods; see the module doc.

    Methods a subclass may write (all optional; a node only gets what its backend implements):

    * ``list_nodes()`` -> ``[Node]``: the nodes, built with :meth:`node` (current ``state``);
    * ``execute(node, command, options)`` -> :class:`ExecResult`;
    * ``read_file(node, path, options)`` -> ``bytes``; ``write_file(node, path, data, options)``
      -> extra response fields or ``None``;
    * ``open_file_stream(node, path, options)`` -> :class:`FileStream` and
      ``write_file_stream(node, path, chunks, options)``: streamed transfers (without them the
      core uses the buffered pair); :meth:`can_stream` may decline per node;
    * ``container_op(node, op, args)`` -> extra response fields; without it the backend's nodes
      are not containers and the answer is 400 ``not_a_container``;
    * ``reap_exec(node, tag)`` -> ``int``: end every process of the node carrying ``tag`` (an
      :attr:`ExecOptions.tag`, already checked against ``ExecOptions.TAG_PATTERN``), how many;
    * ``start()`` / ``close()``: after construction at hub startup / at shutdown.

    Each method is called only for a node whose ``backend`` is ``name``, that lists the needed
    capability, while the backend is running; it may be ``async def`` or return an awaitable.
    """

    #: the ``node.backend`` value of the nodes this backend owns; also its ``hub.plugin_state`` key
    name: ClassVar[str] = ""
    #: the settings dataclass of the ``[name]`` configuration section (None: no section)
    config: ClassVar[type | None] = None
    #: what :meth:`node` lists; default: derived from the methods the subclass implements
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "capabilities" not in cls.__dict__:
            cls.capabilities = frozenset(cap for method, cap in CAPABILITY.items()
                                         if method not in OPTIONAL and cls.implements(method))

    def __init__(self, hub: Any, settings: Any) -> None:
        """Called at hub startup (synchronously: a bad setting raised here stops the start)."""
        self.hub = hub
        #: the parsed ``[name]`` section (None without ``config``)
        self.settings = settings
        #: what ``hub.plugin_state[name]`` holds while the hub runs: this object unless a subclass
        #: wraps a runtime object of its own (set it in ``__init__``)
        self.runtime: Any = self

    # -- what a subclass may override ---------------------------------------------------------

    @classmethod
    def implements(cls, method: str) -> bool:
        return getattr(cls, method, None) is not getattr(Backend, method, None)

    @classmethod
    def enabled(cls, settings: Any) -> bool:
        """False: the backend does not start and lists no nodes (e.g. ``[lxd] enabled = false``)."""
        return True

    @classmethod
    def validate_settings(cls, settings: Any) -> Iterable[tuple[str, str]]:
        """``(key, sentence)`` problems of the parsed section, ``key`` relative to it ("" for the
        section itself); reported by ``claude-net check`` and at ``serve`` with the file or variable."""
        return ()

    @classmethod
    def configured_nodes(cls, settings: Any) -> list[Node] | None:
        """Nodes known from configuration alone, listed while the backend is not running (CLI
        commands open the hub without starting it). None: "not running" (503) instead."""
        return None

    @classmethod
    def node(cls, name: str, state: str = "unknown", **info: Any) -> Node:
        """A :class:`Node` of this backend with its capabilities; ``info`` is JSON-able status."""
        return Node(name, cls.name, state=state, capabilities=cls.capabilities, info=info)

    def can_stream(self, node: Node) -> bool:
        """False: no streamed transfer for this node; the core uses read_file / write_file."""
        return True

    async def start(self) -> None:
        """Connect, warm pools, spawn tasks (``self.hub.spawn``). An exception aborts the hub's start."""

    async def close(self) -> None:
        """Release everything; called once at shutdown (also after a failed start)."""

    async def list_nodes(self) -> list[Node]:
        return []

    async def execute(self, node: Node, command: str, options: ExecOptions) -> ExecResult:
        raise refusal(node, "exec")

    async def read_file(self, node: Node, path: str, options: ReadOptions) -> bytes:
        raise refusal(node, "file_read")

    async def write_file(self, node: Node, path: str, data: bytes, options: WriteOptions) -> Mapping[str, Any] | None:
        raise refusal(node, "file_write")

    async def open_file_stream(self, node: Node, path: str, options: ReadOptions) -> FileStream:
        raise refusal(node, "file_read")

    async def write_file_stream(self, node: Node, path: str, chunks: AsyncIterator[bytes],
                                options: WriteOptions) -> Mapping[str, Any] | None:
        raise refusal(node, "file_write")

    async def container_op(self, node: Node, op: str, args: Mapping[str, Any]) -> Mapping[str, Any] | None:
        raise refusal(node, "container")

    async def reap_exec(self, node: Node, tag: str) -> int:
        raise NotSupported(f"the {node.backend} backend cannot find the processes of an earlier exec on "
                           f"{node.name}", code="not_capable")

    # -- the hooks ------------------------------------------------------------------------------

    @classmethod
    def running(cls, hub: Any) -> Backend | None:
        """This backend's instance in ``hub`` while it runs, else None."""
        return hub.plugin_state.get(REGISTRY_KEY, {}).get(cls.name)

    @classmethod
    def _section(cls, settings: Any) -> Any:
        return settings.section(cls.name) if cls.config is not None else None

    @classmethod
    def _not_running(cls) -> Unavailable:
        return Unavailable(f"the {cls.name} backend is not running (the hub has not started it, it failed to "
                           "start, or it is stopping)", code="backend_unavailable")

    @classmethod
    def _call(cls, hub: Any, node: Node, method: str, *args: Any, stream: bool = False) -> Awaitable[Any] | None:
        """None for a foreign node (synchronously); else an awaitable of the method's answer or error."""
        if node.backend != cls.name or (method in OPTIONAL and not cls.implements(method)):
            return None
        backend = cls.running(hub)
        if backend is None:
            return _raise(cls._not_running())
        if CAPABILITY[method] not in node.capabilities:
            return _raise(refusal(node, CAPABILITY[method]))
        if stream and not backend.can_stream(node):
            return None
        return _awaitable(getattr(backend, method)(node, *args))

    @classmethod
    def hookimpls(cls) -> dict[str, Callable[..., Any]]:
        """The hook implementations of this backend, by hook name, for the plugin module's namespace
        (``globals().update(MyBackend.hookimpls())``) or any object ``pm.register`` accepts."""
        if not cls.name:
            raise TypeError(f"{cls.__name__}.name must be set: it is the node.backend value of its nodes")

        def config_sections():
            return {cls.name: cls.config} if cls.config is not None else {}

        def validate_config(settings):
            if cls.config is None:
                return ()
            prefix = cls.name
            return [(f"{prefix}.{key}" if key else prefix, message)
                    for key, message in cls.validate_settings(settings.section(cls.name))]

        def startup(hub):
            settings = cls._section(hub.settings)
            if not cls.enabled(settings):
                return None
            backend = cls(hub, settings)
            hub.plugin_state.setdefault(REGISTRY_KEY, {})[cls.name] = backend
            hub.plugin_state[cls.name] = backend.runtime
            return backend.start()

        def shutdown(hub):
            backend = hub.plugin_state.get(REGISTRY_KEY, {}).pop(cls.name, None)
            hub.plugin_state.pop(cls.name, None)
            return backend.close() if backend is not None else None

        def list_nodes(hub):
            settings = cls._section(hub.settings)
            if not cls.enabled(settings):
                return None
            backend = cls.running(hub)
            if backend is not None:
                return _awaitable(backend.list_nodes())
            nodes = cls.configured_nodes(settings)
            if nodes is None:
                raise cls._not_running()
            return nodes

        def execute(hub, node, command, options):
            return cls._call(hub, node, "execute", command, options)

        def read_file(hub, node, path, options):
            return cls._call(hub, node, "read_file", path, options)

        def write_file(hub, node, path, data, options):
            return cls._call(hub, node, "write_file", path, data, options)

        def open_file_stream(hub, node, path, options):
            return cls._call(hub, node, "open_file_stream", path, options, stream=True)

        def write_file_stream(hub, node, path, chunks, options):
            return cls._call(hub, node, "write_file_stream", path, chunks, options, stream=True)

        def container_op(hub, node, op, args):
            return cls._call(hub, node, "container_op", op, args)

        def reap_exec(hub, node, tag):
            if node.backend != cls.name or not cls.implements("reap_exec"):
                return None
            if not (isinstance(tag, str) and re.fullmatch(ExecOptions.TAG_PATTERN, tag)):
                # it reaches scripts in the node: nothing but a hub-made token gets that far
                return _raise(BadRequest("an exec tag is 16 to 64 lowercase hex characters", code="invalid_tag"))
            return cls._call(hub, node, "reap_exec", tag)

        hooks = dict(config_sections=config_sections, validate_config=validate_config, startup=startup,
                     shutdown=shutdown, list_nodes=list_nodes, execute=execute, read_file=read_file,
                     write_file=write_file, open_file_stream=open_file_stream,
                     write_file_stream=write_file_stream, container_op=container_op, reap_exec=reap_exec)
        for hook_name, function in hooks.items():
            function.__qualname__ = f"{cls.__qualname__}.hookimpls.{hook_name}"
            hookimpl(function)
        return hooks
