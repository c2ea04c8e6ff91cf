"""The access log: one line per request, buffered and written once a second, with credentials
in the URI redacted; and the Date header, formatted once a second."""
from __future__ import annotations

from email.utils import formatdate
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

import cyclone.web
from twisted.logger import Logger

from restmq.clock import reactor_clock, wall_time

_date_cache: list = [None, ""]  # the second it was formatted for, and the text


def http_date(wall: Callable[[], float] | None = None) -> str:
    """The Date header at `wall()` (restmq.clock.wall_time by default), formatted once per
    second instead of once per reply."""
    now = int((wall or wall_time)())
    if _date_cache[0] != now:
        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return _date_cache[1]


class AccessLog:
    """The access log, buffered: lines are collected and written as one log event per second
    (or per 256 requests), which costs far less than one event per request. `clock` is an
    IReactorTime."""

    log = Logger(namespace="restmq.access")

    def __init__(self, clock: Any = None, limit: int = 256):
        self.clock = reactor_clock() if clock is None else clock
        self.limit = limit
        self.lines: list[str] = []
        self._flush_call = None

    def __call__(self, handler: cyclone.web.RequestHandler) -> None:
        request = handler.request
        self.lines.append(f'{request.remote_ip} "{request.method} {loggable_uri(request.uri)} '
                          f'{request.version}" {handler.get_status()} '
                          f'{1000.0 * request.request_time():.2f}ms')
        if len(self.lines) >= self.limit:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(1.0, self.flush)

    def flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        lines, self.lines = self.lines, []
        if lines:
            self.log.info("{lines}", lines="\n".join(lines))


def loggable_uri(uri: str) -> str:
    """The URI with the value of every argument the server reads as `authkey` (however its
    name is percent-encoded) replaced by `[redacted]`: logs outlive the keys they would leak.
    Headers, where the other credentials travel, are never logged."""
    path, mark, query = uri.partition("?")
    if not mark:
        return uri
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, equals, _ = part.partition("=")
        decoded = unquote_to_bytes(name.replace("+", " ").encode("latin-1"))
        if equals and decoded == b"authkey":
            parts[i] = name + "=[redacted]"
    return path + "?" + "&".join(parts)
