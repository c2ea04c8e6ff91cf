"""The syslog frontend (docs/frontends.md#syslogd): a TCP receiver whose messages become
messages of the queue `syslogd:<peer ip>`, through the same core.

Framing is decided per message: RFC 6587 octet counting (`<len> <msg>`) or LF-terminated.
Nothing is ever written back. While Redis is unavailable a connection stops reading (TCP
back-pressure) and retries; it never drops a message it has received because of that.
"""
from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable

from twisted.internet import defer, protocol
from twisted.logger import Logger

from restmq.acl import normal_ip
from restmq.clock import reactor_clock, wall_time
from restmq.errors import MessageTooLarge, RedisFailure, RedisUnavailable

SEVERITIES = ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug")
FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
              "authpriv", "ftp", "ntp", "audit", "alert", "at", "local0", "local1", "local2",
              "local3", "local4", "local5", "local6", "local7")
RETRY_DELAY = 1.0
HIGH_WATER = 1000  # messages queued for Redis before the connection stops reading
LOW_WATER = 100


def priority(line: str) -> tuple[str | None, str | None]:
    """(facility, severity) from a leading `<PRI>` of 1-3 digits in 0..191, else (None, None)."""
    if not line.startswith("<"):
        return None, None
    end = line.find(">", 1, 5)
    digits = line[1:end] if end > 0 else ""
    if not digits or not (digits.isascii() and digits.isdigit()):
        return None, None
    pri = int(digits)
    if pri > 191:
        return None, None
    return FACILITIES[pri // 8], SEVERITIES[pri % 8]


def message_json(line: str, host: str, tstamp: float) -> str:
    facility, severity = priority(line)
    return json.dumps({"line": line, "host": host, "tstamp": tstamp, "facility": facility,
                       "severity": severity}, ensure_ascii=False)


class Framer:
    """Splits a byte stream into syslog messages; `on_message(bytes)` gets each one and
    `on_discard(size)` each message longer than `max_line`, which is skipped whole."""

    def __init__(self, max_line: int, on_message: Callable[[bytes], None],
                 on_discard: Callable[[int], None]):
        self.max_line = max_line
        self.on_message = on_message
        self.on_discard = on_discard
        self.buffer = bytearray()
        self.counted: int | None = None  # bytes still due for an octet-counted message
        self.skipping: int | None = None  # bytes still to skip of a too-long counted message
        self.skipping_line = False  # skipping a too-long LF-framed message up to its LF
        self.skipped = 0

    def feed(self, data: bytes) -> None:
        self.buffer.extend(data)
        while self._step():
            pass

    def _step(self) -> bool:
        buf = self.buffer
        if not buf:
            return False
        if self.skipping is not None:
            n = min(self.skipping, len(buf))
            del buf[:n]
            self.skipping -= n
            if self.skipping:
                return False
            self.skipping = None
            return True
        if self.skipping_line:
            end = buf.find(b"\n")
            if end < 0:
                self.skipped += len(buf)
                buf.clear()
                return False
            self.skipped += end
            del buf[:end + 1]
            self.skipping_line = False
            self.on_discard(self.skipped)
            return True
        if self.counted is not None:
            if len(buf) < self.counted:
                return False
            message = bytes(buf[:self.counted])
            del buf[:self.counted]
            self.counted = None
            self.on_message(message)
            return True
        framing = self._octet_count()
        if framing is None:
            return False  # undecided: a digit prefix without its space yet
        if framing is not False:
            length, header = framing
            del buf[:header]
            if length > self.max_line:
                self.on_discard(length)
                self.skipping = length
            else:
                self.counted = length
            return True
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > self.max_line + 1:  # +1: a CR that the LF would remove
                self.skipping_line = True
                self.skipped = 0
                return True
            return False
        line = bytes(buf[:end])
        del buf[:end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line:
            self.on_discard(len(line))
        else:
            self.on_message(line)
        return True

    def _octet_count(self):
        """(length, header size) for `<1-9><0-9>{0,9} `, False for LF framing, None if the
        bytes so far cannot tell."""
        buf = self.buffer
        if not 0x31 <= buf[0] <= 0x39:
            return False
        for i in range(1, min(len(buf), 11)):
            c = buf[i]
            if c == 0x20:
                return int(buf[:i]), i + 1
            if not 0x30 <= c <= 0x39:
                return False
        return None if len(buf) < 11 else False


class SyslogProtocol(protocol.Protocol):
    """One sender: frames its messages and adds them, in order, to `syslogd:<ip>`. `clock` (an
    IReactorTime) times the retries, `wall()` stamps each message with its date."""

    log = Logger()

    def __init__(self, core: Any, max_line: int, clock: Any,
                 wall: Callable[[], float] = wall_time):
        self.core = core
        self.clock = clock
        self.wall = wall
        self.framer = Framer(max_line, self._message, self._discard)
        self.pending: deque[str] = deque()
        self.busy = False
        self.paused = False
        self.host = ""
        self.queue = ""

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.host = normal_ip(getattr(peer, "host", "")) or str(getattr(peer, "host", ""))
        self.queue = f"syslogd:{self.host}"
        self.log.info("Connection from {ip}", ip=self.host)

    def dataReceived(self, data: bytes) -> None:
        self.framer.feed(data)

    def _discard(self, size: int) -> None:
        self.log.warn("discarded a {size}-byte syslog message from {ip}: longer than --max-line",
                      size=size, ip=self.host)

    def _message(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            return
        self.pending.append(message_json(line, self.host, self.wall()))
        if len(self.pending) >= HIGH_WATER:
            self._pause()
        if not self.busy:
            self.busy = True
            defer.ensureDeferred(self._drain()).addErrback(
                lambda f: self.log.failure("syslog delivery from {ip} failed", f, ip=self.host))

    async def _drain(self) -> None:
        retrying = False
        try:
            while self.pending:
                try:
                    if retrying:
                        # The try that timed out may have run after all: add only if absent.
                        # (Each value carries its receive time to the microsecond.)
                        await self.core.add_once(self.queue, self.pending[0])
                    else:
                        await self.core.add(self.queue, self.pending[0])
                    retrying = False
                except RedisUnavailable as e:
                    retrying = True
                    # Keep the message, stop reading and try again: the sender's TCP window
                    # fills up instead of our memory.
                    self._pause()
                    self.log.warn("Redis unavailable ({error}): {n} syslog message(s) from {ip} "
                                  "held, reading paused", error=e.detail or e.reason,
                                  n=len(self.pending), ip=self.host)
                    await _sleep(self.clock, RETRY_DELAY)
                    continue
                except RedisFailure as e:
                    self.log.error("syslog message from {ip} dropped, Redis refused it: {error}",
                                   ip=self.host, error=e.detail)
                except MessageTooLarge:
                    self.log.warn("syslog message from {ip} dropped: longer than the queue's "
                                  "max_message ({size} bytes)", ip=self.host,
                                  size=len(self.pending[0].encode("utf-8")))
                self.pending.popleft()
                if self.paused and len(self.pending) <= LOW_WATER:
                    self._resume()
        finally:
            self.busy = False

    def _pause(self) -> None:
        if not self.paused and self.transport is not None and self.connected:
            self.paused = True
            self.transport.pauseProducing()

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            if self.connected:
                self.transport.resumeProducing()


def _sleep(clock: Any, seconds: float) -> defer.Deferred:
    d = defer.Deferred()
    clock.callLater(seconds, d.callback, None)
    return d


class SyslogFactory(protocol.Factory):
    def __init__(self, core: Any, max_line: int, clock: Any = None,
                 wall: Callable[[], float] = wall_time):
        self.core, self.max_line = core, max_line
        self.clock = reactor_clock() if clock is None else clock
        self.wall = wall

    def buildProtocol(self, addr):
        p = SyslogProtocol(self.core, self.max_line, self.clock, self.wall)
        p.factory = self
        return p
