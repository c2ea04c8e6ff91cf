"""The routes of a queue's settings and state: `/config/<q>` reads, sets and clears its
configuration, `/info/<q>` shows its counts at a glance (docs/http-api.md#queue-configuration)."""
from __future__ import annotations

from restmq.core import arguments
from restmq.delivery.presence import PRESENCE_KINDS
from restmq.http.base import PATH, BaseHandler


class ConfigHandler(BaseHandler):
    """`/config/<q>`: GET reads every attribute in force, POST sets and removes attributes,
    DELETE removes the whole configuration."""

    methods = ("GET", "POST", "DELETE")
    sections = {"GET": "rest:consumer", "POST": "rest:admin", "DELETE": "rest:admin"}
    queue_from = {"GET": PATH, "POST": PATH, "DELETE": PATH}
    prefix = "/config/"

    async def get(self):
        config = await self.ctx.core.config_get(self.target)
        self.reply_json(config.as_json())

    def check_post(self):
        self.changes, self.removed = arguments.config_changes(
            self.args, self.arg("unset"), self.target, self.settings["max_body"],
            self.settings.get("push_private", False))
        dead_letter = self.changes.get("dead_letter")
        if dead_letter is not None:
            # The queue that will receive this queue's dead letters is written to as well.
            self.also_addressed = (dead_letter,)

    async def post(self):
        config = await self.ctx.core.config_set(self.target, self.changes, self.removed)
        self.reply_json(config.as_json())

    async def delete(self):
        deleted = await self.ctx.core.config_clear(self.target)
        self.reply_json({"queue": self.target, "deleted": deleted})


class InfoHandler(BaseHandler):
    """`GET /info/<q>`: pending, in-flight and delayed counts, status, policy, the dead-letter
    queue's length, the next due time, the subscribers of its channel and this process's live
    consumers and waiters of it."""

    methods = ("GET",)
    sections = {"GET": "rest:consumer"}
    queue_from = {"GET": PATH}
    prefix = "/info/"

    async def get(self):
        info = await self.ctx.core.info(self.target)
        reply = info.as_json()
        # Read after Redis answered, so that both describe the same moment as nearly as can be.
        delivery = self.ctx.delivery
        reply["consumers"] = delivery.presence(self.target) if delivery is not None else \
            dict.fromkeys(PRESENCE_KINDS, 0)
        self.reply_json(reply)
