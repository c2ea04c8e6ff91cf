"""Error replies, the processing order and routing (docs/http-api.md#errors, #processing-order,
#route-table), against a real server.

Every error is checked for its exact status, `Content-Type: application/json`, the body
`{"error": reason}` without a trailing CRLF, and that the rejected request left Redis untouched.
"""
from __future__ import annotations

import json
import socket
import time
from urllib.parse import quote, urlsplit

import pytest

from tests.conftest import ServerProcess
from tests.http_client import Reply, get, post, request

HTML = "text/html; charset=UTF-8"
JSON_TYPE = "application/json"
FORM = "application/x-www-form-urlencoded"


# -- helpers -------------------------------------------------------------------------------


def snapshot(redis) -> dict:
    """Every key with its type, serialized value and whether it has an expiry (SCAN, not KEYS)."""
    keys = set()
    cursor = "0"
    while True:
        cursor, batch = redis("SCAN", cursor, "COUNT", 1000)
        keys.update(batch)
        if str(cursor) == "0":
            break
    return {key: (redis("TYPE", key), redis("DUMP", key), redis("PTTL", key) > 0)
            for key in keys}


def assert_error(reply: Reply, status: int, reason: str) -> None:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.header("Content-Type") == JSON_TYPE
    assert not reply.body.endswith(b"\r\n"), reply.body
    assert json.loads(reply.body) == {"error": reason}, reply.body


def seed(H) -> None:
    """Some state for the "nothing changed" checks: pending and retained messages, a read
    count, a policy, a stopped queue."""
    assert post(H, "/q/test", form={"value": "one"}).status == 200
    assert post(H, "/q/test", form={"value": "two"}).status == 200
    assert post(H, "/q/test", form={"value": "three"}).status == 200
    assert get(H, "/q/test").status == 200  # test:1 retained
    assert post(H, "/queue", form={"body": '{"cmd": "get", "queue": "test"}'}).status == 200
    assert post(H, "/p/test", form={"policy": "roundrobin"}).status == 200
    assert post(H, "/q/other", form={"value": "x"}).status == 200
    assert post(H, "/control/other", form={"status": "stop"}).status == 200


@pytest.fixture
def seeded(H, redis):
    seed(H)
    return snapshot(redis)


def rejected(H, redis, before, method, path, status, reason, **kw) -> Reply:
    reply = request(H, method, path, **kw)
    assert_error(reply, status, reason)
    assert snapshot(redis) == before, "a rejected request changed Redis"
    return reply


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send raw bytes, read one response (Content-Length, chunked or until close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock)


