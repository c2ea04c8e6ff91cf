"""A push queue's acks are committed in groups (a real server and Redis): the 2xx replies
that come while an ack is on its way to Redis are acked together, in one run of the ack
script, when it is answered; each message is still acked, and only after its 2xx. Redis is
held with CLIENT PAUSE while the replies come, so the grouping does not depend on timing."""
from __future__ import annotations

import pytest

from restmq.redis.scripts import load_script
from tests.conftest import ServerProcess
from tests.push_target import HANG, Target, redis_proc  # noqa: F401 (fixtures)
from tests.test_push import add, configure
from tests.util import wait_until

MESSAGES = 10


@pytest.fixture(scope="module")
def server(redis_proc):
    proc = ServerProcess(redis_proc.port, "--push-private").start()
    yield proc
    proc.stop()


def ack_runs(redis) -> list[list[str]]:
    """The arguments of every ack script run the slow log holds (it logs every command)."""
    shas = {load_script("ack").sha, load_script("ack", counters=True).sha}
    return [[a.decode() if isinstance(a, bytes) else a for a in entry[3]]
            for entry in redis("SLOWLOG", "GET", "-1")
            if len(entry[3]) > 1 and entry[3][1] in shas | {s.encode() for s in shas}]


def test_replies_that_come_while_an_ack_is_on_its_way_are_acked_in_one_run(server, redis):
    target = Target(behave=lambda r: HANG).start()
    try:
        configure(server.url, push_url=target.url(), push_concurrency=MESSAGES,
                  push_rate=1000, push_burst=1000)
        keys = [add(server.url, f"v{i}") for i in range(MESSAGES)]
        wait_until(lambda: target.open == MESSAGES, what="every message at the target")
        redis("CONFIG", "SET", "slowlog-log-slower-than", "0")
        redis("CONFIG", "SET", "slowlog-max-len", "10000")
        redis("SLOWLOG", "RESET")
        # The first ack waits in Redis for a second; the other replies come meanwhile.
        redis("CLIENT", "PAUSE", "1000", "ALL")
        target.release()
        wait_until(lambda: redis("ZCARD", "jobs:inflight") == 0
                   and redis("LLEN", "jobs:queue") == 0, what="every message acked")
        runs = ack_runs(redis)
        assert len(runs) == 2, runs  # the first alone, then the nine that came meanwhile
        assert all(redis("HEXISTS", "jobs:deliveries", key) == 0 for key in keys)
        assert redis("ZCARD", "jobs:delayed") == 0  # none released: every one acked
        assert len(target.requests) == MESSAGES  # each pushed once
    finally:
        redis("CONFIG", "SET", "slowlog-log-slower-than", "10000")
        target.stop()
