"""`restmq-engine`: administration and tests straight on Redis (docs/frontends.md#restmq-engine),
with the server's own Lua scripts, given their keys as the server gives them, and a small
blocking Redis client.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

from restmq.acl import judge_record
from restmq.core import DEAD_STEP, MORE, POLICY_NAMES, STATS_PAGE, policy_name
from restmq.names import is_safe_name, is_valid_name
from restmq.redis import keys
from restmq.redis.scripts import Script, load_script, script_command

ACTIONS = [  # (short, long, help) in the order they run
    ("-p", "--producer", "add --value to --queue (wakes live consumers)"),
    ("-c", "--consumer", "hard get (retained for --consumed-ttl)"),
    ("-s", "--stats", "every queue with its length, status and policy"),
    ("-g", "--non-consumer", "soft get: read without consuming, counting the read"),
    ("-q", "--get_policy", "print the policy"),
    ("-j", "--set_policy", "set --policy"),
    ("-k", "--get_delete", "take: get and delete"),
    ("-t", "--tail_multiget", "the 10 oldest pending messages, oldest first"),
    ("-u", "--count_objects", "count the keys matching <queue>*"),
    ("-i", "--list_last_items", "the 10 newest pending keys, newest first"),
    ("-a", "--authorize", f"judge --queue against {keys.authkey('<authkey>')}"),
    ("-r", "--create_auth", f"write {keys.authkey('<authkey>')} granting --queue and --privs"),
]


class RedisError(Exception):
    pass


class Redis:
    """One blocking connection speaking RESP2; error replies raise RedisError."""

    def __init__(self, host: str, port: int, unix_socket: str | None, password: str | None,
                 db: int, timeout: float = 10.0):
        try:
            if unix_socket:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.settimeout(timeout)
                self.sock.connect(unix_socket)
            else:
                self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise RedisError(f"cannot connect to Redis: {e}") from None
        self.reader = self.sock.makefile("rb")
        if password:
            self("AUTH", password)
        if db:
            self("SELECT", db)

    def __call__(self, *args: Any, raw: bool = False) -> Any:
        """The reply to one command; with `raw`, strings come back as bytes, undecoded."""
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        try:
            self.sock.sendall(b"".join(out))
            return self._reply(raw)
        except OSError as e:
            raise RedisError(f"Redis connection failed: {e}") from None

    def _reply(self, raw: bool = False) -> Any:
        line = self.reader.readline()
        if not line:
            raise RedisError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            raise RedisError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.reader.read(size + 2)[:-2]
            return data if raw else data.decode("utf-8", "replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply(raw) for _ in range(size)]
        raise RedisError(f"unexpected reply from Redis: {line!r}")

    def run(self, script: Script, keys: tuple[str, ...], *args: Any) -> Any:
        """Run a script as the server does: `keys` as KEYS (from restmq.redis.keys), `args` as
        ARGV, by EVALSHA, or EVAL when Redis answers NOSCRIPT."""
        try:
            return self(*script_command(script, keys, args))
        except RedisError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            return self(*script_command(script, keys, args, by_source=True))

    def run_steps(self, script: Script, keys: tuple[str, ...], *args: Any) -> Any:
        """Run a script again while it answers MORE (it skips dead entries a share at a time,
        so that Redis serves its other clients in between)."""
        reply = self.run(script, keys, *args)
        while reply == MORE:
            reply = self.run(script, keys, *args)
        return reply


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="restmq-engine",
                                description="Work on RestMQ queues directly in Redis.")
    p.add_argument("--redis-host", default="127.0.0.1")
    p.add_argument("--redis-port", type=int, default=6379)
    p.add_argument("--redis-db", type=int, default=0)
    p.add_argument("--redis-password")
    p.add_argument("--redis-unix-socket")
    p.add_argument("--queue", default="test")
    p.add_argument("--value", default='{"value": "a value"}')
    p.add_argument("--policy", default="roundrobin")
    p.add_argument("--authkey", default="aaa123")
    p.add_argument("--privs", default="create", help="comma-separated privileges")
    p.add_argument("--consumed-ttl", type=int, default=3600)
    for short, long, text in ACTIONS:
        p.add_argument(short, long, action="store_true", help=text)
    return p


class Engine:
    def __init__(self, redis: Redis, options: argparse.Namespace, out=sys.stdout):
        self.redis, self.o, self.out = redis, options, out
        self.q = options.queue

    def say(self, line: str) -> None:
        print(line, file=self.out)

    def policy(self) -> str:
        return policy_name(self.redis("GET", keys.policy(self.q)))

    def message(self, reply: list | None, with_count: bool = False) -> None:
        if not reply:
            return self.say("empty queue")
        self.say(f"key: {reply[0]}")
        self.say(f"value: {reply[1]}")
        if with_count:
            self.say(f"count: {reply[2]}")
        self.say(f"policy: {self.policy()}")

    def producer(self):
        # The add script's arguments: queue, channel, db, no deadline, no once window, no
        # idempotency key, then the one item (value, no ttl, delay, eta or priority).
        reply = self.redis.run(load_script("add"), keys.add_keys(self.q), self.q,
                               keys.channel(self.q), self.o.redis_db, "", 0, "", "",
                               self.o.value, "", "", "", "")
        if reply[0] != "ok":
            raise RedisError("message too large for the queue's max_message"
                             if reply[0] == "too_large" else f"add refused: {reply[0]}")
        self.say(f"key: {reply[2]}")

    def consumer(self):
        self.message(self.redis.run_steps(load_script("hard_get"), keys.consume_keys(self.q),
                                          self.o.consumed_ttl, DEAD_STEP, ""))

    def stats(self):
        script, cursor, found = load_script("stats"), "0", {}
        while True:  # a page of QUEUESET, then one script for its queues; a queue may come twice
            cursor, names = self.redis("SSCAN", keys.QUEUESET, cursor, "COUNT", STATS_PAGE,
                                       raw=True)  # the keys of a name that is not UTF-8 too
            cursor = cursor.decode()
            if names:
                reply = self.redis.run(script, keys.stats_keys(names))
                for k, name in enumerate(n.decode("utf-8", "replace") for n in names):
                    found[name] = [name, *reply[3 * k:3 * k + 3]]
            if cursor == "0":
                break
        rows = sorted(found.values())
        for name, length, status, policy in rows:
            flag = "-" if status == "" else ("1" if status == "1" else "0")
            self.say(f"{name} len={length} status={flag} policy={policy_name(policy)}")
        self.say(f"count: {len(rows)}")

    def non_consumer(self):
        self.message(self.redis.run_steps(load_script("soft_get"), keys.consume_keys(self.q),
                                          DEAD_STEP, ""), with_count=True)

    def get_policy(self):
        self.say(f"policy: {self.policy()}")

    def set_policy(self):
        reply = self.redis.run(load_script("set"), (keys.policy(self.q),),
                               POLICY_NAMES[self.o.policy], "")
        self.say(f"resp: {reply}")

    def get_delete(self):
        self.message(self.redis.run_steps(load_script("take"), keys.consume_keys(self.q),
                                          DEAD_STEP, ""))

    def tail_multiget(self):
        newest = list(reversed(self.redis("LRANGE", keys.pending(self.q), -10, -1) or []))
        values = self.redis("MGET", *newest) if newest else []
        for key, value in zip(newest, values):
            if value is not None:
                self.say(f"{key}: {value}")

    def count_objects(self):
        seen, cursor = set(), "0"
        while True:
            cursor, found = self.redis("SCAN", cursor, "MATCH", keys.match_all(self.q),
                                       "COUNT", 1000)
            seen.update(found)
            if cursor == "0":
                break
        self.say(f"objects: {len(seen)}")

    def list_last_items(self):
        for key in self.redis("LRANGE", keys.pending(self.q), 0, 9) or []:
            self.say(key)

    def authorize(self):
        verdict = judge_record(self.redis("GET", keys.authkey(self.o.authkey)), self.q)
        self.say("invalid record" if verdict == "invalid" else verdict)

    def create_auth(self):
        privs = [p for p in self.o.privs.split(",") if p]
        record = json.dumps({"queues": [self.q], "privs": privs})
        self.redis("SET", keys.authkey(self.o.authkey), record)
        self.say("OK")


def main(argv: list[str] | None = None) -> int:
    p = parser()
    options = p.parse_args(argv)  # a positional argument or a bad option: exit 2
    chosen = [long[2:].replace("-", "_") for _, long, _ in ACTIONS
              if getattr(options, long[2:].replace("-", "_"))]
    if not chosen:
        p.error("choose at least one action flag")
    if not is_safe_name(options.queue):
        p.error(f"invalid queue name: {options.queue!r}")
    if options.policy not in POLICY_NAMES:
        p.error(f"invalid policy: {options.policy!r} (broadcast or roundrobin)")
    try:
        redis = Redis(options.redis_host, options.redis_port, options.redis_unix_socket,
                      options.redis_password, options.redis_db)
        # As the server: a name that breaks the rule for new names is accepted only when the
        # queue exists (the original RestMQ allowed `my queue`).
        if not is_valid_name(options.queue) and not redis("SISMEMBER", keys.QUEUESET,
                                                          options.queue):
            p.error(f"invalid queue name: {options.queue!r}")
        engine = Engine(redis, options)
        for action in chosen:
            getattr(engine, action)()
    except RedisError as e:
        print(f"restmq-engine: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
