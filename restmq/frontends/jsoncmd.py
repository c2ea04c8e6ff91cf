"""The JSON protocol of `POST /queue` (docs/frontends.md#json-protocol): add, get, take and
del commands.

`check` then `execute` fire with the reply object; a command's field errors and an empty queue
are reply objects too (status 200), only malformed JSON and Redis trouble are exceptions.
"""
from __future__ import annotations

import json
import re
from typing import Any

from restmq import core as corelib
from restmq.names import check_name
from restmq.errors import BadRequest, EmptyQueue, InvalidName, MessageTooLarge
from restmq.jsontext import encodable

FIELDS = {
    "add": ("queue", "value"),
    "get": ("queue",),
    "take": ("queue",),
    "del": ("queue", "key"),
}


def _reject_constant(name: str):
    raise ValueError(f"not JSON: {name}")


def parse(command: str) -> dict[str, Any]:
    """Decode the command text; BadRequest('malformed JSON') unless it is an object with a
    non-empty string `cmd`."""
    try:
        obj = json.loads(command, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise BadRequest("malformed JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("cmd"), str) or not obj["cmd"]:
        raise BadRequest("malformed JSON")
    return obj


def field_error(obj: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    """The first failing field check, in the table's field order, or None."""
    for name in fields:
        value = obj.get(name)
        if value is None:
            return f"missing argument: {name}"
        if not isinstance(value, str) or not encodable(value):
            return f"invalid argument: {name}"
        if name == "queue":
            try:
                check_name(value)
            except InvalidName:
                return "invalid queue name"
        if name == "key" and not re.fullmatch(re.escape(obj["queue"]) + r":[0-9]+", value,
                                              re.ASCII):
            return "invalid argument: key"
    return None


async def check(core: corelib.Core, command: str) -> tuple[dict | None, dict | None]:
    """Parse and check one command, asking Redis nothing but whether a legacy queue name is
    registered. Fires with (the command object to `execute`, None), or (None, the reply object)
    for a command that cannot run."""
    obj = parse(command)
    cmd = obj["cmd"]
    if cmd not in FIELDS:
        return None, {"error": "null resultset"}
    error = field_error(obj, FIELDS[cmd])
    if error == "invalid queue name":
        # A name the original RestMQ registered is admitted; then the fields after it.
        try:
            obj["queue"] = await core.admit(obj["queue"])
        except InvalidName:
            return None, {"error": error}
        error = field_error(obj, FIELDS[cmd])
    if error:
        return None, {"error": error}
    return obj, None


async def execute(core: corelib.Core, obj: dict[str, Any]) -> dict[str, Any]:
    """Run a command that `check` passed, once the caller has authorized its queue."""
    cmd, queue = obj["cmd"], obj["queue"]
    try:
        if cmd == "add":
            key = await core.add(queue, obj["value"])
            return {"queue": queue, "value": obj["value"], "key": key}
        if cmd == "get":
            message = await core.soft_get(queue)
            return {"queue": queue, "value": message.value, "key": message.key,
                    "count": message.count}
        if cmd == "take":
            message = await core.take(queue)
            return {"queue": queue, "value": message.value, "key": message.key}
        deleted = await core.delete(queue, obj["key"])
        return {"queue": queue, "deleted": deleted, "key": obj["key"]}
    except EmptyQueue:
        return {"error": "empty queue"}
    except MessageTooLarge as e:  # over the queue's configured max_message
        return {"error": e.reason}
