"""Auth keys (docs/access-control.md#auth-keys): `X-Auth-Key` or `authkey=`, judged by the Redis
record `AUTHKEY:<k>` instead of the ACL file, on every route kind (REST, JSON protocol, XML-RPC,
comet, SSE, WebSocket)."""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import tempfile
import xmlrpc.client
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import pytest

from tests.conftest import RedisProcess, ServerProcess
from tests.http_client import Reply, read_head, request
from tests.resp import seed_queue, snapshot
from tests.util import wait_until

JSON = "application/json"
HTML = "text/html; charset=UTF-8"
UNAUTHORIZED = {"error": "unauthorized"}
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="

# Every category refuses everybody; rest:consumer asks for credentials instead, so that its
# refusals carry a challenge and a key's refusal can be told apart (it never does).
LOCKED_ACL = """\
[rest:producer]
hosts_deny = all
[rest:consumer]
username = user
password = secret
[comet:consumer]
hosts_deny = all
[websocket:consumer]
hosts_deny = all
[sse:consumer]
hosts_deny = all
"""


# -- helpers -----------------------------------------------------------------------------------


def set_record(redis, key: str, queues=None, privs=None, raw: str | None = None) -> None:
    if raw is None:
        record = {}
        if queues is not None:
            record["queues"] = list(queues)
        if privs is not None:
            record["privs"] = list(privs)
        raw = json.dumps(record)
    redis("SET", f"AUTHKEY:{key}", raw)



def seed(redis, queue: str) -> None:
    """One pending message `<queue>:1` = hello, started."""
    seed_queue(redis, queue)


def assert_unauthorized(reply) -> None:
    assert reply.status == 401, reply
    assert reply.header("Content-Type") == JSON
    assert json.loads(reply.body) == UNAUTHORIZED
    assert reply.header("WWW-Authenticate") is None


def xml_call(method: str, *params) -> bytes:
    return xmlrpc.client.dumps(params, methodname=method).encode()


def xml_result(reply):
    assert reply.status == 200, reply
    assert reply.header("Content-Type") == "text/xml"
    return xmlrpc.client.loads(reply.body)[0][0]


@dataclass
class Handshake:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def ws_handshake(base: str, path: str, headers: dict[str, str] | None = None) -> Handshake:
    parts = urlsplit(base)
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {WS_KEY}", "Sec-WebSocket-Version: 13"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        return Handshake(*read_head(sock))


