"""Server-Sent Events and comet streams over raw sockets (docs/live-delivery.md#comet,
#server-sent-events, #purge): the chunked framing is decoded here byte by byte, SSE is parsed
the way a browser's EventSource does (WHATWG event-stream rules), and step 12 of
docs/http-api.md#worked-example runs with real curl."""
from __future__ import annotations

import codecs
import json
import os
import re
import select
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest

from tests.http_client import delete, post
from tests.util import SweepWatch, numsub, wait_until

SSE_TYPE = "text/event-stream"


# -- helpers ---------------------------------------------------------------------------------

def wait_subscribed(redis, queue: str) -> None:
    """The server subscribes to `<q>:PUBSUB` when its first consumer of `q` registers
    (docs/live-delivery.md#several-processes)."""
    wait_until(lambda: numsub(redis, queue) >= 1, what=f"a subscription to {queue}:PUBSUB")


def wait_unsubscribed(redis, queue: str) -> None:
    wait_until(lambda: numsub(redis, queue) == 0, what=f"no subscription to {queue}:PUBSUB")


def add(base: str, queue: str, value: str) -> str:
    reply = post(base, f"/q/{queue}", {"value": value})
    assert reply.status == 200, reply.body
    return reply.body.decode().removesuffix("\r\n")


def message_object(text: str | bytes) -> dict:
    """A delivered message object: exactly the fields key and value, ASCII-only JSON
    (docs/http-api.md#replies)."""
    raw = text.encode() if isinstance(text, str) else text
    assert all(b < 0x80 for b in raw), raw
    assert b"<" not in raw and b">" not in raw and b"&" not in raw, raw
    obj = json.loads(raw)
    assert isinstance(obj, dict) and set(obj) == {"key", "value"}, obj
    return obj


class RawStream:
    """One HTTP request over a raw socket; the response head is parsed and the body decoded
    incrementally (chunked transfer coding, Content-Length, or read until close)."""

    def __init__(self, base: str, path: str, version: str = "HTTP/1.1", method: str = "GET",
                 headers: dict[str, str] | None = None, body: bytes = b"",
                 head_timeout: float = 5.0):
        parts = urlsplit(base)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.host = f"{parts.hostname}:{parts.port}"
        self._send_request(path, version, method, headers, body)
        self.buf = b""          # received, not yet decoded
        self.raw = b""          # every byte received after the head, as on the wire
        self.body = b""         # decoded body
        self.chunks: list[bytes] = []
        self.ended = False      # end of the response (terminator, length reached or close)
        self.eof = False        # the server closed the connection
        self._read_head(head_timeout)

    def _send_request(self, path, version, method, headers, body):
        lines = [f"{method} {path} {version}", f"Host: {self.host}"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
            lines.append("Content-Type: application/x-www-form-urlencoded")
        self.sock.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)

    def _recv(self, timeout: float) -> bool:
        """Receive once, waiting at most `timeout`; False when nothing came."""
        if self.eof:
            return False
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not ready:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return True
        self.buf += data
        return True

    def _read_head(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if self.eof or time.monotonic() > deadline:
                raise AssertionError(f"no complete response head: {self.buf!r}")
            self._recv(deadline - time.monotonic())
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.version, status, *_ = lines[0].split(" ", 2)
        self.status = int(status)
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        length = self.headers.get("content-length")
        self.length = int(length) if length is not None else None
        self.raw = self.buf
        self._decode()

    def _decode(self) -> None:
        if self.ended:
            return
        if not self.chunked:
            self.body += self.buf
            self.buf = b""
            if self.length is not None and len(self.body) >= self.length:
                self.ended = True
            elif self.eof:
                self.ended = True
            return
        while True:
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            size_text = self.buf[:end].split(b";", 1)[0].strip()
            assert re.fullmatch(rb"[0-9A-Fa-f]+", size_text), f"bad chunk size {self.buf[:end]!r}"
            size = int(size_text, 16)
            if size == 0:
                if not self.buf[end + 2:].startswith(b"\r\n"):   # trailers: none expected
                    return
                self.ended = True
                self.buf = self.buf[end + 4:]
                return
            if len(self.buf) < end + 2 + size + 2:
                return
            payload = self.buf[end + 2:end + 2 + size]
            assert self.buf[end + 2 + size:end + 4 + size] == b"\r\n", "chunk not ended by CRLF"
            self.chunks.append(payload)
            self.body += payload
            self.buf = self.buf[end + 4 + size:]

    def wait(self, predicate, timeout: float = 10.0, what: str = "data"):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self)
            if value:
                return value
            if self.eof or time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; received {self.raw!r}")
            self._pump_until(deadline)

    def _pump_until(self, deadline: float) -> None:
        start = len(self.buf)
        if self._recv(min(0.2, max(deadline - time.monotonic(), 0))):
            self.raw += self.buf[start:]
            self._decode()

    def wait_end(self, timeout: float = 10.0) -> None:
        self.wait(lambda s: s.ended, timeout, "the end of the response")

    def wait_eof(self, timeout: float = 10.0) -> None:
        self.wait(lambda s: s.eof, timeout, "the server to close the connection")

    def idle(self, seconds: float) -> bytes:
        """Whatever arrives within `seconds` (expected: nothing)."""
        before = len(self.raw)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.eof:
            self._pump_until(deadline)
        return self.raw[before:]

    def close(self, reset: bool = False) -> None:
        if self.sock.fileno() < 0:
            return
        if reset:   # RST instead of FIN
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00"
                                 b"\x00\x00\x00\x00")
        self.sock.close()


