"""Fuzzing through HTTP against the live server (fixture H): hypothesis-generated queue names
(any bytes, percent-encoded or raw in the request target) on every route with a name in its
path, and arbitrary query strings and form bodies.

Invariants (docs/http-api.md#queue-names, #processing-order, #errors): never a 5xx and never a
hang; every error is `Content-Type: application/json` with the body `{"error": "<reason>"}`; a
request refused with 400 wrote nothing to Redis. The server must not log an internal error.

Shrinking is off (a hang costs the socket timeout per attempt); the explicit tests at the end
are the minimal reproducers of what the fuzzing found.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
from urllib.parse import quote_from_bytes, unquote_to_bytes, urlsplit

import pytest

import hypothesis  # noqa: E402,F401 - installed by make test

from hypothesis import (HealthCheck, Phase, example, given, settings,  # noqa: E402
                        strategies as st)

from restmq import names as core  # noqa: E402

from tests.oracles import valid_path_name  # noqa: E402
from tests.util import log_marker  # noqa: E402

SCALE = float(os.environ.get("RESTMQ_FUZZ_SCALE", "1"))
TIMEOUT = 3.0


def bounded(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


class Hang(AssertionError):
    pass


def raw_request(url: str, method: str, target: bytes, body: bytes | None = None,
                headers: dict[str, str] | None = None, status_only: bool = False):
    """One request with the target bytes exactly as given (no client-side encoding or
    normalization) on a fresh connection. Returns (status, headers, body); with
    `status_only`, (status, None, b"") as soon as the status line arrived."""
    parts = urlsplit(url)
    head = [b"%s %s HTTP/1.1" % (method.encode(), target),
            b"Host: %s:%d" % (parts.hostname.encode(), parts.port), b"Connection: close"]
    for name, value in (headers or {}).items():
        head.append(f"{name}: {value}".encode("latin-1"))
    if body is not None:
        head.append(b"Content-Length: %d" % len(body))
    data = b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")
    sock = socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT)
    try:
        sock.sendall(data)
        if status_only:
            line = sock.makefile("rb").readline(1024)
            if not line:
                raise Hang(f"connection closed without a reply: {method} {target!r}")
            return int(line.split()[1]), None, b""
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response.status, response.headers, response.read()
    except socket.timeout:
        raise Hang(f"no reply within {TIMEOUT} s: {method} {target!r} body={body!r} "
                   f"headers={headers!r}") from None
    finally:
        sock.close()


def assert_error_shape(status, headers, body, what):
    """docs/http-api.md#errors: no 5xx; an error is application/json `{"error": "<reason>"}`."""
    assert status < 500, f"{status} {body!r} for {what}"
    if status >= 400 and headers is not None:
        assert headers.get("Content-Type") == "application/json", (status, headers, what)
        reply = json.loads(body)
        assert isinstance(reply, dict) and list(reply) == ["error"], (body, what)
        assert isinstance(reply["error"], str) and reply["error"]


@pytest.fixture
def quiet_log(server):
    """Fails the test when the server logged an internal error (a handler exception, logged at
    once with its traceback) while it ran."""
    before = len(server.log())
    yield
    added = log_marker(server)[before:]
    assert "#critical] internal error in " not in added, added


# -- names in paths ----------------------------------------------------------------------------

NAME_PIECES = [b":", b"::", b"/", b"//", b"%", b"+", b".", b"..", b"1", b"0", b"queue",
               b"UUID", b"queuepolicy", b"PUBSUB", b"lock", b"refcount", b"queuestat:",
               b"AUTHKEY", b"AUTHKEY:", b"QUEUESET", b":queue", b":1", b":refcount", b"a",
               b"test", b"\xc3\xa9", b"\xf0\x9f\x98\x80", b"\xff", b"\xc3", b"\xed\xa0\x80",
               b"\x00", b"\x7f", b"\xc2\x85", b" ", b"\t", b"\xe2\x80\x83", b"*", b"?", b"#",
               b"x" * 250, b"\xc3\xa9" * 64, b"<", b"&", b'"', b"'", b"\\"]
name_bytes = st.one_of(st.lists(st.sampled_from(NAME_PIECES), max_size=6).map(b"".join),
                       st.binary(max_size=30))