def stream_head(base: str, path: str, headers: dict[str, str] | None = None) -> Reply:
    """The status and headers of a live stream (comet, SSE); its body is not waited for."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = b"" if response.status == 200 else response.read()
        return Reply(response.status, response.headers, body)
    finally:
        conn.close()


@contextlib.contextmanager
def acl_server(redis_port: int, text: str, *args: str):
    fd, path = tempfile.mkstemp(prefix="restmq-acl-", suffix=".conf")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    server = ServerProcess(redis_port, "--acl", path, *args)
    try:
        yield server.start()
    finally:
        server.stop()
        os.unlink(path)
        assert "Traceback" not in server.final_log, server.final_log


@pytest.fixture(scope="module")
def locked(redis_proc):
    """A server whose ACL file refuses every request that presents no key."""
    with acl_server(redis_proc.port, LOCKED_ACL) as server:
        yield server.url


# -- a request per route kind, with the key presented one way or the other ---------------------


@dataclass
class Route:
    id: str
    method: str
    path: str  # with {q} for the queue
    form: dict | None = None
    xml: tuple | None = None  # XML-RPC method and params ({q} replaced)
    kind: str = "http"  # http, stream, websocket
    status: int = 200
    body: str | None = None  # a raw body ({q} replaced)


ROUTES = [
    Route("POST /q/<q>", "POST", "/q/{q}", form={"value": "v"}),
    Route("GET /q/<q>", "GET", "/q/{q}"),
    Route("DELETE /q/<q>", "DELETE", "/q/{q}"),
    Route("POST /", "POST", "/", form={"queue": "{q}", "value": "v"}),
    Route("POST /batch/<q>", "POST", "/batch/{q}", body='["v", {"value": "{q}"}]'),
    Route("GET /?queue=", "GET", "/?queue={q}"),
    Route("GET /p/<q>", "GET", "/p/{q}"),
    Route("POST /p/<q>", "POST", "/p/{q}", form={"policy": "roundrobin"}),
    Route("GET /control/<q>", "GET", "/control/{q}"),
    Route("POST /control/<q>", "POST", "/control/{q}", form={"status": "stop"}),
    Route("GET /stats/<q>", "GET", "/stats/{q}"),
    Route("GET /j/<q>", "GET", "/j/{q}"),
    Route("JSON add", "POST", "/queue", form={"body": '{"cmd": "add", "queue": "{q}", '
                                                      '"value": "v"}'}),
    Route("JSON get", "POST", "/queue", form={"body": '{"cmd": "get", "queue": "{q}"}'}),
    Route("JSON take", "POST", "/queue", form={"body": '{"cmd": "take", "queue": "{q}"}'}),
    Route("JSON del", "POST", "/queue", form={"body": '{"cmd": "del", "queue": "{q}", '
                                                      '"key": "{q}:1"}'}),
    Route("xmlrpc set", "POST", "/xmlrpc", xml=("set", "{q}", "v")),
    Route("xmlrpc get", "POST", "/xmlrpc", xml=("get", "{q}")),
    Route("xmlrpc take", "POST", "/xmlrpc", xml=("take", "{q}")),
    Route("xmlrpc len", "POST", "/xmlrpc", xml=("len", "{q}")),
    Route("xmlrpc policy_get", "POST", "/xmlrpc", xml=("policy_get", "{q}")),
    Route("xmlrpc policy_set", "POST", "/xmlrpc", xml=("policy_set", "{q}", "broadcast")),
    Route("xmlrpc status_get", "POST", "/xmlrpc", xml=("status_get", "{q}")),
    Route("xmlrpc status_set", "POST", "/xmlrpc", xml=("status_set", "{q}", "start")),
    Route("POST /claim/<q>", "POST", "/claim/{q}"),
    Route("POST /pop/<q>", "POST", "/pop/{q}"),
    Route("POST /ack/<q>", "POST", "/ack/{q}", form={"receipt": "1.1.0123456789abcdef"}),
    Route("POST /extend/<q>", "POST", "/extend/{q}",
          form={"receipt": "1.1.0123456789abcdef", "lease": "5"}),
    Route("POST /release/<q>", "POST", "/release/{q}", form={"receipt": "1.1.0123456789abcdef"}),
    Route("POST /redrive/<q> to", "POST", "/redrive/{q}", form={"to": "other1"}),
    Route("GET /config/<q>", "GET", "/config/{q}"),
    Route("POST /config/<q>", "POST", "/config/{q}", form={"lease": "5"}),
    Route("DELETE /config/<q>", "DELETE", "/config/{q}"),
    Route("GET /info/<q>", "GET", "/info/{q}"),
    Route("GET /peek/<q>", "GET", "/peek/{q}"),
    Route("GET /c/<q>", "GET", "/c/{q}", kind="stream"),
    Route("GET /sse/<q>", "GET", "/sse/{q}", kind="stream"),
    Route("GET /ws/<q>", "GET", "/ws/{q}", kind="websocket", status=101),
]


def perform(base: str, route: Route, queue: str, key: str | None, how: str):
    """`how`: "header" (X-Auth-Key) or "argument" (authkey= in the query string)."""
    path = route.path.replace("{q}", quote(queue, safe=""))
    headers = {}
    if key is not None:
        if how == "header":
            headers["X-Auth-Key"] = key
        else:
            path += ("&" if "?" in path else "?") + "authkey=" + quote(key, safe="")
    if route.kind == "websocket":
        return ws_handshake(base, path, headers)
    if route.kind == "stream":
        return stream_head(base, path, headers)
    if route.xml:
        method, *params = route.xml
        body = xml_call(method, *(p.replace("{q}", queue) for p in params))
        return request(base, "POST", path, body=body, headers=headers)
    if route.body is not None:
        return request(base, route.method, path, body=route.body.replace("{q}", queue),
                       headers=headers)
    form = None
    if route.form:
        form = {name: value.replace("{q}", queue) for name, value in route.form.items()}
    return request(base, route.method, path, form=form, headers=headers)


def assert_ok(reply, route: Route) -> None:
    assert reply.status == route.status, reply
    if route.xml:
        xml_result(reply)  # a value, not a fault
    if route.id.startswith("JSON"):
        assert "error" not in json.loads(reply.body), reply.body


@pytest.mark.parametrize("how", ["header", "argument"])
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_a_listed_queue_is_authorized_on_every_route_kind(locked, redis, route, how):
    set_record(redis, "k1", queues=["kq", "other1"])
    seed(redis, "kq")
    assert_ok(perform(locked, route, "kq", "k1", how), route)


@pytest.mark.parametrize("how", ["header", "argument"])
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_an_unlisted_queue_is_refused_and_nothing_changes(H, redis, route, how):
    set_record(redis, "k1", queues=["kq"], privs=["read", "write", "Create"])
    seed(redis, "other")
    before = snapshot(redis)
    assert_unauthorized(perform(H, route, "other", "k1", how))
    assert snapshot(redis) == before


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_without_a_key_the_locked_server_refuses(locked, redis, route):
    seed(redis, "kq")
    before = snapshot(redis)
    reply = perform(locked, route, "kq", None, "header")
    assert reply.status == 401
    assert json.loads(reply.body) == UNAUTHORIZED
    assert snapshot(redis) == before


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_create_privilege_grants_every_queue(locked, redis, route):
    set_record(redis, "admin", privs=["create"])
    seed(redis, "anything")
    assert_ok(perform(locked, route, "anything", "admin", "argument"), route)


def test_key_replies_are_the_normal_replies(locked, redis):
    set_record(redis, "k1", queues=["kq"])
    headers = {"X-Auth-Key": "k1"}
    reply = request(locked, "POST", "/q/kq", form={"value": "v"}, headers=headers)
    assert (reply.status, reply.header("Content-Type"), reply.body) == (200, HTML, b"kq:1\r\n")
    reply = request(locked, "GET", "/q/kq?authkey=k1")
    assert json.loads(reply.body) == {"key": "kq:1", "value": "v", "count": 0}
    reply = request(locked, "POST", "/xmlrpc?authkey=k1", body=xml_call("set", "kq", "w"))
    assert xml_result(reply) == "kq:2"
    proxy = xmlrpc.client.ServerProxy(locked + "/xmlrpc", headers=[("X-Auth-Key", "k1")])
    assert proxy.len("kq") == 1
    assert proxy.take("kq") == "w"
    with pytest.raises(xmlrpc.client.Fault) as info:
        proxy.get("kq")
    assert (info.value.faultCode, info.value.faultString) == (404, "empty queue")
    with pytest.raises(xmlrpc.client.ProtocolError) as error:
        proxy.set("other", "v")
    assert error.value.errcode == 401


# -- requests that address all queues ----------------------------------------------------------


ALL_QUEUES = [
    ("GET /", "GET", "/", None, 302),
    ("GET /q/", "GET", "/q/", None, 200),
    ("GET /stats/", "GET", "/stats/", None, 200),
    ("GET /control/", "GET", "/control/", None, 200),
    ("xmlrpc queues", "POST", "/xmlrpc", xml_call("queues"), 200),
    ("POST /redrive/<q> without to", "POST", "/redrive/kq", None, 200),
]


@pytest.mark.parametrize("name,method,path,body,status", ALL_QUEUES, ids=[a[0] for a in ALL_QUEUES])
def test_all_queue_requests_need_create(locked, H, redis, name, method, path, body, status):
    seed(redis, "kq")
    set_record(redis, "admin", queues=["kq"], privs=["create"])
    set_record(redis, "lister", queues=["kq", "QUEUESET", "*", ""], privs=["list", "admin"])
    for how in ("header", "argument"):
        sep = "&" if "?" in path else "?"
        reply = request(locked, method, path + (f"{sep}authkey=admin" if how == "argument"
                                                 else ""),
                        body=body, headers={"X-Auth-Key": "admin"} if how == "header" else {})
        assert reply.status == status, reply
        if status == 302:
            assert reply.header("Location") == "/static/index.html"
        if name == "xmlrpc queues":
            assert xml_result(reply) == ["kq"]
        before = snapshot(redis)
        for base in (locked, H):
            reply = request(base, method, path, body=body, headers={"X-Auth-Key": "lister"})
            assert_unauthorized(reply)
        assert snapshot(redis) == before


# -- requests that name a second queue ---------------------------------------------------------


SECOND_QUEUE = [
    # (path, form, queues a key must list besides the path's own); the path's queue is kq
    ("/config/kq", {"dead_letter": "kq.dead", "max_attempts": "2"}, ["kq.dead"]),
    ("/config/kq", {"dead_letter": "kq.dead"}, ["kq.dead"]),
    ("/redrive/kq", {"to": "kq.retry"}, ["kq.retry"]),
]


@pytest.mark.parametrize("path,form,others", SECOND_QUEUE, ids=[str(c[1]) for c in SECOND_QUEUE])
def test_a_dead_letter_or_to_queue_must_be_granted_too(locked, redis, path, form, others):
    seed(redis, "kq")
    set_record(redis, "path_only", queues=["kq"])
    set_record(redis, "other_only", queues=others)
    set_record(redis, "both", queues=["kq", *others])
    before = snapshot(redis)
    for key in ("path_only", "other_only"):
        assert_unauthorized(request(locked, "POST", path, form=form,
                                    headers={"X-Auth-Key": key}))
    assert snapshot(redis) == before
    reply = request(locked, "POST", path, form=form, headers={"X-Auth-Key": "both"})
    assert reply.status == 200, reply


def test_settings_that_name_no_other_queue_need_only_the_path_queue(locked, redis):
    set_record(redis, "k", queues=["kq"])
    for method, path, form in (("POST", "/config/kq", {"lease": "5", "unset": "dead_letter"}),
                               ("GET", "/config/kq", None), ("DELETE", "/config/kq", None),
                               ("GET", "/info/kq", None), ("POST", "/claim/kq", None)):
        reply = request(locked, method, path, form=form, headers={"X-Auth-Key": "k"})
        assert reply.status in (200, 204), (path, reply)


def test_v2_arguments_are_validated_before_the_key(H, redis):
    """docs/http-api.md#processing-order: a bad argument is 400 whatever the key."""
    headers = {"X-Auth-Key": "missing"}
    for method, path, form, reason in (
            ("POST", "/claim/kq", {"limit": "0"}, "invalid argument: limit"),
            ("POST", "/ack/kq", None, "missing argument: receipt"),
            ("POST", "/extend/kq", {"receipt": "1.1.x"}, "missing argument: lease"),
            ("POST", "/release/kq", {"receipt": "1.1.x", "delay": "x"}, "invalid argument: delay"),
            ("POST", "/redrive/kq", {"to": "kq"}, "invalid argument: to"),
            ("POST", "/config/kq", {"dead_letter": "a b"}, "invalid argument: dead_letter"),
            ("GET", "/info/", None, "invalid queue name")):
        reply = request(H, method, path, form=form, headers=headers)
        assert (reply.status, json.loads(reply.body)) == (400, {"error": reason}), path
    assert redis("KEYS", "*") == []


