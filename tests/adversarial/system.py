"""The processes of the adversarial tier: one redis-server of its own, fresh `twistd restmq`
servers for every example, the faults the test injects into them and the probes that tell it
what the processes did (Redis state, subscriptions per server, sockets a server still holds)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Callable

import psutil

from tests.adversarial.leases import dead_letter_queue
from tests.conftest import RedisProcess, ServerProcess
from tests.resp import RedisClient
from tests.util import peer_has_read, wait_until

RETENTION = 3600  # consumed values stay readable, so the verdict can tell retired from deleted


def within(condition: Callable[[], object], timeout: float, interval: float = 0.01):
    """The shared wait_until, answering None when `timeout` passes instead of failing: the
    adversarial test records that in its model and goes on."""
    try:
        return wait_until(condition, timeout, interval=interval)
    except AssertionError:
        return None


class System:
    def __init__(self, redis: RedisProcess):
        self.redis_proc = redis
        self.servers: list[ServerProcess] = []
        self._admin: RedisClient | None = None

    # -- Redis access (a connection of our own, reopened after CLIENT KILL or a timeout) -------

    def redis(self, *args, timeout: float = 10.0):
        for attempt in range(3):
            try:
                if self._admin is None:
                    self._admin = RedisClient(self.redis_proc.port, timeout=timeout)
                return self._admin(*args)
            except (OSError, ValueError, IndexError) as e:
                self._drop_admin()
                if attempt == 2:
                    raise RuntimeError(f"Redis {args[0]} failed: {e!r}")
                time.sleep(0.05)

    def _drop_admin(self) -> None:
        if self._admin is not None:
            try:
                self._admin.close()
            except OSError:
                pass
            self._admin = None

    def reset(self) -> None:
        """An empty, running, unpaused Redis."""
        os.kill(self.redis_proc.pid, signal.SIGCONT)
        self.redis("CLIENT", "UNPAUSE")
        self.redis("FLUSHALL")

    # -- servers ------------------------------------------------------------------------------

    def start_servers(self, count: int) -> list[ServerProcess]:
        self.servers = [ServerProcess(self.redis_proc.port, "--consumed-ttl", str(RETENTION))
                        for _ in range(count)]
        for server in self.servers:
            server.start()
        return self.servers

    def stop_servers(self) -> list[str]:
        """Stops them; returns the log of each server that logged a traceback."""
        bad = []
        for server in self.servers:
            server.stop()
            if "Traceback" in server.final_log or "Unhandled" in server.final_log:
                bad.append(server.final_log)
        self.servers = []
        return bad

    def pubsub_settled(self, server: ServerProcess) -> bool:
        """Whether the server's pub/sub connection is up after its last loss, by its log."""
        log = server.log()
        return log.count("pub/sub connection ready") == \
            log.count("pub/sub connection lost") + 1

    def log_lines(self, server: ServerProcess, *needles: str) -> list[str]:
        return [line for line in server.log().splitlines() if any(n in line for n in needles)]

    # -- probes -----------------------------------------------------------------------------------

    def _connections(self, server: ServerProcess):
        try:
            return psutil.Process(server.proc.pid).net_connections("tcp")
        except psutil.Error:
            return []

    def server_socket(self, server: ServerProcess, client_port: int) -> tuple[int, str] | None:
        """The server's end of our connection from `client_port`: (fd, socket inode)."""
        for conn in self._connections(server):
            if conn.raddr and conn.raddr.port == client_port and conn.laddr.port == server.port \
                    and conn.fd >= 0:
                try:
                    return conn.fd, os.readlink(f"/proc/{server.proc.pid}/fd/{conn.fd}")
                except OSError:
                    return None
        return None

    @staticmethod
    def tcp_state(port: int) -> str:
        """What `ss` says of the TCP sockets with `port` at one end (state, queues, timers)."""
        try:
            out = subprocess.run(["ss", "-tnoiaH", f"( sport = :{port} or dport = :{port} )"],
                                 capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError) as e:
            return f"ss failed: {e!r}"
        return " | ".join(" ".join(line.split()) for line in out.splitlines()) or "none"

    @staticmethod
    def request_read(sock) -> bool:
        """Whether the server has read all we sent on `sock` (False once it is gone)."""
        try:
            return peer_has_read(sock)
        except (AssertionError, OSError):
            return False

    def socket_closed(self, server: ServerProcess, sock: tuple[int, str]) -> bool:
        """Whether the server closed that socket (twisted closes the descriptor in the same
        call that tells the protocol the connection is lost)."""
        fd, inode = sock
        try:
            return os.readlink(f"/proc/{server.proc.pid}/fd/{fd}") != inode
        except OSError:
            return True

    def _clients_of(self, server: ServerProcess) -> list[dict[str, str]] | None:
        """CLIENT LIST rows of the server's connections to Redis."""
        ports = {c.laddr.port for c in self._connections(server)
                 if c.raddr and c.raddr.port == self.redis_proc.port}
        try:
            text = self.redis("CLIENT", "LIST")
        except RuntimeError:
            return None
        rows = []
        for line in text.strip().splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if int(fields.get("addr", ":0").rsplit(":", 1)[1]) in ports:
                rows.append(fields)
        return rows

    def subscriptions(self, server: ServerProcess) -> int | None:
        """How many channels the server's connections to Redis are subscribed to."""
        rows = self._clients_of(server)
        return None if rows is None else sum(int(row.get("sub", "0")) for row in rows)

    def held_commands(self, server: ServerProcess) -> int:
        """How many of the server's connections have a command that Redis holds (during a
        CLIENT PAUSE such a client is flagged `b`, blocked)."""
        return sum(1 for row in self._clients_of(server) or () if "b" in row.get("flags", ""))

    def pending(self, queues) -> dict[str, list[str]]:
        return {q: self.redis("LRANGE", f"{q}:queue", 0, -1) or [] for q in queues}

    def held(self, queues) -> dict[str, str]:
        """Key -> `inflight` (leased) or `delayed` (released with a delay)."""
        out = {}
        for q in queues:
            for where in ("inflight", "delayed"):
                out.update(dict.fromkeys(self.redis("ZRANGE", f"{q}:{where}", 0, -1) or [],
                                         where))
        return out

    def dead_letters(self, queues) -> list[tuple[str, str, dict | None]]:
        """(key, value, origin) of every dead letter of the queues: what their dead-letter
        queues hold, with the record of where each came from."""
        out = []
        for q in queues:
            dead = dead_letter_queue(q)
            flat = self.redis("HGETALL", f"{dead}:origin") or []
            origins = dict(zip(flat[::2], flat[1::2]))
            for key in self.redis("LRANGE", f"{dead}:queue", 0, -1) or []:
                try:
                    origin = json.loads(origins.get(key) or "null")
                except ValueError:
                    origin = None
                out.append((key, self.redis("GET", key), origin))
        return out

    def current(self, queue: str, key: str, receipt: str) -> bool:
        """Whether the receipt names the message's current lease: its delivery field holds
        the receipt's count and token until the lease is over (acked, handed back, purged)."""
        count_and_token = receipt.split(".", 1)[1]
        return self.redis("HGET", f"{queue}:deliveries", key) == count_and_token

    def counters(self, queues) -> dict[str, int]:
        return {q: int(self.redis("GET", f"{q}:UUID") or 0) for q in queues}

    def stored(self, keys) -> dict[str, tuple[bool, int]]:
        """(exists, PTTL) for each key."""
        out = {}
        for key in keys:
            pttl = self.redis("PTTL", key)
            out[key] = (pttl != -2, pttl)
        return out

    # -- faults -----------------------------------------------------------------------------------

    def kill_clients(self, kind: str) -> int:
        """CLIENT KILL TYPE normal|pubsub (our own connection is skipped)."""
        return self.redis("CLIENT", "KILL", "TYPE", kind)

    def client_pause(self, ms: int, mode: str = "ALL") -> tuple[float, float]:
        """CLIENT PAUSE for `ms` (`WRITE`: scripts wait, PING and SUBSCRIBE do not); returns
        when the command was sent and when Redis answered it."""
        sent = time.monotonic()
        self.redis("CLIENT", "PAUSE", ms, mode)
        return sent, time.monotonic()

    def stop_redis(self) -> None:
        os.kill(self.redis_proc.pid, signal.SIGSTOP)

    def continue_redis(self) -> None:
        os.kill(self.redis_proc.pid, signal.SIGCONT)

    def redis_answers(self, timeout: float = 30.0) -> bool:
        """Waits until Redis answers a PING (after a pause ends)."""
        def ping():
            try:
                return self.redis("PING", timeout=1.0) == "PONG"
            except RuntimeError:
                return False
        return bool(within(ping, timeout, 0.05))
