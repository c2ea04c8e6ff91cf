"""syslogd (docs/frontends.md#syslogd): TCP ingest throughput, and back-pressure while Redis is
paused.

Used by run.py, against `twistd syslogd` on its own Redis database (so each round can start
from an empty one):

a. throughput: 10 concurrent senders, each a blocking TCP connection sending LF-terminated
   RFC 3164 lines; lines/s from the first byte sent until LLEN syslogd:127.0.0.1:queue
   reaches the total, then every stored message is checked. Baseline, alternated round by
   round: the same senders to bare_server.py's line sink, a Twisted receiver that only counts
   lines, until its count reaches the total.
b. back-pressure: the same 10 senders send as fast as they can while Redis is stopped
   (SIGSTOP) for a while in the middle. The senders' sockets are blocking, so once the server
   stops reading they stall in sendall instead of failing. The server's RSS is sampled every
   0.25 s; afterwards every line a sender fully handed to the kernel must be stored.

Senders are threads: sendall releases the GIL, and a blocking socket is the point of (b).
"""
from __future__ import annotations

import dataclasses
import json
import re
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import redis_private
from common import ServerProcess, checkout_env, venv_bin, vm_rss_kb

QUEUE = "syslogd:127.0.0.1"
SENDERS = 10
LINES_PER_SEND = 100    # lines per sendall: a sender's unit of "handed to the kernel"
SEND_TIMEOUT = 60.0     # a guard against a wedged server, far beyond any expected stall
# The senders' kernel send buffer. Left to autotuning, loopback lets each socket queue up to
# net.ipv4.tcp_wmem's maximum (4 MiB here, ~90,000 lines) on the sender's side alone, so
# "sent" would mostly mean "queued in the sender's kernel", and the stall that (b) is about
# would come only after tens of MB. A fixed 64 KiB (the kernel doubles it) is what a
# syslog sender typically has; the server's receive buffer is left to the kernel.
SEND_BUFFER = 64 * 1024
POLL_INTERVAL = 0.01    # LLEN polling while waiting for the server to store everything
STALL_TIMEOUT = 30.0    # give up waiting when the stored count has not moved for this long
RSS_INTERVAL = 0.25
TARGET_LOST = 0
LINE_RE = re.compile(r"^<13>Nov 22 10:00:00 host app: message (\d+) (\d+)$")


class BenchError(RuntimeError):
    """The server misbehaved or did not answer: reported, never worked around."""


def syslog_line(sender: int, n: int) -> str:
    return f"<13>Nov 22 10:00:00 host app: message {sender} {n}\n"


def batch(sender: int, first: int, count: int) -> bytes:
    return "".join(syslog_line(sender, n) for n in range(first, first + count)).encode()