@dataclass
class Event:
    type: str
    data: str
    last_event_id: str


@dataclass
class EventStream:
    """The WHATWG HTML "event stream" interpretation, as EventSource applies it: UTF-8 decoding
    (one leading BOM dropped), lines ended by CRLF, LF or CR, `:` comments, `field: value`
    with one optional space removed, dispatch on an empty line, `id` sets the last event ID
    (which then persists), an unterminated event at the end of the stream is discarded."""

    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    last_event_id: str = ""
    retry: int | None = None

    def __post_init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._text = ""
        self._started = False
        self._data = ""
        self._type = ""
        self._id = ""

    def feed(self, data: bytes, final: bool = False) -> "EventStream":
        text = self._decoder.decode(data, final)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        self._text += text
        while True:
            match = re.search(r"\r\n|\r|\n", self._text)
            if match is None:
                break
            if match.group() == "\r" and match.end() == len(self._text) and not final:
                break   # a CR at the end may be the first half of CRLF
            line, self._text = self._text[:match.start()], self._text[match.end():]
            self._line(line)
        if final:
            self._text = ""
            self._data = self._type = ""
        return self

    def _line(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments.append(line[1:])
            return
        if ":" in line:
            name, value = line.split(":", 1)
            value = value.removeprefix(" ")
        else:
            name, value = line, ""
        self.fields.append(name)
        if name == "event":
            self._type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value and all("0" <= c <= "9" for c in value):
                self.retry = int(value)

    def _dispatch(self) -> None:
        self.last_event_id = self._id
        if self._data == "":
            self._type = ""
            return
        self.events.append(Event(self._type or "message", self._data[:-1], self.last_event_id))
        self._data = self._type = ""


def sse_events(stream: RawStream) -> EventStream:
    return EventStream().feed(stream.body, final=stream.ended)


@pytest.fixture
def connect():
    opened: list[RawStream] = []

    def open_stream(*args, **kw) -> RawStream:
        stream = RawStream(*args, **kw)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


def assert_error(stream: RawStream, status: int, reason: str) -> None:
    """docs/http-api.md#errors: status, application/json, `{"error": reason}` without CRLF, a
    complete reply."""
    stream.wait_end()
    assert stream.status == status, (stream.status_line, stream.body)
    assert stream.headers["content-type"] == "application/json"
    assert json.loads(stream.body) == {"error": reason}
    assert not stream.body.endswith(b"\n")


# -- the parser itself ------------------------------------------------------------------------

def test_event_stream_parser_follows_the_whatwg_rules():
    parser = EventStream()
    stream = (b"\xef\xbb\xbfdata:a\r\ndata:  b\rid: 7\n\n: a comment\r\n\r\n"
              b"event: x\ndata\nretry: 250\nid\n\nid: 9\x00\ndata: \xc3\xa9\n\ndata: cut")
    for i in range(len(stream)):   # one byte at a time: CRLF and UTF-8 split across feeds
        parser.feed(stream[i:i + 1])
    parser.feed(b"", final=True)
    assert parser.events == [Event("message", "a\n b", "7"), Event("x", "", ""),
                             Event("message", "\u00e9", "")]
    assert parser.comments == [" a comment"]
    assert parser.retry == 250


# -- SSE ------------------------------------------------------------------------------------

def test_sse_headers_arrive_before_any_message(H, redis, connect):
    s = connect(H, "/sse/fresh")
    assert s.status == 200
    assert s.headers["content-type"] == SSE_TYPE
    assert s.headers["cache-control"] == "no-store"
    assert s.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in s.headers
    assert s.body == b""
    wait_subscribed(redis, "fresh")
    assert redis("EXISTS", "fresh:UUID", "fresh:queue") == 0   # the queue need not exist
    assert redis("SISMEMBER", "QUEUESET", "fresh") == 0
    # Nothing came before the first message: the first bytes after the head are its event.
    add(H, "fresh", "first")
    s.wait(lambda st: st.chunks, what="the first event")
    event = b'id: fresh:1\ndata: {"key": "fresh:1", "value": "first"}\n\n'
    assert s.raw == b"%x\r\n%s\r\n" % (len(event), event)


def test_sse_message_bytes_exact(H, redis, connect):
    s = connect(H, "/sse/raw")
    wait_subscribed(redis, "raw")
    value = 'caf\u00e9 "<b>" & \\ end'
    assert add(H, "raw", value) == "raw:1"
    s.wait(lambda st: st.body.endswith(b"\n\n"), what="one event")
    match = re.fullmatch(rb"id: raw:1\ndata: (\{[^\r\n]*\})\n\n", s.body)
    assert match, s.body
    assert message_object(match.group(1)) == {"key": "raw:1", "value": value}
    assert b"event:" not in s.body and b"retry:" not in s.body
    assert redis("EXISTS", "raw:1") == 0 and redis("EXISTS", "raw:queue") == 0


def test_sse_events_parsed_like_eventsource_pending_first(H, redis, connect):
    values = ["first", "line\nbreak\r\nand\rcr", "\u2028\u2029 sep", " ", "123", "data: x\n\nid: y"]
    keys = [add(H, "ev", v) for v in values[:3]]
    # Last-Event-ID is ignored (docs/live-delivery.md#server-sent-events): the pending messages are
    # delivered from the oldest
    s = connect(H, "/sse/ev", headers={"Last-Event-ID": "ev:2", "Accept": SSE_TYPE})
    assert s.status == 200
    s.wait(lambda st: len(sse_events(st).events) == 3, what="the three pending messages")
    keys += [add(H, "ev", v) for v in values[3:]]
    s.wait(lambda st: len(sse_events(st).events) == 6, what="six events")
    parsed = sse_events(s)
    assert [e.type for e in parsed.events] == ["message"] * 6
    assert [e.last_event_id for e in parsed.events] == keys
    assert [message_object(e.data) for e in parsed.events] == [
        {"key": k, "value": v} for k, v in zip(keys, values)]
    assert set(parsed.fields) == {"id", "data"}            # no event:, no retry:
    assert parsed.fields == ["id", "data"] * 6
    assert parsed.comments == []
    assert all("\n" not in e.data for e in parsed.events)  # data is one line
    assert redis("LLEN", "ev:queue") == 0


def test_sse_purge_sends_null_then_ends_the_response(H, redis, connect):
    s = connect(H, "/sse/pq")
    wait_subscribed(redis, "pq")
    add(H, "pq", "one")
    s.wait(lambda st: len(sse_events(st).events) == 1, what="one event")
    before = len(s.raw)
    assert delete(H, "/q/pq").status == 200
    s.wait_end()
    # after the message: exactly one chunk `data: null\n\n`, then the last chunk
    assert s.raw[before:] == b"c\r\ndata: null\n\n\r\n0\r\n\r\n"
    parsed = sse_events(s)
    assert [e.data for e in parsed.events][-1] == "null"
    assert len(parsed.events) == 2
    assert parsed.events[-1].type == "message"
    # the consumer is gone: the server leaves the channel and new messages stay pending,
    # also once a safety sweep has run
    wait_unsubscribed(redis, "pq")
    with SweepWatch(H, redis) as sweep:
        add(H, "pq", "after")
        sweep.passed()
    assert redis("LLEN", "pq:queue") == 1
    # HTTP/1.1 keep-alive: the ended stream leaves a usable connection, on which the
    # next bytes are the next reply: nothing was written to the ended stream meanwhile
    assert not s.eof and s.buf == b""
    s.sock.sendall(f"GET /stats/pq HTTP/1.1\r\nHost: {s.host}\r\n\r\n".encode())
    s.wait(lambda st: b"\r\n\r\n" in st.buf, what="a second reply on the kept-alive connection")
    assert s.buf.startswith(b"HTTP/1.1 200 "), s.buf


def test_sse_over_http_1_0_ends_by_close(H, redis, connect):
    add(H, "old", "pending")
    s = connect(H, "/sse/old", version="HTTP/1.0")
    assert s.status == 200
    assert s.headers["content-type"] == SSE_TYPE
    assert s.headers["cache-control"] == "no-store"
    assert "transfer-encoding" not in s.headers and "content-length" not in s.headers
    s.wait(lambda st: st.body.endswith(b"\n\n"), what="the pending message")
    match = re.fullmatch(rb"id: old:1\ndata: (\{[^\r\n]*\})\n\n", s.body)
    assert match and message_object(match.group(1)) == {"key": "old:1", "value": "pending"}
    wait_subscribed(redis, "old")
    add(H, "old", "live")
    s.wait(lambda st: len(sse_events(st).events) == 2, what="the second message")
    before = len(s.body)
    assert delete(H, "/q/old").status == 200
    s.wait_eof()
    assert s.body[before:] == b"data: null\n\n"
    parsed = sse_events(s)
    assert [e.data for e in parsed.events][-1] == "null"
    assert [message_object(e.data)["value"] for e in parsed.events[:2]] == ["pending", "live"]


@pytest.mark.parametrize("path", ["/sse/", "/sse/%20", "/sse/a%0Ab", "/sse/a%09b", "/sse/QUEUESET",
                                  "/sse/x:queue", "/sse/queuestat:x", "/sse/AUTHKEY:1",
                                  "/sse/" + "n" * 257, "/sse/%FF"])
def test_sse_invalid_name_is_400_before_any_stream(H, redis, connect, path):
    s = connect(H, path)
    assert_error(s, 400, "invalid queue name")
    assert s.headers.get("content-type") != SSE_TYPE
    assert numsub(redis, path[5:]) == 0


def test_sse_name_of_256_bytes_is_valid(H, redis, connect):
    name = "\u00e9" * 128   # 256 bytes in UTF-8
    s = connect(H, "/sse/" + "%C3%A9" * 128)
    assert s.status == 200 and s.headers["content-type"] == SSE_TYPE
    wait_subscribed(redis, name)


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT"])
def test_sse_other_methods_are_405(H, redis, connect, method):
    s = connect(H, "/sse/x", method=method, body=b"value=1" if method == "POST" else b"")
    assert_error(s, 405, "method not allowed")
    assert "GET" in [m.strip() for m in s.headers["allow"].split(",")]
    assert redis("EXISTS", "x:queue", "x:UUID") == 0


@pytest.mark.parametrize("callback", ["cb", "1bad", "a-b"])
def test_sse_ignores_callback(H, redis, connect, callback):
    s = connect(H, f"/sse/cbq?callback={callback}")
    assert s.status == 200 and s.headers["content-type"] == SSE_TYPE
    wait_subscribed(redis, "cbq")
    add(H, "cbq", "v")
    s.wait(lambda st: st.body.endswith(b"\n\n"), what="one event")
    match = re.fullmatch(rb"id: cbq:1\ndata: (\{[^\r\n]*\})\n\n", s.body)
    assert match and message_object(match.group(1)) == {"key": "cbq:1", "value": "v"}
    assert delete(H, "/q/cbq").status == 200
    s.wait_end()
    assert s.body.endswith(b"\n\ndata: null\n\n")


# -- comet ----------------------------------------------------------------------------------

def comet_line(raw: bytes, callback: str | None = None) -> dict | None:
    assert raw.endswith(b"\r\n") and raw.count(b"\r\n") == 1 and b"\n" not in raw[:-2], raw
    text = raw[:-2]
    if callback:
        assert text.startswith(callback.encode() + b"(") and text.endswith(b");"), raw
        text = text[len(callback) + 1:-2]
    if text == b"null":
        return None
    return message_object(text)


def test_comet_headers_at_once(H, redis, connect):
    s = connect(H, "/c/cq")
    assert s.status == 200
    assert s.headers["content-type"] == "text/plain"
    assert s.headers["transfer-encoding"] == "chunked"
    assert s.headers["cache-control"] == "no-store"
    assert "content-length" not in s.headers
    assert s.body == b""
    wait_subscribed(redis, "cq")
    # Nothing came before the first message: the first bytes after the head are its chunk.
    add(H, "cq", "first")
    s.wait(lambda st: st.chunks, what="the first line")
    line = b'{"key": "cq:1", "value": "first"}\r\n'
    assert s.raw == b"%x\r\n%s\r\n" % (len(line), line)


def test_comet_one_line_per_message_each_in_its_own_chunk(H, redis, connect):
    values = ["p1", "p2"]
    keys = [add(H, "lines", v) for v in values]
    s = connect(H, "/c/lines")
    s.wait(lambda st: len(st.chunks) == 2, what="the pending messages")
    wait_subscribed(redis, "lines")
    more = ["a\r\nb", "\u00e9<&>", "x" * 5000]
    keys += [add(H, "lines", v) for v in more]
    values += more
    s.wait(lambda st: len(st.chunks) == 5, what="five chunks")
    assert [comet_line(c) for c in s.chunks] == [{"key": k, "value": v}
                                                 for k, v in zip(keys, values)]
    # Nothing else came in between: the bytes after the fifth chunk are the sixth.
    before = len(s.raw)
    keys.append(add(H, "lines", "last"))
    s.wait(lambda st: len(st.chunks) == 6, what="a sixth chunk")
    line = b'{"key": "lines:6", "value": "last"}\r\n'
    assert s.raw[before:] == b"%x\r\n%s\r\n" % (len(line), line)
    assert redis("LLEN", "lines:queue") == 0
    assert redis("EXISTS", *keys) == 0


@pytest.mark.parametrize("callback", ["cb", "a.b", "$_x.y$9"])
def test_comet_jsonp_lines_and_purge(H, redis, connect, callback):
    s = connect(H, f"/c/jp?callback={callback}")
    assert s.status == 200 and s.headers["content-type"] == "text/plain"
    wait_subscribed(redis, "jp")
    add(H, "jp", "v1")
    add(H, "jp", "v2")
    s.wait(lambda st: len(st.chunks) == 2, what="two lines")
    assert [comet_line(c, callback) for c in s.chunks] == [
        {"key": "jp:1", "value": "v1"}, {"key": "jp:2", "value": "v2"}]
    before = len(s.raw)
    assert delete(H, "/q/jp").status == 200
    s.wait_end()
    line = f"{callback}(null);\r\n".encode()
    assert s.raw[before:] == b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line)


