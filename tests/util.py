"""Helpers shared by the test files: waiting for an observable event instead of sleeping, and
the RESP client (re-exported so that a test needs one import for both).

A test that must show that something did NOT happen shows it after a positive marker: it
makes something observable happen after the thing that must not (a marker message added
after, a request logged after), waits for the marker, and only then asserts the absence."""
from __future__ import annotations

import time
from typing import Any, Callable

from tests.resp import RedisClient, seed_queue, snapshot

__all__ = ["RedisClient", "seed_queue", "snapshot", "wait_until", "numsub", "log_marker"]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.02, check: Callable[[], None] | None = None,
               details: Callable[[], str] | None = None) -> Any:
    """Poll `predicate` until it returns something true, and return that. After `timeout`
    seconds the test fails naming `what`, with `details()` (e.g. a server's log) appended.
    `check` runs before every poll and may fail the test early (a helper process died)."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)


def numsub(redis: RedisClient, queue: str) -> int:
    """How many connections subscribe to `<queue>:PUBSUB`: one per process with a live
    consumer of `queue`."""
    channel, count = redis("PUBSUB", "NUMSUB", f"{queue}:PUBSUB")
    assert channel == f"{queue}:PUBSUB"
    return int(count)


def log_marker(server, get: Callable[[str, str], Any], timeout: float = 10.0) -> str:
    """Make `server` log a line of its own (a request for a unique path, through `get(url,
    path)`) and wait until that line is in its log: whatever the server logged before is then
    in the log too. Returns the log up to and including the marker."""
    path = f"/marker-{time.monotonic_ns()}"
    get(server.url, path)
    wait_until(lambda: path in server.log(), timeout, f"the log line of {path}",
               details=lambda: server.log()[-4000:])
    log = server.log()
    return log[:log.index(path)]
