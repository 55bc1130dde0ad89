"""Fuzzing the HTTP API with schemathesis, from the hub's own OpenAPI document.

A real Hypercorn server (in a thread) serves the core with the permissions, activity, Telegram
(idle) and MCP plugins and the in-test ``TestBox`` backend (fuzzed commands never reach a real
machine). Every operation of ``GET /api/openapi.json`` is called with generated valid and invalid
inputs, once with an admin token and once with an agent token that holds a grant on ``box1``:

* no response is a 5xx;
* every response conforms to the document: documented status code, content type, and the body
  matches the response schema (schemathesis' default checks, including negative-data rejection:
  invalid input must be a 4xx);

and a stateful run (schemathesis' state machine over the links it infers between operations)
chains calls. The live stream (``/api/activity/stream``) never ends by design and is left out.
"""

from __future__ import annotations

import pytest

from tests.hardening.conftest import need_module

# the test tools (dev dependency group): skipped locally when missing, a failure under CI=true
need_module("hypothesis")
need_module("schemathesis")

import copy  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import zlib  # noqa: E402

import hypothesis  # noqa: E402
import schemathesis  # noqa: E402
from hypothesis import HealthCheck  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.core.failures import FailureGroup, as_reported_failure  # noqa: E402
from schemathesis.generation.feedback import FeedbackSources  # noqa: E402
from schemathesis.pytest._test_builder import build_operation_test  # noqa: E402
from schemathesis.python._constants.orchestrator import make_constants_value_source  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

import claude_net_activity  # noqa: E402
import claude_net_mcp  # noqa: E402
import claude_net_permissions  # noqa: E402
import claude_net_telegram  # noqa: E402
from claude_net.config import load_settings  # noqa: E402
from claude_net.http import create_app, openapi_document  # noqa: E402
from tests.core.testbox import TestBox  # noqa: E402

from .conftest import ThreadedHub, http  # noqa: E402


pytestmark = pytest.mark.slow

#: examples per operation; CN_FUZZ_EXAMPLES=500 CN_FUZZ_RANDOM=1 for a deeper, randomized
#: hunt (CI runs the fixed, derandomized 25)
EXAMPLES = int(os.environ.get("CN_FUZZ_EXAMPLES", "25"))
DERANDOMIZE = os.environ.get("CN_FUZZ_RANDOM", "") != "1"
NOT_FUZZED = ("/api/activity/stream",)


def fuzz_app(directory: str):
    settings = load_settings(None, environ={}, overrides={
        "database_url": f"sqlite+aiosqlite:///{directory}/hub.db",
        "messaging": {"max_wait": 0.2},
        "limits": {"exec_timeout_max": 5.0, "rate_per_minute": 0},
    })
    return create_app(settings, plugins=[TestBox(), claude_net_permissions, claude_net_activity, claude_net_telegram,
                                         claude_net_mcp], load_entrypoints=False)


# The document is built at collection time from an identical app (no server needed for that);
# test_served_document_is_the_fuzzed_one checks the running hub serves exactly this document.
DOCUMENT = openapi_document(fuzz_app(tempfile.mkdtemp(prefix="cn-fuzz-doc-")))


def _without_security(document: dict) -> dict:
    """The document the fuzzer reads: the same operations without the security requirement, so
    schemathesis does not negate the Authorization header we add (tokens are the identity tests'
    business: test_identity.py); the 401 answers stay documented."""
    fuzzed = copy.deepcopy(document)
    for item in fuzzed["paths"].values():
        for op in item.values():
            op.pop("security", None)
    fuzzed["components"].pop("securitySchemes", None)
    return fuzzed


#: OpenAPI links between operations: what one answer feeds into the next call. The stateful run
#: (schemathesis' state machine) follows them to chain calls: send -> ack the id; write -> read the
#: same file back; snapshot -> list and restore it; permit -> view the matrix.
LINKS = {
    ("/api/send", "post"): {
        "AckSent": {"operationId": "post_api_inbox_ack", "requestBody": {"ids": ["$response.body#/id"]}},
    },
    ("/api/inbox", "get"): {
        "AckFirst": {"operationId": "post_api_inbox_ack", "requestBody": {"ids": ["$response.body#/messages/0/id"]}},
    },
    ("/api/file/write", "post"): {
        "ReadBack": {"operationId": "post_api_file_read",
                     "requestBody": {"target": "$request.body#/target", "path": "$response.body#/path"}},
    },
    ("/api/container/snapshot", "post"): {
        "Restore": {"operationId": "post_api_container_restore",
                    "requestBody": {"name": "$response.body#/name", "snapshot": "$response.body#/snapshot"}},
        "List": {"operationId": "get_api_container_snapshots", "parameters": {"name": "$response.body#/name"}},
    },
    ("/api/container/stop", "post"): {
        "Start": {"operationId": "post_api_container_start", "requestBody": {"name": "$response.body#/name"}},
    },
    ("/api/permit", "post"): {
        "Matrix": {"operationId": "get_api_permissions"},
    },
}


def _with_links(document: dict) -> dict:
    for (path, method), links in LINKS.items():
        document["paths"][path][method]["responses"]["200"]["links"] = links
    return document


