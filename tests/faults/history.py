"""A history checker for fault tests.

Producers record each value before sending it and then its outcome: acknowledged (200 with a
key), refused (503) or unknown (a connection error, a timeout, any other status). Consumers
record every value they receive, with where it came from. At the end the caller reads the
values still pending in Redis and `check` sorts every value into:

* lost: acknowledged, yet neither received nor pending;
* duplicated: seen more than once in total (received twice, received and still pending, or
  pending twice);
* unexpected: received or pending but never produced.

Every produced value must be unique (`attempt` refuses a repeat): that is what makes the three
sets well defined. Refused and unknown values may legitimately be stored (a Redis that dies
after running an add but before answering gives a 503 for a stored message), so they are never
lost and never unexpected; a refused value that turns up anyway is reported apart.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

ACKED = "acked"
REFUSED = "refused"
UNKNOWN = "unknown"


@dataclass
class Report:
    produced: int
    acked: int
    refused: int
    unknown: int
    received: int  # deliveries, duplicates included
    pending: int
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)  # value -> times seen
    unexpected: list[str] = field(default_factory=list)
    refused_but_stored: list[str] = field(default_factory=list)  # 503, yet received or pending
    unknown_stored: int = 0  # unknown outcome, received or pending
    explained: list[str] = field(default_factory=list)  # filled in by callers that can tell

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected)

    def figures(self) -> str:
        return (f"produced={self.produced} acked={self.acked} refused(503)={self.refused} "
                f"unknown={self.unknown} received={self.received} pending={self.pending} "
                f"lost={len(self.lost)} duplicated={len(self.duplicated)} "
                f"unexpected={len(self.unexpected)} "
                f"refused_but_stored={len(self.refused_but_stored)} "
                f"unknown_stored={self.unknown_stored}")

    def details(self, limit: int = 10) -> str:
        """The first few offending values of each kind, for assertion messages."""
        duplicated = dict(list(self.duplicated.items())[:limit])
        return (f"lost={self.lost[:limit]} duplicated={duplicated} "
                f"unexpected={self.unexpected[:limit]}")


class History:
    """Thread-safe record of one run. Values are the message texts (or any unique id the
    producers and consumers agree on)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes: dict[str, str] = {}
        self.keys: dict[str, str] = {}  # acknowledged value -> its key
        self.acked_at: dict[str, float] = {}  # acknowledged value -> time.monotonic()
        self.received: Counter[str] = Counter()
        self.sources: dict[str, list[str]] = {}

    # -- producers ---------------------------------------------------------------------------

    def attempt(self, value: str) -> None:
        """Call before sending `value`; its outcome is unknown until settled."""
        with self._lock:
            if value in self.outcomes:
                raise ValueError(f"value produced twice: {value!r}")
            self.outcomes[value] = UNKNOWN

    def acked(self, value: str, key: str | None = None) -> None:
        with self._lock:
            self.outcomes[value] = ACKED
            self.acked_at[value] = time.monotonic()
            if key is not None:
                self.keys[value] = key

    def refused(self, value: str) -> None:
        with self._lock:
            self.outcomes[value] = REFUSED

    def unknown(self, value: str) -> None:
        with self._lock:
            self.outcomes[value] = UNKNOWN

    # -- consumers ---------------------------------------------------------------------------

    def consumed(self, value: str, source: str = "rest") -> None:
        with self._lock:
            self.received[value] += 1
            self.sources.setdefault(value, []).append(source)

    # -- the verdict ---------------------------------------------------------------------------

    def count(self, outcome: str) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes.values() if o == outcome)

    def check(self, pending: Iterable[str]) -> Report:
        """`pending`: the values still pending in Redis at the end, in any order."""
        with self._lock:
            outcomes = dict(self.outcomes)
            received = Counter(self.received)
        pending_count = Counter(pending)
        seen = received + pending_count
        report = Report(
            produced=len(outcomes),
            acked=sum(1 for o in outcomes.values() if o == ACKED),
            refused=sum(1 for o in outcomes.values() if o == REFUSED),
            unknown=sum(1 for o in outcomes.values() if o == UNKNOWN),
            received=sum(received.values()),
            pending=sum(pending_count.values()))
        for value, outcome in outcomes.items():
            times = seen.get(value, 0)
            if outcome == ACKED and times == 0:
                report.lost.append(value)
            if times > 1:
                report.duplicated[value] = times
            if times and outcome == REFUSED:
                report.refused_but_stored.append(value)
            if times and outcome == UNKNOWN:
                report.unknown_stored += 1
        report.unexpected = sorted(value for value in seen if value not in outcomes)
        report.lost.sort()
        report.refused_but_stored.sort()
        return report
