"""Who may command: only configured numeric user ids, only in the admin chat, only fresh, new,
first-hand messages from a person. Every refusal is recorded; none changes anything."""

from __future__ import annotations

import json
import logging
import time

from tg_botapi import BOT_USERNAME
from tg_helpers import ADMIN_ID, CHAT_ID, OTHER_ID, TOKEN, activity_rows, eventually

PERMIT = "@chasclaude permit managerclaude all"


async def nothing_changed(h):
    assert await h.hub.db.fetch_all("SELECT * FROM exec_permissions") == []
    assert await activity_rows(h.hub, type="permit") == []


async def refusals(h):
    rows = await activity_rows(h.hub, type="telegram", result="denied")
    return [(r["from_machine"], json.loads(r["data"])["reason"], r["detail"]) for r in rows]


async def test_a_spoofed_sender_is_refused_even_with_the_admins_username(tg_hub):
    async with tg_hub() as h:
        message = h.api.send_text(PERMIT, user_id=OTHER_ID, chat_id=CHAT_ID, username="chas")
        reply = await h.api.reply_to(message)
        assert reply["plain"] == f"⛔ not run: Telegram user {OTHER_ID} is not allowed to command this hub (admin_ids)"
        await nothing_changed(h)
        assert await refusals(h) == [(f"telegram:{OTHER_ID}", "not_admin", PERMIT)]
        row = (await activity_rows(h.hub, type="telegram"))[0]
        assert row["via"] == "telegram" and json.loads(row["data"])["user_id"] == OTHER_ID


async def test_the_admin_in_another_chat_is_refused_silently_and_the_admin_chat_is_told(tg_hub):
    async with tg_hub() as h:
        # a private chat with the bot (chat id = user id), and some other group
        h.api.send_text(PERMIT, user_id=ADMIN_ID, chat_id=ADMIN_ID, chat_type="private")
        h.api.send_text("/status", user_id=ADMIN_ID, chat_id=-100999, chat_type="group")
        await eventually(lambda: h.rt.counters["refused"] == 2)
        echo = await h.api.wait_sent(lambda m: "refused" in m["plain"] and "-100999" in m["plain"])
        assert echo["chat_id"] == CHAT_ID and echo["disable_notification"] is False
        assert all(m["chat_id"] == CHAT_ID for m in h.api.sent)  # nothing said in the foreign chats
        await nothing_changed(h)
        assert [r[1] for r in await refusals(h)] == ["wrong_chat", "wrong_chat"]


async def test_edited_messages_never_run(tg_hub):
    async with tg_hub() as h:
        message = h.api.message(PERMIT, user_id=ADMIN_ID, chat_id=CHAT_ID, edit_date=int(time.time()))
        h.api.queue_update("edited_message", message)
        reply = await h.api.reply_to(message)
        assert reply["plain"] == ("⛔ not run: edited messages never run commands; send the command again as a "
                                  "new message")
        await nothing_changed(h)
        assert await refusals(h) == [(f"telegram:{ADMIN_ID}", "edited", PERMIT)]


async def test_forwarded_messages_never_run(tg_hub):
    async with tg_hub() as h:
        # the admin forwards an old command of their own: still not a command
        origin = {"type": "user", "date": int(time.time()) - 60,
                  "sender_user": {"id": ADMIN_ID, "is_bot": False, "first_name": "Chas"}}
        message = h.api.send_text(PERMIT, user_id=ADMIN_ID, chat_id=CHAT_ID, forward_origin=origin)
        reply = await h.api.reply_to(message)
        assert reply["plain"] == "⛔ not run: forwarded messages never run commands"
        await nothing_changed(h)
        assert [r[1] for r in await refusals(h)] == ["forwarded"]


