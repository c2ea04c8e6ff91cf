"""The live consumers' routes: comet `/c/<q>`, Server-Sent Events `/sse/<q>` and WebSocket
`/ws/<q>`, their stream bytes, and the one close path they share; delivery feeds them.
"""
from __future__ import annotations

from twisted.internet import task

from restmq.delivery import streams
from restmq.errors import BadRequest, RestMQError
from restmq.http import websocket
from restmq.http.base import PATH, BaseHandler

MAX_UNSENT = 16 * 1024 * 1024  # a live consumer further behind than this is disconnected
SSE_KEEPALIVE = 15.0


class LiveHandler(BaseHandler):
    """Shared by the comet, WebSocket and SSE consumers: checks before the stream starts
    (name, ACL, Redis), registration with delivery, and one idempotent close path.

    A live stream takes its connection over (`HTTPConnection.begin_stream`) and writes through
    the connection's Outbox, whose pauses tell this handler when the output backs up: a
    paused consumer gets no roundrobin message. Its StallWatch cuts it when the peer stops
    reading, and it is cut when more than MAX_UNSENT bytes wait for the peer."""

    methods = ("GET",)
    queue_from = {"GET": PATH}
    queue: str | None = None
    done = False
    paused = False
    outbox: streams.Outbox | None = None
    stall: streams.StallWatch | None = None

    def check_get(self):
        self.jsonp = self.callback()

    async def start_live(self) -> str | None:
        """Check Redis; returns the queue name, or None when the client left meanwhile. The
        caller starts its stream and then calls `join`."""
        name = self.target
        await self.ctx.core.ping()
        if self.done or not _open(self.request.connection.transport):
            # Gone while we waited for Redis: registering it would hand messages to nobody,
            # and there is nobody to answer either.
            self.done = True
            self._auto_finish = False
            return None
        return name

    @property
    def clock(self):
        """The process's clock (an IReactorTime), from the Application's settings."""
        return self.settings.get("clock") or self.ctx.delivery.clock

    @property
    def ready(self) -> bool:
        return not self.done and not self.paused

    def join(self, name: str) -> None:
        self._auto_finish = False
        self.queue = name
        connection = self.request.connection
        self.outbox = connection.begin_stream(self)
        delivery = self.ctx.delivery
        streams.tune_stream(connection.transport, delivery.stall_timeout)
        self.stall = streams.StallWatch(self.outbox, self.clock, delivery.stall_timeout,
                                        self._stalled)
        delivery.register(name, self)

    def leave(self) -> None:
        """The one close path: on close, purge, error or cut; safe to call again."""
        self.done = True
        if self.queue is not None:
            self.ctx.delivery.unregister(self.queue, self)
        if self.outbox is not None:
            self.outbox = None
            self.request.connection.end_stream()

    def on_connection_close(self, reason: str | None = None):
        if reason and "timed out" in reason and not self.done:
            self.log.warn("live consumer of {queue} lost: {reason}", queue=self.queue,
                          reason=reason)  # the kernel gave up on its peer
        self.leave()
        if self.stall is not None and (reason or not _open(self.request.connection.transport)):
            self.stall.stop()

    def cut(self, why: str) -> None:
        self.log.warn("live consumer of {queue} {why}: disconnected", queue=self.queue, why=why)
        if self.outbox is not None:
            self.outbox.discard()  # nobody will read it
        self.leave()
        if self.stall is not None:
            self.stall.stop()
        self.request.connection.transport.abortConnection()

    def unsent(self) -> int:
        outbox = self.outbox
        return outbox.outstanding() if outbox is not None and outbox.transport.connected else 0

    def too_far_behind(self) -> bool:
        if self.outbox is not None and self.outbox.held > MAX_UNSENT:
            self.cut("is more than 16 MiB behind")
            return True
        return False

    # -- told by the Outbox when the connection's output backs up ---------------------------

    def output_paused(self) -> None:
        self.paused = True

    def output_resumed(self) -> None:
        self.paused = False
        if not self.done:
            self.ctx.delivery.trigger(self.queue)

    def _stalled(self) -> None:
        self.cut(f"read nothing for {self.ctx.delivery.stall_timeout:g} s")

    # -- writing ----------------------------------------------------------------------------

    def start_stream(self, content_type: str) -> None:
        """Send the status line and headers now (chunked on HTTP/1.1)."""
        self.set_header("Content-Type", content_type)
        if not self.request.supports_http_1_1():
            # The body ends with the connection: keep-alive would leave the client waiting.
            self.clear_header("Connection")
            self.request.connection.no_keep_alive = True
        self.flush()
        self._chunked = self._headers.get("Transfer-Encoding") == "chunked"

    def write_raw(self, data: bytes) -> None:
        if self.outbox is None:
            return  # the stream is over
        self.outbox.write(data)
        self.stall.wrote(len(data))

    def write_stream(self, pieces: list[bytes]) -> bool:
        """Write pieces straight to the Outbox, each in a chunk of its own (one message, one
        chunk), all in one write: cyclone's write/flush per message costs more than the rest
        of a delivery. False when nothing was written (gone, or cut just now)."""
        if self.done or self.too_far_behind():
            return False
        if self._chunked:
            pieces = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces]
        self.write_raw(b"".join(pieces))
        return True


def _open(transport) -> bool:
    return bool(transport.connected) and not getattr(transport, "disconnecting", False)


