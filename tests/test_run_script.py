"""`make run`'s script: starts a Redis when none answers, serves, and stops that Redis (by
PID) when the server is stopped through the process group. The Redis it starts keeps an
append-only file flushed every second, so that acknowledged messages survive a Redis crash."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.conftest import ROOT, free_port, process_gone, redis_server_binary
from tests.http_client import get, post
from tests.util import RedisClient, wait_until


def _alive(pid: int) -> bool:
    return not process_gone(pid)  # a daemonized Redis may linger as a zombie of init


class RunScript:
    """start_scripts/run_with_redis in a session of its own, stopped like Ctrl-C would."""

    def __init__(self, port: int, redis_port: int, workers: int = 1):
        self.port, self.redis_port = port, redis_port
        self.url = f"http://127.0.0.1:{port}"
        self.dir = ROOT / ".run" / f"redis-{redis_port}"
        env = dict(os.environ, REDIS_SERVER=redis_server_binary())
        self.proc = subprocess.Popen([str(ROOT / "start_scripts" / "run_with_redis"), str(port),
                                      str(redis_port), str(workers)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.output = ""

    def first_add(self, queue: str = "test"):
        """The first add that gets a reply (the server is up by then)."""
        def attempt():
            assert self.proc.poll() is None, self.proc.stdout.read().decode()
            try:
                return post(self.url, f"/q/{queue}", {"value": "hi"}, timeout=5)
            except OSError:
                return None
        return wait_until(attempt, 30, "the server of run_with_redis", interval=0.1)

    def redis_pid(self) -> int:
        return int((self.dir / "redis.pid").read_text())

    def stop(self) -> str:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.output = self.proc.communicate(timeout=30)[0].decode()
        return self.output


@pytest.mark.parametrize("workers", [1, 2])
def test_run_with_redis_starts_and_stops_its_own_redis(workers):
    script = RunScript(free_port(), free_port(), workers)
    try:
        reply = script.first_add()
        assert (reply.status, reply.body) == (200, b"test:1\r\n")
        for n in range(2, 21):  # spread over the workers by the kernel
            assert post(script.url, "/q/test", {"value": "hi"}).body == f"test:{n}\r\n".encode()
        twistds = subprocess.run(["pgrep", "-f", f"restmq --port {script.port} "],
                                 capture_output=True, text=True).stdout.split()
        assert len(twistds) == workers
        pid = script.redis_pid()
        assert _alive(pid)
    finally:
        output = script.stop()
    assert f"started redis-server on 127.0.0.1:{script.redis_port}" in output
    wait_until(lambda: not _alive(pid), 10, "the script's redis-server to exit",
               details=lambda: output)
    for twistd in twistds:
        assert not _alive(int(twistd)), output
    subprocess.run(["rm", "-rf", str(script.dir)])


def test_run_with_redis_starts_a_redis_that_survives_its_own_crash():
    """appendonly yes, appendfsync everysec: an acknowledged add is in Redis's append-only
    file before the reply, so a `kill -9` of Redis loses nothing; the next `make run` on the
    same port loads it. (With the snapshot alone, `--save 60 1`, the adds of the last minute
    would be gone.)"""
    port, redis_port = free_port(), free_port()
    script = RunScript(port, redis_port)
    try:
        assert script.first_add("durable").body == b"durable:1\r\n"
        admin = RedisClient(redis_port)
        try:
            assert admin("CONFIG", "GET", "appendonly") == ["appendonly", "yes"]
            assert admin("CONFIG", "GET", "appendfsync") == ["appendfsync", "everysec"]
        finally:
            admin.close()
        for n in range(2, 11):
            assert post(script.url, "/q/durable", {"value": f"m{n}"}).body == \
                f"durable:{n}\r\n".encode()
        pid = script.redis_pid()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 10, "the killed redis-server to exit")
    finally:
        script.stop()
    again = RunScript(port, redis_port)
    try:
        reply = again.first_add("durable")
        assert (reply.status, reply.body) == (200, b"durable:11\r\n")
        assert get(again.url, "/stats/durable").json["len"] == 11
        assert get(again.url, "/q/durable").json == {"key": "durable:1", "value": "hi",
                                                     "count": 0}
    finally:
        again.stop()
        subprocess.run(["rm", "-rf", str(again.dir)])
    assert f"started redis-server on 127.0.0.1:{redis_port}" in again.output
