"""The producers' side of the REST routes: the arguments of an add (`POST /`, `POST /q/<q>`)
with a delay or eta, a priority and an idempotency key, and the replay of an idempotent add
(docs/http-api.md#add, #idempotent-adds)."""
from __future__ import annotations

from restmq.core import Added, Item, arguments
from restmq.core.adds import fingerprint
from restmq.errors import MissingArgument
from restmq.http.base import BaseHandler

REPLAYED = "Idempotent-Replayed"


def check_add(handler: BaseHandler) -> None:
    """The arguments of an add, in their order: value, ttl, delay, eta, priority, the
    idempotency key, callback. Sets `items` (one) and `idempotency` on the handler."""
    value = handler.arg("msg") or handler.arg("value")
    if value is None:
        raise MissingArgument("value")
    ttl = handler.arg("ttl")
    ttl = None if ttl is None else arguments.integer(ttl, "ttl", 1, arguments.TTL_MAX)
    delay = arguments.delay(handler.arg("delay"))
    eta = arguments.eta(handler.arg("eta"), delay_given=delay is not None)
    priority = handler.arg("priority")
    priority = None if priority is None else arguments.priority(priority)
    handler.items = [Item(value, ttl, delay, eta, priority)]
    handler.idempotency = idempotency(handler, "add")
    handler.jsonp = handler.callback()


def idempotency(handler: BaseHandler, kind: str) -> tuple[str, str] | None:
    """(key, fingerprint) of a request carrying an idempotency key, else None. The header
    `Idempotency-Key` wins over the argument `dedup`; `kind` names the route in the
    fingerprint, so that an add and a batch never pass for one another."""
    key = arguments.dedup(handler.request.headers.get("Idempotency-Key") or None, header=True)
    if key is None:
        key = arguments.dedup(handler.arg("dedup"))
    if key is None:
        return None
    return key, fingerprint(kind, handler.items)


def mark_replay(handler: BaseHandler, added: Added) -> None:
    """A repeat of an idempotent add is answered as the first one was, from the keys it
    stored, and says so in a header."""
    if added.replayed:
        handler.set_header(REPLAYED, "true")


async def add(handler: BaseHandler) -> None:
    added = await handler.ctx.core.add_items(handler.target, handler.items,
                                             handler.idempotency)
    mark_replay(handler, added)
    handler.reply_key(added.keys[0], handler.jsonp)
