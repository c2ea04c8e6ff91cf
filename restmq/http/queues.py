"""The REST routes of queues: `/` and `/q/<q>` (get, add, purge), the collectd plugin's
`/collectd/<kind>`, `/p/<q>` (policy), `/control/<q>` (start, stop) and `/stats/`.
"""
from __future__ import annotations

from restmq import core as corelib
from restmq.errors import BadRequest, EmptyQueue, RestMQError
from restmq.frontends import collectd
from restmq.http.adds import add, check_add
from restmq.http.base import (EVERY_QUEUE, JSON, PATH, PATH_OR_EVERY, BaseHandler, Fixed,
                              FromArgument)
from restmq.http.pages import queue_list_page
from restmq.jsontext import json_text


def message_json(message: corelib.Message) -> str:
    return json_text({"key": message.key, "value": message.value, "count": 0})


class RootHandler(BaseHandler):
    """`/`: hard get by `queue=`, the redirect to the dashboard, and add (docs/http-api.md#root)."""

    methods = ("GET", "POST")
    sections = {"GET": "rest:consumer", "POST": "rest:producer"}
    queue_from = {"GET": FromArgument("queue", or_every=True), "POST": FromArgument("queue")}
    jsonp_methods = ("GET", "POST")

    def check_get(self):
        if self.target is not EVERY_QUEUE:
            self.jsonp = self.callback()

    async def get(self):
        if self.target is EVERY_QUEUE:
            return self.redirect_to("/static/index.html")
        message = await self.ctx.core.hard_get(self.target)
        self.reply(message_json(message), callback=self.jsonp)

    def check_post(self):
        check_add(self)

    async def post(self):
        await add(self)


class QueueHandler(BaseHandler):
    """`/q/<q>`: hard get, add, purge; `/q/` lists the queues (docs/http-api.md#hard-get,
    #add, #purge, #queue-list)."""

    methods = ("GET", "POST", "DELETE")
    sections = {"GET": "rest:consumer", "POST": "rest:producer", "DELETE": "rest:producer"}
    queue_from = {"GET": PATH_OR_EVERY, "POST": PATH, "DELETE": PATH}
    prefix = "/q/"
    jsonp_methods = ("GET", "POST", "DELETE")

    def check_get(self):
        if self.target is not EVERY_QUEUE:
            self.jsonp = self.callback()

    async def get(self):
        if self.target is EVERY_QUEUE:
            return self.reply(queue_list_page(await self.ctx.core.queues()), crlf=False)
        try:
            message = await self.ctx.core.hard_get(self.target)
        except EmptyQueue:
            return self.no_content()
        self.reply(message_json(message), callback=self.jsonp)

    def check_post(self):
        check_add(self)

    async def post(self):
        await add(self)

    def check_delete(self):
        self.jsonp = self.callback()

    async def delete(self):
        existed = await self.ctx.core.purge(self.target)
        self.reply(json_text({"queue": self.target, "status": existed}), callback=self.jsonp)


def collectd_queue(handler: BaseHandler) -> str:
    """The queue of a collectd POST, by the kind in its path."""
    kind = handler.path_queue()
    if kind == "data":
        return collectd.DATA_QUEUE
    if kind == "event":
        return collectd.EVENT_QUEUE
    raise BadRequest("unknown collectd kind")


class CollectdHandler(QueueHandler):
    """`/collectd/<x>` of the collectd plugin: GET and DELETE as `/q/<x>`, POST ingests
    collectd's write_http bodies (docs/http-api.md#collectd-ingest)."""

    queue_from = {"GET": PATH_OR_EVERY, "POST": Fixed(collectd_queue), "DELETE": PATH}
    prefix = "/collectd/"
    raw_body = True

    def check_post(self):
        if self.target == collectd.DATA_QUEUE:
            self.value = collectd.data_message(self.request.body,
                                               self.request.headers.get("Content-Type"))
            if self.value is None:
                raise RestMQError.with_status(503, "unexpected Content-Type")
        else:
            self.value = collectd.event_message(self.request.body)
        self.jsonp = self.callback()

    async def post(self):
        self.reply_key(await self.ctx.core.add(self.target, self.value), self.jsonp)


class PolicyHandler(BaseHandler):
    """`/p/<q>`: read and set the delivery policy (docs/http-api.md#policy)."""

    methods = ("GET", "POST")
    sections = {"GET": "rest:consumer", "POST": "rest:producer"}
    queue_from = {"GET": PATH, "POST": PATH}
    prefix = "/p/"
    jsonp_methods = ("GET", "POST")

    def check_get(self):
        self.jsonp = self.callback()

    async def get(self):
        policy = await self.ctx.core.get_policy(self.target)
        self.reply(json_text({"queue": self.target, "value": policy}), callback=self.jsonp)

    def check_post(self):
        self.policy = self.required("policy")
        self.jsonp = self.callback()

    async def post(self):
        callback = self.jsonp
        if self.policy not in corelib.POLICY_NAMES:
            return self.reply("null", callback=callback)
        await self.ctx.core.set_policy(self.target, self.policy)
        self.reply(json_text("OK") if callback else "OK", callback=callback)


class ControlHandler(BaseHandler):
    """`/control/<q>`: flow control, start and stop live delivery
    (docs/http-api.md#control)."""

    methods = ("GET", "POST")
    sections = {"GET": "rest:consumer", "POST": "rest:producer"}
    queue_from = {"GET": PATH_OR_EVERY, "POST": PATH}
    prefix = "/control/"
    jsonp_methods = ("POST",)

    async def get(self):
        redis, name = self.ctx.redis_description, self.target
        if name is EVERY_QUEUE:
            rows = await self.ctx.core.stats()
            queues = {row.name: {"queue": row.name,
                                 "status": corelib.status_flag(row.status or None)}
                      for row in rows}
            body = {"redis": redis, "queues": queues, "count": len(rows)}
        else:
            stored = await self.ctx.core.get_status(name)
            body = {"redis": redis, "queue": name,
                    "status": {"queue": name, "status": corelib.status_flag(stored)}}
        self.reply(json_text(body), ctype=JSON)

    def check_post(self):
        self.requested = self.arg("status")
        self.jsonp = self.callback()

    async def post(self):
        name, status = self.target, self.requested
        if status not in ("start", "stop"):
            body = {"stat": f"invalid status: {status}"}
        else:
            await self.ctx.core.set_status(name, status == "start")
            body = {"stat": {"queue": name, "status": 1 if status == "start" else 0}}
        self.reply(json_text(body), callback=self.jsonp, semicolon=False)


class StatsHandler(BaseHandler):
    """`/stats/` and `/stats/<q>` (docs/http-api.md#stats)."""

    methods = ("GET",)
    sections = {"GET": "rest:consumer"}
    queue_from = {"GET": PATH_OR_EVERY}
    prefix = "/stats/"
    jsonp_methods = ("GET",)

    def check_get(self):
        self.jsonp = self.callback()

    async def get(self):
        redis = self.ctx.redis_description
        if self.target is EVERY_QUEUE:
            rows = await self.ctx.core.stats()
            queues = {row.name: {
                "name": row.name, "len": row.length,
                "status": "" if not row.status else (1 if row.status == "1" else 0),
                "policy": int(row.policy) if row.policy in ("1", "2") else "",
                "policy_name": corelib.policy_name(row.policy)} for row in rows}
            body = {"queues": queues, "redis": redis, "count": len(rows)}
        else:
            body = {"redis": redis, "queue": self.target,
                    "len": await self.ctx.core.length(self.target)}
        self.reply(json_text(body), ctype=JSON, crlf=False, callback=self.jsonp, semicolon=False)
