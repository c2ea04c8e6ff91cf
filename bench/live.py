"""Live-delivery benchmark (PROTOCOL.md §7): comet latency, fan-out and backlog drain.

Run from the repository root:  .venv/bin/python bench/live.py [--quick] [--out FILE]
(--quick: fewer messages and consumers, for smoke tests; the full run takes ~1.5 minutes)

Three measurements against `twistd restmq --access-log off` on a private Redis:

a. latency: one keep-alive producer connection POSTs 1,000 messages one after the other
   to /q/lat; one comet consumer on /c/lat. Latency = from just before the POST is sent
   to the arrival of the matching comet line.
b. fan-out: N idle comet consumers of /c/fan (asyncio, one process); one POST; time until
   every consumer has its line, and the server's RSS per idle consumer.
c. backlog drain: 100,000 messages put straight into Redis, then one comet consumer; time
   until it has them all, under the broadcast and the roundrobin policy (3 rounds each,
   alternating, median reported: one drain takes ~10 s and is sensitive to other load).

The clients are deliberately small raw-socket/asyncio code rather than an HTTP library, so
that what is timed is the server and the network stack, not client-side abstractions.
Client, server and Redis share the machine, which the figures include.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis_private
from common import (BENCH_DIR, ServerProcess, checkout_env, cpu_seconds, free_ports,
                    header_lines, log_problems, open_fds, raise_exit, raise_nofile_limit,
                    software_info, venv_bin, vm_rss_kb)

FORM_TYPE = "application/x-www-form-urlencoded"
IO_TIMEOUT = 10.0  # no single read in this benchmark should wait longer than this

TARGET_LATENCY_P50_MS = 5.0
TARGET_FANOUT_MS = {1_000: 50.0, 10_000: 300.0}  # judged on the median of the repeats
TARGET_KB_PER_CONSUMER = 10.0
TARGET_RSS_10K_MB = 150.0
TARGET_DRAIN_PER_S = 10_000.0
# Concurrent connection attempts while opening the fan-out consumers: Twisted listens with
# a backlog of 50, and a burst far beyond it makes the kernel drop SYNs, which then wait
# for the 1 s retransmit and only slow the opening down.
CONNECT_CONCURRENCY = 40
FD_MARGIN = 200  # descriptors needed beyond one per consumer (Redis pool, logs, listener)


class BenchError(RuntimeError):
    """The server answered wrongly or not at all: reported, never worked around."""


# --------------------------------------------------------------------------- HTTP pieces

class ChunkedLines:
    """Incremental decoder of a chunked HTTP/1.1 body into CRLF-terminated lines.

    The comet stream is never-ending, so this keeps state across reads; a line may span
    chunks and reads, and one read may hold several lines.
    """

    def __init__(self) -> None:
        self._raw = bytearray()   # undecoded transfer bytes
        self._body = bytearray()  # decoded body bytes not yet ending a line
        self._data_left = 0       # payload bytes still due in the current chunk
        self._crlf_left = 0       # bytes of the CRLF that closes the current chunk
        self.ended = False        # the last (zero-size) chunk was seen

    def feed(self, data: bytes) -> list[bytes]:
        raw = self._raw
        raw += data
        while raw and not self.ended:
            if self._data_left:
                n = min(self._data_left, len(raw))
                self._body += raw[:n]
                del raw[:n]
                self._data_left -= n
            elif self._crlf_left:
                n = min(self._crlf_left, len(raw))
                del raw[:n]
                self._crlf_left -= n
            else:
                end = raw.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(raw[:end]).split(b";")[0], 16)
                del raw[:end + 2]
                if size == 0:
                    self.ended = True
                self._data_left, self._crlf_left = size, 2
        if b"\r\n" not in self._body:
            return []
        *lines, rest = self._body.split(b"\r\n")
        self._body = bytearray(rest)
        return [bytes(line) for line in lines]


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and lower-cased headers of a response head (without the blank line)."""
    status_line, *header_lines_ = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise BenchError(f"not an HTTP response: {status_line!r}")
    headers = {}
    for line in header_lines_:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def post_request(path: str, body: str) -> bytes:
    data = body.encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM_TYPE}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def get_request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


