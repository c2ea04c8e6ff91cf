"""The conventions and routes of docs/http-api.md (live streams aside), the JSON protocol and
dead entries (docs/redis-layout.md#dead-entries), against a real server.

Replies are checked byte for byte where the reference fixes the bytes (CRLF, JSONP wrapping, the
queue list page) and after parsing where it leaves JSON layout free.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.http_client import Reply, delete, get, post, request
from tests.test_errors import assert_error, snapshot
from tests.util import wait_until

HTML = "text/html; charset=UTF-8"
JSON_TYPE = "application/json"
FORM = "application/x-www-form-urlencoded"
STATIC = Path(__file__).resolve().parent.parent / "restmq" / "static"


# -- helpers -------------------------------------------------------------------------------


def html_json(reply: Reply, status: int = 200):
    """A JSON reply with the HTML type and a trailing CRLF; returns the parsed value."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.header("Content-Type") == HTML
    assert reply.body.endswith(b"\r\n"), reply.body
    assert b"\r\n" not in reply.body[:-2]
    return json.loads(reply.body)


def app_json(reply: Reply, crlf: bool):
    assert reply.status == 200, (reply.status, reply.body)
    assert reply.header("Content-Type") == JSON_TYPE
    assert reply.body.endswith(b"\r\n") == crlf, reply.body
    return json.loads(reply.body)


def ascii_json(body: bytes) -> None:
    """docs/http-api.md#replies: non-ASCII escaped as \\uXXXX, and <, >, & never raw."""
    assert body.isascii(), body
    assert not re.search(rb"[<>&]", body), body


def jsonp(reply: Reply, cb: str = "cb", semicolon: bool = True, crlf: bool = True,
          ctype: str = HTML):
    assert reply.status == 200, (reply.status, reply.body)
    assert reply.header("Content-Type") == ctype
    tail = (b");" if semicolon else b")") + (b"\r\n" if crlf else b"")
    prefix = cb.encode() + b"("
    assert reply.body.startswith(prefix) and reply.body.endswith(tail), reply.body
    inner = reply.body[len(prefix):-len(tail)]
    assert not inner.endswith(b";") and b"\r\n" not in inner
    return json.loads(inner)


def jp(H, command, field: str = "body") -> Reply:
    text = command if isinstance(command, str) else json.dumps(command)
    return post(H, "/queue", form={field: text})


def jp_ok(H, command, field: str = "body"):
    return app_json(jp(H, command, field), crlf=False)


def add(H, queue: str, value: str, **extra) -> str:
    reply = post(H, f"/q/{quote(queue, safe='')}", form={"value": value, **extra})
    assert reply.status == 200, reply.body
    assert reply.header("Content-Type") == HTML
    assert reply.body.endswith(b"\r\n")
    return reply.body[:-2].decode("utf-8")


def pending(redis, queue: str) -> list:
    return redis("LRANGE", f"{queue}:queue", 0, -1)


@pytest.fixture
def R(redis_proc):
    return f"<Redis Connection: 127.0.0.1:{redis_proc.port} - 10 connection(s)>"


def multipart(fields, boundary: str = "b0uNd4ry") -> tuple[bytes, str]:
    out = b""
    for field in fields:
        name, value = field[0], field[1]
        filename = field[2] if len(field) > 2 else None
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        data = value if isinstance(value, bytes) else value.encode("utf-8")
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
                + data + b"\r\n")
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


# -- REST basics (docs/http-api.md#root, #add, #hard-get, #purge) --------------------------


def test_post_root_and_get_root(H, redis):
    reply = post(H, "/", form={"queue": "t", "value": "v1"})
    assert (reply.status, reply.header("Content-Type"), reply.body) == (200, HTML, b"t:1\r\n")
    reply = post(H, "/?queue=t", form={"value": "v2"})
    assert reply.body == b"t:2\r\n"
    assert html_json(get(H, "/?queue=t")) == {"key": "t:1", "value": "v1", "count": 0}
    assert pending(redis, "t") == ["t:2"]
    assert redis("GET", "t:1") == "v1"
    assert 0 < redis("TTL", "t:1") <= 3600
    assert html_json(get(H, "/?queue=t")) == {"key": "t:2", "value": "v2", "count": 0}
    assert redis("EXISTS", "t:queue") == 0


@pytest.mark.parametrize("path", ["/", "/?queue=", "/?callback=cb", "/?other=1"])
def test_root_redirect(H, redis, path):
    reply = get(H, path)
    assert reply.status == 302
    assert reply.header("Location") == "/static/index.html"
    assert reply.body == b""
    assert snapshot(redis) == {}


def test_add_registers_and_counts(H, redis):
    assert add(H, "t", "a") == "t:1"
    assert add(H, "t", "b") == "t:2"
    assert redis("GET", "t:UUID") == "2"
    assert redis("SMEMBERS", "QUEUESET") == ["t"]
    assert redis("GET", "queuestat::t") == "1"
    assert pending(redis, "t") == ["t:2", "t:1"]
    assert redis("TTL", "t:1") == -1


def test_add_keeps_a_stopped_queue_stopped(H, redis):
    redis("SET", "queuestat::t", "0")
    add(H, "t", "a")
    assert redis("GET", "queuestat::t") == "0"


def test_hard_get_and_204(H, redis):
    add(H, "t", "a")
    add(H, "t", "b")
    jp_ok(H, {"cmd": "get", "queue": "t"})
    jp_ok(H, {"cmd": "get", "queue": "t"})
    # a hard get reports count 0 whatever the soft-get count
    assert html_json(get(H, "/q/t")) == {"key": "t:1", "value": "a", "count": 0}
    assert redis("GET", "t:1:refcount") == "2"
    assert 0 < redis("TTL", "t:1:refcount") <= 3600
    assert html_json(get(H, "/q/t")) == {"key": "t:2", "value": "b", "count": 0}
    for path in ("/q/t", "/q/t?callback=cb", "/q/never"):
        reply = get(H, path)
        assert (reply.status, reply.body) == (204, b"")


