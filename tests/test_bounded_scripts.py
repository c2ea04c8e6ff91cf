"""Long work in Redis is done in short steps: skipping dead entries, purging a long list, the
all-queues stats and the jobs page never hold Redis for one long script, so other clients are
served meanwhile and the reply tells what was done.

The large data is built inside Redis by a Lua script (a second or two). A probe client polls
Redis on its own connection while a request runs; seeing a state *between* the first and the
last step shows that Redis answered it in the middle of the work (one long script would only
ever let it see the state before or after)."""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, task

from restmq import core as corelib
from restmq.errors import RedisUnavailable
from tests.comet import CometClient
from tests.http_client import delete, get, post
from tests.resp import RedisClient
from tests.util import wait_until

# A hundred steps: far more than one script should do at once, and few enough that all of them
# fit an operation's 5 s deadline on a loaded 2-core machine (300,000 did not, once, in CI).
MANY = 100_000

FILL = """
-- ARGV: queue, first, last, live ('1': values are set). Pushes <q>:first..<q>:last (oldest
-- first) in batches, as adds would, and registers the queue.
local q, first, last, live = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local batch = {}
for n = first, last do
  local key = q .. ':' .. n
  if live then redis.call('SET', key, 'v' .. n) end
  batch[#batch + 1] = key
  if #batch == 5000 or n == last then
    redis.call('LPUSH', q .. ':queue', unpack(batch))
    batch = {}
  end
end
redis.call('SET', q .. ':UUID', last)
redis.call('SADD', 'QUEUESET', q)
redis.call('SETNX', 'queuestat::' .. q, '1')
return redis.call('LLEN', q .. ':queue')
"""

REGISTER = """
-- ARGV: prefix, count: registers <prefix>1..<prefix>count in QUEUESET.
local batch = {}
for n = 1, tonumber(ARGV[2]) do
  batch[#batch + 1] = ARGV[1] .. n
  if #batch == 5000 then redis.call('SADD', 'QUEUESET', unpack(batch)); batch = {} end
end
if #batch > 0 then redis.call('SADD', 'QUEUESET', unpack(batch)) end
return redis.call('SCARD', 'QUEUESET')
"""

KEYS = """
-- ARGV: prefix, count: SETs <prefix>1..<prefix>count.
for n = 1, tonumber(ARGV[2]) do redis.call('SET', ARGV[1] .. n, '1') end
return tonumber(ARGV[2])
"""


def fill(redis, queue: str, first: int, last: int, live: bool) -> None:
    assert redis("EVAL", FILL, 0, queue, first, last, "1" if live else "0") >= last - first + 1


@contextlib.contextmanager
def probing(port: int, *command):
    """Polls `command` on a connection of its own for as long as the block runs; yields the
    list of answers (the first is in before the block starts)."""
    answers: list = []
    stop = threading.Event()
    started = threading.Event()

    def run():
        client = RedisClient(port, timeout=30)
        try:
            while not stop.is_set():
                answers.append(client(*command))
                started.set()
        finally:
            client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield answers
    finally:
        stop.set()
        thread.join(30)


def calls(info: str, command: str) -> int:
    found = re.search(rf"^cmdstat_{command}:calls=(\d+)", info, re.M)
    return int(found.group(1)) if found else 0


# -- dead entries -------------------------------------------------------------------------------


@pytest.fixture
def dead_then_live(redis):
    """MANY dead entries q:1..q:MANY at the tail, then one live message behind them."""
    fill(redis, "q", 1, MANY, live=False)
    fill(redis, "q", MANY + 1, MANY + 1, live=True)
    return f"q:{MANY + 1}", f"v{MANY + 1}"


def mid_way(answers, low: int, high: int) -> bool:
    return any(low < a < high for a in answers)


def test_hard_get_skips_many_dead_entries_in_steps(H, redis, redis_proc, dead_then_live):
    key, value = dead_then_live
    with probing(redis_proc.port, "LLEN", "q:queue") as lengths:
        reply = get(H, "/q/q")
    assert (reply.status, reply.json) == (200, {"key": key, "value": value, "count": 0})
    assert redis("EXISTS", "q:queue") == 0
    assert lengths[0] == MANY + 1
    assert mid_way(lengths, 1, MANY + 1), "Redis served nobody while dead entries were skipped"


def test_take_skips_many_dead_entries_in_steps(H, redis, redis_proc, dead_then_live):
    key, value = dead_then_live
    with probing(redis_proc.port, "LLEN", "q:queue") as lengths:
        reply = post(H, "/queue", form={"body": json.dumps({"cmd": "take", "queue": "q"})})
    assert (reply.status, reply.json) == (200, {"queue": "q", "value": value, "key": key})
    assert redis("EXISTS", "q:queue", key) == 0
    assert mid_way(lengths, 1, MANY + 1)


def test_soft_get_skips_many_dead_entries_in_steps(H, redis, redis_proc, dead_then_live):
    key, value = dead_then_live
    with probing(redis_proc.port, "LLEN", "q:queue") as lengths:
        reply = post(H, "/queue", form={"body": json.dumps({"cmd": "get", "queue": "q"})})
    assert (reply.status, reply.json) == (200, {"queue": "q", "value": value, "key": key,
                                                "count": 1})
    assert redis("LRANGE", "q:queue", 0, -1) == [key]
    assert mid_way(lengths, 1, MANY + 1)