# A byte may go raw into the request target only when it means itself there.
# Bytes a request-target may carry raw; any other is percent-encoded (a raw byte past ASCII is
# a malformed request line: test_errors.py::test_invalid_raw_byte_in_path).
RAW_OK = set(range(0x21, 0x7f)) - set(b"%?#")


@st.composite
def encoded_names(draw):
    """(name bytes, request-target bytes for them): each byte percent-encoded (either case) or,
    where allowed, raw."""
    raw = draw(name_bytes)
    out = bytearray()
    for b in raw:
        how = draw(st.sampled_from(["raw", "upper", "lower"])) if b in RAW_OK else \
            draw(st.sampled_from(["upper", "lower"]))
        if how == "raw":
            out.append(b)
        else:
            out += (b"%%%02X" if how == "upper" else b"%%%02x") % b
    assert unquote_to_bytes(bytes(out)) == raw
    return raw, bytes(out)


valid = valid_path_name  # independent of the server's own check (tests/oracles.py)


# (route, method, form body, whether the empty name is a listing)
ROUTES = [("/q/", "GET", None, True), ("/q/", "POST", b"value=v", False),
          ("/q/", "DELETE", None, False), ("/p/", "GET", None, False),
          ("/p/", "POST", b"policy=roundrobin", False), ("/control/", "GET", None, True),
          ("/control/", "POST", b"status=stop", False), ("/stats/", "GET", None, True),
          ("/j/", "GET", None, False), ("/c/", "GET", None, False)]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSONP = {("/q/", "GET"), ("/q/", "POST"), ("/q/", "DELETE"), ("/p/", "GET"), ("/p/", "POST"),
         ("/control/", "POST"), ("/stats/", "GET"), ("/c/", "GET")}  # the route table


# Every reserved form, tried first on each run (the random names find them only now and then).
RESERVED = [b"QUEUESET", b"AUTHKEY", b"AUTHKEY:1", b"queuestat:x", b"x:queue", b"x:UUID",
            b"x:queuepolicy", b"x:PUBSUB", b"x:lock", b"x:refcount"]


def reserved_examples(test):
    for name in RESERVED:
        test = example(("/q/", "POST", b"value=v", False), (name, name), b"")(test)
    return test


@reserved_examples
@bounded(400)
@given(st.sampled_from(ROUTES), encoded_names(), st.sampled_from([b"", b"?callback=cb",
                                                                  b"?callback=1x", b"?x=%ff"]))
def test_queue_names_in_paths(H, redis, quiet_log, route, name, query):
    prefix, method, body, listing = route
    raw, encoded = name
    redis("FLUSHALL")
    target = prefix.encode() + encoded + query
    what = f"{method} {target!r}"
    status, headers, reply = raw_request(H, method, target, body, FORM if body else None,
                                         status_only=prefix == "/c/")
    if prefix == "/c/" and status >= 400:  # an error is no stream: read it whole
        status, headers, reply = raw_request(H, method, target)
    assert_error_shape(status, headers, reply, what)
    bad_query = query in (b"?callback=1x", b"?x=%ff")
    if raw == b"" and listing:
        assert status == 200 or (bad_query and status == 400), (what, status, reply)
    elif not valid(raw):
        assert status == 400, what
        assert json.loads(reply) == {"error": "invalid queue name"}, what
    elif query == b"?callback=1x" and (prefix, method) in JSONP and method == "GET":
        # POST and DELETE ignore an invalid callback: no <script> can send them
        assert (status, json.loads(reply)) == (400, {"error": "invalid argument: callback"})
    elif query == b"?x=%ff":  # whether an argument no route reads is checked is left open
        assert status in (200, 204, 400), (what, status, reply)
    else:
        assert status in (200, 204), (what, status, reply)
    if status == 400:
        assert redis("DBSIZE") == 0, f"{what} was refused but wrote {redis('KEYS', '*')}"


