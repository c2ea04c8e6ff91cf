"""Running the scripts that do long work in steps: each step a short script, all of an
operation's steps under its first one's deadline, and a bound on how long a step is waited for."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer

from restmq.errors import RedisUnavailable
from restmq.redis import DEADLINE

# Long work is cut into steps, each a short script, so that Redis serves every other client
# between them (one script of a million entries holds all of Redis for seconds). Each is about
# a millisecond of Redis time.
DEAD_STEP = 1000  # dead entries one pop or peek removes before it answers MORE
PURGE_STEP = 1000  # pending entries one purge script retires itself; more: retire_range steps
STATS_PAGE = 1000  # QUEUESET members one stats script reads (SSCAN COUNT)
MORE = "MORE"  # a script's reply when it stopped after its share of work


class StepsMixin:
    """How Core runs its scripts. Needs `redis` (a RedisService), `clock` and `scripts`."""

    def _run(self, name: str, keys: tuple[str, ...], *args: Any) -> defer.Deferred:
        return self.redis.run_script(self.scripts[name], keys, *args)

    def _stepped(self, name: str, keys: tuple[str, ...], *args: Any) -> defer.Deferred:
        """Run a writing script until it answers something other than MORE. Every step
        carries the first one's deadline, so the whole operation is refused by Redis past it,
        and none is waited for beyond the command timeout: a 503 then means that no step
        after the last answered one was applied (and those only skipped dead entries)."""
        deadline = self.redis.deadline()
        give_up = self.clock.seconds() + self.redis.timeout

        def again(reply):  # the usual single step costs no coroutine
            if reply != MORE:
                return reply
            return defer.ensureDeferred(self._more_steps(name, keys, args, deadline, give_up))

        return self._run(name, keys, *args, deadline).addCallback(again)

    async def _more_steps(self, name: str, keys: tuple[str, ...], args: tuple, deadline: Any,
                          give_up: float) -> Any:
        reply = MORE
        while reply == MORE:
            if self.redis.expired(deadline):
                raise RedisUnavailable(f"{name}: too many dead entries to skip in time")
            reply = await self._bounded(self._run(name, keys, *args, deadline), give_up)
        return reply

    def _bounded(self, d: defer.Deferred, give_up: float) -> defer.Deferred:
        """d's outcome, or RedisUnavailable at `give_up` (clock time) if it has none by then.
        d itself is never cancelled: its reply must still be read off its connection."""
        out = defer.Deferred()

        def late():
            out.errback(RedisUnavailable("no answer within the command timeout"))

        timer = self.clock.callLater(max(0.0, give_up - self.clock.seconds()), late)

        def settled(result):
            if timer.active():
                timer.cancel()
                out.callback(result)  # a Failure goes down out's errback chain
            return None  # a late outcome is dropped here

        d.addBoth(settled)
        return out

    def _write(self, name: str, keys: tuple[str, ...], *args: Any) -> defer.Deferred:
        """Run a script that writes, with its deadline as the last argument."""
        return self.redis.run_script(self.scripts[name], keys, *args, self._deadline())

    def _deadline(self) -> Any:
        """Where a script takes its deadline: the Redis service puts there, as it sends the
        command, Redis's time (not ours) a second before we may give up waiting for the
        reply, so a write Redis only gets to after our 503 or retry (a paused Redis) is
        never applied, whatever the offset between the two clocks."""
        return DEADLINE