def test_live_delivery_skips_many_dead_entries_in_steps(H, redis, redis_proc, dead_then_live):
    key, value = dead_then_live
    with probing(redis_proc.port, "LLEN", "q:queue") as lengths:
        comet = CometClient(H, "q")
        try:
            assert comet.messages(1, timeout=30) == [{"key": key, "value": value}]
        finally:
            comet.close()
    assert redis("EXISTS", "q:queue") == 0
    assert mid_way(lengths, 1, MANY + 1)


# -- purge --------------------------------------------------------------------------------------


PURGE_STATE = """return {redis.call('EXISTS', ARGV[1] .. ':queue'),
                         redis.call('TTL', ARGV[1] .. ':1'), redis.call('TTL', ARGV[2])}"""


def test_purge_of_a_long_list_answers_true_and_retires_in_steps(H, redis, redis_proc):
    fill(redis, "p", 1, MANY, live=True)
    redis("SET", "queuestat::p", "0")  # stopped: the live consumer must not drain the list
    redis("SET", "p:7:refcount", "3")
    newest = f"p:{MANY}"
    comet = CometClient(H, "p")
    try:
        with probing(redis_proc.port, "EVAL", PURGE_STATE, 0, "p", newest) as states:
            reply = delete(H, "/q/p")
            assert (reply.status, reply.json) == (200, {"queue": "p", "status": 1})
            comet.wait_end()  # the purge notification ended the consumer
            # an add after the reply is a new pending message, untouched by the retiring
            assert post(H, "/q/p", form={"value": "after"}).body == f"p:{MANY + 1}\r\n".encode()
            wait_until(lambda: redis("TTL", newest) >= 0, 30,  # retiring may go on after the
                       "the retention expiry of the newest value")  # reply
    finally:
        comet.close()
    assert comet.body == b"null\r\n"
    assert states[0] == [1, -1, -1]
    # Redis answered the probe after the list was gone and before the newest value was retired
    assert any(s[0] == 0 and s[2] == -1 for s in states), "one long script"
    for n in (1, 7, MANY // 2, MANY):
        assert 3500 < redis("TTL", f"p:{n}") <= 3600
    assert 3500 < redis("TTL", "p:7:refcount") <= 3600
    assert redis("LRANGE", "p:queue", 0, -1) == [f"p:{MANY + 1}"]
    assert redis("TTL", f"p:{MANY + 1}") == -1
    assert redis("GET", f"p:{MANY + 1}") == "after"


def test_purge_keeps_retiring_after_a_short_list(H, redis):
    """Below one step the purge is the single script it always was."""
    fill(redis, "s", 1, 50, live=True)
    assert delete(H, "/q/s").json == {"queue": "s", "status": 1}
    assert redis("EXISTS", "s:queue") == 0
    assert all(0 < redis("TTL", f"s:{n}") <= 3600 for n in range(1, 51))


@pytest.mark.parametrize("spoil", ["foreign tail", "behind the counter"])
def test_purge_of_a_long_list_it_cannot_number_is_one_script(H, redis, spoil):
    """Keys that are not <q>:<n> in push order cannot be retired by number: the purge then
    retires exactly the listed keys, in one script, as it always did."""
    fill(redis, "f", 1, 2 * corelib.PURGE_STEP, live=True)
    if spoil == "foreign tail":
        redis("SET", "elsewhere", "v")
        redis("RPUSH", "f:queue", "elsewhere")
    else:
        redis("SET", "f:UUID", 5)  # the newest key is numbered past the counter
    redis("LREM", "f:queue", 0, "f:1000")  # no longer pending: retiring by number would touch it
    assert delete(H, "/q/f").json == {"queue": "f", "status": 1}
    assert redis("TTL", "f:1000") == -1
    assert redis("EXISTS", "f:queue") == 0
    for key in ("f:1", f"f:{2 * corelib.PURGE_STEP}") + (("elsewhere",) if spoil[0] == "f"
                                                        else ()):
        assert 3500 < redis("TTL", key) <= 3600, key


# -- stats ----------------------------------------------------------------------------------------


def test_stats_of_many_queues_are_read_in_pages(H, redis, redis_proc):
    count = 50_000
    assert redis("EVAL", REGISTER, 0, "queue-", count) == count
    redis("LPUSH", "queue-7:queue", "queue-7:1")
    redis("SET", "queuestat::queue-9", "0")
    redis("CONFIG", "RESETSTAT")
    with probing(redis_proc.port, "INFO", "commandstats") as infos:
        reply = get(H, "/stats/")
    assert reply.status == 200
    body = reply.json
    assert body["count"] == count and len(body["queues"]) == count
    assert body["queues"]["queue-7"]["len"] == 1
    assert body["queues"]["queue-9"]["status"] == 0
    assert body["queues"]["queue-1"] == {"name": "queue-1", "len": 0, "status": "",
                                         "policy": "", "policy_name": "broadcast"}
    seen = [calls(info, "llen") for info in infos]
    assert mid_way(seen, 0, count), "one long script"
    reply = get(H, "/control/")
    assert reply.json["count"] == count
    assert reply.json["queues"]["queue-9"] == {"queue": "queue-9", "status": 0}


# -- jobs page ------------------------------------------------------------------------------------


def test_jobs_page_counts_at_most_a_bounded_number_of_keys(H, redis):
    assert redis("EVAL", KEYS, 0, "j:extra:", 150_000) == 150_000
    fill(redis, "j", 1, 3, live=True)
    reply = get(H, "/j/j")
    assert reply.status == 200
    page = reply.body.decode()
    found = re.search(r"queue objects: at least (\d+)<", page)
    assert found, page
    assert corelib.JOBS_MAX_KEYS <= int(found.group(1)) < 150_000
    assert "job count: 3" in page
    assert re.findall(r"<li>(.*?)</li>", page) == ["j:3", "j:2", "j:1"]


def test_jobs_page_gives_the_exact_count_below_the_bound(H, redis):
    fill(redis, "j", 1, 3, live=True)
    page = get(H, "/j/j").body.decode()
    assert "queue objects: 5<" in page  # j:1..3, j:queue, j:UUID


# -- the core's steps, with a fake Redis ----------------------------------------------------------


class StepRedis:
    """Answers every script with the next of `replies` (MORE forever once they run out) and
    records the arguments; `timeout` as the real service's."""

    def __init__(self, replies, timeout=5.0):
        self.replies = list(replies)
        self.timeout = timeout
        self.db = 0
        self.calls = []

    def run_script(self, script, *args):
        self.calls.append((script.name, args))
        return defer.succeed(self.replies.pop(0) if self.replies else "MORE")

    def deadline(self):
        return ("deadline", time.monotonic())  # as the real service: our clock at the start

    def expired(self, deadline):
        return time.monotonic() >= deadline[1] + self.timeout - 1.0


@pytest_twisted.ensureDeferred
async def test_steps_share_the_first_steps_deadline():
    fake = StepRedis(["MORE", "MORE", ["q:9", "v"]])
    core = corelib.Core(fake, consumed_ttl=60, clock=task.Clock())
    assert await core.hard_get("q") == corelib.Message("q:9", "v")
    assert len(fake.calls) == 3
    assert len({args for _, args in fake.calls}) == 1  # same queue, limit and deadline


@pytest_twisted.ensureDeferred
async def test_steps_stop_at_the_deadline_with_a_503():
    fake = StepRedis([], timeout=1.02)  # the deadline is 20 ms away
    core = corelib.Core(fake, consumed_ttl=60, clock=task.Clock())
    with pytest.raises(RedisUnavailable):
        await core.take("q")
    assert len(fake.calls) >= 2


def test_a_step_left_unanswered_is_a_503_at_the_timeout():
    clock = task.Clock()

    class Stalled(StepRedis):
        def run_script(self, script, *args):
            if self.calls:
                self.calls.append(args)
                return defer.Deferred()  # Redis never answers
            return super().run_script(script, *args)

    core = corelib.Core(Stalled(["MORE"]), consumed_ttl=60, clock=clock)
    outcome = []
    core.soft_get("q").addBoth(outcome.append)
    clock.advance(4.9)
    assert outcome == []
    clock.advance(0.2)
    assert len(outcome) == 1 and outcome[0].check(RedisUnavailable)


# -- restmq-engine runs the same scripts ----------------------------------------------------------


def engine(redis, *args) -> list[str]:
    """restmq-engine's output lines."""
    engine_path = str(Path(sys.executable).with_name("restmq-engine"))
    port = redis.sock.getpeername()[1]
    out = subprocess.run([engine_path, "--redis-port", str(port), *args], capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.splitlines()


def test_engine_goes_through_every_step(redis):
    fill(redis, "e", 1, 2 * corelib.DEAD_STEP + 5, live=False)
    fill(redis, "e", 2 * corelib.DEAD_STEP + 6, 2 * corelib.DEAD_STEP + 7, live=True)
    first, second = (f"e:{2 * corelib.DEAD_STEP + n}" for n in (6, 7))
    assert engine(redis, "-g", "--queue", "e")[:3] == [f"key: {first}", f"value: v{first[2:]}",
                                                         "count: 1"]
    assert engine(redis, "-c", "--queue", "e")[0] == f"key: {first}"
    redis("EVAL", FILL, 0, "e", 10_000, 10_000 + 2 * corelib.DEAD_STEP, "0")
    redis("RPOPLPUSH", "e:queue", "e:queue")  # e:second behind the new dead entries
    assert engine(redis, "-k", "--queue", "e")[0] == f"key: {second}"
    pages = 2 * corelib.STATS_PAGE
    assert redis("EVAL", REGISTER, 0, "queue-", pages + 1) == pages + 2  # and e
    lines = engine(redis, "-s")
    assert lines[-1] == f"count: {pages + 2}"
    assert len(set(lines)) == len(lines)