def read_response(sock) -> tuple[int, dict, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before the headers: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()

    def more() -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed mid-body")
        return chunk

    if "content-length" in headers:
        size = int(headers["content-length"])
        while len(rest) < size:
            rest += more()
        return status, headers, rest[:size]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += more()
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return status, headers, body
            while len(rest) < size + 2:
                rest += more()
            body += rest[:size]
            rest = rest[size + 2:]
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        rest += chunk
    return status, headers, rest


# -- 400 missing argument ------------------------------------------------------------------

MISSING = [
    ("POST", "/", {"value": "x"}, "queue"),
    ("POST", "/", {"queue": "", "value": "x"}, "queue"),
    ("POST", "/", {"queue": "test"}, "value"),
    ("POST", "/", {"queue": "test", "value": ""}, "value"),
    ("POST", "/", {"queue": "test", "msg": "", "value": ""}, "value"),
    ("POST", "/q/test", None, "value"),
    ("POST", "/q/test", {"value": ""}, "value"),
    ("POST", "/q/test", {"msg": ""}, "value"),
    ("POST", "/q/test", {"ttl": "5", "callback": "cb"}, "value"),
    ("POST", "/q/new", {"other": "x"}, "value"),
    ("POST", "/p/test", None, "policy"),
    ("POST", "/p/test", {"policy": ""}, "policy"),
    ("POST", "/queue", None, "body"),
    ("POST", "/queue", {"body": ""}, "body"),
    ("POST", "/queue", {"msg": "", "body": ""}, "body"),
    ("POST", "/queue", {"cmd": "add", "queue": "x", "value": "y"}, "body"),
]


@pytest.mark.parametrize("method,path,form,name", MISSING)
def test_missing_argument(H, redis, seeded, method, path, form, name):
    kw = {"body": b"", "headers": {"Content-Type": FORM}} if form is None else {"form": form}
    rejected(H, redis, seeded, method, path, 400, f"missing argument: {name}", **kw)


def test_missing_argument_in_query_only_request(H, redis, seeded):
    rejected(H, redis, seeded, "POST", "/q/test?ttl=3", 400, "missing argument: value")
    rejected(H, redis, seeded, "POST", "/?value=x", 400, "missing argument: queue")


# -- 400 invalid argument: ttl ---------------------------------------------------------------

BAD_TTLS = ["abc", "0", "00", "2147483648", "99999999999999999999", "-1", "+5", " 5", "5 ",
            "\uff15", "1.5", "1e3", "0x10", "\u0665", "\u00b2", "5\n"]


@pytest.mark.parametrize("ttl", BAD_TTLS)
def test_invalid_ttl(H, redis, seeded, ttl):
    rejected(H, redis, seeded, "POST", "/q/test", 400, "invalid argument: ttl",
             form={"value": "x", "ttl": ttl})
    rejected(H, redis, seeded, "POST", "/", 400, "invalid argument: ttl",
             form={"queue": "test", "value": "x", "ttl": ttl})
    rejected(H, redis, seeded, "POST", "/q/test?ttl=" + quote(ttl, safe=""), 400,
             "invalid argument: ttl", form={"value": "x"})


@pytest.mark.parametrize("ttl,expected", [("1", 1), ("007", 7), ("2147483647", 2147483647)])
def test_valid_ttl(H, redis, ttl, expected):
    reply = post(H, "/q/t", form={"value": "x", "ttl": ttl})
    assert (reply.status, reply.body) == (200, b"t:1\r\n")
    remaining = redis("TTL", "t:1")
    assert expected - 2 <= remaining <= expected


def test_empty_ttl_is_absent(H, redis):
    assert post(H, "/q/t", form={"value": "x", "ttl": ""}).body == b"t:1\r\n"
    assert redis("TTL", "t:1") == -1


# -- 400 invalid argument: callback ----------------------------------------------------------

BAD_CALLBACKS = ["1cb", "a-b", "a..b", "a.", ".a", "a b", "cb()", "a;b", "a[0]", "a.1b",
                 "alert(1)//", "\u00e9", "a\u0301", "x" * 129, "a." + "b" * 127]
CALLBACK_ROUTES = [  # JSONP on GET, which a <script> may load; POST and DELETE ignore a bad one
    ("GET", "/q/test?callback={}", None),
    ("GET", "/?queue=test&callback={}", None),
    ("GET", "/p/test?callback={}", None),
    ("GET", "/stats/?callback={}", None),
    ("GET", "/stats/test?callback={}", None),
]


@pytest.mark.parametrize("callback", BAD_CALLBACKS)
def test_invalid_callback(H, redis, seeded, callback):
    assert len(callback) != 128
    for method, path, form in CALLBACK_ROUTES:
        kw = {"form": form} if form is not None else {}
        rejected(H, redis, seeded, method, path.format(quote(callback, safe="")), 400,
                 "invalid argument: callback", **kw)


def test_invalid_callback_on_post_or_delete_is_ignored(H, redis):
    """The reply is the one without a callback (the original dashboard POSTs `callback=?`)."""
    for method, path, form, body in (
            ("POST", "/q/test", {"value": "x", "callback": "1x"}, b"test:1\r\n"),
            ("POST", "/q/test?callback=a.", {"value": "x"}, b"test:2\r\n"),
            ("POST", "/?callback=alert(1)//", {"queue": "test", "value": "x"}, b"test:3\r\n"),
            ("POST", "/p/test?callback=1x", {"policy": "broadcast"}, b"OK\r\n"),
            ("POST", "/control/test?callback=%3F", {"status": "start"},
             b'{"stat": {"queue": "test", "status": 1}}\r\n'),
            ("DELETE", "/q/test?callback=a-b", None, b'{"queue": "test", "status": 1}\r\n')):
        reply = request(H, method, path, form=form)
        assert (reply.status, reply.body) == (200, body), (method, path)


def test_invalid_callback_on_empty_queue_is_400_not_204(H, redis):
    before = snapshot(redis)
    rejected(H, redis, before, "GET", "/q/empty?callback=1x", 400, "invalid argument: callback")


@pytest.mark.parametrize("callback", ["x" * 128, "a." + "b" * 126, "$", "_", "a.b.c", "$a.$_9"])
def test_valid_callback_accepted(H, callback):
    reply = post(H, f"/q/t?callback={callback}", form={"value": "x"})
    assert (reply.status, reply.body) == (200, f'{callback}("t:1");\r\n'.encode())


@pytest.mark.parametrize("path,form", [
    ("/control/t", None), ("/control/", None), ("/j/t", None),
    ("/queue", {"body": '{"cmd": "add", "queue": "t", "value": "v"}'}),
])
def test_callback_ignored_without_jsonp(H, path, form):
    """Routes (and methods) without JSONP ignore `callback`, even an invalid one."""
    for callback in ("1bad", "cb"):
        if form is None:
            reply = get(H, f"{path}?callback={callback}")
        else:
            reply = post(H, f"{path}?callback={callback}", form=form)
        assert reply.status == 200, reply.body
        assert not reply.body.startswith(callback.encode())


# -- 400 undecodable arguments ---------------------------------------------------------------

def test_undecodable_value_in_form(H, redis, seeded):
    rejected(H, redis, seeded, "POST", "/q/test", 400, "invalid argument: value",
             body=b"value=%FF", headers={"Content-Type": FORM})
    rejected(H, redis, seeded, "POST", "/q/test", 400, "invalid argument: value",
             body=b"value=a%C3", headers={"Content-Type": FORM})
    rejected(H, redis, seeded, "POST", "/", 400, "invalid argument: value",
             body=b"queue=test&value=%ED%A0%80", headers={"Content-Type": FORM})
    rejected(H, redis, seeded, "POST", "/", 400, "invalid argument: queue",
             body=b"queue=%FF&value=x", headers={"Content-Type": FORM})


def test_undecodable_raw_byte_in_form(H, redis, seeded):
    """A raw (not percent-encoded) invalid UTF-8 byte in the body."""
    rejected(H, redis, seeded, "POST", "/q/test", 400, "invalid argument: value",
             body=b"value=\xff", headers={"Content-Type": FORM})


def test_undecodable_value_in_query(H, redis, seeded):
    rejected(H, redis, seeded, "POST", "/q/test?value=%FF", 400, "invalid argument: value")
    rejected(H, redis, seeded, "POST", "/q/test?value=%C0%AF", 400, "invalid argument: value",
             form={"ttl": "5"})
    rejected(H, redis, seeded, "GET", "/?queue=%FF", 400, "invalid argument: queue")
    rejected(H, redis, seeded, "POST", "/p/test?policy=%FF", 400, "invalid argument: policy")
    rejected(H, redis, seeded, "POST", "/q/test?callback=%FF", 400, "invalid argument: callback",
             form={"value": "x"})
    rejected(H, redis, seeded, "POST", "/queue?body=%FF", 400, "invalid argument: body")


def test_undecodable_value_in_multipart(H, redis, seeded):
    body = (b"--BND\r\nContent-Disposition: form-data; name=\"value\"\r\n\r\n\xff\xfe\r\n"
            b"--BND--\r\n")
    rejected(H, redis, seeded, "POST", "/q/test", 400, "invalid argument: value", body=body,
             headers={"Content-Type": "multipart/form-data; boundary=BND"})


# -- 400 invalid queue name ------------------------------------------------------------------

BAD_NAMES = [
    "a b", "a\tb", "a\nb", "a\rb", "\u00a0", "a\u2028b", "\u3000", "a\u0085b",  # whitespace
    "a\x00b", "a\x01", "\x7f", "a\x1b[0m", "\u0080",  # control characters
    "a" * 257, "\u00e9" * 128 + "a", "\u20ac" * 86,  # 257 / 258 bytes
    "QUEUESET", "AUTHKEY", "AUTHKEY:", "AUTHKEY:x", "AUTHKEY:1", "queuestat:", "queuestat:x",
    "queuestat::x", "a:queue", ":queue", "a:UUID", "a:queuepolicy", "a:PUBSUB", "a:lock",
    "a:refcount", "test:1:refcount", "test:1:lock", "b:c:queue",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:40])
