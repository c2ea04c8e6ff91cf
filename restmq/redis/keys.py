"""The names of the Redis keys and channels RestMQ keeps, built here and nowhere else on the
Python side (the server and the restmq-engine CLI; tests/test_declared_keys.py checks it). The
layout is the original RestMQ's (docs/redis-layout.md).

Every Lua script gets the keys it touches in KEYS: the `*_keys` functions at the end give each
script's KEYS in the order its header states, the queue's own keys first, then those outside
its prefix (QUEUESET, queuestat::<q>). Most scripts get a queue's whole key block
(`queue_block`, read in Lua by `queue_keys` of the prelude), so that every script names the
same keys the same way. See docs/redis-layout.md#scripts for the rules.

The keys of leases, delays, priorities, dead letters and per-queue configuration (inflight,
deliveries, delayed, priority, prio, config, dedup, dedupexp, origin, bucket, DUESET,
PUSHSET) appear only once something uses those features, and the counters only on a server
run with --counters: a queue used only through the original routes keeps exactly the
original keyspace."""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable

QUEUESET = "QUEUESET"  # the set of every queue name ever added to
DUESET = "DUESET"  # queue name -> a lower bound of its next due time (ms, Redis's clock)
PUSHSET = "PUSHSET"  # the set of the queues with a push_url (push queues)
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


def number_of(queue: str, key: str) -> str | None:
    """The digits n when `key` is a value key `<queue>:<n>` of this queue, else None."""
    prefix = value(queue, "")
    digits = key[len(prefix):] if key.startswith(prefix) else ""
    return digits if digits.isascii() and digits.isdigit() else None


def status(queue: str) -> str:
    """The queue's flow-control status: '1' started, '0' stopped."""
    return _STATUS_PREFIX + queue


def policy(queue: str) -> str:
    """The queue's delivery policy: '1' broadcast, '2' roundrobin."""
    return f"{queue}:queuepolicy"


def channel(queue: str) -> str:
    """The pub/sub channel of the queue's live-delivery notices (a channel, not a key)."""
    return queue + CHANNEL_SUFFIX


def inflight(queue: str) -> str:
    """Sorted set: value key -> lease deadline (ms) of the messages leased out."""
    return f"{queue}:inflight"


def deliveries(queue: str) -> str:
    """Hash: value key -> `c` (times delivered under a lease), or `c.t` while leased with
    receipt token t."""
    return f"{queue}:deliveries"


def delayed(queue: str) -> str:
    """Sorted set: value key -> due time (ms) of messages that are not pending yet."""
    return f"{queue}:delayed"


def priority(queue: str) -> str:
    """Sorted set of the pending messages of priority 1 to 9, taken before the pending list."""
    return f"{queue}:priority"


def prio(queue: str) -> str:
    """Hash: value key -> priority, for messages of priority 1 to 9 while they exist."""
    return f"{queue}:prio"


def config(queue: str) -> str:
    """Hash: the queue's configuration, attribute -> value."""
    return f"{queue}:config"


def dedup(queue: str) -> str:
    """Hash: idempotency key -> `<fingerprint> <key>[,<key>...]` of an earlier add."""
    return f"{queue}:dedup"


def dedupexp(queue: str) -> str:
    """Sorted set: idempotency key -> when it is forgotten (ms)."""
    return f"{queue}:dedupexp"


def origin(queue: str) -> str:
    """Hash: value key of a dead letter in this queue -> JSON of where it came from."""
    return f"{queue}:origin"


def counters(queue: str) -> str:
    """Hash: counter name -> how many times it happened (acked, read_get ...), kept only by a
    server run with --counters."""
    return f"{queue}:counters"


def bucket(queue: str) -> str:
    """Hash: the push token bucket, `tokens` (a decimal) and `ts` (ms when they were
    counted), shared by every process that pushes from the queue."""
    return f"{queue}:bucket"


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


