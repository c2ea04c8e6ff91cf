"""Per-queue settings: the delivery policy (broadcast or roundrobin) and the flow-control
status (started or stopped), as stored in Redis and as the routes show them."""
from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer

from restmq.errors import BadRequest
from restmq.names import check_name
from restmq.redis import keys, text

POLICY_BROADCAST = "1"
POLICY_ROUNDROBIN = "2"
POLICY_NAMES = {"broadcast": POLICY_BROADCAST, "roundrobin": POLICY_ROUNDROBIN}


def policy_name(stored: Any) -> str:
    return "roundrobin" if stored == POLICY_ROUNDROBIN else "broadcast"


def status_flag(stored: Any) -> int | None:
    """The status as the control route shows it: 1, 0, or None when never set."""
    if stored is None:
        return None
    return 1 if stored == "1" else 0


class PolicyMixin:
    """Core's reads and writes of a queue's policy and status."""

    def get_policy(self, queue: str) -> defer.Deferred:
        """Fires with 'broadcast' or 'roundrobin'."""
        check_name(queue)
        return self.redis.execute("GET", keys.policy(queue)).addCallback(policy_name)

    def set_policy(self, queue: str, name: str) -> defer.Deferred:
        """Stores the policy; fails with BadRequest('invalid policy') for an unknown name."""
        check_name(queue)
        if name not in POLICY_NAMES:
            return defer.fail(BadRequest("invalid policy"))
        return self._set(keys.policy(queue), POLICY_NAMES[name])

    def get_status(self, queue: str) -> defer.Deferred:
        """Fires with the raw stored status ('1', '0', other text) or None when absent."""
        check_name(queue)
        return self.redis.execute("GET", keys.status(queue)).addCallback(text)

    def set_status(self, queue: str, started: bool) -> defer.Deferred:
        """Stores 1 or 0; starting also publishes `wake` so the backlog drains at once."""
        check_name(queue)
        if not started:
            return self._set(keys.status(queue), "0")
        return self._set(keys.status(queue), "1", keys.channel(queue),
                         json.dumps({"type": "wake", "db": self.redis.db}))

    def _set(self, key: str, value: str, *publish: str) -> defer.Deferred:
        """SET (and optionally PUBLISH) in one script with a deadline, like every write."""
        return self.redis.run_script(self.scripts["set"], (key,), value, self._deadline(),
                                     *publish)