def test_invalid_queue_name_in_path(H, redis, seeded, name):
    q = quote(name, safe="")
    rejected(H, redis, seeded, "POST", f"/q/{q}", 400, "invalid queue name",
             form={"value": "x"})
    rejected(H, redis, seeded, "GET", f"/q/{q}", 400, "invalid queue name")
    rejected(H, redis, seeded, "DELETE", f"/q/{q}", 400, "invalid queue name")
    rejected(H, redis, seeded, "GET", f"/p/{q}", 400, "invalid queue name")
    rejected(H, redis, seeded, "POST", f"/p/{q}", 400, "invalid queue name",
             form={"policy": "roundrobin"})
    rejected(H, redis, seeded, "GET", f"/control/{q}", 400, "invalid queue name")
    rejected(H, redis, seeded, "POST", f"/control/{q}", 400, "invalid queue name",
             form={"status": "start"})
    rejected(H, redis, seeded, "GET", f"/stats/{q}", 400, "invalid queue name")
    rejected(H, redis, seeded, "GET", f"/j/{q}", 400, "invalid queue name")


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:40])
def test_invalid_queue_name_in_argument(H, redis, seeded, name):
    rejected(H, redis, seeded, "POST", "/", 400, "invalid queue name",
             form={"queue": name, "value": "x"})
    rejected(H, redis, seeded, "GET", "/?queue=" + quote(name, safe=""), 400,
             "invalid queue name")


