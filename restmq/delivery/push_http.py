"""The HTTP side of push dispatch (restmq.delivery.push): targets reached through an Agent
whose endpoints resolve each new connection's host themselves and refuse a loopback or private
answer unless --push-private (then connect to the very address checked, so a DNS answer that
changes later cannot redirect it), a request body written with its head, a reply read up to
REPLY_MAX bytes within the attempt's timeout, and the reading of Retry-After and the backoff
between attempts."""
from __future__ import annotations

import email.utils
import ipaddress
import random
import socket
from typing import Any

from twisted.internet import defer, endpoints, protocol, ssl, threads
from twisted.python.failure import Failure
from twisted.web import _newclient, client
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from restmq.core import targets

REPLY_MAX = 64 * 1024  # bytes of a reply read, at most
RETRY_AFTER_MAX = 3600  # seconds a Retry-After may postpone an attempt


class ForbiddenTarget(Exception):
    """The target's name resolved to a loopback or private address (see restmq.core.targets)."""


# -- the HTTP client ---------------------------------------------------------------------------


@implementer(IAgentEndpointFactory)
class CheckedEndpoints:
    """Endpoints that resolve the host themselves, refuse (unless `private`) a name with any
    loopback or private answer, and connect to the address they checked, so a DNS answer that
    changes between the check and the connection (rebinding) cannot swap it. The Host header
    and the TLS server name stay the URL's."""

    def __init__(self, reactor: Any, private: bool, connect_timeout: float = 30):
        self.reactor, self.private, self.connect_timeout = reactor, private, connect_timeout

    def endpointForURI(self, uri):  # noqa: N802 (Twisted's interface)
        host = uri.host.decode("ascii")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return _CheckedEndpoint(self, host, uri.port, uri.scheme == b"https")


class _CheckedEndpoint:
    def __init__(self, owner: CheckedEndpoints, host: str, port: int, tls: bool):
        self.owner, self.host, self.port, self.tls = owner, host, port, tls

    async def _address(self) -> str:
        try:
            return str(ipaddress.ip_address(self.host))
        except ValueError:
            pass
        answers = await threads.deferToThread(socket.getaddrinfo, self.host, self.port,
                                              type=socket.SOCK_STREAM)
        found = [ipaddress.ip_address(a[4][0].split("%")[0]) for a in answers]
        if not found:
            raise OSError(f"{self.host}: no address")
        if not self.owner.private:
            bad = [str(a) for a in found if targets.forbidden_address(a)]
            if bad:
                raise ForbiddenTarget(f"{self.host} resolves to {', '.join(bad)}")
        return str(found[0])

    def connect(self, factory):
        async def run():
            address = await self._address()
            if not self.owner.private and targets.forbidden_address(
                    ipaddress.ip_address(address)):
                raise ForbiddenTarget(f"{self.host} is {address}")
            kind = endpoints.TCP6ClientEndpoint if ":" in address else \
                endpoints.TCP4ClientEndpoint
            endpoint = kind(self.owner.reactor, address, self.port,
                            timeout=self.owner.connect_timeout)
            if self.tls:
                endpoint = endpoints.wrapClientTLS(ssl.optionsForClientTLS(self.host), endpoint)
            return await endpoint.connect(factory)
        return defer.ensureDeferred(run())


class QuietFactory(client._HTTP11ClientFactory):
    noisy = False  # not two log lines per connection


class PushAgent(client.Agent):
    """An Agent that parses each URL once rather than on every request (a push queue POSTs
    to the same URL thousands of times a second): its parts, the pool's key, the Host header
    and the endpoint are kept per URL. The endpoint is only used when the pool has no idle
    connection to the host, and it resolves and checks the address (CheckedEndpoints) for
    every connection it makes, so keeping it checks no less."""

    TARGETS_MAX = 1024  # URLs kept; past that the cache starts again
    _targets: dict[bytes, tuple] | None = None  # usingEndpointFactory skips __init__

    def request(self, method, uri, headers=None, bodyProducer=None):  # noqa: N803
        if self._targets is None:
            self._targets = {}
        targets = self._targets
        target = targets.get(uri)
        if target is None:
            try:
                parsed = client.URI.fromBytes(_newclient._ensureValidURI(uri.strip()))
                target = (parsed, self._getEndpoint(parsed), parsed.originForm,
                          self._computeHostValue(parsed.scheme, parsed.host, parsed.port))
            except Exception:
                return defer.fail()
            if len(targets) >= self.TARGETS_MAX:
                targets.clear()
            targets[uri] = target
        parsed, endpoint, path, host = target
        # The headers are the caller's, built for this request: given their Host here, the
        # Agent need not copy them to add it.
        headers = Headers() if headers is None else headers
        if not headers.hasHeader(b"host"):
            headers.setRawHeaders(b"host", [host])
        return self._requestWithEndpoint((parsed.scheme, parsed.host, parsed.port), endpoint,
                                         method, parsed, headers, bodyProducer, path)


