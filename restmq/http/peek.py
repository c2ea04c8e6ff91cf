"""`GET /peek/<q>`: the pending messages of a queue in the order consumers would get them,
without consuming anything (docs/http-api.md#peek)."""
from __future__ import annotations

from restmq.core import Peeked, arguments
from restmq.http.base import JSON, PATH, BaseHandler
from restmq.jsontext import json_text

PEEK_DEFAULT = 10  # messages of a peek without `limit`


def peek_json(queue: str, peeked: Peeked, max_body: int) -> str:
    """The reply, with as many of the messages as fit in `max_body` bytes (at least one, else
    a message larger than that could never be peeked past): `next` names the last message
    shown when more follow it. The JSON text is ASCII, so its length is its size."""
    shown: list[dict] = []
    size = len(json_text({"queue": queue, "messages": [], "next": None}))
    more = peeked.more
    for message in peeked.messages:
        entry = {"key": message.key, "value": message.value, "priority": message.priority}
        grown = size + len(json_text(entry)) + (2 if shown else 0)  # with its ", "
        if shown and grown + len(json_text(message.key)) - len("null") > max_body:
            more = True  # it would not fit, counting `next` naming it
            break
        shown.append(entry)
        size = grown
    last = shown[-1]["key"] if shown and more else None
    return json_text({"queue": queue, "messages": shown, "next": last})


class PeekHandler(BaseHandler):
    """`GET /peek/<q>` with `limit` (1 to 100, default 10) and `after` (a key of the queue)."""

    methods = ("GET",)
    sections = {"GET": "rest:consumer"}
    queue_from = {"GET": PATH}
    prefix = "/peek/"

    def check_get(self):
        self.limit = arguments.limit(self.arg("limit"), default=PEEK_DEFAULT)
        self.after = arguments.after(self.arg("after"), self.target)

    async def get(self):
        max_body = self.settings["max_body"]
        peeked = await self.ctx.core.peek(self.target, self.limit, self.after, max_body)
        self.reply(peek_json(self.target, peeked, max_body), ctype=JSON, crlf=False)
