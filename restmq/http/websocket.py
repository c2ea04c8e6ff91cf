"""The WebSocket protocol (RFC 6455), server side: the handshake's accept key, frames out, and
frames in from one upgraded connection (fragments, control frames, the close handshake).

cyclone 1.3's WebSocket code hashes str and indexes bytes as str on Python 3; this is a small
codec of our own, working in bytes.
"""
from __future__ import annotations

from restmq.clock import reactor_clock

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_INVALID_DATA, CLOSE_TOO_BIG = 1000, 1002, 1007, 1009
CLOSE_WAIT = 2.0  # how long we wait for the peer's close frame after sending ours


def websocket_accept(key: str) -> str:
    import base64
    import hashlib
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WS_GUID).digest()).decode()


def websocket_key_valid(key: str) -> bool:
    import base64
    import binascii
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A single unmasked server frame."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, size))
    elif size < 65536:
        header = bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big")
    return header + payload


def _valid_close_code(code: int) -> bool:
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or \
        3000 <= code <= 4999


class WebSocketConnection:
    """Frames in and out of one upgraded connection.

    `on_message(opcode, payload)` is called with each complete client message (fragments
    reassembled, text validated as UTF-8); `on_close()` once the connection is finished.
    Protocol violations close with 1002, invalid UTF-8 with 1007, messages over `max_message`
    bytes with 1009. `clock` (an IReactorTime) times the wait for the peer's close frame.
    """

    def __init__(self, transport, max_message: int, on_message, on_close, clock=None):
        if clock is None:
            clock = reactor_clock()
        self.transport = transport
        self.max_message = max_message
        self.on_message = on_message
        self.on_close = on_close
        self.clock = clock
        self.buffer = bytearray()
        self.fragments: list[bytes] | None = None
        self.fragment_opcode = 0
        self.fragment_size = 0
        self.closing = False  # we sent a close frame
        self.closed = False

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buffer.extend(data)
        while not self.closed and self._parse_one():
            pass

    def _parse_one(self) -> bool:
        buf = self.buffer
        if len(buf) < 2:
            return False
        b0, b1 = buf[0], buf[1]
        fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
        masked, size = b1 & 0x80, b1 & 0x7F
        offset = 2
        if rsv or opcode not in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            return self._fail(CLOSE_PROTOCOL)
        if not masked:
            return self._fail(CLOSE_PROTOCOL)
        if opcode >= OP_CLOSE and (not fin or size > 125):
            return self._fail(CLOSE_PROTOCOL)
        if size == 126:
            if len(buf) < 4:
                return False
            size = int.from_bytes(buf[2:4], "big")
            offset = 4
        elif size == 127:
            if len(buf) < 10:
                return False
            size = int.from_bytes(buf[2:10], "big")
            if size >> 63:
                return self._fail(CLOSE_PROTOCOL)
            offset = 10
        if opcode < OP_CLOSE:
            pending = self.fragment_size if opcode == OP_CONT else 0
            if pending + size > self.max_message:
                return self._fail(CLOSE_TOO_BIG)
        if len(buf) < offset + 4 + size:
            return False
        mask = bytes(buf[offset:offset + 4])
        start = offset + 4
        payload = _unmask(bytes(buf[start:start + size]), mask)
        del buf[:start + size]
        self._frame(bool(fin), opcode, payload)
        return True

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            if not self.closing:
                self.transport.write(ws_frame(OP_PONG, payload))
            return
        if opcode == OP_PONG:
            return
        if opcode == OP_CLOSE:
            return self._peer_closed(payload)
        if opcode == OP_CONT:
            if self.fragments is None:
                return self._fail(CLOSE_PROTOCOL)
        else:
            if self.fragments is not None:
                return self._fail(CLOSE_PROTOCOL)
            self.fragments, self.fragment_opcode, self.fragment_size = [], opcode, 0
        self.fragments.append(payload)
        self.fragment_size += len(payload)
        if not fin:
            return
        message = b"".join(self.fragments)
        kind = self.fragment_opcode
        self.fragments, self.fragment_size = None, 0
        if kind == OP_TEXT:
            try:
                message.decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(CLOSE_INVALID_DATA)
        if not self.closing:
            self.on_message(kind, message)

    def _peer_closed(self, payload: bytes) -> None:
        if len(payload) == 1:
            return self._fail(CLOSE_PROTOCOL)
        code = CLOSE_NORMAL
        if len(payload) >= 2:
            code = int.from_bytes(payload[:2], "big")
            if not _valid_close_code(code):
                return self._fail(CLOSE_PROTOCOL)
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(CLOSE_INVALID_DATA)
        if not self.closing:
            self.transport.write(ws_frame(OP_CLOSE, code.to_bytes(2, "big")))
        self._finish()

    def send(self, opcode: int, payload: bytes) -> None:
        if not self.closing and not self.closed:
            self.transport.write(ws_frame(opcode, payload))

    def close(self, code: int = CLOSE_NORMAL) -> None:
        """Send our close frame; the TCP connection ends when the peer answers, or soon."""
        if self.closing or self.closed:
            return
        self.closing = True
        self.transport.write(ws_frame(OP_CLOSE, code.to_bytes(2, "big")))
        self.clock.callLater(CLOSE_WAIT, self._finish)

    def _fail(self, code: int) -> bool:
        self.close(code)
        self._finish()
        return False

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.closing = True
        self.transport.loseConnection()
        self.on_close()


def _unmask(data: bytes, mask: bytes) -> bytes:
    if not data:
        return data
    # XOR four bytes at a time through one big integer: fast without C helpers.
    size = len(data)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
