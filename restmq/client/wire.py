"""What every call sends and how its reply is read, shared by the blocking Client and the
Twisted TxClient: the calls are written once here (class Api), each building a Request that the
concrete client sends with its own I/O and retry loop."""
from __future__ import annotations

import base64
import json
import random
import urllib.parse
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from restmq.client.errors import (OutcomeUnknown, ProtocolMismatch, RestMQError, Unavailable,
                                  error_for)
from restmq.client.models import Config, Health, Info, Lease, Message, Redrive, Settled

AUTO = "auto"  # idempotency_key=AUTO: a fresh UUID4 per call when retries are on
FORM = "application/x-www-form-urlencoded"


@dataclass
class Request:
    method: str
    path: str                        # percent-encoded, below the client's base URL
    args: dict = field(default_factory=dict)
    body: bytes | None = None        # a raw body instead of form arguments
    headers: dict = field(default_factory=dict)
    parse: Callable[[int, bytes], Any] = lambda status, body: body
    v2: bool = False                 # needs a protocol-2 server
    resend: bool = False             # may be sent again after it went out (503, lost reply)
    auto_key: bool = False           # carries an Idempotency-Key the client chose
    wait: float = 0.0                # a long poll's seconds, added to the call's timeout
    what: str = ""

    @property
    def needs_protocol(self) -> bool:
        return self.v2 or self.auto_key

    def encoded(self) -> tuple[str, bytes | None, dict]:
        """(path with query, body, headers) ready to send."""
        args = {k: _text(v) for k, v in self.args.items() if v is not None}
        headers = dict(self.headers)
        if self.method in ("GET", "DELETE"):
            query = urllib.parse.urlencode(args)
            return (self.path + ("?" + query if query else "")), None, headers
        if self.body is not None:
            query = urllib.parse.urlencode(args)
            return (self.path + ("?" + query if query else "")), self.body, headers
        headers["Content-Type"] = FORM
        return self.path, urllib.parse.urlencode(args).encode("utf-8"), headers


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def for_protocol(request: Request, protocol: int) -> Request:
    """The request as it may go to a server of `protocol`. A protocol-1 server would ignore v2
    arguments (so a delayed add would be delivered at once) and answers v2 routes with 404:
    such calls are refused here. Its adds have no idempotency, so a POST whose reply is lost
    is never sent again."""
    if protocol >= 2:
        return request
    if request.v2:
        raise ProtocolMismatch(404, f"{request.what} needs protocol 2; this server answers "
                                    "404 to /health (protocol 1)")
    headers = {k: v for k, v in request.headers.items()
               if not (request.auto_key and k == "Idempotency-Key")}
    resend = request.resend and request.method == "GET"
    return replace(request, headers=headers, resend=resend, auto_key=False)


def lost(request: Request, url: str, error) -> Unavailable:
    """The error of a request whose last attempt got no reply: only a read (GET) that may be
    sent again changed nothing; anything else may have taken effect."""
    reason = f"{request.what}: no reply from {url}: {error}"
    if request.method == "GET" and request.resend:
        return Unavailable(None, reason)
    return OutcomeUnknown(None, reason, request.headers.get("Idempotency-Key"))


def protocol_of(status: int, body: bytes) -> int:
    """The protocol a server speaks, from its reply to GET /health: the route came with
    protocol 2, so a 503 (Redis down) still means 2 and a 404 means 1."""
    if status == 404:
        return 1
    if status == 200:
        try:
            return int(json.loads(body).get("protocol", 2))
        except (ValueError, AttributeError, TypeError):
            return 2
    if status == 503:
        return 2
    raise error_for(status, reason_of(body))