def test_purge(H, redis):
    add(H, "t", "a")
    add(H, "t", "b")
    post(H, "/p/t", form={"policy": "roundrobin"})
    post(H, "/control/t", form={"status": "stop"})
    assert html_json(delete(H, "/q/t")) == {"queue": "t", "status": 1}
    assert redis("EXISTS", "t:queue") == 0
    assert redis("GET", "t:UUID") == "2"
    assert redis("GET", "queuestat::t") == "0"
    assert redis("GET", "t:queuepolicy") == "2"
    assert redis("SMEMBERS", "QUEUESET") == ["t"]
    for key in ("t:1", "t:2"):
        assert 0 < redis("TTL", key) <= 3600
    assert html_json(delete(H, "/q/t")) == {"queue": "t", "status": 0}
    assert get(H, "/q/t").status == 204
    assert add(H, "t", "c") == "t:3"


def test_purge_of_unknown_queue_writes_nothing(H, redis):
    assert html_json(delete(H, "/q/never")) == {"queue": "never", "status": 0}
    assert snapshot(redis) == {}


# -- JSON protocol (docs/frontends.md#json-protocol) ---------------------------------------

FIELD_CASES = [
    ({"cmd": "add"}, "missing argument: queue"),
    ({"cmd": "add", "value": "x"}, "missing argument: queue"),
    ({"cmd": "add", "queue": None, "value": "x"}, "missing argument: queue"),
    ({"cmd": "add", "queue": "t"}, "missing argument: value"),
    ({"cmd": "add", "queue": "t", "value": None}, "missing argument: value"),
    ({"cmd": "add", "queue": 1, "value": "x"}, "invalid argument: queue"),
    ({"cmd": "add", "queue": ["t"]}, "invalid argument: queue"),
    ({"cmd": "add", "queue": True, "value": 5}, "invalid argument: queue"),
    ({"cmd": "add", "queue": {"t": 1}, "value": "x"}, "invalid argument: queue"),
    ({"cmd": "add", "queue": "t", "value": 1}, "invalid argument: value"),
    ({"cmd": "add", "queue": "t", "value": 1.5}, "invalid argument: value"),
    ({"cmd": "add", "queue": "t", "value": True}, "invalid argument: value"),
    ({"cmd": "add", "queue": "t", "value": False}, "invalid argument: value"),
    ({"cmd": "add", "queue": "t", "value": ["x"]}, "invalid argument: value"),
    ({"cmd": "add", "queue": "t", "value": {"a": "b"}}, "invalid argument: value"),
    ({"cmd": "add", "queue": "a b", "value": "x"}, "invalid queue name"),
    ({"cmd": "add", "queue": "a b"}, "invalid queue name"),
    ({"cmd": "add", "queue": "x:queue", "value": 7}, "invalid queue name"),
    ({"cmd": "add", "queue": "", "value": "x"}, "invalid queue name"),
    ({"cmd": "add", "queue": "QUEUESET", "value": "x"}, "invalid queue name"),
    ({"cmd": "add", "queue": "AUTHKEY:k", "value": "x"}, "invalid queue name"),
    ({"cmd": "add", "queue": "queuestat:x", "value": "x"}, "invalid queue name"),
    ({"cmd": "add", "queue": "a" * 257, "value": "x"}, "invalid queue name"),
    ({"cmd": "add", "queue": "a\u0000", "value": "x"}, "invalid queue name"),
    ({"cmd": "add", "queue": "a\u2028", "value": "x"}, "invalid queue name"),
    ({"cmd": "get"}, "missing argument: queue"),
    ({"cmd": "get", "queue": None}, "missing argument: queue"),
    ({"cmd": "get", "queue": 5}, "invalid argument: queue"),
    ({"cmd": "get", "queue": False}, "invalid argument: queue"),
    ({"cmd": "get", "queue": "t\t"}, "invalid queue name"),
    ({"cmd": "get", "queue": "t:refcount"}, "invalid queue name"),
    ({"cmd": "take"}, "missing argument: queue"),
    ({"cmd": "take", "queue": None}, "missing argument: queue"),
    ({"cmd": "take", "queue": []}, "invalid argument: queue"),
    ({"cmd": "take", "queue": "AUTHKEY"}, "invalid queue name"),
    ({"cmd": "take", "queue": "t:lock"}, "invalid queue name"),
    ({"cmd": "del"}, "missing argument: queue"),
    ({"cmd": "del", "key": "t:1"}, "missing argument: queue"),
    ({"cmd": "del", "queue": "t"}, "missing argument: key"),
    ({"cmd": "del", "queue": "t", "key": None}, "missing argument: key"),
    ({"cmd": "del", "queue": 5, "key": "x"}, "invalid argument: queue"),
    ({"cmd": "del", "queue": "a b", "key": 5}, "invalid queue name"),
    ({"cmd": "del", "queue": "a b"}, "invalid queue name"),
    ({"cmd": "del", "queue": "t", "key": 1}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": ["t:1"]}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t:"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t:x"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t:1a"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t:-1"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t:+1"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t:1.0"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t:\uff11"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t:\u0661"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t:1 "}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": " t:1"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t:1\n"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t:1:refcount"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "u:1"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "tt:1"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "T:1"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": ""}, "invalid argument: key"),
    ({"cmd": "del", "queue": "a.b", "key": "axb:1"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "a+", "key": "aa:1"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "a*", "key": "a:1"}, "invalid argument: key"),
    ({"cmd": "del", "queue": "t", "key": "t:1", "extra": 1}, None),
    ({"cmd": "del", "queue": "a.b", "key": "a.b:12"}, None),
    ({"cmd": "del", "queue": "t:1", "key": "t:1:2"}, None),
]


@pytest.mark.parametrize("command,reason", FIELD_CASES, ids=lambda c: json.dumps(c)[:60])
def test_json_field_checks(H, redis, command, reason):
    add(H, "t", "one")
    before = snapshot(redis)
    reply = jp(H, command)
    body = app_json(reply, crlf=False)
    if reason is None:
        assert set(body) == {"queue", "deleted", "key"}
        return
    assert body == {"error": reason}
    assert snapshot(redis) == before


def test_json_add(H, redis):
    reply = jp(H, {"cmd": "add", "queue": "t", "value": "v"})
    assert app_json(reply, crlf=False) == {"queue": "t", "value": "v", "key": "t:1"}
    assert redis("GET", "t:1") == "v"
    assert redis("TTL", "t:1") == -1
    assert redis("SMEMBERS", "QUEUESET") == ["t"]
    assert redis("GET", "queuestat::t") == "1"
    assert pending(redis, "t") == ["t:1"]
    # an empty value is allowed in the JSON protocol
    assert jp_ok(H, {"cmd": "add", "queue": "t", "value": ""}) == {
        "queue": "t", "value": "", "key": "t:2"}
    assert redis("GET", "t:2") == ""
    # other fields are ignored (no ttl here)
    assert jp_ok(H, {"cmd": "add", "queue": "t", "value": "w", "ttl": 1, "key": "t:9"}) == {
        "queue": "t", "value": "w", "key": "t:3"}
    assert redis("TTL", "t:3") == -1


