"""A local stand-in for the Telegram Bot API, for the Telegram plugin's tests.

A small HTTP/1.1 server on asyncio (keep-alive, Content-Length bodies: what httpx sends) that
speaks the methods the plugin uses, with Telegram's JSON shapes (``{"ok": true, "result": ...}``,
``{"ok": false, "error_code": ..., "description": ...}``): ``getMe``, ``getUpdates`` (offset,
long-poll timeout), ``sendMessage`` (validating Telegram's HTML subset and the 4096-character
limit like the real server), ``setWebhook``, ``deleteWebhook``, ``getWebhookInfo``.

Tests queue updates on it, read what the bot sent, make it fail (HTTP 500, 429 with
``retry_after``), slow it down, or stop and restart it on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlsplit

BOT_ID = 7000000001
BOT_USERNAME = "claude_net_test_bot"
STRING_PARAMS = {"text", "parse_mode", "url", "secret_token", "ip_address"}
#: tags Telegram accepts with parse_mode=HTML
ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code",
                "pre", "blockquote", "tg-emoji"}


class EntityError(ValueError):
    pass


class _TelegramHTML(HTMLParser):
    """Parses like the Bot API: only its tags, properly nested; collects the visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in ALLOWED_TAGS:
            raise EntityError(f"Unsupported start tag \"{tag}\"")
        self.stack.append(tag)
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            raise EntityError(f"Unexpected end tag \"{tag}\"")
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_html(text: str) -> tuple[str, list[str]]:
    parser = _TelegramHTML()
    parser.feed(text)
    parser.close()
    if parser.stack:
        raise EntityError(f"Can't find end tag corresponding to start tag \"{parser.stack[-1]}\"")
    return "".join(parser.text), parser.tags


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class FakeBotAPI:
    def __init__(self, token: str) -> None:
        self.token = token
        self.port = 0
        self.updates: list[dict[str, Any]] = []
        self.next_update_id = 5000
        self.next_message_id = 100
        #: every sendMessage accepted: params plus "plain" (visible text), "tags", "message_id", "at"
        self.sent: list[dict[str, Any]] = []
        #: every call: (method, params, status answered, monotonic time answered)
        self.calls: list[tuple[str, dict[str, Any], int, float]] = []
        self.webhook: dict[str, Any] | None = None
        #: answer every call with this HTTP status (e.g. 500) until cleared
        self.down_status: int | None = None
        #: scripted answers for the next sendMessage calls: (status, retry_after or None)
        self.script: deque[tuple[int, int | None]] = deque()
        #: seconds to wait before answering anything except getUpdates (a slow Telegram)
        self.delay = 0.0
        self._new = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()

    # -- control --------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every open connection (like Telegram becoming unreachable)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._conns):
            writer.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def bot_user(self) -> dict[str, Any]:
        return {"id": BOT_ID, "is_bot": True, "first_name": "claude-net", "username": BOT_USERNAME}

    def queue_update(self, kind: str, message: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": self.next_update_id, kind: message}
        self.next_update_id += 1
        self.updates.append(update)
        self._new.set()
        return update

    def message(self, text: str, *, user_id: int, chat_id: int, chat_type: str = "supergroup",
                username: str = "chas", date: float | None = None, **extra: Any) -> dict[str, Any]:
        self.next_message_id += 1
        message: dict[str, Any] = {
            "message_id": self.next_message_id, "date": int(date if date is not None else time.time()),
            "chat": {"id": chat_id, "type": chat_type, **({"title": "claude-net admins"} if chat_id < 0 else {})},
            "from": {"id": user_id, "is_bot": False, "first_name": username.title(), "username": username},
            "text": text,
        }
        if text.startswith("/"):
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        message.update(extra)
        return message

    def send_text(self, text: str, **kw: Any) -> dict[str, Any]:
        """Queue a plain message update; returns the message."""
        message = self.message(text, **kw)
        self.queue_update("message", message)
        return message

    async def wait_sent(self, predicate=lambda m: True, *, timeout: float = 10.0, start: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.sent[start:]:
                if predicate(message):
                    return message
            if time.monotonic() > deadline:
                shown = [m["plain"][:120] for m in self.sent[-8:]]
                raise AssertionError(f"no matching message was sent within {timeout}s; last sent: {shown}")
            await asyncio.sleep(0.02)

    async def reply_to(self, message: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
        return await self.wait_sent(lambda m: m.get("reply_to") == message["message_id"], timeout=timeout)

    def replies_to(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("reply_to") == message["message_id"]]

    def echoes(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("reply_to") is None]

    def calls_of(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params, _, _ in self.calls if name == method]

    # -- HTTP -----------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._handlers.add(task)
        self._conns.add(writer)
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                status, payload = await self._answer(method, target, headers, body)
                data = json.dumps(payload).encode()
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(writer)
            self._handlers.discard(task)
            writer.close()

    @staticmethod
    def _params(headers: dict[str, str], body: bytes, query: str) -> dict[str, Any]:
        if headers.get("content-type", "").startswith("application/json") and body:
            return json.loads(body)
        raw = dict(parse_qsl(query)) | dict(parse_qsl(body.decode()))
        params: dict[str, Any] = {}
        for key, value in raw.items():
            if key in STRING_PARAMS:
                params[key] = value
                continue
            try:
                params[key] = json.loads(value)
            except ValueError:
                params[key] = value
        return params

    @staticmethod
    def _error(code: int, description: str, **parameters: Any) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        return code, body

    async def _answer(self, verb: str, target: str, headers, body: bytes) -> tuple[int, dict[str, Any]]:
        url = urlsplit(target)
        prefix = f"/bot{self.token}/"
        if not url.path.startswith(prefix):
            return self._error(401, "Unauthorized")
        method = url.path[len(prefix):]
        params = self._params(headers, body, url.query)
        status, payload = await self._dispatch(method, params)
        self.calls.append((method, params, status, time.monotonic()))
        return status, payload

    async def _dispatch(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.down_status is not None:
            return self._error(self.down_status, "Internal Server Error")
        if method.lower() != "getupdates" and self.delay:
            await asyncio.sleep(self.delay)
        handler = getattr(self, f"_m_{method.lower()}", None)
        if handler is None:
            return self._error(404, "Not Found")
        return await handler(params)

    async def _m_getme(self, params):
        return 200, {"ok": True, "result": {**self.bot_user(), "can_join_groups": True,
                                            "can_read_all_group_messages": True, "supports_inline_queries": False}}

    async def _m_getupdates(self, params):
        if self.webhook is not None:
            return self._error(409, "Conflict: can't use getUpdates method while webhook is active; "
                                    "use deleteWebhook to delete the webhook first")
        offset = params.get("offset")
        if isinstance(offset, int):
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        if not self.updates:
            self._new.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new.wait(), float(params.get("timeout") or 0))
        limit = int(params.get("limit") or 100)
        return 200, {"ok": True, "result": self.updates[:limit]}

    async def _m_sendmessage(self, params):
        if self.script:
            status, retry_after = self.script.popleft()
            if status == 429:
                return self._error(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)
            return self._error(status, "Internal Server Error" if status >= 500 else "Bad Request")
        text = params.get("text", "")
        if not text:
            return self._error(400, "Bad Request: message text is empty")
        try:
            plain, tags = parse_html(text) if params.get("parse_mode") == "HTML" else (text, [])
        except EntityError as exc:
            return self._error(400, f"Bad Request: can't parse entities: {exc}")
        if utf16_len(plain) > 4096:
            return self._error(400, "Bad Request: message is too long")
        self.next_message_id += 1
        reply = params.get("reply_parameters") or {}
        record = {**params, "plain": plain, "tags": tags, "message_id": self.next_message_id, "at": time.monotonic(),
                  "reply_to": reply.get("message_id") if isinstance(reply, dict) else None}
        self.sent.append(record)
        chat_id = params.get("chat_id")
        return 200, {"ok": True, "result": {
            "message_id": self.next_message_id, "date": int(time.time()), "text": plain, "from": self.bot_user(),
            "chat": {"id": chat_id, "type": "supergroup" if isinstance(chat_id, int) and chat_id < 0 else "private"},
        }}

    async def _m_setwebhook(self, params):
        self.webhook = params
        return 200, {"ok": True, "result": True, "description": "Webhook was set"}

    async def _m_deletewebhook(self, params):
        self.webhook = None
        return 200, {"ok": True, "result": True, "description": "Webhook is already deleted"}

    async def _m_getwebhookinfo(self, params):
        return 200, {"ok": True, "result": {"url": (self.webhook or {}).get("url", ""),
                                            "has_custom_certificate": False, "pending_update_count": len(self.updates)}}
