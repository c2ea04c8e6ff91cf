"""The cyclone Application and its thin handlers: parse the request, call the core, reply.

Domain exceptions become `{"error": reason}` replies in one place, BaseHandler.
"""
from __future__ import annotations

import html
import mimetypes
import re
import time
from email.utils import formatdate
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import cyclone.web
from cyclone import httputil
from twisted.internet import task
from twisted.logger import Logger
from twisted.python.failure import Failure

from restmq import acl, core as corelib
from restmq import _cyclone_py3 as compat
from restmq._cyclone_py3 import Application, ChunkedTransferEncoding, CoroutineHandlerMixin
from restmq.delivery import streams
from restmq.frontends import collectd, jsoncmd, xmlrpc
from restmq.jsontext import json_text
from restmq.errors import (BadRequest, BodyTooLarge, EmptyQueue, InvalidArgument, InvalidName,
                           MethodNotAllowed, MissingArgument, NotFound, RestMQError, Unauthorized)

HTML = "text/html; charset=UTF-8"
MAX_UNSENT = 16 * 1024 * 1024  # a live consumer further behind than this is disconnected
SSE_KEEPALIVE = 15.0
JSON = "application/json"
CALLBACK = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)*\Z")
TTL_MAX = 2147483647


_date_cache = [0, ""]


def http_date() -> str:
    """The Date header, formatted once per second instead of once per reply."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return _date_cache[1]


class AccessLog:
    """The access log, buffered: lines are collected and written as one log event per second
    (or per 256 requests), which costs far less than one event per request."""

    log = Logger(namespace="restmq.access")

    def __init__(self, clock: Any = None, limit: int = 256):
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock, self.limit = clock, limit
        self.lines: list[str] = []
        self._flush_call = None

    def __call__(self, handler: cyclone.web.RequestHandler) -> None:
        request = handler.request
        self.lines.append(f'{request.remote_ip} "{request.method} {loggable_uri(request.uri)} '
                          f'{request.version}" {handler.get_status()} '
                          f'{1000.0 * request.request_time():.2f}ms')
        if len(self.lines) >= self.limit:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(1.0, self.flush)

    def flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        lines, self.lines = self.lines, []
        if lines:
            self.log.info("{lines}", lines="\n".join(lines))


def loggable_uri(uri: str) -> str:
    """The URI with the value of every argument the server reads as `authkey` (however its
    name is percent-encoded) replaced by `[redacted]`: logs outlive the keys they would leak.
    Headers, where the other credentials travel, are never logged."""
    path, mark, query = uri.partition("?")
    if not mark:
        return uri
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, equals, _ = part.partition("=")
        decoded = unquote_to_bytes(name.replace("+", " ").encode("latin-1"))
        if equals and decoded == b"authkey":
            parts[i] = name + "=[redacted]"
    return path + "?" + "&".join(parts)


class _AnyMethod:
    """Lets every method reach `prepare`, so routing (404) is decided before the method (405)."""

    def __contains__(self, method: str) -> bool:
        return True


def bounded_int(text: str, maximum: int) -> int | None:
    """ASCII decimal digits (leading zeros allowed) as an int of at most `maximum`, else None.
    The length is checked before int(), which refuses over 4,300 digits with a ValueError."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(maximum)):
        return None
    value = int(digits)
    return value if value <= maximum else None


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(name) from None


def parse_urlencoded(raw: bytes, into: dict[str, str]) -> None:
    """Percent-decode, then strict UTF-8; the last occurrence of a name wins."""
    for part in raw.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        name_bytes = unquote_to_bytes(name.replace(b"+", b" "))
        name_text = _decode(name_bytes, name_bytes.decode("utf-8", "replace"))
        into[name_text] = _decode(unquote_to_bytes(value.replace(b"+", b" ")), name_text)


@dataclass
class Context:
    """What every handler needs: the core and the settings of this process."""

    core: corelib.Core
    acl: Any = None
    delivery: Any = None
    redis_description: str = ""
    static: dict[str, bytes] = field(default_factory=dict)


