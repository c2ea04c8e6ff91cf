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

# An ack or a release that Redis refuses or leaves unanswered is tried again after 0.5 s, 1 s,
# 2 s... (at most 5 s apart): a pop's ack until the pop lease ends (its reply went out: given
# up on, the lease would hand the messages out a second time), the release of a reply that did
# not go out for RELEASE_FOR seconds (given up on, the messages wait for their lease, which a
# claim may have asked to be hours long). A try after the lease ended finds it stale: harmless.
SETTLE_RETRY = (0.5, 5.0)
RELEASE_FOR = 60.0


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
        self.log.info("{keys} taken from {queue}: the client left before the reply went out; "
                      "released", keys=_keys(claimed), queue=self.target)
        defer.ensureDeferred(self._settle("release", lambda: self.give_back(claimed), claimed,
                                          RELEASE_FOR))

    async def _settle(self, what: str, call: Any, claimed: Claimed,
                      within: float) -> tuple[Any, int]:
        """`call()`, an ack or a release of `claimed`, with Redis trouble waited out for
        `within` seconds (SETTLE_RETRY): (its result, or None when it failed for good; the
        tries made)."""
        clock = self.settings["clock"]
        give_up = clock.seconds() + within
        delay, tries = SETTLE_RETRY[0], 0
        while True:
            tries += 1
            try:
                return await call(), tries
            except RedisTrouble as e:
                if clock.seconds() + delay >= give_up:
                    self._unsettled(what, claimed, e, "back when the lease ends")
                    return None, tries
                if tries == 1:
                    self._unsettled(what, claimed, e, f"trying again for {within:g} s")
                await task.deferLater(clock, delay, lambda: None)
                delay = min(2 * delay, SETTLE_RETRY[1])
            except RestMQError as e:
                self._unsettled(what, claimed, e, "back when the lease ends")
                return None, tries

    def _unsettled(self, what: str, claimed: Claimed, error: RestMQError, outcome: str) -> None:
        self.log.warn("taken from {queue}, {keys}: {what} failed ({error}); {outcome}",
                      queue=self.target, keys=_keys(claimed), what=what, error=error.reason,
                      outcome=outcome)


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
        # Many pops of a queue finish their replies in the same turn of the reactor: their
        # acks run as one script (each still gets its own outcome, and tries again alone).
        receipts = [m.receipt for m in claimed.messages]
        acked, tries = await self._settle(
            "ack", lambda: self.ctx.core.ack_together(self.target, receipts), claimed,
            self.ctx.pop_lease)
        if acked is not None and acked.stale:
            # After a failed try, stale may also mean that the try ran and its reply was lost.
            self.log.warn("popped from {queue}, {keys} went out after the pop lease ended{also}: "
                          "{n} of them may be delivered again", queue=self.target,
                          keys=_keys(claimed), n=len(acked.stale),
                          also=" (or an ack tried earlier ran after all)" if tries > 1 else "")


def _keys(claimed: Claimed) -> str:
    """The claimed messages' keys, for a log line: made only when one is written."""
    return ", ".join(m.key for m in claimed.messages)
