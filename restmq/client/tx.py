"""TxClient and TxWorker: the client library for Twisted programs. The calls are those of the
blocking Client (restmq.client.wire.Api), each returning a Deferred; requests go through
twisted.web.client.Agent with a persistent connection pool."""
from __future__ import annotations

import io
from urllib.parse import urlsplit

from twisted.internet import defer, error as net
from twisted.internet import protocol, task
from twisted.python.failure import Failure
from twisted.web.client import (Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone,
                                ResponseFailed, readBody)
from twisted.web._newclient import RequestNotSent, RequestTransmissionFailed
from twisted.web.http_headers import Headers

from restmq.client.errors import RestMQError, Unavailable
from restmq.client.models import Lease, Message
from restmq.client.policy import ACK, DEAD, LAPSE, RELEASE, STALE, Base, fields
from restmq.client.wire import (Api, Request, backoff, basic_auth, check, for_protocol, lost,
                                protocol_of, qpath, reason_of, stream_line)

NOT_SENT = (net.ConnectError, net.DNSLookupError, RequestNotSent)
LOST = (ResponseFailed, RequestTransmissionFailed, defer.TimeoutError, net.ConnectionLost,
        net.ConnectionDone, OSError)


def _cancelled(error: Exception) -> bool:
    """Agent reports a request cancelled while in flight as a failed response."""
    reasons = getattr(error, "reasons", None) or []
    return any(r.check(defer.CancelledError) for r in reasons)


