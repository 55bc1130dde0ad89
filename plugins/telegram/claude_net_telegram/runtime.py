"""The running Telegram bot of one hub: connection, long polling or webhook, the command
dispatcher and the echo outbox. Created at startup (``hub.plugin_state["telegram"]``); imports
python-telegram-bot, so the entry-point module imports this only when a token is configured.

python-telegram-bot is used as a Bot API client only (``telegram.Bot``): no ``Application``, so it
never owns the event loop, signals or logging. Our own tasks, started with ``hub.spawn``, do the
polling, dispatching and sending.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, LinkPreviewOptions, ReplyParameters, Update
from telegram.constants import ParseMode
from telegram.request import HTTPXRequest

from claude_net import (Actor, BadRequest, Event, Forbidden, PayloadTooLarge, Unauthorized, Unavailable,
                        validate_node_name)

from . import buttons, commands
from .cards import Buttons, Cards
from .outbox import Outbox, plain, retry_after_seconds
from .redact import Redactor, redact
from .render import clip, esc, format_event, safe
from .settings import TelegramSettings, admin_node

log = logging.getLogger("claude_net.telegram")
#: bus channel carrying echoes from every replica to the one that talks to Telegram
ECHO_CHANNEL = "telegram:echo"
#: bus channel carrying card updates (approvals, jobs, restore offers) to that replica
CARD_CHANNEL = "telegram:card"

# Opt in to python-telegram-bot's coming timedelta periods (RetryAfter.retry_after, ...): without
# it, every 429 prints a deprecation warning. We read both forms (see outbox.retry_after_seconds).
os.environ.setdefault("PTB_TIMEDELTA", "true")

ALLOWED_UPDATES = ["message", "edited_message", "channel_post", "edited_channel_post", "callback_query"]
#: senders that stand for a chat rather than a person (anonymous admins, channels, Telegram itself)
GROUP_ANONYMOUS_BOT = 1087968824
CHANNEL_BOT = 136817688
TELEGRAM_SERVICE = 777000
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
WEBHOOK_MAX_BODY = 1024 * 1024
DEFAULT_BASE_URL = "https://api.telegram.org/bot"


#: the name of the bot's supervised singleton task (``hub.task_status()``)
TASK_NAME = "telegram"


class BotFailure(RuntimeError):
    """The bot's work stopped on an unexpected error; the hub restarts it (message redacted)."""


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class TelegramRuntime:
    active = True

    def __init__(self, hub, settings: TelegramSettings) -> None:
        self.hub = hub
        self.s = settings
        self.admin_node = admin_node(settings, list(hub.settings.core.admins))
        self.admin_ids = frozenset(int(i) for i in settings.admin_ids)
        self.actor = Actor(name=self.admin_node or "telegram", admin=True, via="telegram")
        self.webhook_secret = settings.webhook_secret or secrets.token_urlsafe(32)
        self._secrets = (settings.token, self.webhook_secret)
        self.redactor = Redactor(*self._secrets)
        interval = settings.send_interval or (3.0 if settings.chat_id < 0 else 1.0)
        self.outbox = Outbox(self._send_echo, maxsize=settings.outbox_size, interval=interval,
                             retry_initial=settings.retry_initial, retry_max=settings.retry_max,
                             secrets=self._secrets)
        self.cards = Cards(send=self._card_send, edit=self._card_edit, turn=self.outbox.wait_turn,
                           pace=self.outbox.pace, edit_interval=settings.edit_interval,
                           retry_initial=settings.retry_initial, retry_max=settings.retry_max,
                           secrets=self._secrets)
        self.updates: asyncio.Queue[Update] = asyncio.Queue(maxsize=256)
        self.ready = asyncio.Event()
        self.bot: Bot | None = None
        self.username = ""
        self.tasks: list[asyncio.Task[Any]] = []
        #: replicas: echoes waiting to be published to the replica that talks to Telegram
        self._forward: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(settings.outbox_size)
        self._seen_ids: deque[int] = deque(maxlen=1024)
        self._echo_types = frozenset(settings.echo_types)
        self._echo_results = frozenset(settings.echo_results) - {"pending"}
        self._failing: dict[str, float] = {}
        self.counters = {"commands": 0, "refused": 0, "updates": 0, "replies_failed": 0, "presses": 0}

    # -- lifecycle ------------------------------------------------------------------------------

    async def start_workers(self) -> None:
        """Start everything that talks to Telegram: connect, poll (or set the webhook), dispatch
        commands, send echoes.

        This is the one place the bot's singleton work starts; with several hub replicas it is
        the function to gate to one of them (e.g. behind a PostgreSQL advisory lock). It returns
        at once: Telegram being slow or down never delays the hub's start.
        """
        self.redactor.install()
        if not self.admin_ids:
            log.warning("telegram: [telegram] admin_ids is empty: echo only, every command is refused")
        if not self.admin_node:
            log.warning("telegram: no admin node ([telegram] admin_node or top-level admins): commands are refused")
        elif not self.hub.is_admin(self.admin_node):
            log.info("telegram: commands act as %s (admin via telegram), which is not in the top-level admins",
                     self.admin_node)
        if self.s.mode == "webhook" and not self.s.webhook_secret:
            log.info("telegram: no webhook_secret configured; using a random one for this run")
        if self._replicated:
            self._spawn(self._forward_echoes, "telegram-echo-forward")
        # Polling, command dispatch and the outbox run on exactly one replica (a PostgreSQL
        # advisory lock; on SQLite, here) and move to another replica if that one dies. The hub
        # supervises it: an unexpected failure restarts it with back-off and is announced.
        self.tasks.append(self.hub.spawn_singleton(TASK_NAME, self._lead))

    @property
    def _replicated(self) -> bool:
        return not self.hub.db.is_sqlite

    async def _lead(self) -> None:
        self.ready.clear()
        bot = self.bot = self._make_bot()
        work = [self._connect_and_listen(), self._dispatch_forever(), self.outbox.run(), self.cards.run()]
        if self._replicated:
            work += [self._collect_echoes(), self._collect_cards()]
        tasks = [asyncio.ensure_future(w) for w in work]
        try:
            await asyncio.gather(*tasks)
        except Exception as exc:
            # for the hub's record and the admin's chat: the type and message, never a secret
            raise BotFailure(redact(f"{type(exc).__name__}: {exc}", self._secrets)) from exc
        finally:
            self.ready.clear()  # not connected while this run is over (restarting, or stopped)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:  # a restart makes a new client: close this one's connections
                await asyncio.wait_for(bot.shutdown(), 5)
            except Exception as exc:
                log.debug("telegram: closing the bot: %s", redact(str(exc), self._secrets))

    async def _forward_echoes(self) -> None:
        """With replicas, every replica forwards its echoes over the bus to the one that sends."""
        while True:
            channel, payload = await self._forward.get()
            await self.hub.bus.publish(channel, payload)

    async def _collect_echoes(self) -> None:
        async with self.hub.bus.subscribe(ECHO_CHANNEL, maxsize=self.s.outbox_size) as sub:
            while True:
                item = await sub.get()
                if item is not None and isinstance(item.get("text"), str):
                    self.outbox.put(item["text"], bool(item.get("loud")))

    async def _collect_cards(self) -> None:
        async with self.hub.bus.subscribe(CARD_CHANNEL, maxsize=self.s.outbox_size) as sub:
            while True:
                item = await sub.get()
                if isinstance(item, dict) and item.get("kind"):
                    try:
                        buttons.apply(self, item)
                    except Exception:  # one odd update must not stop the cards of every other
                        log.exception("telegram: cannot apply a %s card update", item.get("kind"))

    def _spawn(self, work, name: str) -> None:
        self.tasks.append(self.hub.spawn(work, name=name))

    def _make_bot(self) -> Bot:
        timeout = self.s.request_timeout
        proxy = self.s.proxy or None
        request = HTTPXRequest(connection_pool_size=8, connect_timeout=min(timeout, 10.0), read_timeout=timeout,
                               write_timeout=timeout, pool_timeout=timeout, proxy=proxy)
        polling = HTTPXRequest(connection_pool_size=1, connect_timeout=min(timeout, 10.0), read_timeout=timeout,
                               write_timeout=timeout, pool_timeout=timeout, proxy=proxy)
        return Bot(self.s.token, base_url=self.s.base_url or DEFAULT_BASE_URL, request=request,
                   get_updates_request=polling)

    async def stop(self) -> None:
        try:
            if self.ready.is_set():
                await self.outbox.drain(self.s.shutdown_drain)
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            if self.bot is not None:
                try:
                    await self.bot.shutdown()
                except Exception as exc:  # closing the HTTP clients; nothing left to save
                    log.debug("telegram: closing the bot: %s", redact(str(exc), self._secrets))
        finally:
            self.redactor.uninstall()

    def status(self) -> dict[str, Any]:
        task = self.hub.task_status().get(TASK_NAME)
        running = task is not None and task["state"] == "running"
        return {
            "active": True, "mode": self.s.mode,
            # connected only while the bot's task runs and has reached the Bot API: a failed or
            # restarting task (or a replica that does not hold the bot) is never "connected"
            "connected": running and self.ready.is_set(),
            "task": task or {"state": "stopped"}, "runs_here": running and self.hub.runs_singleton(TASK_NAME),
            "bot": f"@{self.username}" if self.username else None, "chat_id": self.s.chat_id,
            "admin_node": self.admin_node or None, "admin_ids": sorted(self.admin_ids),
            "self_hosted_api": bool(self.s.base_url), "outbox": self.outbox.stats(), "cards": self.cards.stats(),
            **self.counters,
        }

    # -- talking to the Bot API -----------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> None:
        """Log a failure once per outage (then at debug), always without secrets."""
        text = redact(f"{type(exc).__name__}: {exc}", self._secrets)
        if what not in self._failing:
            self._failing[what] = time.monotonic()
            level = logging.ERROR if type(exc).__name__ == "InvalidToken" else logging.WARNING
            log.log(level, "telegram: %s failed: %s (retrying with back-off)", what, text)
        else:
            log.debug("telegram: %s failed again: %s", what, text)

    def _recovered(self, what: str) -> None:
        since = self._failing.pop(what, None)
        if since is not None:
            log.info("telegram: %s works again after %.0fs", what, time.monotonic() - since)

    async def _retrying(self, what: str, call):
        delay = self.s.retry_initial
        while True:
            try:
                result = await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if type(exc).__name__ == "RetryAfter":
                    await asyncio.sleep(retry_after_seconds(exc))
                    continue
                self._failed(what, exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.s.retry_max)
                continue
            self._recovered(what)
            return result

    async def _connect_and_listen(self) -> None:
        assert self.bot is not None
        delay = self.s.retry_initial
        while True:
            try:
                await self.bot.initialize()  # getMe: checks the token, learns the bot's username
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.outbox.note_failure(exc)
                self._failed("connecting to the Bot API", exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.s.retry_max)
        self._recovered("connecting to the Bot API")
        self.username = self.bot.username or ""
        log.info("telegram: connected as @%s (%s mode, admin chat %s, commands act as %s)",
                 self.username, self.s.mode, self.s.chat_id, self.admin_node or "nobody")
        self.ready.set()
        if self.s.mode == "webhook":
            await self._retrying("setWebhook", lambda: self.bot.set_webhook(
                url=self.s.webhook_url, secret_token=self.webhook_secret, allowed_updates=ALLOWED_UPDATES))
            log.info("telegram: webhook set; Telegram now calls the hub")
            return
        await self._poll_forever()

    async def _poll_forever(self) -> None:
        bot = self.bot
        assert bot is not None
        # getUpdates answers 409 while a webhook is set (e.g. after switching modes)
        await self._retrying("deleteWebhook", lambda: bot.delete_webhook(drop_pending_updates=False))
        offset: int | None = None
        delay = self.s.retry_initial
        while True:
            try:
                updates = await bot.get_updates(offset=offset, timeout=self.s.poll_timeout,
                                                allowed_updates=ALLOWED_UPDATES)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                name = type(exc).__name__
                if name == "RetryAfter":
                    await asyncio.sleep(retry_after_seconds(exc))
                    continue
                if name == "Conflict":
                    exc = RuntimeError("another process is polling this bot, or a webhook is set "
                                       f"({redact(str(exc), self._secrets)})")
                self._failed("getUpdates", exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.s.retry_max)
                continue
            self._recovered("getUpdates")
            delay = self.s.retry_initial
            for update in updates:
                offset = update.update_id + 1
                await self.updates.put(update)

    async def _send(self, chat_id: int, text: str, *, quiet: bool = False, as_html: bool = True,
                    reply_to: int | None = None) -> None:
        await self.ready.wait()
        assert self.bot is not None
        await self.bot.send_message(
            chat_id=chat_id, text=safe(text), parse_mode=ParseMode.HTML if as_html else None,
            disable_notification=quiet, link_preview_options=LinkPreviewOptions(is_disabled=True),
            reply_parameters=(ReplyParameters(message_id=reply_to, allow_sending_without_reply=True)
                              if reply_to is not None else None))

    async def _send_echo(self, text: str, quiet: bool, as_html: bool) -> None:
        await self._send(self.s.chat_id, text, quiet=quiet, as_html=as_html)

    @staticmethod
    def _markup(rows: Buttons) -> InlineKeyboardMarkup | None:
        if not rows:
            return None
        return InlineKeyboardMarkup([[InlineKeyboardButton(text, callback_data=data) for text, data in row]
                                     for row in rows])

    async def _card_send(self, text: str, rows: Buttons, quiet: bool) -> int:
        await self.ready.wait()
        assert self.bot is not None
        message = await self.bot.send_message(
            chat_id=self.s.chat_id, text=safe(text), parse_mode=ParseMode.HTML, disable_notification=quiet,
            link_preview_options=LinkPreviewOptions(is_disabled=True), reply_markup=self._markup(rows))
        return message.message_id

    async def _card_edit(self, message_id: int, text: str, rows: Buttons) -> None:
        await self.ready.wait()
        assert self.bot is not None
        # an edit without reply_markup removes the buttons (what Telegram does; an empty keyboard
        # is refused as unparsable)
        await self.bot.edit_message_text(
            chat_id=self.s.chat_id, message_id=message_id, text=safe(text), parse_mode=ParseMode.HTML,
            link_preview_options=LinkPreviewOptions(is_disabled=True), reply_markup=self._markup(rows))

    async def answer_press(self, query_id: str, text: str, *, alert: bool = False) -> None:
        """Answer a button press (the small notice the presser sees); a press is answered once."""
        await self.ready.wait()
        assert self.bot is not None
        for _ in range(3):
            try:
                await self.bot.answer_callback_query(query_id, text=clip(plain(text), 190), show_alert=alert)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if type(exc).__name__ == "RetryAfter":
                    await asyncio.sleep(min(retry_after_seconds(exc), 10.0))
                    continue
                log.warning("telegram: answering a button press failed: %s",
                            redact(f"{type(exc).__name__}: {exc}", self._secrets))
                return

    async def reply(self, message, text: str) -> bool:
        """Answer a command (directly, not through the outbox); a few quick retries."""
        as_html = True
        for attempt in range(4):
            try:
                await self._send(message.chat.id, text if as_html else plain(text), as_html=as_html,
                                 reply_to=message.message_id)
                self.outbox.pace()
                return True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                name = type(exc).__name__
                if name == "RetryAfter":
                    wait = retry_after_seconds(exc)
                    self.outbox.pace(wait)
                    await asyncio.sleep(wait)
                    continue
                if name == "BadRequest" and as_html and "parse" in str(exc).lower():
                    log.error("telegram: the Bot API rejected a reply's markup (%s); sending it as plain text",
                              redact(str(exc), self._secrets))
                    as_html = False
                    continue
                log.warning("telegram: reply failed (attempt %d): %s", attempt + 1,
                            redact(f"{name}: {exc}", self._secrets))
                await asyncio.sleep(min(self.s.retry_initial * 2 ** attempt, 5.0))
        self.counters["replies_failed"] += 1
        return False

    # -- commands -------------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while True:
            update = await self.updates.get()
            try:
                await self.handle_update(update)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("telegram: handling update %s failed: %s", getattr(update, "update_id", "?"),
                          redact(f"{type(exc).__name__}: {exc}", self._secrets), exc_info=True)

    def refusal(self, kind: str, message) -> tuple[str, str] | None:
        """Why this message must not run a command, or ``None`` when it may.

        Identity is the numeric user id only: usernames can be re-registered by anyone.
        """
        if kind in ("channel_post", "edited_channel_post"):
            return "channel_post", "channel posts never run commands"
        if kind == "edited_message":
            return "edited", "edited messages never run commands; send the command again as a new message"
        if message.chat.id != self.s.chat_id:
            return "wrong_chat", f"commands are accepted only in the admin chat, not in chat {message.chat.id}"
        user = message.from_user
        if message.sender_chat is not None or user is None or user.id in (GROUP_ANONYMOUS_BOT, CHANNEL_BOT,
                                                                          TELEGRAM_SERVICE):
            return "anonymous", ("messages from anonymous group admins or sent on behalf of a chat never run "
                                 "commands; turn off 'Remain anonymous' to command")
        if message.forward_origin is not None or message.is_automatic_forward:
            return "forwarded", "forwarded messages never run commands"
        if user.is_bot or message.via_bot is not None:
            return "bot", "messages from or via bots never run commands"
        if user.id not in self.admin_ids:
            return "not_admin", f"Telegram user {user.id} is not allowed to command this hub (admin_ids)"
        if not self.admin_node:
            return "no_admin_node", ("no admin node is configured, so commands have no node to act as "
                                     "([telegram] admin_node or the top-level admins)")
        return None

    async def handle_update(self, update: Update) -> None:
        self.counters["updates"] += 1
        if update.callback_query is not None:
            await buttons.handle_press(self, update.callback_query)
            return
        for kind in ALLOWED_UPDATES:
            message = getattr(update, kind, None)
            if message is not None:
                break
        else:
            return
        text = message.text or message.caption or ""
        parsed = commands.parse(text, admin_node=self.admin_node, bot_username=self.username)
        if parsed is None:
            return  # ordinary chat, or another bot's command
        refused = self.refusal(kind, message)
        if parsed.foreign:
            refused = await self._foreign_refusal(parsed, refused)
            if refused is None:
                return  # ordinary chat that starts with a mention
        if refused is None and self.s.max_command_age > 0 and message.date is not None:
            age = (datetime.now(timezone.utc) - message.date).total_seconds()
            if age > self.s.max_command_age:
                refused = ("stale", f"this command was sent {age / 60:.0f} min ago, while the hub was not "
                                    "listening; send it again if you still want it")
        user = message.from_user
        data = {"user_id": user.id if user else None, "chat_id": message.chat.id,
                "message_id": message.message_id, "command": parsed.verb, "update": kind}
        if refused is not None:
            extra = self._admin_node_help(parsed) if refused[0] == "no_admin_node" else ""
            await self._refuse(message, kind, text, data, *refused, extra=extra)
            return
        self.counters["commands"] += 1
        await self.hub.emit(Event("telegram", self.actor.name, None, clip(text, 500), "ok", via="telegram",
                                  data=data))
        log.info("telegram: user %s runs %r as %s", data["user_id"], parsed.verb, self.actor.name)
        replies = await commands.run(self.hub, self.actor, parsed, admin_node=self.admin_node,
                                     telegram_user=data["user_id"])
        for html in replies:
            await self.reply(message, html)

    async def _foreign_refusal(self, parsed: commands.Parsed, refused: tuple[str, str] | None) -> tuple[str, str] | None:
        """``@NAME verb ...`` with NAME neither the admin node nor the bot: why it is not run, or
        ``None`` to stay silent (anyone may mention someone in a group).

        Answered only when it plainly was meant for this hub: sent by an admin in the admin chat,
        and either no admin node is configured (the admin is told which setting to add) or NAME
        is an admin's node (the admin is told that commands act as the admin node only).
        """
        if refused is not None and refused[0] != "no_admin_node":
            return None
        name = parsed.address[1:].lower()
        if not self.admin_node:
            return refused or ("no_admin_node", "")
        if await self._holds_admin(name):
            return ("other_node", f"commands from Telegram always act as {self.admin_node}; @{name} cannot choose "
                                  f"another node. Write @{self.admin_node} {parsed.text}")
        return None

    async def _holds_admin(self, name: str) -> bool:
        if self.hub.is_admin(name):
            return True
        try:
            return bool(await self.hub.db.fetch_val(
                "SELECT 1 FROM tokens WHERE name = :n AND admin = :yes AND revoked_at IS NULL",
                {"n": name, "yes": True}))
        except Exception as exc:  # the database is down: stay silent rather than guess
            log.warning("telegram: cannot check whether %s holds an admin token: %s", name, type(exc).__name__)
            return False

    def _admin_node_help(self, parsed: commands.Parsed) -> str:
        """The exact settings to add, in the chat (HTML), naming the node the admin addressed."""
        name = parsed.address[1:].lower() if parsed.address.startswith("@") else ""
        if name == self.username.lower():
            name = ""
        try:
            validate_node_name(name)
        except Exception:
            name = "chasclaude"  # /permit ... names no node: the original deployment's admin, as an example
        return (f"\nAdd the node commands act as to the hub's configuration file and restart the hub:\n"
                f"<pre>[telegram]\nadmin_node = \"{esc(name)}\"</pre>\n"
                f"or name it among the admins (a top-level key, above every [section]): "
                f"<code>admins = [\"{esc(name)}\"]</code>\n"
                f"or set <code>CLAUDE_NET_TELEGRAM__ADMIN_NODE={esc(name)}</code> in the hub's environment.")

    async def _refuse(self, message, kind: str, text: str, data: dict[str, Any], code: str, reason: str,
                      *, extra: str = "") -> None:
        self.counters["refused"] += 1
        answer = message.chat.id == self.s.chat_id and kind in ("message", "edited_message")
        who = (f"telegram:{data['user_id']}" if data["user_id"] is not None
               else f"telegram:chat{getattr(message.sender_chat, 'id', message.chat.id)}")
        if message.sender_chat is not None:
            data["sender_chat_id"] = message.sender_chat.id
        event = Event("telegram", who, None, clip(text, 500), "denied", via="telegram",
                      data={**data, "reason": code, "reason_text": reason})
        event.transient["echo"] = not answer  # refusals nobody was told about go to the admin chat
        await self.hub.emit(event)
        log.warning("telegram: refused %r from user %s in chat %s: %s", data["command"], data["user_id"],
                    data["chat_id"], code)
        if answer:
            await self.reply(message, f"⛔ not run: {esc(reason)}{extra}")

    # -- webhook --------------------------------------------------------------------------------

    async def webhook(self, ctx) -> dict[str, Any]:
        from quart import request

        given = ctx.headers.get(SECRET_HEADER)
        if given is None or not hmac.compare_digest(_digest(given), _digest(self.webhook_secret)):
            missing = given is None
            address = request.remote_addr or "unknown"
            # recorded at most once per address every few seconds (with a count), like every
            # refusal of a caller without credentials: nobody floods the audit log through here
            refused = self.hub.auth_refusals.should_record(f"telegram-webhook {address}")
            if refused:
                await self.hub.emit(Event("auth", None, None,
                                          f"{'missing' if missing else 'wrong'} {SECRET_HEADER} on POST "
                                          f"/api/telegram/webhook from {address}"
                                          + (f" ({refused} refused)" if refused > 1 else ""), "denied",
                                          via="telegram", data={"refused": refused}))
            if missing:
                raise Unauthorized(f"the {SECRET_HEADER} header is required", code="webhook_secret_missing")
            raise Forbidden(f"the {SECRET_HEADER} header does not match", code="webhook_secret_mismatch")
        if not self.ready.is_set() or self.bot is None:
            raise Unavailable("the bot is still connecting; Telegram will retry", code="telegram_starting")
        length = request.content_length
        if length is not None and length > WEBHOOK_MAX_BODY:
            raise PayloadTooLarge(f"an update is at most {WEBHOOK_MAX_BODY} bytes")
        request.max_content_length = WEBHOOK_MAX_BODY
        raw = await request.get_data(cache=False)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the body is not valid JSON", code="invalid_json") from None
        if not isinstance(body, dict) or not isinstance(body.get("update_id"), int):
            raise BadRequest("the body is not a Telegram update", code="invalid_update")
        update_id = body["update_id"]
        if update_id in self._seen_ids:
            return {"duplicate": True}  # Telegram re-delivers when an answer was slow or lost
        try:
            update = Update.de_json(body, self.bot)
        except Exception:
            raise BadRequest("the body is not a Telegram update", code="invalid_update") from None
        try:
            self.updates.put_nowait(update)
        except asyncio.QueueFull:
            raise Unavailable("too many updates waiting; Telegram will retry", code="busy") from None
        self._seen_ids.append(update_id)
        return {}

    # -- echo -----------------------------------------------------------------------------------

    def wants(self, event) -> bool:
        if not self.s.echo or event.result == "pending":
            return False
        if event.via == "telegram" and not event.transient.get("echo"):
            return False  # the admin's own commands are answered in the chat already
        if event.type == "hub" and event.result == "error":
            return True  # the hub's own trouble (a background task failed): the admin must know
        if event.type in self._echo_types and event.result in self._echo_results:
            return True
        return event.result == "denied" and self.s.echo_denials

    def on_event(self, event) -> None:
        """The hub's ``on_event``: format and ``put_nowait`` — nothing that can wait or fail."""
        try:
            card = buttons.card_update(self, event)
        except Exception:
            log.exception("telegram: cannot make a card of the %s event %s", event.type, event.id)
            card = None
        if card is not None:
            if card.get("kind") != "none":
                self.send_card(card)
            return
        if not self.wants(event):
            return
        try:
            text, loud = format_event(event, output_chars=self.s.echo_output_chars)
        except Exception:
            log.exception("telegram: cannot format the %s event %s", event.type, event.id)
            return
        loud = loud or not self.s.echo_quiet_ok
        text = safe(text)
        # the bot's own failure: announced while its work (and its bus subscription) is down, so
        # it waits in this replica's outbox, which the restarted bot sends first
        own_failure = event.type == "hub" and event.data.get("task") == TASK_NAME
        if not self._replicated or own_failure:
            self.outbox.put(text, loud)
        elif self._forward.full():
            self.outbox.dropped_full += 1
            self.outbox.dropped_total += 1
        else:
            self._forward.put_nowait((ECHO_CHANNEL, {"text": text, "loud": loud}))

    def send_card(self, update: dict[str, Any]) -> None:
        """A card update from this replica's events: applied here, or sent to the replica that
        talks to Telegram (which keeps every card's message id)."""
        if not self._replicated:
            buttons.apply(self, update)
        elif self._forward.full():
            self.cards.failed += 1
        else:
            self._forward.put_nowait((CARD_CHANNEL, update))
