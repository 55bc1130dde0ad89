"""Container operations: start, stop, snapshot, restore, list_snapshots, expose_hub."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from pylxd import exceptions as lxd_exc

from claude_net import BadRequest, Conflict, Node, NotFound, NotSupported

from .backend import LxdBackend, LxdError, lxd_message

OPS = ("start", "stop", "snapshot", "restore", "list_snapshots", "expose_hub")
#: the proxy device ``expose_hub`` adds (found again by this name, so a second run changes nothing)
HUB_DEVICE = "claude-net-hub"
IFF_UP = 0x1
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


def _bridge_address(api, backend: LxdBackend, instance: dict[str, Any]) -> tuple[str, str] | None:
    """(network, host address) of the first NIC on a managed LXD network with an IPv4 address."""
    for device in (instance.get("expanded_devices") or {}).values():
        if device.get("type") != "nic":
            continue
        # a NIC names its managed network, or (the older form) the bridge it is plugged into
        network = device.get("network") or (device.get("parent") if device.get("nictype") == "bridged" else None)
        if not network:
            continue
        try:
            config = api.networks[network].get(timeout=backend.timeouts).json()["metadata"].get("config") or {}
        except lxd_exc.NotFound:
            continue
        address = (config.get("ipv4.address") or "").split("/")[0]
        if address and address != "none":
            return network, address
    return None


def _loopback_up(backend: LxdBackend, name: str) -> bool:
    """Bring the container's loopback up if it is down (minimal images have no init that does).

    The proxy device listens on the container's 127.0.0.1, which answers nothing while ``lo`` is
    down. True when it had to be brought up.
    """
    code, out, _err, _t = backend.exec_raw(name, ["cat", "/sys/class/net/lo/flags"], timeout=10)
    try:
        if code == 0 and int(out.decode().strip(), 16) & IFF_UP:
            return False
    except ValueError:
        pass
    code, _out, err, _t = backend.exec_raw(name, ["ip", "link", "set", "lo", "up"], timeout=10)
    if code != 0:
        raise Conflict(f"the loopback interface of {name} is down and `ip link set lo up` failed there "
                       f"({err.decode(errors='replace').strip() or f'exit {code}'}); bring it up, or give the hub's "
                       "address with --url", code="loopback_down")
    return True


def expose_hub_sync(backend: LxdBackend, name: str, hub_host: str, hub_port: int, port: int,
                    proxy: bool) -> dict[str, Any]:
    """Make the hub reachable from inside ``name`` and say at which URL.

    A container on a managed LXD network reaches the host at that network's address, when the
    hub listens there (or on every address) and ``proxy`` is not forced. Otherwise (no network,
    or a hub bound to loopback) an LXD ``proxy`` device listens on the container's
    127.0.0.1:``port`` and forwards, from the host side, to the hub's own address.
    """
    api = backend.api()
    instance = api.instances[name].get(timeout=backend.timeouts).json()["metadata"]
    bridge = _bridge_address(api, backend, instance)
    if bridge is not None and not proxy and hub_host in ("0.0.0.0", "::", bridge[1]):
        return {"url": f"http://{bridge[1]}:{hub_port}", "via": "bridge", "network": bridge[0], "changed": False}
    target = "127.0.0.1" if hub_host in ("0.0.0.0", "", "localhost") else hub_host
    connect = f"tcp:[{target}]:{hub_port}" if ":" in target else f"tcp:{target}:{hub_port}"
    wanted = {"type": "proxy", "listen": f"tcp:127.0.0.1:{port}", "connect": connect, "bind": "container"}
    current = (instance.get("devices") or {}).get(HUB_DEVICE)
    changed = current != wanted
    if changed:
        # PATCH merges: the container's other devices stay as they are
        response = api.instances[name].patch(json={"devices": {HUB_DEVICE: wanted}}, timeout=backend.timeouts)
        backend.operation(response, _deadline(backend), f"add the {HUB_DEVICE} proxy device to {name}")
    lo_changed = backend.instance_status(name) == "Running" and _loopback_up(backend, name)
    return {"url": f"http://127.0.0.1:{port}", "via": "proxy", "device": HUB_DEVICE, "connect": connect,
            "changed": changed or lo_changed, "loopbackUp": lo_changed}


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
    if op == "expose_hub":
        return await backend.run(expose_hub_sync, backend, name, str(args.get("hub_host") or "127.0.0.1"),
                                 int(args["hub_port"]), int(args.get("port") or 8765), bool(args.get("proxy")),
                                 name=name)
    raise NotSupported(f"the LXD backend cannot {op!r} (it can: {', '.join(OPS)})", code="unknown_op")
