"""Leases, for consumers that want each message at least once: claim (a message is held, not
removed, until its lease ends), ack, extend, release, and the dead letters a queue with
`max_attempts` makes, which redrive moves back. The results are typed, and `as_json` gives
the reply objects of the routes.

A receipt `<n>.<c>.<t>` names one delivery: message n, delivered for the c-th time, under
token t (16 hex digits from the system's CSPRNG, one per claim request). Only the current
delivery's receipt is accepted; any other is reported stale, one by one.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

from twisted.internet import defer

from restmq.core import arguments
from restmq.core.acks import AckMerger
from restmq.core.steps import DEAD_STEP, MORE
from restmq.errors import InvalidArgument, RedisUnavailable
from restmq.names import check_name, is_valid_name
from restmq.redis import keys, text

TOKEN_BYTES = 8  # a receipt's token: 16 hex digits
BELIEFS_MAX = 10_000  # queues whose dead-letter queue a process remembers
REDIRECTS_MAX = 3  # times a script may answer "not that dead-letter queue" in one operation
MODES = ("claim", "pop", "push")  # who claims: only what is counted differs


class Lease(NamedTuple):
    """A claimed message. `lease_until`: Unix seconds (with ms) on Redis's clock. A named
    tuple: a pop makes a hundred at a time, at half the cost of a frozen dataclass."""

    key: str
    value: str
    receipt: str
    deliveries: int
    lease_until: float

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "receipt": self.receipt,
                "deliveries": self.deliveries, "lease_until": self.lease_until}


@dataclass(frozen=True)
class Claimed:
    queue: str
    messages: list[Lease]

    def as_json(self) -> dict[str, Any]:
        return {"queue": self.queue, "messages": [m.as_json() for m in self.messages]}


@dataclass(frozen=True)
class Acked:
    queue: str
    acked: list[str]
    stale: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"queue": self.queue, "acked": self.acked, "stale": self.stale}


@dataclass(frozen=True)
class Extension:
    receipt: str
    lease_until: float

    def as_json(self) -> dict[str, Any]:
        return {"receipt": self.receipt, "lease_until": self.lease_until}


@dataclass(frozen=True)
class Extended:
    queue: str
    extended: list[Extension]
    stale: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"queue": self.queue, "extended": [e.as_json() for e in self.extended],
                "stale": self.stale}


@dataclass(frozen=True)
class Released:
    queue: str
    released: list[str]
    dead_lettered: list[str]
    stale: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"queue": self.queue, "released": self.released,
                "dead_lettered": self.dead_lettered, "stale": self.stale}


@dataclass(frozen=True)
class Move:
    from_key: str
    to_key: str

    def as_json(self) -> dict[str, str]:
        return {"from": self.from_key, "to": self.to_key}


@dataclass(frozen=True)
class Redriven:
    """`remaining`: messages left in the dead-letter queue's pending list; `stopped`: None, or
    "no origin" when a message whose origin is unknown stopped the redrive."""

    queue: str
    moved: list[Move] = field(default_factory=list)
    remaining: int = 0
    stopped: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"queue": self.queue, "moved": [m.as_json() for m in self.moved],
                "remaining": self.remaining, "stopped": self.stopped}


def receipt(key: str, deliveries: int | str, token: str) -> str:
    return f"{key.rsplit(':', 1)[1]}.{deliveries}.{token}"


def _acked(queue: str, receipts: Sequence[str], outcomes: Sequence[str]) -> Acked:
    acked = [r for r, outcome in zip(receipts, outcomes) if outcome == "acked"]
    stale = [r for r, outcome in zip(receipts, outcomes) if outcome != "acked"]
    return Acked(queue, acked, stale)


def _check_receipts(receipts: Sequence[str]) -> list[str]:
    if isinstance(receipts, str) or not 1 <= len(receipts) <= arguments.RECEIPTS_MAX:
        raise InvalidArgument("receipt")
    return list(receipts)


class LeasesMixin:
    """Core's leases. Needs `redis`, `clock`, `consumed_ttl`, `scripts`, `on_due`,
    `_dead_letters` (see Core) and the step runners of restmq.core.steps.

    Scripts that may dead-letter name the dead-letter queue's keys, so the process keeps what
    it believes each queue's `dead_letter` is; a script that finds another one configured
    answers so before writing anything, and is run again with the right keys."""

    def claim(self, queue: str, limit: int = 1, lease: int | None = None,
              mode: str = "claim") -> defer.Deferred:
        """CLAIM: lease up to `limit` (1 to 100) messages for `lease` seconds (None: the
        queue's configured lease, else 30), in consumption order (priorities first). Fires
        with Claimed (no messages when none is pending). `mode` ('claim', 'pop', 'push') only
        says what is counted. Fails with InvalidArgument('limit' / 'lease')."""
        check_name(queue)
        if not 1 <= limit <= arguments.LIMIT_MAX:
            raise InvalidArgument("limit")
        if lease is not None and not 1 <= lease <= arguments.LEASE_MAX:
            raise InvalidArgument("lease")
        if mode not in MODES:
            raise ValueError(f"claim mode {mode!r}: one of {MODES}")
        token = secrets.token_hex(TOKEN_BYTES)
        ms = "" if lease is None else lease * 1000
        return self._lease_script("claim", queue, limit, ms, token, mode, DEAD_STEP,
                                  more=True).addCallback(self._claimed, queue, token)

    def _claimed(self, reply: list, queue: str, token: str) -> Claimed:
        now, lease_ms = int(reply[0]), int(reply[1])
        until = (now + lease_ms) / 1000
        rows = reply[2:]
        tail = "." + token  # receipt() for each, spelled out: a pop makes a hundred
        messages = [Lease(key, value, f"{key[key.rindex(':') + 1:]}.{c}{tail}", int(c), until)
                    for key, value, c in zip(rows[0::3], rows[1::3], rows[2::3])]
        if messages:
            self._due_in(lease_ms / 1000)
        return Claimed(queue, messages)

    def ack(self, queue: str, receipts: Sequence[str]) -> defer.Deferred:
        """ACK: the messages of the current receipts leave the queue (their values are retired
        for consumed_ttl, like a hard get's). Fires with Acked; InvalidArgument('receipt')
        for no receipt or more than 100."""
        check_name(queue)
        receipts = _check_receipts(receipts)
        return self._lease_script("ack", queue, *receipts).addCallback(
            lambda reply: _acked(queue, receipts, reply))

    def ack_together(self, queue: str, receipts: Sequence[str]) -> defer.Deferred:
        """ACK as `ack` does, run with the other acks_together asked for on `queue` in this
        turn of the reactor: one script for the messages of many pops' replies, each
        request's receipts answered by an Acked of their own (restmq.core.acks)."""
        check_name(queue)
        receipts = _check_receipts(receipts)
        merger = self.__dict__.get("_ack_merger")
        if merger is None:
            merger = self._ack_merger = AckMerger(
                lambda q, merged: self._lease_script("ack", q, *merged), _acked, self.clock)
        return merger.ack(queue, receipts)

    def extend(self, queue: str, receipts: Sequence[str], lease: int) -> defer.Deferred:
        """EXTEND: the current receipts' leases end `lease` seconds (1 to 43200) from now.
        Fires with Extended; InvalidArgument('receipt' / 'lease')."""
        check_name(queue)
        receipts = _check_receipts(receipts)
        if not 1 <= lease <= arguments.LEASE_MAX:
            raise InvalidArgument("lease")

        def done(reply):
            until = (int(reply[0]) + lease * 1000) / 1000
            extended = [Extension(r, until) for r, outcome in zip(receipts, reply[1:])
                        if outcome == "extended"]
            stale = [r for r, outcome in zip(receipts, reply[1:]) if outcome != "extended"]
            if extended:
                self._due_in(lease)
            return Extended(queue, extended, stale)

        return self._lease_script("extend", queue, lease * 1000, *receipts).addCallback(done)

    def release(self, queue: str, receipts: Sequence[str], delay: int = 0) -> defer.Deferred:
        """RELEASE: the current receipts' messages go back next in line (after `delay`
        seconds, 0 to 2592000), keeping their delivery count; those delivered max_attempts
        times go to the dead-letter queue. Fires with Released; InvalidArgument('receipt' /
        'delay')."""
        check_name(queue)
        receipts = _check_receipts(receipts)
        if not 0 <= delay <= arguments.DELAY_MAX:
            raise InvalidArgument("delay")

        def done(reply):
            outcomes = list(zip(receipts, reply[1:]))
            released = [r for r, outcome in outcomes if outcome == "released"]
            if released and delay:
                self._due_in(delay)
            return Released(queue, released,
                            [r for r, outcome in outcomes if outcome == "dead_lettered"],
                            [r for r, outcome in outcomes if outcome == "stale"])

        return self._lease_script("release", queue, delay * 1000, "released",
                                  *receipts).addCallback(done)

    def redrive(self, queue: str, to: str | None = None, limit: int = 100) -> defer.Deferred:
        """REDRIVE: move up to `limit` (1 to 1000) messages of dead-letter queue `queue`,
        oldest first, to `to`, or each back to the queue it came from (under its original key
        when that is free), with a delivery count of 0. Fires with Redriven; InvalidArgument
        ('to' / 'limit')."""
        check_name(queue)
        if to is not None:
            arguments.queue_other_than(to, queue, "to")
        if not 1 <= limit <= arguments.REDRIVE_LIMIT_MAX:
            raise InvalidArgument("limit")
        return defer.ensureDeferred(self._redrive(queue, to, limit))

    async def _redrive(self, queue: str, to: str | None, limit: int) -> Redriven:
        deadline = self.redis.deadline()
        give_up = self.clock.seconds() + self.redis.timeout
        # Without `to`, the first message names its origin; a process remembers the last one.
        target = to or self._dead_letters.get(("redrive", queue), "")
        moved: list[Move] = []
        remaining, stopped, first = 0, None, True
        while len(moved) < limit:
            d = self._run("redrive", keys.redrive_keys(queue, target or queue), queue, target,
                          keys.channel(target) if target else "", self.redis.db, deadline,
                          "1" if to else "", limit - len(moved), DEAD_STEP)
            reply = text(await (d if first else self._bounded(d, give_up)))
            first = False
            stop, argument, remaining = reply[0], reply[1], int(reply[2])
            rows = reply[3:]
            moved += [Move(rows[i], rows[i + 1]) for i in range(0, len(rows), 2)]
            if stop == "target" and is_valid_name(argument) and argument != queue:
                target = argument
                self._believe(("redrive", queue), target)
            elif stop in ("target", "no origin"):
                stopped = "no origin"
                break
            elif stop != "more":
                break
            if self.redis.expired(deadline):
                break  # what moved so far is the answer; the rest waits for the next call
        return Redriven(queue, moved, remaining, stopped)

    # -- running the scripts -------------------------------------------------------------------

    def _lease_script(self, name: str, queue: str, *args: Any,
                      more: bool = False) -> defer.Deferred:
        """Run a lease script (the lease context of the prelude, a deadline, `args`) with the
        queue's keys and those of its dead-letter queue; with `more`, again while it answers
        MORE (it removed its share of dead entries). Fires with the reply as text."""
        deadline = self.redis.deadline()

        def run(dead: str) -> defer.Deferred:
            return self._run(name, keys.lease_keys(queue, dead or None), queue,
                             keys.channel(queue), self.redis.db, self.consumed_ttl, dead,
                             keys.channel(dead) if dead else "", deadline, *args)

        return defer.ensureDeferred(self._believing(queue, run, deadline, more))

    async def _believing(self, queue: str, run: Callable[[str], defer.Deferred],
                         deadline: Any, more: bool = False) -> Any:
        """`run(dead-letter queue)` until it answers something other than a correction of
        what this process believes the queue's dead-letter queue is (or, with `more`, MORE).
        The first run is bounded by the command timeout like any command, later ones by what
        is left of it."""
        give_up = self.clock.seconds() + self.redis.timeout
        redirects = 0
        d = run(self._dead_letters.get(queue, ""))
        while True:
            reply = text(await d)
            if isinstance(reply, list) and reply[:1] == ["dead_letter"]:
                redirects += 1
                if redirects > REDIRECTS_MAX:
                    raise RedisUnavailable(f"the dead-letter queue of {queue} keeps changing")
                self._believe(queue, reply[1])
            elif not (more and reply == MORE):
                return reply
            if self.redis.expired(deadline):
                raise RedisUnavailable(f"{queue}: too many dead entries to skip in time")
            d = self._bounded(run(self._dead_letters.get(queue, "")), give_up)

    def _believe(self, queue: Any, dead: str) -> None:
        if len(self._dead_letters) >= BELIEFS_MAX:
            self._dead_letters.clear()
        self._dead_letters[queue] = dead

    def _due_in(self, seconds: float) -> None:
        """Something this process created is due in `seconds`: tell the ticker."""
        self.on_due(max(0.0, seconds))
