"""Exec on an SSH node, through the hub's HTTP API, against a real sshd."""

from __future__ import annotations

import asyncio
import time

from claude_net import ExecOptions


async def test_exec_runs_on_the_node_and_returns_the_result_shape(ssh_hub):
    async with ssh_hub() as s:
        body = await s.ok("echo hello; echo oops >&2; exit 3")
        assert body["ok"] is True
        assert body["stdout"] == "hello\n"
        assert body["stderr"] == "oops\n"
        assert body["exitCode"] == 3
        assert "truncated" not in body
        assert body["durationMs"] > 0
        # the marker line that reports the PID never reaches the caller
        assert "claude-net-pid" not in (await s.ok("echo $$"))["stdout"]


async def test_calls_share_one_pooled_connection(ssh_hub):
    async with ssh_hub() as s:
        peers = {(await s.ok("echo $SSH_CLIENT"))["stdout"].split()[1] for _ in range(5)}
        assert len(peers) == 1  # same client port: one connection, reused


async def test_quoting_of_command_cwd_and_env(ssh_hub, tmp_path):
    odd_dir = tmp_path / "it's a \"dir\" $HOME; rm -rf"
    odd_dir.mkdir()
    async with ssh_hub() as s:
        body = await s.ok("pwd; printf '%s|' \"$A\" \"$B\"",
                          cwd=str(odd_dir), env={"A": "it's $(id) `x` \"q\"", "B": "line1\nline2"})
        assert body["stdout"] == f"{odd_dir}\nit's $(id) `x` \"q\"|line1\nline2|"
        body = await s.ok("echo \"$0\"; echo 'single' \"double\" $((6*7)); true && false || echo fallback")
        assert body["stdout"].split("\n", 1)[1] == "single double 42\nfallback\n"


async def test_node_cwd_env_and_shell_with_call_overrides(ssh_hub, sshd, tmp_path):
    node = sshd.node_config(cwd=str(tmp_path), env={"WHO": "node", "KEEP": "kept"}, shell="/bin/sh")
    async with ssh_hub(nodes={"ser-8": node}) as s:
        body = await s.ok("pwd; echo $WHO $KEEP; readlink /proc/$$/exe")
        assert body["stdout"].splitlines()[:2] == [str(tmp_path), "node kept"]
        assert body["stdout"].splitlines()[2] in ("/usr/bin/dash", "/bin/dash")
        body = await s.ok("pwd; echo $WHO $KEEP", cwd="/", env={"WHO": "call"})
        assert body["stdout"] == "/\ncall kept\n"
        status, body = await s.exec("pwd", cwd="/does/not/exist")
        assert status == 400 and body["code"] == "no_such_cwd" and "/does/not/exist" in body["error"], body


async def test_output_is_bytes_safe_and_capped_per_stream(ssh_hub):
    async with ssh_hub(limits={"exec_max_output": 1000}) as s:
        result = await s.backend.execute("ser-8", r"printf '\377\376ok\n'; printf '\200' >&2",
                                         ExecOptions(timeout=10, max_output=1000))
        assert result.stdout == b"\xff\xfeok\n" and result.stderr == b"\x80"
        assert result.exit_code == 0 and not result.truncated

        body = await s.ok(r"printf '\377ok'")
        assert body["stdout"] == "\ufffdok"  # the core decodes with replacement

        body = await s.ok("head -c 5000000 /dev/zero | tr '\\0' a; head -c 3000 /dev/zero >&2; exit 7")
        assert len(body["stdout"]) == 1000 and set(body["stdout"]) == {"a"}
        assert len(body["stderr"]) == 1000
        assert body["truncated"] is True
        assert body["exitCode"] == 7  # the rest was drained, the command finished normally


async def test_stdin_is_closed(ssh_hub):
    async with ssh_hub() as s:
        started = time.monotonic()
        body = await s.ok("cat; echo done", timeout=10)
        assert body["stdout"] == "done\n" and time.monotonic() - started < 5


