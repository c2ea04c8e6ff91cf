"""The consuming routes that may wait for a message: `/claim/<q>` (restmq.http.leases) and
`/pop/<q>`, which takes messages under a short safety lease and acks them once its reply went
out (docs/http-api.md#long-polls, #pop). Both claim at once and, with `wait`, park a waiter in
live delivery until a message comes or the time is up; both release what they claimed for a
client that is gone."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from restmq.core import Claimed, arguments
from restmq.delivery.waiters import Waiter
from restmq.errors import RedisTrouble, RestMQError
from restmq.http.base import PATH, BaseHandler

# A pop's ack that Redis refuses or leaves unanswered is tried again after 0.5 s, 1 s, 2 s...
# (at most 5 s apart) until the pop lease ends: its reply went out, and an ack given up on
# leaves the messages to the lease, which hands them out a second time.
ACK_RETRY = (0.5, 5.0)


class PollHandler(BaseHandler):
    """A POST on the path's queue that claims up to `limit` messages, at once or within `wait`
    seconds; 204 when nothing came. Subclasses say how they claim (`claim_now`), what the
    reply holds (`reply_body`) and what becomes of the messages once it went out (`settle`).
    A client that leaves is taken out of the waiters at once; what a claim on its way brings
    for it, and what a reply that could not go out held, is released."""

    methods = ("POST",)
    sections = {"POST": "rest:consumer"}
    queue_from = {"POST": PATH}
    waiter: Waiter | None = None
    left = False

    def check_post(self):
        self.limit = arguments.limit(self.arg("limit"))
        self.wait = arguments.wait(self.arg("wait"))

    async def post(self):
        waiter = self.waiter = Waiter(self.claim_now, self.give_back, self.present,
                                      self.settings["clock"], self.target)
        await waiter.serve()
        if not waiter.answered:
            if self.wait and self.present():
                self.ctx.delivery.park(self.target, waiter, self.wait)
            else:
                waiter.time_up()
        claimed = await waiter.answer
        if claimed is None:
            self.no_content()
        else:
            self.deliver(claimed)

    def present(self) -> bool:
        transport = self.request.connection.transport
        return not self.left and bool(transport.connected) and \
            not getattr(transport, "disconnecting", False)

    def on_connection_close(self, reason: str | None = None):
        if reason and not self._finished:  # lost before the reply was finished
            self.left = True
            if self.waiter is not None:
                self.waiter.depart()

    def claim_now(self):
        raise NotImplementedError

    def reply_body(self, claimed: Claimed) -> dict[str, Any]:
        raise NotImplementedError

    def deliver(self, claimed: Claimed) -> None:
        """Write the reply, and settle the messages once it went out to the kernel, or the
        connection was lost first (`settle`)."""
        sent = self.request.connection.watch_sent()
        self.reply_json(self.reply_body(claimed))
        sent.addCallback(self.settle, claimed)

    def settle(self, delivered: bool, claimed: Claimed) -> None:
        """A claim's messages stay leased to a reply that went out; those of a reply that
        could not are released at once rather than when their lease ends."""
        if not delivered:
            self.give_back_unsent(claimed)

    def give_back(self, claimed: Claimed):
        """RELEASE to the consuming end: next in line, in their order (the oldest next, as
        before the claim), with the delivery counted."""
        return self.ctx.core.release(self.target, [m.receipt for m in claimed.messages])

    def give_back_unsent(self, claimed: Claimed) -> None:
        keys = ", ".join(m.key for m in claimed.messages)
        self.log.info("{keys} taken from {queue}: the client left before the reply went out; "
                      "released", keys=keys, queue=self.target)
        self.give_back(claimed).addErrback(self._unsettled, keys, "release")

    def _unsettled(self, failure: Any, keys: str, what: str) -> None:
        failure.trap(RestMQError)
        self.log.warn("taken from {queue}, {keys}: {what} failed ({error}); back when the "
                      "lease ends", queue=self.target, keys=keys, what=what,
                      error=failure.value.reason)


class PopHandler(PollHandler):
    """`POST /pop/<q>`: up to `limit` messages, each given once: claimed under the
    `--pop-lease` safety lease, acked once the reply has been handed to the kernel, released
    if the connection is lost first (a crash in between leaves the lease to hand them back)."""

    prefix = "/pop/"

    def claim_now(self):
        return self.ctx.core.claim(self.target, self.limit, self.ctx.pop_lease, mode="pop")

    def reply_body(self, claimed: Claimed) -> dict[str, Any]:
        return {"queue": claimed.queue,
                "messages": [{"key": m.key, "value": m.value} for m in claimed.messages]}

    def settle(self, delivered: bool, claimed: Claimed) -> None:
        if not delivered:
            return self.give_back_unsent(claimed)
        defer.ensureDeferred(self._ack(claimed))

    async def _ack(self, claimed: Claimed) -> None:
        """ACK, with Redis trouble waited out until the pop lease ends (ACK_RETRY)."""
        keys = ", ".join(m.key for m in claimed.messages)
        receipts = [m.receipt for m in claimed.messages]
        clock = self.settings["clock"]
        give_up = clock.seconds() + self.ctx.pop_lease
        delay, tries = ACK_RETRY[0], 0
        while True:
            tries += 1
            try:
                acked = await self.ctx.core.ack(self.target, receipts)
            except RedisTrouble as e:
                if clock.seconds() + delay >= give_up:
                    return self._unsettled_ack(keys, e, "back when the lease ends")
                if tries == 1:
                    self._unsettled_ack(keys, e, "trying again until the pop lease ends")
                await task.deferLater(clock, delay, lambda: None)
                delay = min(2 * delay, ACK_RETRY[1])
            except RestMQError as e:
                return self._unsettled_ack(keys, e, "back when the lease ends")
            else:
                return self._acked(acked, keys, tries)

    def _unsettled_ack(self, keys: str, error: RestMQError, outcome: str) -> None:
        self.log.warn("taken from {queue}, {keys}: ack failed ({error}); {outcome}",
                      queue=self.target, keys=keys, error=error.reason, outcome=outcome)

    def _acked(self, acked: Any, keys: str, tries: int) -> None:
        if acked.stale:
            # After a failed try, stale may also mean that the try ran and its reply was lost.
            self.log.warn("popped from {queue}, {keys} went out after the pop lease ended{also}: "
                          "{n} of them may be delivered again", queue=self.target, keys=keys,
                          n=len(acked.stale),
                          also=" (or an ack tried earlier ran after all)" if tries > 1 else "")
