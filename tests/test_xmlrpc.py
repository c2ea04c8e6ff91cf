"""XML-RPC at `POST /xmlrpc` (docs/frontends.md#xml-rpc, docs/http-api.md#xml-rpc-faults) with the
standard library's real client, `xmlrpc.client.ServerProxy`, plus hostile documents posted raw:
every one is refused before anything reaches Redis, and nothing is ever fetched."""
from __future__ import annotations

import json
import socket
import xmlrpc.client
from xml.sax.saxutils import escape

import pytest

from tests.comet import CometClient
from tests.conftest import ServerProcess
from tests.http_client import Reply, request
from tests.resp import RedisClient, seed_queue, snapshot
from tests.util import SweepWatch, numsub, wait_until

MALFORMED = {"error": "malformed XML-RPC request"}


# -- helpers -----------------------------------------------------------------------------------


def proxy(base: str, **kw) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(base + "/xmlrpc", allow_none=True, **kw)


def fault_of(call, *args) -> tuple[int, str]:
    with pytest.raises(xmlrpc.client.Fault) as info:
        call(*args)
    return info.value.faultCode, info.value.faultString


def post_xml(base: str, body: bytes | str, path: str = "/xmlrpc", **kw) -> Reply:
    return request(base, "POST", path, body=body, headers={"Content-Type": "text/xml"}, **kw)


def call_body(method: str, *params: str, raw_params: tuple[str, ...] = ()) -> str:
    """A methodCall with string params (escaped) and already rendered `<value>` texts."""
    values = [f"<value><string>{escape(p)}</string></value>" for p in params] + list(raw_params)
    inner = "".join(f"<param>{v}</param>" for v in values)
    return (f"<?xml version='1.0'?>\n<methodCall><methodName>{method}</methodName>"
            f"<params>{inner}</params></methodCall>")



def seed(redis) -> None:
    """A queue with one pending message, so that a leaked get or set would show."""
    seed_queue(redis, "seeded", "old")


def assert_malformed(reply: Reply) -> None:
    assert reply.status == 400, reply
    assert reply.header("Content-Type") == "application/json"
    assert json.loads(reply.body) == MALFORMED
    assert not reply.body.endswith(b"\r\n")


def assert_fault(reply: Reply, code: int, message: str) -> None:
    assert reply.status == 200, reply
    assert reply.header("Content-Type") == "text/xml"
    with pytest.raises(xmlrpc.client.Fault) as info:
        xmlrpc.client.loads(reply.body)
    assert (info.value.faultCode, info.value.faultString) == (code, message)


class Listener:
    """A TCP listener that records whether anybody connected (nothing must be fetched)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.setblocking(False)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def connected(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def close(self):
        self.sock.close()


class RedisSubscriber:
    """A raw pub/sub connection on the session's Redis."""

    def __init__(self, port: int, channel: str):
        self.client = RedisClient(port)
        assert self.client("SUBSCRIBE", channel) == ["subscribe", channel, 1]

    def next_message(self, timeout: float = 10.0):
        self.client.sock.settimeout(timeout)
        return self.client._reply()

    def close(self):
        self.client.close()


@pytest.fixture
def rpc(H):
    return proxy(H)


@pytest.fixture(scope="module")
def big_server(redis_proc):
    """A server whose --max-body lets a 100k-deep document through to the parser."""
    proc = ServerProcess(redis_proc.port, "--max-body", "8000000").start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.final_log, proc.final_log


# -- the methods -------------------------------------------------------------------------------


def test_set_returns_the_new_key_and_stores_the_message(rpc, redis):
    assert rpc.set("test", "foobar") == "test:1"
    assert rpc.set("test", "second") == "test:2"
    assert redis("GET", "test:1") == "foobar"
    assert redis("GET", "test:2") == "second"
    assert redis("LRANGE", "test:queue", 0, -1) == ["test:2", "test:1"]
    assert redis("SMEMBERS", "QUEUESET") == ["test"]
    assert redis("GET", "queuestat::test") == "1"
    assert redis("GET", "test:UUID") == "2"


