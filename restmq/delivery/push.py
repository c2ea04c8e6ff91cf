"""Push dispatchers (docs/push.md): every HTTP process (unless `--no-push`) keeps one per push
queue, re-reading PUSHSET every second. A dispatcher claims what the queue's limits allow
(restmq.core.push: the token bucket and the in-flight count are in Redis, so they hold across
processes) on a `wake` notice, on the 1 s sweep, when one of its own attempts ends, and when
a `rate` answer's wait is over; it POSTs each message to the queue's `push_url` and settles
it: a 2xx acks, anything else releases it with a jittered backoff (dead-lettered after
max_attempts). A dispatcher that dies mid-request leaves the message leased: the lease
(push_timeout + 5 s, or twice push_timeout + 5 s with a pre hook) hands it back."""
from __future__ import annotations

import email.utils
import ipaddress
import json
import random
import socket
from typing import Any
from urllib.parse import quote

from twisted.application import service
from twisted.internet import defer, endpoints, protocol, ssl, task, threads
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import _newclient, client
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from restmq import __version__
from restmq.core import targets
from restmq.errors import RestMQError
from restmq.redis import keys
from restmq.redis.connection import text

SWEEP_INTERVAL = 1.0  # seconds between two reads of PUSHSET (and a claim on every queue)
REPLY_MAX = 64 * 1024  # bytes of a reply read, at most
RETRY_AFTER_MAX = 3600  # seconds a Retry-After may postpone an attempt
PAUSE_DEFAULT, PAUSE_MAX = 1.0, 300.0  # seconds a 429 or 503 pauses the queue
SETTLE_TRIES = 5  # tries of an ack or release that meets Redis trouble, a second apart
ACK_MAX = 100  # receipts in one ack (the most an ack takes)
USER_AGENT = f"RestMQ/{__version__}".encode()
OUTCOMES = ("ok", "http_error", "timeout", "connect_error", "pre_hook", "forbidden_target")


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


class _QuietFactory(client._HTTP11ClientFactory):
    noisy = False  # not two log lines per connection


class _Agent(client.Agent):
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


