"""`GET /api/whoami`, `hub.app`, and the in-process channel label (`claude_net.via` in the ASGI scope)."""

import httpx

from claude_net import hookimpl
from claude_net.http import VIA_SCOPE_KEY


async def test_whoami_names_the_token_holder_and_its_role(hub_harness):
    async with hub_harness(admins=["chasclaude"]) as h:
        status, body = await h.call("GET", "/api/whoami", await h.token("alpha"))
        assert status == 200 and body["ok"] is True
        assert (body["name"], body["admin"]) == ("alpha", False)
        limits = body["limits"]
        assert limits["execTimeout"] == h.hub.settings.limits.exec_timeout
        assert limits["execTimeoutMax"] == h.hub.settings.limits.exec_timeout_max
        assert limits["fileMaxBytes"] == h.hub.settings.limits.file_max_bytes
        assert limits["messageMaxBytes"] == h.hub.settings.messaging.max_bytes

        _, body = await h.call("GET", "/api/whoami", await h.token("boss", admin=True))
        assert (body["name"], body["admin"]) == ("boss", True)
        _, body = await h.call("GET", "/api/whoami", await h.token("chasclaude"))  # admin by config
        assert (body["name"], body["admin"]) == ("chasclaude", True)


async def test_whoami_needs_a_valid_token(hub_harness):
    async with hub_harness() as h:
        status, body = await h.call("GET", "/api/whoami")
        assert (status, body["code"]) == (401, "missing_token")
        status, body = await h.call("GET", "/api/whoami", "cn_000000000000_" + "A" * 43)
        assert (status, body["code"]) == (401, "invalid_token")


class ViaRecorder:
    __name__ = "via_recorder"

    def __init__(self):
        self.vias = []

    @hookimpl
    def on_event(self, event):
        if event.type == "message":
            self.vias.append(event.via)


async def test_in_process_callers_label_their_channel(hub_harness):
    """hub.app serves the API in-process; a caller's scope key sets Actor.via, headers cannot."""
    rec = ViaRecorder()
    async with hub_harness(plugins=[rec]) as h:
        assert h.hub.app is h.app
        alpha = await h.token("alpha")
        await h.token("beta")

        async def labelled(scope, receive, send):
            await h.hub.app({**scope, VIA_SCOPE_KEY: "mcp"}, receive, send)

        headers = {"Authorization": f"Bearer {alpha}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=labelled), base_url="http://hub") as client:
            response = await client.post("/api/send", json={"to": "beta", "message": "hi"}, headers=headers)
            assert response.status_code == 200, response.text
        status, _ = await h.call("POST", "/api/send", alpha, {"to": "beta", "message": "hi"},
                                 headers={VIA_SCOPE_KEY: "mcp"})
        assert status == 200
        assert rec.vias == ["mcp", "http"]
