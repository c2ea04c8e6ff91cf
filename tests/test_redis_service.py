"""restmq.redis.RedisService against real redis-servers: EVALSHA with the NOSCRIPT fallback,
error replies, lost / paused / restarted Redis (docs/redis-layout.md#connections: no usable
connection or a 5 s timeout is `redis unavailable`; reconnect at most every 5 s) and a clean
stopService."""
from __future__ import annotations

import gc
import os
import re
import signal
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from restmq.core import Core
from restmq.errors import RedisFailure, RedisUnavailable
from restmq.redis.scripts import Script, load_script
from restmq.redis import RedisService
from tests.conftest import RedisProcess


def sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


class Redises:
    """Private redis-servers a test may stop, restart (same port) or pause."""

    def __init__(self):
        self.procs: list[RedisProcess] = []

    def start(self, port: int | None = None) -> RedisProcess:
        proc = RedisProcess(port=port)
        self.procs.append(proc)
        return proc.start()

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.pid is not None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            proc.stop()


@pytest.fixture
def redises():
    """Always resumed and stopped at the end, whatever the test did."""
    manager = Redises()
    try:
        yield manager
    finally:
        manager.cleanup()


async def serves_again(svc: RedisService, within: float) -> float:
    """Poll PING until it answers; returns the seconds it took."""
    start = time.monotonic()
    while True:
        try:
            if await svc.execute("PING") == "PONG":
                return time.monotonic() - start
        except RedisUnavailable:
            pass
        if time.monotonic() - start > within:
            pytest.fail(f"the service did not serve again within {within} s")
        await sleep(0.1)


def client_ids(redis) -> set[str]:
    return set(re.findall(r"\bid=(\d+)", redis("CLIENT", "LIST")))


def cmdstat_calls(redis, command: str) -> int:
    found = re.search(rf"^cmdstat_{command}:calls=(\d+)", redis("INFO", "commandstats"), re.M)
    return int(found.group(1)) if found else 0


# --------------------------------------------------------------------------------------------
# Commands and scripts


@pytest_twisted.ensureDeferred
async def test_execute_returns_strings(service, redis):
    redis("SET", "k", "007")
    assert await service.execute("GET", "k") == "007"
    assert await service.execute("SET", "n", "1.50") == "OK"
    assert await service.execute("GET", "n") == "1.50"
    assert await service.execute("INCR", "c") == 1
    assert await service.execute("GET", "missing") is None
    redis("SET", "bin", b"\xff")
    assert await service.execute("GET", "bin") in (b"\xff", "\ufffd")


@pytest_twisted.ensureDeferred
async def test_error_reply_is_redis_failure(service, redis):
    redis("SET", "k", "not a number")
    with pytest.raises(RedisFailure) as info:
        await service.execute("INCR", "k")
    assert "not an integer" in str(info.value)
    assert info.value.reason == "redis error"
    with pytest.raises(RedisFailure):
        await service.execute("NOSUCHCOMMAND")
    redis("RPUSH", "list", "a")
    with pytest.raises(RedisFailure) as info:
        await service.execute("GET", "list")
    assert "WRONGTYPE" in str(info.value)
    # the connection is still fine afterwards
    assert await service.execute("GET", "k") == "not a number"


@pytest_twisted.ensureDeferred
async def test_script_error_is_redis_failure_without_a_reload(service, redis):
    script = Script("t_incr", "return redis.call('INCR', KEYS[1])")
    redis("SET", "k", "text")
    assert await service.run_script(script, ("c",)) == 1
    redis("CONFIG", "RESETSTAT")
    with pytest.raises(RedisFailure) as info:
        await service.run_script(script, ("k",))
    assert "not an integer" in str(info.value)
    assert cmdstat_calls(redis, "eval") == 0  # only NOSCRIPT triggers the EVAL fallback


@pytest_twisted.ensureDeferred
async def test_evalsha_with_noscript_fallback(service, redis):
    script = Script("t_echo", "return {KEYS[1], ARGV[1]}")
    redis("SCRIPT", "FLUSH")
    redis("CONFIG", "RESETSTAT")
    assert await service.run_script(script, ("007",), "x") == ["007", "x"]
    assert cmdstat_calls(redis, "eval") == 1
    assert redis("SCRIPT", "EXISTS", script.sha) == [1]
    # loaded: EVALSHA alone from now on
    assert await service.run_script(script, ("a",), "b") == ["a", "b"]
    assert await service.run_script(script, ("c",), "d") == ["c", "d"]
    assert cmdstat_calls(redis, "eval") == 1
    assert cmdstat_calls(redis, "evalsha") >= 2
    # flushed again: reloaded again
    redis("SCRIPT", "FLUSH")
    assert await service.run_script(script, ("e",), "f") == ["e", "f"]
    assert cmdstat_calls(redis, "eval") == 2
    assert redis("SCRIPT", "EXISTS", script.sha) == [1]


@pytest_twisted.ensureDeferred
async def test_a_script_run_leaves_no_reference_cycle(service, redis):
    """Every route runs scripts: what one run allocates must go with its last reference, not
    wait for the cycle collector (whose full passes scan the whole heap, and come the more
    often the more cycles there are)."""
    script = Script("t_echo", "return {KEYS[1], ARGV[1]}")
    assert await service.run_script(script, ("a",), "b") == ["a", "b"]  # loaded
    runs = 200
    gc.collect()
    gc.disable()
    try:
        for i in range(runs):
            assert await service.run_script(script, (f"k{i}",), "v") == [f"k{i}", "v"]
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable < runs  # other work of the reactor may leave a few; not one per run