# -- records that grant nothing ----------------------------------------------------------------


BAD_RECORDS = {
    "missing": None,
    "invalid_json": '{"queues": ["kq"]',
    "json_array": '["kq"]',
    "json_array_of_object": '[{"queues": ["kq"], "privs": ["create"]}]',
    "json_string": '"kq"',
    "json_number": "1",
    "json_null": "null",
    "empty_object": "{}",
    "empty_lists": '{"queues": [], "privs": []}',
    "other_privilege": '{"privs": ["admin", "CREATE", "create "]}',
    "case_differs": '{"queues": ["KQ", "kq "]}',
    "queue_in_privs": '{"privs": ["kq"]}',
    "empty_text": "",
    "json_with_nan": "{\"queues\": [\"kq\"], \"privs\": [NaN]}",
    # deeper than Python's recursion limit: json.loads raises RecursionError, not ValueError
    "deeply_nested": '{"queues": ' + "[" * 100000 + "]" * 100000 + "}",
}


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_records_that_grant_nothing_are_401_without_challenge(H, redis, name):
    raw = BAD_RECORDS[name]
    if raw is not None:
        set_record(redis, "bad", raw=raw)
    seed(redis, "kq")
    before = snapshot(redis)
    for method, path, form, body in (("POST", "/q/kq", {"value": "v"}, None),
                                     ("GET", "/q/kq", None, None),
                                     ("GET", "/stats/", None, None),
                                     ("POST", "/xmlrpc", None, xml_call("set", "kq", "v")),
                                     ("POST", "/queue", {"body": '{"cmd": "take", '
                                                                 '"queue": "kq"}'}, None)):
        for headers, query in (({"X-Auth-Key": "bad"}, ""), ({}, "?authkey=bad")):
            reply = request(H, method, path + query, form=form, body=body, headers=headers)
            assert_unauthorized(reply)
    assert_unauthorized(stream_head(H, "/c/kq?authkey=bad"))
    assert_unauthorized(stream_head(H, "/sse/kq?authkey=bad"))
    assert_unauthorized(ws_handshake(H, "/ws/kq?authkey=bad"))
    assert snapshot(redis) == before


