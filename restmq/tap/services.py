"""The services every plugin wires together: the Redis pool from the options, a parent that
stops its children one after the other, a service that runs a function at shutdown, and the
check that Redis is recent enough."""
from __future__ import annotations

import atexit
import os
import re
import sys
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

REDIS_MINIMUM = (6, 2)  # the scripts use ZADD LT and ZRANGE ... BYSCORE LIMIT


def redis_service(options: usage.Options, reactor: Any):
    from restmq.redis import RedisService
    return RedisService(host=options["redis-host"], port=options["redis-port"],
                        unix_socket=options["redis-unix-socket"],
                        password=options["redis-password"], db=options["redis-db"],
                        poolsize=options["redis-pool"], timeout=options["redis-timeout"],
                        reactor=reactor)


class StopInOrder(service.MultiService):
    """Stops its services one after the other, the last added first: live delivery must be
    done with what it popped before the Redis connections close under it."""

    @defer.inlineCallbacks
    def stopService(self):
        from twisted.logger import Logger
        service.Service.stopService(self)
        for child in reversed(list(self)):
            try:
                yield defer.maybeDeferred(child.stopService)
            except Exception:  # the others must still stop
                Logger().failure("stopping {service} failed", service=child)


class OnStop(service.Service):
    """Calls `function` at shutdown (flushes the buffered access log)."""

    def __init__(self, function):
        self.function = function

    def stopService(self):
        super().stopService()
        self.function()


def redis_version(info: str) -> tuple[int, ...] | None:
    """The `redis_version` of an `INFO server` reply as numbers, None when absent."""
    found = re.search(r"^redis_version:(\d+)\.(\d+)(?:\.(\d+))?", info, re.M)
    return None if found is None else tuple(int(n) for n in found.groups(default="0"))


def exit_nonzero(reactor: Any, status: int = 1) -> None:
    """Stop the process with exit status `status`: the reactor stops (services stop, twistd
    removes its pidfile), then, as the interpreter exits, the status is set (twistd itself
    always exits with 0 after a stop)."""
    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    atexit.register(leave)
    reactor.stop()


class RedisVersionCheck(service.Service):
    """Reads `INFO server` once Redis answers (trying every `retry` seconds until then) and,
    against a Redis older than REDIS_MINIMUM, logs an error and calls `too_old()` (the
    plugins: exit_nonzero)."""

    log = Logger()

    def __init__(self, redis: Any, clock: Any, too_old: Callable[[], None], retry: float = 1.0):
        self.redis, self.clock, self.too_old, self.retry = redis, clock, too_old, retry
        self._call = None

    def startService(self) -> None:
        super().startService()
        self._check()

    def stopService(self):
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()

    def _check(self) -> None:
        from restmq.errors import RedisFailure, RedisUnavailable
        from restmq.redis import text
        self._call = None

        def read(info):
            version = redis_version(text(info) or "")
            if version is not None and version < REDIS_MINIMUM and self.running:
                self.log.error("Redis {found} is too old: RestMQ needs Redis {needed} or newer; "
                               "stopping", found=".".join(map(str, version)),
                               needed=".".join(map(str, REDIS_MINIMUM)))
                self.too_old()

        def again(failure):
            if failure.check(RedisFailure):  # INFO refused (an ACL): nothing more to learn
                self.log.warn("could not read the Redis version ({error}); RestMQ needs "
                              "Redis {needed} or newer", error=failure.getErrorMessage(),
                              needed=".".join(map(str, REDIS_MINIMUM)))
                return
            failure.trap(RedisUnavailable)
            if self.running:
                self._call = self.clock.callLater(self.retry, self._check)

        self.redis.execute("INFO", "server").addCallbacks(read, again)
