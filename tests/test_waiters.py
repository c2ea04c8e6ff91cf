"""Long polls (`wait` on `/claim/` and `/pop/`, docs/live-delivery.md#waiters) against real
servers and Redis: a parked request holds no Redis connection (a thousand of them on a process
whose pool has two), an add on another process wakes one waiter and no more, a client that
leaves is unregistered at once, and waiters are woken by everything that makes a message
pending: adds, releases, lapsed leases and delayed messages coming due (the tick)."""
from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.comet import CometClient
from tests.conftest import ServerProcess
from tests.http_client import post, read_head
from tests.util import numsub, v2_json, wait_until


class LongPoll:
    """One long poll on a raw socket: sent at once, its reply read when asked for."""

    def __init__(self, url: str, path: str):
        host, port = url.split("//", 1)[1].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                          .encode())

    def reply(self, timeout: float = 30.0) -> tuple[int, bytes]:
        self.sock.settimeout(timeout)
        status, _, body = read_head(self.sock)
        return status, body

    def close(self) -> None:
        self.sock.close()


def parked(redis, queue: str, count: int = 1) -> None:
    """Wait until this queue's waiters hold its subscription on `count` processes."""
    wait_until(lambda: numsub(redis, queue) == count, 10, f"a waiter of {queue}")


def add(url: str, queue: str, value: str) -> str:
    reply = post(url, f"/q/{queue}", {"value": value})
    assert reply.status == 200, reply
    return reply.body.decode().strip()


# -- one process ---------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["claim", "pop"])
def test_a_long_poll_is_answered_by_the_next_add(H, redis, route):
    poll = LongPoll(H, f"/{route}/jobs?wait=20&limit=5")
    parked(redis, "jobs")
    assert add(H, "jobs", "a") == "jobs:1"
    status, body = poll.reply()
    [message] = json.loads(body)["messages"]
    assert (status, message["key"], message["value"]) == (200, "jobs:1", "a")
    if route == "claim":
        assert message["deliveries"] == 1 and redis("ZCARD", "jobs:inflight") == 1
    else:
        assert set(message) == {"key", "value"}
    wait_until(lambda: numsub(redis, "jobs") == 0, 10, "the answered waiter to leave")
    poll.close()


@pytest.mark.parametrize("route", ["claim", "pop"])
def test_a_long_poll_that_gets_nothing_is_204_once_its_wait_is_over(H, redis, route):
    started = time.monotonic()
    poll = LongPoll(H, f"/{route}/jobs?wait=1")
    parked(redis, "jobs")
    status, body = poll.reply()
    assert (status, body) == (204, b"")
    assert time.monotonic() - started >= 1.0
    wait_until(lambda: numsub(redis, "jobs") == 0, 10, "the waiter to leave")
    assert redis("KEYS", "*") == []
    poll.close()


def test_a_waiter_that_leaves_is_unregistered_at_once_and_nothing_is_claimed_for_it(H, redis):
    gone = LongPoll(H, "/claim/jobs?wait=20")
    parked(redis, "jobs")
    gone.close()
    wait_until(lambda: numsub(redis, "jobs") == 0, 10, "the departed waiter to leave")
    add(H, "jobs", "a")
    assert redis("LRANGE", "jobs:queue", 0, -1) == ["jobs:1"]
    # A second waiter gets it as a first delivery: nothing was claimed (and released) before.
    status, body = LongPoll(H, "/claim/jobs?wait=20").reply()
    [message] = json.loads(body)["messages"]
    assert (status, message["key"], message["deliveries"]) == (200, "jobs:1", 1)


def test_a_waiter_and_a_live_consumer_share_a_queue(H, redis):
    # Stopped, the queue feeds no live consumer, while claims and pops go on: the add below
    # can only go to the waiter (in which order one round serves them: tests/unit).
    assert post(H, "/control/jobs", {"status": "stop"}).status == 200
    poll = LongPoll(H, "/pop/jobs?wait=20")
    parked(redis, "jobs")
    comet = CometClient(H, "jobs")
    try:
        add(H, "jobs", "first")
        status, body = poll.reply()
        assert (status, json.loads(body)["messages"]) == (
            200, [{"key": "jobs:1", "value": "first"}])
        assert numsub(redis, "jobs") == 1  # the consumer still holds the subscription
        assert post(H, "/control/jobs", {"status": "start"}).status == 200
        add(H, "jobs", "second")
        assert comet.messages(1) == [{"key": "jobs:2", "value": "second"}]
    finally:
        comet.sock.close()
        poll.close()