@pytest_twisted.ensureDeferred
async def test_core_scripts_survive_script_flush(service, redis):
    core = Core(service, consumed_ttl=60)
    assert await core.add("q", "a") == "q:1"
    redis("SCRIPT", "FLUSH")
    assert await core.add("q", "b") == "q:2"
    redis("SCRIPT", "FLUSH")
    assert (await core.hard_get("q")).value == "a"
    redis("SCRIPT", "FLUSH")
    assert await core.purge("q") == 1
    assert redis("SCRIPT", "EXISTS", core.scripts["add"].sha, core.scripts["purge"].sha) == [0, 1]


@pytest_twisted.ensureDeferred
async def test_script_sha_is_the_one_redis_computes(service, redis):
    script = load_script("hard_get")  # includes the prelude
    assert redis("SCRIPT", "LOAD", script.source) == script.sha


# --------------------------------------------------------------------------------------------
# Lost, paused and restarted Redis


@pytest_twisted.ensureDeferred
async def test_stopped_redis_fails_at_once_then_recovers(redises):
    extra = redises.start()
    svc = RedisService(port=extra.port)  # the default 5 s timeout
    svc.startService()
    try:
        assert await svc.execute("PING") == "PONG"
        extra.stop()
        deadline = time.monotonic() + 5
        while svc.connected and time.monotonic() < deadline:
            await sleep(0.05)
        assert not svc.connected, "the pool did not notice the lost connections"
        # No connection: a command fails at once, whether or not a reconnect attempt is on.

        for args in (("PING",), ("GET", "k")):
            t0 = time.monotonic()
            with pytest.raises(RedisUnavailable):
                await svc.execute(*args)
            assert time.monotonic() - t0 < 1.5
        t0 = time.monotonic()
        with pytest.raises(RedisUnavailable):
            await Core(svc).add("q", "v")
        assert time.monotonic() - t0 < 1.5

        redises.start(port=extra.port)
        await serves_again(svc, within=12)
        core = Core(svc)
        assert await core.add("q", "v") == "q:1"
        assert (await core.take("q")).value == "v"
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_paused_redis_times_out_then_recovers(redises):
    extra_redis = redises.start()
    svc = RedisService(port=extra_redis.port, timeout=1.0)
    svc.startService()
    try:
        assert await svc.execute("PING") == "PONG"
        os.kill(extra_redis.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(RedisUnavailable):
                await svc.execute("PING")
            elapsed = time.monotonic() - t0
            assert 0.7 <= elapsed <= 3.0, elapsed
            # scripts too, and again while still paused
            t0 = time.monotonic()
            with pytest.raises(RedisUnavailable):
                await Core(svc).add("q", "v")
            elapsed = time.monotonic() - t0
            assert elapsed <= 3.0, elapsed
        finally:
            os.kill(extra_redis.pid, signal.SIGCONT)
        await serves_again(svc, within=10)
        assert await svc.execute("SET", "k", "v") == "OK"
        assert await svc.execute("GET", "k") == "v"
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_unreachable_from_the_start(redises):
    port = redises.start().port
    redises.procs[0].stop()
    svc = RedisService(port=port, timeout=1.0)
    svc.startService()
    try:
        t0 = time.monotonic()
        with pytest.raises(RedisUnavailable):
            await svc.execute("PING")
        assert time.monotonic() - t0 <= 3.0
        redises.start(port=port)
        await serves_again(svc, within=12)
    finally:
        await svc.stopService()


# --------------------------------------------------------------------------------------------
# stopService


@pytest_twisted.ensureDeferred
async def test_stop_service_closes_every_connection(redis_proc, redis):
    before = client_ids(redis)
    svc = RedisService(port=redis_proc.port, poolsize=4)
    svc.startService()
    assert await svc.execute("PING") == "PONG"
    deadline = time.monotonic() + 5
    while len(client_ids(redis) - before) < 4 and time.monotonic() < deadline:
        await sleep(0.05)
    ours = client_ids(redis) - before
    assert len(ours) == 4

    d = svc.stopService()
    assert isinstance(d, defer.Deferred)
    await d
    assert not svc.connected
    deadline = time.monotonic() + 2
    while client_ids(redis) & ours and time.monotonic() < deadline:
        await sleep(0.02)
    assert not client_ids(redis) & ours
    with pytest.raises(RedisUnavailable):
        await svc.execute("PING")
    # and nothing reconnects later
    await sleep(0.7)
    assert client_ids(redis) - before == set()


@pytest_twisted.ensureDeferred
async def test_stop_service_while_redis_is_down(redises):
    extra_redis = redises.start()
    svc = RedisService(port=extra_redis.port, timeout=1.0)
    svc.startService()
    assert await svc.execute("PING") == "PONG"
    extra_redis.stop()
    deadline = time.monotonic() + 5
    while svc.connected and time.monotonic() < deadline:
        await sleep(0.05)
    assert not svc.connected, "the pool did not notice the lost connections"
    d = svc.stopService()
    assert isinstance(d, defer.Deferred)
    d.addTimeout(3.0, reactor)  # fires, and promptly
    await d
    assert not svc.connected
