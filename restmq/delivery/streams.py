"""Flow control of live streams: the writer of a stream connection (`Outbox`), its buffers and
socket options, and the watch that cuts a peer which stopped reading (or vanished).

Only public interfaces are used: the transport's producer registration (IConsumer), its
`getHandle()` socket and `bufferSize`, and the kernel's own counters (`TIOCOUTQ`, `TCP_INFO`).

Private members of cyclone, Twisted or txredisapi used here: none.
"""
from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections import deque
from typing import Any, Callable

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

STREAM_BUFFER = 256 * 1024  # unsent bytes past which Twisted pauses a stream's Outbox
NOTSENT_LOWAT = 64 * 1024  # unsent bytes a stream's kernel queue may hold
_TCP_INFO_ACKED = struct.Struct("=Q")  # tcpi_bytes_acked, at offset 120 of struct tcp_info
_ACKED_OFFSET = 120


def tcp_of(transport):
    """The TCP (or Unix) transport itself, under the TLS layer if there is one."""
    for _ in range(4):
        if isinstance(transport, FileDescriptor):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def _socket_of(tcp):
    handle = tcp.getHandle() if tcp is not None else None
    return handle if isinstance(handle, socket.socket) else None


def kernel_queued(sock) -> int:
    """Bytes in the kernel's send queue not yet acknowledged by the peer (Linux; else 0)."""
    if sock is None or not hasattr(termios, "TIOCOUTQ"):
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0


def kernel_acked(sock) -> int | None:
    """How many bytes the peer has acknowledged on this TCP socket (Linux's TCP_INFO); None
    where the system cannot tell (a Unix socket, another system)."""
    if sock is None or not hasattr(socket, "TCP_INFO") or \
            sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, ValueError):
        return None
    if len(info) < _ACKED_OFFSET + 8:
        return None
    return _TCP_INFO_ACKED.unpack_from(info, _ACKED_OFFSET)[0]


@implementer(IPushProducer)
class Outbox:
    """The writer of one live stream, registered with its transport as a streaming producer:
    Twisted pauses it when more than the transport's `bufferSize` is waiting to be sent and
    resumes it once all of that went to the kernel. While paused, writes wait here, counted
    exactly (`held`), so how far a consumer is behind is our own byte count, never a reading
    of Twisted's buffers. `listener.output_paused()` and `output_resumed()` are told."""

    def __init__(self, transport, listener):
        self.transport, self.listener = transport, listener
        self.paused = False
        self.pending: deque[bytes] = deque()
        self.held = 0  # bytes written here and not yet handed to the transport
        self.written = 0  # bytes written here in all
        self._sock = _socket_of(tcp_of(transport))
        self._registered = True
        transport.registerProducer(self, True)

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.paused or self.pending:
            self.pending.append(data)
            self.held += len(data)
        else:
            self.transport.write(data)  # may pause us at once

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.listener.output_paused()

    def resumeProducing(self) -> None:
        self.paused = False
        while self.pending and not self.paused:
            data = self.pending.popleft()
            self.held -= len(data)
            self.transport.write(data)
        if not self.paused:
            self.listener.output_resumed()

    def stopProducing(self) -> None:
        self._registered = False  # the transport is gone and forgets us itself
        self.pending.clear()
        self.held = 0

    def discard(self) -> None:
        """Drop what is held (the connection is being cut)."""
        self.pending.clear()
        self.held = 0

    def release(self) -> None:
        """The stream is over: what is held goes to the transport, and we leave it (a
        producer left registered would keep a closing connection open)."""
        while self.pending:
            self.transport.write(self.pending.popleft())
        self.held = 0
        if self._registered:
            self._registered = False
            self.transport.unregisterProducer()

    def outstanding(self) -> int:
        """Bytes written that the peer has not acknowledged yet, at least: ours, the kernel's,
        and one for Twisted's while it keeps us paused."""
        return self.held + kernel_queued(self._sock) + (1 if self.paused else 0)

    def acked(self) -> int:
        """A counter that grows as the peer acknowledges what it was sent: the kernel's count,
        else (a Unix socket) what left our hands and the kernel's queue."""
        acked = kernel_acked(self._sock)
        if acked is not None:
            return acked
        return self.written - self.held - kernel_queued(self._sock)


def tune_stream(transport, seconds: float) -> None:
    """Buffers and socket options for a live stream (where the system lacks an option, its
    default stays):

    * Twisted pauses the stream's Outbox past STREAM_BUFFER bytes unsent (not 64 KiB: a
      whole batch fits), and the kernel queues at most NOTSENT_LOWAT bytes not yet sent, so
      that a backlog shows in our count instead of in megabytes of autotuned kernel buffer
      that a consumer who stopped reading would take down with it;
    * TCP keepalive probes once the connection has been idle for `seconds`, and the
      connection dropped when what was sent (probes included) stays unacknowledged for three
      times as long: the kernel ends a peer that vanished, even with nothing to send (the
      StallWatch, which logs, normally acts first on a peer that stopped reading).
    """
    tcp = tcp_of(transport)
    if tcp is None:
        return
    tcp.bufferSize = STREAM_BUFFER
    sock = _socket_of(tcp)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    idle = max(1, int(seconds))
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_NOTSENT_LOWAT", NOTSENT_LOWAT), ("TCP_KEEPIDLE", idle),
                        ("TCP_KEEPINTVL", max(1, idle // 3)), ("TCP_KEEPCNT", 9),
                        ("TCP_USER_TIMEOUT", 3 * idle * 1000)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            pass


class StallWatch:
    """Calls `on_stall()` when the peer of a stream has acknowledged nothing of what was
    written to it for `timeout` seconds while some of it is still outstanding: it stopped
    reading, or vanished. A peer that reads slowly is left alone; checks run only while
    output is outstanding (one timer per stream at most). `outbox` is the stream's Outbox
    (anything with `acked()`, `outstanding()` and a `transport`)."""

    def __init__(self, outbox, clock: Any, timeout: float, on_stall: Callable[[], None]):
        self.outbox, self.clock, self.timeout = outbox, clock, timeout
        self.on_stall = on_stall
        self._mark = 0  # the acknowledged count when the timer was set
        self._timer = None

    def wrote(self, size: int) -> None:
        if self._timer is None:
            self._mark = self.outbox.acked()
            self._timer = self.clock.callLater(self.timeout, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if not self.outbox.transport.connected or not self.outbox.outstanding():
            return  # gone, or everything arrived: the next write sets the timer again
        if self.outbox.acked() > self._mark:
            self.wrote(0)  # slow, but reading: look again later
            return
        self.on_stall()
