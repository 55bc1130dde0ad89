"""Client verbs ``claude-net exec`` and ``claude-net jobs``: commands, fan-out and background jobs
through a running hub (``CLAUDE_NET_URL``, ``CLAUDE_NET_TOKEN``), as any agent or admin would call
the API. See docs/jobs.md ("From the command line").

What another node printed is shown as data: on a terminal every control character but newline
and tab is made visible (:func:`claude_net.text.printable_block`), and in a fan-out every line
is prefixed with the target it came from, so one node's output cannot pass for another's or for
the hub's own lines. Piped (not a terminal), a single target's output is written as the hub
returned it.
"""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import quote, urlencode

#: characters that make TARGET a pattern over node names (docs/jobs.md, Fan-out)
PATTERN_CHARS = set("*?[")
#: exit status when the command's own status is unknown (timed out, cancelled, failed)
NO_STATUS = 124
#: exit status while an approval is pending (the command has not run)
PENDING = 3


def configure(sub) -> None:
    p = sub.add_parser("exec", help="run a command on a node, on several (a,b or web-*), or as a background job",
                       description="Run COMMAND on TARGET through the hub (uses CLAUDE_NET_URL and CLAUDE_NET_TOKEN). "
                                   "TARGET is a node name, a comma-separated list of names, or a pattern (*, ?, [...]) "
                                   "over node names: a fan-out, one result per target.")
    p.add_argument("target", help="node name, name,name,... or a pattern such as 'web-*'")
    p.add_argument("command", help="the command line (run by the node's shell)")
    p.add_argument("--background", "-b", action="store_true", help="start a job and return at once (see `jobs`)")
    p.add_argument("--timeout", type=float, help="seconds before the command is stopped")
    p.add_argument("--cwd", help="working directory in the node")
    p.add_argument("--thread", help="the thread this action belongs to")
    p.add_argument("--reply-to", type=int, metavar="ID", help="the message this action answers")
    p.add_argument("--json", action="store_true", help="print the hub's answer as JSON")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("jobs", help="list your background jobs, or show, follow or cancel one",
                       description="Without ID: your jobs, newest first (an admin sees everyone's). With ID: the "
                                   "job and its output; --follow prints the output live until the job ends.")
    p.add_argument("id", nargs="?", help="a job id")
    p.add_argument("--follow", "-f", action="store_true", help="print the output as it arrives until the job ends")
    p.add_argument("--cancel", action="store_true", help="cancel the job (its owner or an admin)")
    p.add_argument("--state", choices=["running", "exited", "cancelled", "timed_out", "interrupted", "failed"])
    p.add_argument("--target", help="only jobs on this node")
    p.add_argument("--thread", help="only jobs of this thread")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print the hub's answer as JSON")
    p.set_defaults(func=cmd_jobs)


def _show(text: str, stream=None, *, prefix: str = "") -> None:
    """Write command output: made harmless on a terminal, as is when piped (single target only)."""
    from .text import printable_block

    stream = stream or sys.stdout
    if not text:
        return
    if prefix or stream.isatty():
        text = printable_block(text)
    if prefix:
        text = "".join(f"{prefix}{line}\n" for line in text.splitlines())
    stream.write(text)
    stream.flush()


def _status(code: Any) -> int:
    return code if isinstance(code, int) and 0 <= code < 256 else NO_STATUS


def _pending(result: dict[str, Any]) -> int:
    from .text import printable

    approval = result.get("approval") or {}
    print(f"waiting for an admin's approval (id {printable(approval.get('id'))}); the command has not run. "
          f"Ask an admin (`claude-net approvals`), then run it again with the same arguments.", file=sys.stderr)
    return PENDING


