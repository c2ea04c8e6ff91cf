"""What the blocking and the Twisted worker share: the default failure policy, the outcome of
a job, and the structured log lines."""
from __future__ import annotations

import logging

from restmq.client.models import Lease

log = logging.getLogger("restmq.client.worker")

ACK, RELEASE, DEAD, LAPSE, STALE = "ack", "release", "dead", "lapse", "stale"


def default_delay(message: Lease) -> float:
    """Seconds before a failed message comes back: 1, 2, 4 ... by delivery, at most 300."""
    return min(300, 2 ** max(0, message.deliveries - 1))


def fields(message: Lease, outcome: str | None = None, **more) -> dict:
    """The `extra` of a log record about one message: queue, key, receipt, deliveries and
    outcome become attributes of the record, for structured handlers to pick up."""
    extra = {"queue": message.queue, "key": message.key, "receipt": message.receipt,
             "deliveries": message.deliveries}
    if outcome is not None:
        extra["outcome"] = outcome
    extra.update(more)
    return extra


class Base:
    """Attributes and hooks of both workers. Subclass, set `queue` and override `work`."""

    queue: str | None = None
    lease: int = 30          # seconds of each lease; extended every lease/3 while work runs
    concurrency: int = 1     # messages worked on at once
    wait: int = 20           # long-poll seconds of each claim
    max_hold: float | None = None  # stop extending after this long: a hung job is retried
    handle_signals = True    # run() in the main thread stops gracefully on SIGTERM and SIGINT

    processed = 0
    failed = 0

    def _configure(self, queue, lease, concurrency, wait, work, logger) -> None:
        for name, value in (("queue", queue), ("lease", lease), ("concurrency", concurrency),
                            ("wait", wait)):
            if value is not None:
                setattr(self, name, value)
        if work is not None:
            self.work = work
        if not self.queue:
            raise ValueError("a worker needs a queue")
        if self.concurrency < 1 or self.lease < 1:
            raise ValueError("concurrency and lease must be at least 1")
        self.log = logger or log
        self.processed = 0
        self.failed = 0

    def _delay(self, message: Lease, error: BaseException) -> int | None:
        """fail()'s answer in whole seconds (None: let the lease lapse); 0 when fail() raises
        or answers something that is not a number, so the message comes back at once."""
        try:
            delay = self.fail(message, error)
            return None if delay is None else max(0, int(delay))
        except BaseException as e:
            self.log.exception("fail() raised or gave no number; releasing",
                               extra=fields(message))
            self._exit_on(e)
            return 0

    def _exit_on(self, error: BaseException) -> None:
        """SystemExit or KeyboardInterrupt from the user's code asks the worker to stop, the
        graceful way: the message it came with is settled first, the others released."""
        if not isinstance(error, Exception):
            self.log.warning("%r raised by a hook: stopping", error,
                             extra={"queue": self.queue})
            self.stop()

    def work(self, message: Lease):
        """Does the job; returning acknowledges the message, raising fails it."""
        raise NotImplementedError("override work(message)")

    def fail(self, message: Lease, error: BaseException):
        """The delay in seconds before a failed message comes back (released), or None to
        let its lease lapse. A message at its queue's max_attempts is dead-lettered."""
        return default_delay(message)

    def before(self, message: Lease) -> None:
        """Runs before work; raising fails the message without working on it."""

    def after(self, message: Lease, outcome: str) -> None:
        """Runs after each message with its outcome: ack, release, dead, lapse or stale."""
