"""The base of every handler: the method check, the body limit, authorization from what each
route declares, the replies, and the one place where domain exceptions become
`{"error": reason}` replies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cyclone.web
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from restmq import acl
from restmq.core import Core
from restmq.errors import (BadRequest, BodyTooLarge, MethodNotAllowed, MissingArgument, NotFound,
                           RestMQError, Unauthorized)
from restmq.http.accesslog import http_date, loggable_uri
from restmq.http.args import ArgumentsMixin
from restmq.http.compat import CoroutineHandlerMixin
from restmq.jsontext import json_text

HTML = "text/html; charset=UTF-8"
JSON = "application/json"


EVERY_QUEUE = None  # the target of a request about every queue: an auth key needs `create`


class QueueSource:
    """Where a route's method finds the queue it works on. `resolve` is the first half of the
    validation step (docs/http-api.md#processing-order): it fires with a queue name that is
    valid or registered, or EVERY_QUEUE, and raises the request's 400 otherwise."""

    names_queue = True  # False: the method touches no queue, so there is no key to judge
    checks_acl = False  # True: the source consults the ACL file itself, once it knows how

    async def resolve(self, handler: BaseHandler) -> str | None:
        raise NotImplementedError


class FromPath(QueueSource):
    """The name after the route's prefix; with `or_every`, the bare prefix (`GET /q/`) is a
    request about every queue."""

    def __init__(self, or_every: bool = False):
        self.or_every = or_every

    async def resolve(self, handler):
        if self.or_every and handler.request.path == handler.prefix:
            return EVERY_QUEUE
        return await handler.ctx.core.admit(handler.path_queue())


class FromArgument(QueueSource):
    """The argument `name`; with `or_every`, its absence addresses every queue (`GET /`)."""

    def __init__(self, name: str, or_every: bool = False):
        self.name, self.or_every = name, or_every

    async def resolve(self, handler):
        value = handler.arg(self.name)
        if value is None:
            if self.or_every:
                return EVERY_QUEUE
            raise MissingArgument(self.name)
        return await handler.ctx.core.admit(value)


class Fixed(QueueSource):
    """A queue of the route's own choosing (collectd's): `pick(handler)` names it or raises."""

    def __init__(self, pick):
        self.pick = pick

    async def resolve(self, handler):
        return self.pick(handler)


class FromBody(QueueSource):
    """A queue known only once the body is parsed (the JSON protocol, XML-RPC): the handler's
    `resolve_queue()` parses and checks it. It may answer the request itself, a field error or
    a fault that touches no queue, and then nothing is left to authorize."""

    def __init__(self, checks_acl: bool = False):
        self.checks_acl = checks_acl

    async def resolve(self, handler):
        return await handler.resolve_queue()


class NoQueue(QueueSource):
    """The method touches no queue: a redirect, a packaged file."""

    names_queue = False

    async def resolve(self, handler):
        return None


PATH = FromPath()
PATH_OR_EVERY = FromPath(or_every=True)
NO_QUEUE = NoQueue()


class _AnyMethod:
    """Lets every method reach `prepare`, so routing (404) is decided before the method (405)."""

    def __contains__(self, method: str) -> bool:
        return True


@dataclass
class Context:
    """What every handler needs: the core and the settings of this process."""

    core: Core
    acl: Any = None
    delivery: Any = None
    pop_lease: int = 30  # seconds: the safety lease of /pop/ (--pop-lease)
    redis_description: str = ""
    health: Any = None  # restmq.redis.health.Health: the report of /health
    metrics: Any = None  # restmq.metrics.ProcessMetrics: this process's series of /metrics
    metrics_queues: int = 10000  # --metrics-queues
    static: dict[str, bytes] = field(default_factory=dict)


class BaseHandler(ArgumentsMixin, CoroutineHandlerMixin, cyclone.web.RequestHandler):
    """Method check, body limit, authorization, argument parsing (ArgumentsMixin) and error
    replies for every route.

    Subclasses list `methods`, and declare per method the ACL category in `sections` (a method
    without one is never checked against the ACL file) and a QueueSource in `queue_from`; the
    base handler applies both before the method runs, which finds its queue in `self.target`.
    A method's argument checks go in `check_<method>`, run between the two. Subclasses also
    set the route `prefix` (for the queue name in the path) and the methods whose replies take
    JSONP.
    """

    SUPPORTED_METHODS = _AnyMethod()
    methods: tuple[str, ...] = ()
    sections: dict[str, str] | None = None  # None: undeclared, and every request is refused
    queue_from: dict[str, QueueSource] | None = None
    target: str | None = EVERY_QUEUE
    # Queues a request names besides its own, set by its check_<method> from its arguments (a
    # redrive's `to`, a configuration's `dead_letter`; EVERY_QUEUE for a request that reaches
    # queues it cannot name in advance): an auth key must grant them too.
    also_addressed: tuple[str | None, ...] = ()
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
        self._headers = {"Server": "RestMQ", "Content-Type": HTML,
                         "Date": http_date(self.settings.get("wall_time"))}
        if self.api:
            self._headers["Cache-Control"] = "no-store"
            self._headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
            self._headers["X-Content-Type-Options"] = "nosniff"
        self._list_headers = []
        if not self.request.supports_http_1_1() and "keep-alive" in \
                self.request.headers.get("Connection", "").lower():
            self._headers["Connection"] = "Keep-Alive"  # the connection keeps it open too
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
        return defer.ensureDeferred(self._authorize(method))

    async def _authorize(self, method: str) -> None:
        """The steps between the body size and the work (docs/http-api.md#processing-order),
        from the route's declarations: the ACL file, the queue name, the method's arguments,
        the auth key."""
        source = (self.queue_from or {}).get(method)
        if source is None or self.sections is None:
            # A route nobody declared is refused (500) rather than served unchecked.
            raise RuntimeError(f"{type(self).__name__} declares no authorization for {method}")
        section = self.sections.get(method)
        if section:
            self.check_acl(section)
        self.target = await source.resolve(self)
        if self._finished:
            return  # the source answered, with a reply that touches no queue
        check = getattr(self, f"check_{method.lower()}", None)
        if check is not None:
            check()
        if source.names_queue:
            await self.grant(self.target, *self.also_addressed)

    def check_acl(self, section: str) -> None:
        """The ACL file's `section` decides, unless an auth key was presented: the key is
        judged instead, once the request is validated."""
        if self.authkey is None and self.ctx.acl is not None:
            self.ctx.acl.check(section, self.request)

    def _presented_key(self) -> str | None:
        """`X-Auth-Key`, else the `authkey` argument (docs/access-control.md#auth-keys); empty
        means none. Undecodable
        arguments are reported later, at the validation step."""
        key = self.request.headers.get("X-Auth-Key", "")
        if key:
            return key
        try:
            return self.arg("authkey")
        except BadRequest:
            return None

    async def grant(self, *queues: str | None) -> None:
        """With an auth key presented, judge it against its record for each of `queues`
        (EVERY_QUEUE: the request addresses every queue); without one the ACL file already
        decided. Only `_authorize` calls it: handlers declare, they do not remember."""
        if self.authkey is None:
            return
        record = await self.ctx.core.authkey(self.authkey)
        if any(acl.judge_record(record, queue) != "authorized" for queue in queues):
            raise Unauthorized()

    # -- replies -----------------------------------------------------------------------------

    def reply(self, body: str, ctype: str = HTML, crlf: bool = True, callback: str | None = None,
              semicolon: bool = True) -> None:
        """Write `body` (JSON or text already rendered), JSONP-wrapped when `callback` is set."""
        if callback:
            body = f"{callback}({body}){';' if semicolon else ''}"
            # A JSONP reply is loaded as a <script>: with nosniff a browser refuses to run it
            # under the route's JSON or HTML type, which it keeps (docs/http-api.md#jsonp).
            self.clear_header("X-Content-Type-Options")
        self.set_header("Content-Type", ctype)
        self.finish(body + "\r\n" if crlf else body)

    def reply_json(self, obj: Any) -> None:
        """The reply of the routes that came with leases: application/json without CRLF,
        never wrapped as JSONP."""
        self.reply(json_text(obj), ctype=JSON, crlf=False)

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
