"""The routes of consumers that want each message at least once: `/claim/<q>` leases messages
(waiting for one with `wait`, restmq.http.polls), `/ack/<q>`, `/extend/<q>` and
`/release/<q>` settle the leases by receipt, and `/redrive/<d>` moves dead letters back
(docs/http-api.md#leases)."""
from __future__ import annotations

from restmq.core import arguments
from restmq.http.base import EVERY_QUEUE, PATH, BaseHandler
from restmq.http.polls import PollHandler


class ClaimHandler(PollHandler):
    """`POST /claim/<q>`: lease up to `limit` messages for `lease` seconds, at once or within
    `wait` seconds; 204 when none came."""

    prefix = "/claim/"

    def check_post(self):
        self.limit = arguments.limit(self.arg("limit"))
        self.lease = arguments.lease(self.arg("lease"))
        self.wait = arguments.wait(self.arg("wait"))

    def claim_now(self):
        return self.ctx.core.claim(self.target, self.limit, self.lease)

    def reply_body(self, claimed):
        return claimed.as_json()


class SettleHandler(BaseHandler):
    """What ack, extend and release share: a POST on the path's queue with 1 to 100 receipts;
    each receipt is answered on its own, current or stale."""

    methods = ("POST",)
    sections = {"POST": "rest:consumer"}
    queue_from = {"POST": PATH}

    def check_post(self):
        self.receipts = arguments.receipts(self.arg("receipt"))


class AckHandler(SettleHandler):
    """`POST /ack/<q>`: the messages of the current receipts leave the queue."""

    prefix = "/ack/"

    async def post(self):
        acked = await self.ctx.core.ack(self.target, self.receipts)
        self.reply_json(acked.as_json())


class ExtendHandler(SettleHandler):
    """`POST /extend/<q>`: the current receipts' leases end `lease` seconds from now."""

    prefix = "/extend/"

    def check_post(self):
        super().check_post()
        self.lease = arguments.lease(self.arg("lease"), required=True)

    async def post(self):
        extended = await self.ctx.core.extend(self.target, self.receipts, self.lease)
        self.reply_json(extended.as_json())


class ReleaseHandler(SettleHandler):
    """`POST /release/<q>`: the current receipts' messages go back, next in line or after
    `delay` seconds (0 unless given: a queue's configured delay is for adds), or to the
    dead-letter queue after their last attempt."""

    prefix = "/release/"

    def check_post(self):
        super().check_post()
        self.delay = arguments.delay(self.arg("delay")) or 0

    async def post(self):
        released = await self.ctx.core.release(self.target, self.receipts, self.delay)
        self.reply_json(released.as_json())


class RedriveHandler(BaseHandler):
    """`POST /redrive/<d>`: move up to `limit` dead letters of `d`, oldest first, to `to` or
    each back to the queue it came from."""

    methods = ("POST",)
    sections = {"POST": "rest:admin"}
    queue_from = {"POST": PATH}
    prefix = "/redrive/"

    def check_post(self):
        self.to = arguments.queue_other_than(self.arg("to"), self.target, "to")
        self.limit = arguments.limit(self.arg("limit"), default=100,
                                     maximum=arguments.REDRIVE_LIMIT_MAX)
        # Without `to` the messages go wherever their origins say, which no key can be
        # judged for in advance: that takes a key valid for every queue.
        self.also_addressed = (self.to,) if self.to else (EVERY_QUEUE,)

    async def post(self):
        redriven = await self.ctx.core.redrive(self.target, self.to, self.limit)
        self.reply_json(redriven.as_json())
