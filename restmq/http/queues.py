"""The REST routes of queues: `/` and `/q/<q>` (get, add, purge), the collectd plugin's
`/collectd/<kind>`, `/p/<q>` (policy), `/control/<q>` (start, stop) and `/stats/`.
"""
from __future__ import annotations

from restmq import core as corelib
from restmq.errors import BadRequest, EmptyQueue, InvalidArgument, MissingArgument, RestMQError
from restmq.frontends import collectd
from restmq.http.args import TTL_MAX, bounded_int
from restmq.http.base import JSON, BaseHandler
from restmq.http.pages import queue_list_page
from restmq.jsontext import json_text


def message_json(message: corelib.Message) -> str:
    return json_text({"key": message.key, "value": message.value, "count": 0})


class RootHandler(BaseHandler):
    """`/`: hard get by `queue=`, the redirect to the dashboard, and add (§4.1, §4.2)."""

    methods = ("GET", "POST")
    sections = {"GET": "rest:consumer", "POST": "rest:producer"}
    jsonp_methods = ("GET", "POST")

    async def get(self):
        name = self.arg("queue")
        if name is None:
            await self.grant(None)
            return self.redirect_to("/static/index.html")
        name = await self.ctx.core.admit(name)
        callback = self.callback()
        await self.grant(name)
        message = await self.ctx.core.hard_get(name)
        self.reply(message_json(message), callback=callback)

    async def post(self):
        await add(self, await self.ctx.core.admit(self.required("queue")))


async def add(handler: BaseHandler, name: str) -> None:
    """The add of `POST /` and `POST /q/<q>` after the queue name was checked."""
    value = handler.arg("msg") or handler.arg("value")
    if value is None:
        raise MissingArgument("value")
    ttl = handler.arg("ttl")
    if ttl is not None:
        ttl = bounded_int(ttl, TTL_MAX)
        if ttl is None or ttl < 1:
            raise InvalidArgument("ttl")
    callback = handler.callback()
    await handler.grant(name)
    key = await handler.ctx.core.add(name, value, ttl)
    handler.reply_key(key, callback)


class QueueHandler(BaseHandler):
    """`/q/<q>`: hard get, add, purge; `/q/` lists the queues (§4.2-§4.4)."""

    methods = ("GET", "POST", "DELETE")
    sections = {"GET": "rest:consumer", "POST": "rest:producer", "DELETE": "rest:producer"}
    prefix = "/q/"
    jsonp_methods = ("GET", "POST", "DELETE")

    async def get(self):
        if self.request.path == self.prefix:
            await self.grant(None)
            return self.reply(queue_list_page(await self.ctx.core.queues()), crlf=False)
        name = await self.queue_name()
        callback = self.callback()
        await self.grant(name)
        try:
            message = await self.ctx.core.hard_get(name)
        except EmptyQueue:
            return self.no_content()
        self.reply(message_json(message), callback=callback)

    async def post(self):
        await add(self, await self.queue_name())

    async def delete(self):
        name = await self.queue_name()
        callback = self.callback()
        await self.grant(name)
        existed = await self.ctx.core.purge(name)
        self.reply(json_text({"queue": name, "status": existed}), callback=callback)


class CollectdHandler(QueueHandler):
    """`/collectd/<x>` of the collectd plugin: GET and DELETE as `/q/<x>`, POST ingests
    collectd's write_http bodies (§10)."""

    prefix = "/collectd/"
    raw_body = True

    async def post(self):
        kind = self.path_queue()
        if kind == "data":
            queue = collectd.DATA_QUEUE
            value = collectd.data_message(self.request.body,
                                          self.request.headers.get("Content-Type"))
            if value is None:
                raise RestMQError.with_status(503, "unexpected Content-Type")
        elif kind == "event":
            queue, value = collectd.EVENT_QUEUE, collectd.event_message(self.request.body)
        else:
            raise BadRequest("unknown collectd kind")
        callback = self.callback()
        await self.grant(queue)
        self.reply_key(await self.ctx.core.add(queue, value), callback)


class PolicyHandler(BaseHandler):
    """`/p/<q>`: read and set the delivery policy (§4.6)."""

    methods = ("GET", "POST")
    sections = {"GET": "rest:consumer", "POST": "rest:producer"}
    prefix = "/p/"
    jsonp_methods = ("GET", "POST")

    async def get(self):
        name = await self.queue_name()
        callback = self.callback()
        await self.grant(name)
        policy = await self.ctx.core.get_policy(name)
        self.reply(json_text({"queue": name, "value": policy}), callback=callback)

    async def post(self):
        name = await self.queue_name()
        policy = self.required("policy")
        callback = self.callback()
        await self.grant(name)
        if policy not in corelib.POLICY_NAMES:
            return self.reply("null", callback=callback)
        await self.ctx.core.set_policy(name, policy)
        self.reply(json_text("OK") if callback else "OK", callback=callback)


class ControlHandler(BaseHandler):
    """`/control/<q>`: flow control, start and stop live delivery (§4.7)."""

    methods = ("GET", "POST")
    sections = {"GET": "rest:consumer", "POST": "rest:producer"}
    prefix = "/control/"
    jsonp_methods = ("POST",)

    async def get(self):
        redis = self.ctx.redis_description
        if self.request.path == self.prefix:
            await self.grant(None)
            rows = await self.ctx.core.stats()
            queues = {row.name: {"queue": row.name,
                                 "status": corelib.status_flag(row.status or None)}
                      for row in rows}
            body = {"redis": redis, "queues": queues, "count": len(rows)}
        else:
            name = await self.queue_name()
            await self.grant(name)
            stored = await self.ctx.core.get_status(name)
            body = {"redis": redis, "queue": name,
                    "status": {"queue": name, "status": corelib.status_flag(stored)}}
        self.reply(json_text(body), ctype=JSON)

    async def post(self):
        name = await self.queue_name()
        status = self.arg("status")
        callback = self.callback()
        await self.grant(name)
        if status not in ("start", "stop"):
            body = {"stat": f"invalid status: {status}"}
        else:
            await self.ctx.core.set_status(name, status == "start")
            body = {"stat": {"queue": name, "status": 1 if status == "start" else 0}}
        self.reply(json_text(body), callback=callback, semicolon=False)


class StatsHandler(BaseHandler):
    """`/stats/` and `/stats/<q>` (§4.8)."""

    methods = ("GET",)
    sections = {"GET": "rest:consumer"}
    prefix = "/stats/"
    jsonp_methods = ("GET",)

    async def get(self):
        redis = self.ctx.redis_description
        if self.request.path == self.prefix:
            callback = self.callback()
            await self.grant(None)
            rows = await self.ctx.core.stats()
            queues = {row.name: {
                "name": row.name, "len": row.length,
                "status": "" if not row.status else (1 if row.status == "1" else 0),
                "policy": int(row.policy) if row.policy in ("1", "2") else "",
                "policy_name": corelib.policy_name(row.policy)} for row in rows}
            body = {"queues": queues, "redis": redis, "count": len(rows)}
        else:
            name = await self.queue_name()
            callback = self.callback()
            await self.grant(name)
            body = {"redis": redis, "queue": name, "len": await self.ctx.core.length(name)}
        self.reply(json_text(body), ctype=JSON, crlf=False, callback=callback, semicolon=False)
