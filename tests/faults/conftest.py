"""Fixtures of the fault tier: every Redis and server a test starts is stopped by its PID at
the end, and the logs of the servers that were not killed must hold no traceback."""
from __future__ import annotations

import pytest

from tests.conftest import ServerProcess
from tests.faults.load import FaultRedis


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long fault-injection runs (make soak)")


def pytest_collection_modifyitems(config, items):
    """Soak tests run only when selected with `-m soak` (or any -m naming them)."""
    if "soak" in (config.getoption("markexpr", "") or ""):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("soak") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


class Procs:
    def __init__(self) -> None:
        self.redises: list[FaultRedis] = []
        self.servers: list[ServerProcess] = []
        self.killed: set[int] = set()

    def redis(self, port: int | None = None, durable: bool = False,
              extra: tuple[str, ...] = (), start: bool = True) -> FaultRedis:
        proc = FaultRedis(port, durable=durable, extra=extra)
        self.redises.append(proc)
        return proc.start() if start else proc

    def server(self, redis_port: int, *args: str, port: int | None = None) -> ServerProcess:
        proc = ServerProcess(redis_port, *args, port=port)
        self.servers.append(proc)
        return proc.start()

    def kill9_server(self, server: ServerProcess) -> None:
        self.killed.add(id(server))
        server.proc.kill()
        server.proc.wait(10)

    def stop(self) -> list[str]:
        problems = []
        for server in reversed(self.servers):
            server.stop()
            log = server.final_log
            if id(server) not in self.killed and ("Traceback" in log or "Unhandled" in log):
                problems.append(log)
        for redis in reversed(self.redises):
            redis.stop()
        return problems


@pytest.fixture
def procs():
    procs = Procs()
    try:
        yield procs
    finally:
        problems = procs.stop()
    assert not problems, problems[0][-5000:]
