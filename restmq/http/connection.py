"""The HTTP/1.x connection: requests read by httptools (the llhttp parser, in C) and served one
after another through cyclone's Application and RequestHandler API.

Reading. llhttp does the framing (request line, headers, Content-Length or chunked bodies) and
does it strictly: no `lenient_*` flag is ever turned on, so obs-fold, a bare LF, a chunk size
such as `0x7`, `0_7` or `-7`, two Content-Lengths or one beside Transfer-Encoding are errors.
Its callbacks (`Reader`) only record what they are given, and check our own limits (sizes,
header count, versions, transfer codings); nothing of cyclone's runs inside them, because an
exception there would leave the parser failing every later call. When the connection is going
to close anyway, a callback halts the parser for good by raising `Stop`.

Serving. Complete requests wait in a queue and go to the Application one at a time: the next
only once the reply to the previous one is finished, so that replies keep request order
(pipelining). The read-ahead is bounded: with READ_AHEAD_REQUESTS requests or READ_AHEAD_BYTES
waiting, the transport stops reading until the queue drains. An error the parser finds is
answered in its turn, after the replies to the requests before it; then the connection closes,
and nothing behind it is run.

Streams. A live stream (comet, SSE, WebSocket) takes the connection over (`begin_stream`): what
was pipelined behind it is never answered, and bytes that arrive while it runs are read and
dropped (so that a client who leaves is noticed), after which the connection closes when the
stream ends. A WebSocket takes the raw input instead (`take_input`). Bytes that follow a
request asking to switch protocols (`Connection: upgrade`) belong to that protocol or to nobody:
at most UPGRADE_HOLD of them are kept until the handler decides, reading pauses past that, and
a refused upgrade closes the connection.

Watched replies. A reply whose messages are settled by what becomes of it (a pop acks them, a
claim releases them when they could not go out) asks `watch_sent` to learn when all of it has
been handed to the kernel, or that the connection was lost first.

Private members of cyclone, Twisted or txredisapi used here: none. (`Request` subclasses
cyclone's HTTPRequest and sets every attribute itself; cyclone's RequestHandler reaches this
class through `write`, `finish`, `notifyFinish`, `no_keep_alive` and `transport`.)
"""
from __future__ import annotations

import time

import httptools
from cyclone import httputil
from cyclone.escape import parse_qs_bytes
from cyclone.httpserver import HTTPRequest
from twisted.internet import address, defer, protocol
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.python import log
from zope.interface import implementer

from restmq.clock import reactor_clock
from restmq.http.output import OutputMixin
from restmq.http.reading import (
    BODY_IDLE_MAX, BODY_TIMEOUT, DISCARD_GRACE, HEAD_RAW_MAX, HEAD_TIMEOUT, KNOWN_METHODS,
    Message, PARSE_ERRORS, PHRASES, READ_AHEAD_BYTES, READ_AHEAD_REQUESTS, REQUEST_LINE, Reader,
    Reject, Stop, UPGRADE_HOLD)


class Request(HTTPRequest):
    """cyclone's HTTPRequest, built from what the parser split already: the same attributes,
    without parsing the query into `arguments` unless someone asks (RestMQ's handlers parse
    their own), and with what does not change on a connection (scheme, peer) worked out once
    per connection."""

    def __init__(self, connection, method: str, uri: str, version: str, headers, body: bytes,
                 remote_ip: str, protocol: str):
        self.method, self.uri, self.version = method, uri, version
        self.headers, self.body = headers, body
        self.remote_ip, self.protocol = remote_ip, protocol
        self.host = headers.get("Host") or "127.0.0.1"
        self.files: dict = {}
        self.connection = connection
        self.started, self.finished_at = time.time(), None
        self.path, _, self.query = uri.partition("?")

    @property
    def arguments(self) -> dict:
        if "_args" not in self.__dict__:
            self.__dict__["_args"] = parse_qs_bytes(self.query, keep_blank_values=True)
        return self.__dict__["_args"]

    def finish(self) -> None:
        self.connection.finish()
        self.finished_at = time.time()

    def request_time(self) -> float:
        return (self.finished_at or time.time()) - self.started


