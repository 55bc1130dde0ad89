"""One test per lifecycle/extension hook, plus the checks that keep docs and tests in step."""

import dataclasses
import inspect
import pathlib
import re
import subprocess
import sys

from claude_net import Command, Migration, Route, hookimpl, hookspecs

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(fn, "claude_net_spec")]


@dataclasses.dataclass
class DemoSettings:
    greeting: str = "hello"


class Demo:
    __name__ = "demo"

    def __init__(self):
        self.log = []

    @hookimpl
    def config_sections(self):
        return {"demo": DemoSettings}

    @hookimpl
    def migrations(self):
        return [Migration("demo", 1, ["CREATE TABLE demo_items (id {autoid}, label TEXT NOT NULL)"]),
                Migration("demo", 2, ["CREATE INDEX demo_items_label ON demo_items (label)"])]

    @hookimpl
    def startup(self, hub):
        async def go():
            hub.plugin_state["demo"] = {"greeting": hub.settings.section("demo").greeting}
            self.log.append("startup")
        return go()

    @hookimpl
    def shutdown(self, hub):
        self.log.append("shutdown")

    @hookimpl
    def register_routes(self, hub):
        async def hello(ctx):
            await ctx.hub.db.execute("INSERT INTO demo_items (label) VALUES (:l)", {"l": ctx.body["label"]})
            count = await ctx.hub.db.fetch_val("SELECT COUNT(*) FROM demo_items")
            return {"greeting": ctx.hub.plugin_state["demo"]["greeting"], "who": ctx.actor.name, "count": count}

        async def admin_only(ctx):
            return {"secret": 42}

        return [
            Route("POST", "/api/demo/hello", hello, summary="Say hello",
                  body_schema={"type": "object", "required": ["label"], "additionalProperties": False,
                               "properties": {"label": {"type": "string", "maxLength": 10}}}),
            Route("GET", "/api/demo/admin", admin_only, summary="Admins only", admin=True),
        ]

    @hookimpl
    def register_asgi_apps(self, hub):
        async def app(scope, receive, send):
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"mounted " + scope["path"].encode()})
        return [("/demo-asgi", app)]

    @hookimpl
    def register_commands(self):
        def configure(parser):
            parser.add_argument("word")

        def run(args, ctx):
            print(f"demo says {args.word}")
            return 0

        return [Command("demo-say", "say a word", configure, run)]


async def test_lifecycle_routes_migrations_and_config_hooks(hub_harness):
    demo = Demo()
    async with hub_harness(plugins=[demo], demo={"greeting": "ahoy"}) as h:
        assert demo.log == ["startup"]
        tok = await h.token("agent")
        status, body = await h.call("POST", "/api/demo/hello", tok, {"label": "x"})
        assert status == 200 and body == {"ok": True, "greeting": "ahoy", "who": "agent", "count": 1}
        status, body = await h.call("POST", "/api/demo/hello", tok, {"label": "x" * 11})
        assert status == 400 and "label" in body["error"]
        status, body = await h.call("GET", "/api/demo/admin", tok)
        assert status == 403 and body["code"] == "admin_only"
        status, body = await h.call("GET", "/api/demo/admin", await h.token("boss", admin=True))
        assert status == 200 and body["secret"] == 42
        applied = await h.hub.db.fetch_all("SELECT version FROM schema_migrations WHERE plugin = 'demo' ORDER BY version")
        assert [r["version"] for r in applied] == [1, 2]
        doc = (await (await h.client.get("/api/openapi.json")).get_json())
        assert "/api/demo/hello" in doc["paths"] and doc["paths"]["/api/demo/hello"]["post"]["x-plugin"] == "demo"
        response = await h.client.get("/demo-asgi/x")
        assert await response.get_data() == b"mounted /demo-asgi/x"
    assert demo.log == ["startup", "shutdown"]


async def test_migrations_apply_once(make_settings):
    from claude_net.hub import Hub

    settings = make_settings()
    for _ in range(2):
        hub = Hub(settings, plugins=[Demo()], load_entrypoints=False)
        await hub.open()
        rows = await hub.db.fetch_all("SELECT plugin, version FROM schema_migrations WHERE plugin = 'demo'")
        assert len(rows) == 2
        await hub.close()


def test_register_commands_adds_cli_verbs(tmp_path):
    code = ("import sys; from claude_net.cli import main; from claude_net import plugins;"
            "import tests.core.test_hooks as t;"
            "orig = plugins.make_plugin_manager;"
            "plugins.make_plugin_manager = lambda **kw: orig(plugins=[t.Demo()], load_entrypoints=False);"
            "import claude_net.cli as c; sys.exit(main(['demo-say', 'bonjour']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "demo says bonjour"


def test_every_hook_is_documented_with_its_exact_signature():
    doc = (ROOT / "docs" / "plugin-hooks.md").read_text()
    for name in HOOKS:
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert re.search(rf"^## `?{name}`?", doc, re.M), f"docs/plugin-hooks.md has no heading for {name}"
        assert f"{name}({params})" in doc, f"docs/plugin-hooks.md does not show {name}({params})"


def test_every_hook_has_a_test():
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    missing = [name for name in HOOKS if not re.search(rf"def {name}\(", sources)]
    assert not missing, f"hooks without a test implementing them: {missing}"


def test_hookspecs_have_docstrings_stating_contract():
    for name in HOOKS:
        spec = getattr(hookspecs, name)
        assert spec.__doc__ and len(spec.__doc__) > 80, name
        if spec.claude_net_spec.get("firstresult"):
            assert "Stops at first non-None result" in spec.__doc__, name


async def test_a_plugin_that_fails_to_start_leaves_nothing_open(make_settings):
    import pytest

    from claude_net.hub import Hub

    class Broken:
        __name__ = "broken"

        @hookimpl
        def startup(self, hub):
            raise OSError("no such socket")

    hub = Hub(make_settings(), plugins=[Broken()], load_entrypoints=False)
    with pytest.raises(RuntimeError, match="plugin broken failed to start: OSError: no such socket"):
        await hub.start()
    assert not hub.db.connected and not hub.started