def test_missing_fields_are_empty_lists(locked, redis):
    set_record(redis, "q_only", raw='{"queues": ["kq"]}')
    set_record(redis, "p_only", raw='{"privs": ["create"]}')
    set_record(redis, "extra", raw='{"queues": ["kq"], "privs": [], "note": 1}')
    for key in ("q_only", "p_only", "extra"):
        assert request(locked, "GET", f"/stats/kq?authkey={key}").status == 200, key
    assert request(locked, "GET", "/stats/?authkey=p_only").status == 200
    assert_unauthorized(request(locked, "GET", "/stats/?authkey=q_only"))


def test_non_ascii_queue_and_key(locked, redis):
    set_record(redis, "clé", queues=["fila-ç"])
    reply = request(locked, "POST", "/q/" + quote("fila-ç") + "?authkey=" + quote("clé"),
                    form={"value": "v"})
    assert reply.body == "fila-ç:1\r\n".encode()
    assert_unauthorized(request(locked, "POST", "/q/fila-c?authkey=" + quote("clé"),
                                form={"value": "v"}))
    proxy = xmlrpc.client.ServerProxy(locked + "/xmlrpc?authkey=" + quote("clé"))
    assert proxy.get("fila-ç") == "v"


# -- how the key is presented ------------------------------------------------------------------


