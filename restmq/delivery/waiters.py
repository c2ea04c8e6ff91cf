"""Waiters: long polls (`wait` > 0 on `/claim/` and `/pop/`) parked in their process until a
message comes or their time is up. A parked waiter holds no Redis connection and no command: it
is an entry in live delivery's list for its queue (restmq.delivery.live), which claims for it
when a dispatch runs.
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from restmq.errors import RestMQError


class Waiter:
    """One long poll, from its first claim to its answer.

    Built by the request with three callables: `claim()` claims for it (a Deferred firing with
    something that has `messages`, empty when nothing was pending), `release(claimed)` gives
    back what was claimed for a client that has gone, and `present()` says whether the client
    is still connected. The request awaits `answer`, which fires once: with what was claimed,
    with None when nothing came in time (or the client left), or with the RestMQError of a
    failed claim.

    Delivery calls `serve()` for one claim at a time, `park(seconds, leave)` when it takes the
    waiter in, and `time_up()` at shutdown; the request calls `depart()` when its client
    leaves, which takes the waiter out at once (`leave()`), so that nothing more is claimed
    for it."""

    log = Logger()

    def __init__(self, claim: Callable[[], defer.Deferred],
                 release: Callable[[Any], defer.Deferred], present: Callable[[], bool],
                 clock: Any, queue: str = ""):
        self.claim, self.release, self.present = claim, release, present
        self.clock, self.queue = clock, queue
        self.answer = defer.Deferred()
        self.busy = False  # a claim for it is on its way
        self.gone = False  # its client left
        self.due = False  # its time is up, while a claim was on its way
        self._timer = None
        self._leave: Callable[[], None] | None = None

    @property
    def answered(self) -> bool:
        return self.answer.called

    def park(self, seconds: float, leave: Callable[[], None]) -> None:
        """Delivery took it in; `leave()` takes it out again. It answers None after
        `seconds` unless something came first."""
        self._leave = leave
        self._timer = self.clock.callLater(seconds, self.time_up)

    def time_up(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.busy:
            self.due = True  # the claim on its way decides: what it brings is delivered
        else:
            self._end(None)

    def depart(self) -> None:
        """The client left: out of the list at once. A claim already on its way for it has its
        messages released when it comes back (`serve`)."""
        self.gone = True
        self._end(None)

    async def serve(self) -> bool:
        """One claim for this waiter. True when it took something (handed to the waiter, or
        released because the client left meanwhile): the next waiter may be served. False when
        nothing was pending or the claim failed."""
        if self.answered:
            return False
        self.busy = True
        try:
            claimed = await self.claim()
        except RestMQError as e:
            self._end(Failure(e))
            return False
        finally:
            self.busy = False
        if not claimed.messages:
            if self.due:
                self._end(None)
            return False
        if self.gone or self.answered or not self.present():
            self.gone = True
            self._end(None)
            await self._give_back(claimed)
        else:
            self._end(claimed)
        return True

    async def _give_back(self, claimed: Any) -> None:
        keys = ", ".join(m.key for m in claimed.messages)
        try:
            await self.release(claimed)
        except RestMQError as e:
            # Still leased, so not lost: the lease's end hands them back.
            self.log.warn("{keys} claimed for a client of {queue} that left could not be "
                          "released ({error}): back when the lease ends", keys=keys,
                          queue=self.queue, error=e.reason)
        else:
            self.log.info("{keys} claimed for a client of {queue} that left: released",
                          keys=keys, queue=self.queue)

    def _end(self, result: Any) -> None:
        """Idempotent: out of the list, the timer stopped, and the answer given once."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        leave, self._leave = self._leave, None
        if leave is not None:
            leave()
        if not self.answer.called:
            if isinstance(result, Failure):
                self.answer.errback(result)
            else:
                self.answer.callback(result)
