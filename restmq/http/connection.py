"""The HTTP/1.x connection: cyclone's, hardened. What bytes a request may take (limits on the
line, the head and the body, chunked bodies, slow clients) and the errors it gets otherwise.
"""
from __future__ import annotations

import io
import re

import cyclone.httpserver
from cyclone import httputil

from restmq.clock import reactor_clock

# How long a connection whose request body was refused may keep sending before it is cut.
DISCARD_GRACE = 5.0


class _Reject(Exception):
    """A request we answer at the connection level, then close: (status, reason)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


REQUEST_LINE_MAX = 8192  # longer: 414
HEADER_LINE_MAX = 16384  # one header line; longer: 431
HEADER_BYTES_MAX = 65536  # the whole header block; more: 431
HEADER_COUNT_MAX = 100  # more header fields: 431
LENGTH_DIGITS_MAX = 18  # a Content-Length with more significant digits: 400
_HEX = re.compile(rb"[0-9A-Fa-f]+")
HEAD_TIMEOUT = 20.0  # from connect (or the end of the previous reply) to a complete head
BODY_TIMEOUT = 60.0  # from the end of the head to the end of the body
_PHRASES = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 501: "Not Implemented",
            505: "HTTP Version Not Supported"}


class HTTPConnection(cyclone.httpserver.HTTPConnection):
    """cyclone's HTTP/1.x connection, hardened.

    * A body whose declared length exceeds `max_body` is never read: the request is
      dispatched at once with `request.body_too_large` set, so routing and the method check
      still come first (docs/http-api.md#processing-order), and the connection is closed
      after the reply.
    * Chunked request bodies are decoded and limited like others; a malformed, negative,
      repeated or conflicting Content-Length, or a transfer coding other than chunked, is
      answered 400 or 501 and the connection closed: never a 200 with the body dropped.
    * Caps on the request line (414), header lines, header bytes and header count (431).
    * Slow clients (slowloris): the head must arrive within HEAD_TIMEOUT of the connection
      or of the previous reply (which is also the keep-alive idle timeout), the body within
      BODY_TIMEOUT of the head; then 408 and close. Streams (comet, SSE, WebSocket) are
      past their head and never time out this way. The Application's settings may give
      `clock` (an IReactorTime), `head_timeout` and `body_timeout`.
    * The request line and headers are decoded as Latin-1 so that no byte can make the parser
      raise; handlers decode paths and arguments as UTF-8 themselves.
    """

    MAX_LENGTH = HEADER_LINE_MAX

    def connectionMade(self):
        super().connectionMade()
        settings = self.factory.settings
        self.max_body = settings.get("max_body", 1024 * 1024)
        self.clock = settings.get("clock") or reactor_clock()
        self.head_timeout = settings.get("head_timeout", HEAD_TIMEOUT)
        self.body_timeout = settings.get("body_timeout", BODY_TIMEOUT)
        self._chunked = None  # bytearray of undecoded chunked input while reading such a body
        self._discarding = False
        self._rejected = False
        self._head_bytes = 0
        self.upgrade_buffer: bytearray | None = None  # bytes after an Upgrade request's headers
        self._timer = None
        self._arm(self.head_timeout)

    def connectionLost(self, reason):
        self._disarm()
        super().connectionLost(reason)

    # -- timeouts --------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.clock.callLater(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._request is None or self.content_length is not None or \
                self._chunked is not None:
            self._reject(_Reject(408, "request timeout"))

    # -- head ------------------------------------------------------------------------------

    def lineReceived(self, line):
        if self._rejected:
            return
        try:
            self._check_head_line(line)
        except _Reject as e:
            return self._reject(e)
        super().lineReceived(line)

    def _check_head_line(self, line: bytes) -> None:
        if not self._headersbuffer:
            if not line:
                return  # tolerated empty lines before a request (RFC 9112 §2.2)
            self._head_bytes = 0
            if len(line) > REQUEST_LINE_MAX:
                raise _Reject(414, "request line too long")
        elif line and len(self._headersbuffer) > HEADER_COUNT_MAX:
            raise _Reject(431, "too many header fields")
        self._head_bytes += len(line) + 2
        if self._head_bytes > HEADER_BYTES_MAX:
            raise _Reject(431, "request header fields too large")

    def lineLengthExceeded(self, line):
        if self._rejected:
            return
        if not self._headersbuffer:
            return self._reject(_Reject(414, "request line too long"))
        return self._reject(_Reject(431, "request header fields too large"))

    def dataReceived(self, data):
        if self._rejected:
            return
        return super().dataReceived(data)

    def rawDataReceived(self, data):
        if self._discarding or self._rejected:
            return
        if self.upgrade_buffer is not None:
            self.upgrade_buffer.extend(data)
            return
        if self._chunked is not None:
            self._chunked.extend(data)
            return self._decode_chunks()
        return super().rawDataReceived(data)

    def _on_headers(self, data):
        try:
            self._parse_headers(data)
        except _Reject as e:
            self._reject(e)

    def _parse_headers(self, data):
        eol = data.find(b"\r\n")
        start_line = data[:eol] if eol >= 0 else data
        parts = start_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            raise _Reject(400, "malformed request line")
        if parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
            raise _Reject(505 if parts[2][5:6].isdigit() else 400, "unsupported HTTP version")
        method, uri, version = (p.decode("latin-1") for p in parts)
        try:
            headers = httputil.HTTPHeaders.parse(data[eol:].decode("latin-1") if eol >= 0
                                                 else "")
        except ValueError:
            raise _Reject(400, "malformed header field") from None
        self._request = cyclone.httpserver.HTTPRequest(
            connection=self, method=method, uri=uri, version=version,
            headers=headers, remote_ip=self._remote_ip)
        self._request.body_too_large = False
        self._disarm()

        encodings = headers.get_list("Transfer-Encoding")
        lengths = headers.get_list("Content-Length")
        if encodings:
            if lengths:
                raise _Reject(400, "Content-Length with Transfer-Encoding")
            if [e.strip().lower() for e in ",".join(encodings).split(",")] != ["chunked"]:
                raise _Reject(501, "unsupported transfer coding")
            self._expect_continue()
            self._chunked = bytearray()
            self._contentbuffer = io.BytesIO()
            self._chunk_left = None
            self._arm(self.body_timeout)
            self.setRawMode()
            return
        if lengths:
            values = {v.strip() for v in ",".join(lengths).split(",")}
            text = next(iter(values))
            digits = text.lstrip("0") or "0"
            # No body is longer than a 64-bit length; int() would refuse past 4,300 digits.
            if len(values) != 1 or not (text.isascii() and text.isdigit()) or \
                    len(digits) > LENGTH_DIGITS_MAX:
                raise _Reject(400, "malformed Content-Length")
            length = int(digits)
            if length > self.max_body:
                return self._refuse_body()
            if length:
                self._expect_continue()
                self._contentbuffer = io.BytesIO()
                self.content_length = length
                self._arm(self.body_timeout)
                self.setRawMode()
                return
        if "Upgrade" in headers and method == "GET":
            # Whatever follows belongs to the upgraded protocol (or nobody: the connection
            # closes after a refused handshake), never to the HTTP parser.
            self.no_keep_alive = True
            self.upgrade_buffer = bytearray()
            self.setRawMode()
        self.request_callback(self._request)

    def _expect_continue(self):
        if self._request.headers.get("Expect", "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _refuse_body(self):
        self._request.body_too_large = True
        self.no_keep_alive = True
        self._discarding = True
        self.setRawMode()
        self.request_callback(self._request)

    def _decode_chunks(self):
        buf = self._chunked
        while True:
            if self._chunk_left is None:  # expecting a size line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        return self._reject(_Reject(400, "malformed chunked body"))
                    return
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[:end + 2]
                # Hex digits only: int() would also take "1_0" (16), which a stricter proxy
                # in front reads differently.
                if not _HEX.fullmatch(size_text):
                    return self._reject(_Reject(400, "malformed chunked body"))
                size = int(size_text, 16)
                if size == 0:
                    self._chunked = None
                    self._skip_trailers(bytes(buf))
                    return
                if self._contentbuffer.tell() + size > self.max_body:
                    self._chunked = None
                    self._disarm()
                    return self._refuse_body()
                self._chunk_left = size
            else:
                if len(buf) < self._chunk_left + 2:
                    return
                if buf[self._chunk_left:self._chunk_left + 2] != b"\r\n":
                    return self._reject(_Reject(400, "malformed chunked body"))
                self._contentbuffer.write(bytes(buf[:self._chunk_left]))
                del buf[:self._chunk_left + 2]
                self._chunk_left = None

    def _skip_trailers(self, rest):
        # Trailers end with an empty line; we keep none of them.
        end = rest.find(b"\r\n")
        while end > 0:
            rest = rest[end + 2:]
            end = rest.find(b"\r\n")
        if end < 0:
            self._chunked = bytearray(rest)  # wait for the rest of the trailers
            self._chunk_left = None
            return self._wait_trailers()
        body = self._contentbuffer.getvalue()
        self._contentbuffer = None
        self._request.headers["Content-Length"] = str(len(body))
        self._disarm()
        self.setLineMode(rest[2:])
        self._on_request_body(body)

    def _wait_trailers(self):
        # Rare: the last chunk arrived without the final CRLF yet. Re-enter through
        # _decode_chunks with a zero-size marker so the trailer scan runs again.
        self._chunked[:0] = b"0\r\n"

    def _on_request_body(self, data):
        # Arguments are parsed by the handlers (strict UTF-8, last occurrence wins).
        self._disarm()
        self._request.body = data
        self.request_callback(self._request)

    def _reject(self, error: _Reject) -> None:
        """Answer at the connection level with the usual `{"error": reason}` reply, then close."""
        if self._rejected:
            return
        self._rejected = True
        self._disarm()
        cyclone.httpserver.log.msg(f"Rejected HTTP request from {self._remote_ip}: "
                                   f"{error.status} {error.reason}")
        if self._request is None or not getattr(self._request, "_reply_started", False):
            body = ('{"error": "%s"}' % error.reason).encode("ascii")
            phrase = _PHRASES.get(error.status, "Error")
            self.transport.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (error.status, phrase.encode(), len(body), body))
        self.transport.loseConnection()

    def _finish_request(self):
        if not self._discarding:
            super()._finish_request()
            if self.connected and not self._rejected:
                self._arm(self.head_timeout)  # keep-alive: the next head, or idle close
            return
        # The refused body may still be arriving: close our side only, so the client reads
        # the 413 instead of a reset, and cut the connection a little later.
        if self._finish_callback:
            self._finish_callback.callback(None)
            self._finish_callback = None
        self._request = None
        self._request_finished = False
        transport = self.transport
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
            self.clock.callLater(DISCARD_GRACE, transport.loseConnection)
        else:
            transport.loseConnection()
