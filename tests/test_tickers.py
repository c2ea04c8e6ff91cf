"""The tick in real server processes (docs/redis-layout.md#due-times): every `twistd restmq`
ticks, several of them on one Redis handle each expired lease exactly once, an idle one only
looks at DUESET, and a server refuses to run on a Redis older than 6.2."""
from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import threading

import pytest
import pytest_twisted

from restmq.core import Core
from restmq.redis import RedisService, load_script
from restmq.tap.services import REDIS_MINIMUM, redis_version
from tests.conftest import RedisProcess, ServerProcess
from tests.util import Monitor, RedisClient, wait_until


@pytest.fixture
def private_redis():
    proc = RedisProcess().start()
    yield proc
    proc.stop()


@pytest.fixture
def servers(private_redis):
    started: list[ServerProcess] = []

    def start(count: int) -> list[ServerProcess]:
        for _ in range(count):
            started.append(ServerProcess(private_redis.port).start())
        return started

    yield start
    for server in started:
        server.stop()
        assert "Traceback" not in server.final_log, server.final_log


async def leases(redis_port: int, queue: str, count: int, lease: int = 1) -> list:
    """`count` messages of `queue` claimed for `lease` seconds by a core without a ticker."""
    svc = RedisService(port=redis_port)
    svc.startService()
    try:
        core = Core(svc)
        for n in range(count):
            await core.add(queue, str(n))
        claimed = []
        while len(claimed) < count:
            claimed += (await core.claim(queue, limit=100, lease=lease)).messages
        return claimed
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_a_server_requeues_expired_leases_by_itself(private_redis, servers):
    servers(1)
    redis = private_redis.client()
    claimed = await leases(private_redis.port, "q", 3)
    wait_until(lambda: redis("LLEN", "q:queue") == 3, 10, "the server's tick")
    assert redis("LRANGE", "q:queue", 0, -1) == ["q:3", "q:2", "q:1"]
    assert redis("EXISTS", "q:inflight") == 0
    assert redis("HGETALL", "q:deliveries") == ["q:1", "1", "q:2", "1", "q:3", "1"]
    assert len(claimed) == 3
    redis.close()


@pytest_twisted.ensureDeferred
async def test_three_servers_requeue_each_of_100_expired_leases_once(private_redis, servers):
    started = servers(3)
    redis = private_redis.client()
    monitor = Monitor(private_redis)
    claimed = await leases(private_redis.port, "q", 100)
    wait_until(lambda: redis("LLEN", "q:queue") >= 100 and redis("ZCARD", "q:inflight") == 0,
               10, "the tick of 3 servers")
    redis("ECHO", "done")
    commands = monitor.until("done")
    monitor.client.close()
    pending = redis("LRANGE", "q:queue", 0, -1)
    assert sorted(pending) == sorted(m.key for m in claimed)  # each once: no duplicate push
    assert set(redis("HVALS", "q:deliveries")) == {"1"}
    requeues = [args for client, args in commands if client == "lua" and
                args[0].upper() == "RPUSH" and args[1] == "q:queue"]
    assert sorted(args[2] for args in requeues) == sorted(m.key for m in claimed)
    assert all(server.proc.poll() is None for server in started)
    redis.close()


def test_an_idle_server_only_looks_at_dueset(private_redis, servers):
    servers(1)
    monitor = Monitor(private_redis)
    redis = private_redis.client()
    due = load_script("due").sha
    wait_until(lambda: _evalsha_calls(redis) >= 3, 10, "three looks")
    redis("ECHO", "idle")
    commands = monitor.until("idle")
    monitor.client.close()
    redis.close()
    # the script run (by its SHA, or its source after a NOSCRIPT) is always the look
    scripts = {args[1] if args[0].upper() == "EVALSHA" else
               hashlib.sha1(args[1].encode()).hexdigest()
               for client, args in commands if client != "lua" and
               args and args[0].upper() in ("EVALSHA", "EVAL")}
    assert scripts == {due}
    inside = {args[0].upper() for client, args in commands if client == "lua"}
    assert inside <= {"TIME", "ZRANGE", "ZRANGEBYSCORE"}


def _evalsha_calls(redis) -> int:
    found = re.search(r"^cmdstat_evalsha:calls=(\d+)", redis("INFO", "commandstats"), re.M)
    return int(found.group(1)) if found else 0


# -- Redis 6.2 or newer ---------------------------------------------------------------------


def test_redis_version_is_read_from_info():
    assert redis_version("# Server\r\nredis_version:6.0.16\r\nredis_mode:x\r\n") == (6, 0, 16)
    assert redis_version("redis_version:7.2\r\n") == (7, 2, 0)
    assert redis_version("no version here") is None
    assert (6, 0, 16) < REDIS_MINIMUM <= (6, 2, 0) < (7, 0, 15)


class OldRedis:
    """A TCP server that answers like a Redis 6.0: TIME, INFO and PING, errors otherwise."""

    def __init__(self, version: str = "6.0.16"):
        self.version = version
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.seen: list[list[str]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return
                args = []
                for _ in range(int(line[1:])):
                    size = int(reader.readline()[1:])
                    args.append(reader.read(size + 2)[:-2].decode())
                self.seen.append(args)
                conn.sendall(self._answer(args))
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def _answer(self, args: list[str]) -> bytes:
        command = args[0].upper()
        if command == "TIME":
            return b"*2\r\n$10\r\n1700000000\r\n$1\r\n0\r\n"
        if command == "PING":
            return b"+PONG\r\n"
        if command == "INFO":
            info = f"# Server\r\nredis_version:{self.version}\r\n".encode()
            return b"$%d\r\n%s\r\n" % (len(info), info)
        if command == "CONFIG":
            return b"*0\r\n"
        return b"-ERR unknown command\r\n"

    def close(self) -> None:
        self.sock.close()


def test_a_server_exits_with_an_error_on_redis_older_than_6_2():
    old = OldRedis()
    server = ServerProcess(old.port)
    try:
        proc = subprocess.Popen(server.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            status = proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        log = server.log()
    finally:
        old.close()
        server.stop()
    assert status != 0, log
    assert "Redis 6.0.16 is too old: RestMQ needs Redis 6.2 or newer" in log
    assert ["INFO", "server"] in old.seen


def test_a_server_keeps_running_on_a_recent_redis(private_redis):
    server = ServerProcess(private_redis.port).start()
    try:
        redis = RedisClient(private_redis.port)
        wait_until(lambda: _evalsha_calls(redis) >= 2, 10, "two looks at DUESET")
        redis.close()
        assert server.proc.poll() is None
    finally:
        server.stop()
    assert "too old" not in server.final_log