@pytest.mark.parametrize("name", ["a" * 256, "\u00e9" * 128, "\u20ac" * 85 + "a",
                                  "QUEUESETS", "AUTHKEYS", "xAUTHKEY:", "queuestat",
                                  "a:queue:b", "a:Queue", "a:uuid", "queue", "UUID", "refcount:a",
                                  "a\u200bb", "\U0001d11e", "a:", ":", "_"])
def test_valid_edge_names_accepted(H, redis, name):
    q = quote(name, safe="")
    reply = post(H, f"/q/{q}", form={"value": "x"})
    assert (reply.status, reply.body) == (200, f"{name}:1\r\n".encode())
    assert redis("GET", f"{name}:1") == "x"
    reply = post(H, "/", form={"queue": name, "value": "y"})
    assert (reply.status, reply.body) == (200, f"{name}:2\r\n".encode())


@pytest.mark.parametrize("method,path,form", [
    ("POST", "/q/", {"value": "x"}),
    ("DELETE", "/q/", None),
    ("GET", "/p/", None),
    ("POST", "/p/", {"policy": "broadcast"}),
    ("POST", "/control/", {"status": "start"}),
    ("GET", "/j/", None),
    ("GET", "/q/%FF", None),
    ("POST", "/q/%FF", {"value": "x"}),
    ("DELETE", "/q/%FF", None),
    ("POST", "/q/a%FFb", {"value": "x"}),
    ("POST", "/q/%C0%AF", {"value": "x"}),
    ("POST", "/q/%ED%A0%80", {"value": "x"}),
    ("GET", "/p/%FF", None),
    ("POST", "/control/%FE", {"status": "start"}),
    ("GET", "/stats/%FF", None),
    ("GET", "/j/%FF", None),
    ("POST", "/q/a%20b", {"value": "x"}),
    ("POST", "/q/a%3Aqueue", {"value": "x"}),
    ("POST", "/q/a/b:queue", {"value": "x"}),
])
def test_invalid_queue_name_routes(H, redis, seeded, method, path, form):
    kw = {"form": form} if form is not None else {}
    rejected(H, redis, seeded, method, path, 400, "invalid queue name", **kw)