class BlockingConn:
    """One keep-alive HTTP/1.1 connection on a blocking socket (Nagle off)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise BenchError("the server closed the connection")
        self.buf += data

    def read_head(self) -> tuple[int, dict[str, str]]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._recv()
        head = bytes(self.buf[:end])
        del self.buf[:end + 4]
        return parse_head(head)

    def read_response(self) -> tuple[int, bytes]:
        """A complete response with a Content-Length body (all RestMQ REST replies)."""
        status, headers = self.read_head()
        if "content-length" not in headers:
            raise BenchError(f"reply without Content-Length: {status} {headers}")
        length = int(headers["content-length"])
        while len(self.buf) < length:
            self._recv()
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return status, body

    def post(self, path: str, body: str) -> tuple[int, bytes]:
        self.sock.sendall(post_request(path, body))
        return self.read_response()


class CometStream(BlockingConn):
    """A comet consumer of /c/<queue> on a blocking socket; `next_messages()` returns the
    decoded message objects of the next read(s)."""

    def __init__(self, port: int, queue: str) -> None:
        super().__init__(port)
        self.sock.sendall(get_request(f"/c/{queue}"))
        status, headers = self.read_head()
        if status != 200 or headers.get("transfer-encoding", "").lower() != "chunked":
            raise BenchError(f"GET /c/{queue}: expected a chunked 200, got {status} {headers}")
        self.decoder = ChunkedLines()
        self.pending = [json.loads(line) for line in self.decoder.feed(bytes(self.buf))]
        self.buf.clear()

    def next_messages(self) -> list[dict]:
        """Block until at least one line has arrived; return every complete one."""
        while not self.pending:
            data = self.sock.recv(262144)
            if not data:
                raise BenchError("the server ended the comet stream")
            for line in self.decoder.feed(data):
                self.pending.append(json.loads(line))
        out, self.pending = self.pending, []
        return out


# --------------------------------------------------------------------------- a. latency

@dataclasses.dataclass
class LatencyResult:
    count: int
    samples_ms: list[float]
    problems: list[str]

    def pct(self, p: float) -> float:
        s = sorted(self.samples_ms)
        return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def measure_latency(port: int, count: int, warmup: int = 50) -> LatencyResult:
    queue = "lat"
    producer = BlockingConn(port)
    comet = CometStream(port, queue)
    samples, problems = [], []
    try:
        # Warm-up messages (not timed): the first ones pay for the subscription and for
        # code paths the interpreter has not run yet.
        for n in range(-warmup, count):
            value = str(n)
            t0 = time.perf_counter()
            producer.sock.sendall(post_request(f"/q/{queue}", f"value={value}"))
            messages = comet.next_messages()
            t1 = time.perf_counter()
            status, body = producer.read_response()
            if status != 200:
                raise BenchError(f"POST /q/{queue}: {status} {body!r}")
            if len(messages) != 1 or messages[0].get("value") != value:
                problems.append(f"message {n}: expected one line with value {value!r}, got "
                                f"{messages!r}")
            elif n >= 0:
                samples.append((t1 - t0) * 1000.0)
    finally:
        producer.close()
        comet.close()
    return LatencyResult(count, samples, problems)


# --------------------------------------------------------------------------- b. fan-out

class FanConsumer(asyncio.Protocol):
    """One idle comet consumer. The hot path (data_received while a message fans out) only
    appends and timestamps; the content is checked afterwards with ChunkedLines."""

    def __init__(self, fan: FanOut) -> None:
        self.fan = fan
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.headers_done = asyncio.get_running_loop().create_future()
        self.body = bytearray()
        self.got_at: float | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.fan.request)

    def data_received(self, data: bytes) -> None:
        if not self.headers_done.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = bytes(self.head[end + 4:])
            del self.head[end:]
            self.headers_done.set_result(None)
            if not data:
                return
        self.body += data
        # A delivered line is complete once its chunk is: the line's CRLF followed by the
        # chunk's CRLF. JSON never holds a raw CR or LF, so nothing else ends that way.
        if self.got_at is None and self.body.endswith(b"\r\n\r\n"):
            self.got_at = time.perf_counter()
            self.fan.delivered()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fan.lost(self)
        if not self.headers_done.done():
            self.headers_done.set_exception(BenchError(f"connection lost before the headers: "
                                                       f"{exc}"))


@dataclasses.dataclass
class FanRound:
    ms: float        # POST sent -> the last consumer had its line
    first_ms: float  # POST sent -> the first consumer had its line
    server_cpu_ms: float  # CPU the server used meanwhile (POST sent -> last line)
    client_cpu_ms: float  # CPU this client process used meanwhile
    bad: int  # consumers whose stream was not exactly the one expected line


@dataclasses.dataclass
class FanResult:
    n: int
    open_s: float
    rss_before_kb: int
    rss_after_kb: int
    fds_before: int
    fds_after: int
    rounds: list[FanRound]
    release_s: float | None
    problems: list[str]

    @property
    def kb_per_consumer(self) -> float:  # KiB, as /proc reports it
        return (self.rss_after_kb - self.rss_before_kb) / self.n

    @property
    def median_ms(self) -> float:
        return statistics.median(r.ms for r in self.rounds)

    @property
    def max_ms(self) -> float:
        return max(r.ms for r in self.rounds)

    @property
    def first_ms(self) -> float:
        return statistics.median(r.first_ms for r in self.rounds)

    @property
    def server_cpu_ms(self) -> float:
        return statistics.median(r.server_cpu_ms for r in self.rounds)

    @property
    def client_cpu_ms(self) -> float:
        return statistics.median(r.client_cpu_ms for r in self.rounds)


class FanOut:
    queue = "fan"

    def __init__(self, port: int, server_pid: int) -> None:
        self.port = port
        self.server_pid = server_pid
        self.request = get_request(f"/c/{self.queue}")
        self.consumers: list[FanConsumer] = []
        self.expected = 0
        self.count = 0
        self.all_delivered: asyncio.Future | None = None
        self.lost_unexpectedly = 0
        self.closing = False

    def delivered(self) -> None:
        self.count += 1
        if self.count == self.expected and not self.all_delivered.done():
            self.all_delivered.set_result(None)

    def lost(self, consumer: FanConsumer) -> None:
        if not self.closing:
            self.lost_unexpectedly += 1

    async def _open_one(self, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        async with gate:  # held until the headers came back: the server has registered it
            _, consumer = await loop.create_connection(lambda: FanConsumer(self),
                                                       "127.0.0.1", self.port)
            self.consumers.append(consumer)
            await asyncio.wait_for(consumer.headers_done, IO_TIMEOUT)
        status, headers = parse_head(bytes(consumer.head))
        if status != 200:
            raise BenchError(f"GET /c/{self.queue}: {status} {headers}")

    async def run(self, n: int, repeats: int) -> FanResult:
        problems: list[str] = []
        self.closing, self.lost_unexpectedly = False, 0
        rss_before, fds_before = vm_rss_kb(self.server_pid), open_fds(self.server_pid)

        t0 = time.perf_counter()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        await asyncio.gather(*(self._open_one(gate) for _ in range(n)))
        open_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)  # let the server settle (GC, buffers) before reading RSS
        rss_after, fds_after = vm_rss_kb(self.server_pid), open_fds(self.server_pid)

        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rounds = []
        try:
            for r in range(repeats):
                value = f"fan-{n}-{r}"
                for c in self.consumers:
                    c.body.clear()
                    c.got_at = None
                self.count, self.expected = 0, n
                self.all_delivered = asyncio.get_running_loop().create_future()
                server_cpu0, client_cpu0 = cpu_seconds(self.server_pid), time.process_time()
                t_post = time.perf_counter()
                writer.write(post_request(f"/q/{self.queue}", f"value={value}"))
                status, body = await read_async_response(reader)
                if status != 200:
                    raise BenchError(f"POST /q/{self.queue}: {status} {body!r}")
                try:
                    await asyncio.wait_for(self.all_delivered, IO_TIMEOUT)
                except asyncio.TimeoutError:
                    raise BenchError(f"fan-out to {n}: only {self.count} of {n} consumers had "
                                     f"the message after {IO_TIMEOUT:.0f} s") from None
                server_cpu = cpu_seconds(self.server_pid) - server_cpu0
                client_cpu = time.process_time() - client_cpu0
                first = min(c.got_at for c in self.consumers)
                last = max(c.got_at for c in self.consumers)
                await asyncio.sleep(0.3)  # catch duplicates or stray lines before checking
                bad = sum(1 for c in self.consumers if not _exactly(c.body, value))
                if bad:
                    problems.append(f"round {r + 1}: {bad} of {n} consumers did not receive "
                                    f"exactly the one line with value {value!r}")
                rounds.append(FanRound((last - t_post) * 1000.0, (first - t_post) * 1000.0,
                                       server_cpu * 1000.0, client_cpu * 1000.0, bad))
        finally:
            writer.close()
            release_s = await self.close_all(fds_before)
        if self.lost_unexpectedly:
            problems.append(f"{self.lost_unexpectedly} consumers were disconnected by the server")
        if release_s is None:
            problems.append(f"the server still held {open_fds(self.server_pid) - fds_before} "
                            f"more descriptors than before, 60 s after the consumers closed")
        return FanResult(n, open_s, rss_before, rss_after, fds_before, fds_after, rounds,
                         release_s, problems)

    async def close_all(self, fds_before: int, timeout: float = 60.0) -> float | None:
        """Close every consumer; seconds until the server's descriptor count is back to
        what it was before they opened (None: not within `timeout`)."""
        self.closing = True
        t0 = time.perf_counter()
        for c in self.consumers:
            if c.transport is not None:
                c.transport.close()
        self.consumers = []
        while time.perf_counter() - t0 < timeout:
            if open_fds(self.server_pid) <= fds_before:
                return time.perf_counter() - t0
            await asyncio.sleep(0.1)
        return None


def _exactly(body: bytearray, value: str) -> bool:
    lines = ChunkedLines().feed(bytes(body))
    if len(lines) != 1:
        return False
    try:
        return json.loads(lines[0]).get("value") == value
    except ValueError:
        return False


async def read_async_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
    status, headers = parse_head(head[:-4])
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])),
                                  IO_TIMEOUT)
    return status, body


def measure_fanout(port: int, server_pid: int, sizes: list[int],
                   repeats: int) -> list[FanResult]:
    async def main() -> list[FanResult]:
        fan = FanOut(port, server_pid)
        results = []
        for n in sizes:
            res = await fan.run(n, repeats)
            release = "never" if res.release_s is None else f"in {res.release_s:.1f} s"
            print(f"  fan-out {n:>6,}: opened in {res.open_s:.1f} s, RSS "
                  f"{res.rss_before_kb / 1024:.1f} -> {res.rss_after_kb / 1024:.1f} MiB "
                  f"({res.kb_per_consumer:.1f} KB/consumer); all lines median "
                  f"{res.median_ms:.1f} ms, max {res.max_ms:.1f} ms (CPU server "
                  f"{res.server_cpu_ms:.0f} ms, client {res.client_cpu_ms:.0f} ms); "
                  f"released {release}", flush=True)
            results.append(res)
        return results

    return asyncio.run(main())


# --------------------------------------------------------------------------- c. drain

@dataclasses.dataclass
class DrainResult:
    policy: str
    round: int
    count: int
    prefill_s: float
    seconds: float
    problems: list[str]

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def measure_drain(port: int, redis_port: int, policy: str, count: int,
                  rnd: int) -> DrainResult:
    queue = f"drain{policy}{rnd}"  # a fresh queue each time
    problems: list[str] = []
    if policy != "broadcast":  # broadcast is what an unset policy means
        conn = BlockingConn(port)
        try:
            status, body = conn.post(f"/p/{queue}", f"policy={policy}")
        finally:
            conn.close()
        if status != 200 or body.strip() != b"OK":
            raise BenchError(f"POST /p/{queue} policy={policy}: {status} {body!r}")
    with redis_private.RespClient(redis_port) as rc:
        t0 = time.perf_counter()
        redis_private.top_up(rc, queue, count, value="drain")
        prefill_s = time.perf_counter() - t0

        # The clock starts before the GET: connecting and registering are part of draining.
        t0 = time.perf_counter()
        comet = CometStream(port, queue)
        keys: list[str] = []
        try:
            while len(keys) < count:
                keys.extend(m["key"] for m in comet.next_messages())
            seconds = time.perf_counter() - t0
            time.sleep(0.3)  # anything after the last expected line is a duplicate
            comet.sock.settimeout(0.2)
            try:
                while True:
                    keys.extend(m["key"] for m in comet.next_messages())
            except (TimeoutError, socket.timeout):
                pass
        finally:
            comet.close()
        left = redis_private.queue_length(rc, queue)

    expected = [f"{queue}:{i}" for i in range(1, count + 1)]
    tag = f"drain {policy} round {rnd}"
    if len(keys) != count or set(keys) != set(expected):
        problems.append(f"{tag}: {len(keys):,} lines, {len(set(keys)):,} distinct keys; "
                        f"expected exactly {count:,}")
    elif keys != expected:
        problems.append(f"{tag}: every message arrived but not in FIFO order")
    if left:
        problems.append(f"{tag}: {left:,} messages still pending in Redis afterwards")
    return DrainResult(policy, rnd, count, prefill_s, seconds, problems)


# --------------------------------------------------------------------------- report

def drain_medians(drains: list[DrainResult]) -> dict[str, float]:
    policies = dict.fromkeys(d.policy for d in drains)  # in run order
    return {p: statistics.median(d.rate for d in drains if d.policy == p) for p in policies}


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**NOT MET**"


def render(args: argparse.Namespace, info: dict[str, str], started: datetime.datetime,
           load: tuple[float, float, float], nofile: int, lat: LatencyResult,
           fans: list[FanResult], skipped: list[int], drains: list[DrainResult],
           server_log: list[str]) -> str:
    out = ["# RestMQ live-delivery benchmark" + (" (--quick)" if args.quick else ""), ""]
    out += header_lines(info, started, load)
    out += [
        "- server: `twistd -n restmq --access-log off` (one process, broadcast policy unless "
        f"stated), private Redis; clients in one Python process; RLIMIT_NOFILE {nofile:,} for "
        "the server and the clients; everything shares this machine",
        "",
        "## a. add → comet delivery latency",
        "",
        f"{lat.count:,} sequential messages: `POST /q/lat` on a keep-alive connection, one comet "
        "consumer of `/c/lat`; from just before the POST is sent to the arrival of its line.",
        "",
        "| p50 ms | p95 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|",
        f"| {lat.pct(50):.2f} | {lat.pct(95):.2f} | {lat.pct(99):.2f} | "
        f"{max(lat.samples_ms):.2f} |" if lat.samples_ms else "| - | - | - | - |",
        "",
        "## b. fan-out to idle comet consumers",
        "",
        f"N comet consumers of `/c/fan` held open (asyncio, at most {CONNECT_CONCURRENCY} "
        "opening at once); server RSS (VmRSS) before opening and 1 s after the last headers "
        f"arrived; then {args.repeats} times one `POST /q/fan` and the time until every "
        "consumer had the complete line.",
        "",
        "| N | open s | RSS before MiB | RSS with N MiB | KB per consumer | server fds | "
        "release s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in fans:
        release = "not released" if f.release_s is None else f"{f.release_s:.1f}"
        out.append(f"| {f.n:,} | {f.open_s:.1f} | {f.rss_before_kb / 1024:.1f} | "
                   f"{f.rss_after_kb / 1024:.1f} | {f.kb_per_consumer:.1f} | "
                   f"{f.fds_before:,} → {f.fds_after:,} | {release} |")
    out += [
        "",
        "| N | first line ms (median) | all lines ms (median) | all lines ms (max) | "
        "all lines ms, each round | server CPU ms | client CPU ms |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for f in fans:
        out.append(f"| {f.n:,} | {f.first_ms:.1f} | {f.median_ms:.1f} | {f.max_ms:.1f} | "
                   f"{', '.join(f'{r.ms:.0f}' for r in f.rounds)} | {f.server_cpu_ms:.0f} | "
                   f"{f.client_cpu_ms:.0f} |")
    out += [
        "",
        "RSS before is measured after the previous N closed, so memory the server kept from "
        "it can be reused. release s: from closing every consumer until the server's "
        "descriptor count was back to its value before they opened.",
        "",
        "first line: until the first consumer had the line; all lines: until the last one "
        "had it (the target). CPU: median per round of the CPU time the server process and "
        "this client process used from the POST until the last line arrived. The client is "
        "one single-threaded asyncio process on the same CPUs as the server and Redis, so "
        "its own handling of N reads is part of these times.",
        "",
        "## c. backlog drain",
        "",
        f"{args.drain:,} messages are put directly in Redis (RestMQ key layout), then one "
        "comet consumer connects; from sending its GET until its last line arrived. "
        f"{args.drain_rounds} round(s), broadcast and roundrobin (set by `POST /p/<q>` before "
        "the prefill) alternating, each on a fresh queue.",
        "",
        "| policy | messages/s (median) | each round messages/s |",
        "|---|---:|---|",
    ]
    for policy, rate in drain_medians(drains).items():
        each = ", ".join(f"{d.rate:,.0f}" for d in drains if d.policy == policy)
        out.append(f"| {policy} | {rate:,.0f} | {each} |")
    out += [
        "",
        "| round | policy | messages | prefill s | drain s | messages/s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for d in drains:
        out.append(f"| {d.round} | {d.policy} | {d.count:,} | {d.prefill_s:.1f} | "
                   f"{d.seconds:.2f} | {d.rate:,.0f} |")
    out += ["", "## Targets", ""]
    out += target_lines(lat, fans, skipped, drains)
    out += ["", "## Notes", ""]
    problems = lat.problems + [p for f in fans for p in f.problems] + \
        [p for d in drains for p in d.problems]
    out += [f"- {p}" for p in problems] or ["- every consumer received exactly the expected "
                                            "messages (content, count and order checked)"]
    for n in skipped:
        out.append(f"- fan-out with {n:,} consumers skipped: RLIMIT_NOFILE {nofile:,} is below "
                   f"{n + FD_MARGIN:,}")
    if server_log:
        out.append(f"- the server logged {len(server_log)} warning/error line(s); the first:")
        out += [f"  - `{line[:300]}`" for line in server_log[:10]]
    else:
        out.append("- the server log holds no warning, error or traceback")
    return "\n".join(out) + "\n"


def target_lines(lat: LatencyResult, fans: list[FanResult], skipped: list[int],
                 drains: list[DrainResult]) -> list[str]:
    lines = []
    if lat.samples_ms:
        p50 = lat.pct(50)
        lines.append(f"- latency p50 {p50:.2f} ms, target < {TARGET_LATENCY_P50_MS:g} ms: "
                     f"{verdict(p50 < TARGET_LATENCY_P50_MS)}")
    for f in fans:
        if f.n in TARGET_FANOUT_MS:
            target = TARGET_FANOUT_MS[f.n]
            lines.append(f"- fan-out to {f.n:,}: median {f.median_ms:.1f} ms (max "
                         f"{f.max_ms:.1f} ms), target within {target:g} ms: "
                         f"{verdict(f.median_ms <= target)}")
    for f in fans:
        lines.append(f"- RSS per idle consumer at {f.n:,}: {f.kb_per_consumer:.1f} KB, target "
                     f"<= {TARGET_KB_PER_CONSUMER:g} KB: "
                     f"{verdict(f.kb_per_consumer <= TARGET_KB_PER_CONSUMER)}")
        if f.n == 10_000:
            mb = f.rss_after_kb * 1024 / 1e6
            lines.append(f"- server RSS with 10,000 consumers: {mb:.1f} MB "
                         f"({f.rss_after_kb / 1024:.1f} MiB), target < {TARGET_RSS_10K_MB:g} MB: "
                         f"{verdict(mb < TARGET_RSS_10K_MB)}")
    for n in skipped:
        lines.append(f"- fan-out to {n:,}: not measured (descriptor limit)")
    for policy, rate in drain_medians(drains).items():
        lines.append(f"- drain ({policy}): median {rate:,.0f} messages/s, target >= "
                     f"{TARGET_DRAIN_PER_S:,.0f}/s: {verdict(rate >= TARGET_DRAIN_PER_S)}")
    return lines


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="RestMQ live-delivery benchmark (comet).")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 200 latency messages, 100 and 1,000 consumers, "
                        "3 repeats, 20,000 drained messages, 1 drain round")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "report-live.md",
                   help="report file (default bench/report-live.md)")
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.sizes, args.repeats, args.drain = 200, [100, 1_000], 3, 20_000
        args.drain_rounds = 1
    else:
        args.messages, args.sizes, args.repeats, args.drain = 1_000, [1_000, 10_000], 5, 100_000
        args.drain_rounds = 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        print("error: redis-server not found on PATH. Install it (Debian: apt-get install "
              "redis-server) and retry.", file=sys.stderr)
        return 2
    # Before any child starts: the server inherits the raised limit.
    nofile = raise_nofile_limit()
    sizes = [n for n in args.sizes if n + FD_MARGIN <= nofile]
    skipped = [n for n in args.sizes if n not in sizes]
    signal.signal(signal.SIGTERM, raise_exit)
    started = datetime.datetime.now(datetime.timezone.utc)
    load = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="restmq-live-") as tmp_name:
        tmp = Path(tmp_name)
        redis_port, port = free_ports(2)
        redis = redis_private.PrivateRedis(redis_bin, redis_port, tmp)
        server = ServerProcess("restmq server",
                               [venv_bin("twistd"), "-n", "--pidfile=", "restmq",
                                "--port", str(port), "--redis-port", str(redis_port),
                                "--access-log", "off"],
                               f"http://127.0.0.1:{port}/stats/", tmp / "restmq.log",
                               env=checkout_env())
        try:
            redis.start()
            info = software_info(redis.version())
            server.start()
            print(f"redis :{redis_port}  restmq :{port} (pid {server.pid})  "
                  f"RLIMIT_NOFILE {nofile:,}", flush=True)

            print(f"a. latency: {args.messages:,} messages", flush=True)
            lat = measure_latency(port, args.messages)
            if not lat.samples_ms:
                raise BenchError("no latency sample: " + "; ".join(lat.problems[:5]))
            print(f"  p50 {lat.pct(50):.2f} ms  p95 {lat.pct(95):.2f} ms  p99 "
                  f"{lat.pct(99):.2f} ms  max {max(lat.samples_ms):.2f} ms", flush=True)

            print(f"b. fan-out: {', '.join(f'{n:,}' for n in sizes)} consumers", flush=True)
            fans = measure_fanout(port, server.pid, sizes, args.repeats)

            drains = []
            for rnd in range(1, args.drain_rounds + 1):
                for policy in ("broadcast", "roundrobin"):  # alternated: drift hits both
                    print(f"c. drain round {rnd}/{args.drain_rounds} ({policy}): "
                          f"{args.drain:,} messages", flush=True)
                    d = measure_drain(port, redis_port, policy, args.drain, rnd)
                    print(f"  {d.seconds:.2f} s, {d.rate:,.0f} messages/s", flush=True)
                    drains.append(d)

            if not server.alive():
                raise BenchError(f"the server died during the benchmark:\n{server.log_tail()}")
            server_log = log_problems(server.logfile)
        except KeyboardInterrupt:
            print("interrupted; stopping servers", file=sys.stderr)
            return 130
        except (BenchError, RuntimeError, OSError, ValueError) as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            print(f"server log (last lines):\n{server.log_tail()}", file=sys.stderr)
            return 1
        finally:
            # Cleanup must not be cut short by a second Ctrl-C / SIGTERM; each step has a
            # timeout, so this cannot hang for long.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                server.stop()
            finally:
                redis.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, raise_exit)

    report = render(args, info, started, load, nofile, lat, fans, skipped, drains, server_log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print()
    print(report.replace("**", ""))
    print(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
