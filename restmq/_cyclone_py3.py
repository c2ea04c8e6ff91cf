"""The few fixes cyclone 1.3 needs on Python 3, and the request-body limits it lacks.

See ../shared/spec/STACK.md §2: cyclone's leftovers of Python 2 break at str/bytes boundaries.
"""
from __future__ import annotations

import io

import cyclone.httpserver
import cyclone.web
from cyclone import httputil
from twisted.internet import defer, reactor
from twisted.python import failure

# How long a connection whose request body was refused may keep sending before it is cut.
DISCARD_GRACE = 5.0


class _BadRequest(Exception):
    pass


class HTTPConnection(cyclone.httpserver.HTTPConnection):
    """cyclone's HTTP/1.x connection with a request-body limit and chunked request bodies.

    A body whose declared length exceeds `max_body` is never read: the request is dispatched
    at once with `request.body_too_large` set, so routing and the method check still come first
    (PROTOCOL.md §1.5), and the connection is closed after the reply. The request line and
    headers are decoded as Latin-1 so that no byte can make the parser raise; handlers decode
    paths and arguments as UTF-8 themselves.
    """

    def connectionMade(self):
        super().connectionMade()
        self.max_body = self.factory.settings.get("max_body", 1024 * 1024)
        self._chunked = None  # bytearray of undecoded chunked input while reading such a body
        self._discarding = False

    def rawDataReceived(self, data):
        if self._discarding:
            return
        if self._chunked is not None:
            self._chunked.extend(data)
            return self._decode_chunks()
        return super().rawDataReceived(data)

    def _on_headers(self, data):
        try:
            self._parse_headers(data)
        except _BadRequest as e:
            # Not HTTP we can answer: close, as cyclone does.
            self._drop(str(e))
            return

    def _parse_headers(self, data):
        eol = data.find(b"\r\n")
        start_line = data[:eol] if eol >= 0 else data
        parts = start_line.split(b" ")
        if len(parts) != 3 or parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
            raise _BadRequest("malformed request line")
        method, uri, version = (p.decode("latin-1") for p in parts)
        headers = httputil.HTTPHeaders.parse(data[eol:].decode("latin-1") if eol >= 0 else "")
        self._request = cyclone.httpserver.HTTPRequest(
            connection=self, method=method, uri=uri, version=version,
            headers=headers, remote_ip=self._remote_ip)
        self._request.body_too_large = False

        encoding = headers.get("Transfer-Encoding", "").strip().lower()
        length_text = headers.get("Content-Length", "").strip()
        if encoding and encoding != "identity":
            if encoding != "chunked":
                raise _BadRequest("unsupported Transfer-Encoding")
            self._expect_continue()
            self._chunked = bytearray()
            self._contentbuffer = io.BytesIO()
            self._chunk_left = None
            self.setRawMode()
            return
        if length_text:
            if not length_text.isdigit():
                raise _BadRequest("malformed Content-Length")
            length = int(length_text)
            if length > self.max_body:
                return self._refuse_body()
            if length:
                self._expect_continue()
                self._contentbuffer = io.BytesIO()
                self.content_length = length
                self.setRawMode()
                return
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
                        return self._drop("chunk size line too long")
                    return
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[:end + 2]
                try:
                    size = int(size_text, 16)
                except ValueError:
                    return self._drop("malformed chunk size")
                if size == 0:
                    self._chunked = None
                    self._skip_trailers(bytes(buf))
                    return
                if self._contentbuffer.tell() + size > self.max_body:
                    self._chunked = None
                    return self._refuse_body()
                self._chunk_left = size
            else:
                if len(buf) < self._chunk_left + 2:
                    return
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
            return self._drop("incomplete chunked trailer")
        body = self._contentbuffer.getvalue()
        self._contentbuffer = None
        self._request.headers["Content-Length"] = str(len(body))
        self.setLineMode(rest[2:])
        self._on_request_body(body)

    def _drop(self, why):
        cyclone.httpserver.log.msg(f"Malformed HTTP request from {self._remote_ip}: {why}")
        self.transport.loseConnection()

    def _on_request_body(self, data):
        # Arguments are parsed by the handlers (strict UTF-8, last occurrence wins).
        self._request.body = data
        self.request_callback(self._request)

    def _finish_request(self):
        if not self._discarding:
            return super()._finish_request()
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
            reactor.callLater(DISCARD_GRACE, transport.loseConnection)
        else:
            transport.loseConnection()


class Application(cyclone.web.Application):
    """A cyclone Application speaking through our HTTPConnection."""

    protocol = HTTPConnection


class ChunkedTransferEncoding(cyclone.web.ChunkedTransferEncoding):
    """cyclone's chunked transform builds str on Python 3; this one builds bytes."""

    def transform_chunk(self, block, finishing):
        if self._chunking:
            if block:
                block = b"%x\r\n" % len(block) + block + b"\r\n"
            if finishing:
                block += b"0\r\n\r\n"
        return block


class CoroutineHandlerMixin:
    """Lets handler methods be `async def`: cyclone 1.3 would never await the coroutine."""

    def _deferred_handler(self, function, *args, **kwargs):
        try:
            result = function(*args, **kwargs)
        except Exception:
            return defer.fail(failure.Failure())
        if isinstance(result, defer.Deferred):
            return result
        if hasattr(result, "__await__"):
            return defer.ensureDeferred(result)
        return defer.succeed(result)