def test_json_get_counts_and_take_moves_on(H, redis):
    for value in ("a", "b", "c"):
        add(H, "t", value)
    for count in (1, 2, 3):
        assert jp_ok(H, {"cmd": "get", "queue": "t"}) == {
            "queue": "t", "value": "a", "key": "t:1", "count": count}
    assert redis("GET", "t:1:refcount") == "3"
    assert pending(redis, "t") == ["t:3", "t:2", "t:1"]
    assert jp_ok(H, {"cmd": "take", "queue": "t"}) == {"queue": "t", "value": "a", "key": "t:1"}
    assert redis("EXISTS", "t:1") == 0
    assert redis("EXISTS", "t:1:refcount") == 0
    assert jp_ok(H, {"cmd": "get", "queue": "t"}) == {
        "queue": "t", "value": "b", "key": "t:2", "count": 1}
    assert jp_ok(H, {"cmd": "take", "queue": "t"})["key"] == "t:2"
    assert jp_ok(H, {"cmd": "take", "queue": "t"})["key"] == "t:3"
    assert pending(redis, "t") == []
    for cmd in ("get", "take"):
        assert jp_ok(H, {"cmd": cmd, "queue": "t"}) == {"error": "empty queue"}
        assert jp_ok(H, {"cmd": cmd, "queue": "never"}) == {"error": "empty queue"}


def test_json_soft_get_refcount_follows_expiry(H, redis):
    add(H, "t", "a", ttl="100")
    jp_ok(H, {"cmd": "get", "queue": "t"})
    assert 0 < redis("PTTL", "t:1:refcount") <= 100000


def test_json_del(H, redis):
    for value in ("a", "b", "c", "d"):
        add(H, "t", value)
    jp_ok(H, {"cmd": "get", "queue": "t"})  # t:1:refcount = 1
    assert jp_ok(H, {"cmd": "del", "queue": "t", "key": "t:1"}) == {
        "queue": "t", "deleted": True, "key": "t:1"}
    assert redis("EXISTS", "t:1") == 0
    assert redis("EXISTS", "t:1:refcount") == 0
    assert pending(redis, "t") == ["t:4", "t:3", "t:2"]
    assert jp_ok(H, {"cmd": "del", "queue": "t", "key": "t:3"})["deleted"] is True
    assert pending(redis, "t") == ["t:4", "t:2"]
    assert jp_ok(H, {"cmd": "del", "queue": "t", "key": "t:1"}) == {
        "queue": "t", "deleted": False, "key": "t:1"}
    before = snapshot(redis)
    assert jp_ok(H, {"cmd": "del", "queue": "t", "key": "t:99"})["deleted"] is False
    assert jp_ok(H, {"cmd": "del", "queue": "new", "key": "new:1"})["deleted"] is False
    assert snapshot(redis) == before
    # a hard-got (retained) message: the value still existed
    assert html_json(get(H, "/q/t"))["key"] == "t:2"
    assert jp_ok(H, {"cmd": "del", "queue": "t", "key": "t:2"})["deleted"] is True
    assert redis("EXISTS", "t:2") == 0
    assert pending(redis, "t") == ["t:4"]
    # a dead entry: value gone, list entry removed, deleted false
    redis("DEL", "t:4")
    assert jp_ok(H, {"cmd": "del", "queue": "t", "key": "t:4"})["deleted"] is False
    assert pending(redis, "t") == []


def test_json_msg_wins_over_body(H, redis):
    add(H, "t", "a")
    reply = post(H, "/queue", form=[("msg", json.dumps({"cmd": "get", "queue": "t"})),
                                    ("body", json.dumps({"cmd": "take", "queue": "t"}))])
    assert app_json(reply, crlf=False)["count"] == 1
    reply = post(H, "/queue?msg=" + quote(json.dumps({"cmd": "get", "queue": "t"})),
                 form={"body": json.dumps({"cmd": "take", "queue": "t"})})
    assert app_json(reply, crlf=False)["count"] == 2
    # empty msg counts as absent: body is used
    reply = post(H, "/queue", form={"msg": "", "body": json.dumps({"cmd": "get", "queue": "t"})})
    assert app_json(reply, crlf=False)["count"] == 3
    assert pending(redis, "t") == ["t:1"]


def test_json_body_from_query_and_multipart(H, redis):
    reply = post(H, "/queue?body=" + quote(json.dumps({"cmd": "add", "queue": "t",
                                                        "value": "q"})))
    assert app_json(reply, crlf=False)["key"] == "t:1"
    data, ctype = multipart([("body", json.dumps({"cmd": "add", "queue": "t", "value": "m"}))])
    reply = post(H, "/queue", body=data, headers={"Content-Type": ctype})
    assert app_json(reply, crlf=False) == {"queue": "t", "value": "m", "key": "t:2"}


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", "application/octet-stream",
                                   None])
def test_json_raw_body_not_read(H, redis, ctype):
    text = json.dumps({"cmd": "add", "queue": "t", "value": "v"})
    for body in (text, "body=" + quote(text)):
        headers = {"Content-Type": ctype} if ctype else {}
        reply = post(H, "/queue", body=body.encode(), headers=headers)
        assert_error(reply, 400, "missing argument: body")
    assert snapshot(redis) == {}


@pytest.mark.parametrize("cmd", ["foo", "ADD", "Get", "list", " add", "add ", "delete",
                                 "\u00e9"])
def test_json_null_resultset(H, redis, cmd):
    add(H, "t", "a")
    before = snapshot(redis)
    for command in ({"cmd": cmd}, {"cmd": cmd, "queue": "t", "value": "x"},
                    {"cmd": cmd, "queue": 5}):
        reply = jp(H, command)
        assert reply.status == 200
        assert reply.header("Content-Type") == HTML
        assert not reply.body.endswith(b"\r\n")
        assert json.loads(reply.body) == {"error": "null resultset"}
    assert snapshot(redis) == before


