"""restmq.clock.use_monotonic_time on Twisted's own scheduling code (ReactorBase's callLater,
timeout and runUntilCurrent), with a wall clock and a monotonic clock driven by the test: once
installed, a step of the wall clock neither freezes a timer nor fires one early."""
from __future__ import annotations

from twisted.internet import task
from twisted.internet.base import ReactorBase

from restmq.clock import use_monotonic_time


class Reactor(ReactorBase):
    """Twisted's scheduling without I/O; its wall clock is `wall[0]`."""

    def __init__(self, wall: list[float]):
        super().__init__()
        self.seconds = lambda: wall[0]  # what time.time would say

    def installWaker(self):
        pass


def clocks():
    wall, mono = [1_700_000_000.0], [500.0]
    return Reactor(wall), wall, mono


def install(reactor, mono):
    return use_monotonic_time(reactor, monotonic=lambda: mono[0])


def test_calls_already_scheduled_keep_their_delay_on_the_new_base():
    reactor, wall, mono = clocks()
    fired = []
    reactor.callLater(3, fired.append, "pending")
    reactor.runUntilCurrent()  # moves it from the new calls to the heap
    reactor.callLater(7, fired.append, "new")
    install(reactor, mono)
    assert sorted(call.getTime() for call in reactor.getDelayedCalls()) == [503.0, 507.0]
    assert reactor.timeout() == 3
    mono[0] += 3
    reactor.runUntilCurrent()
    assert fired == ["pending"]
    mono[0] += 4
    reactor.runUntilCurrent()
    assert fired == ["pending", "new"]


def test_a_backward_step_of_the_wall_clock_freezes_no_timer():
    reactor, wall, mono = clocks()
    fired = []
    install(reactor, mono)
    reactor.callLater(5, fired.append, "watchdog")
    wall[0] -= 60
    assert reactor.timeout() == 5
    mono[0] += 5
    reactor.runUntilCurrent()
    assert fired == ["watchdog"]


def test_a_forward_step_of_the_wall_clock_fires_no_timer_early():
    reactor, wall, mono = clocks()
    fired = []
    install(reactor, mono)
    reactor.callLater(20, fired.append, "head timeout")
    wall[0] += 60
    mono[0] += 1
    reactor.runUntilCurrent()
    assert fired == [] and reactor.timeout() == 19


def test_without_it_the_reactor_follows_the_wall_clock():
    # What use_monotonic_time is for: Twisted's reactor on time.time.
    reactor, wall, mono = clocks()
    fired = []
    reactor.callLater(20, fired.append, "head timeout")
    wall[0] += 60
    reactor.runUntilCurrent()
    assert fired == ["head timeout"]


def test_reset_and_new_calls_use_the_monotonic_base():
    reactor, wall, mono = clocks()
    call = reactor.callLater(10, lambda: None)
    install(reactor, mono)
    call.reset(2)
    assert call.getTime() == 502.0
    assert reactor.callLater(1, lambda: None).getTime() == 501.0


def test_installing_twice_changes_nothing():
    reactor, wall, mono = clocks()
    monotonic = lambda: mono[0]  # noqa: E731
    use_monotonic_time(reactor, monotonic)
    call = reactor.callLater(4, lambda: None)
    assert use_monotonic_time(reactor, monotonic) is reactor
    assert call.getTime() == 504.0


def test_a_task_clock_is_left_as_it_is():
    clock = task.Clock()
    seconds = clock.seconds
    assert use_monotonic_time(clock) is clock
    assert clock.seconds == seconds
