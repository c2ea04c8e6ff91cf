"""The services every plugin wires together: the Redis pool from the options, a parent that
stops its children one after the other, and a service that runs a function at shutdown."""
from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.python import usage


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
