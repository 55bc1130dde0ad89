"""Property tests: the permission resolver against a reference model written here, independently.

The reference is the design contract taken literally (DESIGN.md section 4, docs/permissions.md):

* a rule is ``(source, target) -> set of capabilities`` (an empty set is an explicit deny), maybe
  expired; ``*`` is a literal value;
* resolution, most specific first: ``(s, t)``, ``(s, *)``, ``(*, t)``, ``(*, *)``; the first
  unexpired rule decides every capability; no rule: deny;
* ``permit s t caps`` stores the pair's rule; ``revoke s t`` stores an explicit deny; ``revoke s *``
  deletes every rule of ``s``; ``revoke --inherit s t`` deletes the pair's rule;
* admins are allowed everything; a non-admin never gets anything on the literal target ``*``.

Hypothesis generates random rule sets and random sequences of operations. They are applied
through the real service (``set_permission``/``revoke``, the path of the HTTP API, the CLI and
Telegram) on a real database (SQLite and PostgreSQL), plus raw SQL for rules whose names no API
accepts (``%``, ``a_``: LIKE metacharacters must match nothing but themselves) and to expire
rules. Then every (actor, action, target) is asked through ``Hub.authorize`` — the real
combination of policies a request gets — and compared with the reference.
"""

from __future__ import annotations

import pytest

from tests.hardening.conftest import need_module

# the test tools (dev dependency group): skipped locally when missing, a failure under CI=true
need_module("hypothesis")

import asyncio  # noqa: E402
from datetime import datetime, timedelta, timezone  # noqa: E402

import hypothesis  # noqa: E402
from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import claude_net_permissions as perms  # noqa: E402
from claude_net import Actor, isotime  # noqa: E402
from claude_net.hub import Hub  # noqa: E402
from claude_net_permissions import model  # noqa: E402


CAPS = ("exec", "file_read", "file_write")
#: valid node names (through the API) and, for raw-SQL rules, LIKE/GLOB metacharacters
NAMES = ("a", "ab", "b", "c")
ODD = ("%", "a_", "a%", "_b", "?", "a*")
ACTORS = NAMES
TARGETS = NAMES + ("*",)
ADMIN = Actor("root", admin=True, via="cli")


# -- the reference model -------------------------------------------------------------------------


class Reference:
    def __init__(self) -> None:
        self.rules: dict[tuple[str, str], tuple[frozenset[str], bool]] = {}  # -> (caps, expired)

    def apply(self, op: tuple) -> None:
        kind = op[0]
        if kind in ("permit", "sql"):
            _, s, t, caps = op
            self.rules[(s, t)] = (frozenset(caps), False)
        elif kind == "revoke":
            _, s, t = op
            if t == "*":
                for key in [k for k in self.rules if k[0] == s]:
                    del self.rules[key]
            else:
                self.rules[(s, t)] = (frozenset(), False)
        elif kind == "inherit":
            _, s, t = op
            self.rules.pop((s, t), None)
        elif kind == "expire":
            _, s, t = op
            if (s, t) in self.rules:
                self.rules[(s, t)] = (self.rules[(s, t)][0], True)

    def allowed(self, actor: Actor, action: str, target: str) -> bool:
        if actor.admin:
            return True
        if target == "*":
            return False
        for key in ((actor.name, target), (actor.name, "*"), ("*", target), ("*", "*")):
            rule = self.rules.get(key)
            if rule is not None and not rule[1]:
                return action in rule[0]
        return False


# -- strategies ----------------------------------------------------------------------------------

wild = st.sampled_from(NAMES + ("*",))
caps = st.sets(st.sampled_from(CAPS), min_size=1).map(lambda s: tuple(c for c in CAPS if c in s))
operation = st.one_of(
    st.tuples(st.just("permit"), wild, wild, caps),
    st.tuples(st.just("revoke"), wild, wild),
    st.tuples(st.just("inherit"), wild, wild),
    st.tuples(st.just("expire"), wild, wild),
    st.tuples(st.just("sql"), st.sampled_from(ODD + NAMES + ("*",)), st.sampled_from(ODD + NAMES + ("*",)),
              st.sets(st.sampled_from(CAPS)).map(lambda s: tuple(c for c in CAPS if c in s))),
)


