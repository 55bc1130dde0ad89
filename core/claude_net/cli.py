"""The ``claude-net`` command. Imports stay inside commands: only ``serve`` loads the web stack.

Operator commands (token, plugins, init, permit, ...) act on the database directly through a
:class:`claude_net.hub.Hub` opened without serving; client verbs (send, inbox, machines, and
exec and jobs in :mod:`claude_net.cli_exec`) talk to a running hub over HTTP with
``CLAUDE_NET_URL`` and ``CLAUDE_NET_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any


class CliContext:
    """What a command gets: the parsed config path and helpers to open a hub or call the API."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._settings = None
        self._pm = None

    @property
    def settings(self):
        if self._settings is None:
            from .config import load_settings

            self._settings = load_settings(self.args.config)
        return self._settings

    def plugin_manager(self):
        if self._pm is None:
            from .plugins import make_plugin_manager

            s = self.settings
            self._pm = make_plugin_manager(allow=s.plugins.allow, deny=s.plugins.deny)
        return self._pm

    def hub(self):
        """An async context manager yielding an opened (not serving) hub."""
        import contextlib

        from .hub import Hub

        @contextlib.asynccontextmanager
        async def opened():
            hub = Hub(self.settings, self.plugin_manager())
            await hub.open()
            try:
                yield hub
            finally:
                await hub.close()

        return opened()

    def cli_actor(self):
        from .types import Actor

        return Actor(name=os.environ.get("CLAUDE_NET_CLI_ACTOR", "host"), admin=True, via="cli")

    # -- HTTP client for the verbs that talk to a running hub ----------------------------------

    def _open(self, method: str, path: str, body: dict[str, Any] | None, timeout: float,
              errors_with_body: bool = False):
        """Send one request to the hub: the open response, or (``errors_with_body``) an error
        answer's JSON body with ``status`` added; any other failure exits with one sentence."""
        import urllib.error
        import urllib.request

        from .text import printable

        url = os.environ.get("CLAUDE_NET_URL", "http://127.0.0.1:8765").rstrip("/") + path
        token = os.environ.get("CLAUDE_NET_TOKEN")
        if not token:
            raise SystemExit("error: set CLAUDE_NET_TOKEN (create one with `claude-net token create NAME`)")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())
            except ValueError:
                err = {"error": f"HTTP {exc.code}"}
            if errors_with_body and isinstance(err, dict):
                return {**err, "status": exc.code}
            raise SystemExit(f"error: {printable(err.get('error'))} ({printable(err.get('code', exc.code))})") from None
        except urllib.error.URLError as exc:
            raise SystemExit(f"error: cannot reach the hub at {url}: {exc.reason}") from None
        except TimeoutError:
            raise SystemExit(f"error: the hub at {url} did not answer within {timeout:g} s") from None

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, *, timeout: float = 70,
            errors_with_body: bool = False) -> dict:
        """Call the hub; an error answer exits with its sentence, or (``errors_with_body``) is
        returned as its JSON body with ``status`` added (an exec's error carries its output)."""
        resp = self._open(method, path, body, timeout, errors_with_body)
        if isinstance(resp, dict):
            return resp
        with resp:
            try:
                return json.loads(resp.read())
            except TimeoutError:
                raise SystemExit(f"error: the hub did not answer {path} within {timeout:g} s") from None

    def stream(self, path: str, *, timeout: float = 60):
        """Server-sent events from the hub: yields ``(event, data)`` with ``data`` parsed JSON.
        The hub sends a keepalive every 15 s, so ``timeout`` seconds of silence mean it is gone."""
        resp = self._open("GET", path, None, timeout)
        event, data = "message", []
        with resp:
            try:
                for raw in resp:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if not line:
                        if data:
                            yield event, json.loads("\n".join(data))
                        event, data = "message", []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
            except TimeoutError:
                raise SystemExit(f"error: the hub went silent on {path} for {timeout:g} s") from None


def run_async(coro) -> Any:
    return asyncio.run(coro)


# -- core commands ------------------------------------------------------------------------------


def cmd_serve(args, ctx: CliContext) -> int:
    from .serve import serve

    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    # Migrations first, on their own: a database the hub cannot use (a failed migration, a v1
    # table it will not adopt) is then one error line here, not a traceback from the ASGI startup.
    cmd_migrate(args, ctx, quiet=True)
    return serve(ctx.settings, host=args.host, port=args.port, workers=args.workers)


