"""The WebSocket protocol (RFC 6455), server side, on wsproto: the handshake's last checks and
accept key, then one upgraded connection (messages, fragments, control frames, the close
handshake, pings).

wsproto parses frames, reassembles nothing and checks masking, reserved bits, opcodes, control
frame sizes, UTF-8 in text and close codes. What it leaves to us: the shape of the client's key,
a message size limit (1009), sending the close frame itself after a violation it reports as a
close event, cutting a peer that does not answer our close, and liveness (our pings).

Private members of cyclone, Twisted or txredisapi used here: none.
"""
from __future__ import annotations

import base64
import binascii
import hashlib

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping, Pong,
                            Request, TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from restmq.clock import reactor_clock

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY = 0x1, 0x2
CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_INVALID_DATA, CLOSE_TOO_BIG = 1000, 1002, 1007, 1009
CLOSE_WAIT = 2.0  # how long we wait for the peer's close frame after sending ours
PING_INTERVAL = 30.0  # a consumer is pinged this often ...
_PING = b"restmq"  # ... with this payload, and must answer within its pong timeout


class HandshakeRefused(Exception):
    """wsproto refused a handshake that passed our own checks."""


def websocket_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WS_GUID).digest()).decode()


def websocket_key_valid(key: str) -> bool:
    """RFC 6455 §4.1: the key is 16 bytes, base64-encoded (wsproto does not check its shape)."""
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def accept(host: str, key: str, path: str) -> WSConnection:
    """wsproto's side of a handshake we have checked: the connection, past its 101 (whose
    bytes, `accept_reply`, we send ourselves). Raises HandshakeRefused."""
    ws = WSConnection(ConnectionType.SERVER)
    headers = [(b"Host", (host or "localhost").encode("latin-1", "replace")),
               (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
               (b"Sec-WebSocket-Key", key.encode("ascii")), (b"Sec-WebSocket-Version", b"13")]
    try:
        ws.initiate_upgrade_connection(headers, path.encode("latin-1", "replace"))
        if not any(isinstance(event, Request) for event in ws.events()):
            raise HandshakeRefused("no request")
        ws.send(AcceptConnection())
    except (LocalProtocolError, RemoteProtocolError, UnicodeError) as e:
        raise HandshakeRefused(str(e)) from None
    return ws


def accept_reply(key: str) -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nServer: RestMQ\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + websocket_accept(key).encode() + b"\r\n\r\n")


class WebSocketConnection:
    """Frames in and out of one upgraded connection.

    `write(bytes)` sends, `lose()` ends the TCP connection. `on_message(opcode, payload)` is
    called with each complete client message (fragments reassembled, text checked as UTF-8);
    `on_close()` once the connection is finished. Protocol violations close with 1002, invalid
    UTF-8 with 1007, messages over `max_message` bytes with 1009, at once. `clock` (an
    IReactorTime) times the wait for the peer's close frame and the pings
    (`start_pings`)."""

    def __init__(self, ws: WSConnection, write, lose, max_message: int, on_message, on_close,
                 clock=None):
        self.ws = ws
        self.write, self.lose = write, lose
        self.max_message = max_message
        self.on_message, self.on_close = on_message, on_close
        self.clock = reactor_clock() if clock is None else clock
        self.parts: list = []
        self.size = 0
        self.closing = False  # we sent a close frame
        self.closed = False
        self._timers: dict[str, object] = {}
        self._on_dead = None

    # -- in --------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.ws.receive_data(data)
        for event in self.ws.events():
            self._event(event)
            if self.closed:
                return

    def _event(self, event) -> None:
        if isinstance(event, Message):
            return self._part(event)
        if isinstance(event, Ping):
            if not self.closing:
                self.write(self.ws.send(event.response()))
            return
        if isinstance(event, Pong):
            if event.payload == _PING:
                self._cancel("pong")
            return
        if isinstance(event, CloseConnection):
            if self.ws.state is ConnectionState.OPEN:
                # wsproto reports a violation as a close event it did not receive
                return self._fail(int(event.code))
            if self.ws.state is ConnectionState.REMOTE_CLOSING:
                self.write(self.ws.send(CloseConnection(code=event.code)))
            self._finish()

    def _part(self, event) -> None:
        piece = event.data
        if isinstance(piece, str):
            self.size += len(piece) if piece.isascii() else len(piece.encode("utf-8"))
        else:
            self.size += len(piece)
        if self.size > self.max_message:
            return self._fail(CLOSE_TOO_BIG)
        self.parts.append(piece)
        if not event.message_finished:
            return
        parts, self.parts, self.size = self.parts, [], 0
        if self.closing:
            return
        if isinstance(event, TextMessage):
            self.on_message(OP_TEXT, "".join(parts))
        else:
            self.on_message(OP_BINARY, b"".join(parts))

    # -- out -------------------------------------------------------------------------------

    def frames(self, texts) -> bytes:
        """Text frames for `texts` (str), to write in one go; empty once we are closing."""
        if self.closing or self.closed:
            return b""
        send = self.ws.send
        return b"".join(send(TextMessage(data=text)) for text in texts)

    def send(self, opcode: int, payload) -> None:
        """One message: text (str) or binary (bytes)."""
        if self.closing or self.closed:
            return
        event = TextMessage(data=payload) if opcode == OP_TEXT else BytesMessage(data=payload)
        self.write(self.ws.send(event))

    def close(self, code: int = CLOSE_NORMAL) -> None:
        """Send our close frame; the TCP connection ends when the peer answers, or soon."""
        if self.closing or self.closed:
            return
        self.closing = True
        self._cancel("ping")
        self._cancel("pong")
        try:
            self.write(self.ws.send(CloseConnection(code=code)))
        except LocalProtocolError:
            pass
        self._timers["close"] = self.clock.callLater(CLOSE_WAIT, self._finish)

    def _fail(self, code: int) -> None:
        self.close(code)
        self._finish()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = self.closing = True
        for name in list(self._timers):
            self._cancel(name)
        self.on_close()  # first: what the stream still holds goes out before the close
        self.lose()

    def abandon(self) -> None:
        """The stream is over (the connection was lost or cut): send nothing more, stop the
        timers."""
        self.closing = True
        for name in list(self._timers):
            self._cancel(name)

    # -- liveness --------------------------------------------------------------------------

    def start_pings(self, interval: float, timeout: float, on_dead) -> None:
        """A ping every `interval` seconds; `on_dead()` when one is not answered within
        `timeout` (the peer is gone or stuck, whatever TCP still says)."""
        self._interval, self._timeout, self._on_dead = interval, timeout, on_dead
        self._timers["ping"] = self.clock.callLater(interval, self._ping)

    def _ping(self) -> None:
        self._timers.pop("ping", None)
        if self.closing or self.closed:
            return
        self.write(self.ws.send(Ping(payload=_PING)))
        if "pong" not in self._timers:
            self._timers["pong"] = self.clock.callLater(self._timeout, self._no_pong)
        self._timers["ping"] = self.clock.callLater(self._interval, self._ping)

    def _no_pong(self) -> None:
        self._timers.pop("pong", None)
        if not self.closed:
            self._on_dead()

    def _cancel(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()
