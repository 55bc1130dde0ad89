"""The Restore button: the echo of an action that ran under a ``snapshot: before`` rule carries
*Restore* (admin only, a second tap confirms); the restore is a recorded container action. On a
real LXD container a file deleted by the exec comes back; on TestBox the exact calls are checked."""

from __future__ import annotations

import json

import pytest

import claude_net_activity
import claude_net_approvals
import claude_net_lxd
import claude_net_permissions
import claude_net_telegram
from claude_net.testing import require_component
from tests.plugins.lxd_backend.conftest import RUN_ID, Containers, _lxd_state, lxc
from tg_helpers import ADMIN_ID, CHAT_ID, OTHER_ID, activity_rows


async def snapshot_grant(h, target):
    message = h.api.send_text(f"@chasclaude permit managerclaude {target} exec snapshot-before", user_id=ADMIN_ID,
                              chat_id=CHAT_ID)
    reply = await h.api.reply_to(message)
    assert reply["plain"] == (f"🔑 permitted managerclaude → {target}: exec; snapshot before each exec and file "
                              "write"), reply["plain"]
    return await h.token("managerclaude")


async def restore_card(h, needle):
    message = await h.api.wait_sent(lambda m: needle in m["plain"] and "📸 snapshot before" in m["plain"])
    return message["message_id"]


async def test_restore_needs_a_second_tap_and_is_recorded(tg_hub, box):
    plugins = [claude_net_telegram, claude_net_permissions, claude_net_activity, claude_net_approvals, box]
    async with tg_hub(plugins=plugins) as h:
        agent = await snapshot_grant(h, "box1")
        status, body = await h.call("POST", "/api/exec", agent, {"target": "box1", "command": "rm -rf data"})
        assert status == 200, body
        snapshot = box.snapshots["box1"][-1]
        assert snapshot.startswith("cn-before-")
        mid = await restore_card(h, "$ rm -rf data")
        lines = h.api.messages[mid]["plain"].splitlines()
        assert lines[0].startswith("✅ exec managerclaude → box1 · exit 0")
        assert lines[-1] == f"📸 snapshot before: {snapshot} of box1"
        assert h.api.buttons(mid) == ["⏪ Restore"]

        # not an admin: refused, nothing restored
        answer = await h.api.wait_answer(h.api.press(mid, "⏪ Restore", user_id=OTHER_ID))
        assert answer["show_alert"] is True and "not allowed" in answer["text"]
        # the first tap only asks for confirmation
        answer = await h.api.wait_answer(h.api.press(mid, "⏪ Restore", user_id=ADMIN_ID))
        assert answer["text"] == f"Tap ⚠️ to restore box1 to {snapshot}: changes made since are lost"
        await h.api.wait_message(mid, lambda m: [t for row in m["markup"] for t, _ in row] ==
                                 ["⚠️ Tap to confirm restore", "Keep"])
        assert not [c for c in box.calls if c[0] == "restore"]
        # Keep: back to the offer
        answer = await h.api.wait_answer(h.api.press(mid, "Keep", user_id=ADMIN_ID))
        assert answer["text"] == "kept as it is"
        await h.api.wait_message(mid, lambda m: [t for row in m["markup"] for t, _ in row] == ["⏪ Restore"])
        h.api.press(mid, "⏪ Restore", user_id=ADMIN_ID)
        await h.api.wait_message(mid, lambda m: [t for row in m["markup"] for t, _ in row][:1] ==
                                 ["⚠️ Tap to confirm restore"])
        answer = await h.api.wait_answer(h.api.press(mid, "⚠️ Tap to confirm restore", user_id=ADMIN_ID))
        assert answer["text"] == f"⏪ restoring box1 to {snapshot}…"
        shown = await h.api.wait_message(mid, lambda m: "restored" in m["plain"])
        assert shown["plain"].splitlines()[-1] == f"⏪ restored by chasclaude via telegram (Telegram user {ADMIN_ID})"
        assert h.api.buttons(mid) == []
        assert [c for c in box.calls if c[0] == "restore"] == [("restore", "box1", {"snapshot": snapshot})]
        rows = await activity_rows(h.hub, type="container")
        assert [(r["from_machine"], r["via"], r["detail"], r["result"]) for r in rows] == [
            ("chasclaude", "telegram", f"restore box1 {snapshot}", "ok")]
        refused = await activity_rows(h.hub, type="telegram", result="denied")
        assert [json.loads(r["data"])["reason"] for r in refused] == ["not_admin"]


@pytest.fixture(scope="module")
def lxd_restore_box():
    ok, why = _lxd_state()
    require_component("LXD", ok, why)
    boxes = Containers(RUN_ID)
    try:
        yield boxes.launch("tgrestore")
    finally:
        boxes.delete_all()


async def test_restore_brings_back_a_file_deleted_by_the_exec_in_lxd(tg_hub, lxd_restore_box):
    name = lxd_restore_box
    lxc("exec", name, "--", "sh", "-c", "echo precious > /root/keep.txt")
    plugins = [claude_net_telegram, claude_net_permissions, claude_net_activity, claude_net_approvals, claude_net_lxd]
    async with tg_hub(plugins=plugins, settings_overrides={"lxd": {"include": [f"{RUN_ID}-*"]}}) as h:
        agent = await snapshot_grant(h, name)
        status, body = await h.call("POST", "/api/exec", agent, {"target": name, "command": "rm /root/keep.txt"})
        assert status == 200 and body["exitCode"] == 0, body
        assert lxc("exec", name, "--", "cat", "/root/keep.txt", check=False).returncode != 0
        mid = await restore_card(h, "$ rm /root/keep.txt")
        h.api.press(mid, "⏪ Restore", user_id=ADMIN_ID)
        await h.api.wait_message(mid, lambda m: [t for row in m["markup"] for t, _ in row][:1] ==
                                 ["⚠️ Tap to confirm restore"])
        h.api.press(mid, "⚠️ Tap to confirm restore", user_id=ADMIN_ID)
        await h.api.wait_message(mid, lambda m: "restored" in m["plain"], timeout=60)
        assert lxc("exec", name, "--", "cat", "/root/keep.txt").stdout == "precious\n"
