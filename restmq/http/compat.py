"""The few fixes cyclone 1.3 needs on Python 3 besides the connection: an Application on our
HTTPConnection, a chunked transform that builds bytes, and handlers written as `async def`.

See docs/stack-notes.md#cyclone-on-python-3: cyclone's leftovers of Python 2 break at
str/bytes boundaries.
"""
from __future__ import annotations

import cyclone.web
from twisted.internet import defer
from twisted.python import failure

from restmq.http.connection import HTTPConnection


class Application(cyclone.web.Application):
    """A cyclone Application speaking through our HTTPConnection."""

    protocol = HTTPConnection


class ChunkedTransferEncoding(cyclone.web.ChunkedTransferEncoding):
    """cyclone's chunked transform builds str on Python 3; this one builds bytes."""

    def transform_chunk(self, block, finishing):
        if self._chunking:
            if block:
                block = b"%x\r\n" % len(block) + block + b"\r\n"
            if finishing:
                block += b"0\r\n\r\n"
        return block


class CoroutineHandlerMixin:
    """Lets handler methods be `async def`: cyclone 1.3 would never await the coroutine."""

    def _deferred_handler(self, function, *args, **kwargs):
        try:
            result = function(*args, **kwargs)
        except Exception:
            return defer.fail(failure.Failure())
        if isinstance(result, defer.Deferred):
            return result
        if hasattr(result, "__await__"):
            return defer.ensureDeferred(result)
        return defer.succeed(result)
