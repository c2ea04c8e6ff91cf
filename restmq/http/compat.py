"""The few fixes cyclone 1.3 needs on Python 3 besides the connection: an Application on our
HTTPConnection, a chunked transform that builds bytes, and handlers written as `async def`;
and the check, at import, that the private members of cyclone the http package relies on
still exist.

See docs/stack-notes.md#cyclone-on-python-3: cyclone's leftovers of Python 2 break at
str/bytes boundaries.

Private members of cyclone used by restmq.http (checked by `require_private` at import, so that
an upgrade that removes one stops the start with a clear error instead of misbehaving later):

* `RequestHandler`: `_headers`, `_list_headers`, `_write_buffer`, `_status_code`, `_reason`
  (base.py's `clear`, live.py's `start_stream`); `_finished`, `_headers_written`,
  `_auto_finish` (base.py, live.py: a reply or a stream already under way);
  `_generate_headers`, `_handle_request_exception`, `_deferred_handler` (overridden by
  base.py and here);
* `ChunkedTransferEncoding`: `_chunking` (here).

Private members of Twisted or txredisapi used here: none.
"""
from __future__ import annotations

import cyclone.web
from twisted.internet import defer
from twisted.python import failure

from restmq.http.connection import HTTPConnection


def require_private(owner: type, names: tuple[str, ...]) -> None:
    """Raise ImportError unless `owner` still has each of `names`: as a class attribute or
    method, or as an instance attribute its own methods assign."""
    assigned: set[str] = set()
    for klass in owner.__mro__:
        for member in vars(klass).values():
            code = getattr(member, "__code__", None)
            if code is not None:
                assigned.update(code.co_names)
    missing = [name for name in names if not hasattr(owner, name) and name not in assigned]
    if missing:
        raise ImportError(
            f"RestMQ relies on {', '.join(missing)} of {owner.__module__}.{owner.__name__}, "
            f"which this version of {owner.__module__.split('.')[0]} lacks: install the "
            f"version docs/stack-notes.md names")


require_private(cyclone.web.RequestHandler, (
    "_headers", "_list_headers", "_write_buffer", "_status_code", "_reason", "_finished",
    "_headers_written", "_auto_finish", "_generate_headers", "_handle_request_exception",
    "_deferred_handler"))
require_private(cyclone.web.ChunkedTransferEncoding, ("_chunking",))


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
