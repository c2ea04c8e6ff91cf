"""A private, throw-away redis-server for the benchmark, and a minimal RESP client for it.

The client is a few lines of stdlib so the harness needs nothing beyond the venv; it is
only used between wrk runs (prefill, LLEN), never on the measured path.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class RedisError(RuntimeError):
    """Redis answered with an error reply, or could not be started."""


class RespClient:
    """Blocking RESP2 client: one command at a time, enough for EVAL/LLEN/PING."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 120.0,
                 db: int = 0) -> None:
        # A generous timeout: one prefill EVAL of a few hundred thousand messages takes a
        # while, and Redis answers nothing else until it is done.
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self._sock.makefile("rb")
        if db:
            self.command("SELECT", db)

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> RespClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, *args: str | int | bytes) -> object:
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        out = [b"*%d\r\n" % len(parts)]
        for p in parts:
            out.append(b"$%d\r\n%s\r\n" % (len(p), p))
        self._sock.sendall(b"".join(out))
        return self._read_reply()

    def _read_reply(self) -> object:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise RedisError("connection closed by redis")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self._file.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read_reply() for _ in range(n)]
        raise RedisError(f"unexpected reply {line!r}")


# Adds ARGV[2] messages with value ARGV[3] to queue ARGV[1] using RestMQ's key layout
# (docs/redis-layout.md#add, without the PUBLISH: nobody is subscribed during a
# prefill). QUEUESET/queuestat are idempotent, so they are set once instead of per message.
# Returns the new pending-list length.
_PREFILL_LUA = """
local q, n, v = ARGV[1], tonumber(ARGV[2]), ARGV[3]
redis.call('SADD', 'QUEUESET', q)
redis.call('SETNX', 'queuestat::' .. q, '1')
for _ = 1, n do
  local k = q .. ':' .. redis.call('INCR', q .. ':UUID')
  redis.call('SET', k, v)
  redis.call('LPUSH', q .. ':queue', k)
end
return redis.call('LLEN', q .. ':queue')
"""


def queue_length(client: RespClient, queue: str) -> int:
    return int(client.command("LLEN", f"{queue}:queue"))


def top_up(client: RespClient, queue: str, target: int, value: str = "hello",
           chunk: int = 100_000) -> int:
    """Add messages until `queue` has at least `target` pending; return the final length.

    Chunked so a single script never blocks Redis for long (and stays well under the
    client timeout) even for large targets.
    """
    length = queue_length(client, queue)
    while length < target:
        n = min(chunk, target - length)
        length = int(client.command("EVAL", _PREFILL_LUA, 0, queue, n, value))
    return length


def _alive(pid: int) -> bool:
    """True if pid runs and is not a zombie (a daemonized redis is not our child, and a
    container without an init may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _is_redis(pid: int) -> bool:
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class PrivateRedis:
    """redis-server on 127.0.0.1:<port>, no persistence, files in `directory`; stopped by PID."""

    def __init__(self, binary: str, port: int, directory: Path) -> None:
        self.binary = binary
        self.port = port
        self.directory = directory
        self.pidfile = directory / "redis.pid"
        self.logfile = directory / "redis.log"
        self.pid: int | None = None

    def start(self, timeout: float = 10.0) -> None:
        subprocess.run(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "yes",
             "--pidfile", str(self.pidfile), "--logfile", str(self.logfile),
             "--dir", str(self.directory)],
            check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Remember the PID as soon as it exists, so stop() works even if PING never does.
            if self.pid is None and self.pidfile.exists():
                text = self.pidfile.read_text().strip()
                self.pid = int(text) if text else None
            if self.pid is not None:
                try:
                    with RespClient(self.port, timeout=1.0) as c:
                        if c.command("PING") == "PONG":
                            return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RedisError(f"redis-server did not come up on port {self.port}; "
                         f"see {self.logfile}:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        pid, self.pid = self.pid, None
        if pid is None or not _alive(pid):
            return
        if not _is_redis(pid):  # never signal a recycled PID
            return
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)  # a stopped (SIGSTOP) redis acts on SIGTERM only then
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        """Signal the running redis-server (e.g. SIGSTOP / SIGCONT to pause it)."""
        if self.pid is None or not _alive(self.pid) or not _is_redis(self.pid):
            raise RedisError("redis-server is not running")
        os.kill(self.pid, sig)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        # "Redis server v=7.0.15 sha=... malloc=jemalloc-5.3.0 bits=64 build=..."
        for field in out.split():
            if field.startswith("v="):
                return field[2:]
        return out.strip() or "unknown"