def test_header_wins_over_argument(locked, redis):
    set_record(redis, "good", queues=["kq"])
    set_record(redis, "none", queues=["elsewhere"])
    ok = request(locked, "GET", "/stats/kq?authkey=none", headers={"X-Auth-Key": "good"})
    assert ok.status == 200
    assert_unauthorized(request(locked, "GET", "/stats/kq?authkey=good",
                                headers={"X-Auth-Key": "none"}))
    assert_unauthorized(request(locked, "GET", "/stats/kq?authkey=good",
                                headers={"X-Auth-Key": "missing"}))
    # also against an argument in a form body
    assert_unauthorized(request(locked, "POST", "/q/kq", form={"value": "v", "authkey": "good"},
                                headers={"X-Auth-Key": "none"}))
    assert redis("EXISTS", "kq:queue") == 0


def test_argument_in_a_form_body(locked, redis):
    set_record(redis, "good", queues=["kq"])
    reply = request(locked, "POST", "/q/kq", form={"value": "v", "authkey": "good"})
    assert reply.body == b"kq:1\r\n"
    reply = request(locked, "POST", "/queue", form={"body": '{"cmd": "take", "queue": "kq"}',
                                                     "authkey": "good"})
    assert json.loads(reply.body) == {"queue": "kq", "value": "v", "key": "kq:1"}


def test_an_empty_key_means_none(locked, H, redis):
    set_record(redis, "good", queues=["kq"])
    seed(redis, "kq")
    # an empty header leaves the argument in charge
    assert request(locked, "GET", "/stats/kq?authkey=good",
                   headers={"X-Auth-Key": ""}).status == 200
    # empty everywhere: no key, so the ACL file decides (open on H, closed on locked)
    for query in ("", "?authkey=", "?authkey=&x=1"):
        reply = request(H, "GET", "/stats/kq" + query, headers={"X-Auth-Key": ""})
        assert reply.status == 200, query
        reply = request(locked, "GET", "/stats/kq" + query, headers={"X-Auth-Key": ""})
        assert reply.status == 401
        assert reply.header("WWW-Authenticate") == 'Basic realm="RestMQ Restricted Access"'
    # an empty argument after a non-empty one: the last occurrence wins, and it is empty
    reply = request(locked, "GET", "/stats/kq?authkey=good&authkey=")
    assert reply.status == 401 and reply.header("WWW-Authenticate") is not None