@pytest.mark.parametrize("target", [b"/q/a\xffb", "/q/é".encode(), b"/q/a\x7fb"])
def test_invalid_raw_byte_in_path(H, redis, seeded, target):
    """A raw byte past ASCII (not percent-encoded) in the request target, even valid UTF-8:
    the request line is malformed (RFC 9112 §3.2), whatever name it would spell."""
    port = urlsplit(H).port
    status, headers, body = raw_exchange(
        port, b"POST " + target + b"?value=v HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (status, headers["content-type"]) == (400, JSON_TYPE)
    assert json.loads(body) == {"error": "malformed request line"}
    assert snapshot(redis) == seeded


# -- 400 malformed JSON ----------------------------------------------------------------------

MALFORMED = [
    "not json", "{", "[1]", '["cmd", "add"]', '"add"', "null", "1", "true", " ",
    '{"queue": "test"}', '{"cmd": ""}', '{"cmd": 1}', '{"cmd": null}', '{"cmd": ["add"]}',
    '{"cmd": {"x": 1}}', '{"cmd": true}',
    '{"cmd": "add", "queue": "test", "value": NaN}', '{"cmd": "add", "queue": "t", "v": Infinity}',
    '{"cmd": "get", "queue": "test", "x": -Infinity}', "NaN",
    '{"cmd": "get", "queue": "test"} x', '{"cmd": "get", "queue": "test",}',
    "{'cmd': 'get', 'queue': 'test'}", '{"cmd": "get" "queue": "test"}',
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_json(H, redis, seeded, text):
    rejected(H, redis, seeded, "POST", "/queue", 400, "malformed JSON", form={"body": text})
    rejected(H, redis, seeded, "POST", "/queue", 400, "malformed JSON", form={"msg": text})


def test_malformed_json_from_query(H, redis, seeded):
    rejected(H, redis, seeded, "POST", "/queue?body=" + quote("[1, 2]"), 400, "malformed JSON")


# -- 404 -------------------------------------------------------------------------------------

UNROUTED = ["/nope", "/stats", "/q", "/c", "/p", "/j", "/ws", "/sse", "/control", "/collectd",
            "/queue/", "/xmlrpc/", "/Q/test", "/STATS/", "/x/q/test", "/index.html",
            "/static", "/favicon.ico/", "/robots.txt/", "/queue/x", "/stats?x=1",
            "/q?queue=test", "/collectd/data"]


@pytest.mark.parametrize("path", UNROUTED)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "PUT"])
def test_unrouted_not_found(H, redis, seeded, method, path):
    kw = {"form": {"value": "x", "queue": "test"}} if method == "POST" else {}
    rejected(H, redis, seeded, method, path, 404, "not found", **kw)


@pytest.mark.parametrize("path", [
    "/static/nope.html", "/static/", "/static/../core.py", "/static/%2e%2e/core.py",
    "/static/%2E%2E/__init__.py", "/static/..%2fcore.py", "/static/..%2Fweb.py",
    "/static/../../restmq/core.py", "/static//etc/passwd", "/static/%2Fetc%2Fpasswd",
    "/static/./help.html/..", "/static/..", "/static/%2e%2e", "/static/..%5cweb.py",
    "/static/help.html%00", "/static/%FF", "/static/HELP.HTML", "/static/help.html/",
])
def test_static_not_found(H, redis, seeded, path):
    rejected(H, redis, seeded, "GET", path, 404, "not found")


def test_static_not_found_head(H):
    reply = request(H, "HEAD", "/static/nope.html")
    assert reply.status == 404
    assert reply.header("Content-Type") == JSON_TYPE


def test_empty_queue_404(H, redis, seeded):
    rejected(H, redis, seeded, "GET", "/?queue=empty", 404, "empty queue")
    # errors are never JSONP-wrapped
    rejected(H, redis, seeded, "GET", "/?queue=empty&callback=cb", 404, "empty queue")
    assert post(H, "/q/empty", form={"value": "x"}).status == 200
    assert get(H, "/?queue=empty").status == 200
    before = snapshot(redis)
    rejected(H, redis, before, "GET", "/?queue=empty", 404, "empty queue")


# -- 405 -------------------------------------------------------------------------------------

ROUTE_METHODS = {
    "/": {"GET", "POST"},
    "/q/test": {"GET", "POST", "DELETE"},
    "/q/": {"GET", "POST", "DELETE"},
    "/p/test": {"GET", "POST"},
    "/control/test": {"GET", "POST"},
    "/control/": {"GET", "POST"},
    "/stats/": {"GET"},
    "/stats/test": {"GET"},
    "/j/test": {"GET"},
    "/queue": {"GET", "POST"},
}


