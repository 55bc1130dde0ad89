"""claude-net-permissions: the default policy — who may run commands and read/write files where.

Hook implementations only; the matrix logic is in :mod:`.model`, the database work in
:mod:`.service` (public for other plugins: ``set_permission``, ``revoke``, ``list_permissions``,
``resolve_permission``, ``permissions_view``), routes in :mod:`.routes`, CLI verbs in :mod:`.cli`.
See docs/permissions.md.
"""

from __future__ import annotations

from claude_net import Command, Migration, hookimpl

from . import service
from .model import ACTIONS, CAPABILITIES, Decision
from .service import (
    allow_for,
    list_allowances,
    list_permissions,
    permissions_view,
    resolve_permission,
    revoke,
    set_permission,
)

__all__ = [
    "CAPABILITIES",
    "Decision",
    "allow_for",
    "list_allowances",
    "list_permissions",
    "permissions_view",
    "resolve_permission",
    "revoke",
    "set_permission",
]

PLUGIN = "permissions"


@hookimpl
def migrations():
    return [
        Migration(
            PLUGIN, 1,
            [
                # The original spec's table (source, target, can_exec, granted_by, granted_at, PK),
                # extended with the other two capabilities and an optional expiry.
                "CREATE TABLE IF NOT EXISTS exec_permissions ("
                " source TEXT NOT NULL, target TEXT NOT NULL,"
                " can_exec BOOLEAN NOT NULL DEFAULT FALSE,"
                " granted_by TEXT, granted_at TEXT NOT NULL,"
                " can_read BOOLEAN NOT NULL DEFAULT FALSE,"
                " can_write BOOLEAN NOT NULL DEFAULT FALSE,"
                " expires_at TEXT,"
                " PRIMARY KEY (source, target))",
            ],
            description="exec_permissions matrix",
        ),
        Migration(
            PLUGIN, 2,
            [
                # the ask level: granted only with an admin's approval of each request. The seed
                # columns stay False for such a capability, so they keep meaning "granted outright"
                # (an older reader of the table sees a deny, never a plain grant).
                "ALTER TABLE exec_permissions ADD COLUMN ask_exec BOOLEAN NOT NULL DEFAULT FALSE",
                "ALTER TABLE exec_permissions ADD COLUMN ask_read BOOLEAN NOT NULL DEFAULT FALSE",
                "ALTER TABLE exec_permissions ADD COLUMN ask_write BOOLEAN NOT NULL DEFAULT FALSE",
                # 'before': snapshot the target container before exec / file_write
                "ALTER TABLE exec_permissions ADD COLUMN snapshot TEXT",
                # "approve for 1 h": lifts the ask of one pair and capability until it expires
                "CREATE TABLE IF NOT EXISTS permission_allowances ("
                " source TEXT NOT NULL, target TEXT NOT NULL, capability TEXT NOT NULL,"
                " expires_at TEXT NOT NULL, granted_by TEXT, granted_at TEXT NOT NULL, approval_id TEXT,"
                " PRIMARY KEY (source, target, capability))",
            ],
            description="ask level, snapshot before, approved-for-a-while allowances",
        ),
        Migration(
            PLUGIN, 3,
            [
                # who may message whom: apart from the exec/file rules, so that a message rule never
                # changes what an exec rule decides, and no message rule at all leaves messaging open
                "CREATE TABLE IF NOT EXISTS message_rules ("
                " source TEXT NOT NULL, target TEXT NOT NULL, allow BOOLEAN NOT NULL,"
                " granted_by TEXT, granted_at TEXT NOT NULL, PRIMARY KEY (source, target))",
            ],
            description="message rules",
        ),
    ]


@hookimpl
def authorize(hub, actor, action, target):
    """Exec and file actions only; admins are left to the roles policy (which allows them)."""
    if action == "message":
        if actor.admin or actor.unauthenticated:
            return None  # admins message anyone; legacy v1 messaging has its own switch
        return service.authorize_message(hub, actor, target)
    if action not in ACTIONS:
        return None  # admin-only actions, ...: not this policy's business
    if actor.unauthenticated:
        return False  # legacy token-less v1 callers never reach exec or files
    if actor.admin:
        return None  # never veto an admin: the roles policy allows everything for them
    return service.authorize(hub, actor, action, target)


@hookimpl
def register_routes(hub):
    from .routes import routes

    return routes()


def _configure_permit(p) -> None:
    p.add_argument("source", help="node allowed to act, or '*'/all for every node")
    p.add_argument("target", help="node acted upon, or 'all' ('*') for every node")
    narrow = p.add_mutually_exclusive_group()
    narrow.add_argument("--read-only", action="store_true", help="grant file_read only")
    narrow.add_argument("--capabilities", "--caps", metavar="CAPS",
                        help="comma-separated subset of exec,file_read,file_write (also x,r,w,read,write); "
                             "default: all three")
    p.add_argument("--ask", metavar="CAPS",
                   help="comma-separated capabilities (of those granted) that need an admin's approval of each "
                        "request, e.g. exec,file_write (see docs/approvals.md)")
    p.add_argument("--snapshot-before", action="store_true",
                   help="snapshot the target container before every exec and file write (LXD targets only)")
    p.add_argument("--message", choices=["allow", "deny", "inherit"],
                   help="instead of the exec/file pathway: may SOURCE send messages to TARGET (a message rule; "
                        "'inherit' removes it). Without any message rule messaging is open")
    p.add_argument("--expires", metavar="WHEN",
                   help="'30m', '2h', '7d', '1w' from now, or an ISO 8601 time (default: never)")
    p.add_argument("--json", action="store_true", help="print the stored rule as JSON")


def _configure_revoke(p) -> None:
    p.add_argument("source", help="node whose rights are taken away, or '*'")
    p.add_argument("target", help="a node (stores an explicit deny), or 'all' (removes every rule of SOURCE)")
    p.add_argument("--inherit", action="store_true",
                   help="remove only the SOURCE -> TARGET rule so broader rules apply again")
    p.add_argument("--json", action="store_true")


def _configure_permissions(p) -> None:
    p.add_argument("--effective", action="store_true",
                   help="show what every known node may do on every other (resolved), not the stored rules")
    p.add_argument("--json", action="store_true")


def _lazy(name: str):
    def run(args, ctx):
        from . import cli

        return getattr(cli, name)(args, ctx)

    return run


@hookimpl
def register_commands():
    return [
        Command("permit", "grant SOURCE the exec/file pathway to TARGET (or all)", _configure_permit,
                _lazy("run_permit")),
        Command("revoke", "take a pathway away (TARGET, or all for every rule of SOURCE)", _configure_revoke,
                _lazy("run_revoke")),
        Command("permissions", "print the permissions matrix", _configure_permissions, _lazy("run_permissions")),
    ]