class BaseHandler(CoroutineHandlerMixin, cyclone.web.RequestHandler):
    """Method check, body limit, ACL, argument parsing and error replies for every route.

    Subclasses list `methods`, the ACL category per method in `sections`, the route `prefix`
    (for the queue name in the path) and the methods whose replies take JSONP.
    """

    SUPPORTED_METHODS = _AnyMethod()
    methods: tuple[str, ...] = ()
    sections: dict[str, str] = {}
    prefix = ""
    jsonp_methods: tuple[str, ...] = ()
    api = True
    raw_body = False  # the POST body is the payload (XML-RPC, collectd), never arguments
    log = Logger()

    def initialize(self, ctx: Context):
        self.ctx = ctx
        self._args: dict[str, str] | None = None

    def clear(self):
        # cyclone's clear() formats the date with strftime on every call (twice a request).
        self._headers = {"Server": "RestMQ", "Content-Type": HTML, "Date": http_date()}
        if self.api:
            self._headers["Cache-Control"] = "no-store"
            self._headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
            self._headers["X-Content-Type-Options"] = "nosniff"
        self._list_headers = []
        if not self.request.supports_http_1_1() and \
                self.request.headers.get("Connection") == "Keep-Alive":
            self._headers["Connection"] = "Keep-Alive"
        self._write_buffer = []
        self._status_code = 200
        self._reason = "OK"

    def compute_etag(self):
        return None

    def _generate_headers(self):
        if self._status_code == 204:  # cyclone would add "Content-Length: 0" (RFC 9110 §8.6)
            self._headers.pop("Content-Length", None)
        return super()._generate_headers()

    def prepare(self):
        method = self.request.method
        if method not in self.methods:
            raise MethodNotAllowed()
        if self.request.body_too_large:
            raise BodyTooLarge()
        self.authkey = self._presented_key()
        section = self.sections.get(method)
        if section and self.authkey is None and self.ctx.acl is not None:
            self.ctx.acl.check(section, self.request)

    def _presented_key(self) -> str | None:
        """`X-Auth-Key`, else the `authkey` argument (§9.5); empty means none. Undecodable
        arguments are reported later, at the validation step."""
        key = self.request.headers.get("X-Auth-Key", "")
        if key:
            return key
        try:
            return self.arg("authkey")
        except BadRequest:
            return None

    async def grant(self, queue: str | None) -> None:
        """With an auth key presented, judge it against its record for `queue` (None: the
        request addresses every queue); without one the ACL file already decided."""
        if self.authkey is None:
            return
        record = await self.ctx.core.authkey(self.authkey)
        if acl.judge_record(record, queue) != "authorized":
            raise Unauthorized()

    # -- request parsing -------------------------------------------------------------------

    @property
    def args(self) -> dict[str, str]:
        """Query and form arguments (§1.2), parsed on first use; BadRequest when undecodable."""
        if self._args is None:
            args: dict[str, str] = {}
            parse_urlencoded(self.request.query.encode("latin-1"), args)
            if self.request.method == "POST" and self.request.body and not self.raw_body:
                self._parse_body(args)
            self._args = args
        return self._args

    def _parse_body(self, args: dict[str, str]) -> None:
        ctype = self.request.headers.get("Content-Type", "")
        media = ctype.split(";", 1)[0].strip().lower()
        if media == "application/x-www-form-urlencoded":
            parse_urlencoded(self.request.body, args)
        elif media == "multipart/form-data":
            for param in ctype.split(";")[1:]:
                name, _, value = param.strip().partition("=")
                if name.strip().lower() == "boundary" and value:
                    parts: dict[str, list[bytes]] = {}
                    try:
                        httputil.parse_multipart_form_data(
                            value.strip('"').encode("latin-1"), self.request.body, parts, {})
                    except (ValueError, LookupError, UnicodeError) as e:
                        # cyclone's parser raises on malformed part headers: such a body
                        # holds no arguments, as any other body we cannot read as a form.
                        self.log.info("unreadable multipart body ignored: {error}", error=e)
                        parts = {}
                    for key, values in parts.items():
                        name_text = key if isinstance(key, str) else _decode(key, "?")
                        args[name_text] = _decode(values[-1], name_text)
                    break

    def arg(self, name: str) -> str | None:
        """An argument, or None when absent or empty."""
        return self.args.get(name) or None

    def required(self, name: str) -> str:
        value = self.arg(name)
        if value is None:
            raise MissingArgument(name)
        return value

    def path_queue(self) -> str:
        """The queue name after the route prefix, percent-decoded, then UTF-8 (§1.1)."""
        raw = unquote_to_bytes(self.request.path[len(self.prefix):].encode("latin-1"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidName() from None

    async def queue_name(self) -> str:
        """The path's queue name, valid or already registered (Core.admit)."""
        return await self.ctx.core.admit(self.path_queue())

    def callback(self) -> str | None:
        if self.request.method not in self.jsonp_methods:
            return None
        name = self.arg("callback")
        if name is not None and (len(name) > 128 or not CALLBACK.match(name)):
            if self.request.method != "GET":
                # Only a GET can be loaded by a <script>, so only there is JSONP needed: a
                # POST or DELETE answers as without a callback (the original dashboard
                # POSTs `callback=?`).
                return None
            raise InvalidArgument("callback")
        return name

    # -- replies -----------------------------------------------------------------------------

    def reply(self, body: str, ctype: str = HTML, crlf: bool = True, callback: str | None = None,
              semicolon: bool = True) -> None:
        """Write `body` (JSON or text already rendered), JSONP-wrapped when `callback` is set."""
        if callback:
            body = f"{callback}({body}){';' if semicolon else ''}"
            # A JSONP reply is loaded as a <script>: with nosniff a browser refuses to run it
            # under the route's JSON or HTML type, which the spec keeps (§1.4).
            self.clear_header("X-Content-Type-Options")
        self.set_header("Content-Type", ctype)
        self.finish(body + "\r\n" if crlf else body)

    def reply_key(self, key: str, callback: str | None) -> None:
        if callback:
            self.reply(json_text(key), callback=callback)
        else:
            self.reply(key)

    def redirect_to(self, location: str) -> None:
        self.set_status(302)
        self.set_header("Location", location)
        self.finish()

    def no_content(self) -> None:
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()

    def _handle_request_exception(self, e):
        value = getattr(e, "value", e)
        if isinstance(value, cyclone.web.HTTPError):
            value = NotFound() if value.status_code == 404 else MethodNotAllowed()
        if not isinstance(value, RestMQError):
            # cyclone hands over a Failure, or a bare exception from prepare(): log.failure
            # needs a Failure (outside an except block it would raise, and the request hang).
            self.log.failure("internal error in {method} {uri}",
                             failure=e if isinstance(e, Failure) else Failure(value),
                             method=self.request.method, uri=loggable_uri(self.request.uri))
            value = RestMQError()
        if getattr(value, "detail", None):
            self.log.warn("{reason} ({detail}) in {method} {uri}", reason=value.reason,
                          detail=value.detail, method=self.request.method,
                          uri=loggable_uri(self.request.uri))
        self.send_error_reply(value)

    def send_error_reply(self, error: RestMQError) -> None:
        if self._headers_written:
            if not self._finished:
                self.finish()
            return
        self.clear()
        self.set_status(error.status)
        self.set_header("Content-Type", JSON)
        if isinstance(error, MethodNotAllowed):
            self.set_header("Allow", ", ".join(self.methods))
        for name, value in error.headers.items():
            self.set_header(name, value)
        if getattr(error, "challenge", False):
            self.set_header("WWW-Authenticate", 'Basic realm="RestMQ Restricted Access"')
        if not self._finished:
            self.finish(json_text({"error": error.reason}))


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


def queue_list_page(names: list[str]) -> str:
    items = "".join(
        f'<li><a href="/q/{quote(name, safe="/:@-._~")}">/q/{html.escape(name)}</a></li>\n'
        for name in names)
    return ("<html><head><title>avaliable queue for REST</title></head><body><ul>\n"
            f"{items}</ul></body></html>\n")


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


class JobsHandler(BaseHandler):
    """`/j/<q>`: an HTML page of a queue's newest pending keys (§4.9). It shows pending keys
    and scans the keyspace, so it is a consumer's read like the others (the spec had no ACL)."""

    methods = ("GET",)
    sections = {"GET": "rest:consumer"}
    prefix = "/j/"

    async def get(self):
        name = await self.queue_name()
        await self.grant(name)
        objects, length, latest, complete = await self.ctx.core.jobs(name)
        self.reply(jobs_page(name, objects, length, latest, complete), crlf=False)


def jobs_page(name: str, objects: int, length: int, latest: list[str],
              complete: bool = True) -> str:
    e = html.escape
    items = "".join(f"<li>{e(key)}</li>\n" for key in latest)
    count = objects if complete else f"at least {objects}"
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>jobs in queue {e(name)}</title></head><body>\n"
            f"<h1>jobs in queue {e(name)}</h1>\n"
            f"<p>queue name: {e(name)}</p>\n<p>queue objects: {count}</p>\n"
            f"<p>job count: {length}</p>\n<h2>latest 10 jobs</h2>\n<ul>\n{items}</ul>\n"
            "</body></html>\n")


class JsonProtocolHandler(BaseHandler):
    """`/queue`: GET redirects to the help page, POST runs a JSON command (§5)."""

    methods = ("GET", "POST")
    sections = {"POST": "rest:producer"}

    async def get(self):
        self.redirect_to("/static/help.html")

    async def post(self):
        command = self.arg("msg") or self.arg("body")
        if command is None:
            raise MissingArgument("body")
        outcome = await jsoncmd.run(self.ctx.core, command, authorize=self.grant)
        ctype = HTML if outcome.get("error") == "null resultset" else JSON
        self.reply(json_text(outcome), ctype=ctype, crlf=False)


class XmlRpcHandler(BaseHandler):
    """`POST /xmlrpc` (§6): the ACL check waits until the method is known."""

    methods = ("POST",)
    raw_body = True

    async def post(self):
        method, params = xmlrpc.parse_call(self.request.body)
        try:
            described = xmlrpc.find_method(method)
            if self.authkey is None and self.ctx.acl is not None:
                self.ctx.acl.check(described.section, self.request)
            params = await xmlrpc.checked_params(self.ctx.core, method, params)
            await self.grant(None if described.all_queues else params[0])
            body = xmlrpc.response(await xmlrpc.call(self.ctx.core, method, params))
        except xmlrpc.Fault as fault:
            body = xmlrpc.fault_response(fault)
        self.set_header("Content-Type", "text/xml")
        self.finish(body)


class StaticHandler(BaseHandler):
    """The packaged static/ files, served from memory; `/favicon.ico` and `/robots.txt` too."""

    methods = ("GET", "HEAD")
    api = False

    def get(self):
        path = self.request.path
        relative = path[len("/static/"):] if path.startswith("/static/") else path.lstrip("/")
        try:
            relative = unquote_to_bytes(relative.encode("latin-1")).decode("utf-8")
        except UnicodeDecodeError:
            raise NotFound() from None
        body = self.ctx.static.get(relative)
        if body is None:
            raise NotFound()
        ctype = mimetypes.guess_type(relative)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript",):
            ctype += "; charset=UTF-8"
        self.set_header("Content-Type", ctype)
        self.finish(body)

    head = get


class LiveHandler(BaseHandler):
    """Shared by the comet, WebSocket and SSE consumers: checks before the stream starts
    (name, ACL, Redis), registration with delivery, and one idempotent close path.

    A live handler is the streaming producer of its connection: Twisted pauses it when the
    connection's output backs up and resumes it once drained; a paused consumer gets no
    roundrobin message. Its StallWatch cuts it when the peer stops reading."""

    methods = ("GET",)
    queue: str | None = None
    done = False
    paused = False
    _producing = False  # registered as the connection's producer
    stall: streams.StallWatch | None = None

    async def start_live(self) -> str | None:
        """Validate the request and check Redis; returns the queue name, or None when the
        client left meanwhile. The caller starts its stream and then calls `join`."""
        name = await self.queue_name()
        self.jsonp = self.callback()
        await self.grant(name)
        await self.ctx.core.ping()
        connection = self.request.connection
        if self.done or not _open(connection.transport):
            # Gone while we waited for Redis: registering it would hand messages to nobody,
            # and there is nobody to answer either.
            return self._abandon()
        if getattr(connection, "live_stream", None) is not None:
            # Pipelined behind a stream that never ends: its answer could never come.
            self.log.info("request pipelined behind a live stream left unanswered: {uri}",
                          uri=loggable_uri(self.request.uri))
            return self._abandon()
        return name

    def _abandon(self) -> None:
        self.done = True
        self._auto_finish = False

    @property
    def ready(self) -> bool:
        return not self.done and not self.paused

    def join(self, name: str) -> None:
        self._auto_finish = False
        self.queue = name
        self.request.connection.live_stream = self
        transport = self.request.connection.transport
        self._producing = True
        transport.registerProducer(self, True)
        delivery = self.ctx.delivery
        streams.tune_stream(transport, delivery.stall_timeout)
        self.stall = streams.StallWatch(transport, delivery.clock, delivery.stall_timeout,
                                        self._stalled)
        delivery.register(name, self)

    def leave(self) -> None:
        """The one close path: on close, purge, error or cut; safe to call again."""
        self.done = True
        if self.queue is not None:
            self.ctx.delivery.unregister(self.queue, self)
        connection = self.request.connection
        if getattr(connection, "live_stream", None) is self:
            connection.live_stream = None  # a keep-alive connection may serve another request
        if self._producing:
            # A producer left registered would keep a closing connection open forever.
            self._producing = False
            connection.transport.unregisterProducer()

    def on_connection_close(self, reason: str | None = None):
        if reason and "timed out" in reason and not self.done:
            self.log.warn("live consumer of {queue} lost: {reason}", queue=self.queue,
                          reason=reason)  # the kernel gave up on its peer
        self.leave()
        if self.stall is not None and not _open(self.request.connection.transport):
            self.stall.stop()

    def cut(self, why: str) -> None:
        self.log.warn("live consumer of {queue} {why}: disconnected", queue=self.queue, why=why)
        self.leave()
        if self.stall is not None:
            self.stall.stop()
        self.request.connection.transport.abortConnection()

    def too_far_behind(self) -> bool:
        if streams.unsent_bytes(self.request.connection.transport) > MAX_UNSENT:
            self.cut("is more than 16 MiB behind")
            return True
        return False

    # -- IPushProducer: Twisted tells us when the connection's output backs up ------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.done:
            self.ctx.delivery.trigger(self.queue)

    def stopProducing(self) -> None:
        self._producing = False  # the transport forgets us itself

    def _stalled(self) -> None:
        self.cut(f"read nothing for {self.ctx.delivery.stall_timeout:g} s")

    # -- writing ----------------------------------------------------------------------------

    def start_stream(self, content_type: str) -> None:
        """Send the status line and headers now (chunked on HTTP/1.1)."""
        self.set_header("Content-Type", content_type)
        if not self.request.supports_http_1_1():
            # The body ends with the connection: keep-alive would leave the client waiting.
            self.clear_header("Connection")
            self.request.connection.no_keep_alive = True
        self.flush()
        self._chunked = self._headers.get("Transfer-Encoding") == "chunked"

    def write_raw(self, data: bytes) -> None:
        self.request.connection.transport.write(data)
        self.stall.wrote(len(data))

    def write_stream(self, pieces: list[bytes]) -> bool:
        """Write pieces straight to the transport, each in a chunk of its own (one message,
        one chunk), all in one write: cyclone's write/flush per message costs more than the
        rest of a delivery. False when nothing was written (gone, or cut just now)."""
        if self.done or self.too_far_behind():
            return False
        if self._chunked:
            pieces = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces]
        self.write_raw(b"".join(pieces))
        return True


