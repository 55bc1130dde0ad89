"""claude-net: a hub for AI coding agents on one LXD host.

This module is the public API for plugins; import from here, never from submodules::

    from claude_net import Backend, hookimpl, Node, ExecResult, NotFound

(and, in a plugin's tests, from ``claude_net.testing``: the pytest fixtures and helpers).
"""

from .errors import (
    ApprovalPending,
    AuditError,
    BadRequest,
    ConfigError,
    Conflict,
    Forbidden,
    GatewayTimeout,
    HubError,
    NotFound,
    NotSupported,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    Unauthorized,
    Unavailable,
)
from .hookspecs import hookimpl, hookspec
from .fairness import FairShares
from .backend import Backend
from .text import printable, quoted, safe_json
from .types import (
    Actor,
    Command,
    Decision,
    Event,
    ExecOptions,
    ExecResult,
    FileStream,
    Grant,
    Migration,
    Node,
    ReadOptions,
    Route,
    WriteOptions,
    isotime,
    validate_node_name,
    validate_remote_path,
)

__version__: str  # from the installed package's metadata, read on first use (see __getattr__)

__all__ = [
    "Actor",
    "ApprovalPending",
    "AuditError",
    "Backend",
    "BadRequest",
    "Command",
    "ConfigError",
    "Conflict",
    "Decision",
    "Event",
    "ExecOptions",
    "ExecResult",
    "FairShares",
    "FileStream",
    "Forbidden",
    "GatewayTimeout",
    "Grant",
    "HubError",
    "Migration",
    "Node",
    "NotFound",
    "NotSupported",
    "PayloadTooLarge",
    "RateLimited",
    "ReadOptions",
    "RequestTimeout",
    "Route",
    "Unauthorized",
    "Unavailable",
    "WriteOptions",
    "__version__",
    "await_me_maybe",
    "help_field",
    "hookimpl",
    "hookspec",
    "isotime",
    "printable",
    "quoted",
    "safe_json",
    "validate_node_name",
    "validate_remote_path",
]


def __getattr__(name: str):  # lazy: keep `import claude_net` cheap for the CLI and plugins
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("claude-net")
        except PackageNotFoundError:  # a source tree on sys.path that was never installed
            found = "0+unknown"
        globals()["__version__"] = found
        return found
    if name == "await_me_maybe":
        from .hub import await_me_maybe

        return await_me_maybe
    if name == "help_field":
        from .config import help_field

        return help_field
    raise AttributeError(name)