# A queue's keys are asked for at every script run (sixteen names, twice a pop): the busy
# queues' are kept.
@lru_cache(maxsize=4096)
def queue_block(queue: str) -> tuple[str, ...]:
    """Every key of one queue, in the order the prelude's `queue_keys` reads them. A script
    that gets a block may touch any of them; most touch few (an add on a queue without
    configuration writes only the pending list, the counter and its value)."""
    return (pending(queue), priority(queue), prio(queue), inflight(queue), deliveries(queue),
            delayed(queue), config(queue), counter(queue), dedup(queue), dedupexp(queue),
            origin(queue), status(queue), policy(queue), counters(queue))


BLOCK = 14  # len(queue_block(q)); the prelude's BLOCK


@lru_cache(maxsize=4096)
def _with_globals(queue: str) -> tuple[str, ...]:
    return (*queue_block(queue), QUEUESET, DUESET)


def add_keys(queue: str) -> tuple[str, ...]:
    """add.lua: the block, QUEUESET, DUESET."""
    return _with_globals(queue)


def consume_keys(queue: str) -> tuple[str, ...]:
    """hard_get.lua, soft_get.lua, take.lua, pop_batch.lua: the block."""
    return queue_block(queue)


pop_keys = consume_keys


def peek_keys(queue: str) -> tuple[str, ...]:
    """peek.lua (read-only): the block."""
    return queue_block(queue)


def delete_keys(queue: str, value_key: str) -> tuple[str, ...]:
    """del.lua: the block, then the value key the client names."""
    return (*queue_block(queue), value_key)


def purge_keys(queue: str) -> tuple[str, ...]:
    """purge.lua: the block."""
    return queue_block(queue)


def retire_keys(queue: str) -> tuple[str, ...]:
    """retire_range.lua: the counter only names the prefix of the value keys."""
    return (counter(queue),)


def requeue_keys(queue: str, value_keys: Iterable[str]) -> tuple[str, ...]:
    """requeue.lua: the block, then the keys of the messages put back, oldest first."""
    return (*queue_block(queue), *value_keys)


def lease_keys(queue: str, dead_letter: str | None = None) -> tuple[str, ...]:
    """claim.lua, ack.lua, extend.lua, release.lua, tick.lua, info.lua, config_set.lua: the
    queue's block, QUEUESET, DUESET, then the block of its dead-letter queue when the caller
    believes it has one (the script checks that belief against the configuration)."""
    if dead_letter:
        return (*_with_globals(queue), *queue_block(dead_letter))
    return _with_globals(queue)


def config_keys(queue: str) -> tuple[str, ...]:
    """config_set.lua: the block, then PUSHSET (a push_url makes the queue a member)."""
    return (*queue_block(queue), PUSHSET)


def push_claim_keys(queue: str, dead_letter: str | None = None) -> tuple[str, ...]:
    """push_claim.lua: the keys of claim.lua (lease_keys), then the queue's token bucket."""
    return (*lease_keys(queue, dead_letter), bucket(queue))


def push_pause_keys(queue: str) -> tuple[str, ...]:
    """push_pause.lua: the queue's configuration and token bucket."""
    return (config(queue), bucket(queue))


def redrive_keys(queue: str, target: str) -> tuple[str, ...]:
    """redrive.lua: the dead-letter queue's block, QUEUESET, DUESET, the target's block."""
    return (*_with_globals(queue), *queue_block(target))


def due_keys() -> tuple[str, ...]:
    """due.lua."""
    return (DUESET,)


def metrics_keys(queues: Iterable[str], counting: bool) -> tuple[str, ...]:
    """metrics.lua: seven keys for each queue, eight with counters."""
    out: list[str] = []
    for q in queues:
        out += [pending(q), priority(q), inflight(q), delayed(q), status(q), counter(q), config(q)]
        if counting:
            out.append(counters(q))
    return tuple(out)


def stats_keys(queues: Iterable[str | bytes]) -> tuple[str | bytes, ...]:
    """stats.lua: four keys for each queue of the page. A name read from QUEUESET as bytes
    (not UTF-8: written by other software) gets its keys as bytes, the same bytes around it."""
    out: list[str | bytes] = []
    for q in queues:
        if isinstance(q, bytes):
            name = q.decode("utf-8", "surrogateescape")
            out += [k.encode("utf-8", "surrogateescape") for k in stats_keys([name])]
        else:
            out += [pending(q), priority(q), policy(q), status(q)]
    return tuple(out)
