"""Helpers shared by the test files: waiting for an observable event instead of sleeping, and
the RESP client (re-exported so that a test needs one import for both).

A test that must show that something did NOT happen shows it after a positive marker: it
makes something observable happen after the thing that must not (a marker message added
after, a request logged after), waits for the marker, and only then asserts the absence."""
from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

from tests.resp import RedisClient, seed_queue, snapshot

__all__ = ["RedisClient", "seed_queue", "snapshot", "wait_until", "numsub", "peer_has_read",
           "log_marker", "SweepWatch", "Subscriber", "redis_ms", "until_redis_passes", "Monitor",
           "v2_json"]


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


def peer_has_read(sock) -> bool:
    """Whether the other end of a local TCP connection (a server in another process) has
    read everything sent to it so far: its socket's receive queue is empty (Linux,
    /proc/net/tcp and tcp6). Once a server has read a request, it has started handling it."""
    here, there = sock.getsockname()[1], sock.getpeername()[1]
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if int(local.rsplit(":", 1)[1], 16) == there and \
                        int(remote.rsplit(":", 1)[1], 16) == here:
                    return int(fields[4].split(":")[1], 16) == 0
    raise AssertionError(f"no TCP socket of the peer of port {here}")


def log_marker(server, timeout: float = 10.0) -> str:
    """Make `server` (a ServerProcess with its access log on) log a line of its own, a
    request for a unique path, and wait until that line is in its log: whatever the server
    logged before, while handling earlier requests, is in the log by then. Returns the log up
    to the marker."""
    from tests.http_client import get
    path = f"/marker-{time.monotonic_ns()}"
    get(server.url, path)
    wait_until(lambda: path in server.log(), timeout, f"the log line of {path}",
               details=lambda: server.log()[-4000:])
    log = server.log()
    return log[:log.index(path)]


class SweepWatch:
    """Shows that the server's safety sweep has run: every second the sweep dispatches each
    queue with a live consumer, whether or not an add woke it. The watch keeps a comet consumer
    of a queue of its own; `passed()` writes a message straight into Redis, without the wake
    an add publishes, and returns once the consumer got it, which only a sweep started after
    the call can do. A dispatch that a sweep started for any other queue has then reached
    Redis too. Open the watch before the event, call `passed()` after it."""

    def __init__(self, base: str, redis: RedisClient):
        from tests.comet import CometClient
        from tests.http_client import post
        self.redis, self.queue = redis, f"sweep-watch-{time.monotonic_ns()}"
        self.client = CometClient(base, self.queue)
        # An add wakes the consumer: once it arrived, the server's subscription is confirmed,
        # so the messages written later can only be found by a sweep.
        assert post(base, f"/q/{self.queue}", {"value": "0"}).status == 200
        self.count = 1
        self.client.messages(self.count)

    def passed(self, timeout: float = 10.0) -> None:
        self.count += 1
        key = f"{self.queue}:{self.count}"
        self.redis("SET", key, str(self.count))
        self.redis("LPUSH", f"{self.queue}:queue", key)
        assert self.client.messages(self.count, timeout)[-1] == {"key": key,
                                                                  "value": str(self.count)}

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "SweepWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Subscriber:
    """A raw RESP connection subscribed to one channel; reads pushed messages synchronously
    (Redis sends them whether or not the reactor runs). The `subscribe` fixture of conftest.py
    makes them and closes them after the test."""

    def __init__(self, port: int, channel: str):
        self.channel = channel
        self.client = RedisClient(port, timeout=5.0)
        assert self.client("SUBSCRIBE", channel) == ["subscribe", channel, 1]

    def next(self):
        kind, channel, payload = self.client._reply()
        assert (kind, channel) == ("message", self.channel)
        return payload

    def next_json(self):
        payload = self.next()
        assert isinstance(payload, str)
        return json.loads(payload)

    def assert_nothing_pending(self, redis):
        """Nothing was published before this call: a marker published now is the next message."""
        redis("PUBLISH", self.channel, "--marker--")
        assert self.next() == "--marker--"

    def close(self):
        self.client.close()


def redis_ms(redis: RedisClient) -> int:
    """Redis's clock (TIME) in milliseconds since the epoch: what due times are written in."""
    seconds, micros = redis("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


def command_calls(redis: RedisClient) -> dict[str, int]:
    """How many times Redis ran each command (lower case) since the last CONFIG RESETSTAT,
    the commands scripts ran included: what an operation costs Redis, counted, not timed."""
    calls = {}
    for name, count in re.findall(r"^cmdstat_([^:]+):calls=(\d+)", redis("INFO", "commandstats"),
                                  re.M):
        calls[name] = int(count)
    return calls


async def until_redis_passes(redis: RedisClient, ms: int, timeout: float = 5.0) -> None:
    """In a Twisted test: poll Redis's clock (not ours) until it is past `ms`, the reactor
    running in between; a bounded wait for a due time, not a sleep of its length."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    deadline = time.monotonic() + timeout
    while redis_ms(redis) <= ms:
        if time.monotonic() > deadline:
            raise AssertionError(f"Redis's clock did not pass {ms} within {timeout} s")
        await deferLater(reactor, 0.02, lambda: None)


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _unquote(text: str) -> str:
    return re.sub(r"\\x([0-9a-f]{2})|\\(.)",
                  lambda m: chr(int(m.group(1), 16)) if m.group(1) else
                  {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(2), m.group(2)), text)


class Monitor:
    """A MONITOR connection to the Redis of `proc` (a conftest.RedisProcess); `until(marker)`
    returns the commands seen before `ECHO marker`, as (client, [arguments]); the client is
    `lua` for the commands a script ran."""

    def __init__(self, proc: Any):
        self.client = proc.client()
        assert self.client("MONITOR") == "OK"

    def until(self, marker: str) -> list[tuple[str, list[str]]]:
        seen = []
        while True:
            line = self.client.reader.readline().decode("utf-8", "replace")
            client = re.search(r"\[\d+ ([^\]]+)\]", line).group(1)
            args = [_unquote(a) for a in _QUOTED.findall(line)]
            if args[:2] == ["ECHO", marker] or args[:2] == ["echo", marker]:
                return seen
            seen.append((client, args))


def v2_json(reply) -> Any:
    """The parsed body of a 200 from a route that came with leases (claim, ack, config ...),
    after checking what they all share: `application/json` without a trailing CRLF, and the
    headers of every API reply."""
    assert reply.status == 200, (reply.status, reply.body)
    assert reply.header("Content-Type") == "application/json"
    assert not reply.body.endswith(b"\r\n"), reply.body
    assert reply.header("Cache-Control") == "no-store"
    assert reply.header("Content-Security-Policy") == "default-src 'none'; sandbox"
    return json.loads(reply.body)