def _post(agent: Any, url: bytes, body: bytes, headers: Headers, timeout: float,
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


class PushService(service.Service):
    """The push dispatchers of one process: one per PUSHSET member, over one Agent with a
    persistent connection pool. `pubsub` holds each push queue's channel (its listener must
    pass this service the notices: restmq.redis.pubsub.FanOut)."""

    log = Logger()

    def __init__(self, core: Any, pubsub: Any, clock: Any, reactor: Any, db: int = 0,
                 private: bool = False, wall: Any = None):
        import time
        self.core, self.pubsub, self.clock, self.reactor = core, pubsub, clock, reactor
        self.db, self.private = db, private
        self.wall = wall or time.time
        self.dispatchers: dict[str, Dispatcher] = {}
        self.outcomes: dict[tuple[str, str], int] = {}  # (queue, outcome) -> attempts
        self.stopping = False
        self.pool = client.HTTPConnectionPool(reactor, persistent=True)
        self.pool._factory = _QuietFactory
        self.pool.maxPersistentPerHost = 100
        self.pool.retryAutomatically = False  # a POST is not retried behind our back
        self.agent = _Agent.usingEndpointFactory(
            reactor, CheckedEndpoints(reactor, private), pool=self.pool)
        self._sweep = task.LoopingCall(self.sweep)
        self._sweep.clock = clock
        self._reading: defer.Deferred | None = None
        self._failing = False

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        self._sweep.start(SWEEP_INTERVAL, now=True)

    def stopService(self):
        """Stop claiming; the attempts under way get their push_timeout to end (their
        messages stay leased if they do not), then the pooled connections close. A claim
        already sent is waited for first: the messages it brings back are leased to this
        process, so they are attempted like the others rather than left to their lease."""
        super().stopService()
        self.stopping = True
        if self._sweep.running:
            self._sweep.stop()
        claims = [d.cycle for d in self.dispatchers.values() if d.cycle is not None]

        def attempts(_: Any) -> defer.Deferred:
            running = []
            for dispatcher in self.dispatchers.values():
                running += dispatcher.stop()
            return defer.DeferredList(running)

        return defer.DeferredList(claims).addBoth(attempts).addBoth(
            lambda _: self.pool.closeCachedConnections())

    # -- which queues --------------------------------------------------------------------------

    def sweep(self) -> None:
        if self._reading is None and not self.stopping:
            self._reading = self.core.redis.execute("SMEMBERS", keys.PUSHSET)
            self._reading.addCallbacks(self._members, self._sweep_failed)
            self._reading.addBoth(self._read)

    def _read(self, _: Any) -> None:
        self._reading = None

    def _sweep_failed(self, failure) -> None:
        failure.trap(RestMQError)
        if not self._failing:
            self._failing = True
            self.log.warn("push: cannot read the push queues ({error}); trying every second",
                          error=failure.value.reason)

    def _members(self, members: Any) -> None:
        self._failing = False
        if self.stopping:
            return
        wanted = set(text(list(members or [])))
        for queue in list(self.dispatchers):
            if queue not in wanted and not self.dispatchers[queue].attempts:
                self.dispatchers.pop(queue).stop()
                self.pubsub.unsubscribe(keys.channel(queue))
        for queue in sorted(wanted):
            if queue not in self.dispatchers:
                self.dispatchers[queue] = Dispatcher(self, queue)
                self.pubsub.subscribe(keys.channel(queue))
            self.dispatchers[queue].trigger()

    # -- pub/sub listener ----------------------------------------------------------------------

    def confirmed(self, channel: str) -> None:
        self._wake(channel)

    def lost(self) -> None:
        pass  # the 1 s sweep goes on claiming meanwhile

    def message(self, channel: str, message: str) -> None:
        # Every notice of every channel this process holds comes here (live consumers'
        # included): only those of a push queue's channel are read.
        dispatcher = self._dispatcher(channel)
        if dispatcher is None:
            return
        try:
            note = json.loads(message)
        except (ValueError, RecursionError):
            return
        if isinstance(note, dict) and note.get("type") == "wake" and note.get("db") == self.db:
            dispatcher.trigger()

    def _wake(self, channel: str) -> None:
        dispatcher = self._dispatcher(channel)
        if dispatcher is not None:
            dispatcher.trigger()

    def _dispatcher(self, channel: str) -> Dispatcher | None:
        if channel.endswith(keys.CHANNEL_SUFFIX):
            return self.dispatchers.get(channel[:-len(keys.CHANNEL_SUFFIX)])
        return None

    # -- outcomes ------------------------------------------------------------------------------

    def count(self, queue: str, outcome: str, key: str, status: int | None) -> None:
        """Every attempt's outcome (one of OUTCOMES) passes here, and only here: the place to
        count it into the queue's counters."""
        self.outcomes[(queue, outcome)] = self.outcomes.get((queue, outcome), 0) + 1
        # Not awaited: the attempt settles whether or not the count lands, and a count lost
        # to a Redis outage is only a missing increment (the lease protects the message).
        self.core.count(queue, "push_" + outcome).addErrback(self._count_failed, queue)
        if outcome == "forbidden_target":
            self.log.warn("push of {key}: target refused, it resolves to a loopback or private "
                          "address (start with --push-private to allow it)", key=key)
        elif outcome != "ok":
            self.log.info("push of {key}: {outcome} (status {status})", key=key,
                          outcome=outcome, status=status)

    def _count_failed(self, failure, queue: str) -> None:
        failure.trap(RestMQError)
        self.log.debug("push outcome of {queue} not counted ({error})", queue=queue,
                       error=failure.value.reason)


class Dispatcher:
    """The dispatcher of one push queue in this process: one claim cycle at a time, and the
    attempts it started."""

    def __init__(self, owner: PushService, queue: str):
        self.owner, self.queue = owner, queue
        self.attempts: set[defer.Deferred] = set()
        self.cycle: defer.Deferred | None = None
        self.again = False
        self.timer = None  # the wait a `rate` answer named
        self.stopped = False
        self.admitted = False
        self.concurrency = 10  # push_concurrency as the last claim read it
        self._failing = False
        self.acks = _Acks(self)
        self.holding = False  # attempts are ending together: one claim after them all
        self.ended = False  # an attempt ended while holding
        self.queue_header = b""

    def stop(self) -> list[defer.Deferred]:
        self.stopped = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        return list(self.attempts)

    def trigger(self) -> None:
        if self.stopped or self.owner.stopping:
            return
        if self.cycle is not None:
            self.again = True
            return
        self.cycle = defer.ensureDeferred(self._cycle())
        self.cycle.addErrback(lambda f: self.owner.log.failure(
            "push dispatch of {queue} failed", f, queue=self.queue))
        self.cycle.addBoth(self._cycle_ended)

    def _cycle_ended(self, _: Any) -> None:
        self.cycle = None
        if self.again:
            self.again = False
            self.trigger()

    async def _cycle(self) -> None:
        while not (self.stopped or self.owner.stopping):
            self.again = False
            try:
                # Attempts of this process include post hooks, called after the message
                # left the in-flight set: they count here, so a post hook that hangs cannot
                # make the process open a request per message push_rate allows.
                most = min(10, self.concurrency - len(self.attempts))
                if most <= 0:
                    return  # the end of an attempt triggers the next claim
                if not self.admitted:
                    # A name the original RestMQ allowed (`my queue`) passes the queue
                    # operations only once found registered, as in every route.
                    self.queue, self.admitted = await self.owner.core.admit(self.queue), True
                claim = await self.owner.core.push_claim(self.queue, most)
            except RestMQError as e:
                if not self._failing:
                    self._failing = True
                    self.owner.log.warn("push claim of {queue} failed ({error}); the sweep "
                                        "tries again", queue=self.queue, error=e.reason)
                return
            self._failing = False
            if claim.state == "rate":
                self._after(claim.wait_ms / 1000)
                return
            if claim.state != "ok":
                return
            self.concurrency = claim.config.concurrency
            if not claim.messages:
                return
            for lease in claim.messages:
                attempt = defer.ensureDeferred(Attempt(self, claim.config, lease).run())
                attempt.addErrback(lambda f: self.owner.log.failure(
                    "push attempt of {queue} failed", f, queue=self.queue))
                self.attempts.add(attempt)
                attempt.addBoth(self._attempt_ended, attempt)

    def _attempt_ended(self, _: Any, attempt: defer.Deferred) -> None:
        self.attempts.discard(attempt)
        if self.holding:
            self.ended = True
        else:
            self.trigger()

    def ending_together(self, end: Any) -> None:
        """Calls `end()`, which ends several attempts at once (an ack for them all was
        answered), and then claims once for the room they all left, rather than once for
        the first and again for the rest."""
        self.holding, self.ended = True, False
        try:
            end()
        finally:
            self.holding = False
        if self.ended:
            self.ended = False
            self.trigger()

    def _after(self, seconds: float) -> None:
        if self.timer is not None and self.timer.active():
            if self.timer.getTime() <= self.owner.clock.seconds() + seconds:
                return
            self.timer.cancel()
        self.timer = self.owner.clock.callLater(seconds, self.trigger)


class _Acks:
    """The acks of one push queue's attempts, committed in groups: the first goes to Redis at
    once; those that come while it is on its way wait, and go together (ACK_MAX receipts a
    script run) when it is answered. Under load a round trip and a script run then serve many
    pushes rather than one each; alone, an ack waits for nothing."""

    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher
        self.waiting: list[tuple[str, defer.Deferred]] = []
        self.sending = 0

    def ack(self, receipt: str) -> defer.Deferred:
        """Fires with True (acked) or False (its lease had ended: stale), or fails as
        core.ack does."""
        d = defer.Deferred()
        self.waiting.append((receipt, d))
        if not self.sending:
            self._send()
        return d

    def _send(self) -> None:
        while self.waiting:
            batch, self.waiting = self.waiting[:ACK_MAX], self.waiting[ACK_MAX:]
            self.sending += 1
            sent = defer.maybeDeferred(self.dispatcher.owner.core.ack, self.dispatcher.queue,
                                       [receipt for receipt, _ in batch])
            sent.addBoth(self._answered, batch)

    def _answered(self, result: Any, batch: list[tuple[str, defer.Deferred]]) -> None:
        self.sending -= 1
        if not self.sending:
            self._send()  # those that came meanwhile go now, before these attempts end
        if isinstance(result, Failure):
            # Each attempt tries its ack again on its own schedule (Attempt._settle).
            self.dispatcher.ending_together(lambda: [d.errback(result) for _, d in batch])
        else:
            acked = set(result.acked)
            self.dispatcher.ending_together(
                lambda: [d.callback(receipt in acked) for receipt, d in batch])


class Attempt:
    """One delivery of one message: the pre hook, the POST, the settling (ack, or release
    with backoff, a pause for 429/503, a dead letter at max_attempts), the post hook."""

    def __init__(self, dispatcher: Dispatcher, config: Any, lease: Any):
        self.dispatcher, self.config, self.lease = dispatcher, config, lease
        self.owner = dispatcher.owner
        self.queue = dispatcher.queue

    def _headers(self, content_type: str) -> Headers:
        dispatcher = self.dispatcher
        if not dispatcher.queue_header:  # the queue's name (as admitted) quoted once
            dispatcher.queue_header = quote(self.queue, safe="/:@-._~").encode("ascii")
        headers = Headers({b"content-type": [content_type.encode("latin-1")],
                           b"user-agent": [USER_AGENT],
                           b"restmq-queue": [dispatcher.queue_header],
                           b"restmq-key": [quote(self.lease.key, safe="/:@-._~").encode()],
                           b"restmq-attempt": [str(self.lease.deliveries).encode()]})
        if self.config.auth:
            headers.setRawHeaders(b"authorization", [self.config.auth.encode("latin-1")])
        return headers

    async def _call(self, url: str, body: bytes, content_type: str) -> tuple[str, int | None,
                                                                            Any]:
        """(outcome, status, reply headers) of one POST."""
        try:
            status, headers = await _post(self.owner.agent, url.encode("ascii"), body,
                                          self._headers(content_type), self.config.timeout,
                                          self.owner.clock)
        except (AttemptTimeout, ConnectTimeout):
            return "timeout", None, None
        except ForbiddenTarget:
            return "forbidden_target", None, None
        except Exception:  # refused, reset, DNS failure, a broken reply: all connection errors
            return "connect_error", None, None
        return ("ok" if 200 <= status < 300 else "http_error"), status, headers

    async def run(self) -> None:
        lease, config = self.lease, self.config
        outcome, status, headers = "ok", None, None
        if config.pre_hook:
            hook = json.dumps({"queue": self.queue, "key": lease.key,
                               "attempt": lease.deliveries}).encode()
            result, _, _ = await self._call(config.pre_hook, hook, "application/json")
            if result != "ok":
                outcome = "forbidden_target" if result == "forbidden_target" else "pre_hook"
        if outcome == "ok":
            outcome, status, headers = await self._call(
                config.url, lease.value.encode("utf-8"), config.content_type)
        self.owner.count(self.queue, outcome, lease.key, status)
        final = await self._settle(outcome, status, headers)
        if config.post_hook and final is not None:
            note = json.dumps({"queue": self.queue, "key": lease.key,
                               "attempt": lease.deliveries, "outcome": final,
                               "status": status}).encode()
            await self._call(config.post_hook, note, "application/json")

    async def _settle(self, outcome: str, status: int | None, headers: Any) -> str | None:
        """Ack or release; 'done', 'retry' or 'dead', None when Redis stayed out of reach (the
        lease hands the message back) or the lease had already ended (stale)."""
        core, receipt = self.owner.core, self.lease.receipt
        delay, pause = 0.0, None
        if outcome != "ok":
            wanted = retry_after(headers, self.owner.wall())
            delay = backoff(self.config.backoff_min, self.config.backoff_max,
                            self.lease.deliveries)
            if wanted is not None:
                delay = max(delay, wanted)
            if status in (429, 503):
                pause = min(PAUSE_MAX, wanted if wanted is not None else PAUSE_DEFAULT)
        for tries in range(SETTLE_TRIES):
            try:
                if outcome == "ok":
                    return "done" if await self.dispatcher.acks.ack(receipt) else None
                if pause:
                    await core.push_pause(self.queue, pause)
                    pause = None
                released = await core.push_release(self.queue, receipt, int(delay * 1000))
                return "dead" if released.dead_lettered else (
                    "retry" if released.released else None)
            except RestMQError as e:
                if tries == SETTLE_TRIES - 1 or self.owner.stopping:
                    self.owner.log.warn("push of {key}: could not settle ({error}); the lease "
                                        "hands it back", key=self.lease.key, error=e.reason)
                    return None
                await task.deferLater(self.owner.clock, 1.0, lambda: None)
        return None
