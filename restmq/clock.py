"""The one clock of a process, and Redis's clock as seen from it.

Every timer and every reading of elapsed time in RestMQ goes through an injected clock, an
IReactorTime (`seconds()`, `callLater()`): the reactor in a server, `twisted.internet.task.Clock`
in the unit tests. The reactor is given a monotonic time base (`monotonic_reactor`), so that a
step of the wall clock neither freezes timers nor fires them early. Wall time is read only where
a date is shown (the Date header, syslog's tstamp), through a separately injected function
(`wall_time` by default).

Write deadlines are compared with Redis's TIME inside the scripts, so they are expressed in
Redis's time base, whatever the two hosts' clocks say (`RedisClock`).
"""
from __future__ import annotations

import time
from typing import Any, Callable

# Seconds since the epoch, for what shows a date; never for a timer or a duration.
wall_time: Callable[[], float] = time.time


def use_monotonic_time(reactor: Any, monotonic: Callable[[], float] = time.monotonic) -> Any:
    """Give `reactor` a monotonic time base; returns it. Idempotent.

    Twisted's reactors read `time.time` for every `callLater` and for each wake-up: when the
    wall clock steps back (an NTP step, a restored VM), every timer waits for it to catch up,
    so the Redis watchdog, the pub/sub PING and every bounded wait freeze and a request can
    hang; when it steps forward, every timer fires at once (head timeouts cut clients that are
    on time). Here `reactor.seconds` becomes `monotonic`, and the calls already scheduled are
    moved to the same base, keeping their delays; calls made later carry the new base too
    (`DelayedCall.reset` reads it).

    Nothing we run needs `reactor.seconds()` to be the date: Twisted's log events, cyclone's
    request times and cookies, and our Date header and syslog tstamp read `time.time()`
    themselves; txredisapi, cyclone, Twisted's endpoints, LoopingCall and Deferred timeouts use
    `seconds()` only for delays. (twisted.web's access-log dates and Last-Modified would read
    it, but RestMQ does not use twisted.web.)

    An object that is not a reactor of Twisted's (`task.Clock`) is returned unchanged."""
    if getattr(reactor, "seconds", None) is monotonic:
        return reactor
    pending = getattr(reactor, "_pendingTimedCalls", None)
    new = getattr(reactor, "_newTimedCalls", None)
    if pending is None or new is None:
        return reactor
    shift = monotonic() - reactor.seconds()
    # The same shift for every call keeps the order of the heap.
    for call in (*pending, *new):
        call.time += shift
        call.seconds = monotonic
    reactor.seconds = monotonic
    return reactor


def reactor_clock() -> Any:
    """The global reactor, on a monotonic time base: what a clock defaults to."""
    from twisted.internet import reactor
    return use_monotonic_time(reactor)

# A TIME reply that took longer than this to come back says little about when Redis read its
# clock; once an offset is known, such samples are ignored.
MAX_ROUND_TRIP = 0.25


class RedisClock:
    """The offset between Redis's clock and ours, from TIME replies. "Ours" is whatever clock
    the caller reads (a monotonic one, so that steps of the wall clock here do not matter)."""

    def __init__(self) -> None:
        self.offset: float | None = None  # Redis's time minus ours, in seconds

    @property
    def known(self) -> bool:
        return self.offset is not None

    def sample(self, sent: float, reply: Any, received: float) -> bool:
        """Take a TIME reply (seconds and microseconds as text) to a command sent at `sent`
        and answered at `received` (our seconds). Redis read its clock somewhere in between;
        taking it as read at `received` can only make deadlines early, never late.
        Returns whether the sample was used."""
        if self.offset is not None and received - sent > MAX_ROUND_TRIP:
            return False
        self.offset = int(reply[0]) + int(reply[1]) / 1e6 - received
        return True

    def assume_in_step(self) -> None:
        """Redis refused TIME (an ACL, say): fall back to trusting that the clocks agree."""
        if self.offset is None:
            self.offset = 0.0

    def redis_ms(self, ours: float) -> int:
        """Our time `ours` (seconds) as Redis's milliseconds since the epoch."""
        return int((ours + (self.offset or 0.0)) * 1000)