async def test_timeout_ends_the_remote_process_group_and_the_connection_stays_usable(ssh_hub, tmp_path):
    flag = tmp_path / "should-not-exist"
    async with ssh_hub() as s:
        await s.ok("true")
        started = time.monotonic()
        status, body = await s.exec(f"echo started; sleep 41.25 & sleep 42.25; touch {flag}", timeout=1)
        elapsed = time.monotonic() - started
        assert status == 504, body
        assert body["code"] == "timeout"
        assert body["stdout"] == "started\n"
        assert elapsed < 4, elapsed
        # both the foreground and the background child are gone on the node
        check = await s.ok("pgrep -f 'sleep 4[12][.]25' || echo none")
        assert check["stdout"] == "none\n"
        assert not flag.exists()
        # the pooled connection is still the same and still works
        assert (await s.ok("echo alive"))["stdout"] == "alive\n"
        events = [e for e in s.recorder.of_type("exec") if e.result == "error"]
        assert events and events[-1].data["code"] == "timeout"


async def test_channels_are_bounded_and_extra_calls_wait_their_turn(ssh_hub):
    async with ssh_hub(max_channels=2) as s:
        await s.ok("true")
        started = time.monotonic()
        results = await asyncio.gather(*(s.exec("sleep 0.4; echo $SSH_CLIENT") for _ in range(6)))
        elapsed = time.monotonic() - started
        assert all(status == 200 for status, _ in results), results
        assert len({body["stdout"].split()[1] for _, body in results}) == 1
        assert elapsed >= 1.1, elapsed  # three waves of two, not six at once


async def test_more_concurrent_calls_than_max_sessions_all_succeed(ssh_hub):
    async with ssh_hub() as s:  # sshd MaxSessions 10, default max_channels 8
        results = await asyncio.gather(*(s.exec(f"sleep 0.2; echo {i}") for i in range(30)))
        assert [body.get("stdout") for _, body in results] == [f"{i}\n" for i in range(30)], \
            [body for _, body in results if "stdout" not in body]


async def test_a_plain_token_without_a_grant_is_denied(ssh_hub):
    async with ssh_hub() as s:
        status, body = await s.exec("id", token=s.plain)
        assert status == 403 and body["code"] == "denied"
        assert s.recorder.of_type("exec", "denied")


async def test_a_cancelled_call_stops_its_remote_command(ssh_hub):
    async with ssh_hub() as s:
        task = asyncio.ensure_future(s.backend.execute("ser-8", "sleep 43.75", ExecOptions(timeout=30)))
        for _ in range(100):
            if (await s.ok("pgrep -f 'sleep 43[.]75' || true"))["stdout"]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the command never started")
        task.cancel()
        for _ in range(100):
            if (await s.ok("pgrep -f 'sleep 43[.]75' || echo gone"))["stdout"] == "gone\n":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the command outlived the cancelled call")


async def test_many_simultaneous_timeouts_all_end_their_commands(ssh_hub):
    async with ssh_hub() as s:
        results = await asyncio.gather(*(s.exec(f"sleep 44.{i}5", timeout=1) for i in range(8)))
        assert [status for status, _ in results] == [504] * 8, results
        for _ in range(60):
            if (await s.ok("pgrep -f 'sleep 44[.][0-9]5' || echo gone"))["stdout"] == "gone\n":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("some timed-out commands are still running")


async def test_a_configured_shell_runs_as_a_child_of_the_login_shell(ssh_hub, tmp_path):
    # A server whose sessions do not preset SHLVL (like a stock one): the login shell is level 1,
    # the configured shell must see level 2 — it would see 1, and source ~/.bashrc a second time,
    # if it were exec'ed in place of the login shell.
    from claude_net_ssh.testserver import PrivateSshd

    with PrivateSshd(tmp_path / "stock", skip_bashrc=False) as stock:
        node = stock.node_config(shell="/bin/bash")
        async with ssh_hub(nodes={"ser-8": node}) as s:
            body = await s.ok("echo $SHLVL; exit 5")
            assert body["stdout"] == "2\n" and body["exitCode"] == 5
            status, body = await s.exec("sleep 45.5", timeout=1)
            assert status == 504
            for _ in range(100):  # the kill runs on a second channel right after the 504
                if (await s.ok("pgrep -f 'sleep 45[.]5' || echo gone"))["stdout"] == "gone\n":
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the timed-out command outlived its call")
