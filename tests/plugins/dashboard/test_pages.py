"""The dashboard in real headless Chromium against a real hub (Hypercorn on loopback) and real LXD
containers: sign-in and sign-out, the live activity feed, a permissions edit an agent's next exec
obeys, an approval given from the page, and a container stopped and started from the page.
Screenshots of every page land in each test's output folder (see conftest.shot)."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import time

import pytest

from claude_net.testing import require_component
from tests.hardening.conftest import http
from tests.plugins.lxd_backend.conftest import Containers, lxc_query, lxd_available  # noqa: F401 (a fixture)

from .conftest import shot, sign_in_page

pytestmark = pytest.mark.db("sqlite")  # the sessions' database paths run on both in test_sessions.py


@pytest.fixture(scope="module")
def box(lxd_available):
    """One running busybox container for the module's exec tests, deleted afterwards."""
    containers = Containers("cnd-" + str(int(time.time()))[-5:])
    try:
        yield containers.launch("box")
    finally:
        containers.delete_all()


def lxd(box_name: str) -> dict:
    prefix = box_name.rsplit("-", 2)[0]
    return {"include": [f"{prefix}-*"]}


def status_of(name: str) -> str:
    return lxc_query(f"/1.0/instances/{name}/state")["status"]


def no_page_errors(page) -> None:
    problems = [p for p in page.problems if "Content Security Policy" in p or p.startswith("page error")]
    assert not problems, problems


@pytest.mark.db("sqlite", "postgresql")
def test_sign_in_refuses_agent_and_wrong_tokens_then_signs_out(served, page, tmp_path):
    with served() as hub:
        admin = hub.token("chasclaude", admin=True)
        agent = hub.token("managerclaude")
        response = page.goto(hub.url + "/ui/")
        assert page.url.endswith("/ui/signin")
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        shot(page, tmp_path, "signin")

        page.get_by_label("Admin token").fill("cn_0123456789ab_" + "x" * 43)
        page.get_by_role("button", name="Sign in").click()
        assert page.get_by_role("alert").inner_text() == "That token is not valid."
        page.get_by_label("Admin token").fill(agent)
        page.get_by_role("button", name="Sign in").click()
        assert "only admins" in page.get_by_role("alert").inner_text()
        shot(page, tmp_path, "signin-refused")
        assert not page.context.cookies()

        page.get_by_label("Admin token").fill(admin)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/ui/machines")
        cookie = page.context.cookies()[0]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and admin not in str(page.context.storage_state())
        assert page.evaluate("document.cookie") == ""  # script cannot read the session
        page.locator("#machines tbody th", has_text="chasclaude").wait_for()
        assert page.locator("#machines tbody tr[data-node='managerclaude']").count() == 1
        shot(page, tmp_path, "machines")

        # a forged change from the page's own origin but without the CSRF header is refused
        forged = page.evaluate("""async () => {
            const r = await fetch('/api/permit', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                  body: JSON.stringify({source: 'managerclaude', target: '*'})});
            return [r.status, await r.json()];
        }""")
        assert forged[0] == 403 and forged[1]["code"] == "csrf_failed"

        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url("**/ui/signin")
        assert not page.context.cookies()
        page.goto(hub.url + "/ui/activity")
        assert page.url.endswith("/ui/signin")
        no_page_errors(page)


