"""The names of the Redis keys and channels RestMQ keeps, built here and nowhere else on the
Python side (the server and the restmq-engine CLI; tests/test_declared_keys.py checks it). The
layout is the original RestMQ's (docs/redis-layout.md).

Every Lua script gets the keys it touches in KEYS: the `*_keys` functions at the end give each
script's KEYS in the order its header states, the queue's own keys first, then those outside
its prefix (QUEUESET, queuestat::<q>). See docs/redis-layout.md#scripts for the rules."""
from __future__ import annotations

from typing import Iterable

QUEUESET = "QUEUESET"  # the set of every queue name ever added to
CHANNEL_SUFFIX = ":PUBSUB"
_STATUS_PREFIX = "queuestat::"
_AUTHKEY_PREFIX = "AUTHKEY:"
# The suffixes of a queue's keys and channel; `:lock` is never written by RestMQ, but other
# programs sharing the layout take it briefly on a value key.
_SUFFIXES = (":queue", ":UUID", ":queuepolicy", CHANNEL_SUFFIX, ":lock", ":refcount")


def pending(queue: str) -> str:
    """The list of the queue's pending value keys, newest at the head."""
    return f"{queue}:queue"


def counter(queue: str) -> str:
    """The counter that numbers the queue's values. Its name less `UUID` is the prefix of the
    queue's value keys, which is how the scripts build them."""
    return f"{queue}:UUID"


def value(queue: str, n: int | str) -> str:
    """The key of the queue's value number `n` (also the message key clients see)."""
    return f"{queue}:{n}"


def status(queue: str) -> str:
    """The queue's flow-control status: '1' started, '0' stopped."""
    return _STATUS_PREFIX + queue


def policy(queue: str) -> str:
    """The queue's delivery policy: '1' broadcast, '2' roundrobin."""
    return f"{queue}:queuepolicy"


def channel(queue: str) -> str:
    """The pub/sub channel of the queue's live-delivery notices (a channel, not a key)."""
    return queue + CHANNEL_SUFFIX


def authkey(key: str) -> str:
    """The record of an auth key (JSON: its queues and privileges)."""
    return _AUTHKEY_PREFIX + key


def match_all(queue: str) -> str:
    """A SCAN MATCH pattern for every key starting with the queue's name (glob characters
    escaped): what the jobs page counts."""
    escaped = "".join("\\" + c if c in "\\*?[]" else c for c in queue)
    return escaped + "*"


def collides(name: str) -> bool:
    """Whether a queue of this name would read or write keys kept for something else: the
    queue set, the auth records, a status key, or the keys of the queue named `name` less one
    of the suffixes (a queue `x:queue` next to the pending list of queue `x`)."""
    return (name in (QUEUESET, _AUTHKEY_PREFIX[:-1])
            or name.startswith((_AUTHKEY_PREFIX, _STATUS_PREFIX[:-1]))
            or name.endswith(_SUFFIXES))


# -- the KEYS of each script ------------------------------------------------------------------


def add_keys(queue: str) -> tuple[str, ...]:
    """add.lua, add_once.lua."""
    return (pending(queue), counter(queue), QUEUESET, status(queue))


def consume_keys(queue: str) -> tuple[str, ...]:
    """hard_get.lua, soft_get.lua, take.lua."""
    return (pending(queue),)


def delete_keys(queue: str, value_key: str) -> tuple[str, ...]:
    """del.lua: the value key is the one the client names."""
    return (pending(queue), value_key)


def pop_keys(queue: str) -> tuple[str, ...]:
    """pop_batch.lua."""
    return (pending(queue), policy(queue), status(queue))


def purge_keys(queue: str) -> tuple[str, ...]:
    """purge.lua."""
    return (pending(queue), counter(queue))


def retire_keys(queue: str) -> tuple[str, ...]:
    """retire_range.lua: the counter only names the prefix of the value keys."""
    return (counter(queue),)


def requeue_keys(queue: str, value_keys: Iterable[str]) -> tuple[str, ...]:
    """requeue.lua: the keys of the messages put back, oldest first."""
    return (pending(queue), *value_keys)


def stats_keys(queues: Iterable[str | bytes]) -> tuple[str | bytes, ...]:
    """stats.lua: three keys for each queue of the page. A name read from QUEUESET as bytes
    (not UTF-8: written by other software) gets its keys as bytes, the same bytes around it."""
    out: list[str | bytes] = []
    for q in queues:
        if isinstance(q, bytes):
            name = q.decode("utf-8", "surrogateescape")
            out += [k.encode("utf-8", "surrogateescape") for k in stats_keys([name])]
        else:
            out += [pending(q), policy(q), status(q)]
    return tuple(out)