def test_json_reply_escaping(H, redis):
    value = "<script>&\u00e9\u2603\U0001d11e</script>"
    reply = jp(H, {"cmd": "add", "queue": "t", "value": value})
    ascii_json(reply.body)
    assert b"\\u003cscript\\u003e\\u0026" in reply.body
    assert b"\\ud834\\udd1e" in reply.body.lower()
    assert json.loads(reply.body)["value"] == value
    reply = jp(H, {"cmd": "get", "queue": "t"})
    ascii_json(reply.body)
    assert json.loads(reply.body)["value"] == value
    assert redis("GET", "t:1") == value


# -- arguments (docs/http-api.md#arguments) ------------------------------------------------


def stored_value(H, redis, **kw) -> str | None:
    """POST /q/t with the given request, then the value of the new key (None on 400)."""
    reply = post(H, "/q/t", **kw)
    if reply.status != 200:
        assert_error(reply, 400, "missing argument: value")
        return None
    return redis("GET", reply.body[:-2].decode())


def test_last_occurrence_wins(H, redis):
    assert post(H, "/q/t?value=a&value=b").body == b"t:1\r\n"
    assert redis("GET", "t:1") == "b"
    assert stored_value(H, redis, form=[("value", "a"), ("value", "b")]) == "b"
    # body after query
    reply = post(H, "/q/t?value=query", form={"value": "body"})
    assert redis("GET", reply.body[:-2].decode()) == "body"
    reply = post(H, "/q/t?value=q1&value=q2", form=[("value", "b1"), ("value", "b2")])
    assert redis("GET", reply.body[:-2].decode()) == "b2"
    reply = post(H, "/?queue=a", form={"queue": "b", "value": "x"})
    assert reply.body == b"b:1\r\n"


def test_msg_wins_over_value(H, redis):
    assert stored_value(H, redis, form={"value": "v", "msg": "m"}) == "m"
    assert stored_value(H, redis, form=[("msg", "m"), ("value", "v")]) == "m"
    reply = post(H, "/q/t?msg=m", form={"value": "v"})
    assert redis("GET", reply.body[:-2].decode()) == "m"
    reply = post(H, "/q/t?value=v", form={"msg": "m"})
    assert redis("GET", reply.body[:-2].decode()) == "m"
    reply = post(H, "/", form={"queue": "t", "value": "v", "msg": "m"})
    assert redis("GET", reply.body[:-2].decode()) == "m"


def test_empty_value_counts_as_absent(H, redis):
    assert stored_value(H, redis, form={"msg": "", "value": "v"}) == "v"
    assert stored_value(H, redis, form={"msg": "m", "value": ""}) == "m"
    reply = post(H, "/q/t?value=", form={"ttl": "", "callback": ""})
    assert_error(reply, 400, "missing argument: value")
    # the last occurrence is the empty one
    reply = post(H, "/q/t?value=x", form={"value": ""})
    assert_error(reply, 400, "missing argument: value")
    reply = post(H, "/q/t", form={"value": "v", "ttl": "", "callback": ""})
    assert reply.body.endswith(b"\r\n") and not reply.body.startswith(b"(")
    assert redis("TTL", reply.body[:-2].decode()) == -1


def test_multipart_form_data(H, redis):
    data, ctype = multipart([("queue", "t"), ("value", "h\u00e9llo\r\nworld"), ("ttl", "100")])
    reply = post(H, "/", body=data, headers={"Content-Type": ctype})
    assert (reply.status, reply.body) == (200, b"t:1\r\n")
    assert redis("GET", "t:1") == "h\u00e9llo\r\nworld"
    assert 0 < redis("TTL", "t:1") <= 100
    # quoted boundary, msg wins, body after query
    data, _ = multipart([("value", "v"), ("msg", "m")], boundary="q b")
    reply = post(H, "/q/t?msg=query", body=data,
                 headers={"Content-Type": 'multipart/form-data; boundary="q b"'})
    assert redis("GET", reply.body[:-2].decode()) == "m"
    # a part with a filename is not an argument
    data, ctype = multipart([("value", "file content", "v.txt")])
    reply = post(H, "/q/t", body=data, headers={"Content-Type": ctype})
    assert_error(reply, 400, "missing argument: value")


@pytest.mark.parametrize("ctype", ["application/x-www-form-urlencoded; charset=UTF-8",
                                   "application/x-www-form-urlencoded;charset=utf-8"])
def test_form_with_parameters(H, redis, ctype):
    reply = post(H, "/q/t", body=b"value=x", headers={"Content-Type": ctype})
    assert reply.body == b"t:1\r\n"


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", "application/octet-stream",
                                   None])