@implementer(IPushProducer)
class HTTPConnection(OutputMixin, protocol.Protocol):
    """One HTTP/1.x connection of an Application (the factory, whose settings may give
    `max_body`, `clock` (an IReactorTime), `head_timeout` and `body_timeout`).

    * A body whose declared length exceeds `max_body` is never read: the request is
      dispatched at once with `request.body_too_large` set, so routing and the method check
      still come first (docs/http-api.md#processing-order); after the reply our sending side
      closes and the connection is cut DISCARD_GRACE later.
    * Slow clients: the head must arrive within `head_timeout` of the connection or of the
      previous reply (also the keep-alive idle timeout), the body within `body_timeout` of the
      head; then 408 and close. Only time spent waiting for the client counts.
    * Requests keep their order; see the module docstring for pipelining and streams.
    * The connection is the streaming producer of its own replies: while Twisted holds more
      of them unsent than the transport's bufferSize, it reads no further request, so that a
      client who pipelines without reading cannot make us buffer replies without end.
    """

    outbox = None  # a live stream's writer (restmq.delivery.streams.Outbox) while it runs

    def connectionMade(self):
        settings = self.factory.settings
        self.max_body = settings.get("max_body", 1024 * 1024)
        self.clock = settings.get("clock") or reactor_clock()
        self.head_timeout = settings.get("head_timeout", HEAD_TIMEOUT)
        self.body_timeout = settings.get("body_timeout", BODY_TIMEOUT)
        self._reader = Reader(self.max_body)
        self._queue = self._reader.done
        self._input = self._feed  # where received bytes go
        self._parsing = True  # they go to the parser
        self._request: Request | None = None  # the request being served
        self._message: Message | None = None
        self._finish_callback: defer.Deferred | None = None
        self._close_after = False
        self._closing = False
        self._pumping = False
        self._pump_call = None
        self._held: bytearray | None = None  # bytes after an Upgrade request
        self._read_pauses: set[str] = set()
        self._raw_for: Message | None = None  # the message the raw byte count is about
        self._raw_size = 0
        self._raw = 0
        self._deadline: float | None = None
        self._deadline_kind: str | None = None
        self._timer = None
        self._grace = None
        self.stream_broken = False  # bytes arrived behind a live stream: close when it ends
        self._producing = True
        self._sent_watches: list[defer.Deferred] = []  # see watch_sent
        self._sent_at_finish: list[defer.Deferred] = []
        self._buffer_size: int | None = None  # the transport's own, while a watch lowers it
        self._paused_since_watch = False
        self.transport.registerProducer(self, True)
        self._scheme = "https" if ISSLTransport.providedBy(self.transport) else "http"
        peer = self.transport.getPeer()
        self._remote_ip = ("unix:%s" % self.transport.getHost().name
                           if isinstance(peer, address.UNIXAddress) else peer.host)
        self._set_deadline("head")

    # -- what cyclone's request and handler objects use --------------------------------------

    @property
    def no_keep_alive(self) -> bool:
        return self._close_after

    @no_keep_alive.setter
    def no_keep_alive(self, value: bool) -> None:
        # cyclone's RequestHandler writes False on every request: only True counts.
        if value:
            self._close_after = True

    def write(self, chunk: bytes) -> None:
        if self._request is None or not self.connected:
            return  # a handler whose reply is over: its bytes would land in another's
        if self.outbox is not None:
            self.outbox.write(chunk)
        else:
            self.transport.write(chunk)

    def notifyFinish(self) -> defer.Deferred:
        """Fires with None when the current reply is finished, or with a message when the
        connection is lost first."""
        if self._finish_callback is None:
            self._finish_callback = defer.Deferred()
        return self._finish_callback

    def finish(self) -> None:
        message = self._message
        if self._request is None:
            return
        self._request = self._message = None
        callback, self._finish_callback = self._finish_callback, None
        if callback is not None:
            callback.callback(None)
        if self._sent_at_finish:
            self._fire(self._sent_at_finish, self.connected)
        if self._closing or not self.connected:
            return
        if message.too_large:
            return self._close_after_refusal()
        if self._close_after or not message.keep_alive or message.upgrade or \
                self.stream_broken:
            return self._close()
        self._deadline_kind = None  # the next head's time counts from this reply
        if self._queue:  # the next request, or the error that stopped the parser
            if not self._pumping:
                self._pump_call = self.clock.callLater(0, self._pump_later)
        elif not self._parsing:
            self._close()
        elif not self._pumping:
            self._settle()

    # -- reading --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._input(data)

    def _feed(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._input, self._parsing = self._hold, False
            self._hold(data[upgrade.args[0]:])
        except httptools.HttpParserCallbackError as error:
            if not isinstance(error.__context__, Stop):
                return self._stopped(self._callback_bug(error))
            failure = reader.failure  # None: a refused body, already in the queue
            if failure is not None and failure.reason == "malformed request line" and b" HTTP/0.9\r\n" in data:
                failure = Reject(505, "unsupported HTTP version")  # llhttp reads none as 0.9
            self._stopped(failure)
        except httptools.HttpParserError as error:
            self._stopped(self._classify(error, data))
        else:
            if reader.message is not None:
                self._count_raw(len(data))
        self._pump()

    def _count_raw(self, size: int) -> None:
        """Bound what the parser holds for us without a callback: a head that never ends, or
        chunk-size lines and trailers without body bytes."""
        reader = self._reader
        message = reader.message
        if message is not self._raw_for:
            self._raw_for, self._raw, self._raw_size = message, 0, 0
            return  # begun in this read, which is bounded anyway
        if not reader.in_head and message.size != self._raw_size:
            self._raw_size, self._raw = message.size, 0
            return
        self._raw += size
        if reader.in_head and self._raw > HEAD_RAW_MAX:
            self._stopped(Reject(431, "request header fields too large"))
        elif not reader.in_head and self._raw > BODY_IDLE_MAX:
            self._stopped(Reject(400, "malformed chunked body"))

    def _stopped(self, failure: Reject | None) -> None:
        """The parser is done for: answer `failure` in its turn, drop what follows."""
        self._input, self._parsing = self._discard, False
        self._reader.message = None
        if failure is not None:
            self._queue.append(failure)
        self._resume_reading("read-ahead")

    def _callback_bug(self, error) -> Reject:
        log.err(error.__context__ or error, "HTTP parser callback failed")
        return Reject(500, "internal error")

    def _classify(self, error, data: bytes) -> Reject | Message:
        text = str(error)
        if isinstance(error, httptools.HttpParserInvalidMethodError) or \
                "Invalid method" in text:
            return self._unknown_method(data)
        for needle, reject in PARSE_ERRORS:
            if needle in text:
                return reject
        reader = self._reader
        if reader.message is not None and not reader.in_head:
            return Reject(400, "malformed chunked body")
        return Reject(400, "malformed request line")

    def _unknown_method(self, data: bytes) -> Reject | Message:
        """llhttp knows a fixed list of methods; for any other, routing still decides
        between 404 and 405 (docs/http-api.md#processing-order). The failed request line is
        found in this read: the first one whose method llhttp does not know."""
        for match in REQUEST_LINE.finditer(data):
            method, target, version = match.groups()
            if method in KNOWN_METHODS:
                continue
            if version not in (b"1.0", b"1.1"):
                return Reject(505, "unsupported HTTP version")
            message = Message()
            message.method, message.url = method.decode("ascii"), target
            message.version = "HTTP/" + version.decode("ascii")
            return message
        return Reject(400, "malformed request line")

    def _hold(self, data: bytes) -> None:
        if self._held is None:
            self._held = bytearray()
        self._held += data
        if len(self._held) > UPGRADE_HOLD:
            self._pause_reading("upgrade")

    def _discard(self, data: bytes) -> None:
        pass

    def _during_stream(self, data: bytes) -> None:
        if not self.stream_broken:
            log.msg(f"Bytes sent behind a live stream by {self._remote_ip} are dropped; "
                    f"the connection closes when the stream ends")
            self.stream_broken = True

    # -- serving in order -----------------------------------------------------------------

    def _pump_later(self) -> None:
        self._pump_call = None
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._request is None and self._queue and not self._closing:
                item = self._queue.popleft()
                if type(item) is Reject:
                    self._answer(item)
                    return
                self._reader.done_bytes -= item.size
                self._serve(item)
        finally:
            self._pumping = False
        if not self._closing and self.connected:
            self._settle()

    def _serve(self, message: Message) -> None:
        headers = httputil.HTTPHeaders()
        add = headers.add
        for name, value in message.headers:
            add(name.decode("latin-1"), value.decode("latin-1").rstrip(" \t"))
        request = Request(self, message.method, message.url.decode("latin-1"),
                          message.version, headers, b"".join(message.body),
                          self._remote_ip, self._scheme)
        request.body_too_large = message.too_large
        self._request, self._message = request, message
        self._deadline = self._deadline_kind = None  # the server's turn: no client timeout
        try:
            self.factory(request)
        except Exception:
            log.err(None, "Failed to dispatch an HTTP request")
            self._close()

    def _settle(self) -> None:
        """After a feed or a reply: timers, 100 Continue and the read-ahead bound."""
        if self._request is None and not self._queue and self._parsing:
            message = self._reader.message
            if message is not None and message.expect and not message.continued and \
                    not self._reader.in_head:
                # Only for the request at the head of the line, whose body is wanted now.
                message.continued = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            in_body = message is not None and not self._reader.in_head
            self._set_deadline("body" if in_body else "head")
        else:
            self._set_deadline(None)
        if len(self._queue) >= READ_AHEAD_REQUESTS or \
                self._reader.done_bytes > READ_AHEAD_BYTES:
            self._pause_reading("read-ahead")
        elif "read-ahead" in self._read_pauses:
            self._resume_reading("read-ahead")

    def _answer(self, failure: Reject) -> None:
        """The usual `{"error": reason}` reply at the connection level, then close."""
        log.msg(f"Rejected HTTP request from {self._remote_ip}: "
                f"{failure.status} {failure.reason}")
        body = ('{"error": "%s"}' % failure.reason).encode("ascii")
        phrase = PHRASES.get(failure.status, "Error").encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (failure.status, phrase, len(body), body))
        self._close()

    def _close(self) -> None:
        self._closing = True
        self._input, self._parsing = self._discard, False
        self._set_deadline(None)
        if not self._sent_watches:
            # Else the producer stays until the transport resumes it: that is the news the
            # watches wait for (`_sent` leaves then, and the close completes).
            self._leave_transport()
        self.transport.loseConnection()  # TLS hands over what it held back here
        if self._sent_watches and not self._paused_since_watch:
            self._sent(True)  # nothing reached the transport since the watch began

    def _close_after_refusal(self) -> None:
        # The refused body may still be arriving: close our side only, so the client reads
        # the 413 instead of a reset, drop what comes, and cut the connection a little later.
        self._closing = True
        self._input, self._parsing = self._discard, False
        self._set_deadline(None)
        self._leave_transport()
        if self._read_pauses:
            self._read_pauses.clear()
            self.transport.resumeProducing()
        transport = self.transport
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
            self._grace = self.clock.callLater(DISCARD_GRACE, transport.loseConnection)
        else:
            transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self._closing = True
        self._input, self._parsing = self._discard, False
        self._set_deadline(None)
        for call in (self._timer, self._pump_call, self._grace):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._pump_call = self._grace = None
        self._queue.clear()
        callback, self._finish_callback = self._finish_callback, None
        if callback is not None:
            callback.callback(reason.getErrorMessage())
        self._sent(False)
        self._fire(self._sent_at_finish, False)

    # -- timers ---------------------------------------------------------------------------

    def _set_deadline(self, kind: str | None) -> None:
        """Arm the head or body timeout (or none). A timeout of the same kind keeps running:
        the head's time counts from the connection or the previous reply, not the last byte.
        One timer per connection, moved only when it would fire too early."""
        if kind == self._deadline_kind:
            return
        self._deadline_kind = kind
        if kind is None:
            self._deadline = None
            return
        seconds = self.head_timeout if kind == "head" else self.body_timeout
        self._deadline = self.clock.seconds() + seconds
        if self._timer is None:
            self._timer = self.clock.callLater(seconds, self._on_timer)
        elif self._timer.getTime() > self._deadline:
            self._timer.reset(seconds)

    def _on_timer(self) -> None:
        self._timer = None
        if self._deadline is None or self._closing:
            return
        left = self._deadline - self.clock.seconds()
        if left > 0:
            self._timer = self.clock.callLater(left, self._on_timer)
            return
        self._stopped(None)
        self._answer(Reject(408, "request timeout"))
