"""The ``[mcp]`` configuration section (a plain dataclass: imported by the CLI, keep it light)."""

from __future__ import annotations

from dataclasses import dataclass

from claude_net import help_field

#: tool results longer than this many characters (per stream, file or listing) are cut, with a note
DEFAULT_MAX_OUTPUT = 20_000


@dataclass
class McpSettings:
    enabled: bool = help_field(True, "Serve the MCP tools over streamable HTTP at `path` on the hub itself.")
    path: str = help_field("/mcp", "Where the streamable HTTP endpoint is mounted (must not be under /api).")
    allowed_origins: list[str] = help_field(
        [],
        "Browser origins allowed to call the endpoint besides the local ones (http(s)://localhost, "
        "127.0.0.1 and [::1], any port), e.g. 'https://console.example.org' or 'http://10.0.3.1:*'; "
        "'*' allows any. Requests without an Origin header (every non-browser client) are always allowed; "
        "any other origin gets 403, as the MCP specification requires.",
    )
    stateless: bool = help_field(
        True,
        "Answer every request on its own, with no server-side session: any hub replica can serve any "
        "request and there is nothing to expire. false keeps an Mcp-Session-Id per client.",
    )
    json_response: bool = help_field(False, "Answer POSTs with plain JSON instead of an SSE stream.")
    session_idle_timeout: float = help_field(
        600.0, "Stateful mode: seconds a session may go with no request in flight (and no open event stream) "
               "before it is closed; the client then opens a new one.")
    max_sessions_per_node: int = help_field(
        16, "Stateful mode: most sessions one node (all its tokens together) may hold. Opening one more closes "
            "that node's least recently used idle session; if none is idle the new one is refused (429 "
            "too_many_sessions).")
    max_output: int = help_field(DEFAULT_MAX_OUTPUT, "Longest text a tool returns per output stream, file or "
                                                     "listing, in characters; longer output is cut with a note.")
    request_timeout: float = help_field(60.0, "Seconds a tool waits for the hub's answer; exec waits for its "
                                              "own timeout plus a 15 s margin.")


SECTIONS = {"mcp": McpSettings}