@pytest.mark.parametrize("callback", ["1a", "a-b", "a..b", "a.", ".a", "a%20b", "a" * 129,
                                      "cb()"])
def test_comet_invalid_callback_is_400(H, redis, connect, callback):
    s = connect(H, f"/c/bad?callback={callback}")
    assert_error(s, 400, "invalid argument: callback")
    assert numsub(redis, "bad") == 0


def test_comet_callback_of_128_characters_is_valid(H, redis, connect):
    name = "a" * 128
    s = connect(H, f"/c/long?callback={name}")
    assert s.status == 200
    wait_subscribed(redis, "long")
    add(H, "long", "v")
    s.wait(lambda st: st.chunks, what="one line")
    assert comet_line(s.chunks[0], name) == {"key": "long:1", "value": "v"}


@pytest.mark.parametrize("path", ["/c/", "/c/%20", "/c/a%0Db", "/c/x:PUBSUB"])
def test_comet_invalid_name_is_400(H, redis, connect, path):
    assert_error(connect(H, path), 400, "invalid queue name")


def test_comet_other_methods_are_405(H, redis, connect):
    s = connect(H, "/c/x", method="POST", body=b"value=1")
    assert_error(s, 405, "method not allowed")
    assert redis("EXISTS", "x:queue") == 0


