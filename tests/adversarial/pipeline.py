"""Pipelined requests for the adversarial tier: several requests written on one keep-alive
connection before any reply is read, the bytes cut at chosen offsets into separate TCP
segments, and the replies read one after another by h11, a strict client-side parser that is
not the server's (a reply framed wrongly, or one written inside another, is an error there)."""
from __future__ import annotations

import socket
import time
from urllib.parse import urlencode

import h11

from tests.adversarial.clients import REQUEST_TIMEOUT, Reply


def request_bytes(method: str, path: str, form: dict | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: restmq\r\n"
    if form is None:
        return (head + "\r\n").encode()
    body = urlencode(form).encode()
    return (head + "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Pipeline:
    """One connection: `send` writes everything in pieces, `replies` reads them in order."""

    def __init__(self, port: int):
        sock = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
        # Each send() its own segment, so the server's parser meets a request cut anywhere.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.on(sock)

    def on(self, sock: socket.socket) -> None:
        """Starts reading and writing on `sock`, a connected socket."""
        self.sock = sock
        self.buffer = b""  # read but not yet parsed: the start of the next reply
        self.broken = ""  # why reading stopped (the rest of the replies are missing)
        self.malformed = False  # because a reply broke HTTP/1.1's rules
        self.sent = 0.0
        self.local_port = self.sock.getsockname()[1]
        self.sent_bytes = 0  # written before a failure, if any
        self.pieces = 0
        self.received = 0  # bytes read in all

    def send(self, data: bytes, cuts: list[int], pause: float) -> None:
        """Writes `data` cut at the offsets `cuts` (taken modulo its length), pausing
        `pause` seconds between pieces."""
        offsets = sorted({c % len(data) for c in cuts} - {0}) + [len(data)]
        self.sent = time.monotonic()
        start = 0
        try:
            for i, end in enumerate(offsets):
                if i:
                    time.sleep(pause)
                self.sock.sendall(data[start:end])
                self.sent_bytes, self.pieces = end, i + 1
                start = end
        except OSError as e:
            self.broken = f"send failed: {e!r}"

    def reply(self, method: str) -> Reply:
        """The next reply, to a request made with `method`; status None once the connection
        failed (the first failure is in `broken`)."""
        if self.broken:
            return Reply(None, b"", self.sent, time.monotonic(), self.broken)
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method=method, target="/", headers=[("Host", "restmq")]))
        parser.send(h11.EndOfMessage())
        if self.buffer:  # (h11 takes b"" for the end of the connection)
            parser.receive_data(self.buffer)
        status, body = None, b""
        try:
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    data = self.sock.recv(65536)
                    self.received += len(data)
                    if not data:
                        raise ConnectionResetError("the server closed the connection")
                    parser.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise h11.RemoteProtocolError(f"unexpected {event!r}")
        except (OSError, h11.RemoteProtocolError) as e:
            self.broken = f"reply to {method}: {e!r} after {self.received} bytes read"
            self.malformed = isinstance(e, h11.RemoteProtocolError)
            return Reply(None, b"", self.sent, time.monotonic(), self.broken)
        self.buffer = parser.trailing_data[0]
        return Reply(status, body, self.sent, time.monotonic())

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
