"""When this process looks at what is due (leases ending, delayed messages, idempotency keys
to forget) and hands it to the core's tick: at start, every second, at the earliest due time
Redis reported when that is sooner, and at every due time this process created itself. Every
HTTP process runs one; Redis runs one script at a time, so however many processes tick, each
due entry is handled once, and the ones that are idle cost one read a second."""
from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from restmq.core import TICK_QUEUES
from restmq.errors import RedisFailure, RedisTrouble

INTERVAL = 1.0  # the longest time between two looks


class Ticker(service.Service):
    """Looks at DUESET (`core.due()`) and ticks each queue found due (`core.tick(q)`), one run
    at a time, on the injected `clock`. While it runs, `core.on_due` is its `due_in`: an
    operation that created a due time schedules a run for then."""

    log = Logger()

    def __init__(self, core: Any, clock: Any):
        self.core, self.clock = core, clock
        self._call = None  # the next run's DelayedCall
        self._run: defer.Deferred | None = None  # the run in progress
        self._again = False  # a run fell due while one was in progress
        self._failing = False  # the last run failed (logged once until one succeeds)

    def startService(self) -> None:
        super().startService()
        self.core.on_due = self.due_in
        self._start()

    def stopService(self):
        super().stopService()
        self.core.on_due = _ignore
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._run is not None:  # let it finish before the Redis connections close
            done = defer.Deferred()
            self._run.addBoth(lambda _: done.callback(None))
            return done
        return None

    def due_in(self, seconds: float) -> None:
        """Something is due `seconds` from now: look then, unless a look comes sooner."""
        if self.running:
            self._schedule(seconds)

    def _schedule(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if self._call is not None and self._call.active():
            if self._call.getTime() <= self.clock.seconds() + seconds:
                return
            self._call.cancel()
        self._call = self.clock.callLater(seconds, self._start)

    def _start(self) -> None:
        self._call = None
        if self._run is not None:
            self._again = True
            return
        self._run = defer.ensureDeferred(self._look())
        self._run.addBoth(self._finished)

    async def _look(self) -> float:
        """One run; returns the seconds until the next."""
        due = await self.core.due()
        now, head, failed = due.now, due.head, False
        for queue in due.queues:
            try:
                ticked = await self.core.tick(queue)
            except RedisFailure as e:
                # An error reply for this queue (data written by hand?): the others go on.
                self.log.warn("tick of {queue} failed: {error}", queue=queue, error=e.detail)
                failed = True
                continue
            now, head = ticked.now, ticked.head
        if failed:
            return INTERVAL
        if len(due.queues) >= TICK_QUEUES:
            return 0.0  # more may be due right now
        if head is None:
            return INTERVAL
        return min(INTERVAL, max(0.0, (head - now) / 1000))

    def _finished(self, result: Any) -> None:
        self._run = None
        if isinstance(result, Failure):
            if not self._failing:
                self._failing = True
                if result.check(RedisTrouble):
                    self.log.warn("tick failed, retrying every second: {error}",
                                  error=result.value.detail or result.value.reason)
                else:
                    self.log.failure("tick failed, retrying every second", result)
            delay = INTERVAL
        else:
            self._failing = False
            delay = result
        if self._again:
            self._again, delay = False, 0.0
        if self.running:
            self._schedule(delay)


def _ignore(seconds: float) -> None:
    pass