def test_comet_purge_sends_null_then_the_last_chunk(H, redis, connect):
    s = connect(H, "/c/cp")
    wait_subscribed(redis, "cp")
    add(H, "cp", "one")
    s.wait(lambda st: st.chunks, what="one line")
    before = len(s.raw)
    reply = delete(H, "/q/cp")
    assert reply.status == 200
    s.wait_end()
    assert s.raw[before:] == b"6\r\nnull\r\n\r\n0\r\n\r\n"
    assert [comet_line(c) for c in s.chunks] == [{"key": "cp:1", "value": "one"}, None]
    wait_unsubscribed(redis, "cp")


def test_comet_over_http_1_0_ends_by_close_after_purge(H, redis, connect):
    s = connect(H, "/c/c10", version="HTTP/1.0")
    assert s.status == 200 and s.headers["content-type"] == "text/plain"
    assert "transfer-encoding" not in s.headers and "content-length" not in s.headers
    wait_subscribed(redis, "c10")
    add(H, "c10", "x")
    s.wait(lambda st: st.body.endswith(b"\r\n"), what="one line")
    assert comet_line(s.body) == {"key": "c10:1", "value": "x"}
    before = len(s.body)
    assert delete(H, "/q/c10").status == 200
    s.wait_eof()
    assert s.body[before:] == b"null\r\n"


