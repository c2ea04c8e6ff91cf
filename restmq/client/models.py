"""The typed results of the client's calls. Each is a plain dataclass built from the server's
JSON reply; fields the server adds later are kept in `raw` where a result has one."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Message:
    """A message as a consumer sees it. `priority` is known only to peeks."""
    queue: str
    key: str
    value: str
    priority: int | None = None


@dataclass
class Lease(Message):
    """A claimed message: hold it with `extend`, settle it with `ack` or `release` (these
    return what the client's calls return: a Settled, or a Deferred of one on a TxClient)."""
    receipt: str = ""
    deliveries: int = 0
    lease_until: float = 0.0
    client: Any = field(default=None, repr=False, compare=False)

    def ack(self):
        return self.client.ack(self.queue, [self.receipt])

    def extend(self, seconds: int):
        return self.client.extend(self.queue, [self.receipt], seconds)

    def release(self, delay: int = 0):
        return self.client.release(self.queue, [self.receipt], delay)


@dataclass
class Settled:
    """The outcome of ack, extend or release, per receipt: `ok` the receipts that took effect
    (acked, extended or released), `stale` those whose lease was already over, `dead` those a
    release moved to the dead-letter queue. `lease_until` maps extended receipts to their new
    deadline (Unix seconds)."""
    queue: str
    ok: list[str]
    stale: list[str]
    dead: list[str] = field(default_factory=list)
    lease_until: dict[str, float] = field(default_factory=dict)


@dataclass
class Config:
    """A queue's effective configuration (`None` where unset without default) and the names
    of the attributes stored for it."""
    queue: str
    config: dict[str, Any]
    set: list[str]


@dataclass
class Info:
    queue: str
    pending: int
    inflight: int
    delayed: int
    status: Any
    policy: Any
    dead_letter: dict | None
    next_due: float | None
    raw: dict = field(default_factory=dict, repr=False)


@dataclass
class Redrive:
    """`moved` pairs (dead-letter key, key it went back to); `stopped` says why a redrive
    ended early (`"no origin"`), else None."""
    queue: str
    moved: list[tuple[str, str]]
    remaining: int
    stopped: str | None


@dataclass
class Health:
    status: str
    protocol: int
    version: str | None
    redis: dict
    warnings: list[str]
    raw: dict = field(default_factory=dict, repr=False)
