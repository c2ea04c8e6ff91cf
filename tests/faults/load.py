"""The machinery of the fault tests: Redis processes that can be killed and restarted on the
same data, producer and consumer threads with keep-alive HTTP clients that log every request,
raw comet streams that can be reset, and small probes (RSS, Redis keys, client counts)."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

from tests.conftest import RedisProcess, process_gone
from tests.faults.history import History
from tests.resp import RedisClient
from tests.util import wait_until

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
OK_STATUSES = {200, 204, 503}
UNAVAILABLE_REASONS = ({"error": "redis unavailable"}, {"error": "redis error"})


# -- processes ---------------------------------------------------------------------------------

def wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not exit")
        time.sleep(0.02)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class RSSSampler(threading.Thread):
    """Samples a process's VmRSS every `interval` seconds; `peak` in MB."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self.samples: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                value = rss_mb(self.pid)
            except (OSError, AssertionError):
                return
            self.samples.append(value)
            self.peak = max(self.peak, value)
            self._halt.wait(self.interval)

    def stop(self) -> float:
        self._halt.set()
        self.join(5)
        return self.peak


class FaultRedis(RedisProcess):
    """A private redis-server that keeps its port and directory across `kill9` / `start`, so a
    restart with `--appendonly yes` loads the same data. Stopped by PID."""

    DURABLE = ("--appendonly", "yes", "--appendfsync", "always")

    def __init__(self, port: int | None = None, durable: bool = False,
                 extra: tuple[str, ...] = ()):
        super().__init__(port, extra=(self.DURABLE if durable else ()) + tuple(extra))

    def kill9(self) -> None:
        pid, self.pid = self.pid, None
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.pid is not None:
            pid, self.pid = self.pid, None
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            else:
                try:
                    wait_gone(pid)
                except AssertionError:
                    os.kill(pid, signal.SIGKILL)
                    wait_gone(pid)
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_client(port: int, attempts: float = 10.0) -> RedisClient:
    deadline = time.monotonic() + attempts
    while True:
        try:
            return RedisClient(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def pending_values(port: int, queue: str) -> list[str]:
    """The values still pending in `queue`, oldest first (dead entries skipped)."""
    client = redis_client(port)
    try:
        keys = client("LRANGE", f"{queue}:queue", 0, -1) or []
        keys.reverse()
        values = []
        for i in range(0, len(keys), 500):
            values += [v for v in client("MGET", *keys[i:i + 500]) if v is not None]
        return values
    finally:
        client.close()


def scan_keys(port: int, match: str = "*") -> list[str]:
    client = redis_client(port)
    try:
        cursor, keys = "0", set()
        while True:
            cursor, batch = client("SCAN", cursor, "MATCH", match, "COUNT", 1000)
            keys.update(batch)
            if str(cursor) == "0":
                return sorted(keys)
    finally:
        client.close()


def client_list(port: int) -> list[dict[str, str]]:
    """CLIENT LIST parsed, the caller's own connection included."""
    client = redis_client(port)
    try:
        text = client("CLIENT", "LIST")
    finally:
        client.close()
    rows = []
    for line in text.strip().splitlines():
        rows.append(dict(item.split("=", 1) for item in line.split() if "=" in item))
    return rows


# -- HTTP load ---------------------------------------------------------------------------------

@dataclass
class Entry:
    role: str  # "produce", "consume", "take", "peek", "probe"
    started: float
    ended: float
    status: int | None  # None: connection error or client timeout
    body: bytes
    error: str = ""
    content_type: str | None = None

    @property
    def duration(self) -> float:
        return self.ended - self.started

    @property
    def unavailable_json(self) -> bool:
        if self.status != 503 or self.content_type != "application/json":
            return False
        try:
            return json.loads(self.body) in UNAVAILABLE_REASONS
        except ValueError:
            return False


class RequestLog:
    """Every request of a run, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[Entry] = []

    def add(self, entry: Entry) -> None:
        with self._lock:
            self.entries.append(entry)

    def snapshot(self) -> list[Entry]:
        with self._lock:
            return list(self.entries)

    def statuses(self) -> Counter:
        return Counter(e.status for e in self.snapshot())

    def bad(self) -> list[Entry]:
        """Replies no fault may produce: anything but 200/204/503, or a 503 that is not the
        JSON `redis unavailable` / `redis error` (client-side errors are not counted here)."""
        return [e for e in self.snapshot() if e.status is not None and (
            e.status not in OK_STATUSES or (e.status == 503 and not e.unavailable_json))]

    def errors(self) -> list[Entry]:
        return [e for e in self.snapshot() if e.status is None]

    def max_duration(self, since: float = 0.0, until: float = float("inf")) -> float:
        """The longest request that was open at some time within [since, until]."""
        spans = [e.duration for e in self.snapshot() if e.ended >= since and e.started <= until]
        return max(spans, default=0.0)

    def first_success(self, since: float, roles: tuple[str, ...] = ("produce",)) -> float | None:
        """When the first request of `roles` started at or after `since` succeeded (its end)."""
        ends = [e.ended for e in self.snapshot()
                if e.started >= since and e.role in roles and e.status in (200, 204)]
        return min(ends, default=None)

    def last_failure(self, since: float) -> float | None:
        """The end of the last failed request that started at or after `since`."""
        ends = [e.ended for e in self.snapshot()
                if e.started >= since and e.status not in (200, 204)]
        return max(ends, default=None)


class Target:
    """Where the load goes; tests switch `url` when they replace the server."""

    def __init__(self, url: str):
        self.url = url


class KeepAliveClient:
    """One persistent HTTP/1.1 connection to the target (reopened after an error or when the
    target changes), logging each request."""

    def __init__(self, target: Target, log: RequestLog, timeout: float = 20.0):
        self.target, self.log, self.timeout = target, log, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.url: str | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, role: str, method: str, path: str, form: dict | None = None) -> Entry:
        if self.conn is None or self.url != self.target.url:
            self.close()
            self.url = self.target.url
            host, port = self.url.split("//", 1)[1].rsplit(":", 1)
            self.conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        body = urlencode(form).encode() if form is not None else None
        started = time.monotonic()
        try:
            self.conn.request(method, path, body=body, headers=FORM if form is not None else {})
            response = self.conn.getresponse()
            data = response.read()
            entry = Entry(role, started, time.monotonic(), response.status, data,
                          content_type=response.getheader("Content-Type"))
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            entry = Entry(role, started, time.monotonic(), None, b"", error=repr(e))
        self.log.add(entry)
        return entry


class Worker(threading.Thread):
    def __init__(self, name: str, target: Target, log: RequestLog, stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.client = KeepAliveClient(target, log)
        self.stop_event = stop
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.step()
        except BaseException as e:  # surfaced by Load.stop
            self.failure = e
        finally:
            self.client.close()

    def step(self) -> None:
        raise NotImplementedError

    def pause_after_failure(self) -> None:
        self.stop_event.wait(0.05)


class Producer(Worker):
    """Adds unique values `<prefix>-<n>` (padded with `size` bytes) by `POST /q/<queue>`."""

    def __init__(self, name, target, log, stop, history: History, queue: str,
                 size: int = 0, interval: float = 0.0, limit: int | None = None):
        super().__init__(name, target, log, stop)
        self.history, self.queue = history, queue
        self.size, self.interval, self.limit = size, interval, limit
        self.sent = 0

    def step(self) -> None:
        if self.limit is not None and self.sent >= self.limit:
            self.stop_event.wait(0.05)
            return
        ident = f"{self.name}-{self.sent:07d}"
        self.sent += 1
        value = ident + ("|" + "x" * self.size if self.size else "")
        self.history.attempt(ident)
        entry = self.client.request("produce", "POST", f"/q/{self.queue}", {"value": value})
        if entry.status == 200 and entry.body.startswith(self.queue.encode() + b":"):
            self.history.acked(ident, entry.body.decode().strip())
        elif entry.status == 503:
            self.history.refused(ident)
            self.pause_after_failure()
        else:
            self.history.unknown(ident)
            self.pause_after_failure()
        if self.interval:
            self.stop_event.wait(self.interval)


def ident_of(value: str) -> str:
    return value.split("|", 1)[0]


class Consumer(Worker):
    """Pulls by hard get (`GET /q/<queue>`), or a mix of hard get, JSON `take` and JSON `get`
    (a peek: it consumes nothing but leaves a `:refcount` key)."""

    def __init__(self, name, target, log, stop, history: History, queue: str,
                 mix: bool = False, idle: float = 0.01):
        super().__init__(name, target, log, stop)
        self.history, self.queue, self.mix, self.idle = history, queue, mix, idle
        self.turn = 0

    def step(self) -> None:
        self.turn += 1
        kind = ("consume", "take", "consume", "peek")[self.turn % 4] if self.mix else "consume"
        if kind == "consume":
            entry = self.client.request(kind, "GET", f"/q/{self.queue}")
            if entry.status == 200:
                self.history.consumed(ident_of(json.loads(entry.body)["value"]), "rest")
                return
        else:
            cmd = "take" if kind == "take" else "get"
            body = json.dumps({"cmd": cmd, "queue": self.queue})
            entry = self.client.request(kind, "POST", "/queue", {"body": body})
            if entry.status == 200:
                reply = json.loads(entry.body)
                if "value" in reply:
                    if kind == "take":
                        self.history.consumed(ident_of(reply["value"]), "take")
                    return
        if entry.status in (200, 204):
            self.stop_event.wait(self.idle)
        else:
            self.pause_after_failure()


class Load:
    """`producers` + `consumers` threads on one queue; a context manager that always stops
    them. `stop()` raises if a thread failed or hangs."""

    def __init__(self, target: Target, queue: str, history: History | None = None,
                 producers: int = 4, consumers: int = 4, mix: bool = False,
                 size: int = 0, interval: float = 0.0, limit: int | None = None):
        self.target, self.queue = target, queue
        self.history = history or History()
        self.log = RequestLog()
        self.stop_event = threading.Event()
        self.producers = [Producer(f"p{i}", target, self.log, self.stop_event, self.history,
                                   queue, size=size, interval=interval, limit=limit)
                          for i in range(producers)]
        self.consumer_stop = threading.Event()
        self.consumers = [Consumer(f"c{i}", target, self.log, self.consumer_stop,
                                   self.history, queue, mix=mix) for i in range(consumers)]

    def start(self) -> "Load":
        for worker in self.producers + self.consumers:
            worker.start()
        return self

    def wait_successes(self, count: int, since: float = 0.0, timeout: float = 60.0) -> None:
        """Wait until at least `count` adds and `count` gets (or takes) that started at or
        after `since` succeeded: the load has run for a while, at this machine's pace,
        rather than for a fixed time."""
        roles = [("produce",)] + ([("consume", "take", "peek")] if self.consumers else [])

        def done() -> bool:
            entries = [e for e in self.log.snapshot() if e.started >= since
                       and e.status in (200, 204)]
            return all(sum(e.role in role for e in entries) >= count for role in roles)

        wait_until(done, timeout, f"{count} successful adds and gets", interval=0.05)

    def stop_producers(self) -> None:
        self.stop_event.set()
        self._join(self.producers)

    def stop(self) -> None:
        self.stop_event.set()
        self.consumer_stop.set()
        self._join(self.producers + self.consumers)

    @staticmethod
    def _join(workers) -> None:
        for worker in workers:
            worker.join(30)
        hung = [w.name for w in workers if w.is_alive()]
        assert not hung, f"load threads did not stop: {hung}"
        failed = [(w.name, w.failure) for w in workers if w.failure]
        assert not failed, f"load threads failed: {failed}"

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.consumer_stop.set()
        for worker in self.producers + self.consumers:
            worker.join(30)


def probe(url: str, path: str = "/stats/", timeout: float = 20.0) -> int | None:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.05,
             message: str = "condition") -> float:
    """The shared wait_until, as the fault tier calls it: returns the seconds it took."""
    started = time.monotonic()
    wait_until(condition, timeout, message, interval=interval)
    return time.monotonic() - started


def settle(load: "Load", since: float, timeout: float = 15.0) -> float:
    """Wait until both an add and a get started after `since` succeeded; the seconds from
    `since` to the later of the two."""
    def back():
        return (load.log.first_success(since, ("produce",)) is not None
                and load.log.first_success(since, ("consume",)) is not None)
    wait_for(back, timeout, message="service back")
    return max(load.log.first_success(since, ("produce",)),
               load.log.first_success(since, ("consume",))) - since


def post(url: str, path: str, form: dict) -> int | None:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.request("POST", path, body=urlencode(form), headers=FORM)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# -- live consumers ----------------------------------------------------------------------------

class Stream(threading.Thread):
    """A raw comet consumer (`GET /c/<queue>`) read by its own thread: every complete line is
    decoded and passed to `on_message(obj)`. `reset()` makes the reading thread itself close
    the socket with SO_LINGER 0 (a TCP RST) between two reads, so that no line it has read is
    left unprocessed. `stalled=True`: connect with a tiny receive buffer and never read past
    the headers until `drain()`."""

    def __init__(self, url: str, queue: str, on_message: Callable[[dict], None] = lambda m: None,
                 http10: bool = False, stalled: bool = False, rcvbuf: int = 4096):
        super().__init__(daemon=True)
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.sock = socket.socket()
        if stalled:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        version = "1.0" if http10 else "1.1"
        self.sock.sendall(f"GET /c/{queue} HTTP/{version}\r\nHost: t\r\n\r\n".encode())
        self.on_message = on_message
        self.stalled = stalled
        self.buf = bytearray()
        self.lines = bytearray()
        self.status, self.chunked = self._head()
        self.count = 0
        self.bytes = 0
        self.ended = False  # the server closed (or reset) the stream
        self.end_error = ""
        self._reset = threading.Event()
        self._close = threading.Event()
        self.failure: BaseException | None = None

    def _head(self) -> tuple[int, bool]:
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the headers")
            self.buf += data
        end = self.buf.index(b"\r\n\r\n")
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        chunked = any(line.lower().startswith("transfer-encoding:") and "chunked" in line.lower()
                      for line in head[1:])
        return int(head[0].split()[1]), chunked

    def _split(self, buf: bytearray, lines: bytearray, data: bytes) -> tuple[list[bytes], bool]:
        """Decode `data` on top of the partial chunk `buf` and partial text `lines` (both
        updated in place): the complete lines, and whether the last chunk came."""
        ended = False
        if not self.chunked:
            lines += data
        else:
            buf += data
            while True:
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                size = int(buf[:end], 16)
                if len(buf) < end + 2 + size + 2:
                    break
                if size == 0:
                    ended = True
                    del buf[:]
                    break
                lines += buf[end + 2:end + 2 + size]
                del buf[:end + 2 + size + 2]
        out, start = [], 0
        while True:
            end = lines.find(b"\r\n", start)
            if end < 0:
                break
            out.append(bytes(lines[start:end]))
            start = end + 2
        del lines[:start]
        return out, ended

    def _feed(self, data: bytes) -> None:
        self.bytes += len(data)
        complete, ended = self._split(self.buf, self.lines, data)
        self.ended = self.ended or ended
        for line in complete:
            self.count += 1
            self.on_message(json.loads(line))

    def _unread(self) -> list[dict]:
        """The complete messages that reached this socket but were not read (peeked, not
        taken): a reset now loses them."""
        try:
            data = self.sock.recv(64 * 1024 * 1024, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            data = b""
        complete, _ = self._split(bytearray(self.buf), bytearray(self.lines), data)
        return [json.loads(line) for line in complete]

    def run(self) -> None:
        try:
            self.sock.settimeout(0.05)
            if self.buf and not self.stalled:
                pending, self.buf = bytes(self.buf), bytearray()
                self._feed(pending)
            while not self.ended:
                if self._reset.is_set():
                    time.sleep(self.hold)  # not reading: messages pile up in flight
                    self.unread = self._unread()
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
                    self.sock.close()
                    return
                if self._close.is_set():
                    self.sock.close()
                    return
                try:
                    data = self.sock.recv(262144)
                except socket.timeout:
                    continue
                except OSError as e:
                    self.ended, self.end_error = True, repr(e)
                    break
                if not data:
                    self.ended = True
                    break
                self._feed(data)
        except BaseException as e:
            self.failure = e

    hold = 0.0
    unread: list[dict] = []  # what reached the socket unread when it was reset

    def reset(self, hold: float = 0.0) -> None:
        """RST the stream; with `hold`, stop reading `hold` seconds first, so that whatever
        the server writes meanwhile is in flight when the connection is reset."""
        self.hold = hold
        self._reset.set()
        self.join(5)
        assert not self.is_alive()

    def close(self) -> None:
        if self.is_alive():
            self._close.set()
            self.join(5)
        else:
            try:
                self.sock.close()
            except OSError:
                pass

    def drain(self, timeout: float = 10.0) -> None:
        """For a stalled stream: read everything until the server's close or reset."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.5)
        pending, self.buf = bytes(self.buf), bytearray()
        self._feed(pending)
        while not self.ended and time.monotonic() < deadline:
            try:
                data = self.sock.recv(262144)
            except socket.timeout:
                continue
            except OSError as e:
                self.ended, self.end_error = True, repr(e)
                break
            if not data:
                self.ended = True
                break
            self._feed(data)
        self.sock.close()


# -- verdicts ----------------------------------------------------------------------------------

def figures(name: str, **values) -> str:
    """One line of measured figures, printed so that `pytest -s` shows it."""
    text = f"FIGURES {name}: " + " ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    print(text, flush=True)
    return text


def assert_replies_clean(log: RequestLog) -> None:
    """No 500, no other unexpected status, every 503 the JSON `redis unavailable/error`."""
    bad = log.bad()
    assert not bad, [(e.role, e.status, e.body[:200]) for e in bad[:10]]


def explain_lost(history: History, lost: list[str], port: int, retention: int = 3600,
                 reference: float | None = None, limit: int = 20) -> list[str]:
    """What Redis still knows of each lost value's key. A key that still exists with a
    retention ttl but is no longer pending was popped by a hard get whose reply never reached
    its consumer; from its remaining PTTL we tell when it was popped (relative to
    `reference`, a time.monotonic() value, e.g. the moment Redis was resumed)."""
    client = redis_client(port)
    try:
        out = []
        now = time.monotonic()
        for value in lost[:limit]:
            key = history.keys.get(value)
            if key is None:
                out.append(f"{value}: no key")
                continue
            pttl = client("PTTL", key)
            stored = client("GET", key)
            if stored is None:
                out.append(f"{value} -> {key}: gone from Redis")
            elif pttl < 0:
                out.append(f"{value} -> {key}: stored without ttl, yet not pending")
            else:
                popped = now - (retention * 1000 - pttl) / 1000
                when = (f", popped {popped - reference:+.2f} s from the reference"
                        if reference is not None else "")
                out.append(f"{value} -> {key}: retired (popped by a get, pttl {pttl} ms{when})")
        return out
    finally:
        client.close()
