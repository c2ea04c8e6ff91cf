"""Live delivery (docs/live-delivery.md): add→delivery latency, fan-out, memory per consumer,
drain.

Used by run.py; every measurement runs against `twistd restmq --access-log off` and, in the
same run and interleaved with it, against a baseline from bare_server.py:

a. latency: one keep-alive producer POSTs messages one after the other; one consumer per
   transport (comet `/c/`, WebSocket `/ws/`, SSE `/sse/`, each on its own queue) waits for
   it. Latency = from just before the POST is sent to the arrival of the message. Baseline:
   the round trip of `POST /bare` from the same client. The four alternate message by message.
b. fan-out: N idle comet consumers, then one POST; time until every consumer has its line,
   and the server's RSS per idle consumer. Baseline: the bare server's held-open chunked
   streams, written straight from its POST handler. Each side's consumers live in a client
   process of their own (a process may hold only 20,000 descriptors); the two sides alternate
   round by round while both sets are open.
c. backlog drain: messages put straight into Redis, then one comet consumer; time until it
   has them all (broadcast and roundrobin). Baseline: the bare server streaming the same
   lines, 10 per reactor turn: what this client can read.

The clients are small raw-socket/asyncio code rather than an HTTP library, so that what is
timed is the server and the network stack, not client-side abstractions. Client, servers
and Redis share the machine, which the figures include.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import multiprocessing
import os
import socket
import statistics
import struct
import time

import redis_private
from common import cpu_seconds, open_fds, vm_rss_kb

FORM_TYPE = "application/x-www-form-urlencoded"
IO_TIMEOUT = 10.0  # no single read in this benchmark should wait longer than this
# Concurrent connection attempts while opening the fan-out consumers: Twisted listens with
# a backlog of 50, and a burst far beyond it makes the kernel drop SYNs, which then wait
# for the 1 s retransmit and only slow the opening down.
CONNECT_CONCURRENCY = 40
FD_MARGIN = 200  # descriptors needed beyond one per consumer (Redis pool, logs, listener)
TRANSPORTS = ("comet", "ws", "sse")


class BenchError(RuntimeError):
    """The server answered wrongly or not at all: reported, never worked around."""


# --------------------------------------------------------------------------- HTTP pieces

class ChunkedBody:
    """Incremental decoder of a chunked HTTP/1.1 body; `feed` returns the decoded bytes."""

    def __init__(self) -> None:
        self._raw = bytearray()   # undecoded transfer bytes
        self._data_left = 0       # payload bytes still due in the current chunk
        self._crlf_left = 0       # bytes of the CRLF that closes the current chunk
        self.ended = False        # the last (zero-size) chunk was seen

    def feed(self, data: bytes) -> bytes:
        raw = self._raw
        raw += data
        out = bytearray()
        while raw and not self.ended:
            if self._data_left:
                n = min(self._data_left, len(raw))
                out += raw[:n]
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
        return bytes(out)


class Records:
    """Splits a byte stream into records ended by `sep` (CRLF for comet lines, a blank line
    for SSE events); a record may span reads, and one read may hold several."""

    def __init__(self, sep: bytes) -> None:
        self.sep = sep
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        if self.sep not in self._buf:
            return []
        *records, rest = self._buf.split(self.sep)
        self._buf = bytearray(rest)
        return [bytes(r) for r in records]


class ChunkedLines:
    """A comet body: chunked transfer, then CRLF-terminated lines."""

    def __init__(self) -> None:
        self.body, self.lines = ChunkedBody(), Records(b"\r\n")

    def feed(self, data: bytes) -> list[bytes]:
        return self.lines.feed(self.body.feed(data))


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and lower-cased headers of a response head (without the blank line)."""
    status_line, *fields = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise BenchError(f"not an HTTP response: {status_line!r}")
    headers = {}
    for line in fields:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def post_request(path: str, body: str) -> bytes:
    data = body.encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM_TYPE}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def get_request(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


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


class LiveStream(BlockingConn):
    """A live consumer on a blocking socket; `next_messages()` blocks until at least one
    message has arrived and returns every complete one, decoded."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.pending: list[dict] = []

    def _decode(self, data: bytes) -> list[dict]:
        raise NotImplementedError

    def next_messages(self) -> list[dict]:
        while not self.pending:
            data = self.sock.recv(262144)
            if not data:
                raise BenchError("the server ended the stream")
            self.pending.extend(self._decode(data))
        out, self.pending = self.pending, []
        return out


class CometStream(LiveStream):
    """`GET /c/<q>`: chunked, one JSON line per message."""

    def __init__(self, port: int, queue: str, path: str = "/c/") -> None:
        super().__init__(port)
        self.sock.sendall(get_request(f"{path}{queue}"))
        status, headers = self.read_head()
        if status != 200 or headers.get("transfer-encoding", "").lower() != "chunked":
            raise BenchError(f"GET {path}{queue}: expected a chunked 200, got {status} {headers}")
        self.decoder = ChunkedLines()
        self.pending = self._decode(bytes(self.buf))
        self.buf.clear()

    def _decode(self, data: bytes) -> list[dict]:
        return [json.loads(line) for line in self.decoder.feed(data)]


class SSEStream(LiveStream):
    """`GET /sse/<q>`: chunked text/event-stream; each event `id:` + `data:` + blank line."""

    def __init__(self, port: int, queue: str) -> None:
        super().__init__(port)
        self.sock.sendall(get_request(f"/sse/{queue}"))
        status, headers = self.read_head()
        if status != 200 or not headers.get("content-type", "").startswith("text/event-stream"):
            raise BenchError(f"GET /sse/{queue}: expected an event stream, got {status} "
                             f"{headers}")
        self.body, self.events = ChunkedBody(), Records(b"\n\n")
        self.pending = self._decode(bytes(self.buf))
        self.buf.clear()

    def _decode(self, data: bytes) -> list[dict]:
        out = []
        for event in self.events.feed(self.body.feed(data)):
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):  # `id:` repeats the key; comments are skipped
                    out.append(json.loads(line[6:]))
        return out


class WebSocketStream(LiveStream):
    """`GET /ws/<q>`: RFC 6455; each message one unmasked text frame from the server."""

    def __init__(self, port: int, queue: str) -> None:
        super().__init__(port)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(get_request(
            f"/ws/{queue}", f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"))
        status, headers = self.read_head()
        if status != 101:
            raise BenchError(f"GET /ws/{queue}: expected 101, got {status} {headers}")
        self.frames = bytearray(self.buf)
        self.buf.clear()
        self.pending = self._decode(b"")

    def _decode(self, data: bytes) -> list[dict]:
        buf = self.frames
        buf += data
        out = []
        while len(buf) >= 2:
            opcode, length, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if buf[1] & 0x80:
                raise BenchError("the server sent a masked frame")
            if length == 126:
                if len(buf) < 4:
                    break
                length, at = struct.unpack("!H", buf[2:4])[0], 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, at = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < at + length:
                break
            payload = bytes(buf[at:at + length])
            del buf[:at + length]
            if opcode == 0x1:
                out.append(json.loads(payload))
            elif opcode == 0x8:
                raise BenchError(f"the server closed the WebSocket: {payload!r}")
        return out


# --------------------------------------------------------------------------- a. latency

@dataclasses.dataclass
class LatencyResult:
    # samples[channel][round] = latencies in ms; channels: "bare" and TRANSPORTS
    samples: dict[str, list[list[float]]]
    problems: list[str]

    def pct(self, channel: str, p: float) -> float:
        """Median over the rounds of each round's p-th percentile."""
        return statistics.median(percentile(r, p) for r in self.samples[channel])


def percentile(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def measure_latency(port: int, bare_port: int, count: int, rounds: int,
                    warmup: int = 50) -> LatencyResult:
    """`count` messages per channel and round; the channels take turns message by message,
    in an order that rotates, so none is always measured first."""
    producer, bare = BlockingConn(port), BlockingConn(bare_port)
    streams = {"comet": CometStream(port, "latcomet"), "ws": WebSocketStream(port, "latws"),
               "sse": SSEStream(port, "latsse")}
    queues = {"comet": "latcomet", "ws": "latws", "sse": "latsse"}
    channels = ["bare", *TRANSPORTS]
    samples: dict[str, list[list[float]]] = {c: [] for c in channels}
    problems: list[str] = []

    def one(channel: str, value: str) -> float:
        if channel == "bare":
            t0 = time.perf_counter()
            status, body = bare.post("/bare", f"value={value}")
            t1 = time.perf_counter()
            if status != 200:
                raise BenchError(f"POST /bare: {status} {body!r}")
            return (t1 - t0) * 1000.0
        path = f"/q/{queues[channel]}"
        t0 = time.perf_counter()
        producer.sock.sendall(post_request(path, f"value={value}"))
        messages = streams[channel].next_messages()
        t1 = time.perf_counter()
        status, body = producer.read_response()
        if status != 200:
            raise BenchError(f"POST {path}: {status} {body!r}")
        if len(messages) != 1 or messages[0].get("value") != value:
            problems.append(f"{channel} message {value}: expected one message with that value, "
                            f"got {messages!r}")
        return (t1 - t0) * 1000.0

    try:
        # Warm-up (not timed): the first messages pay for code paths not yet run.
        for n in range(warmup):
            for channel in channels:
                one(channel, f"w{n}")
        for rnd in range(rounds):
            for c in channels:
                samples[c].append([])
            for n in range(count):
                k = n % len(channels)
                for channel in channels[k:] + channels[:k]:
                    samples[channel][-1].append(one(channel, f"{rnd}-{n}"))
    finally:
        for conn in (producer, bare, *streams.values()):
            conn.close()
    return LatencyResult(samples, problems)


# --------------------------------------------------------------------------- b. fan-out

class FanConsumer(asyncio.Protocol):
    """One idle comet consumer. The hot path (data_received while a message fans out) only
    appends and timestamps; the content is checked afterwards with ChunkedLines."""

    def __init__(self, client: FanClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.headers_done = asyncio.get_running_loop().create_future()
        self.body = bytearray()
        self.got_at: float | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.client.request)

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
            self.client.delivered()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost()
        if not self.headers_done.done():
            self.headers_done.set_exception(BenchError(f"connection lost before the headers: "
                                                       f"{exc}"))


class FanClient:
    """The consumers of one server, in a process of their own (see fan_worker)."""

    def __init__(self, port: int, get_path: str, post_path: str, server_pid: int) -> None:
        self.port, self.post_path, self.server_pid = port, post_path, server_pid
        self.request = get_request(get_path)
        self.consumers: list[FanConsumer] = []
        self.expected = self.count = 0
        self.all_delivered: asyncio.Future | None = None
        self.lost_unexpectedly = 0
        self.closing = False
        self.reader = self.writer = None

    def delivered(self) -> None:
        self.count += 1
        if self.count == self.expected and not self.all_delivered.done():
            self.all_delivered.set_result(None)

    def lost(self) -> None:
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
            raise BenchError(f"GET {self.request!r}: {status} {headers}")

    async def open(self, n: int) -> dict:
        self.closing, self.lost_unexpectedly = False, 0
        t0 = time.perf_counter()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        await asyncio.gather(*(self._open_one(gate) for _ in range(n)))
        open_s = time.perf_counter() - t0
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return {"open_s": open_s}

    async def round(self, value: str) -> dict:
        n = len(self.consumers)
        for c in self.consumers:
            c.body.clear()
            c.got_at = None
        self.count, self.expected = 0, n
        self.all_delivered = asyncio.get_running_loop().create_future()
        server_cpu0, client_cpu0 = cpu_seconds(self.server_pid), time.process_time()
        t_post = time.perf_counter()
        self.writer.write(post_request(self.post_path, f"value={value}"))
        status, body = await read_async_response(self.reader)
        if status != 200:
            raise BenchError(f"POST {self.post_path}: {status} {body!r}")
        try:
            await asyncio.wait_for(self.all_delivered, IO_TIMEOUT)
        except asyncio.TimeoutError:
            raise BenchError(f"fan-out to {n}: only {self.count} of {n} consumers had "
                             f"the message after {IO_TIMEOUT:.0f} s") from None
        server_cpu = cpu_seconds(self.server_pid) - server_cpu0
        client_cpu = time.process_time() - client_cpu0
        first = min(c.got_at for c in self.consumers)
        last = max(c.got_at for c in self.consumers)
        await asyncio.sleep(0.2)  # catch duplicates or stray lines before checking
        bad = sum(1 for c in self.consumers if not _exactly(c.body, value))
        return {"ms": (last - t_post) * 1000.0, "first_ms": (first - t_post) * 1000.0,
                "server_cpu_ms": server_cpu * 1000.0, "client_cpu_ms": client_cpu * 1000.0,
                "bad": bad}

    async def close(self, fds_before: int, timeout: float = 60.0) -> dict:
        """Close every consumer; seconds until the server's descriptor count is back to
        what it was before they opened (None: not within `timeout`)."""
        self.closing = True
        if self.writer is not None:
            self.writer.close()
        t0 = time.perf_counter()
        for c in self.consumers:
            if c.transport is not None:
                c.transport.close()
        self.consumers = []
        release = None
        while time.perf_counter() - t0 < timeout:
            if open_fds(self.server_pid) <= fds_before:
                release = time.perf_counter() - t0
                break
            await asyncio.sleep(0.1)
        return {"release_s": release, "lost": self.lost_unexpectedly}


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


def fan_worker(conn, port: int, get_path: str, post_path: str, server_pid: int) -> None:
    """A client process: runs each command from the parent on its own event loop and
    answers with a dict (or {"error": ...}). Between commands the loop does not run: the
    consumers are idle then, and the kernel buffers anything that arrives."""
    loop = asyncio.new_event_loop()
    client = FanClient(port, get_path, post_path, server_pid)
    while True:
        command, arg = conn.recv()
        if command == "exit":
            break
        try:
            result = loop.run_until_complete(getattr(client, command)(arg))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails
            result = {"error": f"{type(exc).__name__}: {exc}"}
        conn.send(result)
    loop.close()


class FanProcess:
    """The parent's handle on a fan_worker process."""

    def __init__(self, name: str, port: int, get_path: str, post_path: str,
                 server_pid: int) -> None:
        self.name, self.server_pid = name, server_pid
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=fan_worker, name=f"fan-{name}", daemon=True,
                                args=(child, port, get_path, post_path, server_pid))
        self.proc.start()

    def call(self, command: str, arg, timeout: float = 120.0) -> dict:
        self.conn.send((command, arg))
        if not self.conn.poll(timeout):
            raise BenchError(f"fan-out client {self.name}: no answer to {command} in "
                             f"{timeout:.0f} s")
        result = self.conn.recv()
        if "error" in result:
            raise BenchError(f"fan-out client {self.name}, {command}: {result['error']}")
        return result

    def stop(self) -> None:
        try:
            self.conn.send(("exit", None))
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


@dataclasses.dataclass
class FanSide:
    name: str          # "restmq" or "bare"
    n: int
    open_s: float
    rss_before_kb: int
    rss_after_kb: int
    fds_before: int
    fds_after: int
    rounds: list[dict]
    release_s: float | None = None

    @property
    def kb_per_consumer(self) -> float:  # KiB, as /proc reports it
        return (self.rss_after_kb - self.rss_before_kb) / self.n

    def median(self, field: str) -> float:
        return statistics.median(r[field] for r in self.rounds)

    @property
    def max_ms(self) -> float:
        return max(r["ms"] for r in self.rounds)


@dataclasses.dataclass
class FanResult:
    n: int
    restmq: FanSide
    bare: FanSide
    problems: list[str]

    @property
    def ratio(self) -> float:
        """Median over the rounds of restmq's time / the bare server's time."""
        return statistics.median(a["ms"] / b["ms"]
                                 for a, b in zip(self.restmq.rounds, self.bare.rounds))


def measure_fanout(port: int, server_pid: int, bare_port: int, bare_pid: int, n: int,
                   repeats: int) -> FanResult:
    problems: list[str] = []
    sides = {"restmq": (port, "/c/fan", "/q/fan", server_pid),
             "bare": (bare_port, "/c/fan", "/fan/fan", bare_pid)}
    clients = {name: FanProcess(name, *spec) for name, spec in sides.items()}
    results: dict[str, FanSide] = {}
    try:
        for name, client in clients.items():
            pid = client.server_pid
            rss0, fds0 = vm_rss_kb(pid), open_fds(pid)
            opened = client.call("open", n)
            time.sleep(1.0)  # let the server settle (GC, buffers) before reading RSS
            results[name] = FanSide(name, n, opened["open_s"], rss0, vm_rss_kb(pid), fds0,
                                    open_fds(pid), [])
        for r in range(repeats):
            order = ["restmq", "bare"] if r % 2 == 0 else ["bare", "restmq"]
            for name in order:
                value = f"fan-{n}-{r}"
                res = clients[name].call("round", value)
                if res["bad"]:
                    problems.append(f"{name} round {r + 1}: {res['bad']} of {n} consumers did "
                                    f"not receive exactly the one line with value {value!r}")
                results[name].rounds.append(res)
        for name, client in clients.items():
            closed = client.call("close", results[name].fds_before)
            results[name].release_s = closed["release_s"]
            if closed["lost"]:
                problems.append(f"{name}: {closed['lost']} consumers were disconnected by the "
                                "server")
            if closed["release_s"] is None:
                problems.append(f"{name}: the server still held more descriptors than before, "
                                "60 s after the consumers closed")
    finally:
        for client in clients.values():
            client.stop()
    return FanResult(n, results["restmq"], results["bare"], problems)


# --------------------------------------------------------------------------- c. drain

@dataclasses.dataclass
class DrainResult:
    side: str  # "broadcast", "roundrobin" (RestMQ policies) or "bare"
    round: int
    count: int
    seconds: float
    problems: list[str]

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def read_drain(stream: CometStream, count: int, t0: float) -> tuple[list[str], float]:
    """Keys of the first `count` lines, the seconds since t0 when the last arrived, and any
    line that follows within 0.3 s (a duplicate)."""
    keys: list[str] = []
    while len(keys) < count:
        keys.extend(m["key"] for m in stream.next_messages())
    seconds = time.perf_counter() - t0
    time.sleep(0.3)
    stream.sock.settimeout(0.2)
    try:
        while True:
            keys.extend(m["key"] for m in stream.next_messages())
    except (TimeoutError, socket.timeout, BenchError):
        pass  # BenchError: the bare stream ends after its last line
    return keys, seconds


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
        redis_private.top_up(rc, queue, count, value="drain")
        # The clock starts before the GET: connecting and registering are part of draining.
        t0 = time.perf_counter()
        comet = CometStream(port, queue)
        try:
            keys, seconds = read_drain(comet, count, t0)
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
    return DrainResult(policy, rnd, count, seconds, problems)


def measure_bare_drain(bare_port: int, count: int, rnd: int) -> DrainResult:
    t0 = time.perf_counter()
    stream = CometStream(bare_port, f"?n={count}", path="/drain")
    try:
        keys, seconds = read_drain(stream, count, t0)
    finally:
        stream.close()
    problems = []
    if keys != [f"drain:{i}" for i in range(1, count + 1)]:
        problems.append(f"bare drain round {rnd}: {len(keys):,} lines, not the {count:,} sent")
    return DrainResult("bare", rnd, count, seconds, problems)


def drain_medians(drains: list[DrainResult]) -> dict[str, float]:
    sides = dict.fromkeys(d.side for d in drains)  # in run order
    return {s: statistics.median(d.rate for d in drains if d.side == s) for s in sides}


def drain_ratios(drains: list[DrainResult]) -> dict[str, float]:
    """Per policy: median over the rounds of its rate / the bare rate of the same round."""
    bare = {d.round: d.rate for d in drains if d.side == "bare"}
    out = {}
    for side in dict.fromkeys(d.side for d in drains if d.side != "bare"):
        out[side] = statistics.median(d.rate / bare[d.round] for d in drains
                                      if d.side == side and d.round in bare)
    return out
