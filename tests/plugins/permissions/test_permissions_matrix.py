"""Table-driven: (actor, target, action) -> allowed, against fixture matrices, through Hub.authorize.

Every case goes through the real combination of policies (built-in roles + this plugin), so it
pins what a request would get. Matrices are built through the service functions (the same path
as the HTTP API and the CLI), except the "literal" matrix, whose odd names cannot pass
validation and are written with raw SQL to prove the lookup compares with '='.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone

import pytest

import claude_net_permissions as perms
from claude_net import Actor, isotime

ADMIN = Actor("root", admin=True, via="cli")
ALL = ("exec", "file_read", "file_write")


def _actor(spec: str) -> Actor:
    kind, _, name = spec.rpartition(":")
    if kind == "admin":
        return Actor(name, admin=True)
    if kind == "unauth":
        return Actor(name, unauthenticated=True)
    return Actor(name)


def _past() -> str:
    return isotime(datetime.now(timezone.utc) - timedelta(minutes=1))


# Each matrix: the operations that build it. ("permit", source, target, capabilities|None, expires|None)
# ("revoke", source, target) / ("revoke-inherit", source, target) / ("sql", statement, params).
MATRICES = {
    "precedence": [
        ("permit", "*", "*", ["file_read"], None),
        ("permit", "*", "web", None, None),
        ("permit", "alice", "*", ["exec"], None),
        ("permit", "alice", "web", ["file_write"], None),
        ("permit", "bob", "db", None, None),
        ("revoke", "carol", "web"),
    ],
    "manager": [
        ("permit", "managerclaude", "all", None, None),
        ("revoke", "managerclaude", "chasclaude"),
    ],
    "revoke-all": [
        ("permit", "managerclaude", "all", None, None),
        ("revoke", "managerclaude", "chasclaude"),
        ("permit", "managerclaude", "seanclaude", ["file_read"], "2h"),
        ("permit", "other", "all", None, None),
        ("revoke", "managerclaude", "all"),
    ],
    "inherit": [
        ("permit", "alice", "all", None, None),
        ("revoke", "alice", "box1"),
        ("revoke", "alice", "box2"),
        ("revoke-inherit", "alice", "box2"),
    ],
    "literal": [
        # names that are not valid node names: only raw SQL can store them
        ("sql", "%", "%"), ("sql", "a_c", "*"), ("sql", "?", "*"), ("sql", "al*", "*"),
        ("sql", "alice", "box%"), ("sql", "alice", "b_x1"), ("sql", "alice", "box?"), ("sql", "alice", "box*"),
        ("sql", "bob", "*"),
    ],
    "read-only": [
        ("permit", "reader", "all", ["file_read"], None),
        ("permit", "writer", "box1", ["file_read", "file_write"], None),
    ],
    "expiry": [
        ("permit", "temp", "box1", None, "1h"),
        ("sql-expire", "temp", "box1"),
        ("permit", "temp", "*", ["file_read"], None),
        ("permit", "gone", "box2", None, "1h"),
        ("sql-expire", "gone", "box2"),
        ("permit", "fresh", "box1", None, "1h"),
    ],
    "admin": [
        ("permit", "*", "*", None, None),
        ("revoke", "boss", "box1"),
    ],
    "empty": [],
}

# (matrix, actor, target, action, expected, why)
CASES = [
    # most specific first: (s,t) > (s,*) > (*,t) > (*,*); the deciding rule decides every capability
    ("precedence", "alice", "web", "exec", False, "(alice,web) grants write only: beats (alice,*) exec"),
    ("precedence", "alice", "web", "file_read", False, "(alice,web) beats (*,web) and (*,*) read"),
    ("precedence", "alice", "web", "file_write", True, "(alice,web) grants write"),
    ("precedence", "alice", "db", "exec", True, "(alice,*) grants exec"),
    ("precedence", "alice", "db", "file_read", False, "(alice,*) exec-only beats (*,*) read"),
    ("precedence", "bob", "db", "exec", True, "(bob,db) full"),
    ("precedence", "bob", "db", "file_write", True, "(bob,db) full"),
    ("precedence", "bob", "web", "exec", True, "(*,web) full"),
    ("precedence", "bob", "other", "file_read", True, "(*,*) read"),
    ("precedence", "bob", "other", "exec", False, "(*,*) read-only"),
    ("precedence", "bob", "other", "file_write", False, "(*,*) read-only"),
    ("precedence", "carol", "web", "exec", False, "explicit deny (carol,web) beats (*,web)"),
    ("precedence", "carol", "web", "file_read", False, "explicit deny beats (*,*) read"),
    ("precedence", "carol", "db", "file_read", True, "(*,*) read still applies elsewhere"),
    ("precedence", "carol", "db", "exec", False, "(*,*) read-only"),
    ("precedence", "dave", "web", "file_write", True, "(*,web) full"),
    ("precedence", "alice", "web", "message", True, "messaging is not this policy's business"),
    ("precedence", "carol", "web", "message", True, "an exec deny row does not block messages"),
    # the spec's example
    ("manager", "managerclaude", "seanclaude", "exec", True, "permit managerclaude all"),
    ("manager", "managerclaude", "seanclaude", "file_write", True, "a grant covers files too"),
    ("manager", "managerclaude", "managerclaude", "exec", True, "all includes itself"),
    ("manager", "managerclaude", "chasclaude", "exec", False, "revoke managerclaude chasclaude"),
    ("manager", "managerclaude", "chasclaude", "file_read", False, "revoke covers every capability"),
    ("manager", "seanclaude", "managerclaude", "exec", False, "no rule: deny by default"),
    # revoke X all: nothing of X left, others untouched
    ("revoke-all", "managerclaude", "seanclaude", "file_read", False, "its narrower rule is gone too"),
    ("revoke-all", "managerclaude", "chasclaude", "exec", False, "its deny row is gone, still denied"),
    ("revoke-all", "managerclaude", "box1", "exec", False, "its wildcard grant is gone"),
    ("revoke-all", "other", "box1", "exec", True, "another source keeps its grant"),
    # revoke --inherit removes just the pair's rule
    ("inherit", "alice", "box1", "exec", False, "explicit deny"),
    ("inherit", "alice", "box2", "exec", True, "deny removed: (alice,*) applies again"),
    ("inherit", "alice", "box3", "exec", True, "(alice,*)"),
    # '*' and odd characters are literal values: '=' comparison, never LIKE or GLOB
    ("literal", "abc", "box1", "exec", False, "row source 'a_c' is not a pattern"),
    ("literal", "alice", "box1", "exec", False, "targets 'box%', 'b_x1', 'box?', 'box*' are not patterns"),
    ("literal", "alice", "boxa", "file_read", False, "'box?' is not a pattern"),
    ("literal", "al", "box1", "exec", False, "'al*' is not a prefix pattern"),
    ("literal", "alx", "box1", "exec", False, "'al*' is not a glob"),
    ("literal", "x", "x", "exec", False, "'%' matches nothing but '%'"),
    ("literal", "bob", "box1", "exec", True, "a real wildcard row still works"),
    ("literal", "bob", "boxa", "file_write", True, "a real wildcard row still works"),
    # read-only grants
    ("read-only", "reader", "box1", "file_read", True, "read-only grant"),
    ("read-only", "reader", "box1", "exec", False, "read-only: no exec"),
    ("read-only", "reader", "box1", "file_write", False, "read-only: no write"),
    ("read-only", "writer", "box1", "file_write", True, "read+write grant"),
    ("read-only", "writer", "box1", "exec", False, "read+write grant: no exec"),
    ("read-only", "writer", "box2", "file_read", False, "no rule for box2"),
    # expiry: an expired rule is ignored (as if absent), so broader rules apply again
    ("expiry", "temp", "box1", "exec", False, "(temp,box1) expired; (temp,*) read-only decides"),
    ("expiry", "temp", "box1", "file_read", True, "(temp,*) read-only"),
    ("expiry", "gone", "box2", "exec", False, "only rule expired: deny"),
    ("expiry", "gone", "box2", "file_read", False, "only rule expired: deny"),
    ("expiry", "fresh", "box1", "exec", True, "not expired yet"),
    # admin-only actions stay admin-only whatever the matrix says; admins may do everything
    ("admin", "alice", "box1", "exec", True, "(*,*) full"),
    ("admin", "alice", "box1", "container", False, "container is admin-only"),
    ("admin", "alice", "alice", "permit", False, "permit is admin-only"),
    ("admin", "alice", None, "permissions_view", False, "admin-only"),
    ("admin", "alice", None, "activity_view", False, "admin-only"),
    ("admin", "alice", None, "admin", False, "admin-only"),
    ("admin", "admin:boss", "box1", "exec", True, "a deny row never binds an admin"),
    ("admin", "admin:boss", "box1", "container", True, "admins may do admin-only actions"),
    ("admin", "admin:boss", "box2", "file_write", True, "admin"),
    ("admin", "boss", "box1", "exec", False, "the same name without admin rights is bound by the row"),
    ("admin", "unauth:ghost", "box1", "exec", False, "token-less v1 callers never exec, even under (*,*)"),
    ("admin", "unauth:ghost", "box1", "file_read", False, "token-less v1 callers never read files"),
    ("admin", "unauth:ghost", "box1", "message", True, "...but may message (when enabled)"),
    ("admin", "alice", "*", "exec", False, "a literal '*' target is never authorized"),
    # nothing stored: deny by default
    ("empty", "alice", "box1", "exec", False, "no rules"),
    ("empty", "alice", "box1", "file_read", False, "no rules"),
    ("empty", "admin:root", "box1", "exec", True, "admins need no rule"),
    ("empty", "alice", "bob", "message", True, "messaging stays open"),
]


@contextlib.asynccontextmanager
async def opened_hub(hub_harness):
    """A started hub with only the core and this plugin (no activity plugin, no backend)."""
    async with hub_harness(plugins=[perms]) as h:
        yield h.hub


async def build(hub, ops) -> None:
    for op in ops:
        if op[0] == "permit":
            _, source, target, caps, expires = op
            await perms.set_permission(hub, ADMIN, source, target, capabilities=caps, expires=expires)
        elif op[0] == "revoke":
            await perms.revoke(hub, ADMIN, op[1], op[2])
        elif op[0] == "revoke-inherit":
            await perms.revoke(hub, ADMIN, op[1], op[2], inherit=True)
        elif op[0] == "sql":
            await hub.db.execute(
                "INSERT INTO exec_permissions (source, target, can_exec, can_read, can_write, granted_by, granted_at)"
                " VALUES (:s, :t, TRUE, TRUE, TRUE, 'test', :now)", {"s": op[1], "t": op[2], "now": isotime()})
        elif op[0] == "sql-expire":
            await hub.db.execute("UPDATE exec_permissions SET expires_at = :past WHERE source = :s AND target = :t",
                                 {"past": _past(), "s": op[1], "t": op[2]})
        else:  # pragma: no cover
            raise AssertionError(op)


@pytest.mark.parametrize("matrix", sorted(MATRICES))
async def test_matrix(matrix, hub_harness):
    cases = [c for c in CASES if c[0] == matrix]
    assert cases, f"matrix {matrix} has no cases"
    async with opened_hub(hub_harness) as hub:
        await build(hub, MATRICES[matrix])
        wrong = []
        for _, actor, target, action, expected, why in cases:
            got = await hub.authorize(_actor(actor), action, target, {})
            if got is not expected:
                wrong.append(f"{actor} {action} {target}: expected {expected}, got {got} ({why})")
        assert not wrong, "\n".join(wrong)


def test_every_matrix_has_cases():
    assert {c[0] for c in CASES} == set(MATRICES)


async def test_revoke_all_leaves_no_residue(hub_harness):
    async with opened_hub(hub_harness) as hub:
        await build(hub, MATRICES["revoke-all"])
        count = await hub.db.fetch_val("SELECT COUNT(*) FROM exec_permissions WHERE source = 'managerclaude'")
        assert count == 0
        assert [(r["source"], r["target"]) for r in await perms.list_permissions(hub)] == [("other", "*")]


async def test_revoke_one_under_wildcard_stores_explicit_deny(hub_harness):
    async with opened_hub(hub_harness) as hub:
        await build(hub, MATRICES["manager"])
        rules = {(r["source"], r["target"]): r for r in await perms.list_permissions(hub)}
        assert rules[("managerclaude", "*")]["capabilities"] == list(ALL)
        deny = rules[("managerclaude", "chasclaude")]
        assert deny["capabilities"] == [] and deny["allow"] is False
        assert (deny["can_exec"], deny["can_read"], deny["can_write"]) == (False, False, False)


async def test_resolve_permission_explains(hub_harness):
    async with opened_hub(hub_harness) as hub:
        await build(hub, MATRICES["precedence"])
        d = await perms.resolve_permission(hub, "alice", "db", "exec")
        assert (d.allowed, d.rule) == (True, ("alice", "*"))
        d = await perms.resolve_permission(hub, "carol", "web", "file_read")
        assert (d.allowed, d.rule) == (False, ("carol", "web"))
        d = await perms.resolve_permission(hub, "zed", "db", "exec")
        assert (d.allowed, d.rule) == (False, ("*", "*"))
        await build(hub, MATRICES["literal"])
        # a stored '%' row is reachable only by the literal name '%'
        d = await perms.resolve_permission(hub, "%", "%", "exec")
        assert (d.allowed, d.rule) == (True, ("%", "%"))
        await perms.revoke(hub, ADMIN, "*", "all")
        d = await perms.resolve_permission(hub, "zed", "db", "exec")
        assert (d.allowed, d.rule) == (None, None)


async def test_every_change_takes_effect_on_the_next_call(hub_harness):
    """Two hubs on one database (two replicas): a change through one is seen by the other at once."""
    async with opened_hub(hub_harness) as one, opened_hub(hub_harness) as two:
        alice = Actor("alice")
        assert await two.authorize(alice, "exec", "box1") is False
        await perms.set_permission(one, ADMIN, "alice", "box1")
        assert await two.authorize(alice, "exec", "box1") is True
        await perms.revoke(one, ADMIN, "alice", "box1")
        assert await two.authorize(alice, "exec", "box1") is False
        await perms.set_permission(one, ADMIN, "alice", "all", capabilities=["file_read"])
        await perms.revoke(one, ADMIN, "alice", "box1", inherit=True)
        assert await two.authorize(alice, "file_read", "box1") is True
        assert await two.authorize(alice, "exec", "box1") is False


async def test_service_rejects_bad_input(hub_harness):
    from claude_net import BadRequest

    async with opened_hub(hub_harness) as hub:
        bad = [
            dict(source="a%", target="box1"),
            dict(source="a_b", target="box1"),
            dict(source="a?", target="box1"),
            dict(source="alice", target="box*"),
            dict(source="Alice", target="box1"),
            dict(source="alice", target="box1", capabilities=["sudo"]),
            dict(source="alice", target="box1", capabilities=[]),
            dict(source="alice", target="box1", expires="yesterday"),
            dict(source="alice", target="box1", expires="2001-01-01T00:00:00Z"),
            dict(source="alice", target="box1", allow=False, capabilities=["exec"]),
            dict(source="alice", target="box1", allow=False, expires="2h"),
            dict(source="alice", target="box1", inherit=True),
        ]
        for kwargs in bad:
            source, target = kwargs.pop("source"), kwargs.pop("target")
            with pytest.raises(BadRequest):
                await perms.set_permission(hub, ADMIN, source, target, **kwargs)
        assert await perms.list_permissions(hub) == []
