"""The names of the Redis keys and channels RestMQ keeps, built in one place for the Python side
(the server and the restmq-engine CLI); the layout is the original RestMQ's."""
from __future__ import annotations

QUEUESET = "QUEUESET"  # the set of every queue name ever added to
CHANNEL_SUFFIX = ":PUBSUB"


def pending(queue: str) -> str:
    """The list of the queue's pending value keys, newest at the head."""
    return f"{queue}:queue"


def counter(queue: str) -> str:
    """The counter that numbers the queue's values."""
    return f"{queue}:UUID"


def value(queue: str, n: int | str) -> str:
    """The key of the queue's value number `n` (also the message key clients see)."""
    return f"{queue}:{n}"


def refcount(value_key: str) -> str:
    """How often the value at `value_key` was read without being consumed."""
    return f"{value_key}:refcount"


def status(queue: str) -> str:
    """The queue's flow-control status: '1' started, '0' stopped."""
    return f"queuestat::{queue}"


def policy(queue: str) -> str:
    """The queue's delivery policy: '1' broadcast, '2' roundrobin."""
    return f"{queue}:queuepolicy"


def channel(queue: str) -> str:
    """The pub/sub channel of the queue's live-delivery notices."""
    return queue + CHANNEL_SUFFIX


def authkey(key: str) -> str:
    """The record of an auth key (JSON: its queues and privileges)."""
    return f"AUTHKEY:{key}"