@bounded(150)
@given(encoded_names())
def test_rejected_name_on_post_root_writes_nothing(H, redis, quiet_log, name):
    raw, _ = name
    redis("FLUSHALL")
    body = b"queue=" + quote_from_bytes(raw, safe="").encode() + b"&value=v&ttl=5"
    status, headers, reply = raw_request(H, "POST", b"/", body, FORM)
    assert_error_shape(status, headers, reply, body)
    if raw and not valid(raw):
        try:
            raw.decode("utf-8")
            reason = "invalid queue name"
        except UnicodeDecodeError:  # a form value is strict UTF-8 (docs/http-api.md#arguments)
            reason = "invalid argument: queue"
        assert (status, json.loads(reply)) == (400, {"error": reason})
        assert redis("DBSIZE") == 0
    elif not raw:
        assert (status, json.loads(reply)) == (400, {"error": "missing argument: queue"})
    else:
        assert status == 200


# -- query strings and form bodies --------------------------------------------------------------

FIELD_NAMES = [b"queue", b"value", b"msg", b"ttl", b"callback", b"policy", b"status", b"body",
               b"authkey", b"x", b"", b"%ff", b"va%6Cue", b"value%00"]
FIELD_VALUES = [b"", b"v", b"test", b"%ff", b"%C3%A9", b"%", b"%zz", b"+", b"1", b"0",
                b"2147483647", b"2147483648", b"-1", b"1.5", b"\xff", b"cb", b"a.b", b"1x",
                b"roundrobin", b"broadcast", b"start", b"stop", b"%7B%22cmd%22%3A%22add%22%7D",
                b'{"cmd":"add","queue":"q","value":"v"}', b'{"cmd":"get","queue":"q"}',
                b'{"cmd":"del","queue":"q","key":"q:1"}', b'{"cmd":"take","queue":"q:queue"}',
                b"=", b"&", b"x" * 300]
urlencoded = st.one_of(
    st.lists(st.tuples(st.sampled_from(FIELD_NAMES), st.sampled_from(FIELD_VALUES),
                       st.booleans()), max_size=6).map(
        lambda fields: b"&".join(n + (b"=" + v if eq else b"") for n, v, eq in fields)),
    st.binary(max_size=80))


@st.composite
def multipart_bodies(draw):
    """(Content-Type, body): well-formed and broken multipart/form-data."""
    boundary = draw(st.sampled_from(["XyZ", "----b", '"q"', "a b", "é"]))
    bare = boundary.strip('"').encode("utf-8")
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from([b"value", b"queue", b"msg", b"ttl", b"body", b"\xff",
                                     b"caf\xc3\xa9", b""]))
        header = draw(st.sampled_from([
            b'Content-Disposition: form-data; name="%s"' % name,
            b'Content-Disposition: form-data; name="%s"; filename="f.txt"' % name,
            b"Content-Disposition: attachment; name=%s" % name,
            b"Content-Disposition: form-data", b"", b"no colon here", b" folded: line",
            b"X-\xff: v", b'Content-Disposition: form-data; name="a";;;; x="',
        ]))
        value = draw(st.sampled_from([b"v", b"", b"\xff\xfe", b"test", b"1", b"\r\n",
                                      b"--" + bare]))
        parts.append(b"--" + bare + b"\r\n" + header + b"\r\n\r\n" + value + b"\r\n")
    ending = draw(st.sampled_from([b"--" + bare + b"--\r\n", b"--" + bare + b"--", b""]))
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + ending


CONTENT_TYPES = ["application/x-www-form-urlencoded", "APPLICATION/X-WWW-FORM-URLENCODED; x=y",
                 "text/plain", "application/json", "text/xml", "", "multipart/form-data",
                 "multipart/form-data; boundary=", "application/octet-stream"]
POST_ROUTES = ["/", "/q/test", "/q/", "/p/test", "/control/test", "/queue", "/xmlrpc",
               "/stats/test", "/j/test", "/static/index.html", "/nowhere"]
queries = st.one_of(st.just(b""), urlencoded.map(lambda q: b"?" + q.replace(b" ", b"+")
                                                 .replace(b"#", b"%23")
                                                 .replace(b"\r", b"%0D")
                                                 .replace(b"\n", b"%0A")))


def safe_query(q: bytes) -> bytes:
    """Raw bytes the request line can carry (no space, CR, LF; `#` kept out)."""
    return bytes(b for b in q if b > 0x20 and b != 0x23 and b != 0x7f)


