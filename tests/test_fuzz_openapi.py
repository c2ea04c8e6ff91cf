"""restmq/openapi.yaml: served at /static/openapi.yaml, consistent with the server's routes, and
a bounded schemathesis run (positive and negative data for every operation except the live
streams, tag `live`) against the live server: no 5xx, every error a JSON `{"error": ...}`,
status codes, content types, documented headers and JSON bodies as described.

`max_examples` per operation and mode is small (RESTMQ_FUZZ_SCALE multiplies it) so that the
whole run stays well under a minute. Needs the `hypothesis` and `schemathesis` (4.x) packages.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import hypothesis  # noqa: E402,F401 - installed by make test

import yaml  # noqa: E402 - after the skips: comes with schemathesis
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import FailedHealthCheck, Unsatisfiable  # noqa: E402

import schemathesis  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance,  # noqa: E402
                                               response_headers_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from tests.http_client import request  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "restmq" / "openapi.yaml"
SCALE = float(os.environ.get("RESTMQ_FUZZ_SCALE", "1"))
EXAMPLES = max(1, int(25 * SCALE))
CALLBACK_REPLY = re.compile(rb"([A-Za-z_$][A-Za-z0-9_$.]*)\((.*)\);?(\r\n)?\Z", re.DOTALL)


def document() -> dict:
    return yaml.safe_load(SPEC.read_text(encoding="utf-8"))


def test_openapi_yaml_is_served_as_a_static_file(H):
    reply = request(H, "GET", "/static/openapi.yaml")
    assert reply.status == 200
    assert reply.body == SPEC.read_bytes()
    assert yaml.safe_load(reply.body)["openapi"].startswith("3.0")
    assert (ROOT / "restmq" / "static" / "openapi.yaml").resolve() == SPEC.resolve()


def test_every_route_of_section_3_is_described():
    paths = document()["paths"]
    for path in ["/", "/q/", "/q/{q}", "/c/{q}", "/ws/{q}", "/sse/{q}", "/p/{q}", "/control/",
                 "/control/{q}", "/stats/", "/stats/{q}", "/j/{q}", "/queue", "/xmlrpc",
                 "/static/{path}", "/favicon.ico", "/robots.txt"]:
        assert path in paths, path
    live = {path for path, item in paths.items()
            if any("live" in op.get("tags", ()) for op in item.values() if isinstance(op, dict))}
    assert live == {"/c/{q}", "/ws/{q}", "/sse/{q}"}


HTTP_METHODS = ("get", "post", "delete", "put", "patch", "head", "options")


def test_undescribed_methods_are_405_with_the_described_ones_in_allow(H, redis):
    """docs/http-api.md#route-table: every method the description leaves out answers 405, and
    `Allow` lists exactly the described methods: the description and the server agree on the route
    table."""
    for path, item in document()["paths"].items():
        described = {m.upper() for m in item if m in HTTP_METHODS}
        concrete = path.replace("{q}", "test").replace("{path}", "index.html")
        for method in HTTP_METHODS:
            if method.upper() in described:
                continue
            reply = request(H, method.upper(), concrete)
            assert reply.status == 405, (method, concrete, reply.status)
            allow = {m.strip() for m in reply.header("Allow").split(",")}
            assert allow == described, (concrete, allow, described)


@pytest.fixture
def api(H):
    """The description as the server serves it, aimed at the test server."""
    try:
        schema = schemathesis.openapi.from_url(f"{H}/static/openapi.yaml")
    except Exception:  # served as application/octet-stream where no YAML type is known
        schema = schemathesis.openapi.from_dict(
            yaml.safe_load(request(H, "GET", "/static/openapi.yaml").body))
    return schema.exclude(tag="live")


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


def header(response, name: str) -> str | None:
    """A header of schemathesis' Response (lower-case names, lists of values)."""
    values = response.headers.get(name.lower())
    return ", ".join(values) if values else None


def check_reply(case, response) -> None:
    """What the generic checks do not know: the error shape of docs/http-api.md#errors."""
    status = response.status_code
    ctype = header(response, "Content-Type")
    assert status < 500, (status, response.content)
    if status >= 400 and case.method.upper() != "HEAD":
        assert ctype == "application/json", (status, ctype)
        body = json.loads(response.content)
        assert isinstance(body, dict) and list(body) == ["error"], body
        assert isinstance(body["error"], str) and body["error"]


def jsonp_callback(case) -> str | None:
    for source in (case.query or {}, case.body if isinstance(case.body, dict) else {}):
        value = source.get("callback")
        if isinstance(value, str) and value:
            return value
    return None


def without_waiting(case) -> None:
    """A valid `wait` on an empty queue holds the request for up to 20 s (a long poll): it is
    made 0, which the route accepts the same way (tests/test_waiters.py covers the waiting)."""
    for source in (case.query, case.body):
        value = source.get("wait") if isinstance(source, dict) else None
        if isinstance(value, str) and re.fullmatch(r"[0-9]+", value) and \
                len(value.lstrip("0")) <= 2 and int(value) <= 20:
            source["wait"] = "0"


def run_operation(operation, mode, base_url, failures):
    if mode is None:  # the examples of the description
        strategies = operation.schema.get_strategies_from_examples(operation)
        if not strategies:
            return
        from hypothesis import strategies as st
        strategy = st.one_of(strategies)
    else:
        strategy = operation.as_strategy(generation_mode=mode)
    label = "examples" if mode is None else mode.value

    # No shrinking: a failure is reported with schemathesis' curl command at once, and the
    # run stays bounded in time even when many operations fail.
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(case):
        without_waiting(case)
        response = case.call(base_url=base_url, timeout=5)
        check_reply(case, response)
        callback = jsonp_callback(case)
        wrapped = callback and response.status_code == 200 and \
            header(response, "Content-Type") == "application/json"
        if wrapped:  # /stats/ with a valid callback: `cb(<json>)`, not JSON itself
            m = CALLBACK_REPLY.match(response.content)
            assert m and m.group(1).decode() == callback, response.content
            json.loads(m.group(2))
            checks = [c for c in CHECKS if c is not response_schema_conformance]
        else:
            checks = CHECKS
        case.validate_response(response, checks=checks)

    try:
        run()
    except (Unsatisfiable, FailedHealthCheck):
        pass  # e.g. no negative data for an operation without parameters
    except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - collect, report them all
        failures.append(f"{operation.label} ({label}): {type(e).__name__}: {e}")


def test_schemathesis_run(H, redis, api):
    failures: list[str] = []
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 25
    for operation in operations:
        for mode in (None, GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            redis("FLUSHALL")
            run_operation(operation, mode, H, failures)
    assert not failures, "\n\n".join(failures)