class TxClient(Api):
    """TxClient(url, auth=None, auth_key=None, timeout=30, retries=3, protocol=None,
    reactor=None): the calls of Client, each returning a Deferred."""

    def __init__(self, url: str, auth=None, auth_key=None, timeout: float = 30.0,
                 retries: int = 3, protocol: int | None = None, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.protocol = protocol
        self.reactor = reactor
        self._auth = basic_auth(auth, auth_key)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 16
        self._agent = Agent(reactor, pool=self.pool, connectTimeout=timeout)

    def close(self) -> defer.Deferred:
        """Closes the kept-alive connections."""
        return self.pool.closeCachedConnections()

    def _headers(self, extra: dict) -> Headers:
        return Headers({k.encode(): [v.encode()] for k, v in {**self._auth, **extra}.items()})

    @defer.inlineCallbacks
    def _exchange(self, request: Request):
        path, body, headers = request.encoded()
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        response = yield self._agent.request(request.method.encode(),
                                             (self.url + path).encode("utf-8"),
                                             self._headers(headers), producer)
        data = yield readBody(response)
        return response.code, data

    def _timed(self, request: Request, left: float) -> defer.Deferred:
        """One exchange, cancelled after `left` seconds: its failure is then a TimeoutError
        (a lost reply, as Agent reports a cancel as the response's failure, which must not be
        taken for the caller's own cancel)."""
        expired = []

        def expire():
            expired.append(True)
            d.cancel()

        def settled(result):
            if timer.active():
                timer.cancel()
            if expired and isinstance(result, Failure):
                return Failure(defer.TimeoutError(f"no reply within {left:.3g} s"))
            return result

        d = self._exchange(request)
        timer = self.reactor.callLater(left, expire)
        return d.addBoth(settled)

    @defer.inlineCallbacks
    def _pause(self, attempt: int, deadline: float):
        """Pauses before retry number attempt + 1; False when none is allowed or the call's
        deadline leaves no time for it."""
        pause = backoff(attempt + 1)
        if attempt >= self.retries or self.reactor.seconds() + pause >= deadline:
            return False
        yield task.deferLater(self.reactor, pause, lambda: None)
        return True

    @defer.inlineCallbacks
    def _send(self, request: Request, deadline: float):
        """Sends the request, again while that is safe and the deadline allows: the timeout
        bounds the whole call, its retries and their pauses included."""
        attempt = 0
        while True:
            left = deadline - self.reactor.seconds()
            if left <= 0:
                raise Unavailable(None, f"{request.what}: no time left to reach {self.url}")
            try:
                status, body = yield self._timed(request, left)
            except NOT_SENT as e:
                if (yield self._pause(attempt, deadline)):
                    attempt += 1
                    continue
                raise Unavailable(None, f"cannot reach {self.url}: {e}") from None
            except LOST as e:
                if _cancelled(e):
                    raise defer.CancelledError() from None  # our caller gave up: no retry
                if request.resend and (yield self._pause(attempt, deadline)):
                    attempt += 1
                    continue
                raise lost(request, self.url, repr(e)) from None
            if status == 503 and request.resend and (yield self._pause(attempt, deadline)):
                attempt += 1
                continue
            return status, body

    def _deadline(self, request: Request) -> float:
        return self.reactor.seconds() + self.timeout + request.wait

    @defer.inlineCallbacks
    def _call(self, request: Request):
        deadline = self._deadline(request)
        if request.needs_protocol:
            protocol = yield self.server_protocol(deadline)
            request = for_protocol(request, protocol)
        status, body = yield self._send(request, deadline)
        return request.parse(status, body)

    @defer.inlineCallbacks
    def server_protocol(self, deadline: float | None = None):
        if self.protocol is None:
            health = Request("GET", "/health", resend=True, what="health")
            status, body = yield self._send(health, deadline or self._deadline(health))
            self.protocol = protocol_of(status, body)
        return self.protocol

    # -- live delivery -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def stream(self, queue: str, on_message, via: str = "sse", reconnect: bool = True):
        """Calls on_message(Message) for each message delivered live; the Deferred fires
        when the queue is purged (or fails after repeated connection failures). Cancel it to
        stop streaming."""
        if via not in ("sse", "comet"):
            raise ValueError("via is 'sse' or 'comet'")
        failures = [0]

        def deliver(data):
            failures[0] = 0
            on_message(Message(queue, data["key"], data["value"]))

        while True:
            try:
                yield self._stream_once(queue, via, deliver)
                return None
            except NOT_SENT + LOST + (Unavailable,) as e:
                failures[0] += 1
                if not reconnect or failures[0] > max(self.retries, 1) * 10:
                    raise Unavailable(None, f"stream of {queue}: {e!r}") from None
                yield task.deferLater(self.reactor, backoff(min(failures[0], 6)), lambda: None)

    @defer.inlineCallbacks
    def _stream_once(self, queue, via, deliver):
        path = qpath("/sse/" if via == "sse" else "/c/", queue)
        d = self._agent.request(b"GET", (self.url + path).encode("utf-8"), self._headers({}))
        d.addTimeout(self.timeout, self.reactor)
        response = yield d
        if response.code != 200:
            body = yield readBody(response)
            if response.code == 503:
                raise Unavailable(503, reason_of(body))
            check(response.code, body)
            raise RestMQError(response.code, "unexpected reply to a stream")
        finished = defer.Deferred(lambda _: receiver.transport.stopProducing())
        receiver = _Lines(finished, via, deliver)
        response.deliverBody(receiver)
        yield finished


class _Lines(protocol.Protocol):
    """Splits a comet or SSE body into messages; fires `finished` at the purge's `null`."""

    def __init__(self, finished: defer.Deferred, via: str, deliver):
        self.finished, self.deliver = finished, deliver
        self.sep = b"\n" if via == "sse" else b"\r\n"
        self.sse = via == "sse"
        self.pending = b""

    def dataReceived(self, data: bytes) -> None:
        self.pending += data
        while self.sep in self.pending and not self.finished.called:
            line, self.pending = self.pending.split(self.sep, 1)
            if self.sse:
                if not line.startswith(b"data:"):
                    continue
                line = line[5:].strip()
            ended, message = stream_line(line)
            if ended:
                self.finished.callback(None)
                self.transport.stopProducing()
                return
            self.deliver(message)

    def connectionLost(self, reason=None) -> None:
        if not self.finished.called:
            if reason is None or reason.check(ResponseDone):
                reason = Failure(net.ConnectionDone("the stream ended without a purge"))
            self.finished.errback(reason)


class TxWorker(Base):
    """The Worker on a TxClient: `work` may return a Deferred. start() returns a Deferred
    that fires once the worker has stopped; run() starts it and runs the reactor, stopping
    gracefully when the reactor shuts down (SIGTERM, SIGINT)."""

    def __init__(self, client: TxClient | str, queue: str | None = None, *, lease=None,
                 concurrency=None, wait=None, work=None, logger=None, reactor=None):
        self.client = client if isinstance(client, TxClient) else TxClient(client,
                                                                           reactor=reactor)
        self.reactor = self.client.reactor
        self._configure(queue, lease, concurrency, wait, work, logger)
        self._stopping = False
        self._claiming: defer.Deferred | None = None
        self._jobs: set[defer.Deferred] = set()
        self._freed: defer.Deferred | None = None
        self._done: defer.Deferred | None = None

    def run(self) -> None:
        self.reactor.callWhenRunning(self.start)
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        self.reactor.run()

    def start(self) -> defer.Deferred:
        self._done = self._loop()
        self._done.addErrback(lambda f: self.log.error("worker loop failed: %s", f.value))
        return self._done

    def stop(self) -> defer.Deferred:
        """No new claims (a claim waiting now is cut short); fires when running work is done."""
        self._stopping = True
        if self._claiming is not None:
            self._claiming.cancel()
        if self._freed is not None and not self._freed.called:
            self._freed.callback(None)
        waits = [self._done] if self._done is not None else []
        return defer.DeferredList(waits + list(self._jobs), consumeErrors=True)

    @defer.inlineCallbacks
    def _loop(self):
        failures = 0
        while not self._stopping:
            if len(self._jobs) >= self.concurrency:
                self._freed = defer.Deferred()
                yield self._freed
                continue
            self._claiming = self.client.claim(self.queue, self.concurrency - len(self._jobs),
                                               self.lease, self.wait)
            try:
                leases = yield self._claiming
                failures = 0
            except defer.CancelledError:
                break
            except RestMQError as e:
                failures += 1
                self.log.warning("claim failed: %s", e, extra={"queue": self.queue})
                yield task.deferLater(self.reactor, min(5.0, backoff(failures) * 5),
                                      lambda: None)
                continue
            finally:
                self._claiming = None
            for lease in leases:
                if self._stopping:
                    self._give_back(lease)
                else:
                    self._start(lease)
        yield defer.DeferredList(list(self._jobs), consumeErrors=True)

    def _give_back(self, lease: Lease) -> None:
        d = lease.release()
        d.addCallbacks(lambda _: self.log.info("released unstarted %s", lease.key,
                                                 extra=fields(lease, RELEASE)),
                       lambda f: self.log.warning("could not release %s: %s", lease.key,
                                                  f.value, extra=fields(lease, LAPSE)))

    def _start(self, lease: Lease) -> None:
        state = {"started": self.reactor.seconds()}
        beat = task.LoopingCall(self._extend, lease, state)
        beat.clock = self.reactor
        state["beat"] = beat
        beat.start(self.lease / 3, now=False)
        d = defer.maybeDeferred(self.before, lease)
        d.addCallback(lambda _: self.work(lease))
        d.addCallbacks(lambda _: self._succeeded(lease, state),
                       lambda f: self._failed(lease, f.value, state))
        d.addCallback(lambda outcome: self._after(lease, outcome))
        self._jobs.add(d)
        d.addBoth(lambda _: self._finished(d, state))

    def _stop_beat(self, state) -> None:
        if state["beat"].running:
            state["beat"].stop()

    def _extend(self, lease: Lease, state):
        if self.max_hold is not None and \
                self.reactor.seconds() - state["started"] >= self.max_hold:
            self.log.warning("%s still running after max_hold: its lease is left to lapse",
                             lease.key, extra=fields(lease, LAPSE))
            self._stop_beat(state)
            return None
        d = self.client.extend(self.queue, [lease.receipt], self.lease)

        def checked(settled):
            if settled.stale:
                self.log.warning("lease of %s lapsed while working", lease.key,
                                 extra=fields(lease, STALE))
        d.addCallbacks(checked, lambda f: self.log.warning("extend failed: %s", f.value,
                                                           extra=fields(lease)))
        return None  # a failed extend must not stop the LoopingCall

    @defer.inlineCallbacks
    def _succeeded(self, lease: Lease, state):
        self._stop_beat(state)
        self.processed += 1
        try:
            settled = yield lease.ack()
        except RestMQError as e:
            self.log.error("ack of %s failed: %s", lease.key, e, extra=fields(lease))
            return LAPSE
        return ACK if settled.ok else STALE

    @defer.inlineCallbacks
    def _failed(self, lease: Lease, error, state):
        self._stop_beat(state)
        self.failed += 1
        self._exit_on(error)
        delay = self._delay(lease, error)
        if delay is None:
            self.log.warning("failed %s: %r; left to lapse", lease.key, error,
                             extra=fields(lease, LAPSE, error=repr(error)))
            return LAPSE
        try:
            settled = yield lease.release(delay)
        except RestMQError as e:
            self.log.warning("release of %s failed: %s", lease.key, e, extra=fields(lease))
            return LAPSE
        outcome = DEAD if settled.dead else RELEASE if settled.ok else STALE
        self.log.warning("failed %s: %r; %s", lease.key, error, outcome,
                         extra=fields(lease, outcome, error=repr(error), delay=delay))
        return outcome

    def _after(self, lease: Lease, outcome: str):
        try:
            self.after(lease, outcome)
        except BaseException as error:
            self.log.exception("after() raised", extra=fields(lease, outcome))
            self._exit_on(error)

    def _finished(self, d, state) -> None:
        self._stop_beat(state)
        self._jobs.discard(d)
        if self._freed is not None and not self._freed.called:
            self._freed.callback(None)
