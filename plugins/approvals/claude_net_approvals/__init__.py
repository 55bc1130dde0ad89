"""claude-net-approvals: actions under an ``ask`` grant wait for an admin's yes.

One stored object and one state machine (``pending -> approved | denied | expired | cancelled``)
for every kind of approval: an exec or file call that resolved to *ask* (``kind: action``, filed
by the hub through the ``request_approval`` hook) and an agent's own tool prompt relayed to the
admin (``kind: agent_tool``, filed by ``POST /api/approvals``). Decided through one function
(:func:`service.decide`) whatever the route: HTTP, the CLI, Telegram buttons, the dashboard.
Hook implementations only; the logic is in :mod:`.service`, the table in :mod:`.store`. See
docs/approvals.md.
"""

from __future__ import annotations

from claude_net import Command, Migration, hookimpl

from . import service
from .settings import ApprovalsSettings

PLUGIN = "approvals"


@hookimpl
def config_sections():
    return {"approvals": ApprovalsSettings}


@hookimpl
def validate_config(settings):
    cfg = settings.section("approvals")
    problems = []
    for key in ("wait_default", "wait_max", "expiry"):
        if getattr(cfg, key) < 0:
            problems.append((f"approvals.{key}", "must not be negative"))
    if cfg.wait_default > cfg.wait_max:
        problems.append(("approvals.wait_default", f"is longer than approvals.wait_max ({cfg.wait_max:g})"))
    for key in ("max_pending_per_requester", "max_pending_per_target"):
        if getattr(cfg, key) < 1:
            problems.append((f"approvals.{key}", "must be at least 1"))
    if isinstance(cfg.relay, str) and cfg.relay not in ("all", "none") and "," not in cfg.relay:
        problems.append(("approvals.relay", 'must be "all", "none" or a list of node names'))
    return problems


@hookimpl
def migrations():
    from .store import MIGRATION

    return [Migration(PLUGIN, 1, MIGRATION, description="approvals")]


@hookimpl
def request_approval(hub, actor, action, target, detail, particulars, approval, wait):
    return service.request_action(hub, actor, action, target, particulars, approval, wait)


@hookimpl
def startup(hub):
    hub.spawn_singleton("approvals-expiry", lambda: service.sweep_forever(hub))


@hookimpl
def register_routes(hub):
    from .routes import routes

    return routes()


def _lazy(name: str):
    def run(args, ctx):
        from . import cli

        return getattr(cli, name)(args, ctx)

    return run


def _configure_approvals(p) -> None:
    p.add_argument("verb", nargs="?", default="list", choices=["list", "approve", "deny", "show"],
                   help="list (default), approve ID, deny ID, show ID")
    p.add_argument("id", nargs="?", help="the approval's id (approve, deny, show)")
    p.add_argument("--for", dest="for_", metavar="DURATION",
                   help="with approve: let the same node do the same action on the same target without asking "
                        "for this long ('1h', '30m'); recorded as a permit")
    p.add_argument("--state", choices=["pending", "approved", "denied", "expired", "cancelled"],
                   help="with list: only approvals in this state (default: pending first, then the latest others)")
    p.add_argument("--json", action="store_true")


def _configure_restore(p) -> None:
    p.add_argument("activity_id", help="the id of the action's activity row (its data.snapshot names the snapshot)")
    p.add_argument("--json", action="store_true")


@hookimpl
def register_commands():
    return [
        Command("approvals", "list pending approvals, or approve / deny one (operator verb)", _configure_approvals,
                _lazy("run_approvals")),
        Command("restore-before", "restore a container to the snapshot taken before an action (by its activity id)",
                _configure_restore, _lazy("run_restore_before")),
    ]
