"""The sending side of an HTTP connection (a mixin of restmq.http.connection.HTTPConnection):
flow control between Twisted's buffer and our reading, learning that a watched reply was
handed to the kernel, and handing the connection over to a live stream or an upgraded
protocol. It uses the connection's own state, set up in HTTPConnection.connectionMade.
"""
from __future__ import annotations

from twisted.internet import defer
from twisted.python import log

from restmq.delivery.streams import Outbox, tcp_of


class OutputMixin:
    """Flow control, watched replies and streams of an HTTPConnection."""

    # -- flow control ---------------------------------------------------------------------

    def pauseProducing(self) -> None:
        """Twisted holds too much of our replies unsent: read no further request."""
        self._paused_since_watch = True
        self._restore_buffer_size()  # the pause a watch waits for: its resume is the news
        self._pause_reading("output")

    def resumeProducing(self) -> None:
        self._resume_reading("output")
        # A resume for a pause older than the watches says nothing of the bytes they watch
        # (TLS may still hold those back for a moment).
        if self._sent_watches and self._paused_since_watch:
            self._sent(True)

    def stopProducing(self) -> None:
        self._producing = False  # the transport is gone and forgets us itself

    def _leave_transport(self) -> None:
        # A producer left registered would keep a closing connection open.
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()

    def _pause_reading(self, why: str) -> None:
        if not self._read_pauses:
            self.transport.pauseProducing()
        self._read_pauses.add(why)

    def _resume_reading(self, why: str) -> None:
        if why in self._read_pauses:
            self._read_pauses.discard(why)
            if not self._read_pauses and self.connected and not self._closing:
                self.transport.resumeProducing()

    def pause_reading(self) -> None:
        """A stream's own reason to stop reading (a WebSocket peer that does not read)."""
        self._pause_reading("stream")

    def resume_reading(self) -> None:
        self._resume_reading("stream")

    # -- knowing that a reply went out ---------------------------------------------------

    def watch_sent(self) -> defer.Deferred:
        """Call right before writing a reply whose fate matters (a pop, which acks what it
        wrote): fires with True once every byte written on this connection up to the end of
        that reply has been handed to the kernel, with False when the connection is lost
        first.

        Twisted pauses the connection (a streaming producer of its transport) when more than
        the transport's `bufferSize` bytes wait unsent, and resumes it once all of them went
        out. With the TCP transport's `bufferSize` at 1 until that pause, the reply's first
        write (or, under TLS, the TLS layer's write of it) pauses the connection, so the
        resume that follows is the news. Not 0: Twisted also reads at most `bufferSize` bytes
        at a time, and a read of 0 bytes looks to it like the peer closing, which would end
        the connection with the reply unsent whenever a request arrived meanwhile (pipelined,
        or readable in the same reactor turn as the Redis reply this reply carries). A
        transport without a socket (a test's) takes what it is given at once: the reply
        counts as sent when it is finished."""
        d = defer.Deferred()
        if self._closing or not self.connected:
            d.callback(False)
            return d
        tcp = tcp_of(self.transport)
        if tcp is None or not self._producing:
            self._sent_at_finish.append(d)
            return d
        if self._buffer_size is None:
            self._buffer_size = tcp.bufferSize
            tcp.bufferSize = 1
        self._paused_since_watch = False
        self._sent_watches.append(d)
        return d

    def _restore_buffer_size(self) -> None:
        tcp = tcp_of(self.transport)
        if self._buffer_size is not None and tcp is not None:
            tcp.bufferSize = self._buffer_size
        self._buffer_size = None

    def _sent(self, delivered: bool) -> None:
        self._restore_buffer_size()
        self._fire(self._sent_watches, delivered)
        if self._closing and delivered:
            self._leave_transport()  # the close `_close` held back can complete

    @staticmethod
    def _fire(watches: list[defer.Deferred], delivered: bool) -> None:
        fired = list(watches)
        watches.clear()
        for d in fired:
            d.callback(delivered)

    # -- streams --------------------------------------------------------------------------

    def begin_stream(self, listener):
        """The current request becomes a live stream writing through an Outbox, which tells
        `listener` when the output backs up (`output_paused`/`output_resumed`). Whatever was
        pipelined behind it is dropped, and so is what arrives while it runs."""
        self._end_pipeline()
        if self._input == self._feed or self._input == self._hold:
            self._input, self._parsing = self._during_stream, False
        self._leave_transport()
        self._resume_reading("output")
        self.outbox = Outbox(self.transport, listener)
        return self.outbox

    def end_stream(self) -> None:
        """The stream is over: its held output goes out, the producer leaves the transport,
        and the connection may serve another request if nothing was sent behind the stream."""
        if self.outbox is not None:
            self.outbox.release()
            self.outbox = None
            if self.connected and not self._closing:
                self._producing = True
                self.transport.registerProducer(self, True)
        if self._input == self._during_stream and not self.stream_broken:
            self._input, self._parsing = self._feed, True

    def take_input(self, receiver) -> bytes:
        """From now on every received byte goes to `receiver` (an upgraded protocol);
        returns those that arrived with the request."""
        held = bytes(self._held or b"")
        self._held = None
        self._end_pipeline()
        self._input, self._parsing = receiver, False
        self._resume_reading("upgrade")
        return held

    def _end_pipeline(self) -> None:
        waiting = len(self._queue) + (self._reader.message is not None)
        if waiting or self._held:
            self.stream_broken = True
        if waiting:
            log.msg(f"{waiting} request(s) pipelined behind a live stream left unanswered "
                    f"({self._remote_ip})")
        self._queue.clear()
        self._reader.done_bytes = 0
        self._reader.message = None
        self._held = None
        self._resume_reading("read-ahead")
        self._resume_reading("upgrade")
