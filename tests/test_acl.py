"""The ACL file end to end (docs/access-control.md, docs/http-api.md#processing-order): real
`twistd restmq` servers with ACL files, clients bound to different loopback source addresses
(127.0.0.X: Linux accepts any 127/8 source), every route of every category with no, wrong and right
credentials."""
from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import tempfile
import xmlrpc.client
from dataclasses import dataclass
from typing import Callable

import pytest

from tests.conftest import ServerProcess
from tests.http_client import Reply, read_head
from tests.resp import seed_queue, snapshot
from tests.util import wait_until

HTML = "text/html; charset=UTF-8"
JSON = "application/json"
CHALLENGE = 'Basic realm="RestMQ Restricted Access"'
UNAUTHORIZED = {"error": "unauthorized"}
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
WS_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# -- clients with a chosen source address ------------------------------------------------------


def send(port: int, source: str, method: str, path: str, body: bytes | str | None = None,
         headers: dict[str, str] | None = None, form: dict | None = None,
         stream: bool = False) -> Reply:
    """One request from `source`; with `stream`, a 200 body is not read (a live stream)."""
    headers = dict(headers or {})
    if form is not None:
        from urllib.parse import urlencode
        body = urlencode(form)
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    if isinstance(body, str):
        body = body.encode("utf-8")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15,
                                      source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        if stream and response.status == 200:
            return Reply(response.status, response.headers, b"")
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


@dataclass
class Handshake:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def ws_handshake(port: int, source: str, path: str, headers: dict[str, str] | None = None,
                 upgrade: bool = True) -> Handshake:
    """A raw WebSocket opening handshake from `source`; the connection is closed afterwards."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {WS_KEY}",
                  "Sec-WebSocket-Version: 13"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock = socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0))
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return Handshake(*read_head(sock))
    finally:
        sock.close()


def basic(user: str, password: str, scheme: str = "Basic") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"{scheme} {token}"}


def xml_call(method: str, *params) -> bytes:
    return xmlrpc.client.dumps(params, methodname=method).encode()


def xml_result(reply) -> object:
    assert reply.status == 200, reply
    assert reply.header("Content-Type") == "text/xml"
    return xmlrpc.client.loads(reply.body)[0][0]


# -- Redis state -------------------------------------------------------------------------------



def seed(redis) -> None:
    """Queue `aclq` with one pending message `aclq:1` = hello, started."""
    seed_queue(redis, "aclq")


def assert_denied(reply, challenge: bool) -> None:
    assert reply.status == 401, reply
    assert reply.header("Content-Type") == JSON
    assert json.loads(reply.body) == UNAUTHORIZED
    assert reply.header("WWW-Authenticate") == (CHALLENGE if challenge else None)


# -- the ACL file of the route table -----------------------------------------------------------

# Every category admits one address; four of the five want credentials. The file also uses
# the syntax freedoms of docs/access-control.md#acl-file (`:` delimiter, option case, comments,
# surrounding blanks).
TABLE_ACL = """\
# RestMQ test ACL
; every category restricted
[rest:producer]
hosts_allow = 127.0.0.2
hosts_deny = all
username = prod
password = p:ss:w0rd

[rest:consumer]
HOSTS_ALLOW: 127.0.0.3
Hosts_Deny =   all
username = cons
password =  s3cret%(x)s

[rest:admin]
hosts_allow = 127.0.0.7
hosts_deny = all
username = adm
password = adm1n

[comet:consumer]
hosts_allow = 127.0.0.4
hosts_deny = all

[websocket:consumer]
hosts_allow = 127.0.0.5
hosts_deny = all
username = wsuser
password = wspass

[sse:consumer]
hosts_allow = 127.0.0.6
hosts_deny = all
username = sseuser
password = ssepass