def allowed(reply: Reply) -> set[str]:
    value = reply.header("Allow")
    assert value is not None, "405 without an Allow header"
    return {token.strip() for token in value.split(",") if token.strip()}


NOT_ALLOWED = [(path, method) for path in ROUTE_METHODS
               for method in ("PUT", "PATCH", "OPTIONS", "HEAD", "DELETE", "POST", "TRACE",
                              "PROPFIND")
               if method not in ROUTE_METHODS[path]]


@pytest.mark.parametrize("path,method", NOT_ALLOWED)
def test_method_not_allowed(H, redis, seeded, path, method):
    kw = {"form": {"value": "x", "queue": "test", "policy": "roundrobin", "status": "start"}} \
        if method in ("PUT", "PATCH", "POST") else {}
    reply = request(H, method, path, **kw)
    assert reply.status == 405, (reply.status, reply.body)
    assert reply.header("Content-Type") == JSON_TYPE
    assert allowed(reply) == ROUTE_METHODS[path]
    if method != "HEAD":
        assert_error(reply, 405, "method not allowed")
    else:
        assert reply.body == b""
    assert snapshot(redis) == seeded


@pytest.mark.parametrize("path", ["/static/help.html", "/favicon.ico", "/robots.txt",
                                  "/static/nope.html"])
@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT", "OPTIONS"])
def test_static_method_not_allowed(H, redis, seeded, path, method):
    reply = rejected(H, redis, seeded, method, path, 405, "method not allowed")
    assert allowed(reply) == {"GET", "HEAD"}


def test_405_before_400(H, redis, seeded):
    """Method (step 1) is judged before names and arguments (step 4)."""
    for path in ("/q/a%20b", "/q/%FF", "/p/QUEUESET", "/j/", "/stats/a%00"):
        rejected(H, redis, seeded, "PUT", path + "?callback=1x", 405, "method not allowed")
    rejected(H, redis, seeded, "POST", "/stats/?callback=1x", 405, "method not allowed")
    rejected(H, redis, seeded, "DELETE", "/p/x?callback=1x", 405, "method not allowed")


def test_404_before_405(H, redis, seeded):
    rejected(H, redis, seeded, "PUT", "/stats", 404, "not found")
    rejected(H, redis, seeded, "DELETE", "/queue/", 404, "not found")


def test_api_errors_carry_no_store_and_csp(H):
    for reply in (post(H, "/q/a%20b", form={"value": "x"}), request(H, "PUT", "/q/x"),
                  get(H, "/?queue=empty"), post(H, "/queue", form={"body": "x"})):
        assert reply.status >= 400
        assert reply.header("Cache-Control") == "no-store"
        assert reply.header("Content-Security-Policy") == "default-src 'none'; sandbox"
        assert reply.header("ETag") is None


# -- 413 -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(redis_proc):
    proc = ServerProcess(redis_proc.port, "--max-body", "100").start()
    yield proc
    proc.stop()
    log = proc.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


@pytest.fixture
def S(small, redis):
    return small.url


def test_body_exactly_at_limit_accepted(S, redis):
    body = b"value=" + b"v" * 94
    assert len(body) == 100
    reply = post(S, "/q/t", body=body, headers={"Content-Type": FORM})
    assert (reply.status, reply.body) == (200, b"t:1\r\n")
    assert redis("GET", "t:1") == "v" * 94


def test_body_over_limit(S, redis):
    seed(S)
    before = snapshot(redis)
    body = b"value=" + b"v" * 95
    rejected(S, redis, before, "POST", "/q/t", 413, "request body too large", body=body,
             headers={"Content-Type": FORM})
    rejected(S, redis, before, "POST", "/queue", 413, "request body too large",
             form={"body": json.dumps({"cmd": "add", "queue": "t", "value": "v" * 200})})
    rejected(S, redis, before, "POST", "/", 413, "request body too large",
             form={"queue": "t", "value": "v" * 200})
    # 413 (step 2) comes before argument and name validation (step 4)
    rejected(S, redis, before, "POST", "/q/a%20b", 413, "request body too large",
             form={"value": "v" * 200})
    rejected(S, redis, before, "POST", "/p/t?callback=1x", 413, "request body too large",
             form={"policy": "x" * 200})
    rejected(S, redis, before, "POST", "/q/t", 413, "request body too large",
             body=b"x" * 1000, headers={"Content-Type": "text/plain"})