def test_set_accepts_an_empty_value(rpc, redis):
    assert rpc.set("empty", "") == "empty:1"
    assert redis("GET", "empty:1") == ""
    assert rpc.get("empty") == ""


def test_get_is_a_hard_get_and_the_value_is_retained(rpc, redis):
    rpc.set("test", "first")
    rpc.set("test", "second")
    assert rpc.get("test") == "first"  # oldest first
    assert redis("LRANGE", "test:queue", 0, -1) == ["test:2"]
    assert redis("GET", "test:1") == "first"  # retained for --consumed-ttl (3600)
    assert 0 < redis("TTL", "test:1") <= 3600
    assert rpc.get("test") == "second"
    assert redis("EXISTS", "test:queue") == 0
    assert fault_of(rpc.get, "test") == (404, "empty queue")


def test_take_deletes_the_message(rpc, redis):
    rpc.set("test", "first")
    rpc.set("test", "second")
    assert rpc.take("test") == "first"
    assert redis("EXISTS", "test:1") == 0
    assert redis("EXISTS", "test:1:refcount") == 0
    assert redis("LRANGE", "test:queue", 0, -1) == ["test:2"]
    assert rpc.take("test") == "second"
    assert redis("EXISTS", "test:2") == 0
    assert fault_of(rpc.take, "test") == (404, "empty queue")


def test_get_and_take_skip_dead_entries(rpc, redis):
    rpc.set("dead", "a")
    rpc.set("dead", "b")
    rpc.set("dead", "c")
    redis("DEL", "dead:1")
    assert rpc.get("dead") == "b"
    redis("DEL", "dead:3")
    assert fault_of(rpc.take, "dead") == (404, "empty queue")
    assert redis("EXISTS", "dead:queue") == 0


def test_empty_queue_faults_on_never_used_queue(rpc, redis):
    assert fault_of(rpc.get, "never") == (404, "empty queue")
    assert fault_of(rpc.take, "never") == (404, "empty queue")
    assert redis("KEYS", "*") == []


def test_len_is_an_int(H, rpc, redis):
    assert rpc.len("test") == 0
    rpc.set("test", "a")
    rpc.set("test", "b")
    length = rpc.len("test")
    assert length == 2 and type(length) is int
    rpc.take("test")
    assert rpc.len("test") == 1
    # the wire type is an XML-RPC integer, not a string
    reply = post_xml(H, call_body("len", "test"))
    assert b"<int>1</int>" in reply.body or b"<i4>1</i4>" in reply.body


def test_policy_get_and_set(rpc, redis):
    assert rpc.policy_get("test") == "broadcast"  # never set
    assert rpc.policy_set("test", "roundrobin") == "OK"
    assert redis("GET", "test:queuepolicy") == "2"
    assert rpc.policy_get("test") == "roundrobin"
    assert rpc.policy_set("test", "broadcast") == "OK"
    assert redis("GET", "test:queuepolicy") == "1"
    assert rpc.policy_get("test") == "broadcast"
    redis("SET", "test:queuepolicy", "7")
    assert rpc.policy_get("test") == "broadcast"
    # setting a policy does not register the queue
    assert redis("EXISTS", "QUEUESET") == 0


def test_invalid_policy_is_a_fault_and_stores_nothing(rpc, redis):
    for name in ("ROUNDROBIN", "fifo", "", " broadcast", "1"):
        assert fault_of(rpc.policy_set, "test", name) == (400, "invalid policy")
    assert redis("KEYS", "*") == []


def test_status_get_and_set(rpc, redis):
    assert rpc.status_get("test") == ""  # absent
    assert rpc.status_set("test", "stop") == "stop"
    assert redis("GET", "queuestat::test") == "0"
    assert rpc.status_get("test") == "stop"
    assert rpc.status_set("test", "start") == "start"
    assert redis("GET", "queuestat::test") == "1"
    assert rpc.status_get("test") == "start"
    redis("SET", "queuestat::test", "yes")  # anything but 1 reads as stop
    assert rpc.status_get("test") == "stop"
    # neither SET registers the queue
    assert redis("EXISTS", "QUEUESET") == 0


