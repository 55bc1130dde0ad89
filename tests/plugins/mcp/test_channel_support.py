"""Shared pieces of the channel and relay tests (no tests here): a hub process that can be killed and
started again on the same port and database, an SDK client session on ``claude-net-mcp`` whose
incoming stream is tapped (every ``notifications/claude/channel*`` in wire order), and a sender."""

from __future__ import annotations

import contextlib
import json
import tempfile
import urllib.error
import urllib.request

import anyio
import httpx

from claude_net.testing import HubProcess
from mcp_helpers import mcp_command

CHANNEL = "notifications/claude/channel"
PERMISSION = "notifications/claude/channel/permission"


class RestartableHub(HubProcess):
    """``claude-net serve`` that a test may kill (SIGKILL) and start again: same port, same database."""

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()

    def revoke(self, name: str) -> None:
        self.cli("token", "revoke", name)


@contextlib.contextmanager
def channel_hub(config: str, database_url: str):
    hub = RestartableHub(config + "\n[lxd]\nenabled = false\n", database_url=database_url,
                         workdir=tempfile.mkdtemp(prefix="cn-channel-"))
    try:
        yield hub.start(timeout=120)
    finally:
        hub.stop()


class Tap:
    """The client's read stream, passed through unchanged, recording the channel notifications."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.channel: list[dict] = []
        self.permission: list[dict] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def receive(self):
        item = await self.inner.receive()
        message = getattr(getattr(item, "message", None), "root", getattr(item, "message", None))
        method = getattr(message, "method", None)
        if method == CHANNEL:
            self.channel.append(dict(message.params or {}))
        elif method == PERMISSION:
            self.permission.append(dict(message.params or {}))
        return item

    def __aiter__(self):
        return self

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.inner.aclose()

    async def __anext__(self):
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


class Channel:
    """An initialized client session on one ``claude-net-mcp`` process, its tap and its stderr."""

    def __init__(self, session, tap: Tap, write, errlog, init) -> None:
        self.session, self.tap, self.write, self.errlog, self.init = session, tap, write, errlog, init

    def stderr(self) -> str:
        self.errlog.flush()
        self.errlog.seek(0)
        return self.errlog.read()

    async def notify(self, method: str, params: dict) -> None:
        """A raw notification from the client (Claude Code's permission_request is not in the SDK's types)."""
        from mcp.shared.message import SessionMessage
        from mcp_types import JSONRPCNotification

        await self.write.send(SessionMessage(JSONRPCNotification(jsonrpc="2.0", method=method, params=params)))


@contextlib.asynccontextmanager
async def channel_session(url: str, token: str, *args: str, env: dict[str, str] | None = None,
                          client_name: str = "claude-code"):
    """The SDK's client session, introducing itself as Claude Code does (``clientInfo.name``), unless
    ``client_name`` says otherwise: ``claude-net-mcp`` pushes only to clients that take pushes."""
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp_types import Implementation

    params = StdioServerParameters(command=mcp_command(), args=list(args),
                                   env={"CLAUDE_NET_URL": url, "CLAUDE_NET_TOKEN": token, **(env or {})})
    with tempfile.TemporaryFile("w+") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            tap = Tap(read)
            async with ClientSession(tap, write, client_info=Implementation(name=client_name, version="2.1.197")) \
                    as session:
                init = await session.initialize()
                yield Channel(session, tap, write, errlog, init)


async def send(url: str, token: str, to: str, message: str, **fields) -> dict:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(url + "/api/send", json={"to": to, "message": message, **fields},
                            headers={"Authorization": f"Bearer {token}"} if token else {})
        return {"status": r.status_code, **r.json()}


def api(url: str, method: str, path: str, token: str | None, body: dict | None = None) -> tuple[int, dict]:
    """A blocking API call (for setup and checks outside the event loop's hot path)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method, headers={
        "Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def unread(url: str, token: str) -> list[dict]:
    status, body = api(url, "GET", "/api/inbox?ack=false&limit=500", token)
    assert status == 200, body
    return body["messages"]