def test_query_string_is_not_body(S, redis):
    reply = post(S, "/q/t?value=" + "v" * 300)
    assert (reply.status, reply.body) == (200, b"t:1\r\n")


def test_declared_length_refused_without_body(S, small, redis):
    seed(S)
    before = snapshot(redis)
    started = time.monotonic()
    status, headers, body = raw_exchange(
        small.port, b"POST /q/t HTTP/1.1\r\nHost: x\r\nContent-Type: " + FORM.encode()
        + b"\r\nContent-Length: 1000000\r\n\r\n")
    assert time.monotonic() - started < 4
    assert (status, headers.get("content-type")) == (413, JSON_TYPE)
    assert not body.endswith(b"\r\n")
    assert json.loads(body) == {"error": "request body too large"}
    assert snapshot(redis) == before


def test_declared_length_with_expect_continue(S, small, redis):
    """No `100 Continue` is sent for a body that will be refused: the 413 comes first."""
    with socket.create_connection(("127.0.0.1", small.port), timeout=5) as sock:
        sock.sendall(b"POST /q/t HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Type: " + FORM.encode() + b"\r\nContent-Length: 101\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 413
    assert json.loads(body) == {"error": "request body too large"}
    assert snapshot(redis) == {}


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def chunked_request(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() + body


def test_chunked_body_over_limit(S, small, redis):
    seed(S)
    before = snapshot(redis)
    status, headers, body = raw_exchange(
        small.port, chunked_request("/q/t", chunked(b"value=" + b"v" * 54, b"v" * 41)))
    assert (status, headers.get("content-type")) == (413, JSON_TYPE)
    assert json.loads(body) == {"error": "request body too large"}
    assert not body.endswith(b"\r\n")
    assert snapshot(redis) == before
    status, headers, body = raw_exchange(
        small.port, chunked_request("/q/t", chunked(b"value=" + b"v" * 500)))
    assert status == 413
    assert json.loads(body) == {"error": "request body too large"}
    assert snapshot(redis) == before


def test_chunked_body_within_limit(S, small, redis):
    status, _, body = raw_exchange(
        small.port, chunked_request("/q/t", chunked(b"value=" + b"v" * 54, b"v" * 40)))
    assert (status, body) == (200, b"t:1\r\n")
    assert redis("GET", "t:1") == "v" * 94


def test_413_on_unrouted_path_is_404(S, small, redis):
    before = snapshot(redis)
    rejected(S, redis, before, "POST", "/nope", 404, "not found", form={"value": "v" * 200})
    rejected(S, redis, before, "POST", "/stats", 404, "not found", form={"value": "v" * 200})
    status, _, body = raw_exchange(
        small.port, b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    assert (status, json.loads(body)) == (404, {"error": "not found"})


def test_413_on_wrong_method_is_405(S, small, redis):
    before = snapshot(redis)
    reply = rejected(S, redis, before, "PUT", "/q/t", 405, "method not allowed",
                     form={"value": "v" * 200})
    assert allowed(reply) == {"GET", "POST", "DELETE"}
    rejected(S, redis, before, "POST", "/stats/", 405, "method not allowed",
             form={"value": "v" * 200})
    status, _, body = raw_exchange(
        small.port, b"POST /j/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    assert (status, json.loads(body)) == (405, {"error": "method not allowed"})


@pytest.mark.parametrize("path,status", [("/q/test", 405), ("/stats/", 405), ("/nope", 404),
                                         ("/static/help.html", 200), ("/robots.txt", 200)])
def test_head_replies_carry_no_body(H, redis, path, status):
    """On the wire: nothing follows the headers of a HEAD reply."""
    port = urlsplit(H).port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep and int(head.split()[1]) == status, data
    assert rest == b"", rest
    assert snapshot(redis) == {}