def test_a_waiter_gets_a_message_released_by_another_worker(H, redis):
    add(H, "jobs", "a")
    [held] = v2_json(post(H, "/claim/jobs"))["messages"]
    poll = LongPoll(H, "/pop/jobs?wait=20")
    parked(redis, "jobs")
    v2_json(post(H, "/release/jobs", {"receipt": held["receipt"]}))
    status, body = poll.reply()
    assert (status, json.loads(body)["messages"]) == (200, [{"key": "jobs:1", "value": "a"}])


def test_a_waiter_gets_a_message_whose_lease_lapsed_from_the_tick(H, redis):
    add(H, "jobs", "a")
    v2_json(post(H, "/claim/jobs", {"lease": "1"}))
    poll = LongPoll(H, "/claim/jobs?wait=20")
    parked(redis, "jobs")
    status, body = poll.reply()  # no add, no release: the tick hands it back and wakes us
    [message] = json.loads(body)["messages"]
    assert (status, message["key"], message["deliveries"]) == (200, "jobs:1", 2)


def test_a_waiter_gets_a_delayed_message_when_the_tick_makes_it_due(H, redis):
    add(H, "jobs", "a")
    [held] = v2_json(post(H, "/claim/jobs"))["messages"]
    poll = LongPoll(H, "/pop/jobs?wait=20")
    parked(redis, "jobs")
    body = v2_json(post(H, "/release/jobs", {"receipt": held["receipt"], "delay": "1"}))
    assert body["released"] == [held["receipt"]]
    assert redis("ZCARD", "jobs:delayed") == 1
    status, body = poll.reply()
    assert (status, json.loads(body)["messages"]) == (200, [{"key": "jobs:1", "value": "a"}])


def test_sigterm_answers_the_waiting_long_polls(redis_proc, redis):
    server = ServerProcess(redis_proc.port).start()
    try:
        polls = [LongPoll(server.url, f"/{route}/jobs?wait=20") for route in ("pop", "claim")]
        parked(redis, "jobs")
        wait_until(lambda: unread_by_peer([p.sock for p in polls]) == 0, 10, "both read")
        server.proc.send_signal(signal.SIGTERM)
        assert [poll.reply(timeout=15) for poll in polls] == [(204, b"")] * 2
        server.proc.wait(15)  # exits with the signal's status
    finally:
        server.stop()
    assert "Traceback" not in server.final_log


# -- a thousand waiters ---------------------------------------------------------------------------

WAITERS = 1000
ADDS = 100


def unread_by_peer(socks: list[socket.socket]) -> int:
    """How many of these local TCP connections the peer (a server process) has not read all
    of: one reading of /proc/net/tcp for all of them (see tests.util.peer_has_read)."""
    queued = {(local, remote): rx for local, remote, rx, _ in tcp_table()}
    return sum(1 for s in socks
               if queued.get((s.getpeername()[1], s.getsockname()[1]), 1) != 0)


