"""The ``[approvals]`` configuration section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _help(default, text: str, **kw: Any):
    if callable(default):
        return field(default_factory=default, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class ApprovalsSettings:
    wait_default: float = _help(120.0, "Seconds a request under an `ask` grant waits for the decision when it "
                                       "gives no `approval_wait` (then 202 with the approval's id).")
    wait_max: float = _help(600.0, "Longest `approval_wait` honoured, in seconds (longer ones are cut to it).")
    expiry: float = _help(600.0, "Seconds a pending approval may wait for a decision before it expires; once "
                                 "approved, the request has as long again to run (re-send with its id).")
    max_pending_per_requester: int = _help(5, "Pending approvals one node may have at once; more is 429 "
                                              "too_many_approvals (recorded).")
    max_pending_per_target: int = _help(20, "Pending approvals for actions on one target, from all nodes together.")
    relay: str | list[str] = _help("all", "Which nodes may file agent-tool approvals (an agent's own permission prompt "
                              "relayed to the admin): \"all\", \"none\" or a list of node names.")
    snapshot_expiry: str = _help("24h", "How long a snapshot taken before an action (`snapshot: before` rules) "
                                        "is kept: LXD deletes it then ('30m', '24h', '7d').")
    max_for: str = _help("7d", "Longest \"approve for\" an admin may give (an allowance without asking).")
