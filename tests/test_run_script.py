"""`make run`'s script: starts a Redis when none answers, serves, and stops that Redis (by
PID) when the server is stopped through the process group."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import ROOT, free_port, redis_server_binary
from tests.http_client import post


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("workers", [1, 2])
def test_run_with_redis_starts_and_stops_its_own_redis(tmp_path, workers):
    port, redis_port = free_port(), free_port()
    env = dict(os.environ, REDIS_SERVER=redis_server_binary())
    proc = subprocess.Popen([str(ROOT / "start_scripts" / "run_with_redis"), str(port),
                             str(redis_port), str(workers)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = post(url, "/q/test", {"value": "hi"}, timeout=5)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert (reply.status, reply.body) == (200, b"test:1\r\n")
        for n in range(2, 21):  # spread over the workers by the kernel
            assert post(url, "/q/test", {"value": "hi"}).body == f"test:{n}\r\n".encode()
        twistds = subprocess.run(["pgrep", "-f", f"restmq --port {port} "], capture_output=True,
                                 text=True).stdout.split()
        assert len(twistds) == workers
        pid = int((ROOT / ".run" / f"redis-{redis_port}" / "redis.pid").read_text())
        assert _alive(pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert f"started redis-server on 127.0.0.1:{redis_port}" in output
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), output
    for twistd in twistds:
        assert not _alive(int(twistd)), output
    subprocess.run(["rm", "-rf", str(ROOT / ".run" / f"redis-{redis_port}")])
