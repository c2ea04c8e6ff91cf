"""The routes an operator's tools call: `/ping` (liveness: the process answers, Redis is not
asked), `/health` (readiness: Redis answers, with its persistence mode and the warnings that
go with it) and `/metrics` (Prometheus) (docs/http-api.md#health-and-metrics)."""
from __future__ import annotations

from restmq import __version__
from restmq.http.base import EVERY_QUEUE, NO_QUEUE, BaseHandler, QueueSource
from restmq.metrics import CONTENT_TYPE, Scraper


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


class EveryQueue(QueueSource):
    """The request reads every queue: an auth key needs `create` (as `GET /stats/`)."""

    async def resolve(self, handler):
        return EVERY_QUEUE


class MetricsHandler(BaseHandler):
    """`GET /metrics`: the Prometheus text of restmq.metrics. Without Redis it still answers
    200, with this process's series and `restmq_redis_up 0`."""

    methods = ("GET",)
    sections = {"GET": "rest:consumer"}
    queue_from = {"GET": EveryQueue()}

    async def get(self):
        body = await self._scraper().body()
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(body)

    def _scraper(self) -> Scraper:
        ctx = self.ctx
        process = ctx.metrics
        if process.scraper is None:
            process.scraper = Scraper(ctx.core.redis, process, ctx.health, ctx.metrics_queues,
                                      ctx.core.counters, ctx.core.clock)
        return process.scraper
