"""The history checker itself, on hand-made histories."""
from __future__ import annotations

import threading

import pytest

from tests.faults.history import History


def produce(history, value, outcome, key=None):
    history.attempt(value)
    if outcome == "acked":
        history.acked(value, key or f"q:{value}")
    elif outcome == "refused":
        history.refused(value)
    elif outcome == "unknown":
        history.unknown(value)


def test_a_clean_history_is_ok():
    history = History()
    for i in range(5):
        produce(history, f"v{i}", "acked")
    history.consumed("v0")
    history.consumed("v1", "comet")
    report = history.check(pending=["v2", "v3", "v4"])
    assert report.ok
    assert (report.produced, report.acked, report.received, report.pending) == (5, 5, 2, 3)
    assert report.lost == [] and report.duplicated == {} and report.unexpected == []


def test_lost_duplicated_and_unexpected_are_told_apart():
    history = History()
    for value in ("a", "b", "c", "d"):
        produce(history, value, "acked")
    history.consumed("a")
    history.consumed("a")  # twice
    history.consumed("b")  # and still pending below
    history.consumed("zz")  # never produced
    report = history.check(pending=["b", "c", "yy"])
    assert not report.ok
    assert report.lost == ["d"]
    assert report.duplicated == {"a": 2, "b": 2}
    assert report.unexpected == ["yy", "zz"]
    assert "lost=1 duplicated=2 unexpected=2" in report.figures()


def test_a_value_pending_twice_is_a_duplicate():
    history = History()
    produce(history, "a", "acked")
    assert history.check(pending=["a", "a"]).duplicated == {"a": 2}


def test_refused_and_unknown_values_are_never_lost_but_are_counted_when_stored():
    history = History()
    produce(history, "r1", "refused")
    produce(history, "r2", "refused")
    produce(history, "u1", "unknown")
    produce(history, "u2", "unknown")
    history.attempt("inflight")  # never settled: unknown
    history.consumed("r1")
    report = history.check(pending=["u1"])
    assert report.ok
    assert report.lost == []
    assert (report.refused, report.unknown) == (2, 3)
    assert report.refused_but_stored == ["r1"]
    assert report.unknown_stored == 1


def test_a_refused_value_seen_twice_is_still_a_duplicate():
    history = History()
    produce(history, "r", "refused")
    history.consumed("r")
    assert history.check(pending=["r"]).duplicated == {"r": 2}


def test_every_produced_value_must_be_unique():
    history = History()
    history.attempt("same")
    with pytest.raises(ValueError):
        history.attempt("same")


def test_outcomes_settle_in_any_order_and_keys_are_kept():
    history = History()
    history.attempt("x")
    history.refused("x")
    history.acked("x", "q:7")  # a later, better-informed outcome wins
    assert history.keys == {"x": "q:7"}
    assert history.check(pending=[]).lost == ["x"]


def test_threads_can_record_concurrently():
    history = History()

    def work(n):
        for i in range(2000):
            value = f"{n}-{i}"
            history.attempt(value)
            history.acked(value)
            history.consumed(value)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = history.check(pending=[])
    assert report.ok and report.acked == report.received == 16000
