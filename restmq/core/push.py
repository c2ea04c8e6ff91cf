"""The push claim: what a push dispatcher (restmq.delivery.push) may send now, under the
queue's limits, which hold across every process because their state is in Redis (the token
bucket `<q>:bucket`, the in-flight set), and the configuration to send it with, read in the
same script so that no process keeps a stale copy. And the pause a 429 or 503 asks for."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from twisted.internet import defer

from restmq.core.leases import TOKEN_BYTES, Lease, Released, receipt
from restmq.core.steps import DEAD_STEP
from restmq.names import check_name
from restmq.redis import DEADLINE, keys


@dataclass(frozen=True)
class PushConfig:
    """The push attributes in force when the messages were claimed."""

    url: str
    auth: str | None
    content_type: str
    timeout: int
    backoff_min: float
    backoff_max: float
    pre_hook: str | None
    post_hook: str | None


@dataclass(frozen=True)
class PushClaim:
    """`state`: 'ok' (messages taken, possibly none), 'not_push', 'stopped', 'busy' (no room
    under push_concurrency) or 'rate' (`wait_ms` until the bucket holds a whole token)."""

    queue: str
    state: str
    messages: list[Lease] = field(default_factory=list)
    config: PushConfig | None = None
    wait_ms: int = 0


class PushMixin:
    """Core's push operations. Needs what restmq.core.leases.LeasesMixin needs."""

    def push_claim(self, queue: str) -> defer.Deferred:
        """PUSH_CLAIM: fires with a PushClaim."""
        check_name(queue)
        token = secrets.token_hex(TOKEN_BYTES)
        deadline = self.redis.deadline()

        def run(dead: str) -> defer.Deferred:
            return self._run("push_claim", keys.push_claim_keys(queue, dead or None), queue,
                             keys.channel(queue), self.redis.db, self.consumed_ttl, dead,
                             keys.channel(dead) if dead else "", deadline, token, DEAD_STEP)

        d = defer.ensureDeferred(self._believing(queue, run, deadline, more=True))
        return d.addCallback(self._push_claimed, queue, token)

    def _push_claimed(self, reply: list, queue: str, token: str) -> PushClaim:
        state = reply[0]
        if state == "rate":
            return PushClaim(queue, state, wait_ms=int(reply[1]))
        if state != "ok":
            return PushClaim(queue, state)
        now, lease_ms = int(reply[1]), int(reply[2])
        url, auth, kind, timeout, low, high, pre, post = reply[3:11]
        config = PushConfig(url, auth or None, kind or "text/plain; charset=utf-8",
                            int(timeout), float(low), float(high), pre or None, post or None)
        rows, until = reply[11:], (now + lease_ms) / 1000
        messages = [Lease(rows[i], rows[i + 1], receipt(rows[i], rows[i + 2], token),
                          int(rows[i + 2]), until) for i in range(0, len(rows), 3)]
        if messages:
            self._due_in(lease_ms / 1000)
        return PushClaim(queue, state, messages, config)

    def push_release(self, queue: str, receipt: str, delay_ms: int) -> defer.Deferred:
        """RELEASE of one pushed message for a retry `delay_ms` milliseconds from now (a
        backoff need not be whole seconds); dead-lettered at max_attempts. Fires with
        Released."""
        check_name(queue)

        def done(reply):
            outcome = reply[1]
            if outcome == "released" and delay_ms:
                self._due_in(delay_ms / 1000)
            return Released(queue, [receipt] if outcome == "released" else [],
                            [receipt] if outcome == "dead_lettered" else [],
                            [receipt] if outcome == "stale" else [])

        return self._lease_script("release", queue, max(0, delay_ms), receipt).addCallback(done)

    def push_pause(self, queue: str, seconds: float) -> defer.Deferred:
        """No process pushes from `queue` for `seconds`: its bucket goes to -push_rate *
        seconds tokens."""
        check_name(queue)
        return self._run("push_pause", keys.push_pause_keys(queue), DEADLINE,
                         f"{seconds:.3f}")