def read_available(fd: int, into: bytearray, timeout: float) -> None:
    ready, _, _ = select.select([fd], [], [], timeout)
    if ready:
        into += os.read(fd, 65536)


def test_worked_example_step_12_with_curl(H, redis):
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is missing")
    stream = subprocess.Popen([curl, "-sN", f"{H}/c/test"], stdout=subprocess.PIPE)
    try:
        wait_subscribed(redis, "test")
        out = bytearray()
        added = subprocess.run([curl, "-s", "-d", "value=foobar", f"{H}/q/test"],
                               capture_output=True, timeout=20)
        assert added.stdout == b"test:1\r\n"
        deadline = time.monotonic() + 10
        while b"\r\n" not in out and time.monotonic() < deadline:
            read_available(stream.stdout.fileno(), out, 0.1)
        # curl printed nothing before the message (the headers only opened the stream), then
        # exactly its line; how fast it came is test_delivery_is_woken_by_the_add's business
        assert bytes(out).endswith(b"\r\n") and out.count(b"\r\n") == 1, bytes(out)
        assert json.loads(bytes(out)) == {"key": "test:1", "value": "foobar"}
        assert stream.poll() is None   # the stream stays open
        assert redis("GET", "test:UUID") == "1"
        assert redis("EXISTS", "test:1") == 0
        assert redis("EXISTS", "test:1:refcount") == 0
        assert redis("EXISTS", "test:queue") == 0
    finally:
        stream.terminate()
        stream.wait(10)
        stream.stdout.close()
    wait_unsubscribed(redis, "test")


