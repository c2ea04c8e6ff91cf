"""What `/health` reports about Redis: whether it answers (PING, with a short deadline of its
own), its version, and whether an acknowledged message survives a Redis crash (its
persistence settings), with the warnings an operator should see. The slow-changing part
(`INFO server` and the `CONFIG GET`s) is read in one pipelined round trip and kept for
SETTINGS_TTL seconds, so probes every second cost Redis one PING each.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from restmq.errors import RedisFailure, RedisUnavailable

PING_DEADLINE = 1.0  # seconds: a readiness probe must not wait for the 5 s command timeout
SETTINGS_TTL = 10.0  # seconds the persistence settings and version are reused
CONFIG_NAMES = ("appendonly", "appendfsync", "save", "maxmemory-policy")

# Every value `persistence` may take; the metrics export one series per mode.
MODES = ("aof-always", "aof-everysec", "aof-no", "rdb", "none", "unknown")
# Modes in which Redis may lose acknowledged messages when it crashes (more than the last
# second's for aof-everysec): each is a warning.
UNSAFE = ("rdb", "none", "aof-no", "unknown")


@dataclass(frozen=True)
class RedisSettings:
    """What was read of Redis's settings; None where Redis would not tell."""

    version: str | None
    persistence: str
    maxmemory_policy: str | None

    @property
    def warnings(self) -> list[str]:
        found = [f"persistence:{self.persistence}"] if self.persistence in UNSAFE else []
        policy = self.maxmemory_policy
        if policy is not None and policy != "noeviction":
            # Any other policy lets Redis evict keys, messages included, when memory is full.
            found.append(f"maxmemory-policy:{policy}")
        return found


def persistence_mode(config: dict[str, str] | None) -> str:
    """The persistence mode from the CONFIG GET replies (None: CONFIG was refused)."""
    if not config or "appendonly" not in config:
        return "unknown"
    if config["appendonly"] == "yes":
        fsync = config.get("appendfsync")
        return f"aof-{fsync}" if fsync in ("always", "everysec", "no") else "unknown"
    return "rdb" if config.get("save", "").strip() else "none"


def _version(info: Any) -> str | None:
    if isinstance(info, bytes):
        info = info.decode("utf-8", "replace")
    found = re.search(r"^redis_version:([^\r\n]+)", info or "", re.M)
    return found.group(1) if found else None


def settings_from(replies: list) -> RedisSettings:
    """RedisSettings from the replies of `settings_commands()`, where a refused command (a
    RedisFailure: renamed away, or not allowed to RestMQ's Redis user) is only unknown."""
    info, *configs = replies
    version = None if isinstance(info, Exception) else _version(info)
    config: dict[str, str] | None = {}
    for reply in configs:
        if isinstance(reply, Exception) or not reply:
            config = None
            break
        config[reply[0]] = reply[1]
    policy = config.get("maxmemory-policy") if config else None
    return RedisSettings(version, persistence_mode(config), policy)


def settings_commands() -> list[tuple]:
    return [("INFO", "server"), *(("CONFIG", "GET", name) for name in CONFIG_NAMES)]


def read_settings(redis: Any) -> defer.Deferred:
    """Fires with the RedisSettings read in one round trip; fails with RedisUnavailable."""
    return redis.pipeline(settings_commands()).addCallback(settings_from)


class Health:
    """The `/health` report of one process, with its settings cache. `redis` is a
    RedisService; `clock` (an IReactorTime) times the cache and the PING deadline."""

    def __init__(self, redis: Any, clock: Any):
        self.redis, self.clock = redis, clock
        self._settings: RedisSettings | None = None
        self._read_at = 0.0

    @property
    def settings(self) -> RedisSettings | None:
        """The last settings read (None before the first), for the metrics."""
        return self._settings

    async def report(self, version: str) -> dict:
        """The report; raises RedisUnavailable when Redis does not answer PING in time."""
        ping_ms = await self.ping()
        settings = await self.current()
        return {"status": "ok", "protocol": 2, "version": version,
                "redis": {"ping_ms": ping_ms, "version": settings.version,
                          "persistence": settings.persistence,
                          "maxmemory_policy": settings.maxmemory_policy},
                "warnings": settings.warnings}

    async def ping(self) -> float:
        """Milliseconds PING took, or RedisUnavailable after PING_DEADLINE. The PING is not
        cancelled at the deadline (that would hand its reply to the next command of the
        connection): its late answer is ignored."""
        started = self.clock.seconds()
        await within(self.redis.execute("PING"), PING_DEADLINE, self.clock)
        return round((self.clock.seconds() - started) * 1000, 3)

    async def current(self) -> RedisSettings:
        """The settings, read again when older than SETTINGS_TTL; RedisUnavailable when
        Redis does not answer within PING_DEADLINE."""
        now = self.clock.seconds()
        if self._settings is None or now - self._read_at >= SETTINGS_TTL:
            settings = await within(read_settings(self.redis), PING_DEADLINE, self.clock)
            self._settings, self._read_at = settings, self.clock.seconds()
        return self._settings


def within(d: defer.Deferred, seconds: float, clock: Any) -> defer.Deferred:
    """A Deferred with d's result, or RedisUnavailable after `seconds`, leaving d alone."""
    out = defer.Deferred()

    def expire():
        if not out.called:
            out.errback(RedisUnavailable(f"no answer from Redis within {seconds} s"))

    timer = clock.callLater(seconds, expire)

    def done(result):
        if timer.active():
            timer.cancel()
        if out.called:  # late and unwanted: an error is swallowed here
            if isinstance(result, Failure):
                result.trap(RedisUnavailable, RedisFailure)
        elif isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)

    d.addBoth(done)
    return out
