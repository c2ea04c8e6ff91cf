"""The ticker's schedule on task.Clock (restmq/delivery/ticker.py): a look at start, every
second while idle, at the earliest due time Redis reported when sooner, at due times this
process created, at once again after a full look, one look at a time, and a failing Redis
retried every second with one log line."""
from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import LogLevel, globalLogPublisher

from restmq.core import TICK_QUEUES, Due, Ticked
from restmq.delivery import Ticker
from restmq.errors import RedisFailure, RedisUnavailable


class Core:
    """DUESET as a dict (queue -> due ms) on the clock's time; a tick of a due queue removes it,
    unless `keep` says when it is due next. `hold` makes due() answer only when the test says."""

    def __init__(self, clock: task.Clock):
        self.clock = clock
        self.dueset: dict[str, int] = {}
        self.keep: dict[str, int] = {}
        self.looks: list[float] = []
        self.ticks: list[str] = []
        self.fail_due: Exception | None = None
        self.fail_tick: dict[str, Exception] = {}
        self.hold = False
        self.held: list[defer.Deferred] = []
        self.on_due = None

    def now(self) -> int:
        return round(self.clock.seconds() * 1000)

    def due(self):
        self.looks.append(self.clock.seconds())
        if self.fail_due is not None:
            return defer.fail(self.fail_due)
        reply = self._due()
        if self.hold:
            d = defer.Deferred()
            self.held.append(d)
            d.addCallback(lambda _: reply)
            return d
        return defer.succeed(reply)

    def _due(self) -> Due:
        ordered = sorted(self.dueset, key=self.dueset.get)
        due = [q for q in ordered if self.dueset[q] <= self.now()][:TICK_QUEUES]
        return Due(self.now(), self.dueset[ordered[0]] if ordered else None, due)

    def tick(self, queue: str):
        self.ticks.append(queue)
        if queue in self.fail_tick:
            return defer.fail(self.fail_tick[queue])
        if queue in self.keep:
            self.dueset[queue] = self.keep.pop(queue)
        else:
            self.dueset.pop(queue, None)
        head = min(self.dueset.values()) if self.dueset else None
        return defer.succeed(Ticked(self.now(), self.dueset.get(queue), head, 0, 0, 0))


def started(dueset: dict[str, int] | None = None, keep: dict[str, int] | None = None):
    clock = task.Clock()
    core = Core(clock)
    core.dueset.update(dueset or {})
    core.keep.update(keep or {})
    ticker = Ticker(core, clock)
    ticker.startService()
    return clock, core, ticker


def advance(clock: task.Clock, seconds: float) -> None:
    """Let `seconds` pass, running each timer at its own time (not all at the end)."""
    end = clock.seconds() + seconds
    while True:
        times = [call.getTime() for call in clock.getDelayedCalls()]
        if not times or min(times) > end + 1e-9:
            clock.advance(max(0.0, end - clock.seconds()))
            return
        clock.advance(max(0.0, min(times) - clock.seconds()))


def test_an_idle_process_looks_once_a_second_from_the_start():
    clock, core, ticker = started()
    assert core.looks == [0]
    advance(clock, 5)
    assert [round(t, 2) for t in core.looks] == [0, 1, 2, 3, 4, 5]
    assert core.ticks == []


def test_it_looks_at_the_earliest_due_time_when_sooner_than_a_second():
    clock, core, ticker = started()
    core.dueset["q"] = 1300
    advance(clock, 1.0)  # the look at 1 s sees q due at 1.3 s
    advance(clock, 0.3)
    assert [round(t, 2) for t in core.looks] == [0, 1, 1.3]
    assert core.ticks == ["q"]
    advance(clock, 1.0)
    assert [round(t, 2) for t in core.looks] == [0, 1, 1.3, 2.3]


def test_a_due_time_created_here_is_met_on_time_and_never_delays_a_look():
    clock, core, ticker = started()
    assert core.on_due == ticker.due_in
    core.on_due(0.25)
    core.on_due(0.6)  # later than the one set: changes nothing
    advance(clock, 0.25)
    assert [round(t, 2) for t in core.looks] == [0, 0.25]
    core.on_due(5)  # later than the next second: the second still comes
    advance(clock, 1.0)
    assert [round(t, 2) for t in core.looks] == [0, 0.25, 1.25]


def test_a_full_look_is_followed_by_another_at_once():
    clock, core, ticker = started({f"q{n}": 500 for n in range(TICK_QUEUES + 3)})
    advance(clock, 0.5)  # the look at 0 gives 0.5 as the head
    assert [round(t, 2) for t in core.looks] == [0, 0.5, 0.5]  # the second at once
    assert sorted(core.ticks) == sorted(f"q{n}" for n in range(TICK_QUEUES + 3))


def test_a_queue_that_stays_due_is_ticked_again_at_once():
    # a tick that met its step limit leaves the queue due now: looked at again at once
    clock, core, ticker = started({"q": 0}, keep={"q": 0})
    clock.advance(0)
    assert core.ticks == ["q", "q"] and core.looks == [0, 0]


def test_one_look_at_a_time_and_another_right_after_when_due_meanwhile():
    clock, core, ticker = started()
    core.hold = True
    advance(clock, 1.0)
    assert len(core.looks) == 2 and len(core.held) == 1
    core.on_due(0)
    clock.advance(0)
    assert len(core.looks) == 2  # not while the first runs
    core.held.pop().callback(None)
    clock.advance(0)
    assert len(core.looks) == 3


def test_a_failing_redis_is_retried_every_second_and_logged_once():
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        clock, core, ticker = started()
        core.fail_due = RedisUnavailable("down")
        advance(clock, 3.0)
        core.fail_due = None
        advance(clock, 1.0)
        core.fail_due = RedisUnavailable("down again")
        advance(clock, 1.0)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert [round(t, 2) for t in core.looks] == [0, 1, 2, 3, 4, 5]
    warnings = [e for e in seen if e.get("log_level") == LogLevel.warn and
                e.get("log_namespace", "").endswith("Ticker")]
    assert [e["error"] for e in warnings] == ["down", "down again"]


def test_an_error_reply_for_one_queue_spares_the_others():
    clock, core, ticker = started()
    core.dueset.update({"bad": 100, "good": 200})
    core.fail_tick["bad"] = RedisFailure("WRONGTYPE")
    advance(clock, 1.0)
    assert core.ticks == ["bad", "good"]
    advance(clock, 0.95)
    assert [round(t, 2) for t in core.looks] == [0, 1]  # not at once: a second later
    advance(clock, 0.05)
    assert core.ticks == ["bad", "good", "bad"]


def test_stop_cancels_the_schedule_and_waits_for_the_look_in_progress():
    clock, core, ticker = started()
    core.hold = True
    advance(clock, 1.0)
    stopped = ticker.stopService()
    assert not stopped.called
    assert core.on_due is not ticker.due_in
    core.on_due(0)  # harmless once stopped
    core.held.pop().callback(None)
    assert stopped.called
    advance(clock, 3.0)
    assert len(core.looks) == 2
    assert clock.getDelayedCalls() == []
