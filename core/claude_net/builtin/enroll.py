"""``claude-net enroll NODE``: connect an agent in one command, on the hub host.

It creates the node's token (when it has none; ``--rotate`` replaces it), writes it into the
node as a file only the agent's user can read, and writes Claude Code's MCP configuration next
to it, pointing at a hub address the node can reach. Everything goes through the hub's own
dispatch: the backend that owns the node reads and writes the files (LXD's file API, SFTP for an
SSH node) and, for an LXD container, makes the hub reachable (``container_op`` ``expose_hub``).
No host-side shell ever runs. The whole run is one guarded ``admin`` action, recorded in the
activity feed as an ``enroll`` event (the token itself is never recorded or printed).

Idempotent: what is already in place is compared, not rewritten, and a second run says that
nothing changed. A configuration entry it did not write is never replaced without ``--force``;
entries it wrote carry :data:`MARKER`.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any

from claude_net import BadRequest, Command, Conflict, HubError, NotFound, NotSupported, hookimpl

#: the MCP server name enroll writes, and the key that marks an entry as enroll's own
SERVER_NAME = "claude-net"
MARKER = "x-claude-net-enroll"
TOKEN_FILE = ".claude-net-token"
#: seconds one backend call (a file read or write, exposing the hub) may take
CALL_TIMEOUT = 60.0
#: uids of regular users (useradd's range; 65534 is nobody)
REGULAR_UIDS = range(1000, 65534)
#: plugins whose start-up must not run in the enroll process: the Telegram bot would poll beside
#: the serving hub's (Telegram answers two pollers with conflicts)
NOT_STARTED = ("telegram",)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str


@dataclass
class Enrollment:
    node: str
    user: User
    token_file: str
    config_file: str
    url: str
    #: (what, sentence) for every part, changed or not
    report: list[tuple[str, str]] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "user": self.user.name, "uid": self.user.uid, "tokenFile": self.token_file,
                "configFile": self.config_file, "url": self.url, "changes": self.changes}


def parse_passwd(text: str) -> list[User]:
    users = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 7 or line.startswith("#"):
            continue
        try:
            users.append(User(parts[0], int(parts[2]), int(parts[3]), parts[5] or "/"))
        except ValueError:
            continue
    return users


def choose_user(users: list[User], wanted: str | None, login: str | None) -> User:
    """``--user`` (a name or uid); else the SSH login user; else the first regular user; else root."""
    if wanted:
        for user in users:
            if user.name == wanted or (wanted.isdigit() and user.uid == int(wanted)):
                return user
        raise NotFound(f"no user {wanted!r} in the node's /etc/passwd", code="no_such_user")
    if login:
        for user in users:
            if user.name == login:
                return user
    for user in users:
        if user.uid in REGULAR_UIDS:
            return user
    for user in users:
        if user.uid == 0:
            return user
    return User("root", 0, 0, "/root")


def mcp_entry(url: str, token_file: str, node: str) -> dict[str, Any]:
    """Claude Code's entry for the hub's streamable HTTP endpoint.

    The token stays in its own file: ``headersHelper`` is a shell command Claude Code runs for
    the request headers, so the configuration holds no secret and a rotated token needs no edit.
    """
    helper = f"printf '{{\"Authorization\": \"Bearer %s\"}}' \"$(cat {shlex.quote(token_file)})\""
    return {"type": "http", "url": url, "headersHelper": helper,
            MARKER: {"node": node, "tokenFile": token_file}}


async def _call(awaitable, what: str):
    try:
        return await asyncio.wait_for(awaitable, CALL_TIMEOUT)
    except asyncio.TimeoutError:
        raise HubError(f"{what} did not finish within {CALL_TIMEOUT:g}s", code="timeout") from None


def _owned(hub, hook: str, node, **kwargs):
    awaitable = getattr(hub.pm.hook, hook)(hub=hub, node=node, **kwargs)
    if awaitable is None:
        raise NotSupported(f"no installed backend can {hook.replace('_', ' ')} on {node.name} "
                           f"(backend {node.backend}); enroll needs one that writes files into the node",
                           code="no_backend")
    return awaitable


async def read_optional(hub, node, path: str) -> bytes | None:
    from claude_net import ReadOptions

    options = ReadOptions(max_size=hub.settings.limits.file_max_bytes)
    try:
        return await _call(_owned(hub, "read_file", node, path=path, options=options), f"reading {path}")
    except NotFound:
        return None


async def write(hub, node, path: str, data: bytes, *, mode: int | None, user: User | None) -> None:
    from claude_net import WriteOptions

    options = WriteOptions(max_size=hub.settings.limits.file_max_bytes, mode=mode,
                           uid=user.uid if user else None, gid=user.gid if user else None)
    await _call(_owned(hub, "write_file", node, path=path, data=data, options=options), f"writing {path}")


async def expose_hub(hub, node, url: str | None) -> tuple[str, str, bool]:
    """The hub's base URL as seen from the node, a sentence on how it was found, and whether
    the node had to be changed for it (a proxy device added)."""
    if url:
        return url.rstrip("/"), "given with --url", False
    core = hub.settings.core
    # inside the container the hub keeps its port: http://127.0.0.1:PORT there is the hub here
    args = {"hub_host": core.host, "hub_port": core.port, "port": core.port}
    try:
        awaitable = hub.pm.hook.container_op(hub=hub, node=node, op="expose_hub", args=args)
        if awaitable is None:
            raise NotSupported("not a container")
        result = await _call(awaitable, "exposing the hub")
    except NotSupported:
        raise BadRequest(f"{node.name} is not a container the hub can expose itself to; give the hub's address "
                         "as the node reaches it with --url (e.g. --url http://10.0.3.1:8765)",
                         code="url_needed") from None
    if result.get("via") == "bridge":
        how = f"the host's address on the LXD network {result['network']} (the container's NIC)"
    else:
        how = (f"LXD proxy device {result['device']} in the container -> {result['connect']} on the host"
               + (" (loopback brought up)" if result.get("loopbackUp") else ""))
    changed = bool(result.get("changed"))
    return str(result["url"]).rstrip("/"), how + ("" if changed else ", unchanged"), changed


async def enroll(hub, actor, name: str, *, user: str | None = None, url: str | None = None,
                 mcp_json: str | None = None, token_file: str | None = None, rotate: bool = False,
                 force: bool = False) -> Enrollment:
    """Enroll node ``name`` as ``actor`` (an admin). Plans and checks everything before any change."""
    from claude_net import validate_node_name, validate_remote_path
    from claude_net.auth import TOKEN_RE, create_token, revoke_tokens, verify_token

    validate_node_name(name)

    async def run() -> Enrollment:
        # refusals from here on are recorded (the action's final event is an error)
        for given, option in ((mcp_json, "--mcp-json"), (token_file, "--token-file")):
            if given is not None:
                validate_remote_path(given, field_name=option)
        if url is not None and not url.startswith(("http://", "https://")):
            raise BadRequest(f"--url must be an http:// or https:// URL, not {url!r}", code="invalid_url")
        if "mcp" not in hub.config_sections() or not hub.settings.section("mcp").enabled:
            raise BadRequest("the hub serves no MCP endpoint (install claude-net-mcp and keep [mcp] enabled): "
                             "the configuration would point at nothing", code="no_mcp")
        mcp_path = hub.settings.section("mcp").path
        node = await hub.nodes.get(name)
        if node.backend == "hub":
            raise BadRequest(f"{name} is a messaging-only node: enroll writes into the node, which needs a "
                             "backend (an LXD container, an [ssh.nodes] entry)", code="no_backend")
        passwd = await read_optional(hub, node, "/etc/passwd")
        users = parse_passwd((passwd or b"").decode("utf-8", "replace"))
        login = node.info.get("user") if isinstance(node.info.get("user"), str) else None
        who = choose_user(users, user, login)
        home = who.home.rstrip("/") or ""
        token_path = token_file or f"{home}/{TOKEN_FILE}"
        config_path = mcp_json or f"{home}/.claude.json"

        # -- plan and refuse before changing anything --------------------------------------------
        current = await read_optional(hub, node, token_path)
        current_token = (current or b"").decode("utf-8", "replace").strip()
        if current is not None and not TOKEN_RE.fullmatch(current_token) and not force:
            raise Conflict(f"{token_path} exists on {name} and does not hold a claude-net token; pass --force "
                           "to replace it, or --token-file for another path", code="foreign_file")
        info = await verify_token(hub.db, current_token) if current_token else None
        held = info is not None and info.name == name
        active = await hub.db.fetch_val(
            "SELECT COUNT(*) FROM tokens WHERE name = :name AND revoked_at IS NULL", {"name": name})
        if active and not held and not rotate:
            raise Conflict(f"{name} already has a token and {token_path} on {name} does not hold it (tokens are "
                           "stored hashed, so it cannot be written again); pass --rotate to issue a new one "
                           "(the old one stops working)", code="token_exists")

        raw = await read_optional(hub, node, config_path)
        try:
            document = json.loads(raw) if raw and raw.strip() else {}
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise Conflict(f"{config_path} on {name} is not a JSON object; fix or remove it first",
                           code="foreign_config")
        servers = document.get("mcpServers")
        if servers is None:
            servers = document["mcpServers"] = {}
        if not isinstance(servers, dict):
            raise Conflict(f"mcpServers in {config_path} on {name} is not an object; fix it first",
                           code="foreign_config")
        existing = servers.get(SERVER_NAME)
        ours = isinstance(existing, dict) and MARKER in existing
        if existing is not None and not ours and not force:
            raise Conflict(f"{config_path} on {name} already has an MCP server {SERVER_NAME!r} that claude-net "
                           "enroll did not write; pass --force to replace it", code="foreign_config")

        # -- apply ---------------------------------------------------------------------------------
        base, how, exposed = await expose_hub(hub, node, url)
        result = Enrollment(name, who, token_path, config_path, base)
        if exposed:
            result.changes.append("hub address")
        result.report.append(("hub", f"{base} ({how})"))

        if rotate or not held:
            token = await create_token(hub.db, name, replace=bool(active))
            try:
                await write(hub, node, token_path, (token + "\n").encode(), mode=0o600, user=who)
            except BaseException:
                if not active:  # a token nobody holds: gone, so a second try starts afresh
                    await asyncio.shield(revoke_tokens(hub.db, name))
                raise
            verb = "rotated (the old one is revoked)" if active else "created"
            result.changes.append("token")
            result.report.append(("token", f"{verb}, written to {token_path} (mode 0600, owner {who.name})"))
        else:
            result.report.append(("token", f"unchanged ({token_path})"))

        entry = mcp_entry(base + mcp_path, token_path, name)
        if existing == entry:
            result.report.append(("mcp", f"unchanged ({config_path}: server {SERVER_NAME!r} -> {entry['url']})"))
        else:
            servers[SERVER_NAME] = entry
            data = (json.dumps(document, indent=2) + "\n").encode()
            # a new file is the agent's, private; an existing one keeps its mode and owner
            await write(hub, node, config_path, data, mode=0o600 if raw is None else None,
                        user=who if raw is None else None)
            verb = ("replaced a server it had not written (--force)" if existing is not None and not ours
                    else "updated" if existing is not None else "added")
            result.changes.append("mcp config")
            result.report.append(("mcp", f"{config_path}: {verb} server {SERVER_NAME!r} (http, {entry['url']})"))
        return result

    detail = f"enroll {name}" + (" --rotate" if rotate else "") + (" --force" if force else "")
    return await hub.guarded(actor, action="admin", event_type="enroll", target=name, detail=detail, run=run,
                             request={"rotate": rotate, "force": force},
                             result_data=lambda r: {k: v for k, v in r.to_json().items() if k != "node"})


# -- the CLI verb ---------------------------------------------------------------------------------


def configure(p) -> None:
    p.add_argument("node", help="the node to connect (an LXD container, or an [ssh.nodes] entry with --url)")
    p.add_argument("--user", help="the agent's user in the node, a name or uid (default: the SSH login user, "
                                  "else the first regular user, uid >= 1000, else root)")
    p.add_argument("--url", help="the hub's address as the node reaches it (default for LXD: the bridge address, "
                                 "or a proxy device that makes the hub http://127.0.0.1:PORT in the container)")
    p.add_argument("--mcp-json", metavar="PATH",
                   help="write a project .mcp.json at PATH (absolute, in the node) instead of ~/.claude.json")
    p.add_argument("--token-file", metavar="PATH", help=f"where the token goes (default: ~/{TOKEN_FILE})")
    p.add_argument("--rotate", action="store_true", help="issue a new token (the old one is revoked)")
    p.add_argument("--force", action="store_true",
                   help="replace a 'claude-net' MCP entry or token file that enroll did not write")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


async def run(args, ctx) -> int:
    from claude_net.hub import Hub
    from claude_net.plugins import make_plugin_manager

    settings = ctx.settings
    pm = make_plugin_manager(allow=settings.plugins.allow, deny=[*settings.plugins.deny, *NOT_STARTED])
    hub = Hub(settings, pm)
    await hub.start()
    try:
        result = await enroll(hub, ctx.cli_actor(), args.node, user=args.user, url=args.url,
                              mcp_json=args.mcp_json, token_file=args.token_file, rotate=args.rotate,
                              force=args.force)
    finally:
        await hub.stop()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    head = (f"enrolled {result.node}" if result.changes
            else f"{result.node} is already enrolled; nothing changed")
    print(f"{head} (user {result.user.name}, uid {result.user.uid})")
    for what, sentence in result.report:
        print(f"  {what:<6} {sentence}")
    if result.changes:
        print(f"changed: {', '.join(result.changes)}", file=sys.stderr)
    return 0


@hookimpl
def register_commands():
    return [Command("enroll", "connect an agent: its token and MCP configuration, written into its node",
                    configure, run)]
