"""The Prometheus text of many samples, rendered by prometheus_client a batch at a time on the
reactor's thread, and one scrape's reply shared by the requests that come while it is made.

Rendering 50,000 samples takes prometheus_client about a quarter of a second of CPU. In a
thread beside the reactor that still starves it (the two take turns on the interpreter, and
the reactor waits for its turn at every wake-up); here the work is cut into steps of at most
`BATCH` samples, run by a Cooperator that gives the reactor back its turn every few
milliseconds. Most samples do not change between two scrapes (idle queues): a line rendered
at the last scrape for the same family, labels and value is used again, and a part of a family
given as the same object as last time (a page of queues that Redis answered unchanged) keeps
its whole text, so a scrape renders only what changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from prometheus_client.exposition import generate_latest
from twisted.internet import defer, task
from twisted.python.failure import Failure

BATCH = 250      # samples rendered by one call of prometheus_client, at most
SLICE = 0.005    # seconds of rendering before the reactor gets its turn back


@dataclass
class Family:
    """One metric family to render: `kind` is prometheus_client's GaugeMetricFamily or
    CounterMetricFamily, `samples` its (label values, value) pairs."""

    kind: type
    name: str
    doc: str
    labels: tuple[str, ...]
    samples: Iterable[tuple[tuple[str, ...], float]] = ()
    # Instead of `samples`: (key, samples) parts. A part whose key is the very object a part
    # of the last rendering had (a page of queues read again unchanged) has the same text.
    parts: list[tuple[Any, Iterable]] | None = None

    def empty(self) -> Any:
        return self.kind(self.name, self.doc, labels=list(self.labels))


class _One:
    """A collector of given families, as generate_latest wants one."""

    def __init__(self, *families):
        self.families = families

    def collect(self):
        return self.families


def cooperator(clock: Any, slice_seconds: float = SLICE) -> task.Cooperator:
    """A Cooperator on `clock` that runs its tasks for `slice_seconds` at a time, then lets
    the reactor serve its connections (a call at delay 0 comes after the poll for I/O)."""

    def stop_after():
        end = clock.seconds() + slice_seconds
        return lambda: clock.seconds() >= end

    return task.Cooperator(terminationPredicateFactory=stop_after,
                           scheduler=lambda step: clock.callLater(0, step))


class Exposition:
    """Renders families into one exposition: HELP and TYPE once per family, then its sample
    lines, byte for byte what generate_latest writes for the whole family. Keeps the lines of
    the last rendering (only those) to use again; one rendering at a time."""

    def __init__(self, coop: task.Cooperator):
        self.coop = coop
        self._lines: dict[str, dict[tuple, tuple[float, bytes]]] = {}
        self._parts: dict[str, dict[int, tuple[Any, bytes, dict]]] = {}

    def render(self, families: Iterable[Family | Any]) -> defer.Deferred:
        """Fires with the text (bytes) of `families`; an item that is not a Family is a
        prometheus_client collector (small: rendered in one step)."""
        out: list[bytes] = []
        kept: dict[str, dict] = {}
        kept_parts: dict[str, dict] = {}
        steps = self._steps(families, out, kept, kept_parts)

        def done(_):
            self._lines, self._parts = kept, kept_parts
            return b"".join(out)

        return self.coop.cooperate(steps).whenDone().addCallback(done)

    def _steps(self, families, out: list[bytes], kept: dict, kept_parts: dict):
        for family in families:
            if not isinstance(family, Family):
                out.append(generate_latest(family))
                yield None
                continue
            out.append(generate_latest(_One(family.empty())))
            old, new = self._lines.get(family.name, {}), kept.setdefault(family.name, {})
            if family.parts is None:
                yield from self._samples(family, family.samples, old, new, out)
                continue
            old_parts = self._parts.get(family.name, {})
            new_parts = kept_parts.setdefault(family.name, {})
            for key, samples in family.parts:
                seen = old_parts.get(id(key))
                if seen is None or seen[0] is not key:
                    rendered: list[bytes] = []
                    lines: dict = {}
                    yield from self._samples(family, samples, old, lines, rendered)
                    seen = (key, b"".join(rendered), lines)
                new.update(seen[2])  # its lines stay known for when the part changes
                new_parts[id(key)] = seen
                out.append(seen[1])

    def _samples(self, family: Family, samples: Iterable, old: dict, new: dict,
                 out: list[bytes]):
        batch: list = []
        for sample in samples:
            batch.append(sample)
            if len(batch) == BATCH:
                out.append(self._batch(family, batch, old, new))
                batch = []
                yield None
        if batch:
            out.append(self._batch(family, batch, old, new))
            yield None

    @staticmethod
    def _batch(family: Family, samples: list, old: dict, new: dict) -> bytes:
        lines: list[bytes | None] = []
        missing = []
        for labels, value in samples:
            seen = old.get(labels)
            if seen is not None and seen[0] == value:
                new[labels] = seen
                lines.append(seen[1])
            else:
                missing.append((len(lines), labels, value))
                lines.append(None)
        if missing:
            fresh = family.empty()
            for _, labels, value in missing:
                fresh.add_metric(list(labels), value)
            # HELP, TYPE, one line per sample (label values are escaped: no raw newline).
            rendered = generate_latest(_One(fresh)).split(b"\n")[2:-1]
            if len(rendered) != len(missing):
                raise RuntimeError(f"{family.name}: {len(rendered)} lines for "
                                   f"{len(missing)} samples")
            for (at, labels, value), line in zip(missing, rendered):
                line += b"\n"
                new[labels] = (value, line)
                lines[at] = line
        return b"".join(lines)  # type: ignore[arg-type]


class Shared:
    """One piece of work at a time for many callers: `get()` while the work of `make` is under
    way fires with its result too (or its failure), instead of starting it again."""

    def __init__(self, make: Callable[[], defer.Deferred]):
        self.make = make
        self._waiting: list[defer.Deferred] | None = None

    def get(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if self._waiting is not None:
            self._waiting.append(d)
            return d
        self._waiting = [d]
        defer.maybeDeferred(self.make).addBoth(self._done)
        return d

    def _done(self, result) -> None:
        waiting, self._waiting = self._waiting or [], None
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