@bounded(300)
@given(st.sampled_from(POST_ROUTES), queries, st.one_of(
    st.tuples(st.sampled_from(CONTENT_TYPES), urlencoded), multipart_bodies()))
def test_form_bodies_and_queries(H, redis, quiet_log, route, query, body):
    content_type, payload = body
    redis("FLUSHALL")
    target = route.encode() + safe_query(query)
    headers = {"Content-Type": content_type} if content_type else {}
    status, reply_headers, reply = raw_request(H, "POST", target, payload, headers)
    what = f"POST {target!r} {headers} {payload!r}"
    assert_error_shape(status, reply_headers, reply, what)
    if status == 400:
        assert redis("DBSIZE") == 0, f"{what} was refused but wrote {redis('KEYS', '*')}"


@bounded(150)
@given(st.sampled_from(["/", "/q/test", "/p/test", "/control/test", "/stats/", "/stats/test",
                        "/control/", "/q/", "/queue", "/j/test"]),
       st.sampled_from(["GET", "DELETE", "HEAD", "PUT", "PATCH", "OPTIONS", "TRACE", "FOO"]),
       queries)
def test_methods_and_queries(H, redis, quiet_log, route, method, query):
    redis("FLUSHALL")
    target = route.encode() + safe_query(query)
    status, headers, reply = raw_request(H, method, target)
    what = f"{method} {target!r}"
    if method == "HEAD":  # no body to judge
        assert status < 500, what
    else:
        assert_error_shape(status, headers, reply, what)
    if status == 405:
        assert headers.get("Allow"), what
    if status == 400:
        assert redis("DBSIZE") == 0, what


@bounded(200)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode),
                 st.builds(lambda e, m: (f'<?xml version="1.0" encoding="{e}"?><methodCall>'
                                         f'<methodName>{m}</methodName></methodCall>').encode(),
                           st.sampled_from(["utf-8", "latin-1", "utf-16", "utf-7", "ascii"]),
                           st.sampled_from(["len", "queues", "set", "x"]))))
def test_xmlrpc_bodies(H, redis, quiet_log, body):
    redis("FLUSHALL")
    status, headers, reply = raw_request(H, "POST", b"/xmlrpc", body, {"Content-Type": "text/xml"})
    assert_error_shape(status, headers, reply, body)
    if status == 200:
        assert headers.get("Content-Type") == "text/xml"
    else:
        assert (status, json.loads(reply)) == (400, {"error": "malformed XML-RPC request"})
        assert redis("DBSIZE") == 0


# -- the minimal reproducers of what the fuzzing found ------------------------------------------

MULTIPART = {"Content-Type": "multipart/form-data; boundary=XX"}


@pytest.mark.parametrize("part_header", [
    pytest.param(b"no colon here", id="header-line-without-colon"),
    pytest.param(b"X-\xff: v", id="header-not-utf8"),
    pytest.param(b" folded: line", id="header-starting-with-whitespace"),
])
def test_multipart_part_with_a_bad_header_line_is_answered(H, redis, part_header):
    """FINDING: cyclone's multipart parser raises ValueError / UnicodeDecodeError / KeyError on
    these part headers; web.BaseHandler._parse_body lets it escape from prepare(), and the
    error path then fails itself (Logger.failure without a failure outside an except block), so
    the request is never answered: the client hangs until it gives up. Expected: a reply
    (400, or the part ignored) and no traceback."""
    body = b"--XX\r\n" + part_header + b"\r\n\r\nhello\r\n--XX--\r\n"
    status, headers, reply = raw_request(H, "POST", b"/q/test", body, MULTIPART)
    assert_error_shape(status, headers, reply, body)


def test_xmlrpc_unknown_encoding_is_400_not_500(H, redis):
    """FINDING: an XML declaration naming an encoding Python does not know makes expat raise
    LookupError in xmlrpc.check_document: 500 `internal error` and a traceback in the log."""
    body = (b'<?xml version="1.0" encoding="x"?><methodCall><methodName>len</methodName>'
            b'</methodCall>')
    status, headers, reply = raw_request(H, "POST", b"/xmlrpc", body)
    assert (status, json.loads(reply)) == (400, {"error": "malformed XML-RPC request"})