def test_a_live_activity_row_appears_after_an_api_exec(served, page, tmp_path, box):
    with served(lxd=lxd(box)) as hub:
        admin = hub.token("chasclaude", admin=True)
        agent = hub.token("managerclaude")
        assert http("POST", hub.url + "/api/permit", admin, {"source": "managerclaude", "target": box})[0] == 200
        sign_in_page(page, hub, admin)
        page.get_by_role("link", name="Activity").click()
        page.wait_for_url("**/ui/activity")
        page.locator("#live.on").wait_for()
        started = time.monotonic()
        status, body, _ = http("POST", hub.url + "/api/exec", agent,
                               {"target": box, "command": "echo from-the-agent; exit 3"})
        assert status == 200 and body["exitCode"] == 3, body
        row = page.locator("#activity tbody tr", has_text="echo from-the-agent")
        row.locator("td", has_text="ok").wait_for(timeout=5000)
        assert time.monotonic() - started < 5
        assert row.count() == 1  # the pending row was replaced by the final one, not added twice
        assert row.locator("td").nth(1).inner_text() == "managerclaude"
        shot(page, tmp_path, "activity")
        # on a phone's width nothing but the tables' own scrollers is wider than the screen
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, tmp_path, "activity-phone")
        page.set_viewport_size({"width": 1280, "height": 800})
        row.click()
        details = page.locator("#details")
        details.wait_for()
        text = details.inner_text()
        assert "Exit code\n3" in text.replace("\t", "\n") and "Duration" in text and box in text
        shot(page, tmp_path, "activity-details", full_page=False)
        page.keyboard.press("Escape")
        # filters: a type the exec is not hides it; search narrows the loaded rows
        page.get_by_label("Type").select_option("message")
        page.get_by_role("button", name="Apply").click()
        page.wait_for_function("document.querySelectorAll('#activity tbody tr').length === 0")
        page.get_by_label("Type").select_option("")
        page.get_by_role("button", name="Apply").click()
        row.wait_for()
        page.get_by_label("Search in detail").fill("no-such-text")
        assert row.is_hidden()
        # Apply asks the hub (q=): the rows come from the API's search, not only the loaded ones
        page.get_by_label("Search in detail").fill("FROM-THE-agent")
        page.get_by_role("button", name="Apply").click()
        row.wait_for()
        page.wait_for_function("document.querySelectorAll('#activity tbody tr').length === 1")
        href = page.get_by_role("link", name="Export (JSON)").get_attribute("href")
        assert "limit=1000" in href and "q=FROM-THE-agent" in href
        no_page_errors(page)


def test_a_matrix_edit_is_obeyed_by_the_agents_next_exec(served, page, tmp_path, box):
    with served(lxd=lxd(box)) as hub:
        admin = hub.token("chasclaude", admin=True)
        agent = hub.token("managerclaude")
        exec_body = {"target": box, "command": "echo allowed"}
        status, body, _ = http("POST", hub.url + "/api/exec", agent, exec_body)
        assert status == 403, body
        sign_in_page(page, hub, admin)
        page.goto(hub.url + "/ui/permissions")
        cell = page.locator(f"#grid button[data-source='managerclaude'][data-target='{box}']")
        cell.click()
        dialog = page.locator("#edit")
        dialog.get_by_label("exec", exact=True).first.check()
        dialog.get_by_label("file read").first.check()
        shot(page, tmp_path, "permissions-edit", full_page=False)
        dialog.get_by_role("button", name="Save…").click()
        confirm = page.locator("#confirm")
        assert "Grant managerclaude → " + box + ": exec, file_read" in confirm.inner_text()
        confirm.get_by_role("button", name="Cancel").click()  # cancelled: nothing changes
        assert http("POST", hub.url + "/api/exec", agent, exec_body)[0] == 403

        cell.click()
        dialog.get_by_label("exec", exact=True).first.check()
        dialog.get_by_role("button", name="Save…").click()
        confirm.get_by_role("button", name="Apply").click()
        page.locator("#status", has_text="done").wait_for()
        status, body, _ = http("POST", hub.url + "/api/exec", agent, exec_body)
        assert status == 200 and body["stdout"].strip() == "allowed", body
        page.locator(f"#grid button[data-source='managerclaude'][data-target='{box}'] .cap.allowed").first.wait_for()
        shot(page, tmp_path, "permissions")
        page.get_by_label("Effective view").check()
        assert page.locator("#grid caption").inner_text().startswith("Effective")
        rows = http("GET", hub.url + "/api/activity?type=permit", admin)[1]["events"]
        assert rows[0]["via"] == "dashboard" and rows[0]["from"] == "chasclaude"
        no_page_errors(page)


