"""Built-in policy: admins may do everything; admin-only actions are for admins only.

Everything else (exec, files) is left to a policy plugin such as ``claude-net-permissions``;
with none installed, the hub denies it (no answer = deny). Messaging is open to every
authenticated node.
"""

from __future__ import annotations

from claude_net import hookimpl
from claude_net.hub import ADMIN_ONLY_ACTIONS


@hookimpl
def authorize(actor, action):
    if actor.admin and not actor.unauthenticated:
        return True
    if action in ADMIN_ONLY_ACTIONS:
        return False
    if action == "message":
        return True
    return None
