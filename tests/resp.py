"""A tiny blocking Redis client for tests: enough RESP to set up and inspect the database
independently of the server's own txredisapi code."""
from __future__ import annotations

import socket


class RedisClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __call__(self, *args):
        """Send one command; returns str for text replies (bytes when not UTF-8), int, list or
        None; raises RuntimeError for an error reply."""
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self):
        line = self.reader.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.reader.read(size + 2)[:-2]
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return data
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise RuntimeError(f"bad reply {line!r}")


def snapshot(redis: RedisClient) -> dict:
    """Every key with its type, content and whether it has an expiry: compare two of them to
    show that a request changed nothing."""
    state = {}
    for key in redis("KEYS", "*"):
        kind = redis("TYPE", key)
        if kind == "string":
            value = redis("GET", key)
        elif kind == "list":
            value = redis("LRANGE", key, 0, -1)
        elif kind == "set":
            value = sorted(redis("SMEMBERS", key))
        elif kind == "hash":
            flat = redis("HGETALL", key)
            value = sorted(zip(flat[::2], flat[1::2]))
        elif kind == "zset":
            value = redis("ZRANGE", key, 0, -1, "WITHSCORES")
        else:
            value = kind
        state[key] = (kind, value, redis("TTL", key) >= 0)
    return state


def seed_queue(redis: RedisClient, queue: str, value: str = "hello") -> None:
    """A started queue with one pending message `<queue>:1`, written in RestMQ's layout."""
    redis("SET", f"{queue}:1", value)
    redis("SET", f"{queue}:UUID", "1")
    redis("LPUSH", f"{queue}:queue", f"{queue}:1")
    redis("SADD", "QUEUESET", queue)
    redis("SET", f"queuestat::{queue}", "1")