async def _apply(hub: Hub, op: tuple) -> None:
    kind = op[0]
    if kind == "permit":
        await perms.set_permission(hub, ADMIN, op[1], op[2], capabilities=list(op[3]))
    elif kind == "revoke":
        await perms.revoke(hub, ADMIN, op[1], op[2])
    elif kind == "inherit":
        await perms.revoke(hub, ADMIN, op[1], op[2], inherit=True)
    elif kind == "expire":
        past = isotime(datetime.now(timezone.utc) - timedelta(minutes=1))
        await hub.db.execute("UPDATE exec_permissions SET expires_at = :p WHERE source = :s AND target = :t",
                             {"p": past, "s": op[1], "t": op[2]})
    elif kind == "sql":
        _, s, t, granted = op
        await hub.db.execute("DELETE FROM exec_permissions WHERE source = :s AND target = :t", {"s": s, "t": t})
        await hub.db.execute(
            "INSERT INTO exec_permissions (source, target, can_exec, can_read, can_write, granted_by, granted_at)"
            " VALUES (:s, :t, :x, :r, :w, 'test', :now)",
            {"s": s, "t": t, "x": "exec" in granted, "r": "file_read" in granted, "w": "file_write" in granted,
             "now": isotime()})


@pytest.fixture
def perm_hub(make_settings):
    """A started hub (core + permissions) on its own event loop, shared by every example of a test."""
    loop = asyncio.new_event_loop()
    hub = Hub(make_settings(), plugins=[perms], load_entrypoints=False)
    loop.run_until_complete(hub.start())
    try:
        yield loop, hub
    finally:
        loop.run_until_complete(hub.stop())
        loop.close()


SETTINGS = hypothesis.settings(max_examples=100, deadline=None, database=None, derandomize=True,
                               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(ops=st.lists(operation, max_size=12))
def test_authorize_matches_the_reference_after_any_sequence_of_changes(perm_hub, ops):
    loop, hub = perm_hub
    reference = Reference()

    async def run():
        await hub.db.execute("DELETE FROM exec_permissions")
        for op in ops:
            await _apply(hub, op)
            reference.apply(op)
        mismatches = []
        for name in ACTORS:
            for admin in (False, True):
                actor = Actor(name, admin=admin)
                for target in TARGETS:
                    for action in CAPS:
                        got = await hub.authorize(actor, action, target, {})
                        want = reference.allowed(actor, action, target)
                        if got != want:
                            mismatches.append((name, admin, action, target, got, want))
        # an unauthenticated (legacy v1) caller never gets exec or files, whatever the matrix says
        for action in CAPS:
            assert not await hub.authorize(Actor("a", unauthenticated=True), action, "b", {})
        return mismatches

    assert loop.run_until_complete(run()) == [], (ops, reference.rules)


@SETTINGS
@given(ops=st.lists(operation.filter(lambda op: op[0] != "sql"), max_size=10))
def test_the_effective_matrix_view_matches_the_reference(perm_hub, ops):
    """``GET /api/permissions?effective=true`` (what admins look at) agrees with the decisions."""
    loop, hub = perm_hub
    reference = Reference()

    async def run():
        await hub.db.execute("DELETE FROM exec_permissions")
        for op in ops:
            await _apply(hub, op)
            reference.apply(op)
        rules = await perms.list_permissions(hub)
        return perms.service.effective_matrix(rules, list(NAMES))

    matrix = loop.run_until_complete(run())
    for source in NAMES:
        for target in NAMES:
            want = [c for c in CAPS if reference.allowed(Actor(source), c, target)]
            assert matrix[source][target] == want, (source, target, ops)


rule_sets = st.dictionaries(
    st.tuples(st.sampled_from(ODD + NAMES + ("*",)), st.sampled_from(ODD + NAMES + ("*",))),
    st.sets(st.sampled_from(CAPS)), max_size=12)


@hypothesis.settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(rules=rule_sets, source=st.sampled_from(NAMES), target=st.sampled_from(NAMES), action=st.sampled_from(CAPS))
def test_the_pure_resolver_matches_the_reference(rules, source, target, action):
    """``model.decide`` (no database): True/False from the deciding rule, None when no rule applies."""
    rows = {key: {"source": key[0], "target": key[1], "can_exec": "exec" in c, "can_read": "file_read" in c,
                  "can_write": "file_write" in c} for key, c in rules.items()}
    decision = model.decide(rows, source, target, action)
    reference = Reference()
    for (s, t), c in rules.items():
        reference.apply(("sql", s, t, tuple(c)))
    applies = any(k in rules for k in ((source, target), (source, "*"), ("*", target), ("*", "*")))
    assert decision.allowed == (reference.allowed(Actor(source), action, target) if applies else None)
    if applies:
        assert decision.rule in ((source, target), (source, "*"), ("*", target), ("*", "*"))
