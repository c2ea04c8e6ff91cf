"""The acks of pops that finish in one turn of the reactor run as one script
(restmq.core.acks), on task.Clock with a script runner answered by the test."""
from __future__ import annotations

from twisted.internet import defer, task

from restmq.core import acks
from restmq.core.leases import Acked, _acked
from restmq.errors import RedisTrouble, RedisUnavailable


class Runs:
    """Records each script run (queue, receipts) and answers it when the test says."""

    def __init__(self):
        self.runs: list[tuple[str, list[str], defer.Deferred]] = []

    def __call__(self, queue, receipts):
        d = defer.Deferred()
        self.runs.append((queue, list(receipts), d))
        return d


def merger():
    clock, runs = task.Clock(), Runs()
    return acks.AckMerger(runs, _acked, clock), clock, runs


def results(ds):
    out = []
    for d in ds:
        d.addBoth(out.append)
    return out


def test_acks_of_one_turn_run_as_one_script_and_each_gets_its_own_outcome():
    m, clock, runs = merger()
    ds = [m.ack("q", ["1.1.a", "2.1.a"]), m.ack("q", ["3.1.b"]), m.ack("other", ["9.1.c"])]
    got = results(ds)
    assert runs.runs == []  # nothing before the turn is over
    clock.advance(0)
    assert [(q, r) for q, r, _ in runs.runs] == [("q", ["1.1.a", "2.1.a", "3.1.b"]),
                                                ("other", ["9.1.c"])]
    runs.runs[0][2].callback(["acked", "stale", "acked"])
    runs.runs[1][2].callback(["stale"])
    assert got == [Acked("q", ["1.1.a"], ["2.1.a"]), Acked("q", ["3.1.b"], []),
                   Acked("other", [], ["9.1.c"])]
    # The next turn starts a new group.
    m.ack("q", ["4.1.d"])
    clock.advance(0)
    assert [r for _, r, _ in runs.runs[2:]] == [["4.1.d"]]


def test_a_failed_run_fails_each_of_its_requests_alone():
    m, clock, runs = merger()
    got = results([m.ack("q", ["1.1.a"]), m.ack("q", ["2.1.b"])])
    clock.advance(0)
    runs.runs[0][2].errback(RedisUnavailable("gone"))
    assert [f.check(RedisUnavailable) for f in got] == [RedisUnavailable, RedisUnavailable]
    assert got[0] is not got[1]
    # A try again runs on its own.
    again = results([m.ack("q", ["1.1.a"])])
    clock.advance(0)
    runs.runs[1][2].callback(["acked"])
    assert again == [Acked("q", ["1.1.a"], [])]


def test_a_reply_that_does_not_answer_every_receipt_fails_them_all():
    m, clock, runs = merger()
    got = results([m.ack("q", ["1.1.a"]), m.ack("q", ["2.1.b"])])
    clock.advance(0)
    runs.runs[0][2].callback(["acked"])
    assert all(f.check(RedisTrouble) for f in got), got


def test_a_big_group_is_cut_between_requests():
    m, clock, runs = merger()
    per = [f"{n}.1.{'a' * 16}" for n in range(100)]
    ds = [m.ack("q", per) for _ in range(acks.MERGE_MAX // 100 + 2)]
    clock.advance(0)
    sizes = [len(r) for _, r, _ in runs.runs]
    assert sizes == [acks.MERGE_MAX, 200], sizes
    got = results(ds)
    for _, receipts, d in runs.runs:
        d.callback(["acked"] * len(receipts))
    assert len(got) == len(ds) and all(a.acked == per for a in got)


def test_a_runner_that_raises_fails_its_requests():
    clock = task.Clock()

    def broken(queue, receipts):
        raise RedisUnavailable("no connection")

    m = acks.AckMerger(broken, _acked, clock)
    got = results([m.ack("q", ["1.1.a"])])
    clock.advance(0)
    assert got[0].check(RedisUnavailable)