[unknown:section]
hosts_deny = all
"""

CATEGORY = {
    # category: (allowed address, credentials or None)
    "rest:producer": ("127.0.0.2", ("prod", "p:ss:w0rd")),
    "rest:consumer": ("127.0.0.3", ("cons", "s3cret%(x)s")),
    "rest:admin": ("127.0.0.7", ("adm", "adm1n")),
    "comet:consumer": ("127.0.0.4", None),
    "websocket:consumer": ("127.0.0.5", ("wsuser", "wspass")),
    "sse:consumer": ("127.0.0.6", ("sseuser", "ssepass")),
}
DENIED = "127.0.0.9"


@contextlib.contextmanager
def acl_server(redis_port: int, text: str, *args: str):
    """A server with an ACL file holding `text`; yields (server, path of the file)."""
    fd, path = tempfile.mkstemp(prefix="restmq-acl-", suffix=".conf")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    server = ServerProcess(redis_port, "--acl", path, *args)
    try:
        server.start()
        yield server, path
    finally:
        server.stop()
        os.unlink(path)
        assert "Traceback" not in server.final_log, server.final_log


@pytest.fixture(scope="module")
def table_server(redis_proc):
    with acl_server(redis_proc.port, TABLE_ACL) as (server, _):
        yield server


def redis_description(redis) -> str:
    return f"<Redis Connection: 127.0.0.1:{redis.sock.getpeername()[1]} - 10 connection(s)>"


# -- the routes --------------------------------------------------------------------------------


@dataclass
class Route:
    id: str
    category: str
    method: str
    path: str
    form: dict | None = None
    body: bytes | None = None
    check: Callable | None = None  # check(reply, redis) for the allowed reply
    kind: str = "http"  # http, stream, websocket


def _text(expected: bytes, ctype: str = HTML):
    def check(reply, redis):
        assert reply.status == 200, reply
        assert reply.header("Content-Type") == ctype
        assert reply.body == expected
    return check


def _json(expected, ctype: str = HTML, crlf: bool = True):
    def check(reply, redis):
        assert reply.status == 200, reply
        assert reply.header("Content-Type") == ctype
        assert reply.body.endswith(b"\r\n") == crlf
        want = expected(redis) if callable(expected) else expected
        assert json.loads(reply.body) == want
    return check


def _xml(expected):
    def check(reply, redis):
        assert xml_result(reply) == expected
    return check


def _redirect(location: str):
    def check(reply, redis):
        assert reply.status == 302, reply
        assert reply.header("Location") == location
        assert reply.body == b""
    return check


def _stream(ctype: str):
    def check(reply, redis):
        assert reply.status == 200, reply
        assert reply.header("Content-Type") == ctype
    return check


def _websocket(reply, redis):
    assert reply.status == 101, reply
    assert reply.header("Upgrade").lower() == "websocket"
    assert reply.header("Sec-WebSocket-Accept") == WS_ACCEPT


def _queue_page(reply, redis):
    assert reply.status == 200, reply
    assert reply.header("Content-Type") == HTML
    assert b'<li><a href="/q/aclq">/q/aclq</a></li>' in reply.body


def _stats_all(reply, redis):
    assert reply.status == 200, reply
    assert reply.header("Content-Type") == JSON
    assert json.loads(reply.body) == {
        "queues": {"aclq": {"name": "aclq", "len": 1, "status": 1, "policy": "",
                            "policy_name": "broadcast"}},
        "redis": redis_description(redis), "count": 1}


def _jobs_page(reply, redis):
    assert reply.status == 200, reply
    assert reply.header("Content-Type") == HTML
    assert b"jobs in queue aclq" in reply.body and b"<li>aclq:1</li>" in reply.body


HARD_GOT = {"key": "aclq:1", "value": "hello", "count": 0}
STALE = "1.1.0123456789abcdef"


def _leased(reply, redis):
    assert reply.status == 200, reply
    assert reply.header("Content-Type") == JSON
    [message] = json.loads(reply.body)["messages"]
    assert (message["key"], message["value"], message["deliveries"]) == ("aclq:1", "hello", 1)
    assert redis("ZCARD", "aclq:inflight") == 1


def _config(stored: set[str]):
    def check(reply, redis):
        assert reply.status == 200, reply
        assert reply.header("Content-Type") == JSON
        body = json.loads(reply.body)
        assert (body["queue"], set(body["set"])) == ("aclq", stored)
    return check


def _info(reply, redis):
    assert reply.status == 200, reply
    assert reply.header("Content-Type") == JSON
    assert json.loads(reply.body)["pending"] == 1


def _redriven(reply, redis):
    assert reply.status == 200, reply
    assert reply.header("Content-Type") == JSON
    assert json.loads(reply.body) == {"queue": "aclq", "moved": [{"from": "aclq:1",
                                                                  "to": "other:1"}],
                                      "remaining": 0, "stopped": None}

ROUTES = [
    # rest:producer
    Route("POST /", "rest:producer", "POST", "/", form={"queue": "aclq", "value": "v"},
          check=_text(b"aclq:2\r\n")),
    Route("POST /q/<q>", "rest:producer", "POST", "/q/aclq", form={"value": "v"},
          check=_text(b"aclq:2\r\n")),
    Route("DELETE /q/<q>", "rest:producer", "DELETE", "/q/aclq",
          check=_json({"queue": "aclq", "status": 1})),
    Route("POST /queue add", "rest:producer", "POST", "/queue",
          form={"body": json.dumps({"cmd": "add", "queue": "aclq", "value": "v"})},
          check=_json({"queue": "aclq", "value": "v", "key": "aclq:2"}, JSON, crlf=False)),
    Route("POST /queue get", "rest:producer", "POST", "/queue",
          form={"body": json.dumps({"cmd": "get", "queue": "aclq"})},
          check=_json({"queue": "aclq", "value": "hello", "key": "aclq:1", "count": 1}, JSON,
                      crlf=False)),
    Route("POST /queue take", "rest:producer", "POST", "/queue",
          form={"msg": json.dumps({"cmd": "take", "queue": "aclq"})},
          check=_json({"queue": "aclq", "value": "hello", "key": "aclq:1"}, JSON,
                      crlf=False)),
    Route("POST /p/<q>", "rest:producer", "POST", "/p/aclq", form={"policy": "roundrobin"},
          check=_text(b"OK\r\n")),
    Route("POST /control/<q>", "rest:producer", "POST", "/control/aclq",
          form={"status": "stop"}, check=_json({"stat": {"queue": "aclq", "status": 0}})),
    Route("POST /batch/<q>", "rest:producer", "POST", "/batch/aclq", body=b'["v"]',
          check=_json({"queue": "aclq", "keys": ["aclq:2"]}, JSON, crlf=False)),
    Route("xmlrpc set", "rest:producer", "POST", "/xmlrpc", body=xml_call("set", "aclq", "v"),
          check=_xml("aclq:2")),
    Route("xmlrpc policy_set", "rest:producer", "POST", "/xmlrpc",
          body=xml_call("policy_set", "aclq", "roundrobin"), check=_xml("OK")),
    Route("xmlrpc status_set", "rest:producer", "POST", "/xmlrpc",
          body=xml_call("status_set", "aclq", "stop"), check=_xml("stop")),
    # rest:consumer
    Route("GET / redirect", "rest:consumer", "GET", "/",
          check=_redirect("/static/index.html")),
    Route("GET /?queue=", "rest:consumer", "GET", "/?queue=aclq", check=_json(HARD_GOT)),
    Route("GET /q/<q>", "rest:consumer", "GET", "/q/aclq", check=_json(HARD_GOT)),
    Route("GET /q/", "rest:consumer", "GET", "/q/", check=_queue_page),
    Route("GET /p/<q>", "rest:consumer", "GET", "/p/aclq",
          check=_json({"queue": "aclq", "value": "broadcast"})),
    Route("GET /stats/", "rest:consumer", "GET", "/stats/", check=_stats_all),
    Route("GET /stats/<q>", "rest:consumer", "GET", "/stats/aclq",
          check=_json(lambda r: {"redis": redis_description(r), "queue": "aclq", "len": 1},
                      JSON, crlf=False)),
    Route("GET /control/<q>", "rest:consumer", "GET", "/control/aclq",
          check=_json(lambda r: {"redis": redis_description(r), "queue": "aclq",
                                 "status": {"queue": "aclq", "status": 1}}, JSON)),
    Route("GET /control/", "rest:consumer", "GET", "/control/",
          check=_json(lambda r: {"redis": redis_description(r),
                                 "queues": {"aclq": {"queue": "aclq", "status": 1}},
                                 "count": 1}, JSON)),
    # /j/ had no ACL in the protocol; it lists pending keys, so it is a consumer's read.
    Route("GET /j/<q>", "rest:consumer", "GET", "/j/aclq", check=_jobs_page),
    Route("xmlrpc get", "rest:consumer", "POST", "/xmlrpc", body=xml_call("get", "aclq"),
          check=_xml("hello")),
    Route("xmlrpc take", "rest:consumer", "POST", "/xmlrpc", body=xml_call("take", "aclq"),
          check=_xml("hello")),
    Route("xmlrpc len", "rest:consumer", "POST", "/xmlrpc", body=xml_call("len", "aclq"),
          check=_xml(1)),
    Route("xmlrpc policy_get", "rest:consumer", "POST", "/xmlrpc",
          body=xml_call("policy_get", "aclq"), check=_xml("broadcast")),
    Route("xmlrpc status_get", "rest:consumer", "POST", "/xmlrpc",
          body=xml_call("status_get", "aclq"), check=_xml("start")),
    Route("xmlrpc queues", "rest:consumer", "POST", "/xmlrpc", body=xml_call("queues"),
          check=_xml(["aclq"])),
    # leases: consumers
    Route("POST /claim/<q>", "rest:consumer", "POST", "/claim/aclq", form={"limit": "5"},
          check=_leased),
    Route("POST /pop/<q>", "rest:consumer", "POST", "/pop/aclq", form={"limit": "5"},
          check=_json({"queue": "aclq", "messages": [{"key": "aclq:1", "value": "hello"}]},
                      JSON, crlf=False)),
    Route("POST /ack/<q>", "rest:consumer", "POST", "/ack/aclq", form={"receipt": STALE},
          check=_json({"queue": "aclq", "acked": [], "stale": [STALE]}, JSON, crlf=False)),
    Route("POST /extend/<q>", "rest:consumer", "POST", "/extend/aclq",
          form={"receipt": STALE, "lease": "5"},
          check=_json({"queue": "aclq", "extended": [], "stale": [STALE]}, JSON, crlf=False)),
    Route("POST /release/<q>", "rest:consumer", "POST", "/release/aclq",
          form={"receipt": STALE},
          check=_json({"queue": "aclq", "released": [], "dead_lettered": [], "stale": [STALE]},
                      JSON, crlf=False)),
    Route("GET /config/<q>", "rest:consumer", "GET", "/config/aclq", check=_config(set())),
    Route("GET /info/<q>", "rest:consumer", "GET", "/info/aclq", check=_info),
    Route("GET /peek/<q>", "rest:consumer", "GET", "/peek/aclq",
          check=_json({"queue": "aclq", "messages": [{"key": "aclq:1", "value": "hello",
                                                      "priority": 0}], "next": None},
                      JSON, crlf=False)),
    # leases: administration
    Route("POST /redrive/<q>", "rest:admin", "POST", "/redrive/aclq", form={"to": "other"},
          check=_redriven),
    Route("POST /config/<q>", "rest:admin", "POST", "/config/aclq", form={"lease": "9"},
          check=_config({"lease"})),
    Route("DELETE /config/<q>", "rest:admin", "DELETE", "/config/aclq",
          check=_json({"queue": "aclq", "deleted": False}, JSON, crlf=False)),
    # live consumers
    Route("GET /c/<q>", "comet:consumer", "GET", "/c/aclq", check=_stream("text/plain"),
          kind="stream"),
    Route("GET /c/<q>?callback", "comet:consumer", "GET", "/c/aclq?callback=cb",
          check=_stream("text/plain"), kind="stream"),
    Route("GET /ws/<q>", "websocket:consumer", "GET", "/ws/aclq", check=_websocket,
          kind="websocket"),
    Route("GET /sse/<q>", "sse:consumer", "GET", "/sse/aclq",
          check=_stream("text/event-stream"), kind="stream"),
]


def perform(port: int, route: Route, source: str, headers: dict[str, str]):
    if route.kind == "websocket":
        return ws_handshake(port, source, route.path, headers)
    return send(port, source, route.method, route.path, body=route.body, headers=headers,
                form=route.form, stream=route.kind == "stream")


CREDENTIALS = ("none", "wrong", "right")


def credential_headers(category: str, which: str) -> dict[str, str]:
    _, creds = CATEGORY[category]
    user, password = creds or ("someone", "something")
    if which == "none":
        return {}
    if which == "wrong":
        return basic(user, password + "x")
    return basic(user, password)


@pytest.mark.parametrize("which", CREDENTIALS)
@pytest.mark.parametrize("where", ["allowed", "denied"])
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_route_table(table_server, redis, route, where, which):
    allowed_address, creds = CATEGORY[route.category]
    source = allowed_address if where == "allowed" else DENIED
    seed(redis)
    before = snapshot(redis)
    reply = perform(table_server.port, route, source, credential_headers(route.category, which))
    if where == "denied":
        assert_denied(reply, challenge=False)
    elif creds is not None and which != "right":
        assert_denied(reply, challenge=True)
    else:
        route.check(reply, redis)
        return
    assert snapshot(redis) == before  # a rejected request changes nothing


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_other_categories_address_is_denied(table_server, redis, route):
    """The address another category admits is still refused here, even with right credentials."""
    allowed_address, _ = CATEGORY[route.category]
    other = next(address for address, _ in CATEGORY.values() if address != allowed_address)
    seed(redis)
    before = snapshot(redis)
    reply = perform(table_server.port, route, other, credential_headers(route.category, "right"))
    assert_denied(reply, challenge=False)
    assert snapshot(redis) == before


NEVER_CHECKED = [
    ("GET", "/queue", lambda r: r.status == 302 and r.header("Location") == "/static/help.html"),
    ("GET", "/static/index.html", lambda r: r.status == 200 and len(r.body) > 0),
    ("HEAD", "/static/index.html", lambda r: r.status == 200),
    ("GET", "/static/help.html", lambda r: r.status == 200 and len(r.body) > 0),
    ("GET", "/favicon.ico", lambda r: r.status == 200 and len(r.body) > 0),
    ("GET", "/robots.txt", lambda r: r.status == 200),
    ("GET", "/static/missing.html", lambda r: r.status == 404
     and json.loads(r.body) == {"error": "not found"}),
]


@pytest.mark.parametrize("method,path,ok", NEVER_CHECKED, ids=[p for _, p, _ in NEVER_CHECKED])
@pytest.mark.parametrize("source", [DENIED, "127.0.0.1"])
def test_unchecked_routes_answer_a_denied_address(table_server, redis, method, path, ok, source):
    seed(redis)
    for headers in ({}, basic("nobody", "wrong")):
        reply = send(table_server.port, source, method, path, headers=headers)
        assert ok(reply), reply
        assert reply.header("WWW-Authenticate") is None


def test_route_and_method_and_size_come_before_the_acl(table_server, redis):
    """docs/http-api.md#processing-order: 404, then 405, then 413, then the ACL."""
    port = table_server.port
    reply = send(port, DENIED, "GET", "/nowhere")
    assert (reply.status, json.loads(reply.body)) == (404, {"error": "not found"})
    reply = send(port, DENIED, "GET", "/xmlrpc/")
    assert reply.status == 404
    reply = send(port, DENIED, "PUT", "/q/aclq")
    assert (reply.status, json.loads(reply.body)) == (405, {"error": "method not allowed"})
    reply = send(port, DENIED, "GET", "/xmlrpc")
    assert reply.status == 405
    # a declared length over --max-body, refused before the body is sent
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(DENIED, 0)) as sock:
        sock.sendall(b"POST /q/aclq HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 1048577\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, json.loads(response.read())) == \
            (413, {"error": "request body too large"})
    assert redis("KEYS", "*") == []


def test_acl_comes_before_argument_validation(table_server, redis):
    """docs/http-api.md#processing-order: step 3 (ACL) before step 4 (names and arguments)."""
    port = table_server.port
    for method, path, form in (("POST", "/q/", {"value": "v"}), ("GET", "/q/bad%20name", None),
                               ("POST", "/claim/", None), ("POST", "/claim/aclq?limit=0", None),
                               ("POST", "/pop/aclq?wait=x", None),
                               ("POST", "/ack/aclq", None), ("POST", "/extend/aclq", None),
                               ("POST", "/release/aclq?delay=x&receipt=1", None),
                               ("POST", "/redrive/aclq?to=aclq", None),
                               ("POST", "/config/aclq?unset=x", None), ("GET", "/config/", None),
                               ("GET", "/info/a%20b", None),
                               ("POST", "/", {"queue": "aclq"}), ("POST", "/queue", None),
                               ("GET", "/c/", None), ("GET", "/sse/", None),
                               ("GET", "/?queue=QUEUESET", None), ("GET", "/stats/?callback=1",
                                                                   None)):
        reply = send(port, DENIED, method, path, form=form)
        assert_denied(reply, challenge=False)
    # a WebSocket request without upgrade headers is refused by the ACL first
    reply = ws_handshake(port, DENIED, "/ws/aclq", upgrade=False)
    assert_denied(reply, challenge=False)
    reply = ws_handshake(port, CATEGORY["websocket:consumer"][0], "/ws/aclq", upgrade=False)
    assert_denied(reply, challenge=True)
    assert redis("KEYS", "*") == []


def test_xmlrpc_parsing_comes_before_the_acl(table_server, redis):
    """docs/frontends.md#xml-rpc: a malformed document is 400 and an unknown method its fault, with
    no ACL check."""
    port = table_server.port
    reply = send(port, DENIED, "POST", "/xmlrpc", body=b"<methodCall>")
    assert (reply.status, json.loads(reply.body)) == (400, {"error": "malformed XML-RPC request"})
    reply = send(port, DENIED, "POST", "/xmlrpc", body=xml_call("nosuch", "aclq"))
    assert reply.status == 200
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(reply.body)
    assert (info.value.faultCode, info.value.faultString) == (501, "method not found: nosuch")
    assert redis("KEYS", "*") == []


@pytest.mark.parametrize("call", [("set", "bad name", "v"), ("set", "aclq"), ("get", 5),
                                  ("policy_set", "aclq", "fifo"), ("status_set", "aclq", "go"),
                                  ("queues", "extra")], ids=str)
def test_xmlrpc_acl_comes_before_argument_validation(table_server, redis, call):
    """docs/http-api.md#processing-order steps 3 then 4, and XML-RPC checks the ACL after
    parsing: a denied client learns nothing about its arguments."""
    reply = send(table_server.port, DENIED, "POST", "/xmlrpc", body=xml_call(*call))
    assert_denied(reply, challenge=False)


# -- credentials -------------------------------------------------------------------------------


def test_basic_scheme_is_case_insensitive(table_server, redis):
    port, source = table_server.port, CATEGORY["rest:producer"][0]
    for scheme in ("Basic", "basic", "BASIC", "bAsIc"):
        seed(redis)
        reply = send(port, source, "POST", "/q/aclq", form={"value": "v"},
                     headers=basic("prod", "p:ss:w0rd", scheme))
        assert reply.status == 200, (scheme, reply)


def test_password_is_split_at_the_first_colon(table_server, redis):
    port, source = table_server.port, CATEGORY["rest:producer"][0]
    ok = send(port, source, "POST", "/q/aclq", form={"value": "v"},
              headers={"Authorization": "Basic " + base64.b64encode(b"prod:p:ss:w0rd").decode()})
    assert ok.body == b"aclq:1\r\n"
    for token in (b"prod:p:ss", b"prod:p", b"prod:p:ss:w0rd:", b"prod:p:ss:w0rd ",
                  b"prod", b"prod:", b":p:ss:w0rd", b"prod:p:ss:w0rdx", b"pro:d:p:ss:w0rd",
                  b"Prod:p:ss:w0rd", b"prod :p:ss:w0rd"):
        reply = send(port, source, "POST", "/q/aclq", form={"value": "v"},
                     headers={"Authorization": "Basic " + base64.b64encode(token).decode()})
        assert_denied(reply, challenge=True)
    assert redis("GET", "aclq:UUID") == "1"


@pytest.mark.parametrize("header", ["Basic !!!", "Basic ", "Basic", "Bearer " +
                                    base64.b64encode(b"prod:p:ss:w0rd").decode(),
                                    base64.b64encode(b"prod:p:ss:w0rd").decode(),
                                    "Basic cHJvZDpwOnNzOnc", "Digest username=prod"])
def test_undecodable_credentials_count_as_missing(table_server, redis, header):
    reply = send(table_server.port, CATEGORY["rest:producer"][0], "POST", "/q/aclq",
                 form={"value": "v"}, headers={"Authorization": header})
    assert_denied(reply, challenge=True)
    assert redis("KEYS", "*") == []


def test_no_interpolation_in_the_password(table_server, redis):
    seed(redis)
    reply = send(table_server.port, CATEGORY["rest:consumer"][0], "GET", "/stats/aclq",
                 headers=basic("cons", "s3cret%(x)s"))
    assert reply.status == 200
    reply = send(table_server.port, CATEGORY["rest:consumer"][0], "GET", "/stats/aclq",
                 headers=basic("cons", "s3cret"))
    assert_denied(reply, challenge=True)


def _cookie(user, password, before="", after=""):
    return {"Cookie": f"{before}auth={user}:{password}{after}"}


def test_cookie_is_accepted_for_websocket(table_server, redis):
    port, source = table_server.port, CATEGORY["websocket:consumer"][0]
    reply = ws_handshake(port, source, "/ws/aclq", _cookie("wsuser", "wspass"))
    assert reply.status == 101
    reply = ws_handshake(port, source, "/ws/aclq", _cookie("wsuser", "wspass", "a=1; ", "; b=2"))
    assert reply.status == 101
    assert_denied(ws_handshake(port, source, "/ws/aclq", _cookie("wsuser", "nope")), True)
    assert_denied(ws_handshake(port, DENIED, "/ws/aclq", _cookie("wsuser", "wspass")), False)


def test_cookie_is_accepted_for_sse(table_server, redis):
    port, source = table_server.port, CATEGORY["sse:consumer"][0]
    for cookie in (_cookie("sseuser", "ssepass"), _cookie("sseuser", "ssepass", "x=y; ")):
        reply = send(port, source, "GET", "/sse/aclq", headers=cookie, stream=True)
        assert reply.status == 200
        assert reply.header("Content-Type") == "text/event-stream"
    assert_denied(send(port, source, "GET", "/sse/aclq", headers=_cookie("sseuser", "x")), True)
    assert_denied(send(port, DENIED, "GET", "/sse/aclq",
                       headers=_cookie("sseuser", "ssepass")), False)


@pytest.mark.parametrize("method,path,form", [("GET", "/q/aclq", None),
                                              ("GET", "/stats/aclq", None),
                                              ("POST", "/q/aclq", {"value": "v"})])
def test_cookie_is_not_accepted_for_rest(table_server, redis, method, path, form):
    category = "rest:consumer" if method == "GET" else "rest:producer"
    source, (user, password) = CATEGORY[category]
    seed(redis)
    before = snapshot(redis)
    reply = send(table_server.port, source, method, path, form=form,
                 headers=_cookie(user, password))
    assert_denied(reply, challenge=True)
    assert snapshot(redis) == before


def test_header_wins_over_cookie(table_server, redis):
    port = table_server.port
    sse = CATEGORY["sse:consumer"][0]
    wrong_header = {**basic("sseuser", "bad"), **_cookie("sseuser", "ssepass")}
    assert_denied(send(port, sse, "GET", "/sse/aclq", headers=wrong_header), True)
    right_header = {**basic("sseuser", "ssepass"), **_cookie("sseuser", "bad")}
    assert send(port, sse, "GET", "/sse/aclq", headers=right_header, stream=True).status == 200
    ws = CATEGORY["websocket:consumer"][0]
    wrong_header = {**basic("wsuser", "bad"), **_cookie("wsuser", "wspass")}
    assert_denied(ws_handshake(port, ws, "/ws/aclq", wrong_header), True)
    right_header = {**basic("wsuser", "wspass"), **_cookie("wsuser", "bad")}
    assert ws_handshake(port, ws, "/ws/aclq", right_header).status == 101


def test_headers_of_a_proxy_are_ignored_without_the_flag(table_server, redis):
    port = table_server.port
    consumer, creds = CATEGORY["rest:consumer"]
    for headers in ({"X-Real-IP": consumer}, {"X-Forwarded-For": consumer},
                    {"X-Forwarded-For": f"10.0.0.1, {consumer}"}):
        assert_denied(send(port, DENIED, "GET", "/stats/aclq",
                           headers={**headers, **basic(*creds)}), False)
        reply = send(port, consumer, "GET", "/stats/aclq",
                     headers={"X-Real-IP": DENIED, **basic(*creds)})
        assert reply.status == 200


# -- the decision (docs/access-control.md#decision) with one server per ACL file ---------------


def _allowed(port: int, source: str, headers=None) -> bool:
    reply = send(port, source, "GET", "/stats/aclq", headers=headers)
    if reply.status == 401:
        assert json.loads(reply.body) == UNAUTHORIZED
        return False
    assert reply.status == 200, reply
    return True


DECISIONS = [
    # (ACL text of [rest:consumer], {source: allowed})
    ("hosts_allow = 127.0.0.2\nhosts_deny = all",
     {"127.0.0.2": True, "127.0.0.3": False, "127.0.0.1": False}),
    ("hosts_deny = all", {"127.0.0.1": False, "127.0.0.2": False, "127.0.0.9": False}),
    # both lists set, neither matching: allowed
    ("hosts_allow = 127.0.0.2\nhosts_deny = 127.0.0.3",
     {"127.0.0.2": True, "127.0.0.3": False, "127.0.0.4": True, "127.0.0.9": True}),
    # an allow match skips the deny list
    ("hosts_allow = 127.0.0.2\nhosts_deny = 127.0.0.", {"127.0.0.2": True, "127.0.0.4": False}),
    # an allow list alone denies the rest
    ("hosts_allow = 127.0.0.2 127.0.0.3", {"127.0.0.2": True, "127.0.0.3": True,
                                            "127.0.0.4": False}),
    ("hosts_deny = 127.0.0.3 127.0.0.4", {"127.0.0.2": True, "127.0.0.3": False,
                                           "127.0.0.4": False, "127.0.0.5": True}),
    # prefixes are string prefixes: 127.0.0.1 matches 127.0.0.15
    ("hosts_allow = 127.0.0.1\nhosts_deny = all",
     {"127.0.0.1": True, "127.0.0.15": True, "127.0.0.2": False}),
    ("hosts_deny = 127.0.0.1", {"127.0.0.1": False, "127.0.0.15": False, "127.0.0.2": True}),
    ("hosts_allow = 127.0.0.\nhosts_deny = all", {"127.0.0.2": True, "127.0.0.9": True}),
    ("hosts_allow = 127.\nhosts_deny = all", {"127.0.0.2": True}),
    # `all` as the allow list means no allow list
    ("hosts_allow = all", {"127.0.0.2": True, "127.0.0.9": True}),
    ("hosts_allow = all\nhosts_deny = all", {"127.0.0.2": False}),
    ("hosts_allow = all\nhosts_deny = 127.0.0.3", {"127.0.0.2": True, "127.0.0.3": False}),
    # `all` inside a longer list is an ordinary prefix
    ("hosts_allow = all 127.0.0.2", {"127.0.0.2": True, "127.0.0.3": False}),
    ("hosts_deny = all 127.0.0.3", {"127.0.0.2": True, "127.0.0.3": False}),
    ("hosts_allow = 127.0.0.2\nhosts_deny = 127.0.0.9 all",
     {"127.0.0.2": True, "127.0.0.3": True, "127.0.0.9": False}),
    # empty values are unset
    ("hosts_allow =\nhosts_deny =", {"127.0.0.2": True}),
    ("hosts_allow =\nhosts_deny = all", {"127.0.0.2": False}),
    # a repeated option: the last wins
    ("hosts_deny = 127.0.0.2\nhosts_deny = 127.0.0.3", {"127.0.0.2": True, "127.0.0.3": False}),
    # whitespace-separated: tabs and several blanks; no inline comments
    ("hosts_allow = 127.0.0.2\t  127.0.0.3\nhosts_deny = all",
     {"127.0.0.2": True, "127.0.0.3": True, "127.0.0.4": False}),
    ("hosts_deny = 127.0.0.3 # not a comment", {"127.0.0.3": False, "127.0.0.2": True}),
    ("hosts_deny = all # not a comment", {"127.0.0.3": True}),
]


def test_decision_procedure(redis_proc, redis):
    """Each ACL text in a fresh server; the [rest:consumer] section decides GET /stats/<q>."""
    for text, expected in DECISIONS:
        acl = f"[rest:producer]\nhosts_deny = all\n\n[rest:consumer]\n{text}\n"
        with acl_server(redis_proc.port, acl) as (server, _):
            got = {source: _allowed(server.port, source) for source in expected}
            assert got == expected, text
    assert redis("KEYS", "*") == []


ADMIN_REQUESTS = [("POST", "/redrive/aclq", {"to": "other"}),
                  ("POST", "/config/aclq", {"lease": "9"}), ("DELETE", "/config/aclq", None)]

ADMIN_FILES = [
    # (ACL text, {source: allowed for the admin requests}, producer from 127.0.0.2 allowed)
    # No [rest:admin]: [rest:producer]'s rules guard the administrative writes too.
    ("[rest:producer]\nhosts_allow = 127.0.0.2\nhosts_deny = all\n",
     {"127.0.0.2": True, "127.0.0.3": False}, True),
    ("[rest:producer]\nhosts_deny = all\n", {"127.0.0.2": False}, False),
    # With one, it decides alone, and producers keep their own rules.
    ("[rest:producer]\nhosts_deny = all\n[rest:admin]\nhosts_allow = 127.0.0.3\n"
     "hosts_deny = all\n", {"127.0.0.2": False, "127.0.0.3": True}, False),
    ("[rest:producer]\nhosts_deny = all\n[rest:admin]\n", {"127.0.0.2": True}, False),
    ("[rest:admin]\nhosts_deny = all\n", {"127.0.0.2": False}, True),
    # Neither section: open, whatever the other sections say.
    ("[rest:consumer]\nhosts_deny = all\n", {"127.0.0.2": True}, True),
]


def test_admin_section_falls_back_to_the_producer_section(redis_proc, redis):
    for text, expected, producer in ADMIN_FILES:
        with acl_server(redis_proc.port, text) as (server, _):
            for source, allowed in expected.items():
                for method, path, form in ADMIN_REQUESTS:
                    redis("FLUSHALL")
                    seed(redis)
                    before = snapshot(redis)
                    reply = send(server.port, source, method, path, form=form)
                    if allowed:
                        assert reply.status == 200, (text, source, path, reply)
                    else:
                        assert_denied(reply, challenge=False)
                        assert snapshot(redis) == before
            reply = send(server.port, "127.0.0.2", "POST", "/q/aclq", form={"value": "v"})
            assert (reply.status == 200) == producer, text


def test_admin_section_falls_back_to_the_producer_credentials(redis_proc, redis):
    acl = "[rest:producer]\nusername = prod\npassword = pw\n"
    with acl_server(redis_proc.port, acl) as (server, _):
        seed(redis)
        before = snapshot(redis)
        for method, path, form in ADMIN_REQUESTS:
            assert_denied(send(server.port, "127.0.0.2", method, path, form=form), True)
            assert_denied(send(server.port, "127.0.0.2", method, path, form=form,
                               headers=basic("prod", "nope")), True)
        assert snapshot(redis) == before
        for method, path, form in ADMIN_REQUESTS:
            reply = send(server.port, "127.0.0.2", method, path, form=form,
                         headers=basic("prod", "pw"))
            assert reply.status == 200, (path, reply)


CREDENTIAL_RULES = [
    # (section body, headers, allowed from 127.0.0.2)
    ("username = u", {}, True),  # only one of the two: no credentials needed
    ("password = p", {}, True),
    ("username = u\npassword =", {}, True),
    ("username = u\npassword = p", {}, False),
    ("username = u\npassword = p", basic("u", "p"), True),
    ("username = u\npassword = p\nusername = v", basic("v", "p"), True),  # the last wins
    ("username = u\npassword = p\nusername = v", basic("u", "p"), False),
    ("Username = Ü\nPASSWORD = pä ss", basic("Ü", "pä ss"), True),  # UTF-8, inner blank kept
    ("username =   u  \npassword =  p  ", basic("u", "p"), True),  # values are trimmed
    ("username: u\npassword: 100%", basic("u", "100%"), True),
    ("hosts_allow = 127.0.0.2\nhosts_deny = all\nusername = u\npassword = p", basic("u", "p"),
     True),
]


def test_credential_rules(redis_proc, redis):
    for text, headers, allowed in CREDENTIAL_RULES:
        acl = f"[rest:consumer]\n{text}\n"
        with acl_server(redis_proc.port, acl) as (server, _):
            got = _allowed(server.port, "127.0.0.2", headers)
            assert got == allowed, (text, headers)
            if not got:
                reply = send(server.port, "127.0.0.2", "GET", "/stats/aclq", headers=headers)
                assert reply.header("WWW-Authenticate") == CHALLENGE


def test_ini_syntax(redis_proc, redis):
    """docs/access-control.md#acl-file: exact section names, case-insensitive option names, `:`
    delimiter, whole-line comments, unknown sections and options ignored, empty file allows
    everything."""
    cases = [
        ("", True),
        ("# [rest:consumer]\n; hosts_deny = all\n", True),
        ("[REST:consumer]\nhosts_deny = all\n", True),  # section names are exact
        ("[rest:consumer ]\nhosts_deny = all\n", True),
        ("[rest:consumer]\nHOSTS_DENY: all\n", False),
        ("[rest:consumer]\n  # hosts_allow = 127.0.0.2\nhosts_deny = all\n", False),
        ("[rest:consumer]\nhosts_deny_x = all\nother = 1\n", True),
        ("[rest]\nhosts_deny = all\n[consumer]\nhosts_deny = all\n", True),
        ("[rest:producer]\nhosts_deny = all\n", True),  # another category
    ]
    for text, allowed in cases:
        with acl_server(redis_proc.port, text) as (server, _):
            assert _allowed(server.port, "127.0.0.2") == allowed, text


def test_packaged_acl_file_allows_everything(redis_proc, redis):
    server = ServerProcess(redis_proc.port).start()
    try:
        assert _allowed(server.port, "127.0.0.9")
        assert send(server.port, "127.0.0.9", "POST", "/q/aclq", form={"value": "v"}).status == 200
    finally:
        server.stop()


# -- --trusted-proxy (docs/access-control.md#client-address) -----------------------------------


PROXY_CASES = [
    # (source, headers, allowed); the ACL admits 127.0.0.2 only
    ("127.0.0.9", {"X-Real-IP": "127.0.0.2"}, True),
    ("127.0.0.2", {"X-Real-IP": "127.0.0.9"}, False),
    ("127.0.0.9", {"X-Real-IP": " 127.0.0.2 "}, True),
    ("127.0.0.9", {"X-Forwarded-For": "127.0.0.2"}, True),
    ("127.0.0.9", {"X-Forwarded-For": "10.1.1.1, 127.0.0.2"}, True),  # the last entry
    ("127.0.0.9", {"X-Forwarded-For": "10.1.1.1,127.0.0.2"}, True),
    ("127.0.0.9", {"X-Forwarded-For": "127.0.0.2, 10.1.1.1"}, False),
    ("127.0.0.2", {"X-Forwarded-For": "127.0.0.2, 10.1.1.1"}, False),
    ("127.0.0.9", {"X-Real-IP": "127.0.0.2", "X-Forwarded-For": "10.1.1.1"}, True),
    ("127.0.0.9", {"X-Real-IP": "10.1.1.1", "X-Forwarded-For": "127.0.0.2"}, False),
    # an invalid X-Real-IP falls back to X-Forwarded-For, then to the peer
    ("127.0.0.9", {"X-Real-IP": "not-an-ip", "X-Forwarded-For": "127.0.0.2"}, True),
    ("127.0.0.9", {"X-Real-IP": "127.0.0.2x"}, False),
    ("127.0.0.2", {"X-Real-IP": "garbage"}, True),
    ("127.0.0.2", {"X-Forwarded-For": "127.0.0.9, garbage"}, True),
    ("127.0.0.9", {"X-Forwarded-For": "127.0.0.2, garbage"}, False),
    ("127.0.0.2", {"X-Real-IP": "", "X-Forwarded-For": ""}, True),
    # addresses are normalized before matching: IPv4-mapped IPv6 as IPv4
    ("127.0.0.9", {"X-Real-IP": "::ffff:127.0.0.2"}, True),
    ("127.0.0.9", {"X-Forwarded-For": "::FFFF:127.0.0.2"}, True),
    ("127.0.0.9", {}, False),
    ("127.0.0.2", {}, True),
]


def test_trusted_proxy_headers(redis_proc, redis):
    acl = "[rest:consumer]\nhosts_allow = 127.0.0.2\nhosts_deny = all\n"
    with acl_server(redis_proc.port, acl, "--trusted-proxy") as (server, _):
        for source, headers, allowed in PROXY_CASES:
            assert _allowed(server.port, source, headers) == allowed, (source, headers)
        # the proxy address decides live routes and XML-RPC too
        reply = send(server.port, "127.0.0.9", "POST", "/xmlrpc", body=xml_call("len", "aclq"),
                     headers={"X-Real-IP": "127.0.0.2"})
        assert xml_result(reply) == 0
    # without the flag the same headers are ignored
    with acl_server(redis_proc.port, acl) as (server, _):
        for source, headers, _ in PROXY_CASES:
            assert _allowed(server.port, source, headers) == (source == "127.0.0.2"), headers


def test_ipv6_addresses_are_compressed_lower_case(redis_proc, redis):
    acl = "[rest:consumer]\nhosts_allow = 2001:db8::1\nhosts_deny = all\n"
    with acl_server(redis_proc.port, acl, "--trusted-proxy") as (server, _):
        assert _allowed(server.port, "127.0.0.9", {"X-Real-IP": "2001:DB8:0:0:0:0:0:1"})
        assert _allowed(server.port, "127.0.0.9", {"X-Forwarded-For": "2001:db8::1"})
        assert _allowed(server.port, "127.0.0.9", {"X-Real-IP": "2001:db8::2"}) is False


# -- hot reload (checked every --acl-check-interval, a failed reload keeps the rules) ----------

# The file's check interval (--acl-check-interval) of the servers below, so that each edit
# costs a fraction of a second rather than up to 5; the default interval is pinned by
# tests/unit/test_frontend_timers.py::test_the_acl_file_is_looked_at_every_acl_check_interval.
QUICK_CHECKS = ("--acl-check-interval", "0.2")


def write_atomically(path: str, text: str) -> None:
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def test_acl_file_is_reloaded_and_a_broken_file_keeps_the_rules(redis_proc, redis):
    first = "[rest:consumer]\nhosts_allow = 127.0.0.2\nhosts_deny = all\n"
    second = "[rest:consumer]\nhosts_allow = 127.0.0.3\nhosts_deny = all\n"
    broken = "hosts_allow = 127.0.0.2\n[rest:consumer]\nhosts_deny = 127.0.0.3\n"
    with acl_server(redis_proc.port, first, *QUICK_CHECKS) as (server, path):
        port = server.port
        assert _allowed(port, "127.0.0.2") and not _allowed(port, "127.0.0.3")
        write_atomically(path, second)
        wait_until(lambda: _allowed(port, "127.0.0.3"), 15, "the new rules", interval=0.1)
        assert not _allowed(port, "127.0.0.2")
        log_before = server.log()
        write_atomically(path, broken)
        # wait for the failed reload to be logged, then for one more check period
        wait_until(lambda: len(server.log()) > len(log_before)
                   and path in server.log()[len(log_before):], 15,
                   "a log line about the ACL file", interval=0.1)
        new_lines = [line for line in server.log()[len(log_before):].splitlines()
                     if path in line]
        assert new_lines and any(word in new_lines[0].lower()
                                 for word in ("not", "fail", "cannot", "error", "keep")), \
            new_lines
        assert _allowed(port, "127.0.0.3")  # the previous rules are still in force
        assert not _allowed(port, "127.0.0.2")
        # the file is still watched: a good version applies again
        write_atomically(path, first)
        wait_until(lambda: _allowed(port, "127.0.0.2"), 15, "the rules after the repair",
                   interval=0.1)
        assert not _allowed(port, "127.0.0.3")


def test_an_edit_in_place_is_seen(redis_proc, redis):
    """The file is compared by content, not replaced by a rename: an append is seen."""
    with acl_server(redis_proc.port, "", *QUICK_CHECKS) as (server, path):
        assert _allowed(server.port, "127.0.0.2")
        with open(path, "a") as f:
            f.write("[rest:consumer]\nhosts_deny = all\n")
        wait_until(lambda: not _allowed(server.port, "127.0.0.2"), 15, "the appended rule",
                   interval=0.1)