#: invalid input must be refused with one of these (413: a generated body over [limits] max_body_bytes)
REJECTIONS = ["400", "401", "403", "404", "405", "409", "413", "429"]
CONFIG = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}})
schema = schemathesis.openapi.from_dict(_with_links(_without_security(DOCUMENT)), config=CONFIG).exclude(
    path=list(NOT_FUZZED))


@pytest.fixture(scope="module")
def fuzz_hub():
    with ThreadedHub(fuzz_app(tempfile.mkdtemp(prefix="cn-fuzz-"))) as hub:
        hub.admin = hub.token("boss", admin=True)
        hub.agent = hub.token("box2")
        hub.token("box1")
        status, body, _ = http("POST", hub.url + "/api/permit", hub.admin,
                               {"source": "box2", "target": "box1", "capabilities": ["exec", "file_read"]})
        assert status == 200, body
        yield hub


def test_served_document_is_the_fuzzed_one(fuzz_hub):
    status, served, _ = http("GET", fuzz_hub.url + "/api/openapi.json")
    assert status == 200 and served == DOCUMENT
    assert len(DOCUMENT["paths"]) >= 17


SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
    suppress_health_check=list(HealthCheck),
)


#: operations whose inputs have rules JSON Schema (as published) cannot state — across fields, or
#: about the target's state — so a schema-valid request may rightly be a 400: the "schema-valid
#: input is accepted" check is off for them only (every other check, including no-5xx and response
#: conformance, still runs)
SEMANTIC_RULES = {
    "POST /api/permit": "allow:false takes no capabilities or expires; expires must be a future time",
    "POST /api/file/write": "content must decode as the given encoding (base64)",
    "GET /api/activity": "before, when a time, must be a real calendar date",
    "POST /api/file/read": "the path must name a file, not a directory (400 is_directory)",
}


def _call(case, hub, token):
    excluded = [positive_data_acceptance] if f"{case.method.upper()} {case.path}" in SEMANTIC_RULES else []
    response = case.call_and_validate(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=30,
                                      excluded_checks=excluded)
    assert response.status_code < 500, response.text
    return response


#: one test per operation, as ``schema.parametrize()`` makes them (same ids, same generated cases:
#: examples, coverage and fuzzing phases, derandomized per operation), but each operation's cases
#: are built when its test runs: built at collection, as ``parametrize()`` does, they cost ~30 s of
#: CPU in every process that collects the suite (each pytest-xdist worker) for the one that runs them
OPERATIONS = {result.ok().label: result.ok() for result in schema.get_all_operations()}
_FEEDBACK: dict[str, FeedbackSources] = {}


def fuzz(test: str, label: str, check) -> None:
    feedback = _FEEDBACK.setdefault(test, FeedbackSources(constants_value_source=make_constants_value_source(schema)))
    run = build_operation_test(config=schema.config, operation=OPERATIONS[label], test_func=SETTINGS(check),
                               given_kwargs={}, feedback=feedback)
    try:
        run()
    except FailureGroup as exc:
        raise as_reported_failure(exc) from None


@pytest.mark.parametrize("label", OPERATIONS, ids=str)
def test_admin_fuzz(label, fuzz_hub):
    def check(case):
        _call(case, fuzz_hub, fuzz_hub.admin)

    fuzz("admin", label, check)


@pytest.mark.parametrize("label", OPERATIONS, ids=str)
def test_agent_fuzz(label, fuzz_hub):
    def check(case):
        _call(case, fuzz_hub, fuzz_hub.agent)

    fuzz("agent", label, check)


NODES = ("box1", "box2", "boxoff")


def steer(case) -> None:
    """Point half of the generated calls at nodes that exist (and drop a random ``from``), so chains
    reach the backend instead of stopping at 404 unknown node / 403 from_mismatch. Deterministic:
    decided by the generated body itself."""
    body = case.body if isinstance(case.body, dict) else None
    if body is None or (case.meta is not None and case.meta.generation.mode.is_negative):
        return  # invalid input stays invalid: it must be refused as generated
    pick = zlib.crc32(repr(sorted(body.items(), key=str)).encode())
    if pick % 2:
        return
    body.pop("from", None)
    for key in ("target", "name", "to"):
        if isinstance(body.get(key), str) and body[key] not in NODES:
            body[key] = NODES[pick // 2 % len(NODES)]


@pytest.mark.parametrize("who", ["admin", "agent"])
def test_stateful_fuzz(fuzz_hub, who):
    """Chained calls along LINKS, as the admin and as an agent: same checks on every step."""
    token = getattr(fuzz_hub, who)

    class Workflow(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"base_url": fuzz_hub.url, "headers": {"Authorization": f"Bearer {token}"}, "timeout": 30}

        def before_call(self, case):
            steer(case)

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            assert response.status_code < 500, response.text
            excluded = [positive_data_acceptance] if f"{case.method.upper()} {case.path}" in SEMANTIC_RULES else []
            case.validate_response(response, excluded_checks=excluded, transport_kwargs=kwargs)

    assert Workflow.bundles, "schemathesis found no links to follow"
    Workflow.run(settings=hypothesis.settings(max_examples=max(30, EXAMPLES), stateful_step_count=6, deadline=None,
                                              derandomize=DERANDOMIZE,
                                              database=None, suppress_health_check=list(HealthCheck)))