class CometHandler(LiveHandler):
    """`GET /c/<q>`: one line per message on a never-ending response
    (docs/live-delivery.md#comet)."""

    kind = "comet"  # restmq_live_consumers

    sections = {"GET": "comet:consumer"}
    prefix = "/c/"
    jsonp_methods = ("GET",)

    async def get(self):
        name = await self.start_live()
        if name is None:
            return
        self.start_stream("text/plain")
        self.join(name)

    def _line(self, body: str) -> bytes:
        line = f"{self.jsonp}({body});\r\n" if self.jsonp else body + "\r\n"
        return line.encode("ascii")

    def send(self, batch: list[tuple[str, str]]) -> bool:
        return self.write_stream([self._line(text) for _, text in batch])

    def end(self) -> None:
        if not self.done:
            self.write_stream([self._line("null")])
            self.done = True
            self.finish()


class SSEHandler(LiveHandler):
    """`GET /sse/<q>`: Server-Sent Events, one event per message, a keepalive every 15 s."""

    kind = "sse"  # restmq_live_consumers

    sections = {"GET": "sse:consumer"}
    prefix = "/sse/"
    keepalive = None

    async def get(self):
        name = await self.start_live()
        if name is None:
            return
        self.start_stream("text/event-stream")
        self.join(name)
        self.keepalive = task.LoopingCall(self.write_stream, [b": keepalive\n\n"])
        self.keepalive.clock = self.clock
        self.keepalive.start(self.settings.get("sse_keepalive", SSE_KEEPALIVE), now=False)

    def send(self, batch: list[tuple[str, str]]) -> bool:
        return self.write_stream([f"id: {key}\ndata: {text}\n\n".encode("utf-8")
                                  for key, text in batch])

    def end(self) -> None:
        if not self.done:
            self.write_stream([b"data: null\n\n"])
            self.done = True
            self.finish()

    def leave(self) -> None:
        if self.keepalive is not None and self.keepalive.running:
            self.keepalive.stop()
        super().leave()


class WebSocketHandler(LiveHandler):
    """`GET /ws/<q>`: RFC 6455 on wsproto; messages out as text frames, client messages
    echoed, a ping every 30 s (docs/live-delivery.md#websocket)."""

    kind = "websocket"  # restmq_live_consumers

    sections = {"GET": "websocket:consumer"}
    prefix = "/ws/"
    ws = None

    def check_get(self):
        headers = self.request.headers
        if "Upgrade" in headers:
            # Whatever the outcome, the bytes after this request are not HTTP: a refused
            # handshake ends the connection with its reply.
            self.request.connection.no_keep_alive = True
        if "websocket" not in _tokens(headers.get("Upgrade", "")):
            raise RestMQError.with_status(403, "expected WebSocket headers")
        if headers.get("Sec-WebSocket-Version", "").strip() != "13":
            raise RestMQError.with_status(426, "unsupported WebSocket version",
                                          Sec_WebSocket_Version="13")
        self.handshake_key = headers.get("Sec-WebSocket-Key", "").strip()
        if "upgrade" not in _tokens(headers.get("Connection", "")) or \
                not websocket.websocket_key_valid(self.handshake_key):
            raise BadRequest("invalid WebSocket handshake")
        try:
            self.handshake = websocket.accept(self.request.host, self.handshake_key,
                                              self.request.uri)
        except websocket.HandshakeRefused:
            raise BadRequest("invalid WebSocket handshake") from None
        super().check_get()

    async def get(self):
        key = self.handshake_key
        name = await self.start_live()
        if name is None:
            return
        connection = self.request.connection
        connection.write(websocket.accept_reply(key))
        self._headers_written = True
        self.ws = websocket.WebSocketConnection(
            self.handshake, self.write_raw, connection.transport.loseConnection,
            self.application.settings.get("max_body", 1024 * 1024),
            on_message=self._echo, on_close=self.leave, clock=self.clock)
        pending = connection.take_input(self.ws.data_received)
        self.join(name)
        self.ws.start_pings(self.settings.get("ws_ping_interval", websocket.PING_INTERVAL),
                            self.ctx.delivery.stall_timeout, self._no_pong)
        if pending:
            self.ws.data_received(pending)

    def _echo(self, opcode: int, payload) -> None:
        self.ws.send(opcode, payload)

    def _no_pong(self) -> None:
        self.cut(f"answered no ping for {self.ctx.delivery.stall_timeout:g} s")

    def output_paused(self) -> None:
        # Stop reading too: echoes of what a peer sends but never reads would pile up here.
        self.request.connection.pause_reading()
        super().output_paused()

    def output_resumed(self) -> None:
        self.request.connection.resume_reading()
        super().output_resumed()

    def send(self, batch: list[tuple[str, str]]) -> bool:
        if self.done or self.ws.closing or self.too_far_behind():
            return False
        self.write_raw(self.ws.frames(text for _, text in batch))
        return True

    def end(self) -> None:
        if not self.done and not self.ws.closing:
            self.write_raw(self.ws.frames(["null"]))
            self.ws.close(websocket.CLOSE_NORMAL)
        self.done = True

    def leave(self) -> None:
        if self.ws is not None:
            self.ws.abandon()  # nothing more goes out through a stream that is over
        super().leave()


def _tokens(header: str) -> set[str]:
    return {token.strip().lower() for token in header.split(",")}