def test_invalid_status_is_a_fault_and_stores_nothing(rpc, redis):
    for status in ("START", "pause", "", "1", "0"):
        assert fault_of(rpc.status_set, "test", status) == (400, "invalid status")
    assert redis("KEYS", "*") == []


def test_queues_are_sorted_by_code_point(rpc, redis):
    assert rpc.queues() == []
    names = ["b", "a", "B", "é", "a:b", "Z", "日本", "_x", "a-1"]
    for name in names:
        rpc.set(name, "v")
    assert rpc.queues() == sorted(names)


def test_queues_lists_foreign_members_too(rpc, redis):
    redis("SADD", "QUEUESET", "has space", "ok")
    assert rpc.queues() == ["has space", "ok"]


def test_non_ascii_round_trip(rpc, redis):
    queue = "fila-ç日本"
    value = "välue ☃ 😀 \u00a0 <&> \"quoted\" 'single'"
    key = rpc.set(queue, value)
    assert key == f"{queue}:1"
    assert redis("GET", key) == value
    assert rpc.queues() == [queue]
    assert rpc.len(queue) == 1
    assert rpc.get(queue) == value


def test_status_set_start_wakes_a_stopped_comet_consumer(rpc, redis, redis_proc, H):
    assert rpc.status_set("live", "stop") == "stop"
    assert rpc.set("live", "one") == "live:1"
    assert rpc.set("live", "two") == "live:2"
    assert redis("GET", "queuestat::live") == "0"  # an add leaves a stopped queue stopped
    comet = CometClient(H, "live")
    watcher = None
    try:
        assert comet.status == 200
        assert comet.raw == b"" and comet.body == b""
        wait_until(lambda: numsub(redis, "live") >= 1, what="the server to subscribe")
        watcher = RedisSubscriber(redis_proc.port, "live:PUBSUB")
        # still nothing may be delivered while stopped, even once a safety sweep has run
        with SweepWatch(H, redis) as sweep:
            sweep.passed()
        assert redis("LLEN", "live:queue") == 2
        assert rpc.status_set("live", "start") == "start"
        # the start published `wake` (docs/live-delivery.md#notifications) ...
        kind, channel, payload = watcher.next_message()
        assert (kind, channel) == ("message", "live:PUBSUB")
        assert json.loads(payload) == {"type": "wake", "db": 0}
        # ... and the backlog drains, in order
        assert comet.messages(2) == [{"key": "live:1", "value": "one"},
                                     {"key": "live:2", "value": "two"}]
        assert redis("EXISTS", "live:queue") == 0
    finally:
        comet.close()
        if watcher:
            watcher.close()


# -- faults ------------------------------------------------------------------------------------


WRONG_COUNTS = [
    ("set", ()), ("set", ("q",)), ("set", ("q", "v", "x")),
    ("get", ()), ("get", ("q", "x")),
    ("take", ()), ("take", ("q", "x")),
    ("len", ()), ("len", ("q", "x")),
    ("policy_get", ()), ("policy_get", ("q", "broadcast")),
    ("policy_set", ("q",)), ("policy_set", ("q", "broadcast", "x")),
    ("status_get", ()), ("status_get", ("q", "x")),
    ("status_set", ("q",)), ("status_set", ("q", "start", "x")),
    ("queues", ("q",)),
]


@pytest.mark.parametrize("method,params", WRONG_COUNTS)
def test_wrong_parameter_count_is_invalid_arguments(rpc, redis, method, params):
    assert fault_of(getattr(rpc, method), *params) == (400, "invalid arguments")
    assert redis("KEYS", "*") == []


NON_STRINGS = [1, -7, None, [1, "a"], ["q"], {"queue": "q"}, b"q", True, False, 1.5,
               xmlrpc.client.DateTime("20240101T00:00:00")]


