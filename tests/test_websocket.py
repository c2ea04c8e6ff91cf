"""WebSocket consumers, `GET /ws/<q>` (docs/live-delivery.md#websocket, #consumers, #purge).

Three independent views of the server's RFC 6455 layer (restmq/http/websocket.py, on wsproto):
* autobahn's asyncio client, run in a fresh asyncio loop inside plain synchronous tests (the
  Twisted reactor of pytest-twisted is never touched here);
* raw sockets for the handshake, checking status lines, headers and error bodies;
* hand-built frames, hostile or split, checking the exact close frame the server answers with.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
from http import HTTPStatus
from urllib.parse import urlsplit

import pytest
import txaio
from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

from tests.conftest import ServerProcess
from tests.http_client import delete, get, post
from tests.util import SweepWatch, numsub, wait_until

TIMEOUT = 5.0  # generous bound for anything that should happen "at once"
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def host_port(base: str) -> tuple[str, int]:
    parts = urlsplit(base)
    return parts.hostname, parts.port


def add(base: str, queue: str, value: str) -> str:
    reply = post(base, f"/q/{queue}", form={"value": value})
    assert reply.status == 200, reply
    return reply.body.decode().rstrip("\r\n")


# -- autobahn (asyncio) client -----------------------------------------------------------------


class _Protocol(WebSocketClientProtocol):
    def onConnect(self, response):
        self.factory.response = response

    def onOpen(self):
        self.factory.events.put_nowait(("open",))

    def onMessage(self, payload, isBinary):
        self.factory.events.put_nowait(("message", payload, isBinary))

    def onPong(self, payload):
        self.factory.events.put_nowait(("pong", payload))

    def onClose(self, wasClean, code, reason):
        self.factory.events.put_nowait(("close", wasClean, code, reason))


class WSClient:
    """One autobahn client connection; every callback becomes an event in a queue."""

    def __init__(self, factory, transport, proto):
        self.factory = factory
        self.transport = transport
        self.proto = proto
        self.closed = False

    @classmethod
    async def connect(cls, base: str, queue: str) -> "WSClient":
        loop = asyncio.get_running_loop()
        host, port = host_port(base)
        factory = WebSocketClientFactory(f"ws://{host}:{port}/ws/{queue}", loop=loop)
        factory.protocol = _Protocol
        factory.setProtocolOptions(openHandshakeTimeout=TIMEOUT, closeHandshakeTimeout=TIMEOUT)
        factory.events = asyncio.Queue()
        factory.response = None
        transport, proto = await loop.create_connection(factory, host, port)
        client = cls(factory, transport, proto)
        event = await client.next()
        assert event == ("open",), event
        return client

    async def next(self, timeout: float = TIMEOUT):
        event = await asyncio.wait_for(self.factory.events.get(), timeout)
        if event[0] == "close":
            self.closed = True
        return event

    async def message(self) -> tuple[bytes, bool]:
        event = await self.next()
        assert event[0] == "message", event
        return event[1], event[2]

    async def json_message(self) -> dict:
        payload, is_binary = await self.message()
        assert is_binary is False  # a text frame
        return parse_delivery(payload)

    async def close(self) -> tuple:
        """A client-initiated closing handshake; returns the close event."""
        self.proto.sendClose(1000)
        event = await self.next()
        assert event[0] == "close", event
        return event

    def abort(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()


def parse_delivery(payload: bytes):
    """A delivered message object: ASCII-only JSON, no CRLF
    (docs/live-delivery.md#websocket)."""
    text = payload.decode("ascii")  # raises on any raw non-ASCII byte
    assert not text.endswith("\n"), payload
    return json.loads(text)


def run(test_coro, timeout: float = 30.0):
    """Run one async test body in a fresh asyncio loop; clients it registers are aborted."""
    clients: list[WSClient] = []

    async def main():
        txaio.config.loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(test_coro(clients), timeout)
        finally:
            for client in clients:
                client.abort()
            await asyncio.sleep(0)
            txaio.config.loop = None

    return asyncio.run(main())


async def connect(clients: list, base: str, queue: str) -> WSClient:
    client = await WSClient.connect(base, queue)
    clients.append(client)
    return client


async def http(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


# -- docs/live-delivery.md#websocket with autobahn -----------------------------------------------


def test_messages_arrive_as_text_frames(H, redis):
    values = ["hello", "wörld ☃", "emoji 😀", "<tag>&", "123", "  spaced \n "]

    async def body(clients):
        ws = await connect(clients, H, "live")
        keys = [await http(add, H, "live", v) for v in values]
        assert keys == [f"live:{n}" for n in range(1, len(values) + 1)]
        for key, value in zip(keys, values):
            payload, is_binary = await ws.message()
            assert is_binary is False
            # non-ASCII arrives \uXXXX-escaped: the frame is pure ASCII
            assert all(b < 0x80 for b in payload), payload
            assert parse_delivery(payload) == {"key": key, "value": value}
        assert (await ws.close())[1:3] == (True, 1000)

    run(body)
    assert redis("LLEN", "live:queue") == 0


def test_non_ascii_value_is_escaped(H, redis):
    async def body(clients):
        ws = await connect(clients, H, "esc")
        await http(add, H, "esc", "é☃")
        payload, _ = await ws.message()
        assert b"\\u00e9" in payload.lower() and b"\\u2603" in payload.lower(), payload
        assert parse_delivery(payload) == {"key": "esc:1", "value": "é☃"}
        await ws.close()

    run(body)


def test_pending_messages_delivered_on_connect(H, redis):
    for v in ("one", "two", "three"):
        add(H, "early", v)
    assert redis("LLEN", "early:queue") == 3

    async def body(clients):
        ws = await connect(clients, H, "early")
        got = [await ws.json_message() for _ in range(3)]
        assert got == [{"key": "early:1", "value": "one"}, {"key": "early:2", "value": "two"},
                       {"key": "early:3", "value": "three"}]
        await ws.close()

    run(body)
    assert redis("LLEN", "early:queue") == 0
    # delivery is at most once: the value is deleted before it is written
    # (docs/live-delivery.md#delivery-guarantees)
    assert redis("EXISTS", "early:1") == 0


def test_echo_text_and_binary(H, redis):
    async def body(clients):
        ws = await connect(clients, H, "echo")
        text = "héllo ☃ 😀".encode("utf-8")
        ws.proto.sendMessage(text, isBinary=False)
        assert await ws.message() == (text, False)
        blob = bytes(range(256)) + b"\xff\xfe\x00"
        ws.proto.sendMessage(blob, isBinary=True)
        assert await ws.message() == (blob, True)
        ws.proto.sendMessage(b"", isBinary=False)
        assert await ws.message() == (b"", False)
        await ws.close()

    run(body)


def test_echo_large_messages(H, redis):
    async def body(clients):
        ws = await connect(clients, H, "big")
        blob = os.urandom(70_000)
        ws.proto.sendMessage(blob, isBinary=True)
        assert await ws.message() == (blob, True)
        text = ("é" * 35_000).encode("utf-8")
        assert len(text) == 70_000
        ws.proto.sendMessage(text, isBinary=False)
        assert await ws.message() == (text, False)
        mid = b"m" * 300  # 16-bit length
        ws.proto.sendMessage(mid, isBinary=True)
        assert await ws.message() == (mid, True)
        await ws.close()

    run(body)


def test_echo_fragmented_messages(H, redis):
    async def body(clients):
        ws = await connect(clients, H, "frag")
        text = ("fragment ☃ " * 500).encode("utf-8")
        ws.proto.sendMessage(text, isBinary=False, fragmentSize=100)
        assert await ws.message() == (text, False)
        blob = os.urandom(5000)
        ws.proto.sendMessage(blob, isBinary=True, fragmentSize=999)
        assert await ws.message() == (blob, True)
        # frame by frame, ending with an empty final continuation frame
        ws.proto.beginMessage(isBinary=False)
        for part in (b"abc", "dé".encode(), b"f"):
            ws.proto.sendMessageFrame(part)
        ws.proto.endMessage()
        assert await ws.message() == ("abcdéf".encode(), False)
        await ws.close()

    run(body)


def test_ping_gets_pong(H, redis):
    async def body(clients):
        ws = await connect(clients, H, "ping")
        ws.proto.sendPing(b"are you there")
        assert await ws.next() == ("pong", b"are you there")
        ws.proto.sendPing()
        assert await ws.next() == ("pong", b"")
        await ws.close()

    run(body)


def test_client_close_is_clean(H, redis):
    async def body(clients):
        ws = await connect(clients, H, "bye")
        event = await ws.close()
        assert event[0] == "close" and event[1] is True and event[2] == 1000, event
        # autobahn reports the close once TCP is gone (the server closed it after the
        # handshake): nothing can arrive after it
        assert ws.transport.is_closing()
        assert ws.factory.events.empty()

    run(body)
    wait_until(lambda: numsub(redis, "bye") == 0, what="unsubscribe after close")


def test_purge_sends_null_then_close_1000(H, redis):
    async def body(clients):
        ws = await connect(clients, H, "gone")
        await http(add, H, "gone", "first")
        assert await ws.json_message() == {"key": "gone:1", "value": "first"}
        reply = await http(delete, H, "/q/gone")
        assert reply.status == 200
        payload, is_binary = await ws.message()
        assert (payload, is_binary) == (b"null", False)
        event = await ws.next()
        assert event[0] == "close" and event[1] is True and event[2] == 1000, event

    with SweepWatch(H, redis) as sweep:
        run(body)
        wait_until(lambda: numsub(redis, "gone") == 0, what="unsubscribe after purge")
        # the ended consumer receives nothing more: a later add stays pending, even once a
        # safety sweep has run
        add(H, "gone", "after")
        sweep.passed()
    assert redis("LLEN", "gone:queue") == 1


def test_purge_with_pending_list(H, redis):
    """A stopped queue with a backlog: purge ends the consumer all the same
    (docs/http-api.md#purge)."""
    assert post(H, "/control/held", form={"status": "stop"}).status == 200
    add(H, "held", "waiting")

    async def body(clients):
        ws = await connect(clients, H, "held")
        reply = await http(delete, H, "/q/held")
        assert reply.status == 200 and json.loads(reply.body) == {"queue": "held", "status": 1}
        assert await ws.message() == (b"null", False)
        event = await ws.next()
        assert event[:3] == ("close", True, 1000), event

    run(body)


def test_client_messages_are_not_enqueued(H, redis):
    async def body(clients):
        ws = await connect(clients, H, "quiet")
        for payload, binary in ((b"add me", False), (b'{"value": "x"}', False), (b"\x00", True)):
            ws.proto.sendMessage(payload, isBinary=binary)
            assert await ws.message() == (payload, binary)
        await ws.close()

    run(body)
    assert redis("EXISTS", "quiet:queue") == 0
    assert redis("EXISTS", "quiet:UUID") == 0
    assert redis("SISMEMBER", "QUEUESET", "quiet") == 0


# -- handshake over raw sockets -----------------------------------------------------------------


class Raw:
    """A raw TCP connection with a read buffer: HTTP heads, then WebSocket frames."""

    def __init__(self, base: str):
        self.sock = socket.create_connection(host_port(base), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf.extend(data)

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_head(self) -> tuple[bytes, dict[str, list[str]]]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\r\n\r\n")
        head = bytes(self.buf[:end])
        del self.buf[:end + 4]
        status, *lines = head.split(b"\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines:
            name, _, value = line.decode("latin-1").partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        return status, headers

    def read_reply(self) -> tuple[bytes, dict[str, list[str]], bytes]:
        status, headers = self.read_head()
        length = int(headers.get("content-length", ["0"])[0])
        return status, headers, self.read_exact(length)

    def read_frame(self) -> tuple[int, int, bytes, bytes]:
        """(first byte, opcode, payload, raw frame bytes) of one server frame."""
        head = self.read_exact(2)
        assert not head[1] & 0x80, f"server frames must not be masked: {head!r}"
        size = head[1] & 0x7F
        extra = b""
        if size == 126:
            extra = self.read_exact(2)
            size = int.from_bytes(extra, "big")
        elif size == 127:
            extra = self.read_exact(8)
            size = int.from_bytes(extra, "big")
        payload = self.read_exact(size)
        return head[0], head[0] & 0x0F, payload, head + extra + payload

    def expect_eof(self) -> None:
        """The server ends TCP (FIN, or a reset) and sends nothing more."""
        assert not self.buf, f"unexpected bytes {bytes(self.buf)!r}"
        try:
            data = self.sock.recv(65536)  # the socket timeout bounds the wait
        except ConnectionResetError:
            return
        except socket.timeout:
            raise AssertionError("the server did not close the TCP connection") from None
        assert data == b"", f"unexpected bytes after close: {data!r}"

    def expect_close(self, code: int) -> None:
        """The next frame is exactly a close frame with `code` (no reason), then TCP ends."""
        try:
            _, _, _, raw = self.read_frame()
        except EOFError:
            raise AssertionError(f"connection closed without a close frame (wanted {code})")
        assert raw == b"\x88\x02" + code.to_bytes(2, "big"), raw
        self.expect_eof()

    def upgrade(self, path: str, after: bytes = b"", **headers) -> dict[str, list[str]]:
        self.send(handshake(path, **headers) + after)
        status, reply_headers = self.read_head()
        assert status == b"HTTP/1.1 101 Switching Protocols", status
        return reply_headers


def handshake(path: str, key: str | None = SAMPLE_KEY, version: str | None = "13",
              upgrade: str | None = "websocket", connection: str | None = "Upgrade",
              extra: dict[str, str] | None = None, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    for name, value in (("Upgrade", upgrade), ("Connection", connection),
                        ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", version)):
        if value is not None:
            lines.append(f"{name}: {value}")
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def assert_error(base: str, request: bytes, status: int, reason: str) -> dict[str, list[str]]:
    with Raw(base) as raw:
        raw.send(request)
        line, headers, body = raw.read_reply()
    expected = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()
    assert line == expected, (line, body)
    assert headers["content-type"] == ["application/json"], headers
    assert json.loads(body) == {"error": reason}, body
    assert not body.endswith(b"\r\n"), body  # an error reply has no trailing CRLF
    return headers


def test_handshake_without_upgrade_is_403(H, redis):
    assert_error(H, handshake("/ws/t", upgrade=None), 403, "expected WebSocket headers")
    # a plain GET with no WebSocket header at all
    assert_error(H, b"GET /ws/t HTTP/1.1\r\nHost: x\r\n\r\n", 403, "expected WebSocket headers")
    assert_error(H, handshake("/ws/t", upgrade="h2c"), 403, "expected WebSocket headers")


@pytest.mark.parametrize("version", ["8", "12", "14"])
def test_handshake_bad_version_is_426(H, redis, version):
    headers = assert_error(H, handshake("/ws/t", version=version), 426,
                           "unsupported WebSocket version")
    assert headers["sec-websocket-version"] == ["13"], headers


def test_handshake_missing_version_is_426(H, redis):
    headers = assert_error(H, handshake("/ws/t", version=None), 426,
                           "unsupported WebSocket version")
    assert headers["sec-websocket-version"] == ["13"], headers


def test_handshake_without_connection_upgrade_is_400(H, redis):
    assert_error(H, handshake("/ws/t", connection=None), 400, "invalid WebSocket handshake")
    assert_error(H, handshake("/ws/t", connection="keep-alive"), 400,
                 "invalid WebSocket handshake")


@pytest.mark.parametrize("key", [
    None,                                              # missing
    "",                                                # empty
    "not base64!",                                     # not base64
    base64.b64encode(b"x" * 15).decode(),              # 15 bytes
    base64.b64encode(b"x" * 17).decode(),              # 17 bytes
    "dGhlIHNhbXBsZSBub25jZQ",                          # missing padding
], ids=["missing", "empty", "garbage", "15-bytes", "17-bytes", "unpadded"])
def test_handshake_bad_key_is_400(H, redis, key):
    assert_error(H, handshake("/ws/t", key=key), 400, "invalid WebSocket handshake")


@pytest.mark.parametrize("path", ["/ws/a%20b", "/ws/", "/ws/QUEUESET", "/ws/x:queue"])
def test_handshake_invalid_queue_name_is_400(H, redis, path):
    assert_error(H, handshake(path), 400, "invalid queue name")


def test_post_ws_is_405(H, redis):
    reply = post(H, "/ws/x", form={"value": "v"})
    assert reply.status == 405
    assert reply.header("Content-Type") == "application/json"
    assert json.loads(reply.body) == {"error": "method not allowed"}
    assert reply.header("Allow") is not None and "GET" in reply.header("Allow")
    assert delete(H, "/ws/x").status == 405
    assert redis("EXISTS", "x:queue") == 0


def test_handshake_success_headers(H, redis):
    with Raw(H) as raw:
        headers = raw.upgrade("/ws/hs", extra={
            "Sec-WebSocket-Protocol": "chat, superchat",
            "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
            "Origin": "http://evil.example"})
        assert headers["upgrade"] == ["websocket"], headers
        assert headers["connection"] == ["Upgrade"], headers
        assert headers["sec-websocket-accept"] == [SAMPLE_ACCEPT], headers
        assert "sec-websocket-protocol" not in headers, headers
        assert "sec-websocket-extensions" not in headers, headers
        # and the connection works
        raw.send(frame(OP_TEXT, b"ok"))
        assert raw.read_frame()[2:] == (b"ok", b"\x81\x02ok")


def test_handshake_accept_for_random_keys(H, redis):
    for _ in range(3):
        key = base64.b64encode(os.urandom(16)).decode()
        expected = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        with Raw(H) as raw:
            headers = raw.upgrade("/ws/keys", key=key,
                                  connection="keep-alive, Upgrade", upgrade="WebSocket")
            assert headers["sec-websocket-accept"] == [expected]


def test_autobahn_sees_no_subprotocol(H, redis):
    async def body(clients):
        ws = await connect(clients, H, "neg")
        response = ws.factory.response
        assert response.protocol is None
        assert response.extensions == []
        await ws.close()

    run(body)


# -- hand-built frames ---------------------------------------------------------------------------


def frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True,
          rsv: int = 0) -> bytes:
    """One client frame; `rsv` is the raw bits 0x40/0x20/0x10 of the first byte."""
    first = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if mask else 0
    size = len(payload)
    if size < 126:
        head = bytes((first, bit | size))
    elif size < 65536:
        head = bytes((first, bit | 126)) + struct.pack(">H", size)
    else:
        head = bytes((first, bit | 127)) + struct.pack(">Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


HOSTILE = [
    ("unmasked", frame(OP_TEXT, b"hi", mask=False), 1002),
    ("unmasked-ping", frame(OP_PING, b"", mask=False), 1002),
    ("rsv1", frame(OP_TEXT, b"hi", rsv=0x40), 1002),
    ("rsv2", frame(OP_BINARY, b"hi", rsv=0x20), 1002),
    ("rsv3", frame(OP_TEXT, b"hi", rsv=0x10), 1002),
    ("opcode-0x3", frame(0x3, b"x"), 1002),
    ("opcode-0xB", frame(0xB, b"x"), 1002),
    ("opcode-0x7", frame(0x7), 1002),
    ("opcode-0xF", frame(0xF), 1002),
    ("ping-126", frame(OP_PING, b"p" * 126), 1002),
    ("pong-200", frame(OP_PONG, b"p" * 200), 1002),
    ("close-126", frame(OP_CLOSE, close_payload(1000, b"r" * 124)), 1002),
    ("ping-no-fin", frame(OP_PING, b"x", fin=False), 1002),
    ("close-no-fin", frame(OP_CLOSE, close_payload(1000), fin=False), 1002),
    ("lone-continuation", frame(OP_CONT, b"x"), 1002),
    ("lone-continuation-no-fin", frame(OP_CONT, b"x", fin=False), 1002),
    ("text-inside-fragmented", frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"), 1002),
    ("binary-inside-fragmented",
     frame(OP_BINARY, b"a", fin=False) + frame(OP_BINARY, b"b", fin=False), 1002),
    ("invalid-utf8", frame(OP_TEXT, b"ok \xff\xfe"), 1007),
    ("utf8-surrogate", frame(OP_TEXT, b"\xed\xa0\x80"), 1007),
    ("utf8-overlong", frame(OP_TEXT, b"\xc0\xaf"), 1007),
    ("utf8-truncated", frame(OP_TEXT, b"ab\xe2\x98"), 1007),
    ("invalid-utf8-across-fragments",
     frame(OP_TEXT, b"ok\xce", fin=False) + frame(OP_CONT, b"\x28"), 1007),
    ("close-1-byte", frame(OP_CLOSE, b"\x03"), 1002),
    ("close-1005", frame(OP_CLOSE, close_payload(1005)), 1002),
    ("close-1006", frame(OP_CLOSE, close_payload(1006)), 1002),
    ("close-999", frame(OP_CLOSE, close_payload(999)), 1002),
    ("close-2000", frame(OP_CLOSE, close_payload(2000)), 1002),
    ("close-0", frame(OP_CLOSE, close_payload(0)), 1002),
    ("close-5000", frame(OP_CLOSE, close_payload(5000)), 1002),
    ("close-bad-reason", frame(OP_CLOSE, close_payload(1000, b"bye \xff")), 1007),
    ("length-top-bit", bytes((0x82, 0xFF)) + struct.pack(">Q", (1 << 63) | 5) + b"\0\0\0\0", 1002),
]


@pytest.mark.parametrize("data,code", [case[1:] for case in HOSTILE],
                         ids=[case[0] for case in HOSTILE])
def test_hostile_frame_closes(H, redis, data, code):
    with Raw(H) as raw:
        raw.upgrade("/ws/hostile")
        raw.send(data)
        raw.expect_close(code)
    wait_until(lambda: numsub(redis, "hostile") == 0, what="unregistration after failure")


def test_violation_after_valid_traffic(H, redis):
    """A good message is echoed, then the violation closes; nothing of it is echoed."""
    with Raw(H) as raw:
        raw.upgrade("/ws/mixed")
        raw.send(frame(OP_TEXT, b"fine") + frame(OP_TEXT, b"bad", mask=False))
        assert raw.read_frame()[3] == b"\x81\x04fine"
        raw.expect_close(1002)


def test_control_frames_between_fragments(H, redis):
    with Raw(H) as raw:
        raw.upgrade("/ws/interleave")
        raw.send(frame(OP_TEXT, "a☃".encode()[:2], fin=False) + frame(OP_PING, b"p1")
                 + frame(OP_PONG, b"unsolicited") + frame(OP_CONT, "a☃".encode()[2:], fin=False)
                 + frame(OP_CONT, b"!"))
        assert raw.read_frame()[3] == b"\x8a\x02p1"
        assert raw.read_frame()[3] == b"\x81\x05" + "a☃!".encode()


def test_valid_utf8_split_across_fragments(H, redis):
    snowman = "☃".encode()
    with Raw(H) as raw:
        raw.upgrade("/ws/split")
        raw.send(frame(OP_TEXT, snowman[:1], fin=False) + frame(OP_CONT, snowman[1:2], fin=False)
                 + frame(OP_CONT, snowman[2:]))
        assert raw.read_frame()[3] == b"\x81\x03" + snowman


@pytest.mark.parametrize("payload,reply", [
    (b"", None),                                    # no code: any close frame
    (close_payload(1000), b"\x88\x02\x03\xe8"),
    (close_payload(1001, "gone ☃".encode()), b"\x88\x02\x03\xe9"),
    (close_payload(3000), b"\x88\x02\x0b\xb8"),
    (close_payload(4999), b"\x88\x02\x13\x87"),
], ids=["empty", "1000", "1001-reason", "3000", "4999"])
def test_valid_close_is_answered(H, redis, payload, reply):
    with Raw(H) as raw:
        raw.upgrade("/ws/closing")
        raw.send(frame(OP_CLOSE, payload))
        first, opcode, body, raw_frame = raw.read_frame()
        assert first == 0x88 and opcode == OP_CLOSE, raw_frame
        if reply is not None:
            assert raw_frame == reply
        else:
            assert body in (b"", b"\x03\xe8"), raw_frame
        raw.expect_eof()


def test_frame_split_byte_by_byte(H, redis):
    payload = ("byte by byte ☃ " * 20).encode()  # 16-bit length
    data = frame(OP_TEXT, payload) + frame(OP_PING, b"pp")
    with Raw(H) as raw:
        raw.upgrade("/ws/bytes")
        for i in range(len(data)):
            raw.send(data[i:i + 1])
        _, opcode, body, _ = raw.read_frame()
        assert (opcode, body) == (OP_TEXT, payload)
        assert raw.read_frame()[3] == b"\x8a\x02pp"


def test_bytes_after_handshake_in_same_packet(H, redis):
    with Raw(H) as raw:
        raw.upgrade("/ws/eager", after=frame(OP_TEXT, "early ☃".encode())
                    + frame(OP_BINARY, b"\x00\x01"))
        assert raw.read_frame()[3] == b"\x81\x09" + "early ☃".encode()
        assert raw.read_frame()[3] == b"\x82\x02\x00\x01"


def test_raw_client_receives_deliveries(H, redis):
    with Raw(H) as raw:
        raw.upgrade("/ws/rawq")
        add(H, "rawq", "value ☃")
        first, opcode, payload, _ = raw.read_frame()
        assert (first, opcode) == (0x81, OP_TEXT)
        assert parse_delivery(payload) == {"key": "rawq:1", "value": "value ☃"}


# -- --max-body (docs/limits.md#sizes) ----------------------------------------------------------


@pytest.fixture(scope="module")
def small(redis_proc):
    """An extra server with `--max-body 1000`."""
    proc = ServerProcess(redis_proc.port, "--max-body", "1000")
    try:
        proc.start()
        yield proc.url
    finally:
        proc.stop()
    log = proc.log()
    assert "Traceback" not in log and "Unhandled" not in log, log


def test_max_body_exact_is_echoed(small, redis):
    with Raw(small) as raw:
        raw.upgrade("/ws/limit")
        blob = os.urandom(1000)
        raw.send(frame(OP_BINARY, blob))
        assert raw.read_frame()[1:3] == (OP_BINARY, blob)
        text = b"t" * 500
        raw.send(frame(OP_TEXT, text, fin=False) + frame(OP_CONT, text))
        assert raw.read_frame()[1:3] == (OP_TEXT, text * 2)
        raw.send(frame(OP_CLOSE, close_payload(1000)))
        assert raw.read_frame()[3] == b"\x88\x02\x03\xe8"


@pytest.mark.parametrize("data", [
    frame(OP_BINARY, b"x" * 1001),
    frame(OP_TEXT, b"x" * 1001),
    frame(OP_BINARY, b"x" * 600, fin=False) + frame(OP_CONT, b"x" * 600),
    frame(OP_TEXT, b"x" * 999, fin=False) + frame(OP_CONT, b"x", fin=False)
    + frame(OP_CONT, b"x"),
], ids=["one-frame-binary", "one-frame-text", "two-fragments-600", "three-fragments"])
def test_max_body_exceeded_closes_1009(small, redis, data):
    with Raw(small) as raw:
        raw.upgrade("/ws/limit")
        raw.send(data)
        raw.expect_close(1009)


def test_control_frames_do_not_count_toward_max_body(small, redis):
    with Raw(small) as raw:
        raw.upgrade("/ws/limit")
        raw.send(frame(OP_BINARY, b"a" * 990, fin=False) + frame(OP_PING, b"p" * 125)
                 + frame(OP_CONT, b"b" * 10))
        assert raw.read_frame()[1:3] == (OP_PONG, b"p" * 125)
        assert raw.read_frame()[1:3] == (OP_BINARY, b"a" * 990 + b"b" * 10)


# -- abrupt disconnects ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_abrupt_disconnect_unregisters(H, redis, how):
    raw = Raw(H)
    try:
        raw.upgrade("/ws/abrupt")
        wait_until(lambda: numsub(redis, "abrupt") == 1, what="subscription")
        if how == "reset":
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        raw.close()  # no close frame
    wait_until(lambda: numsub(redis, "abrupt") == 0, what="unsubscribe after disconnect")
    policy = get(H, "/p/abrupt")
    assert json.loads(policy.body) == {"queue": "abrupt", "value": "broadcast"}
    with SweepWatch(H, redis) as sweep:
        add(H, "abrupt", "kept")
        sweep.passed()  # neither the add's wake nor a sweep may pop it
    assert redis("LLEN", "abrupt:queue") == 1
    assert redis("GET", "abrupt:1") == "kept"
    # the next consumer gets it
    with Raw(H) as raw:
        raw.upgrade("/ws/abrupt")
        assert parse_delivery(raw.read_frame()[2]) == {"key": "abrupt:1", "value": "kept"}
    assert redis("LLEN", "abrupt:queue") == 0


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_abrupt_disconnect_of_one_of_two(H, redis, how):
    """Roundrobin, where every message goes to one consumer only: once one of two consumers
    has vanished (no close frame), the other gets every message and none is handed to the
    dead one. (Under broadcast a dead consumer could never cost the other anything.)"""
    assert post(H, "/p/pair", form={"policy": "roundrobin"}).status == 200
    with Raw(H) as alive:
        alive.upgrade("/ws/pair")
        dead = Raw(H)
        try:
            dead.upgrade("/ws/pair")
            # Both are in the rotation: one message each.
            add(H, "pair", "m1")
            add(H, "pair", "m2")
            got = [parse_delivery(raw.read_frame()[2]) for raw in (alive, dead)]
            assert sorted(m["value"] for m in got) == ["m1", "m2"], got
            if how == "reset":
                dead.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
        finally:
            dead.close()
        # The close reached the server before the adds below: it learns of it first.
        keys = [add(H, "pair", f"m{n}") for n in range(3, 9)]
        got = [parse_delivery(alive.read_frame()[2]) for _ in keys]
        assert got == [{"key": key, "value": f"m{n}"} for n, key in enumerate(keys, 3)]
    assert redis("LLEN", "pair:queue") == 0


# -- mixed consumers under broadcast (docs/live-delivery.md#policies) --------------------------


async def comet_open(base: str, queue: str):
    reader, writer = await asyncio.open_connection(*host_port(base))
    writer.write(f"GET /c/{queue} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"transfer-encoding: chunked" in head.lower(), head
    return reader, writer


async def comet_lines(reader, count: int) -> list[bytes]:
    lines: list[bytes] = []
    pending = b""
    while len(lines) < count:
        size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
        size = int(size_line.split(b";")[0], 16)
        assert size > 0, "the comet stream ended"
        chunk = await asyncio.wait_for(reader.readexactly(size + 2), TIMEOUT)
        assert chunk.endswith(b"\r\n")
        pending += chunk[:-2]
        while b"\r\n" in pending:
            line, pending = pending.split(b"\r\n", 1)
            lines.append(line)
    assert pending == b""
    return lines


def test_mixed_consumers_broadcast(H, redis):
    values = ["a", "b ☃", "c", "d 😀", "e", "f", "g", "h", "i", "j", "k", "l"]  # > one batch

    async def body(clients):
        ws = await connect(clients, H, "mix")
        reader, writer = await comet_open(H, "mix")
        try:
            await asyncio.to_thread(
                wait_until, lambda: numsub(redis, "mix") == 1, TIMEOUT, "subscription")
            for v in values:
                await http(add, H, "mix", v)
            expected = [{"key": f"mix:{n}", "value": v} for n, v in enumerate(values, 1)]
            via_ws = [await ws.json_message() for _ in values]
            via_comet = [json.loads(line) for line in await comet_lines(reader, len(values))]
            assert via_ws == expected
            assert via_comet == expected
            # a purge ends both
            await http(delete, H, "/q/mix")
            assert await ws.message() == (b"null", False)
            assert (await ws.next())[:3] == ("close", True, 1000)
            assert await comet_lines(reader, 1) == [b"null"]
            assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT) == b"0\r\n\r\n"
        finally:
            writer.close()

    run(body)
    assert redis("LLEN", "mix:queue") == 0


# -- a refused handshake ends the connection ----------------------------------------------------


@pytest.mark.parametrize("request_bytes, status", [
    (handshake("/ws/t", version="8"), 426),
    (handshake("/ws/t", connection="keep-alive"), 400),
    (handshake("/ws/t", key="short"), 400),
    (handshake("/ws/t", upgrade="h2c"), 403),
    (handshake("/ws/a%20b"), 400),
], ids=["426", "400-no-connection-upgrade", "400-bad-key", "403-other-upgrade", "400-name"])
def test_a_refused_handshake_closes_the_connection_after_its_reply(H, redis, request_bytes,
                                                                   status):
    """Found by a docs reviewer: the connection stayed open and 20 s later got an unsolicited
    `408 request timeout`. What follows a request asking to switch protocols is not HTTP."""
    with Raw(H) as raw:
        raw.send(request_bytes + frame(OP_TEXT, b"not http"))
        line, _, _ = raw.read_reply()
        assert line.startswith(b"HTTP/1.1 %d " % status), line
        raw.expect_eof()  # at once: the socket timeout (5 s) fails the test otherwise