def _open(transport) -> bool:
    return bool(transport.connected) and not getattr(transport, "disconnecting", False)


class CometHandler(LiveHandler):
    """`GET /c/<q>`: one line per message on a never-ending response (§7.2)."""

    sections = {"GET": "comet:consumer"}
    prefix = "/c/"
    jsonp_methods = ("GET",)

    async def get(self):
        name = await self.start_live()
        if name is None:
            return
        self.start_stream("text/plain")
        self.join(name)

    def _line(self, body: str) -> bytes:
        line = f"{self.jsonp}({body});\r\n" if self.jsonp else body + "\r\n"
        return line.encode("ascii")

    def send(self, batch: list[tuple[str, str]]) -> bool:
        return self.write_stream([self._line(text) for _, text in batch])

    def end(self) -> None:
        if not self.done:
            self.write_stream([self._line("null")])
            self.done = True
            self.finish()


class SSEHandler(LiveHandler):
    """`GET /sse/<q>`: Server-Sent Events, one event per message, a keepalive every 15 s."""

    sections = {"GET": "sse:consumer"}
    prefix = "/sse/"
    keepalive = None

    async def get(self):
        name = await self.start_live()
        if name is None:
            return
        self.start_stream("text/event-stream")
        self.join(name)
        self.keepalive = task.LoopingCall(self.write_stream, [b": keepalive\n\n"])
        self.keepalive.start(SSE_KEEPALIVE, now=False)

    def send(self, batch: list[tuple[str, str]]) -> bool:
        return self.write_stream([f"id: {key}\ndata: {text}\n\n".encode("utf-8")
                                  for key, text in batch])

    def end(self) -> None:
        if not self.done:
            self.write_stream([b"data: null\n\n"])
            self.done = True
            self.finish()

    def leave(self) -> None:
        if self.keepalive is not None and self.keepalive.running:
            self.keepalive.stop()
        super().leave()