async def test_anonymous_group_admins_never_run(tg_hub):
    async with tg_hub() as h:
        anonymous = {"id": 1087968824, "is_bot": True, "first_name": "Group", "username": "GroupAnonymousBot"}
        message = h.api.message(PERMIT, user_id=ADMIN_ID, chat_id=CHAT_ID)
        message["from"] = anonymous
        message["sender_chat"] = {"id": CHAT_ID, "type": "supergroup", "title": "claude-net admins"}
        h.api.queue_update("message", message)
        reply = await h.api.reply_to(message)
        assert reply["plain"].startswith("⛔ not run: messages from anonymous group admins")
        await nothing_changed(h)
        assert await refusals(h) == [("telegram:1087968824", "anonymous", PERMIT)]


async def test_channel_posts_never_run(tg_hub):
    async with tg_hub() as h:
        channel = {"id": CHAT_ID, "type": "channel", "title": "news"}
        post = {"message_id": 9, "date": int(time.time()), "chat": channel, "sender_chat": channel, "text": PERMIT}
        h.api.queue_update("channel_post", post)
        echo = await h.api.wait_sent(lambda m: "channel posts never run commands" in m["plain"])
        assert echo["reply_to"] is None  # told in the admin chat, not as a reply to the post
        await nothing_changed(h)
        assert await refusals(h) == [(f"telegram:chat{CHAT_ID}", "channel_post", PERMIT)]


async def test_stale_commands_queued_while_the_hub_was_down_are_not_run(tg_hub):
    async with tg_hub() as h:
        message = h.api.send_text("@chasclaude stop box1", user_id=ADMIN_ID, chat_id=CHAT_ID,
                                  date=time.time() - 3600)
        reply = await h.api.reply_to(message)
        assert reply["plain"].startswith("⛔ not run: this command was sent 60 min ago")
        assert h.box.states["box1"] == "running" and h.box.calls == []


async def test_bots_and_messages_via_bots_never_run(tg_hub):
    async with tg_hub() as h:
        message = h.api.message(PERMIT, user_id=ADMIN_ID, chat_id=CHAT_ID,
                                via_bot={"id": 42, "is_bot": True, "first_name": "inline", "username": "gif"})
        h.api.queue_update("message", message)
        reply = await h.api.reply_to(message)
        assert reply["plain"] == "⛔ not run: messages from or via bots never run commands"
        await nothing_changed(h)


async def test_with_no_admin_ids_the_bot_only_echoes(tg_hub):
    async with tg_hub(admin_ids=[]) as h:
        message = h.api.send_text("/status", user_id=ADMIN_ID, chat_id=CHAT_ID)
        reply = await h.api.reply_to(message)
        assert reply["plain"].startswith(f"⛔ not run: Telegram user {ADMIN_ID} is not allowed")


async def test_the_token_never_reaches_the_logs(tg_hub, botapi, caplog):
    """Everything at DEBUG, including a bad token (PTB puts it in the InvalidToken message) and
    httpx's request lines (the token is in every URL)."""
    caplog.set_level(logging.DEBUG)
    async with tg_hub() as h:
        reply = await h.api.reply_to(h.api.send_text("/status", user_id=ADMIN_ID, chat_id=CHAT_ID))
        assert reply["plain"].startswith("📋 status")
    # the token the server does not know: getMe answers 401, the bot keeps retrying
    botapi.token = TOKEN.replace("AAFake", "AAGone")
    async with tg_hub(wait_ready=False) as h:
        await eventually(lambda: any("InvalidToken" in r.getMessage() for r in caplog.records))
        status, body = await h.call("GET", "/api/telegram/status", await h.token("chasclaude", admin=True))
        assert status == 200 and body["telegram"]["connected"] is False and TOKEN not in json.dumps(body)
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert TOKEN not in text and TOKEN.split(":")[1] not in text
    assert "<telegram-token>" in text  # redacted, not merely absent
    assert "The token `<telegram-token>` was rejected by the server" in text
    assert not any(r.name == "httpx" and "/bot" in r.getMessage() for r in caplog.records)
    assert f"@{BOT_USERNAME}" in caplog.text  # the log does say who we are
