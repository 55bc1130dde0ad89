"""Container operations: start, stop, snapshot, restore, list_snapshots."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from pylxd import exceptions as lxd_exc

from claude_net import BadRequest, Conflict, Node, NotFound, NotSupported

from .backend import LxdBackend, LxdError, lxd_message

OPS = ("start", "stop", "snapshot", "restore", "list_snapshots")
NEVER = "0001-01-01T00:00:00Z"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(value: Any, now: datetime | None = None) -> datetime | None:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"2w"``, ``"90s"``, an ISO 8601 time or date; None: never."""
    if value in (None, "", "never"):
        return None
    if not isinstance(value, str):
        raise BadRequest("expires must be a string such as '7d', '12h' or '2026-12-31T00:00:00Z'",
                         code="invalid_field", field="expires")
    now = now or datetime.now(timezone.utc)
    match = _DURATION.match(value)
    if match:
        moment = now + timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2).lower()])
    else:
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"expires {value!r} is neither a duration ('7d', '12h', '30m') nor an ISO 8601 time",
                             code="invalid_field", field="expires") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    if moment <= now:
        raise BadRequest(f"expires {value!r} is in the past", code="invalid_field", field="expires")
    return moment


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def unique_name(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def _deadline(backend: LxdBackend, seconds: float | None = None) -> float:
    return time.monotonic() + (backend.cfg.operation_timeout if seconds is None else seconds)


def _state(backend: LxdBackend, api, name: str, body: dict[str, Any], deadline: float, what: str) -> None:
    response = api.instances[name].state.put(json=body, timeout=backend.timeouts)
    backend.operation(response, deadline, what)


def start_sync(backend: LxdBackend, name: str) -> dict[str, Any]:
    api = backend.api()
    status = backend.instance_status(name)
    if status == "Running":
        return {"state": "running", "changed": False}
    action = "unfreeze" if status == "Frozen" else "start"
    _state(backend, api, name, {"action": action, "timeout": -1}, _deadline(backend), f"start {name}")
    return {"state": "running", "changed": True}


def stop_sync(backend: LxdBackend, name: str, force: bool, timeout: float) -> dict[str, Any]:
    api = backend.api()
    if backend.instance_status(name) == "Stopped":
        return {"state": "stopped", "changed": False, "forced": False}
    if not force:
        seconds = max(1, int(round(timeout)))
        try:
            _state(backend, api, name, {"action": "stop", "timeout": seconds, "force": False},
                   _deadline(backend, seconds + 15), f"stop {name} within {seconds}s")
            return {"state": "stopped", "changed": True, "forced": False}
        except LxdError:
            if backend.instance_status(name) == "Stopped":
                return {"state": "stopped", "changed": True, "forced": False}
    _state(backend, api, name, {"action": "stop", "timeout": -1, "force": True}, _deadline(backend, 60),
           f"force {name} off")
    return {"state": "stopped", "changed": True, "forced": True}


def snapshot_names(backend: LxdBackend, api, name: str) -> list[dict[str, Any]]:
    items = api.instances[name].snapshots.get(params={"recursion": 1}, timeout=backend.timeouts).json()["metadata"]
    return sorted(items, key=lambda s: (s.get("created_at") or "", s.get("name") or ""))


def snapshot_sync(backend: LxdBackend, name: str, requested: str | None, expires: datetime | None) -> dict[str, Any]:
    api = backend.api()
    base = requested or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    for _attempt in range(5):
        taken = {s["name"] for s in snapshot_names(backend, api, name)}
        if requested and requested in taken:
            raise Conflict(f"{name} already has a snapshot named {requested!r}", code="snapshot_exists")
        snap = unique_name(base, taken)
        body: dict[str, Any] = {"name": snap, "stateful": False}
        if expires is not None:
            body["expires_at"] = rfc3339(expires)
        try:
            response = api.instances[name].snapshots.post(json=body, timeout=backend.timeouts)
            backend.operation(response, _deadline(backend), f"snapshot {name}")
        except (lxd_exc.Conflict, LxdError) as exc:
            text = lxd_message(exc) if isinstance(exc, lxd_exc.LXDAPIException) else exc.message
            if "already exists" in text.lower() and not requested:
                continue  # a concurrent snapshot took the name: pick the next one
            raise
        result: dict[str, Any] = {"snapshot": snap}
        if expires is not None:
            result["expiresAt"] = rfc3339(expires)
        return result
    raise Conflict(f"could not find a free snapshot name for {name} (concurrent snapshots?)", code="snapshot_exists")


def restore_sync(backend: LxdBackend, name: str, snapshot: str) -> dict[str, Any]:
    api = backend.api()
    try:
        api.instances[name].snapshots[snapshot].get(timeout=backend.timeouts)
    except lxd_exc.NotFound:
        raise NotFound(f"{name} has no snapshot {snapshot!r} (list them with GET /api/container/snapshots)",
                       code="no_such_snapshot") from None
    response = api.instances[name].put(json={"restore": snapshot}, timeout=backend.timeouts)
    backend.operation(response, _deadline(backend), f"restore {name} to {snapshot}")
    return {"snapshot": snapshot}


def list_sync(backend: LxdBackend, name: str) -> dict[str, Any]:
    api = backend.api()
    snaps = []
    for s in snapshot_names(backend, api, name):
        expires = s.get("expires_at")
        snaps.append({
            "name": s["name"],
            "createdAt": s.get("created_at"),
            "expiresAt": None if not expires or expires.startswith("0001-") else expires,
            "stateful": bool(s.get("stateful")),
        })
    return {"snapshots": snaps}


async def container_op(backend: LxdBackend, node: Node, op: str, args: dict[str, Any]) -> dict[str, Any]:
    name = node.name
    if op == "start":
        result = await backend.run(start_sync, backend, name, name=name)
        backend.forget(name)
        return result
    if op == "stop":
        timeout = float(args.get("timeout", backend.cfg.stop_timeout))
        return await backend.run(stop_sync, backend, name, bool(args.get("force", False)), timeout, name=name)
    if op == "snapshot":
        expires = parse_expiry(args.get("expires"))
        return await backend.run(snapshot_sync, backend, name, args.get("snapshot") or None, expires, name=name)
    if op == "restore":
        snapshot = args.get("snapshot")
        if not snapshot:
            raise BadRequest("restore needs a snapshot name", code="invalid_field", field="snapshot")
        try:
            return await backend.run(restore_sync, backend, name, snapshot, name=name)
        finally:
            backend.forget(name)
    if op == "list_snapshots":
        return await backend.run(list_sync, backend, name, name=name)
    raise NotSupported(f"the LXD backend cannot {op!r} (it can: {', '.join(OPS)})", code="unknown_op")