def test_other_bodies_not_read(H, redis, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    reply = post(H, "/q/t", body=b"value=x", headers=headers)
    assert_error(reply, 400, "missing argument: value")
    assert snapshot(redis) == {}


@pytest.mark.parametrize("raw,expected", [
    (b"value=a+b", "a b"),
    (b"value=a%2Bb", "a+b"),
    (b"value=a%2bb", "a+b"),
    (b"value=%20%20x%20%20", "  x  "),
    (b"value=+", " "),
    (b"value=a%0D%0Ab%09", "a\r\nb\t"),
    (b"value=%00", "\x00"),
    (b"value=e%CC%81", "e\u0301"),
    (b"value=%EF%BB%BFbom", "\ufeffbom"),
    (b"value=a%3Db%26c", "a=b&c"),
    (b"value=a=b", "a=b"),
    (b"value=%25", "%"),
    (b"value=%41", "A"),
    (b"value=%zz", "%zz"),
    (b"value=\xc3\xa9", "\u00e9"),
    (b"foo=bar&value=v&baz=", "v"),
])
def test_values_verbatim(H, redis, raw, expected):
    reply = post(H, "/q/t", body=raw, headers={"Content-Type": FORM})
    assert (reply.status, reply.body) == (200, b"t:1\r\n")
    assert redis("GET", "t:1") == expected
    body = html_json(get(H, "/q/t"))
    assert body["value"] == expected


def test_non_ascii_round_trip(H, redis):
    value = "h\u00e9llo \u2603 \U0001d11e \u65e5\u672c"
    add(H, "t", value)
    assert redis("GET", "t:1") == value
    reply = get(H, "/q/t")
    ascii_json(reply.body)
    assert b"\\u00e9" in reply.body and b"\\u2603" in reply.body
    assert b"\\ud834\\udd1e" in reply.body.lower()
    assert html_json(reply)["value"] == value


@pytest.mark.parametrize("value", ["007", "1.50", "123", "-0", "1e5", "null", "true", "[1]",
                                   "{}", '"q"'])
def test_values_stay_strings(H, redis, value):
    add(H, "t", value)
    add(H, "t", value)
    add(H, "t", value)
    assert html_json(get(H, "/q/t"))["value"] == value
    assert html_json(get(H, "/?queue=t"))["value"] == value
    assert jp_ok(H, {"cmd": "get", "queue": "t"})["value"] == value
    assert jp_ok(H, {"cmd": "take", "queue": "t"})["value"] == value


# -- names (docs/http-api.md#queue-names) --------------------------------------------------


def test_slash_in_name(H, redis):
    assert post(H, "/q/a/b", form={"value": "1"}).body == b"a/b:1\r\n"
    assert post(H, "/q/a%2Fb", form={"value": "2"}).body == b"a/b:2\r\n"
    assert post(H, "/q/a%2fb", form={"value": "3"}).body == b"a/b:3\r\n"
    assert redis("SMEMBERS", "QUEUESET") == ["a/b"]
    assert html_json(get(H, "/q/a%2Fb"))["key"] == "a/b:1"
    assert html_json(get(H, "/q/a/b"))["key"] == "a/b:2"
    assert app_json(get(H, "/stats/a%2Fb"), crlf=False)["len"] == 1
    assert post(H, "/", form={"queue": "a/b", "value": "4"}).body == b"a/b:4\r\n"
    assert post(H, "/q/a//b/", form={"value": "x"}).body == b"a//b/:1\r\n"


def test_plus_is_literal_in_path(H, redis):
    assert post(H, "/q/a+b", form={"value": "1"}).body == b"a+b:1\r\n"
    assert redis("GET", "a+b:1") == "1"
    assert redis("EXISTS", "a b:1") == 0
    assert html_json(get(H, "/q/a%2Bb"))["key"] == "a+b:1"
    assert post(H, "/q/a+b", form={"value": "2"}).body == b"a+b:2\r\n"
    assert html_json(get(H, "/q/a+b"))["value"] == "2"


def test_colons_allowed(H, redis):
    assert post(H, "/q/syslogd:::1", form={"value": "x"}).body == b"syslogd:::1:1\r\n"
    assert redis("GET", "syslogd:::1:1") == "x"
    assert redis("SMEMBERS", "QUEUESET") == ["syslogd:::1"]
    assert post(H, "/q/syslogd%3A127.0.0.1", form={"value": "y"}).body == \
        b"syslogd:127.0.0.1:1\r\n"
    assert html_json(get(H, "/q/syslogd%3A%3A%3A1")) == {
        "key": "syslogd:::1:1", "value": "x", "count": 0}
    assert jp_ok(H, {"cmd": "add", "queue": "syslogd:::1", "value": "z"})["key"] == \
        "syslogd:::1:2"
    assert jp_ok(H, {"cmd": "del", "queue": "syslogd:::1", "key": "syslogd:::1:2"})["deleted"]


def test_non_ascii_name(H, redis):
    name = "\u00e9t\u00e9\u2603"
    path = "/q/" + quote(name, safe="")
    reply = post(H, path, form={"value": "v"})
    assert (reply.status, reply.body) == (200, f"{name}:1\r\n".encode("utf-8"))
    assert redis("GET", f"{name}:1") == "v"
    assert redis("SMEMBERS", "QUEUESET") == [name]
    reply = post(H, path + "?callback=cb", form={"value": "w"})
    assert reply.body == b'cb("\\u00e9t\\u00e9\\u2603:2");\r\n'
    reply = get(H, "/p/" + quote(name, safe=""))
    ascii_json(reply.body)
    assert html_json(reply) == {"queue": name, "value": "broadcast"}
    body = app_json(get(H, "/stats/"), crlf=False)
    assert list(body["queues"]) == [name]
    reply = post(H, "/", form={"queue": name, "value": "x"})
    assert reply.body == f"{name}:3\r\n".encode("utf-8")


def percent(name: str) -> str:
    safe = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/:@")
    return "".join(chr(b) if b in safe else "%%%02X" % b for b in name.encode("utf-8"))


def list_page(names) -> bytes:
    items = "".join(f'<li><a href="/q/{percent(n)}">/q/{html.escape(n, quote=True)}</a></li>\n'
                    for n in sorted(names))
    return ("<html><head><title>avaliable queue for REST</title></head><body><ul>\n"
            + items + "</ul></body></html>").encode("utf-8")


def normalize_page(body: bytes) -> bytes:
    """Percent escapes to upper case and the equivalent entities for ' and " to one spelling;
    a final line ending is allowed."""
    body = re.sub(rb"%[0-9a-fA-F]{2}", lambda m: m.group(0).upper(), body)
    body = re.sub(rb"&#0*39;|&apos;|&#[xX]0*27;", b"&#x27;", body)
    body = re.sub(rb"&#0*34;|&#[xX]0*22;", b"&quot;", body)
    return body.rstrip(b"\r\n")


def test_queue_list_page(H, redis):
    reply = get(H, "/q/")
    assert (reply.status, reply.header("Content-Type")) == (200, HTML)
    assert normalize_page(reply.body) == list_page([])
    names = ["b", "a", "Z", "\u00e9", "<b>&\"'", "a/b", "~x", "x:y@z", "\u65e5\u672c",
             "\U0001d11e", "\uff21", "a%20b", "1", "_", "-", "a+b", "a=b?c#d"]
    for name in names:
        add(H, name, "v")
    # members written by other software that break the naming rules are still listed
    redis("SADD", "QUEUESET", "a b", "x:queue", "tab\there")
    names += ["a b", "x:queue", "tab\there"]
    reply = get(H, "/q/")
    assert (reply.status, reply.header("Content-Type")) == (200, HTML)
    assert normalize_page(reply.body) == list_page(names)
    assert b'href="/q/%3Cb%3E%26%22%27"' in normalize_page(reply.body)
    assert b"/q/&lt;b&gt;&amp;&quot;&#x27;</a>" in normalize_page(reply.body)
    # code point order: "Z" < "a" < "~x" < "é" < "日本" < "Ａ" < "𝄞"
    order = [normalize_page(reply.body).index(f"/q/{html.escape(n)}</a>".encode())
             for n in ("Z", "a", "~x", "\u00e9", "\u65e5\u672c", "\uff21", "\U0001d11e")]
    assert order == sorted(order)


def test_json_escapes_lt_gt_amp_raw_bytes(H, redis):
    name = "<b>&x"
    q = quote(name, safe="")
    add(H, name, "<i>&amp;</i>")
    for reply in (get(H, f"/p/{q}"), get(H, f"/control/{q}"), get(H, f"/stats/{q}"),
                  get(H, "/stats/"), get(H, "/control/"), get(H, f"/q/{q}"),
                  delete(H, f"/q/{q}"), post(H, f"/control/{q}", form={"status": "stop"}),
                  post(H, f"/q/{q}?callback=cb", form={"value": "v"}),
                  jp(H, {"cmd": "get", "queue": name})):
        assert reply.status == 200
        ascii_json(reply.body)
        assert b"\\u003cb\\u003e\\u0026x" in reply.body
    reply = post(H, f"/control/{q}", form={"status": "<x>&"})
    ascii_json(reply.body)
    assert b"invalid status: \\u003cx\\u003e\\u0026" in reply.body


# -- JSONP (docs/http-api.md#jsonp) --------------------------------------------------------


def test_jsonp_rest(H, redis):
    assert post(H, "/q/t?callback=cb", form={"value": "a"}).body == b'cb("t:1");\r\n'
    reply = post(H, "/q/t", form={"value": "b", "callback": "cb"})
    assert (reply.header("Content-Type"), reply.body) == (HTML, b'cb("t:2");\r\n')
    assert post(H, "/", form={"queue": "t", "value": "c", "callback": "a.b.c"}).body == \
        b'a.b.c("t:3");\r\n'
    assert post(H, "/?callback=$x", form={"queue": "t", "value": "d"}).body == \
        b'$x("t:4");\r\n'
    assert jsonp(get(H, "/q/t?callback=cb")) == {"key": "t:1", "value": "a", "count": 0}
    assert jsonp(get(H, "/?queue=t&callback=a.b.c"), cb="a.b.c") == {
        "key": "t:2", "value": "b", "count": 0}
    assert jsonp(delete(H, "/q/t?callback=cb")) == {"queue": "t", "status": 1}
    assert jsonp(delete(H, "/q/t?callback=cb")) == {"queue": "t", "status": 0}


def test_jsonp_policy(H, redis):
    assert jsonp(get(H, "/p/t?callback=cb")) == {"queue": "t", "value": "broadcast"}
    reply = post(H, "/p/t?callback=cb", form={"policy": "roundrobin"})
    assert (reply.header("Content-Type"), reply.body) == (HTML, b'cb("OK");\r\n')
    assert jsonp(get(H, "/p/t?callback=x.y"), cb="x.y") == {"queue": "t", "value": "roundrobin"}
    reply = post(H, "/p/t?callback=cb", form={"policy": "foo"})
    assert (reply.header("Content-Type"), reply.body) == (HTML, b"cb(null);\r\n")


def test_jsonp_control(H, redis):
    reply = post(H, "/control/t?callback=cb", form={"status": "stop"})
    assert jsonp(reply, semicolon=False) == {"stat": {"queue": "t", "status": 0}}
    reply = post(H, "/control/t", form={"status": "foo", "callback": "cb"})
    assert jsonp(reply, semicolon=False) == {"stat": "invalid status: foo"}
    # GET /control/ has no JSONP: callback ignored
    reply = get(H, "/control/t?callback=cb")
    assert app_json(reply, crlf=True)["status"] == {"queue": "t", "status": 0}
    assert app_json(get(H, "/control/?callback=cb"), crlf=True)["count"] == 0


def test_jsonp_stats(H, redis, R):
    add(H, "t", "a")
    body = jsonp(get(H, "/stats/?callback=cb"), semicolon=False, crlf=False, ctype=JSON_TYPE)
    assert body["count"] == 1 and body["redis"] == R
    body = jsonp(get(H, "/stats/t?callback=a.b"), cb="a.b", semicolon=False, crlf=False,
                 ctype=JSON_TYPE)
    assert body == {"redis": R, "queue": "t", "len": 1}


def test_jsonp_never_wraps_errors_204_302(H, redis):
    reply = get(H, "/q/empty?callback=cb")
    assert (reply.status, reply.body) == (204, b"")
    for path in ("/?callback=cb", "/queue?callback=cb"):
        reply = get(H, path)
        assert reply.status == 302 and reply.body == b""
    assert_error(post(H, "/q/a%20b?callback=cb", form={"value": "x"}), 400,
                 "invalid queue name")
    assert_error(post(H, "/q/t?callback=cb"), 400, "missing argument: value")
    assert_error(post(H, "/q/t?callback=cb", form={"value": "x", "ttl": "x"}), 400,
                 "invalid argument: ttl")
    assert_error(request(H, "PUT", "/q/t?callback=cb"), 405, "method not allowed")
    assert_error(get(H, "/nope?callback=cb"), 404, "not found")
    assert_error(get(H, "/?queue=empty&callback=cb"), 404, "empty queue")
    assert_error(post(H, "/p/t?callback=cb"), 400, "missing argument: policy")
    assert_error(get(H, "/stats/a%20b?callback=cb"), 400, "invalid queue name")
    assert_error(post(H, "/queue?callback=cb", form={"body": "x"}), 400, "malformed JSON")


# -- policy (docs/http-api.md#policy) ------------------------------------------------------


def test_policy(H, redis):
    assert html_json(get(H, "/p/t")) == {"queue": "t", "value": "broadcast"}
    assert snapshot(redis) == {}
    reply = post(H, "/p/t", form={"policy": "roundrobin"})
    assert (reply.status, reply.header("Content-Type"), reply.body) == (200, HTML, b"OK\r\n")
    assert redis("GET", "t:queuepolicy") == "2"
    # setting a policy does not register the queue and writes nothing else
    assert sorted(snapshot(redis)) == ["t:queuepolicy"]
    assert html_json(get(H, "/p/t")) == {"queue": "t", "value": "roundrobin"}
    assert post(H, "/p/t?policy=broadcast").body == b"OK\r\n"
    assert redis("GET", "t:queuepolicy") == "1"
    assert html_json(get(H, "/p/t")) == {"queue": "t", "value": "broadcast"}
    for stored, name in (("2", "roundrobin"), ("1", "broadcast"), ("x", "broadcast"),
                         ("02", "broadcast"), ("", "broadcast")):
        redis("SET", "t:queuepolicy", stored)
        assert html_json(get(H, "/p/t"))["value"] == name


@pytest.mark.parametrize("value", ["foo", "Broadcast", "ROUNDROBIN", " broadcast",
                                   "roundrobin ", "1", "2", "round robin", "null"])
def test_policy_unknown_value_stores_nothing(H, redis, value):
    add(H, "t", "a")
    before = snapshot(redis)
    reply = post(H, "/p/t", form={"policy": value})
    assert (reply.status, reply.header("Content-Type"), reply.body) == (200, HTML, b"null\r\n")
    reply = post(H, "/p/new", form={"policy": value})
    assert reply.body == b"null\r\n"
    assert snapshot(redis) == before


# -- control (docs/http-api.md#control) ----------------------------------------------------


def test_control_get(H, redis, R):
    reply = get(H, "/control/t")
    assert app_json(reply, crlf=True) == {"redis": R, "queue": "t",
                                          "status": {"queue": "t", "status": None}}
    assert b"null" in reply.body
    for stored, flag in (("1", 1), ("0", 0), ("abc", 0), ("", 0), ("11", 0)):
        redis("SET", "queuestat::t", stored)
        assert app_json(get(H, "/control/t"), crlf=True)["status"] == {"queue": "t",
                                                                         "status": flag}


def test_control_post(H, redis):
    reply = post(H, "/control/t", form={"status": "stop"})
    assert (reply.header("Content-Type"), html_json(reply)) == (
        HTML, {"stat": {"queue": "t", "status": 0}})
    assert redis("GET", "queuestat::t") == "0"
    assert sorted(snapshot(redis)) == ["queuestat::t"]  # not registered
    assert html_json(post(H, "/control/t?status=start")) == {"stat": {"queue": "t",
                                                                        "status": 1}}
    assert redis("GET", "queuestat::t") == "1"
    assert sorted(snapshot(redis)) == ["queuestat::t"]


@pytest.mark.parametrize("form,shown", [
    ({"status": "foo"}, "foo"), ({}, "None"), ({"status": ""}, "None"),
    ({"status": "START"}, "START"), ({"status": " start"}, " start"), ({"status": "1"}, "1"),
    ({"status": "None"}, "None"), ({"status": "<x>&\u00e9"}, "<x>&\u00e9"),
])
def test_control_invalid_status(H, redis, form, shown):
    add(H, "t", "a")
    before = snapshot(redis)
    for path in ("/control/t", "/control/new"):
        reply = post(H, path, form=form) if form else post(H, path)
        assert html_json(reply) == {"stat": f"invalid status: {shown}"}
        ascii_json(reply.body)
    assert snapshot(redis) == before


def test_control_all(H, redis, R):
    assert app_json(get(H, "/control/"), crlf=True) == {"redis": R, "queues": {}, "count": 0}
    for q in ("a", "b", "c"):
        add(H, q, "v")
    redis("SET", "queuestat::b", "0")
    redis("DEL", "queuestat::c")
    redis("SET", "queuestat::orphan", "1")  # not a QUEUESET member: not listed
    redis("SADD", "QUEUESET", "x y")  # a name only the original RestMQ creates
    body = app_json(get(H, "/control/"), crlf=True)
    assert body == {"redis": R, "count": 4, "queues": {
        "a": {"queue": "a", "status": 1}, "b": {"queue": "b", "status": 0},
        "c": {"queue": "c", "status": None}, "x y": {"queue": "x y", "status": None}}}


# -- stats (docs/http-api.md#stats) --------------------------------------------------------


def test_stats_all(H, redis, R):
    reply = get(H, "/stats/")
    assert app_json(reply, crlf=False) == {"queues": {}, "redis": R, "count": 0}
    for q, n in (("a", 2), ("b", 1), ("c", 1), ("d", 0)):
        for _ in range(n):
            add(H, q, "v")
    redis("SADD", "QUEUESET", "d")
    post(H, "/p/a", form={"policy": "broadcast"})
    redis("SET", "queuestat::b", "0")
    redis("SET", "b:queuepolicy", "2")
    redis("DEL", "queuestat::c")
    redis("SET", "queuestat::d", "x")
    redis("SET", "d:queuepolicy", "7")
    body = app_json(get(H, "/stats/"), crlf=False)
    assert body == {"redis": R, "count": 4, "queues": {
        "a": {"name": "a", "len": 2, "status": 1, "policy": 1, "policy_name": "broadcast"},
        "b": {"name": "b", "len": 1, "status": 0, "policy": 2, "policy_name": "roundrobin"},
        "c": {"name": "c", "len": 1, "status": "", "policy": "", "policy_name": "broadcast"},
        "d": {"name": "d", "len": 0, "status": 0, "policy": "", "policy_name": "broadcast"},
    }}


def test_stats_queue(H, redis, R):
    assert app_json(get(H, "/stats/never"), crlf=False) == {"redis": R, "queue": "never",
                                                            "len": 0}
    assert snapshot(redis) == {}
    add(H, "t", "a")
    add(H, "t", "b")
    assert app_json(get(H, "/stats/t"), crlf=False) == {"redis": R, "queue": "t", "len": 2}
    get(H, "/q/t")
    assert app_json(get(H, "/stats/t"), crlf=False)["len"] == 1


# -- jobs page (docs/http-api.md#jobs-page) ------------------------------------------------


def test_jobs_page(H, redis):
    for i in range(12):
        add(H, "q1", f"v{i}")
    add(H, "q1x", "other")  # keys of other queues starting with "q1" count too
    add(H, "q2", "other")
    get(H, "/q/q1")  # q1:1 retained but no longer pending
    jp_ok(H, {"cmd": "get", "queue": "q1"})  # q1:2:refcount
    expected_objects = len(redis("KEYS", "q1*"))
    reply = get(H, "/j/q1")
    assert (reply.status, reply.header("Content-Type")) == (200, HTML)
    page = reply.body.decode("utf-8")
    markers = ["<title>jobs in queue q1</title>", "queue name: q1",
               f"queue objects: {expected_objects}", "job count: 11", "latest 10 jobs", "<ul"]
    positions = [page.index(m) for m in markers]
    assert positions == sorted(positions)
    items = re.findall(r"<li>(.*?)</li>", page[positions[-1]:])
    assert items == [f"q1:{n}" for n in range(12, 2, -1)]


def test_jobs_page_empty_and_glob_and_escaping(H, redis):
    page = get(H, "/j/never").body.decode()
    assert "queue objects: 0" in page and "job count: 0" in page
    assert re.findall(r"<li>", page) == []
    add(H, "a*", "x")
    add(H, "ab", "y")
    add(H, "a[b]", "z")
    page = get(H, "/j/" + quote("a*", safe="")).body.decode()
    assert "queue objects: 3" in page  # a*:1, a*:UUID, a*:queue; not ab:…
    page = get(H, "/j/" + quote("a[b]", safe="")).body.decode()
    assert "queue objects: 3" in page
    name = "<b>&\"'"
    add(H, name, "v")
    reply = get(H, "/j/" + quote(name, safe=""))
    assert reply.status == 200
    page = reply.body.decode()
    assert "<b>" not in page and "&\"" not in page
    assert "jobs in queue &lt;b&gt;&amp;" in page
    assert re.search(r"<li>&lt;b&gt;&amp;(&quot;|&#34;|&#x22;)(&#x27;|&#39;|&apos;):1</li>", page)


# -- redirects and static files (docs/http-api.md#static-files) ------------------------------


def test_queue_redirect(H, redis):
    reply = get(H, "/queue")
    assert (reply.status, reply.header("Location"), reply.body) == (302, "/static/help.html",
                                                                    b"")
    assert get(H, "/queue?body=x").status == 302


@pytest.mark.parametrize("path,file,ctype", [
    ("/static/help.html", "help.html", "text/html"),
    ("/static/index.html", "index.html", "text/html"),
    ("/static/robots.txt", "robots.txt", "text/plain"),
    ("/static/favicon.ico", "favicon.ico", "image/"),
    ("/favicon.ico", "favicon.ico", "image/"),
    ("/robots.txt", "robots.txt", "text/plain"),
    ("/robots.txt?x=1", "robots.txt", "text/plain"),
    ("/static/help%2Ehtml", "help.html", "text/html"),
])
def test_static_files(H, path, file, ctype):
    reply = get(H, path)
    assert reply.status == 200
    assert reply.header("Content-Type").startswith(ctype), reply.header("Content-Type")
    assert reply.body == (STATIC / file).read_bytes()
    head = request(H, "HEAD", path)
    assert head.status == 200
    assert head.header("Content-Type") == reply.header("Content-Type")
    assert head.body == b""


# -- dead entries (docs/redis-layout.md#dead-entries) ---------------------------------------


def test_dead_entries_skipped_by_hard_get(H, redis):
    for value in ("a", "b", "c"):
        add(H, "t", value)
    jp_ok(H, {"cmd": "get", "queue": "t"})  # t:1:refcount
    redis("DEL", "t:1")
    assert html_json(get(H, "/q/t")) == {"key": "t:2", "value": "b", "count": 0}
    assert pending(redis, "t") == ["t:3"]
    assert redis("EXISTS", "t:1:refcount") == 0
    redis("DEL", "t:3")
    redis("SET", "t:3:refcount", "4")
    assert get(H, "/q/t").status == 204
    assert redis("EXISTS", "t:queue") == 0
    assert redis("EXISTS", "t:3:refcount") == 0


def test_dead_entries_skipped_by_root_get(H, redis):
    add(H, "t", "a")
    add(H, "t", "b")
    redis("DEL", "t:1")
    assert html_json(get(H, "/?queue=t"))["key"] == "t:2"
    add(H, "t", "c")
    redis("DEL", "t:3")
    assert_error(get(H, "/?queue=t"), 404, "empty queue")
    assert redis("EXISTS", "t:queue") == 0


def test_dead_entries_skipped_by_json_get_and_take(H, redis):
    for value in ("a", "b", "c", "d"):
        add(H, "t", value)
    redis("DEL", "t:1")
    redis("SET", "t:1:refcount", "2")
    assert jp_ok(H, {"cmd": "get", "queue": "t"}) == {"queue": "t", "value": "b", "key": "t:2",
                                                      "count": 1}
    assert pending(redis, "t") == ["t:4", "t:3", "t:2"]
    assert redis("EXISTS", "t:1:refcount") == 0
    redis("DEL", "t:2")
    assert jp_ok(H, {"cmd": "take", "queue": "t"}) == {"queue": "t", "value": "c", "key": "t:3"}
    assert pending(redis, "t") == ["t:4"]
    assert redis("EXISTS", "t:2:refcount") == 0
    redis("DEL", "t:4")
    assert jp_ok(H, {"cmd": "get", "queue": "t"}) == {"error": "empty queue"}
    assert jp_ok(H, {"cmd": "take", "queue": "t"}) == {"error": "empty queue"}
    assert redis("EXISTS", "t:queue") == 0
    assert app_json(get(H, "/stats/t"), crlf=False)["len"] == 0


def test_expired_entry_skipped(H, redis):
    add(H, "t", "short", ttl="1")
    add(H, "t", "long")
    jp_ok(H, {"cmd": "get", "queue": "t"})  # t:1:refcount with the same expiry
    wait_until(lambda: redis("EXISTS", "t:1") == 0, 3, "t:1 to expire", interval=0.1)
    assert pending(redis, "t") == ["t:2", "t:1"]  # the list entry stays: a dead entry
    assert html_json(get(H, "/q/t")) == {"key": "t:2", "value": "long", "count": 0}
    assert redis("EXISTS", "t:queue") == 0
    assert redis("EXISTS", "t:1:refcount") == 0


# -- headers of API replies (docs/http-api.md#replies) ---------------------------------------


def test_api_headers_on_every_kind_of_reply(H, redis):
    add(H, "t", "a")
    replies = [get(H, "/"), get(H, "/queue"), get(H, "/q/empty"), get(H, "/q/"), get(H, "/j/t"),
               get(H, "/stats/"), get(H, "/control/"), get(H, "/p/t"), get(H, "/q/t"),
               post(H, "/q/t", form={"value": "b"}), delete(H, "/q/t"),
               post(H, "/p/t", form={"policy": "x"}), post(H, "/control/t"),
               jp(H, {"cmd": "foo"}), jp(H, {"cmd": "get", "queue": "t"}),
               get(H, "/stats/t?callback=cb")]
    for reply in replies:
        assert reply.status in (200, 204, 302)
        assert reply.header("Cache-Control") == "no-store"
        assert reply.header("Content-Security-Policy") == "default-src 'none'; sandbox"
        assert reply.header("ETag") is None


def test_no_304(H, redis):
    headers = {"If-None-Match": "*", "If-Modified-Since": "Thu, 01 Jan 2099 00:00:00 GMT"}
    for path in ("/stats/", "/p/t", "/control/", "/q/", "/j/t"):
        reply = get(H, path, headers=headers)
        assert reply.status == 200 and reply.body