def tcp_table() -> list[tuple[int, int, int, int]]:
    """(local port, remote port, receive queue, inode) of every TCP socket of this host."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                rows.append((int(fields[1].rsplit(":", 1)[1], 16),
                             int(fields[2].rsplit(":", 1)[1], 16),
                             int(fields[4].split(":")[1], 16), int(fields[9])))
    return rows


def redis_connections_of(pid: int, redis_port: int) -> set[int]:
    """The local ports of the connections process `pid` holds to Redis."""
    inodes = set()
    for fd in (Path(f"/proc/{pid}/fd")).iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return {local for local, remote, _, inode in tcp_table()
            if remote == redis_port and inode in inodes}


def blocked(redis, ports: set[int]) -> list[str]:
    """The CLIENT LIST lines of those of `ports` that Redis shows blocked."""
    lines = [line for line in redis("CLIENT", "LIST").splitlines()
             if int(re.search(r"addr=[^ ]*:(\d+) ", line).group(1)) in ports]
    assert len(lines) == len(ports)
    return [line for line in lines if "b" in re.search(r"flags=(\w+)", line).group(1)]


def info_field(redis, section: str, name: str) -> int:
    found = re.search(rf"^{name}:(\d+)", redis("INFO", section), re.M)
    return int(found.group(1)) if found else 0


def evalsha_calls(redis) -> int:
    found = re.search(r"^cmdstat_evalsha:calls=(\d+)", redis("INFO", "commandstats"), re.M)
    return int(found.group(1)) if found else 0


def answered(polls: dict[socket.socket, LongPoll], count: int) -> list[tuple[int, bytes]]:
    """Wait for `count` of `polls` to be answered; those are read and dropped from `polls`."""
    replies = []
    with selectors.DefaultSelector() as selector:
        for sock in polls:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        while len(replies) < count:
            assert time.monotonic() < deadline, f"{len(replies)} of {count} answered"
            for key, _ in selector.select(1):
                poll = polls.pop(key.fileobj)
                selector.unregister(key.fileobj)
                replies.append(poll.reply())
                poll.close()
    return replies


def test_a_thousand_parked_long_polls_hold_no_redis_connection_and_an_add_wakes_one(
        redis_proc, redis):
    waiting = ServerProcess(redis_proc.port, "--redis-pool", "2", "--access-log", "off").start()
    adding = ServerProcess(redis_proc.port).start()
    polls: dict[socket.socket, LongPoll] = {}
    try:
        pid = waiting.proc.pid
        # Its whole pool (2) and its pub/sub connection are up.
        pool = wait_until(lambda: (lambda ports: len(ports) == 3 and ports)(
            redis_connections_of(pid, redis_proc.port)), 10, "the connections of the pool")
        for _ in range(WAITERS):
            poll = LongPoll(waiting.url, "/pop/q?wait=20")
            polls[poll.sock] = poll
        wait_until(lambda: unread_by_peer(list(polls)) == 0, 60, "every request read")
        parked(redis, "q")
        # The parked requests cost Redis nothing: the process holds the same connections as
        # before (the pool of 2 and pub/sub), none of them blocked, and the pool still serves
        # other requests of the same process at once.
        assert redis_connections_of(pid, redis_proc.port) == pool
        assert blocked(redis, pool) == []
        assert info_field(redis, "clients", "blocked_clients") == 0
        assert add(waiting.url, "other", "x") == "other:1"
        assert v2_json(post(waiting.url, "/pop/other"))["messages"][0]["key"] == "other:1"
        assert numsub(redis, "q") == 1  # one subscription for all of them

        before = evalsha_calls(redis)
        keys = [add(adding.url, "q", f"v{n}") for n in range(ADDS)]
        replies = answered(polls, ADDS)
        got = []
        for status, body in replies:
            assert status == 200, (status, body)
            [message] = json.loads(body)["messages"]
            got.append(message["key"])
        assert sorted(got) == sorted(keys)  # each message to exactly one waiter
        # One more add is answered by one more waiter, and by that time nobody else has been:
        # an add wakes one waiter, not all of them.
        marker = add(adding.url, "q", "marker")
        [(status, body)] = answered(polls, 1)
        assert json.loads(body)["messages"] == [{"key": marker, "value": "marker"}]
        with selectors.DefaultSelector() as selector:
            for sock in polls:
                selector.register(sock, selectors.EVENT_READ)
            assert selector.select(0) == []
        assert len(polls) == WAITERS - ADDS - 1
        # Per add: the add, the claim that took it, at most one that found nothing, and the
        # ack; a herd of claims (one per waiter per add) would be 100 times as many.
        assert evalsha_calls(redis) - before < 6 * (ADDS + 1) + 50
        wait_until(lambda: redis("ZCARD", "q:inflight") == 0, 10, "the acks")

        for poll in polls.values():
            poll.close()
        polls.clear()
        wait_until(lambda: numsub(redis, "q") == 0, 30, "every waiter unregistered")
        add(adding.url, "q", "left alone")
        assert redis("LLEN", "q:queue") == 1 and redis("ZCARD", "q:inflight") == 0
    finally:
        for poll in polls.values():
            poll.close()
        waiting.stop()
        adding.stop()
    for server in (waiting, adding):
        assert "Traceback" not in server.final_log and "Unhandled" not in server.final_log