def test_a_refused_key_gets_no_challenge_where_the_acl_would(locked, redis):
    """rest:consumer of the locked file wants credentials; a key replaces that check."""
    set_record(redis, "other", queues=["elsewhere"])
    set_record(redis, "good", queues=["kq"])
    reply = request(locked, "GET", "/stats/kq")
    assert reply.status == 401
    assert reply.header("WWW-Authenticate") == 'Basic realm="RestMQ Restricted Access"'
    assert_unauthorized(request(locked, "GET", "/stats/kq", headers={"X-Auth-Key": "other"}))
    # right Basic credentials do not rescue a refused key
    creds = {"Authorization": "Basic dXNlcjpzZWNyZXQ="}  # user:secret
    assert request(locked, "GET", "/stats/kq", headers=creds).status == 200
    assert_unauthorized(request(locked, "GET", "/stats/kq",
                                headers={"X-Auth-Key": "other", **creds}))
    assert request(locked, "GET", "/stats/kq", headers={"X-Auth-Key": "good"}).status == 200


# -- docs/http-api.md#processing-order: validation (4) before the key check (5) ----------------


def test_validation_comes_before_the_key_check(H, redis):
    headers = {"X-Auth-Key": "missing"}
    cases = [
        (("POST", "/q/", {"value": "v"}), 400, {"error": "invalid queue name"}),
        (("GET", "/q/bad%20name", None), 400, {"error": "invalid queue name"}),
        (("POST", "/", {"value": "v"}), 400, {"error": "missing argument: queue"}),
        (("POST", "/q/kq", {}), 400, {"error": "missing argument: value"}),
        (("POST", "/q/kq", {"value": "v", "ttl": "x"}), 400, {"error": "invalid argument: ttl"}),
        (("GET", "/q/kq?callback=1x", None), 400, {"error": "invalid argument: callback"}),
        (("POST", "/p/kq", {}), 400, {"error": "missing argument: policy"}),
        (("POST", "/queue", {}), 400, {"error": "missing argument: body"}),
        (("POST", "/queue", {"body": "{"}), 400, {"error": "malformed JSON"}),
        (("POST", "/queue", {"body": '{"cmd": "add", "queue": "a b", "value": "v"}'}), 200,
         {"error": "invalid queue name"}),
        (("POST", "/queue", {"body": '{"cmd": "nope"}'}), 200, {"error": "null resultset"}),
        (("GET", "/c/", None), 400, {"error": "invalid queue name"}),
        (("GET", "/nowhere", None), 404, {"error": "not found"}),
        (("PUT", "/q/kq", None), 405, {"error": "method not allowed"}),
    ]
    for (method, path, form), status, body in cases:
        reply = request(H, method, path, form=form, headers=headers)
        assert (reply.status, json.loads(reply.body)) == (status, body), path
    for call, fault in ((("set", "a b", "v"), (400, "invalid queue name")),
                        (("set", "kq"), (400, "invalid arguments")),
                        (("policy_set", "kq", "x"), (400, "invalid policy")),
                        (("status_set", "kq", "x"), (400, "invalid status")),
                        (("nosuch", "kq"), (501, "method not found: nosuch"))):
        reply = request(H, "POST", "/xmlrpc", body=xml_call(*call), headers=headers)
        with pytest.raises(xmlrpc.client.Fault) as info:
            xmlrpc.client.loads(reply.body)
        assert (info.value.faultCode, info.value.faultString) == fault
    reply = request(H, "POST", "/xmlrpc", body=b"<x", headers=headers)
    assert (reply.status, json.loads(reply.body)) == (400, {"error": "malformed XML-RPC request"})
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", **headers}
    for extra, status, reason in (({"Upgrade": "h2c"}, 403, "expected WebSocket headers"),
                                  ({"Sec-WebSocket-Version": "8"}, 426,
                                   "unsupported WebSocket version"),
                                  ({"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "x"},
                                   400, "invalid WebSocket handshake")):
        reply = stream_head(H, "/ws/kq", {**upgrade, **extra})
        assert (reply.status, json.loads(reply.body)) == (status, {"error": reason}), extra
    parts = urlsplit(H)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /q/kq HTTP/1.1\r\nHost: x\r\nX-Auth-Key: missing\r\n"
                     b"Content-Length: 1048577\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, json.loads(response.read())) == \
            (413, {"error": "request body too large"})
    assert redis("KEYS", "*") == []


def test_collectd_posts_are_judged_for_the_queue_of_their_kind(redis_proc, redis):
    """The collectd plugin writes to fixed queues: a key must grant the one of the kind posted
    to, and the body is checked before the key."""
    set_record(redis, "data_only", queues=["collectd_data"])
    server = ServerProcess(redis_proc.port, plugin="collectd").start()
    try:
        key = {"X-Auth-Key": "data_only"}
        reply = request(server.url, "POST", "/collectd/data", body=b"[1]",
                        headers={**key, "Content-Type": "application/json"})
        assert (reply.status, reply.body) == (200, b"collectd_data:1\r\n")
        before = snapshot(redis)
        assert_unauthorized(request(server.url, "POST", "/collectd/event?authkey=data_only",
                                    body=b"Severity: OKAY\n\ntext\n"))
        refused = {"X-Auth-Key": "missing"}
        for path, ctype, body, status, reason in (
                ("/collectd/nosuch", "text/plain", b"x", 400, "unknown collectd kind"),
                ("/collectd/event", "text/plain", b"", 400, "malformed collectd body"),
                ("/collectd/data", "text/csv", b"x", 503, "unexpected Content-Type")):
            reply = request(server.url, "POST", path, body=body,
                            headers={**refused, "Content-Type": ctype})
            assert (reply.status, json.loads(reply.body)) == (status, {"error": reason}), path
        assert_unauthorized(request(server.url, "POST", "/collectd/data", body=b"[1]",
                                    headers={**refused, "Content-Type": "application/json"}))
        assert snapshot(redis) == before
    finally:
        server.stop()
    assert "Traceback" not in server.final_log, server.final_log


def test_empty_queue_answers_come_after_the_key_check(H, redis):
    set_record(redis, "k", queues=["kq"])
    assert request(H, "GET", "/q/kq", headers={"X-Auth-Key": "k"}).status == 204
    assert request(H, "GET", "/?queue=kq", headers={"X-Auth-Key": "k"}).status == 404
    assert_unauthorized(request(H, "GET", "/q/empty", headers={"X-Auth-Key": "k"}))
    assert_unauthorized(request(H, "GET", "/?queue=empty", headers={"X-Auth-Key": "k"}))


# -- Redis unusable ----------------------------------------------------------------------------


def test_redis_down_with_a_key_is_503():
    redis = RedisProcess().start()
    server = ServerProcess(redis.port)
    try:
        server.start()
        client = redis.client()
        set_record(client, "k", queues=["kq"], privs=["create"])
        client.close()
        assert request(server.url, "GET", "/", headers={"X-Auth-Key": "k"}).status == 302
        redis.stop()

        def key_reply():
            return request(server.url, "GET", "/", headers={"X-Auth-Key": "k"}, timeout=20)

        reply = wait_until(lambda: (lambda r: r.status == 503 and r)(key_reply()), 20,
                           "a 503 for the key once Redis is gone", interval=0.1)
        assert reply.header("Content-Type") == JSON
        assert json.loads(reply.body) == {"error": "redis unavailable"}
        # without a key, the redirect needs no Redis
        reply = request(server.url, "GET", "/")
        assert (reply.status, reply.header("Location")) == (302, "/static/index.html")
        for path, body in (("/q/kq?authkey=k", None), ("/stats/?authkey=k", None)):
            reply = request(server.url, "GET", path, body=body)
            assert (reply.status, json.loads(reply.body)) == (503, {"error": "redis unavailable"})
        reply = request(server.url, "POST", "/xmlrpc", body=xml_call("len", "kq"),
                        headers={"X-Auth-Key": "k"})
        assert (reply.status, reply.header("Content-Type")) == (503, JSON)
        assert json.loads(reply.body) == {"error": "redis unavailable"}
        reply = stream_head(server.url, "/sse/kq?authkey=k")
        assert (reply.status, json.loads(reply.body)) == (503, {"error": "redis unavailable"})
        reply = ws_handshake(server.url, "/ws/kq?authkey=k")
        assert (reply.status, json.loads(reply.body)) == (503, {"error": "redis unavailable"})
    finally:
        server.stop()
        redis.stop()