@pytest.mark.parametrize("bad", NON_STRINGS, ids=lambda v: type(v).__name__)
def test_non_string_arguments_are_invalid_arguments(rpc, redis, bad):
    seed(redis)
    before = snapshot(redis)
    assert fault_of(rpc.set, "q", bad) == (400, "invalid arguments")
    assert fault_of(rpc.set, bad, "v") == (400, "invalid arguments")
    assert fault_of(rpc.get, bad) == (400, "invalid arguments")
    assert fault_of(rpc.take, bad) == (400, "invalid arguments")
    assert fault_of(rpc.len, bad) == (400, "invalid arguments")
    assert fault_of(rpc.policy_set, "seeded", bad) == (400, "invalid arguments")
    assert fault_of(rpc.status_set, "seeded", bad) == (400, "invalid arguments")
    assert snapshot(redis) == before


def test_raw_typed_values_are_invalid_arguments(H, redis):
    for raw in ("<value><nil/></value>", "<value><i4>5</i4></value>", "<value><i8>5</i8></value>",
                "<value><int>5</int></value>", "<value><boolean>1</boolean></value>",
                "<value><double>1.5</double></value>", "<value><base64>cQ==</base64></value>",
                "<value><array><data><value>q</value></data></array></value>",
                "<value><struct><member><name>q</name><value>q</value></member></struct></value>",
                "<value><dateTime.iso8601>20240101T00:00:00</dateTime.iso8601></value>"):
        assert_fault(post_xml(H, call_body("set", "q", raw_params=(raw,))),
                     400, "invalid arguments")
    assert redis("KEYS", "*") == []


def test_untyped_value_is_a_string(H, rpc, redis):
    reply = post_xml(H, call_body("set", raw_params=("<value>plain</value>",
                                                     "<value>untyped text</value>")))
    assert reply.status == 200
    assert xmlrpc.client.loads(reply.body) == (("plain:1",), None)
    assert redis("GET", "plain:1") == "untyped text"


@pytest.mark.parametrize("name", ["", "a b", "tab\tname", "nl\nname", "ctl\x7fname",
                                  "QUEUESET", "AUTHKEY", "AUTHKEY:1", "queuestat:x", "x:queue",
                                  "x:UUID", "x:queuepolicy", "x:PUBSUB", "x:lock", "x:refcount",
                                  "x" * 257, "é" * 129])
def test_invalid_queue_name_faults(rpc, redis, name):
    calls = [(rpc.set, name, "v"), (rpc.get, name), (rpc.take, name), (rpc.len, name),
             (rpc.policy_get, name), (rpc.policy_set, name, "broadcast"),
             (rpc.status_get, name), (rpc.status_set, name, "start")]
    for call, *args in calls:
        assert fault_of(call, *args) == (400, "invalid queue name")
    assert redis("KEYS", "*") == []


def test_longest_valid_name_is_accepted(rpc, redis):
    name = "x" * 256
    assert rpc.set(name, "v") == f"{name}:1"
    assert rpc.len(name) == 1


@pytest.mark.parametrize("name", ["foo", "SET", "Get", "system.listMethods", "system.multicall",
                                  "system.methodHelp", "system.methodSignature", "xmlrpc.get",
                                  "métod"])
def test_unknown_methods_fault_501(rpc, redis, name):
    assert fault_of(getattr(rpc, name), "q", "v") == (501, f"method not found: {name}")
    assert fault_of(getattr(rpc, name)) == (501, f"method not found: {name}")
    assert redis("KEYS", "*") == []


def test_no_multicall(rpc, redis):
    multi = xmlrpc.client.MultiCall(rpc)
    multi.set("q", "v")
    multi.len("q")
    with pytest.raises(xmlrpc.client.Fault) as info:
        list(multi())
    assert (info.value.faultCode, info.value.faultString) == \
        (501, "method not found: system.multicall")
    assert redis("KEYS", "*") == []


