"""A local stand-in for the Telegram Bot API, for the Telegram plugin's tests.

A small HTTP/1.1 server on asyncio (keep-alive, Content-Length bodies: what httpx sends) that
speaks the methods the plugin uses, with Telegram's JSON shapes (``{"ok": true, "result": ...}``,
``{"ok": false, "error_code": ..., "description": ...}``): ``getMe``, ``getUpdates`` (offset,
long-poll timeout), ``sendMessage`` (validating Telegram's HTML subset, the 4096-character
limit and an inline keyboard's ``reply_markup`` like the real server), ``editMessageText``,
``editMessageReplyMarkup`` ("message is not modified" and "message to edit not found" as the real
server answers them), ``answerCallbackQuery`` (once per query), ``setWebhook``,
``deleteWebhook``, ``getWebhookInfo``.

Tests queue updates on it (messages, and ``callback_query`` updates: :meth:`FakeBotAPI.press`
taps a button of a message the bot sent, as any user, in any chat), read what the bot sent, how
each message looks now (:attr:`FakeBotAPI.messages`) and every step in order
(:attr:`FakeBotAPI.transcript`), make it fail (HTTP 500, 429 with ``retry_after``), slow it
down, or stop and restart it on the same port.
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
STRING_PARAMS = {"text", "parse_mode", "url", "secret_token", "ip_address", "callback_query_id"}
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
        #: every message the bot sent, by message_id, as it looks now (after edits):
        #: the sendMessage record plus "markup" (rows of (text, callback_data)) and "edits"
        self.messages: dict[int, dict[str, Any]] = {}
        #: every editMessageText / editMessageReplyMarkup accepted, in order
        self.edits: list[dict[str, Any]] = []
        #: button presses queued (callback_query updates) and the bot's answers, by query id
        self.presses: list[dict[str, Any]] = []
        self.answers: dict[str, dict[str, Any]] = {}
        #: ("send" | "edit" | "press" | "answer", record) in the order they happened
        self.transcript: list[tuple[str, dict[str, Any]]] = []
        self.next_query_id = 880000
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

    def _new_update_id(self) -> int:
        self.next_update_id += 1
        return self.next_update_id - 1

    def queue_update(self, kind: str, message: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": self._new_update_id(), kind: message}
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

    # -- buttons --------------------------------------------------------------------------------

    def callback_update(self, message_id: int, button: str, *, user_id: int, chat_id: int | None = None,
                        username: str = "chas", is_bot: bool = False) -> dict[str, Any]:
        """A ``callback_query`` update: ``user_id`` taps the button of the bot's message
        ``message_id`` whose text or callback data is ``button`` (not queued; see :meth:`press`).

        ``chat_id`` moves the message to another chat (a press in a chat that is not the admin
        chat: the bot's message there, as Telegram would deliver it). The press is noted in the
        transcript; webhook tests POST the update to the hub themselves.
        """
        shown = self.messages[message_id]
        data = None
        for row in shown["markup"]:
            for text, callback_data in row:
                if button in (text, callback_data):
                    data = callback_data
        if data is None:
            raise AssertionError(f"message {message_id} has no button {button!r}: {shown['markup']}")
        self.next_query_id += 1
        chat = shown["chat_id"] if chat_id is None else chat_id
        query = {
            "id": str(self.next_query_id), "chat_instance": f"ci{chat}", "data": data,
            "from": {"id": user_id, "is_bot": is_bot, "first_name": username.title(), "username": username},
            "message": {"message_id": message_id, "date": int(time.time()), "from": self.bot_user(),
                        "chat": {"id": chat, "type": "supergroup" if chat < 0 else "private",
                                 **({"title": "claude-net admins"} if chat < 0 else {})},
                        "text": shown["plain"]},
        }
        self._note_press(query)
        return {"update_id": self._new_update_id(), "callback_query": query}

    def press(self, message_id: int, button: str, **kw: Any) -> str:
        """Queue a tap on a button (see :meth:`callback_update`); returns the callback query id."""
        update = self.callback_update(message_id, button, **kw)
        self.updates.append(update)
        self._new.set()
        return update["callback_query"]["id"]

    def _note_press(self, query: dict[str, Any]) -> None:
        record = {"id": query["id"], "message_id": query["message"]["message_id"], "data": query["data"],
                  "user_id": query["from"]["id"], "chat_id": query["message"]["chat"]["id"],
                  "at": time.monotonic()}
        label = [t for row in self.messages[record["message_id"]]["markup"] for t, d in row if d == query["data"]]
        record["button"] = label[0] if label else query["data"]
        self.presses.append(record)
        self.transcript.append(("press", record))

    async def wait_answer(self, query_id: str, *, timeout: float = 10.0) -> dict[str, Any]:
        """The bot's answerCallbackQuery for the press ``query_id``."""
        deadline = time.monotonic() + timeout
        while query_id not in self.answers:
            if time.monotonic() > deadline:
                raise AssertionError(f"the press {query_id} was not answered within {timeout}s")
            await asyncio.sleep(0.02)
        return self.answers[query_id]

    async def wait_message(self, message_id: int, predicate, *, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the bot's message ``message_id`` (as edited) satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while not predicate(self.messages[message_id]):
            if time.monotonic() > deadline:
                shown = self.messages[message_id]
                raise AssertionError(f"message {message_id} did not change as expected within {timeout}s; "
                                     f"it shows {shown['plain'][:300]!r} with buttons {shown['markup']}")
            await asyncio.sleep(0.02)
        return self.messages[message_id]

    def buttons(self, message_id: int) -> list[str]:
        return [text for row in self.messages[message_id]["markup"] for text, _ in row]

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
        markup, error = self._markup(params)
        if error:
            return self._error(400, error)
        self.next_message_id += 1
        reply = params.get("reply_parameters") or {}
        record = {**params, "plain": plain, "tags": tags, "message_id": self.next_message_id, "at": time.monotonic(),
                  "reply_to": reply.get("message_id") if isinstance(reply, dict) else None, "markup": markup}
        self.sent.append(record)
        self.messages[record["message_id"]] = {**record, "edits": []}
        self.transcript.append(("send", record))
        chat_id = params.get("chat_id")
        return 200, {"ok": True, "result": {
            "message_id": self.next_message_id, "date": int(time.time()), "text": plain, "from": self.bot_user(),
            "chat": {"id": chat_id, "type": "supergroup" if isinstance(chat_id, int) and chat_id < 0 else "private"},
        }}

    @staticmethod
    def _markup(params) -> tuple[list[list[tuple[str, str]]], str | None]:
        """An inline keyboard as rows of (text, callback_data), checked like the Bot API does."""
        raw = params.get("reply_markup")
        if raw is None:
            return [], None
        if isinstance(raw, str):
            raw = json.loads(raw)
        rows = raw.get("inline_keyboard") if isinstance(raw, dict) else None
        if not isinstance(rows, list):
            return [], "Bad Request: can't parse reply keyboard markup JSON object"
        markup = []
        for row in rows:
            buttons = []
            for button in row:
                data = button.get("callback_data")
                if not button.get("text"):
                    return [], "Bad Request: text buttons are unallowed in the inline keyboard"
                if not isinstance(data, str) or not 1 <= len(data.encode()) <= 64:
                    return [], "Bad Request: BUTTON_DATA_INVALID"
                buttons.append((button["text"], data))
            markup.append(buttons)
        return markup, None

    def _edit(self, params, *, text: bool) -> tuple[int, dict[str, Any]]:
        """Like Telegram: an edit without ``reply_markup`` leaves the message without buttons."""
        message = self.messages.get(params.get("message_id"))
        if message is None or message["chat_id"] != params.get("chat_id"):
            return self._error(400, "Bad Request: message to edit not found")
        markup, error = self._markup(params)
        if error:
            return self._error(400, error)
        change: dict[str, Any] = {"markup": markup}
        if text:
            new = params.get("text", "")
            if not new:
                return self._error(400, "Bad Request: message text is empty")
            try:
                plain, tags = parse_html(new) if params.get("parse_mode") == "HTML" else (new, [])
            except EntityError as exc:
                return self._error(400, f"Bad Request: can't parse entities: {exc}")
            if utf16_len(plain) > 4096:
                return self._error(400, "Bad Request: MESSAGE_TOO_LONG")
            change.update(text=new, plain=plain, tags=tags)
        if all(message.get(k) == v for k, v in change.items()):
            return self._error(400, "Bad Request: message is not modified: specified new message content and "
                                    "reply markup are exactly the same as a current content and reply markup "
                                    "of the message")
        record = {"message_id": message["message_id"], "at": time.monotonic(),
                  "method": "editMessageText" if text else "editMessageReplyMarkup", **change}
        message.update(change)
        message["edits"].append(record)
        self.edits.append(record)
        self.transcript.append(("edit", record))
        return 200, {"ok": True, "result": {
            "message_id": message["message_id"], "date": int(time.time()), "edit_date": int(time.time()),
            "text": message["plain"], "from": self.bot_user(),
            "chat": {"id": message["chat_id"], "type": "supergroup" if message["chat_id"] < 0 else "private"},
            **({"reply_markup": {"inline_keyboard": [[{"text": t, "callback_data": d} for t, d in row]
                                                     for row in markup]}} if markup else {})}}

    async def _m_editmessagetext(self, params):
        return self._edit(params, text=True)

    async def _m_editmessagereplymarkup(self, params):
        return self._edit(params, text=False)

    async def _m_answercallbackquery(self, params):
        query_id = str(params.get("callback_query_id"))
        if query_id in self.answers:
            return self._error(400, "Bad Request: query is too old and response timeout expired or query ID is "
                                    "invalid")
        record = {"id": query_id, "text": params.get("text"), "show_alert": bool(params.get("show_alert")),
                  "at": time.monotonic()}
        self.answers[query_id] = record
        self.transcript.append(("answer", record))
        return 200, {"ok": True, "result": True}

    async def _m_setwebhook(self, params):
        self.webhook = params
        return 200, {"ok": True, "result": True, "description": "Webhook was set"}

    async def _m_deletewebhook(self, params):
        self.webhook = None
        return 200, {"ok": True, "result": True, "description": "Webhook is already deleted"}

    async def _m_getwebhookinfo(self, params):
        return 200, {"ok": True, "result": {"url": (self.webhook or {}).get("url", ""),
                                            "has_custom_certificate": False, "pending_update_count": len(self.updates)}}