class _CappedReader(protocol.Protocol):
    """Reads at most REPLY_MAX bytes of a reply, then stops the transfer (the connection is
    dropped rather than a large reply read to its end). `done` fires with the size read;
    cancelling it (the attempt's timeout) drops the connection as well: a target that sends
    its head at once and then trickles the body would otherwise keep one open per attempt."""

    def __init__(self):
        self.done, self.size = defer.Deferred(self._cancel), 0

    def _cancel(self, _: defer.Deferred) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.size += len(data)
        if self.size > REPLY_MAX and not self.done.called:
            self.done.callback(self.size)
            self.transport.stopProducing()

    def connectionLost(self, reason) -> None:  # noqa: N802
        if not self.done.called:
            self.done.callback(self.size)


@implementer(IBodyProducer)
class _Body:
    """A request body written whole as soon as the request starts, into the same write as
    its head: FileBodyProducer would write it a reactor turn later, one more send (and
    packet) per push."""

    def __init__(self, data: bytes):
        self.data, self.length = data, len(data)

    def startProducing(self, consumer) -> defer.Deferred:  # noqa: N802 (Twisted's interface)
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


class AttemptTimeout(Exception):
    """No complete reply within push_timeout."""


def _read_reply(response: Any) -> defer.Deferred:
    reader = _CappedReader()
    response.deliverBody(reader)
    return reader.done.addCallback(lambda _: (response.code, response.headers))


def post_capped(agent: Any, url: bytes, body: bytes, headers: Headers, timeout: float,
          clock: Any) -> defer.Deferred:
    """POST and read at most REPLY_MAX bytes of the reply, all within `timeout` seconds:
    fires with (status, headers), or fails (AttemptTimeout when time ran out). Redirects
    are not followed (the Agent never does). A chain of callbacks rather than coroutines:
    this runs for every push."""
    d = agent.request(b"POST", url, headers, _Body(body)).addCallback(_read_reply)
    timer = clock.callLater(timeout, d.cancel)

    def ended(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        elif isinstance(result, Failure):
            # Cancelling makes the Agent drop the connection; its failure then names the
            # cancel in several ways (ResponseNeverReceived, ConnectingCancelledError...), so
            # the timer itself says whether time ran out.
            return Failure(AttemptTimeout())
        return result

    return d.addBoth(ended)


def retry_after(headers: Any, now: float) -> float | None:
    """Seconds a `Retry-After` header asks for (delta seconds or an HTTP date), at most
    RETRY_AFTER_MAX; None without one or when it does not parse."""
    values = headers.getRawHeaders(b"retry-after") if headers is not None else None
    if not values:
        return None
    value = values[0].decode("latin-1").strip()
    if value.isascii() and value.isdigit():
        # Only the first digits of a long value are read (no huge integer from a target),
        # but after its leading zeros: 000000000020 is 20 s.
        return float(min(int(value.lstrip("0")[:8] or "0"), RETRY_AFTER_MAX))
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, min(when - now, RETRY_AFTER_MAX))


def backoff(low: float, high: float, attempt: int, rand: Any = random.random) -> float:
    """The delay before the next attempt after attempt number `attempt` failed:
    min(high, low * 2^(attempt - 1)) times a uniform factor in [0.5, 1]."""
    base = min(high, low * 2 ** min(attempt - 1, 64))
    return base * (0.5 + 0.5 * rand())


# -- dispatchers -------------------------------------------------------------------------------