# -- HTTP surface ------------------------------------------------------------------------------


def test_replies_are_text_xml(H, redis):
    ok = post_xml(H, call_body("set", "q", "v"))
    assert ok.status == 200
    assert ok.header("Content-Type") == "text/xml"
    assert ok.header("Cache-Control") == "no-store"
    assert ok.header("Content-Security-Policy") == "default-src 'none'; sandbox"
    assert xmlrpc.client.loads(ok.body) == (("q:1",), None)
    fault = post_xml(H, call_body("take", "empty"))
    assert_fault(fault, 404, "empty queue")


def test_request_content_type_is_not_checked(H, redis):
    reply = request(H, "POST", "/xmlrpc", body=call_body("set", "q", "v"),
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 200
    assert xmlrpc.client.loads(reply.body) == (("q:1",), None)
    reply = request(H, "POST", "/xmlrpc", body=call_body("len", "q"))
    assert xmlrpc.client.loads(reply.body) == ((1,), None)


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "HEAD", "OPTIONS", "PATCH"])
def test_other_methods_are_405(H, redis, method):
    reply = request(H, method, "/xmlrpc")
    assert reply.status == 405
    assert reply.header("Allow") == "POST"
    if method != "HEAD":
        assert reply.header("Content-Type") == "application/json"
        assert json.loads(reply.body) == {"error": "method not allowed"}


@pytest.mark.parametrize("path", ["/xmlrpc/", "/xmlrpc/set", "/XMLRPC", "/RPC2"])
def test_xmlrpc_with_a_slash_is_404(H, redis, path):
    for method in ("GET", "POST"):
        reply = request(H, method, path, body=call_body("set", "q", "v"))
        assert reply.status == 404
        assert json.loads(reply.body) == {"error": "not found"}
    assert redis("KEYS", "*") == []


def test_body_over_max_body_is_413(H, redis):
    limit = 1048576
    head = call_body("set", "big", "v")
    exact = head + " " * (limit - len(head))  # trailing whitespace after the root is allowed
    assert len(exact) == limit
    reply = post_xml(H, exact)
    assert reply.status == 200
    assert xmlrpc.client.loads(reply.body) == (("big:1",), None)
    before = snapshot(redis)
    # one byte more, declared up front: refused before the body is read (docs/limits.md#sizes)
    status, ctype, body = declared_length_only(H, "/xmlrpc", limit + 1)
    assert (status, ctype) == (413, "application/json")
    assert json.loads(body) == {"error": "request body too large"}
    assert snapshot(redis) == before


def declared_length_only(base: str, path: str, length: int) -> tuple[int, str, bytes]:
    """Send only the head of a POST declaring `length` body bytes; the status, Content-Type
    and body of the reply."""
    import http.client
    host, port = base.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("Content-Type"), response.read()


# -- hostile documents -------------------------------------------------------------------------


def _set_with(value_xml: str, prolog: str = "") -> str:
    return (f"<?xml version='1.0'?>\n{prolog}<methodCall><methodName>set</methodName><params>"
            f"<param><value><string>hostile</string></value></param>"
            f"<param><value><string>{value_xml}</string></value></param>"
            f"</params></methodCall>")


def _billion_laughs() -> str:
    decls = ['<!ENTITY lol0 "lol">']
    for level in range(1, 10):
        refs = f"&lol{level - 1};" * 10
        decls.append(f'<!ENTITY lol{level} "{refs}">')
    return _set_with("&lol9;", "<!DOCTYPE methodCall [\n" + "\n".join(decls) + "\n]>\n")


def _quadratic() -> str:
    big = "A" * 50000
    return _set_with("&a;" * 50000, f'<!DOCTYPE methodCall [<!ENTITY a "{big}">]>\n')