def cmd_init(args, ctx: CliContext) -> int:
    from pathlib import Path

    from .config import config_path, starter_config
    from .hub import Hub  # noqa: F401  (plugins declare their sections through the manager)

    path = Path(args.path) if args.path else config_path(args.config)
    if path.exists() and not args.force:
        print(f"error: {path} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    pm = ctx.plugin_manager()
    sections: dict[str, type] = {}
    for impl in pm.hook.config_sections.get_hookimpls():
        sections.update(impl.function() or {})
    path.write_text(starter_config(sections))
    print(f"wrote {path}")
    return 0


def cmd_token(args, ctx: CliContext) -> int:
    from . import auth

    async def go() -> int:
        async with ctx.hub() as hub:
            if args.token_cmd == "create":
                token = await auth.create_token(hub.db, args.name, admin=args.admin, replace=args.replace)
                print(token)
                print(f"token for {args.name}{' (admin)' if args.admin else ''} created; it is shown only once",
                      file=sys.stderr)
            elif args.token_cmd == "list":
                rows = await auth.list_tokens(hub.db, include_revoked=args.all)
                if args.json:
                    print(json.dumps([r.to_json() for r in rows], indent=2))
                else:
                    print(f"{'NAME':<24} {'ID':<13} {'ADMIN':<6} {'CREATED':<28} STATUS")
                    for r in rows:
                        status = f"revoked {r.revoked_at}" if r.revoked_at else "active"
                        admin = "yes" if r.admin or hub.is_admin(r.name) else "no"
                        print(f"{r.name:<24} {r.id:<13} {admin:<6} {r.created_at:<28} {status}")
            else:
                n = await auth.revoke_tokens(hub.db, args.name)
                print(f"revoked {n} token(s) of {args.name}")
        return 0

    return run_async(go())


def cmd_plugins(args, ctx: CliContext) -> int:
    pm = ctx.plugin_manager()
    rows = pm.describe()
    if args.json:
        print(json.dumps({"plugins": rows, "failed": [f.__dict__ for f in pm.failures]}, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']}  ({row['source']})")
        print(f"    hooks: {', '.join(row['hooks']) or '-'}")
    for failure in pm.failures:
        print(f"FAILED {failure.name}: {failure.error}")
    return 0


def cmd_check(args, ctx: CliContext) -> int:
    from .hub import Hub
    from .plugins import config_problems

    settings = ctx.settings
    hub = Hub(settings, ctx.plugin_manager())
    problems = config_problems(settings, hub.pm, hub.config_sections())
    for failure in hub.pm.failures:
        problems.append(f"plugin {failure.name} failed to load: {failure.error}")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if not problems:
        print(f"configuration OK ({settings.path or 'defaults only'})")
    return 1 if problems else 0


def cmd_migrate(args, ctx: CliContext, quiet: bool = False) -> int:
    """Apply pending migrations. A failure raises MigrationError (a HubError): main prints its one
    sentence (plugin, version, statement, cause) and exits 1; nothing was changed."""
    async def go():
        async with ctx.hub():
            pass

    run_async(go())
    if not quiet:
        print("database is up to date")
    return 0


def cmd_import_v1(args, ctx: CliContext) -> int:
    from .upgrade import import_v1, parse_map

    try:
        given = parse_map(args.mapping)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = run_async(import_v1(ctx.settings, ctx.plugin_manager(), table=args.table, rename_to=args.rename_to,
                                 given=given, from_sqlite=args.from_sqlite))
    for line in report.lines():
        print(line)
    return 0


def cmd_send(args, ctx: CliContext) -> int:
    body = {"to": args.to, "message": args.message}
    if args.thread is not None:
        body["thread"] = args.thread
    if args.reply_to is not None:
        body["reply_to"] = args.reply_to
    result = ctx.api("POST", "/api/send", body)
    from .text import printable

    print(f"sent (id {result.get('id')}" + (f", thread {printable(result['thread'])}" if result.get("thread") else "")
          + ")")
    return 0


def cmd_inbox(args, ctx: CliContext) -> int:
    from urllib.parse import urlencode

    query = {"limit": args.limit}
    if args.ack:
        query["ack"] = "true"
    if args.wait:
        query["wait"] = args.wait
    result = ctx.api("GET", "/api/inbox?" + urlencode(query), timeout=args.wait + 15)
    if args.json:
        print(json.dumps(result["messages"], indent=2))
        return 0
    from .text import printable  # a message may hold anything: it stays on its line and cannot drive the terminal

    for m in result["messages"]:
        thread = f" [thread {printable(m['thread'])}" if m.get("thread") else ""
        if thread and m.get("reply_to") is not None:
            thread += f", re {printable(m['reply_to'])}"
        thread += "]" if thread else ""
        print(f"[{m['id']}] {printable(m['time'])} {printable(m['from'])}{thread}: {printable(m['message'])}")
    if not result["messages"]:
        print("no unread messages", file=sys.stderr)
    return 0


def cmd_machines(args, ctx: CliContext) -> int:
    result = ctx.api("GET", "/api/machines")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from .text import printable

    print(f"{'NAME':<24} {'BACKEND':<8} {'STATE':<12} {'UNREAD':>6}  LAST SEEN")
    for m in result["machines"]:
        print(f"{printable(m['name']):<24} {printable(m['backend']):<8} {printable(m['state']):<12} "
              f"{printable(m['unread']):>6}  {printable(m['lastSeen'] or '-')}")
    for backend, error in result.get("unavailable", {}).items():
        print(f"(backend {printable(backend)} unavailable: {printable(error)})")
    return 0


def _version() -> str:
    from . import __version__

    return __version__


def build_parser(ctx_holder: list) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="claude-net", description="A hub for AI coding agents on one LXD host.")
    parser.add_argument("--config", "-c", help="config file (default: $CLAUDE_NET_CONFIG or ./claude-net.toml)")
    parser.add_argument("--version", action="version", version=f"claude-net {_version()}",
                        help="print the installed claude-net version (package metadata) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the hub (Hypercorn)")
    p.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default from config: 8765)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (more than 1 needs PostgreSQL; they act as one hub)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("init", help="write a commented starter config")
    p.add_argument("path", nargs="?", help="where to write it (default: the config path)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("token", help="create, list and revoke bearer tokens")
    tsub = p.add_subparsers(dest="token_cmd", required=True, metavar="ACTION")
    t = tsub.add_parser("create", help="create a token for NAME; prints only the token")
    t.add_argument("name")
    t.add_argument("--admin", action="store_true", help="the token has admin rights")
    t.add_argument("--replace", action="store_true", help="revoke NAME's current token and issue a new one")
    t = tsub.add_parser("list", help="list tokens (never the secrets)")
    t.add_argument("--all", action="store_true", help="include revoked tokens")
    t.add_argument("--json", action="store_true")
    t = tsub.add_parser("revoke", help="revoke every token of NAME")
    t.add_argument("name")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("plugins", help="list loaded plugins and the hooks each implements")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("check", help="validate the configuration and plugins")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("migrate", help="apply database migrations and exit")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("import-v1", help="copy the messages of a v1 table the hub cannot adopt (renamed aside first)",
                       description="Moves a v1 `messages` table the hub did not create aside (to messages_v1), "
                                   "lets the migrations create the hub's tables, and copies every row with a "
                                   "column mapping. Safe to run again: rows copied before are skipped.")
    p.add_argument("--map", dest="mapping", metavar="FIELD=COLUMN,...",
                   help="v1 column of each field: id, from, to, message, time, read (default: known v1 names)")
    p.add_argument("--table", help="the v1 table to read (default: messages, or messages_v1 once moved aside)")
    p.add_argument("--rename-to", default="messages_v1", help="where a v1 messages table is moved (default: %(default)s)")
    p.add_argument("--from-sqlite", metavar="FILE", help="read the v1 table from this SQLite file instead (read-only)")
    p.set_defaults(func=cmd_import_v1)

    p = sub.add_parser("send", help="send a message (uses CLAUDE_NET_URL and CLAUDE_NET_TOKEN)")
    p.add_argument("to", help="node name, or '*' for everyone")
    p.add_argument("message")
    p.add_argument("--thread", help="the thread this message belongs to (1-64 letters, digits, '.', '_', ':', '-')")
    p.add_argument("--reply-to", type=int, metavar="ID", help="the id of the message this answers (joins its thread)")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("inbox", help="read your unread messages")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--ack", action="store_true", help="mark the shown messages read")
    p.add_argument("--wait", type=float, default=0, help="wait up to N seconds for a message")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inbox)

    p = sub.add_parser("machines", help="list nodes with state and unread counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_machines)

    from . import cli_exec  # exec and jobs (standard library only)

    cli_exec.configure(sub)
    return parser


def _plugin_commands(config: str | None):
    """Commands contributed by plugins. Loading plugin modules must stay cheap (see docs)."""
    from .config import load_settings
    from .plugins import make_plugin_manager

    try:
        settings = load_settings(config)
        pm = make_plugin_manager(allow=settings.plugins.allow, deny=settings.plugins.deny)
    except Exception:
        pm = make_plugin_manager()
    commands = []
    for batch in pm.hook.register_commands():
        commands.extend(batch or ())
    return commands, pm


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", "-c")
    known, _ = pre.parse_known_args(argv)
    parser = build_parser([])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    from .errors import ConfigError, HubError

    try:
        commands, pm = _plugin_commands(known.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for command in commands:
        if command.name in sub.choices:
            continue
        p = sub.add_parser(command.name, help=command.help)
        command.configure(p)
        p.set_defaults(func=command.run, plugin_command=True)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    ctx = CliContext(args)
    ctx._pm = pm
    try:
        result = args.func(args, ctx)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except HubError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`claude-net activity export | head`): stop quietly, as Unix tools
        # do; point stdout at /dev/null so the interpreter's final flush cannot fail again
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