def cmd_exec(args, ctx) -> int:
    from .text import printable

    body: dict[str, Any] = {"command": args.command}
    if PATTERN_CHARS & set(args.target):
        body["targets"] = args.target
    elif "," in args.target:
        body["targets"] = [t.strip() for t in args.target.split(",") if t.strip()]
    else:
        body["target"] = args.target
    for key in ("background", "timeout", "cwd", "thread"):
        value = getattr(args, key)
        if value not in (None, False):
            body[key] = value
    if args.reply_to is not None:
        body["reply_to"] = args.reply_to
    wait = (args.timeout or 3600) + 30 if not args.background else 60
    result = ctx.api("POST", "/api/exec", body, timeout=wait, errors_with_body=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if result.get("ok") else 1
    if result.get("pending"):
        return _pending(result)
    if "targets" in body:
        return _fan_out(result, args.background)
    if not result.get("ok"):
        _show(result.get("stdout") or "")
        _show(result.get("stderr") or "", sys.stderr)
        print(f"error: {printable(result.get('error'))} ({printable(result.get('code'))})", file=sys.stderr)
        return NO_STATUS if result.get("code") == "timeout" else 1
    if args.background:
        job = result["job"]
        print(f"job {printable(job['id'])} {printable(job['state'])} on {printable(job['target'])} "
              f"(follow: claude-net jobs {printable(job['id'])} --follow)")
        return 0
    _show(result.get("stdout") or "")
    _show(result.get("stderr") or "", sys.stderr)
    return _status(result.get("exitCode"))


def _fan_out(result: dict[str, Any], background: bool) -> int:
    from .text import printable

    if not result.get("ok") and "results" not in result:  # the call itself was refused
        print(f"error: {printable(result.get('error'))} ({printable(result.get('code'))})", file=sys.stderr)
        return 1
    worst = 0
    for item in result["results"]:
        target = printable(item.get("target"))
        if not item.get("ok"):
            worst = max(worst, 1)
            print(f"{target}: {printable(item.get('error'))} ({printable(item.get('code'))})")
            if item.get("code") == "approval_pending":
                print(f"{target}: approval {printable((item.get('approval') or {}).get('id'))} is waiting for an admin")
        elif background:
            job = item["job"]
            print(f"{target}: job {printable(job['id'])} {printable(job['state'])}")
            continue
        else:
            code = item.get("exitCode")
            worst = max(worst, 0 if code == 0 else 1)
            print(f"{target}: exit {printable(code)} ({item.get('durationMs', 0):.0f} ms)")
        _show(item.get("stdout") or "", prefix=f"{target}| ")
        _show(item.get("stderr") or "", prefix=f"{target}! ")
    summary = result.get("summary") or {}
    print(f"{len(result['results'])} target(s): {summary.get('ok', 0)} ok, {summary.get('failed', 0)} failed, "
          f"{summary.get('denied', 0)} denied", file=sys.stderr)
    return worst


def cmd_jobs(args, ctx) -> int:
    from .text import printable

    if args.id is None:
        if args.follow or args.cancel:
            print("error: --follow and --cancel need a job id", file=sys.stderr)
            return 2
        query = {k: v for k, v in (("state", args.state), ("target", args.target), ("thread", args.thread),
                                   ("limit", args.limit)) if v is not None}
        result = ctx.api("GET", "/api/jobs?" + urlencode(query))
        if args.json:
            print(json.dumps(result["jobs"], indent=2))
            return 0
        print(f"{'ID':<16}  {'STATE':<11} {'EXIT':>4}  {'TARGET':<20} {'OWNER':<16} {'STARTED':<20} COMMAND")
        for job in result["jobs"]:
            command = printable(job["command"])
            print(f"{printable(job['id']):<16}  {printable(job['state']):<11} {printable(job['exit_code']):>4}  "
                  f"{printable(job['target']):<20} {printable(job['owner']):<16} {printable(job['started_at'])[:19]:<20} "
                  f"{command if len(command) <= 60 else command[:59] + '…'}")
        if not result["jobs"]:
            print("no jobs", file=sys.stderr)
        return 0
    path = f"/api/jobs/{quote(args.id, safe='')}"
    if args.cancel:
        job = ctx.api("POST", path + "/cancel", {}, timeout=90)["job"]
        print(f"job {printable(job['id'])} {printable(job['state'])}"
              + (f" by {printable(job['ended_by'])}" if job.get("ended_by") else ""))
        return 0
    if args.follow:
        return _follow(ctx, path, args.json)
    job = ctx.api("GET", path)["job"]
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    _summary(job)
    _show(job.get("output") or "")
    return 0


def _summary(job: dict[str, Any], stream=None) -> None:
    from .text import printable

    stream = stream or sys.stderr
    ended = f", ended {printable(job['ended_at'])}" if job.get("ended_at") else ""
    why = f": {printable(job['error'])}" if job.get("error") else ""
    print(f"job {printable(job['id'])} on {printable(job['target'])} (by {printable(job['owner'])}): "
          f"{printable(job['state'])}, exit {printable(job.get('exit_code'))}, started "
          f"{printable(job['started_at'])}{ended}{why}" + (" [output truncated]" if job.get("truncated") else ""),
          file=stream)


def _follow(ctx, path: str, as_json: bool) -> int:
    end: dict[str, Any] | None = None
    for event, data in ctx.stream(path + "/output?offset=0&follow=1"):
        if as_json:
            print(json.dumps({"event": event, "data": data}), flush=True)
        elif event == "output":
            _show(data.get("text") or "")
        if event == "end":
            end = data
            break
    if end is None:
        print("error: the stream ended before the job did (the hub stopped?); follow it again", file=sys.stderr)
        return 1
    if not as_json:
        _summary(end)
    return _status(end.get("exit_code")) if end.get("state") == "exited" else NO_STATUS