HOSTILE = {
    "billion_laughs": _billion_laughs(),
    "quadratic_blowup": _quadratic(),
    "external_entity_file": _set_with(
        "&x;", '<!DOCTYPE methodCall [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'),
    "external_entity_relative": _set_with(
        "&x;", '<!DOCTYPE methodCall [<!ENTITY x SYSTEM "setup.py">]>\n'),
    "public_external_entity": _set_with(
        "&x;", '<!DOCTYPE methodCall [<!ENTITY x PUBLIC "-//x//EN" "file:///etc/hostname">]>\n'),
    "internal_entity_unused": _set_with(
        "plain", '<!DOCTYPE methodCall [<!ENTITY x "harmless">]>\n'),
    "internal_entity_used": _set_with(
        "&x;", '<!DOCTYPE methodCall [<!ENTITY x "harmless">]>\n'),
    "bare_doctype": _set_with("plain", "<!DOCTYPE methodCall>\n"),
    "external_dtd_file": _set_with(
        "plain", '<!DOCTYPE methodCall SYSTEM "file:///etc/passwd">\n'),
    "parameter_entity_internal": _set_with(
        "&x;", '<!DOCTYPE methodCall [<!ENTITY % p "<!ENTITY x \'pe\'>"> %p;]>\n'),
    "parameter_entity_file": _set_with(
        "&x;", '<!DOCTYPE methodCall [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>\n'),
    "unparsed_entity": _set_with(
        "plain", '<!DOCTYPE methodCall [<!NOTATION n SYSTEM "viewer">'
                 '<!ENTITY u SYSTEM "file:///etc/passwd" NDATA n>]>\n'),
    "attlist_default": _set_with(
        "plain", '<!DOCTYPE methodCall [<!ATTLIST methodCall a CDATA "x">]>\n'),
    "undefined_entity": _set_with("&foo;"),
    "undefined_entity_in_method_name": "<methodCall><methodName>&foo;</methodName>"
                                       "<params/></methodCall>",
    "html_entity": _set_with("&nbsp;"),
    "char_ref_out_of_range": _set_with("&#99999999999999999999;"),
    "char_ref_nul": _set_with("&#0;"),
    "not_well_formed_unclosed": "<methodCall><methodName>set</methodName><params>"
                                "<param><value><string>hostile</string></value></param>",
    "not_well_formed_mismatch": "<methodCall><methodName>set</methodName><params>"
                                "<param><value><string>hostile</value></string></param>"
                                "</params></methodCall>",
    "not_well_formed_two_roots": _set_with("v") + "<methodCall/>",
    "not_well_formed_text": "set hostile v",
    "json_body": '{"method": "set", "params": ["hostile", "v"]}',
    "form_body": "queue=hostile&value=v",
    "invalid_utf8": _set_with("v").encode().replace(b">v<", b">\xff\xfe<"),
    "method_response": "<?xml version='1.0'?><methodResponse><params><param><value>"
                       "<string>hostile</string></value></param></params></methodResponse>",
    "fault_response": xmlrpc.client.dumps(xmlrpc.client.Fault(1, "x"), methodresponse=True),
    "other_root": "<foo><methodName>set</methodName></foo>",
    # "a document that is not a methodCall" (docs/frontends.md#xml-rpc): the root decides, not a
    # methodName somewhere
    "method_call_wrapped": "<wrapper>" + _set_with("v").split("?>\n", 1)[1] + "</wrapper>",
    "method_response_with_method_name": "<methodResponse><methodName>set</methodName><params>"
                                        "<param><value>hostile</value></param><param><value>v"
                                        "</value></param></params></methodResponse>",
    "no_method_name": "<methodCall><params><param><value><string>hostile</string></value>"
                      "</param></params></methodCall>",
    "empty_body": "",
    "whitespace_body": "   \n",
    "xml_decl_only": "<?xml version='1.0'?>",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_documents_are_refused_and_store_nothing(H, redis, name):
    seed(redis)
    before = snapshot(redis)
    reply = post_xml(H, HOSTILE[name])
    assert_malformed(reply)
    assert snapshot(redis) == before


def test_nothing_is_fetched_for_external_references(H, redis):
    listener = Listener()
    try:
        bodies = [
            _set_with("&x;", f'<!DOCTYPE methodCall [<!ENTITY x SYSTEM "{listener.url}/x">]>\n'),
            _set_with("plain", f'<!DOCTYPE methodCall SYSTEM "{listener.url}/evil.dtd">\n'),
            _set_with("&x;", f'<!DOCTYPE methodCall [<!ENTITY % p SYSTEM "{listener.url}/p">'
                             f' %p;]>\n'),
        ]
        seed(redis)
        before = snapshot(redis)
        for body in bodies:
            assert_malformed(post_xml(H, body))
        # every refusal was answered before this point: a fetch would have connected already
        assert not listener.connected()
        assert snapshot(redis) == before
    finally:
        listener.close()


def test_predefined_entities_and_character_references_are_accepted(H, redis):
    reply = post_xml(H, _set_with("&lt;&amp;&#65;&gt;&quot;&apos;&#x263A;&#128512;"))
    assert reply.status == 200
    assert xmlrpc.client.loads(reply.body) == (("hostile:1",), None)
    assert redis("GET", "hostile:1") == "<&A>\"'☺😀"
    # a CDATA section is plain text too
    reply = post_xml(H, _set_with("<![CDATA[<b>&amp;</b>]]>"))
    assert xmlrpc.client.loads(reply.body) == (("hostile:2",), None)
    assert redis("GET", "hostile:2") == "<b>&amp;</b>"


def test_huge_integers_are_refused_without_storing(H, redis):
    seed(redis)
    before = snapshot(redis)
    digits = "9" * 10000
    for tag in ("int", "i4", "i8"):
        for params in ((f"<value><{tag}>{digits}</{tag}></value>",),
                       ("<value><string>hostile</string></value>",
                        f"<value><{tag}>{digits}</{tag}></value>")):
            method = "len" if len(params) == 1 else "set"
            reply = post_xml(H, call_body(method, raw_params=params))
            # refused while parsing, or parsed and refused as a non-string argument
            if reply.status == 400:
                assert_malformed(reply)
            else:
                assert_fault(reply, 400, "invalid arguments")
    reply = post_xml(H, call_body("set", "hostile",
                                  raw_params=(f"<value><double>{digits}.5</double></value>",)))
    if reply.status == 400:
        assert_malformed(reply)
    else:
        assert_fault(reply, 400, "invalid arguments")
    assert snapshot(redis) == before


def test_deep_nesting_is_refused_without_storing(big_server, redis):
    depth = 100_000
    nested = "<value><array><data>" * depth + "</data></array></value>" * depth
    body = call_body("set", "hostile", raw_params=(nested,))
    assert 4_000_000 < len(body) < 8_000_000  # under --max-body: the nesting itself is tested
    seed(redis)
    before = snapshot(redis)
    reply = post_xml(big_server.url, body, timeout=60)
    # well-formed XML-RPC whose second argument is an array: a type error (or refused outright)
    if reply.status == 400:
        assert_malformed(reply)
    else:
        assert_fault(reply, 400, "invalid arguments")
    # the same depth, unclosed: not well-formed
    unclosed = call_body("set", "hostile")[:-len("</params></methodCall>")] + \
        "<param>" + "<value><array><data>" * depth
    assert_malformed(post_xml(big_server.url, unclosed, timeout=60))
    assert snapshot(redis) == before
    # the server is still answering
    assert proxy(big_server.url).len("seeded") == 1


def test_deep_nesting_of_unknown_elements_is_harmless(big_server, redis):
    depth = 100_000
    junk = "<value><string>" + "<a>" * depth + "</a>" * depth + "</string></value>"
    reply = post_xml(big_server.url, call_body("len", raw_params=(junk,)), timeout=60)
    assert reply.status in (200, 400), reply
    if reply.status == 400:
        assert_malformed(reply)
    assert "Traceback" not in big_server.log()
    assert proxy(big_server.url).len("seeded") == 0