SWEEP = 1.0  # the server's safety sweep: every second, each queue with a consumer is dispatched
ROUND_TRIPS = 20


@pytest.mark.parametrize("kind", ["sse", "c"])
def test_delivery_is_woken_by_the_add_not_the_sweep(H, redis, connect, kind):
    """An add wakes the consumers of its queue at once (the wake it publishes), "well within
    100 ms", rather than at the next safety sweep. Shown without a timing threshold: each add
    below is made only once the previous message arrived, so a server that found messages by
    its sweep alone would need a sweep per message, i.e. about a second each. Twenty round
    trips in less than eighteen seconds cannot all have waited for a sweep; with the wake each
    takes milliseconds, so even a machine under heavy load stays far below."""
    s = connect(H, f"/{kind}/wake")
    wait_subscribed(redis, "wake")
    count = (lambda st: len(sse_events(st).events)) if kind == "sse" else \
        (lambda st: len(st.chunks))
    add(H, "wake", "confirmed")   # the first may wait for the server's subscription
    s.wait(lambda st: count(st) == 1, what="the first message")
    latencies = []
    started = time.monotonic()
    for n in range(2, ROUND_TRIPS + 2):
        sent = time.monotonic()
        add(H, "wake", f"m{n}")
        s.wait(lambda st: count(st) == n, timeout=5, what=f"message {n}")
        latencies.append(time.monotonic() - sent)
    elapsed = time.monotonic() - started
    latencies.sort()
    print(f"FIGURES wake_{kind}: round trips {ROUND_TRIPS} in {elapsed:.3f} s, "
          f"median {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"max {latencies[-1] * 1000:.1f} ms")
    assert elapsed < (ROUND_TRIPS - 2) * SWEEP, latencies


# -- disconnecting consumers ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sse", "c"])
@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_disconnected_consumer_is_unregistered(H, redis, server, connect, kind, reset):
    log_before = len(server.log())
    s = connect(H, f"/{kind}/gone")
    wait_subscribed(redis, "gone")
    add(H, "gone", "delivered")
    s.wait(lambda st: st.body.endswith(b"\n"), what="the first message")
    s.close(reset=reset)
    wait_unsubscribed(redis, "gone")
    with SweepWatch(H, redis) as sweep:
        keys = [add(H, "gone", f"m{i}") for i in range(3)]
        sweep.passed()   # neither the adds' wakes nor a sweep may pop them
    assert redis("LLEN", "gone:queue") == 3
    assert redis("EXISTS", *keys) == 3
    # another consumer still gets them, oldest first
    other = connect(H, f"/{kind}/gone")
    if kind == "sse":
        other.wait(lambda st: len(sse_events(st).events) == 3, what="the pending messages")
        got = [message_object(e.data)["key"] for e in sse_events(other).events]
    else:
        other.wait(lambda st: len(st.chunks) == 3, what="the pending messages")
        got = [comet_line(c)["key"] for c in other.chunks]
    assert got == keys
    other.close()
    wait_unsubscribed(redis, "gone")
    log = server.log()[log_before:]
    assert "Traceback" not in log and "Unhandled" not in log, log
