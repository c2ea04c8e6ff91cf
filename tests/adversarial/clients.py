"""Socket clients of the adversarial tier: one HTTP request per connection, and live consumers
(comet, SSE, WebSocket) written here from the wire formats, each read by a thread of its own
that the test can pause, or close rudely at a moment of its choosing."""
from __future__ import annotations

import base64
import codecs
import hashlib
import http.client
import json
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlencode

REQUEST_TIMEOUT = 20.0  # well past the server's 5 s Redis budget: a timeout here is a hang
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- one request ---------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int | None  # None: no reply (connection error or client timeout)
    body: bytes
    sent: float
    replied: float
    error: str = ""

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def call(port: int, method: str, path: str, form: dict | None = None,
         timeout: float = REQUEST_TIMEOUT) -> Reply:
    """One request on a fresh connection; never raises for network trouble."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else {}
    body = urlencode(form) if form is not None else None
    sent = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, data, sent, time.monotonic())
    except (OSError, http.client.HTTPException) as e:
        return Reply(None, b"", sent, time.monotonic(), repr(e))
    finally:
        conn.close()


# -- wire formats -----------------------------------------------------------------------------

class ProtocolError(Exception):
    """The server sent bytes its own format does not allow."""


class Chunked:
    """Decodes an HTTP/1.1 chunked body incrementally; `done` after the last chunk."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while not self.done:
            end = self.buf.find(b"\r\n")
            if end < 0:
                break
            try:
                size = int(bytes(self.buf[:end]).split(b";")[0], 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {bytes(self.buf[:end])!r}")
            if len(self.buf) < end + 2 + size + 2:
                break
            if self.buf[end + 2 + size:end + 4 + size] != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
            if size == 0:
                self.done = True
            out += self.buf[end + 2:end + 2 + size]
            del self.buf[:end + 4 + size]
        return bytes(out)


class CometLines:
    """Comet body: one JSON object per CRLF-terminated line; `null` is the end of the stream."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list:
        self.buf += data
        items = []
        while (end := self.buf.find(b"\r\n")) >= 0:
            line = bytes(self.buf[:end])
            del self.buf[:end + 2]
            try:
                items.append(json.loads(line))
            except ValueError:
                raise ProtocolError(f"comet line is not JSON: {line[:200]!r}")
        return items


class SSEEvents:
    """An event-stream parsed the way a browser's EventSource does (the WHATWG HTML rules):
    UTF-8, one optional BOM, lines ended by CRLF, LF or CR, comments, `field: value` with one
    leading space dropped, events dispatched on an empty line when their data is not empty."""

    def __init__(self) -> None:
        self.pending = ""
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.started = False
        self.skip_lf = False  # the previous piece ended in CR: a leading LF belongs to it
        self.data: list[str] = []
        self.last_id = ""

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        """Returns the dispatched events as (last event id, data)."""
        text = self.decoder.decode(data)
        if not self.started and text:
            self.started = True
            text = text.removeprefix("\ufeff")
        if self.skip_lf and text.startswith("\n"):
            text = text[1:]
        self.skip_lf = False
        self.pending += text
        events = []
        while True:
            cut = min((i for i in (self.pending.find("\r"), self.pending.find("\n")) if i >= 0),
                      default=-1)
            if cut < 0:
                return events
            line = self.pending[:cut]
            rest = self.pending[cut + 1:]
            if self.pending[cut] == "\r":
                if rest.startswith("\n"):
                    rest = rest[1:]
                elif not rest:
                    self.skip_lf = True
            self.pending = rest
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str):
        if line == "":
            if not self.data:
                return None
            data, self.data = "\n".join(self.data), []
            return self.last_id, data
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self.data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


class WebSocketFrames:
    """Frames from the server (RFC 6455: never masked); fragments reassembled."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.fragments: list[bytes] = []
        self.fragment_opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Returns complete messages and control frames as (opcode, payload)."""
        self.buf += data
        out = []
        while len(self.buf) >= 2:
            first, second = self.buf[0], self.buf[1]
            if second & 0x80:
                raise ProtocolError("the server masked a frame")
            length, offset = second & 0x7F, 2
            if length == 126:
                if len(self.buf) < 4:
                    break
                length, offset = struct.unpack("!H", self.buf[2:4])[0], 4
            elif length == 127:
                if len(self.buf) < 10:
                    break
                length, offset = struct.unpack("!Q", self.buf[2:10])[0], 10
            if len(self.buf) < offset + length:
                break
            payload = bytes(self.buf[offset:offset + length])
            del self.buf[:offset + length]
            fin, opcode = first & 0x80, first & 0x0F
            if opcode >= 8:
                out.append((opcode, payload))
                continue
            if opcode:
                self.fragment_opcode, self.fragments = opcode, []
            self.fragments.append(payload)
            if fin:
                out.append((self.fragment_opcode, b"".join(self.fragments)))
                self.fragments = []
        return out


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked frame from the client."""
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# -- live consumers ----------------------------------------------------------------------------

# Events a consumer reports through on_event(consumer, kind, detail):
MESSAGE = "message"  # detail: (key, value)
END = "end"  # the final null of a purge
EOF = "eof"  # the server closed the connection (detail: what was seen)
BROKEN = "broken"  # malformed bytes (detail: the error)


class LiveConsumer(threading.Thread):
    """One live consumer on its own socket. The test thread connects and reads the head;
    `start()` then hands the socket to the reading thread, which is the only one to close it
    afterwards (so that nothing it has read is left unprocessed)."""

    def __init__(self, kind: str, port: int, queue: str,
                 on_event: Callable[["LiveConsumer", str, object], None],
                 rcvbuf: int | None = None, sock: socket.socket | None = None,
                 preread: bytes = b""):
        """`sock`: a connection whose request was written already (the last of a pipeline),
        `preread` what was read of it past the replies before."""
        super().__init__(daemon=True)
        self.kind, self.port, self.queue = kind, port, queue
        self.on_event = on_event
        piped = sock is not None
        if sock is None:
            sock = socket.socket()
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(REQUEST_TIMEOUT)
            sock.connect(("127.0.0.1", port))
        self.sock = sock
        self.preread = preread
        self.sent_request = piped
        self.local_port = self.sock.getsockname()[1]
        self.ws_key = base64.b64encode(os.urandom(16)).decode()
        self.status: int | None = None
        self.body = b""  # the reply body when the stream was refused
        self.rest = b""  # bytes after the head, for the reading thread
        self.chunked = False
        self.parser = {"comet": CometLines, "sse": SSEEvents, "ws": WebSocketFrames}[kind]()
        self.dechunk = Chunked()
        self.finished = False  # the stream is over for us (end, eof, close)
        self._reading = threading.Event()
        self._reading.set()
        self._close_how: str | None = None
        self._closed = threading.Event()

    # -- the request and the head (test thread) ------------------------------------------------

    def request_bytes(self) -> bytes:
        path = {"comet": "/c/", "sse": "/sse/", "ws": "/ws/"}[self.kind] + self.queue
        lines = [f"GET {path} HTTP/1.1", "Host: restmq"]
        if self.kind == "sse":
            lines.append("Accept: text/event-stream")
        if self.kind == "ws":
            lines += ["Upgrade: websocket", "Connection: Upgrade",
                      f"Sec-WebSocket-Key: {self.ws_key}", "Sec-WebSocket-Version: 13"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    sent_request = False

    def send_request(self, partial: bool = False) -> None:
        data = self.request_bytes()
        self.sock.sendall(data[:len(data) // 2] if partial else data)
        self.sent_request = True

    def read_head(self, timeout: float = REQUEST_TIMEOUT) -> int | None:
        """Reads the status line and headers; returns the status, None if the connection
        ended first. A refused stream's body is read too."""
        self.sock.settimeout(timeout)
        raw, self.preread = self.preread, b""
        try:
            while b"\r\n\r\n" not in raw:
                data = self.sock.recv(65536)
                if not data:
                    return None
                raw += data
        except OSError:
            return None
        head, _, self.rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.status = int(lines[0].split()[1])
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if self.status == 101:
            expected = base64.b64encode(hashlib.sha1(
                (self.ws_key + WS_GUID).encode()).digest()).decode()
            if headers.get("sec-websocket-accept") != expected:
                raise ProtocolError(f"bad Sec-WebSocket-Accept {headers}")
        elif self.status != 200:
            length = int(headers.get("content-length", "0"))
            try:
                while len(self.rest) < length:
                    data = self.sock.recv(65536)
                    if not data:
                        break
                    self.rest += data
            except OSError:
                pass
            self.body = self.rest
        return self.status

    @property
    def streaming(self) -> bool:
        return self.status == (101 if self.kind == "ws" else 200)

    # -- reading (its own thread) ------------------------------------------------------------------

    def pause(self) -> None:
        """Stop reading: what the server writes piles up in the socket buffers."""
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    @property
    def paused(self) -> bool:
        return not self._reading.is_set()

    def run(self) -> None:
        self.sock.settimeout(0.05)
        try:
            if self.rest:
                self._feed(self.rest)
            while not self.finished:
                if self._close_how:
                    self._close_now(self._close_how)
                    return
                if not self._reading.wait(0.05):
                    continue
                try:
                    data = self.sock.recv(262144)
                except socket.timeout:
                    continue
                except OSError as e:
                    self._eof(f"error {e!r}")
                    break
                if not data:
                    self._eof("closed")
                    break
                self._feed(data)
            if self._close_how:
                self._close_now(self._close_how)
        except ProtocolError as e:
            self.finished = True
            self.on_event(self, BROKEN, str(e))
        finally:
            self._close_socket()

    def _eof(self, how: str) -> None:
        self.finished = True
        self.on_event(self, EOF, how)

    def _feed(self, data: bytes) -> None:
        if self.kind != "ws" and self.chunked:
            data = self.dechunk.feed(data)
        for item in self.parser.feed(data):
            self._item(item)
            if self.finished:
                return
        if self.dechunk.done:
            self._eof("last chunk")

    def _item(self, item) -> None:
        if self.kind == "comet":
            self._message(item)
        elif self.kind == "sse":
            _, data = item
            try:
                self._message(json.loads(data))
            except ValueError:
                raise ProtocolError(f"SSE data is not JSON: {data[:200]!r}")
        else:
            opcode, payload = item
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.finished = True
                self.on_event(self, EOF, f"close frame {code}")
            elif opcode == 0x9:
                self.sock.sendall(client_frame(0xA, payload))
            elif opcode == 0x1:
                try:
                    self._message(json.loads(payload))
                except ValueError:
                    raise ProtocolError(f"WebSocket text is not JSON: {payload[:200]!r}")
            elif opcode != 0xA:
                raise ProtocolError(f"unexpected opcode {opcode}")

    def _message(self, obj) -> None:
        if obj is None:
            self.on_event(self, END, None)
            return
        if not isinstance(obj, dict) or set(obj) != {"key", "value"}:
            raise ProtocolError(f"not a message object: {obj!r}")
        self.on_event(self, MESSAGE, (obj["key"], obj["value"]))

    # -- closing -------------------------------------------------------------------------------

    def close(self, how: str = "rst") -> None:
        """Closes the connection: `rst` (SO_LINGER 0), `fin`, `shut_wr` (half-close, then read
        until the server closes) or `ws_close` (a close frame, then the socket). From the test
        thread: before `start()` at once, afterwards by the reading thread between two reads."""
        if not self.is_alive() and not self._started_reading():
            self._close_now(how)
            self._close_socket()
            return
        self._close_how = how
        self._reading.set()
        self.join(REQUEST_TIMEOUT)

    def _started_reading(self) -> bool:
        return self.ident is not None

    def _close_now(self, how: str) -> None:
        self.finished = True
        try:
            if how == "ws_close" and self.kind == "ws":
                self.sock.sendall(client_frame(0x8, struct.pack("!H", 1000)))
            elif how == "shut_wr":
                self.sock.shutdown(socket.SHUT_WR)
                self._drain()
            elif how == "rst":
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass

    def _drain(self) -> None:
        """After a half-close: whatever the server still wrote is delivered to the test."""
        self.sock.settimeout(REQUEST_TIMEOUT)
        self.finished = False
        try:
            while not self.finished:
                data = self.sock.recv(262144)
                if not data:
                    self._eof("closed after our half-close")
                    return
                if self.status is not None:  # before the head nothing is a message yet
                    self._feed(data)
        except (OSError, ProtocolError):
            self.finished = True

    def _close_socket(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            try:
                self.sock.close()
            except OSError:
                pass
