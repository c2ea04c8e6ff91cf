"""Flow control of live streams: the buffers and socket options of a stream connection, and
the watch that cuts a peer which stopped reading what was sent to it (or vanished)."""
from __future__ import annotations

import fcntl
import socket
import struct
import termios
from typing import Any, Callable

from twisted.internet.abstract import FileDescriptor

STREAM_BUFFER = 256 * 1024  # unsent bytes past which a stream's producer is paused
NOTSENT_LOWAT = 64 * 1024  # unsent bytes a stream's kernel queue may hold


def _tcp_of(transport):
    """The TCP (or Unix) transport itself, under the TLS layer if there is one."""
    for _ in range(4):
        if isinstance(transport, FileDescriptor):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def unsent_bytes(transport) -> int:
    """Bytes written to a TCP transport but not yet sent (Twisted keeps them in two buffers)."""
    transport = getattr(transport, "transport", transport) if not hasattr(
        transport, "dataBuffer") else transport
    buffered = len(getattr(transport, "dataBuffer", b"")) - getattr(transport, "offset", 0)
    return buffered + getattr(transport, "_tempDataLen", 0)


def unacked_bytes(transport) -> int:
    """Bytes written to a transport that its peer has not acknowledged yet: what Twisted
    still holds plus the kernel's send queue (Linux; elsewhere only Twisted's part)."""
    queued = 0
    tcp = _tcp_of(transport)
    if tcp is not None and hasattr(termios, "TIOCOUTQ"):
        try:
            queued = struct.unpack("i", fcntl.ioctl(tcp.socket.fileno(), termios.TIOCOUTQ,
                                                    b"\0\0\0\0"))[0]
        except (OSError, AttributeError):
            pass
    return unsent_bytes(transport) + queued


def tune_stream(transport, seconds: float) -> None:
    """Buffers and socket options for a live stream (where the system lacks an option, its
    default stays):

    * Twisted pauses the stream's producer past STREAM_BUFFER bytes unsent (not 64 KiB: a
      whole batch fits), and the kernel queues at most NOTSENT_LOWAT bytes not yet sent, so
      that a backlog shows there instead of in megabytes of autotuned kernel buffer that a
      consumer who stopped reading would take down with it;
    * TCP keepalive probes once the connection has been idle for `seconds`, and the
      connection dropped when what was sent (probes included) stays unacknowledged for three
      times as long: the kernel ends a peer that vanished, even with nothing to send (the
      StallWatch, which logs, normally acts first on a peer that stopped reading).
    """
    tcp = _tcp_of(transport)
    if tcp is None:
        return
    tcp.bufferSize = STREAM_BUFFER
    sock = getattr(tcp, "socket", None)
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
    """Calls `on_stall()` when the peer of `transport` has acknowledged nothing of what was
    written to it for `timeout` seconds while some of it is still outstanding: it stopped
    reading, or vanished. A peer that reads slowly is left alone; checks run only while
    output is outstanding (one timer per stream at most)."""

    def __init__(self, transport, clock: Any, timeout: float, on_stall: Callable[[], None]):
        self.transport, self.clock, self.timeout = transport, clock, timeout
        self.on_stall = on_stall
        self.written = 0  # bytes written through `wrote`
        self._mark = 0  # how many of them were acknowledged when the timer was set
        self._timer = None

    def _acked(self) -> int:
        # An underestimate when other bytes (WebSocket echoes) share the connection, so
        # never a false sign of progress.
        return self.written - unacked_bytes(self.transport)

    def wrote(self, size: int) -> None:
        self.written += size
        if self._timer is None:
            self._mark = self._acked()
            self._timer = self.clock.callLater(self.timeout, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if not self.transport.connected or not unacked_bytes(self.transport):
            return  # gone, or everything arrived: the next write sets the timer again
        if self._acked() > self._mark:
            self.wrote(0)  # slow, but reading: look again later
            return
        self.on_stall()