class WebSocketHandler(LiveHandler):
    """`GET /ws/<q>`: RFC 6455; messages out as text frames, client messages echoed (§7.3)."""

    sections = {"GET": "websocket:consumer"}
    prefix = "/ws/"
    ws = None

    async def get(self):
        headers = self.request.headers
        name = await self.queue_name()
        if "websocket" not in _tokens(headers.get("Upgrade", "")):
            raise RestMQError.with_status(403, "expected WebSocket headers")
        if headers.get("Sec-WebSocket-Version", "").strip() != "13":
            raise RestMQError.with_status(426, "unsupported WebSocket version",
                                          Sec_WebSocket_Version="13")
        key = headers.get("Sec-WebSocket-Key", "").strip()
        if "upgrade" not in _tokens(headers.get("Connection", "")) or \
                not compat.websocket_key_valid(key):
            raise BadRequest("invalid WebSocket handshake")
        if await self.start_live() is None:
            return
        connection = self.request.connection
        connection.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nServer: RestMQ\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + compat.websocket_accept(key).encode() + b"\r\n\r\n")
        self._headers_written = True
        self.ws = compat.WebSocketConnection(
            connection.transport, self.application.settings.get("max_body", 1024 * 1024),
            on_message=self._echo, on_close=self.leave)
        pending, connection.upgrade_buffer = connection.upgrade_buffer or b"", None
        connection.rawDataReceived = self.ws.data_received
        self.join(name)
        if pending:
            self.ws.data_received(bytes(pending))

    def _echo(self, opcode: int, payload: bytes) -> None:
        self.ws.send(opcode, payload)

    def pauseProducing(self) -> None:
        # Stop reading too: echoes of what a peer sends but never reads would pile up here.
        self.request.connection.transport.pauseProducing()
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.request.connection.transport.resumeProducing()
        super().resumeProducing()

    def send(self, batch: list[tuple[str, str]]) -> bool:
        if self.done or self.ws.closing or self.too_far_behind():
            return False
        self.write_raw(b"".join(
            compat.ws_frame(compat.OP_TEXT, text.encode("ascii")) for _, text in batch))
        return True

    def end(self) -> None:
        if not self.done and not self.ws.closing:
            self.write_raw(compat.ws_frame(compat.OP_TEXT, b"null"))
            self.ws.close(compat.CLOSE_NORMAL)
        self.done = True


