"""Adds: one script (restmq/scripts/add.lua) for every way a message enters a queue, one item
or many, with the queue's configuration applied (ttl, delay, size bound) and the delays, etas,
priorities and idempotency keys given by the producer."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

from twisted.internet import defer

from restmq.errors import IdempotencyKeyReused, InvalidItem, MessageTooLarge, RedisFailure
from restmq.names import check_name
from restmq.redis import DEADLINE, keys, text


class Item(NamedTuple):
    """One message to add. `ttl` in seconds (None: the queue's configured ttl, if any);
    `delay` in seconds or `eta` in Unix seconds (at most one; None: the queue's configured
    delay); `priority` 0 to 9 (None: not given, which is 0). A named tuple: a batch makes up
    to 1000 of them per request, at a fifth of a frozen dataclass's cost."""

    value: str
    ttl: int | None = None
    delay: int | None = None
    eta: float | None = None
    priority: int | None = None

    def arguments(self) -> tuple:
        """The five script arguments of the item ('' for none)."""
        if self.ttl is None and self.delay is None and self.eta is None and not self.priority:
            return (self.value, "", "", "", "")  # a bare value, the usual item
        return (self.value, _blank(self.ttl), _blank(None if self.delay is None else
                                                     self.delay * 1000),
                _blank(_eta_ms(self.eta)), self.priority or "")

    def canonical(self) -> list:
        """The item as the fingerprint of an idempotent add sees it: its five fields, None for
        those not given, the eta in Unix seconds as its milliseconds read (1700000000 or
        1700000000.5, never 1700000000.0 or 1700000000.500)."""
        eta: Any = _eta_ms(self.eta)
        if eta is not None:
            eta = eta // 1000 if eta % 1000 == 0 else eta / 1000
        return [self.value, self.ttl, self.delay, eta, self.priority]


@dataclass(frozen=True)
class Added:
    """The keys of an add, in item order; `replayed` when an idempotency key found them added
    by an earlier identical request (nothing was added now)."""

    keys: list[str]
    replayed: bool = False


_NO_FIELDS = (None, None, None, None)


def _blank(value: Any) -> Any:
    return "" if value is None else value


def _eta_ms(eta: float | None) -> int | None:
    return None if eta is None else round(eta * 1000)


def fingerprint(kind: str, items: Sequence[Item]) -> str:
    """What tells two requests that share an idempotency key apart: the SHA-256 (lowercase
    hex) of the canonical JSON text of `[kind, [item fields...]]`, `kind` being the route's
    (`add` for `POST /` and `POST /q/<q>`, `batch` for `/batch/<q>`). Canonical: UTF-8, no
    whitespace, strings as they are (no escapes beyond JSON's own), fields in the order of
    Item.canonical, absent ones `null`."""
    text = json.dumps([kind, [item.canonical() for item in items]], ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AddsMixin:
    """Core's adds. Needs `redis`, `scripts` and `_due_in` (restmq.core.leases)."""

    def add_items(self, queue: str, items: Sequence[Item],
                  idempotency: tuple[str, str] | None = None) -> defer.Deferred:
        """ADD of `items` (all or nothing, consecutive keys): fires with Added. `idempotency`
        is (key, fingerprint of the request). Fails with MessageTooLarge(index) for a value over
        the queue's `max_message`, InvalidItem('eta', index) for an eta over 30 days ahead,
        IdempotencyKeyReused, InvalidName, RedisUnavailable / RedisFailure."""
        check_name(queue)
        return self._add(queue, items, idempotency=idempotency)

    def _add(self, queue: str, items: Sequence[Item], once: int = 0,
             idempotency: tuple[str, str] | None = None) -> defer.Deferred:
        idem, fingerprint = idempotency or ("", "")
        args = [queue, keys.channel(queue), self.redis.db, DEADLINE, once, idem, fingerprint]
        for item in items:
            # A bare value, the usual item, without a method call (see Item.arguments).
            args += (item[0], "", "", "", "") if item[1:] == _NO_FIELDS else item.arguments()
        d = self.redis.run_script(self.scripts["add"], keys.add_keys(queue), *args)
        return d.addCallback(self._added)

    def _added(self, reply: list) -> Added:
        reply = text(reply)
        outcome = reply[0]
        if outcome == "too_large":
            raise MessageTooLarge(int(reply[1]))
        if outcome == "bad_eta":
            raise InvalidItem("eta", int(reply[1]))
        if outcome == "reused":
            raise IdempotencyKeyReused()
        if outcome not in ("ok", "replayed"):
            raise RedisFailure(f"unexpected reply of add: {outcome}")
        if reply[1] != "":
            self._due_in(int(reply[1]) / 1000)
        return Added(list(reply[2:]), outcome == "replayed")
