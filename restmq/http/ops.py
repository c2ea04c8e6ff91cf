"""The routes an operator's tools call: `/ping` (liveness: the process answers, Redis is not
asked) and `/health` (readiness: Redis answers, with its persistence mode and the warnings
that go with it) (docs/http-api.md#health-and-metrics)."""
from __future__ import annotations

from restmq import __version__
from restmq.http.base import NO_QUEUE, BaseHandler


class PingHandler(BaseHandler):
    """`GET /ping`: 204, whatever Redis's state."""

    methods = ("GET",)
    sections: dict[str, str] = {}
    queue_from = {"GET": NO_QUEUE}

    def get(self):
        self.no_content()


class HealthHandler(BaseHandler):
    """`GET /health`: 200 with the report of restmq.redis.health, or 503 `redis unavailable`
    within about a second when Redis does not answer."""

    methods = ("GET",)
    sections: dict[str, str] = {}
    queue_from = {"GET": NO_QUEUE}

    async def get(self):
        self.reply_json(await self.ctx.health.report(__version__))
