"""Malformed input never produces a 500, and the error shape is always the same."""

import json
import re

import pytest

from .testbox import TestBox


@pytest.mark.parametrize(
    "raw, status, code",
    [
        (b"{bad", 400, "invalid_json"),
        (b"[1,2]", 400, "invalid_json"),
        (b'"text"', 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b'{"to": "a", "message": "' + b"x" * (2 * 1024 * 1024) + b'"}', 413, "too_large"),
    ],
)
async def test_malformed_bodies(hub_harness, raw, status, code):
    async with hub_harness() as h:
        tok = await h.token("alpha")
        got, body = await h.call("POST", "/api/send", tok, raw=raw, headers={"Content-Type": "application/json"})
        assert (got, body["code"]) == (status, code) and body["ok"] is False and body["error"]


async def test_unknown_route_and_method(hub_harness):
    async with hub_harness() as h:
        status, body = await h.call("GET", "/api/nope")
        assert (status, body["code"]) == (404, "not_found")
        status, body = await h.call("DELETE", "/api/health")
        assert (status, body["code"]) == (405, "method_not_allowed")


@pytest.mark.parametrize("query, fragment", [("limit=abc", "limit"), ("limit=0", "limit"), ("wait=-1", "wait"),
                                             ("bogus=1", "bogus"), ("ack=maybe", "ack")])
async def test_bad_query_strings(hub_harness, query, fragment):
    async with hub_harness() as h:
        tok = await h.token("alpha")
        status, body = await h.call("GET", f"/api/inbox?{query}", tok)
        assert status == 400 and fragment in body["error"]


async def test_unexpected_exception_is_a_generic_500(hub_harness, caplog):
    from claude_net import Route, hookimpl

    class Buggy:
        __name__ = "buggy"

        @hookimpl
        def register_routes(self):
            async def boom(ctx):
                raise RuntimeError("secret internal detail")
            return [Route("GET", "/api/boom", boom)]

    async with hub_harness(plugins=[Buggy()]) as h:
        status, body = await h.call("GET", "/api/boom", await h.token("alpha"))
        assert status == 500 and body["code"] == "internal" and "secret" not in json.dumps(body)
        assert "secret internal detail" in caplog.text


async def test_openapi_documents_every_route(hub_harness):
    async with hub_harness(plugins=[TestBox()]) as h:
        status, doc = await h.call("GET", "/api/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.")
        documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        for rule in h.app.url_map.iter_rules():
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                # OpenAPI writes a path parameter as {name}, Quart's rule as <name>
                assert (method, re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)) in documented
        send = doc["paths"]["/api/send"]["post"]
        assert send["requestBody"]["content"]["application/json"]["schema"]["required"] == ["to", "message"]
        assert doc["paths"]["/api/health"]["get"]["security"] == []


async def test_request_id_is_echoed(hub_harness):
    async with hub_harness() as h:
        response = await h.client.get("/api/health", headers={"X-Request-Id": "abc123"})
        assert response.headers["X-Request-Id"] == "abc123"