def test_a_container_is_stopped_and_started_from_the_page(served, page, tmp_path, lxd_available):
    containers = Containers("cnd-" + str(int(time.time() * 1000))[-6:])
    name = containers.launch("ctl")
    try:
        with served(lxd=lxd(name)) as hub:
            sign_in_page(page, hub, hub.token("chasclaude", admin=True))
            page.goto(hub.url + "/ui/containers")
            card = page.locator(f"article[data-node='{name}']")
            card.locator(".s-running").wait_for()
            card.get_by_role("button", name="Snapshot", exact=True).click()
            page.locator("#status", has_text="done").wait_for()
            card = page.locator(f"article[data-node='{name}']")
            card.get_by_role("button", name=f"Restore {name} to ").first.wait_for()
            shot(page, tmp_path, "containers")

            card.get_by_role("button", name="Stop…").click()
            confirm = page.locator("#confirm")
            assert "every process in it ends" in confirm.inner_text()
            confirm.get_by_role("button", name="Cancel").click()
            assert status_of(name) == "Running"
            card.get_by_role("button", name="Stop…").click()
            confirm.get_by_role("button", name=f"Stop {name}").click()
            page.locator(f"article[data-node='{name}'] .s-stopped").wait_for(timeout=60000)
            assert status_of(name) == "Stopped"
            page.locator(f"article[data-node='{name}']").get_by_role("button", name="Start").click()
            page.locator(f"article[data-node='{name}'] .s-running").wait_for(timeout=60000)
            assert status_of(name) == "Running"
            rows = http("GET", hub.url + "/api/activity?type=container", hub.token("auditor", admin=True))[1]["events"]
            ops = [r["detail"].split()[0] for r in rows if not r["detail"].startswith("list_snapshots")]
            assert ops == ["start", "stop", "snapshot"]
            # the page's own snapshot listings do not feed back into endless reloads
            assert sum(r["detail"].startswith("list_snapshots") for r in rows) < 30  # a loop makes hundreds
            assert {r["via"] for r in rows} == {"dashboard"}
            no_page_errors(page)
    finally:
        containers.delete_all()


def test_an_approval_given_from_the_page_releases_the_waiting_exec(served, page, tmp_path, box):
    require_component("the approvals plugin", importlib.util.find_spec("claude_net_approvals.service") is not None,
                      "plugins/approvals must provide the approvals API (contract §2)")
    with served(lxd=lxd(box)) as hub:
        admin = hub.token("chasclaude", admin=True)
        agent = hub.token("managerclaude")
        status, body, _ = http("POST", hub.url + "/api/permit", admin,
                               {"source": "managerclaude", "target": box, "capabilities": ["exec"], "ask": ["exec"]})
        assert status == 200, body
        sign_in_page(page, hub, admin)
        page.goto(hub.url + "/ui/approvals")
        page.get_by_text("Nothing waits for a decision.").wait_for()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(http, "POST", hub.url + "/api/exec", agent,
                                  {"target": box, "command": "echo approved-run", "approval_wait": 60}, timeout=90)
            card = page.locator("#pending article", has_text="echo approved-run")
            card.wait_for(timeout=10000)  # live: no reload
            assert not waiting.done()
            shot(page, tmp_path, "approvals")
            card.get_by_role("button", name="Approve once").click()
            status, body, _ = waiting.result(timeout=60)
        assert status == 200 and body["stdout"].strip() == "approved-run", body
        page.get_by_text("Nothing waits for a decision.").wait_for()
        history = page.locator("#history tbody tr", has_text="echo approved-run")
        history.wait_for()
        assert "approved" in history.inner_text() and "dashboard" in history.inner_text()
        shot(page, tmp_path, "approvals-history")
        no_page_errors(page)
