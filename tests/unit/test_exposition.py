"""restmq/exposition.py on a task.Clock: the text rendered in steps is byte for byte what
prometheus_client writes for the whole families, lines kept from the last rendering follow
changed values, each step renders a bounded batch and the clock gets its turn between steps,
and callers that come during a piece of work share it."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from twisted.internet import defer, task

from restmq import exposition
from restmq.exposition import BATCH, Exposition, Family, Shared, cooperator

NAMES = [f"q{i:05d}" for i in range(2 * BATCH + 7)] + ['say"hi"', "line\nbreak", "back\\s"]


def families(values: dict[str, int]) -> list[Family]:
    return [Family(GaugeMetricFamily, "t_depth", "Depth.", ("queue",),
                   [((n,), values[n]) for n in NAMES]),
            Family(CounterMetricFamily, "t_done", "Done by way.", ("queue", "way"),
                   [((n, way), values[n] + k) for n in NAMES for k, way in enumerate("ab")]),
            Family(GaugeMetricFamily, "t_flag", "A flag.", (), [((), 1)])]


def whole(fams: list[Family], *collectors) -> bytes:
    built = []
    for f in fams:
        fam = f.empty()
        for labels, value in f.samples:
            fam.add_metric(list(labels), value)
        built.append(fam)
    return b"".join([generate_latest(exposition._One(*built))] +
                    [generate_latest(c) for c in collectors])


def run(clock: task.Clock, d: defer.Deferred):
    out = []
    d.addBoth(out.append)
    for _ in range(10_000):
        if out:
            break
        clock.advance(0)
    return out[0]


def test_rendered_in_steps_as_prometheus_client_renders_the_whole():
    clock = task.Clock()
    expo = Exposition(cooperator(clock, slice_seconds=0))
    registry = CollectorRegistry()
    Gauge("t_up", "Up.", registry=registry).set(1)
    values = {n: i % 3 for i, n in enumerate(NAMES)}
    d = expo.render([*families(values), registry])
    assert not d.called  # nothing rendered before the clock turns
    assert run(clock, d) == whole(families(values), registry)
    values.update({NAMES[1]: 40, NAMES[-1]: 9, NAMES[BATCH + 3]: 0})
    again = expo.render([*families(values), registry])
    assert run(clock, again) == whole(families(values), registry)


def test_each_step_renders_one_batch_at_most(monkeypatch):
    calls = []
    real = exposition.generate_latest

    def counting(collector):
        text = real(collector)
        calls.append(text.count(b"\n"))
        return text

    monkeypatch.setattr(exposition, "generate_latest", counting)
    turns: list = []
    # One step per turn: the reactor would serve its connections between two turns.
    expo = Exposition(task.Cooperator(terminationPredicateFactory=lambda: lambda: True,
                                      scheduler=turns.append))
    d = expo.render(families({n: 1 for n in NAMES}))
    steps = 0
    while not d.called:
        before = len(calls)
        turns.pop(0)()
        steps += 1
        assert sum(calls[before:]) <= BATCH + 2 * 2  # a batch, and a header or two
    assert steps >= (len(NAMES) * 3 + 1) // BATCH
    # The second time nothing changed: only the headers are rendered again.
    calls.clear()
    d = expo.render(families({n: 1 for n in NAMES}))
    while not d.called:
        turns.pop(0)()
    assert sum(calls) == 2 * 3


def test_callers_during_the_work_share_it():
    made = []

    def make():
        made.append(defer.Deferred())
        return made[-1]

    shared = Shared(make)
    first, second = shared.get(), shared.get()
    assert len(made) == 1
    made[0].callback(b"text")
    assert first.result == second.result == b"text"
    third = shared.get()  # after it ended: the work again
    assert len(made) == 2 and not third.called
    made[1].errback(RuntimeError("gone"))
    failures = []
    third.addErrback(failures.append)
    assert failures and failures[0].check(RuntimeError)


def test_a_part_given_again_keeps_its_text_and_a_new_one_is_rendered(monkeypatch):
    clock = task.Clock()
    expo = Exposition(cooperator(clock, slice_seconds=0))
    pages = [[(f"a{i}", i) for i in range(300)], [(f"b{i}", 1) for i in range(300)]]

    def fam(pages):
        return Family(GaugeMetricFamily, "t_depth", "Depth.", ("queue",),
                      parts=[(page, (((n,), v) for n, v in page)) for page in pages])

    def flat(pages):
        return Family(GaugeMetricFamily, "t_depth", "Depth.", ("queue",),
                      [((n,), v) for page in pages for n, v in page])

    assert run(clock, expo.render([fam(pages)])) == whole([flat(pages)])
    rendered = []
    real = exposition.generate_latest
    monkeypatch.setattr(exposition, "generate_latest",
                        lambda c: rendered.append(c) or real(c))
    changed = [pages[0], [(f"b{i}", 2 if i == 7 else 1) for i in range(300)]]
    assert run(clock, expo.render([fam(changed)])) == whole([flat(changed)])
    # The header, then the one changed sample: the kept page, and the other lines, reused.
    assert [len(list(c.collect())[0].samples) for c in rendered] == [0, 1]
    again = [[(f"a{i}", 5 if i == 0 else i) for i in range(300)], changed[1]]
    rendered.clear()
    assert run(clock, expo.render([fam(again)])) == whole([flat(again)])
    assert [len(list(c.collect())[0].samples) for c in rendered] == [0, 1]