def reason_of(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace").strip() or "no reason given"


def check(status: int, body: bytes) -> None:
    if status >= 400:
        raise error_for(status, reason_of(body))
    if status >= 300:
        raise RestMQError(status, f"unexpected redirect ({reason_of(body)})")


def backoff(attempt: int) -> float:
    """Seconds before retry number `attempt` (1, 2, ...): 0.1 s doubling up to 2 s, each
    drawn from its upper half so that retries of many clients spread out."""
    ceiling = min(2.0, 0.1 * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def basic_auth(auth: tuple[str, str] | None, auth_key: str | None) -> dict:
    headers = {}
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode("utf-8")).decode("ascii")
        headers["Authorization"] = "Basic " + token
    if auth_key:
        headers["X-Auth-Key"] = auth_key
    return headers


def qpath(prefix: str, queue: str) -> str:
    if not queue:
        raise ValueError("a queue name is required")
    return prefix + urllib.parse.quote(queue, safe="")


def _json(status: int, body: bytes) -> Any:
    check(status, body)
    return json.loads(body) if status != 204 else None


def _receipts(receipts: str | Iterable[str]) -> str:
    if isinstance(receipts, str):
        return receipts
    joined = ",".join(receipts)
    if not joined:
        raise ValueError("at least one receipt is required")
    return joined


class Api:
    """The calls of the client library. Subclasses provide `_call(Request)`, which returns the
    parsed result (Client) or a Deferred of it (TxClient), and `retries`."""

    retries = 3

    def _call(self, request: Request):  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    # -- producing ---------------------------------------------------------------------------

    def _key(self, idempotency_key) -> tuple[str | None, bool]:
        if idempotency_key == AUTO:
            return (uuid.uuid4().hex if self.retries > 0 else None), True
        return idempotency_key, False

    def add(self, queue: str, value: str, ttl: int | None = None, delay: int | None = None,
            eta: float | None = None, priority: int | None = None,
            idempotency_key: str | None = AUTO):
        """Adds one message; returns its key (`jobs:7`)."""
        key, auto = self._key(idempotency_key)
        v2 = any(x is not None for x in (delay, eta, priority)) or (key is not None and not auto)

        def parse(status, body):
            check(status, body)
            return body.decode("utf-8").strip()

        return self._call(Request(
            "POST", qpath("/q/", queue),
            args={"value": value, "ttl": ttl, "delay": delay, "eta": eta, "priority": priority},
            headers={"Idempotency-Key": key} if key else {}, parse=parse, v2=v2,
            resend=key is not None, auto_key=auto and key is not None, what="add"))

    def add_batch(self, queue: str, items: list, idempotency_key: str | None = AUTO):
        """Adds 1 ... 100 messages at once, all or none; items are strings or dicts with
        `value` and optionally `ttl`, `delay`, `eta`, `priority`. Returns their keys."""
        key, auto = self._key(idempotency_key)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Idempotency-Key"] = key
        return self._call(Request(
            "POST", qpath("/batch/", queue), body=json.dumps(list(items)).encode("utf-8"),
            headers=headers, parse=lambda s, b: _json(s, b)["keys"], v2=True,
            resend=key is not None, auto_key=auto and key is not None, what="add_batch"))

    # -- consuming ---------------------------------------------------------------------------

    def get(self, queue: str):
        """Takes the oldest message for good (a hard get, at most once); None when empty."""
        def parse(status, body):
            data = _json(status, body)
            return None if data is None else Message(queue, data["key"], data["value"])
        # a hard get whose reply is lost has consumed a message: never sent twice
        return self._call(Request("GET", qpath("/q/", queue), parse=parse, what="get"))

    def pop(self, queue: str, limit: int = 1, wait: int = 0):
        """Takes up to `limit` messages, waiting up to `wait` s for one; [] when none."""
        def parse(status, body):
            data = _json(status, body)
            return [] if data is None else [Message(queue, m["key"], m["value"])
                                            for m in data["messages"]]
        return self._call(Request("POST", qpath("/pop/", queue),
                                  args={"limit": limit, "wait": wait or None}, parse=parse,
                                  v2=True, resend=True, wait=wait, what="pop"))

    def claim(self, queue: str, limit: int = 1, lease: int | None = None, wait: int = 0):
        """Leases up to `limit` messages for `lease` s (the queue's default when None)."""
        def parse(status, body):
            data = _json(status, body)
            return [] if data is None else [self._lease(queue, m) for m in data["messages"]]
        # sent again after a lost reply, a claim only leaves a lease to lapse: at least once
        return self._call(Request("POST", qpath("/claim/", queue),
                                  args={"limit": limit, "lease": lease, "wait": wait or None},
                                  parse=parse, v2=True, resend=True, wait=wait, what="claim"))

    def _lease(self, queue: str, m: dict) -> Lease:
        return Lease(queue, m["key"], m["value"], receipt=m["receipt"],
                     deliveries=int(m["deliveries"]), lease_until=float(m["lease_until"]),
                     client=self)

    def ack(self, queue: str, receipts):
        def parse(status, body):
            data = _json(status, body)
            return Settled(queue, data["acked"], data["stale"])
        return self._settle("ack", queue, receipts, {}, parse)

    def extend(self, queue: str, receipts, lease: int):
        def parse(status, body):
            data = _json(status, body)
            until = {e["receipt"]: float(e["lease_until"]) for e in data["extended"]}
            return Settled(queue, list(until), data["stale"], lease_until=until)
        return self._settle("extend", queue, receipts, {"lease": lease}, parse)

    def release(self, queue: str, receipts, delay: int = 0):
        def parse(status, body):
            data = _json(status, body)
            return Settled(queue, data["released"], data["stale"], data["dead_lettered"])
        return self._settle("release", queue, receipts, {"delay": delay or None}, parse)

    def _settle(self, route, queue, receipts, args, parse):
        args = {"receipt": _receipts(receipts), **args}
        return self._call(Request("POST", qpath(f"/{route}/", queue), args=args, parse=parse,
                                  v2=True, resend=True, what=route))

    def peek(self, queue: str, limit: int = 10, after: str | None = None):
        """Pending messages in consumption order, not consumed: ([Message], next key)."""
        def parse(status, body):
            data = _json(status, body)
            return ([Message(queue, m["key"], m["value"], m.get("priority"))
                     for m in data["messages"]], data.get("next"))
        return self._call(Request("GET", qpath("/peek/", queue),
                                  args={"limit": limit, "after": after}, parse=parse,
                                  v2=True, resend=True, what="peek"))

    # -- administration ----------------------------------------------------------------------

    def config(self, queue: str):
        return self._call(Request("GET", qpath("/config/", queue), parse=_config, v2=True,
                                  resend=True, what="config"))

    def set_config(self, queue: str, unset: Iterable[str] | str | None = None, **attrs):
        """Sets the given attributes (passed through as they are) and removes `unset` ones."""
        if unset is not None and not isinstance(unset, str):
            unset = ",".join(unset)
        return self._call(Request("POST", qpath("/config/", queue),
                                  args={**attrs, "unset": unset or None}, parse=_config,
                                  v2=True, resend=True, what="set_config"))

    def clear_config(self, queue: str):
        """Removes the queue's configuration; True when there was one."""
        return self._call(Request("DELETE", qpath("/config/", queue),
                                  parse=lambda s, b: bool(_json(s, b)["deleted"]), v2=True,
                                  resend=True, what="clear_config"))

    def info(self, queue: str):
        def parse(status, body):
            d = _json(status, body)
            return Info(queue, int(d["pending"]), int(d["inflight"]), int(d["delayed"]),
                        d.get("status"), d.get("policy"), d.get("dead_letter"),
                        d.get("next_due"), raw=d)
        return self._call(Request("GET", qpath("/info/", queue), parse=parse, v2=True,
                                  resend=True, what="info"))

    def redrive(self, queue: str, to: str | None = None, limit: int = 100):
        def parse(status, body):
            d = _json(status, body)
            return Redrive(queue, [(m["from"], m["to"]) for m in d["moved"]],
                           int(d["remaining"]), d.get("stopped"))
        return self._call(Request("POST", qpath("/redrive/", queue),
                                  args={"to": to, "limit": limit}, parse=parse, v2=True,
                                  resend=True, what="redrive"))

    def health(self):
        def parse(status, body):
            if status == 404:
                raise ProtocolMismatch(404, "this server has no /health (protocol 1)")
            d = _json(status, body)
            return Health(d.get("status", ""), int(d.get("protocol", 2)), d.get("version"),
                          d.get("redis") or {}, list(d.get("warnings") or []), raw=d)
        return self._call(Request("GET", "/health", parse=parse, resend=True, what="health"))


def _config(status: int, body: bytes) -> Config:
    d = _json(status, body)
    return Config(d["queue"], d["config"], list(d["set"]))


def stream_line(line: bytes) -> tuple[bool, dict | None]:
    """One comet line or SSE `data:` payload: (ended, message). `null` ends the stream."""
    data = json.loads(line)
    return (data is None), data
