"""The routes an operator's tools call: `/ping` (liveness: the process answers, Redis is not
asked), `/health` (readiness: Redis answers, with its persistence mode and the warnings that
go with it) and `/metrics` (Prometheus) (docs/http-api.md#health-and-metrics)."""
from __future__ import annotations

from twisted.internet import threads

from restmq import __version__
from restmq.errors import RedisTrouble
from restmq.http.base import EVERY_QUEUE, NO_QUEUE, BaseHandler, QueueSource
from restmq.metrics import CONTENT_TYPE, Snapshot, read_queues, render


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
        ctx = self.ctx
        process = ctx.metrics
        try:
            snapshot = await read_queues(ctx.core.redis, ctx.metrics_queues, ctx.core.counters)
        except RedisTrouble:
            snapshot = Snapshot(False)
        process.up.set(1 if snapshot.up else 0)
        process.set_persistence(await self._persistence(snapshot.up))
        snapshot.live = process.live_consumers()
        # Ten thousand queues make about 150,000 lines: rendered in a thread, so the reactor
        # serves other requests meanwhile (render reads only this scrape's snapshot).
        body = await threads.deferToThread(render, process, snapshot)
        self.set_header("Content-Type", CONTENT_TYPE)
        self.finish(body)

    async def _persistence(self, up: bool) -> str | None:
        health = self.ctx.health
        if up:
            try:
                return (await health.current()).persistence
            except RedisTrouble:
                pass
        return health.settings.persistence if health.settings else None