def _tokens(header: str) -> set[str]:
    return {token.strip().lower() for token in header.split(",")}


class NotFoundHandler(BaseHandler):
    methods = ()

    def prepare(self):
        raise NotFound()


def load_static() -> dict[str, bytes]:
    """Every file under the packaged static/ directory, by relative path."""
    files: dict[str, bytes] = {}

    def walk(folder, prefix):
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.is_file():
                files[prefix + entry.name] = entry.read_bytes()

    walk(resources.files("restmq") / "static", "")
    return files


def routes(ctx: Context, collectd_frontend: bool = False) -> list:
    kw = {"ctx": ctx}
    frontend = [(r"/collectd/.*", CollectdHandler, kw)] if collectd_frontend else []
    return frontend + [
        (r"/", RootHandler, kw),
        (r"/q/.*", QueueHandler, kw),
        (r"/c/.*", CometHandler, kw),
        (r"/ws/.*", WebSocketHandler, kw),
        (r"/sse/.*", SSEHandler, kw),
        (r"/p/.*", PolicyHandler, kw),
        (r"/control/.*", ControlHandler, kw),
        (r"/stats/.*", StatsHandler, kw),
        (r"/j/.*", JobsHandler, kw),
        (r"/queue", JsonProtocolHandler, kw),
        (r"/xmlrpc", XmlRpcHandler, kw),
        (r"/static/.*", StaticHandler, kw),
        (r"/(?:favicon\.ico|robots\.txt)", StaticHandler, kw),
        (r".*", NotFoundHandler, kw),
    ]


def make_application(ctx: Context, max_body: int = 1024 * 1024,
                     access_log: AccessLog | None = None,
                     collectd_frontend: bool = False) -> Application:
    """The Application; `access_log` None means no access log at all."""
    settings: dict[str, Any] = {"max_body": max_body,
                                "log_function": access_log or (lambda handler: None)}
    app = Application(routes(ctx, collectd_frontend), **settings)
    app.transforms = [ChunkedTransferEncoding]
    return app
