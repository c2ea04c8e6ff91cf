"""The producers' side of the REST routes: the arguments of an add (`POST /`, `POST /q/<q>`)
with a delay or eta, a priority and an idempotency key, the replay of an idempotent add, and
`/batch/<q>` (docs/http-api.md#add, #idempotent-adds, #batch)."""
from __future__ import annotations

import json

from restmq.core import Added, Item, arguments
from restmq.core.adds import fingerprint
from restmq.errors import BadRequest, InvalidArgument, InvalidItem, MissingArgument
from restmq.http.base import PATH, BaseHandler
from restmq.jsontext import encodable

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


# -- /batch/<q> ---------------------------------------------------------------------------------

MAX_BATCH = 100  # messages per /batch/ request, unless --max-batch says otherwise
JSON_INT_MAX = 2 ** 53  # beyond it a JSON number is no longer exact in every client
ETA_MAX = 10 ** 11  # Unix seconds far beyond any eta the add accepts (30 days ahead)


def _reject(text: str):
    raise ValueError(f"not a JSON number: {text}")


def _exact_int(text: str) -> int:
    if len(text.lstrip("-")) > 16 or abs(int(text)) > JSON_INT_MAX:
        raise ValueError(f"integer beyond 2^53: {text}")
    return int(text)


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"not a finite number: {text}")
    return number


def _nested(entry) -> bool:
    """Whether an item holds an array or object: nesting below an item is not the format."""
    if isinstance(entry, dict):
        entry = entry.values()
    elif not isinstance(entry, list):
        return False
    return any(isinstance(inner, (list, dict)) for inner in entry)


def batch_items(body: bytes, max_batch: int) -> list[Item]:
    """The items of a `/batch/` body: a JSON array of 1 to `max_batch` items, each a string
    (the value) or an object with `value` and optionally `ttl`, `delay`, `eta`, `priority`
    (null: absent; other fields ignored). BadRequest `malformed JSON` (not UTF-8 JSON, not an
    array, NaN or an infinity, nesting below an item, an integer beyond 2^53), `invalid
    argument: messages` (empty, an item neither string nor object), `too many messages`,
    InvalidArgument `messages[i].<field>` for the first bad field of the first bad item."""
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_reject, parse_int=_exact_int,
                         parse_float=_finite_float)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadRequest("malformed JSON") from None
    if type(doc) is list and doc and set(map(type, doc)) == {str} and len(doc) <= max_batch:
        plain = _plain_items(doc)
        if plain is not None:
            return plain
    if not isinstance(doc, list) or any(_nested(entry) for entry in doc):
        raise BadRequest("malformed JSON")
    if not doc or not all(isinstance(entry, (str, dict)) for entry in doc):
        raise InvalidArgument("messages")
    if len(doc) > max_batch:
        raise BadRequest("too many messages")
    return [_item(entry, i) for i, entry in enumerate(doc)]


_new_tuple = tuple.__new__
_NO_FIELDS = (None, None, None, None)


def _plain_items(values: list[str]) -> list[Item] | None:
    """A batch of bare values, the usual one: their items, or None when one of them cannot be
    stored (the item by item path then names it). One encoding of them all tells."""
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        return None
    return [_new_tuple(Item, (value, *_NO_FIELDS)) for value in values]


def _item(entry, i: int) -> Item:
    if isinstance(entry, str):  # a bare value, the usual item: nothing else to look at
        if not encodable(entry):
            raise InvalidArgument(f"messages[{i}].value")
        return Item(entry)
    fields = entry
    value = fields.get("value")
    if not isinstance(value, str) or not encodable(value):
        raise InvalidArgument(f"messages[{i}].value")

    def number(name: str, low: int, high: int, kinds=(int,)):
        found = fields.get(name)
        if found is None:
            return None
        if isinstance(found, bool) or not isinstance(found, kinds) or not low <= found <= high:
            raise InvalidArgument(f"messages[{i}].{name}")
        return found

    ttl = number("ttl", 1, arguments.TTL_MAX)
    delay = number("delay", 0, arguments.DELAY_MAX)
    eta = number("eta", 0, ETA_MAX, (int, float))
    if eta is not None and delay is not None:
        raise InvalidArgument(f"messages[{i}].eta")
    priority = number("priority", 0, arguments.PRIORITY_MAX)
    return Item(value, ttl, delay, None if eta is None else float(eta), priority)


class BatchHandler(BaseHandler):
    """`POST /batch/<q>`: add every message of a JSON array, all or nothing, with consecutive
    keys (docs/http-api.md#batch)."""

    methods = ("POST",)
    sections = {"POST": "rest:producer"}
    queue_from = {"POST": PATH}
    prefix = "/batch/"
    raw_body = True  # the body is the array; `dedup` comes from the query string

    def check_post(self):
        self.items = batch_items(self.request.body, self.settings["max_batch"])
        self.idempotency = idempotency(self, "batch")

    async def post(self):
        try:
            added = await self.ctx.core.add_items(self.target, self.items, self.idempotency)
        except InvalidItem as e:  # an eta more than 30 days ahead of Redis's clock
            raise InvalidArgument(f"messages[{e.index}].{e.field}") from None
        mark_replay(self, added)
        self.reply_json({"queue": self.target, "keys": added.keys})
