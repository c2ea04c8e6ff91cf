"""Acks that many requests ask for at about the same time, run together: a process serving
pops on a busy queue finishes several replies in one turn of the reactor, and each reply's
messages are then acked. One script for all of them costs Redis and this process the fixed
part of a script run (its keys, its arguments, a round trip) once instead of once a reply.
"""
from __future__ import annotations

from typing import Any, Sequence

from twisted.internet import defer
from twisted.python.failure import Failure

from restmq.errors import RedisFailure

# Receipts in one run at most: a bigger group is cut between requests, so that one script
# holds Redis for a few milliseconds at most (an ack of 100 takes about half of one).
MERGE_MAX = 500


class AckMerger:
    """`ack(queue, receipts)` fires like the core's ack, with an Acked of these receipts only;
    the acks asked for on one queue in one reactor turn run as one ack script (or a few, of up
    to MERGE_MAX receipts) right after that turn. A run that fails fails each of its requests
    with the same error, so each can try again on its own terms. `run(queue, receipts)`
    runs one ack script (a Deferred of its outcomes, one per receipt); `acked(queue, receipts,
    outcomes)` makes the Acked; `clock` has callLater."""

    def __init__(self, run: Any, acked: Any, clock: Any) -> None:
        self.run, self.acked, self.clock = run, acked, clock
        self.waiting: dict[str, list[tuple[list[str], defer.Deferred]]] = {}

    def ack(self, queue: str, receipts: Sequence[str]) -> defer.Deferred:
        d = defer.Deferred()
        group = self.waiting.get(queue)
        if group is None:
            group = self.waiting[queue] = []
            self.clock.callLater(0, self._flush, queue)
        group.append((list(receipts), d))
        return d

    def _flush(self, queue: str) -> None:
        part: list[tuple[list[str], defer.Deferred]] = []
        size = 0
        for request in self.waiting.pop(queue, []):
            if part and size + len(request[0]) > MERGE_MAX:
                self._run(queue, part)
                part, size = [], 0
            part.append(request)
            size += len(request[0])
        if part:
            self._run(queue, part)

    def _run(self, queue: str, part: list[tuple[list[str], defer.Deferred]]) -> None:
        receipts = [r for request, _ in part for r in request]
        try:
            d = self.run(queue, receipts)
        except Exception:
            d = defer.fail()
        d.addCallbacks(self._answer, self._fail, callbackArgs=(queue, part),
                       errbackArgs=(part,))

    def _answer(self, outcomes: list, queue: str,
                part: list[tuple[list[str], defer.Deferred]]) -> None:
        if not isinstance(outcomes, list) or len(outcomes) != sum(len(r) for r, _ in part):
            return self._fail(Failure(RedisFailure(f"ack of {queue}: unexpected reply")), part)
        at = 0
        for receipts, d in part:
            d.callback(self.acked(queue, receipts, outcomes[at:at + len(receipts)]))
            at += len(receipts)

    @staticmethod
    def _fail(failure: Failure, part: list[tuple[list[str], defer.Deferred]]) -> None:
        for _, d in part:
            d.errback(Failure(failure.value, failure.type, failure.getTracebackObject()))