class SyslogServer(ServerProcess):
    """`twistd syslogd`: it never answers, so it is ready once it accepts a connection."""

    def __init__(self, port: int, redis_port: int, redis_db: int, logfile: Path) -> None:
        super().__init__("syslogd server",
                         [venv_bin("twistd"), "-n", "--pidfile=", "syslogd",
                          "--port", str(port), "--redis-port", str(redis_port),
                          "--redis-db", str(redis_db)],
                         f"tcp://127.0.0.1:{port}", logfile, env=checkout_env())
        self.port = port

    def ready(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
            return True
        except OSError:
            return False


def connect(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Before connecting: the buffer size is part of the window negotiated at the handshake.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    sock.settimeout(SEND_TIMEOUT)
    sock.connect(("127.0.0.1", port))
    # The timeout keeps the socket's blocking semantics (sendall waits for room in the send
    # buffer) but turns a server that never reads again into an error instead of a hang.
    return sock


def wait_for_count(count: Callable[[], int], target: int,
                   poll: float = POLL_INTERVAL) -> tuple[int, float]:
    """Poll count() every `poll` s until it reaches `target`; (final count, perf_counter
    when reached or when the count stopped moving)."""
    length, last_change = -1, time.perf_counter()
    while True:
        now = time.perf_counter()
        n = count()
        if n != length:
            length, last_change = n, now
        if n >= target:
            return n, now
        if now - last_change > STALL_TIMEOUT:
            return n, last_change
        time.sleep(poll)


@dataclasses.dataclass
class Check:
    stored: int
    problems: list[str]


def check_stored(rc: redis_private.RespClient, sent: list[int]) -> Check:
    """Read back every stored message: the right JSON fields, and for each sender exactly
    lines 0..sent-1, in the order they were sent."""
    keys = [k.decode() for k in rc.command("LRANGE", f"{QUEUE}:queue", 0, -1)]
    # Keys are <queue>:<n> with n increasing in the order of the adds.
    keys.sort(key=lambda k: int(k.rsplit(":", 1)[1]))
    seen: list[list[int]] = [[] for _ in sent]
    problems = []
    bad = 0
    for i in range(0, len(keys), 10_000):
        for raw in rc.command("MGET", *keys[i:i + 10_000]):
            try:
                obj = json.loads(raw)
                match = LINE_RE.match(obj["line"])
                ok = (match is not None and obj["host"] == "127.0.0.1"
                      and obj["facility"] == "user" and obj["severity"] == "notice"
                      and isinstance(obj["tstamp"], float))
            except (TypeError, ValueError, KeyError):
                ok = False
            if not ok:
                bad += 1
                if bad <= 3:
                    problems.append(f"unexpected stored message: {raw!r}")
                continue
            seen[int(match.group(1))].append(int(match.group(2)))
    if bad > 3:
        problems.append(f"{bad:,} stored messages in all were not as sent")
    for sender, lines in enumerate(seen):
        expected = list(range(sent[sender]))
        if lines == expected:
            continue
        got = set(lines)
        missing = sent[sender] - len(got & set(expected))
        dups = len(lines) - len(got)
        extra = len(got - set(expected))
        if missing or dups or extra:
            problems.append(f"sender {sender}: {missing:,} missing, {dups:,} duplicated, "
                            f"{extra:,} never sent (of {sent[sender]:,} sent)")
        else:
            problems.append(f"sender {sender}: all lines stored, but not in the order sent")
    return Check(len(keys), problems)


# --------------------------------------------------------------------------- a. throughput

@dataclasses.dataclass
class Throughput:
    lines: int
    seconds: float
    stored: int
    problems: list[str]

    @property
    def rate(self) -> float:
        return self.stored / self.seconds


def send_all(port: int, per_sender: int) -> float:
    """SENDERS threads each send `per_sender` lines at once; returns the perf_counter at
    which they were released (just before the first byte)."""
    # Built before the clock starts: the senders only send.
    payloads = [[batch(s, first, min(LINES_PER_SEND, per_sender - first))
                 for first in range(0, per_sender, LINES_PER_SEND)] for s in range(SENDERS)]
    socks = [connect(port) for _ in range(SENDERS)]
    started: list[float] = []
    errors: list[str] = []
    # The barrier's action runs once, just before all senders are released: the clock
    # starts before the first byte is sent.
    barrier = threading.Barrier(SENDERS, action=lambda: started.append(time.perf_counter()))

    def send(sender: int) -> None:
        sock = socks[sender]
        try:
            barrier.wait()
            for data in payloads[sender]:
                sock.sendall(data)
        except OSError as e:
            errors.append(f"sender {sender}: {type(e).__name__}: {e}")
        finally:
            sock.close()

    threads = [threading.Thread(target=send, args=(s,), daemon=True) for s in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError("sending failed: " + "; ".join(errors))
    return started[0]


def measure_throughput(port: int, redis_port: int, redis_db: int,
                       per_sender: int) -> Throughput:
    """RestMQ's syslogd: until every line is stored, then every stored message is checked;
    the database is emptied afterwards for the next round."""
    total = SENDERS * per_sender
    with redis_private.RespClient(redis_port, db=redis_db) as rc:
        rc.command("FLUSHDB")
        t0 = send_all(port, per_sender)
        stored, done = wait_for_count(lambda: redis_private.queue_length(rc, QUEUE), total)
        check = check_stored(rc, [per_sender] * SENDERS)
        rc.command("FLUSHDB")
    problems = check.problems
    if stored < total:
        problems.insert(0, f"only {stored:,} of {total:,} lines stored; no progress for "
                           f"{STALL_TIMEOUT:.0f} s")
    return Throughput(total, done - t0, stored, problems)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sink_count(http_port: int) -> int:
    """Lines bare_server.py's sink has received so far (never through a proxy)."""
    with _NO_PROXY.open(f"http://127.0.0.1:{http_port}/lines", timeout=5) as resp:
        return int(resp.read())


def measure_sink(sink_port: int, http_port: int, per_sender: int) -> Throughput:
    """The baseline: the same senders to a receiver that only counts lines."""
    total = SENDERS * per_sender
    before = sink_count(http_port)
    t0 = send_all(sink_port, per_sender)
    # The sink takes a few tens of ms for what syslogd takes seconds for: poll it finely.
    got, done = wait_for_count(lambda: sink_count(http_port) - before, total, poll=0.001)
    problems = [] if got == total else [f"the sink counted {got:,} lines of {total:,}"]
    return Throughput(total, done - t0, got, problems)


# --------------------------------------------------------------------------- b. back-pressure

@dataclasses.dataclass
class BackPressure:
    duration: float
    pause: float
    sent: int
    sent_before_pause: int
    sent_during_pause: int
    rss_before_kb: int
    rss_peak_kb: int
    rss_samples: list[tuple[float, int]]
    stored_before_pause: int
    stored: int
    catch_up_after_cont: float | None
    catch_up_after_senders: float | None
    problems: list[str]

    @property
    def lost(self) -> int:
        return self.sent - self.stored


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.stop_event.is_set():
            try:
                self.samples.append((time.perf_counter() - t0, vm_rss_kb(self.pid)))
            except (OSError, RuntimeError):
                return  # the server is gone; the main thread reports it
            self.stop_event.wait(RSS_INTERVAL)


def measure_backpressure(port: int, redis: redis_private.PrivateRedis, redis_db: int,
                         server_pid: int, duration: float, pause: float) -> BackPressure:
    counts = [0] * SENDERS  # lines each sender has fully handed to the kernel
    errors: list[str] = []
    stop = threading.Event()
    socks = [connect(port) for _ in range(SENDERS)]

    def send(sender: int) -> None:
        sock = socks[sender]
        try:
            while not stop.is_set():
                sock.sendall(batch(sender, counts[sender], LINES_PER_SEND))
                counts[sender] += LINES_PER_SEND  # only after sendall returned
        except OSError as e:
            errors.append(f"sender {sender} after {counts[sender]:,} lines: "
                          f"{type(e).__name__}: {e}")
        finally:
            sock.close()

    with redis_private.RespClient(redis.port, db=redis_db) as rc:
        rc.command("FLUSHDB")
        stored_at_start = redis_private.queue_length(rc, QUEUE)
    if stored_at_start:
        raise BenchError(f"{QUEUE} is not empty before the back-pressure run")

    rss_before = vm_rss_kb(server_pid)
    sampler = RssSampler(server_pid)
    threads = [threading.Thread(target=send, args=(s,), daemon=True) for s in range(SENDERS)]
    paused = False
    try:
        sampler.start()
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        # Redis runs for the first (duration - pause) / 2 s, is stopped for `pause` s, then
        # runs again until `duration`.
        time.sleep((duration - pause) / 2)
        with redis_private.RespClient(redis.port, db=redis_db) as rc:
            stored_before_pause = redis_private.queue_length(rc, QUEUE)
        sent_before_pause = sum(counts)
        redis.send_signal(signal.SIGSTOP)
        paused = True
        time.sleep(pause)
        sent_at_cont = sum(counts)
        redis.send_signal(signal.SIGCONT)
        paused = False
        t_cont = time.perf_counter()
        time.sleep(max(0.0, t0 + duration - time.perf_counter()))
        stop.set()
        for t in threads:
            t.join(SEND_TIMEOUT + 5)
        t_senders = time.perf_counter()
        if any(t.is_alive() for t in threads):
            raise BenchError("a sender is still blocked in sendall long after Redis resumed")
        sent = sum(counts)
        with redis_private.RespClient(redis.port, db=redis_db) as rc:
            stored, done = wait_for_count(lambda: redis_private.queue_length(rc, QUEUE), sent)
            caught_up = stored >= sent
            check = check_stored(rc, counts)
    finally:
        if paused:  # never leave Redis stopped: its SIGTERM in cleanup would wait forever
            redis.send_signal(signal.SIGCONT)
        stop.set()
        sampler.stop_event.set()
        sampler.join()
    problems = [f"sending failed: {e}" for e in errors] + check.problems
    if not caught_up:
        problems.insert(0, f"only {stored:,} of {sent:,} sent lines stored; no progress for "
                           f"{STALL_TIMEOUT:.0f} s")
    return BackPressure(
        duration=duration, pause=pause, sent=sent, sent_before_pause=sent_before_pause,
        sent_during_pause=sent_at_cont - sent_before_pause, rss_before_kb=rss_before,
        rss_peak_kb=max(kb for _, kb in sampler.samples), rss_samples=sampler.samples,
        stored_before_pause=stored_before_pause, stored=stored,
        catch_up_after_cont=done - t_cont if caught_up else None,
        catch_up_after_senders=max(0.0, done - t_senders) if caught_up else None,
        problems=problems)


def rss_profile(samples: list[tuple[float, int]], every: float = 1.0) -> str:
    """One RSS value (MiB) per `every` seconds: the largest sample in each interval."""
    buckets: dict[int, int] = {}
    for t, kb in samples:
        i = int(t // every)
        buckets[i] = max(buckets.get(i, 0), kb)
    return ", ".join(f"{buckets[i] / 1024:.1f}" for i in sorted(buckets))
