"""Worker: a blocking worker with threads. One thread long-polls `claim` for as many messages
as there are idle workers, `concurrency` threads run `work`, one thread extends the leases of
running jobs every lease/3 and one sends acks, several receipts per request under load."""
from __future__ import annotations

import queue as queues
import signal
import threading
import time

from restmq.client.errors import RestMQError
from restmq.client.models import Lease
from restmq.client.policy import ACK, DEAD, LAPSE, RELEASE, STALE, Base, fields
from restmq.client.sync import Client
from restmq.client.wire import backoff

MAX_LIMIT = 100  # the most messages one claim or one ack may carry


class Worker(Base):
    """Worker(client_or_url, queue=None, lease=None, concurrency=None, wait=None, work=None).
    run() blocks until stop() is called or a SIGTERM arrives, then finishes the jobs under
    way, releases the messages it holds but has not started, and returns."""

    def __init__(self, client: Client | str, queue: str | None = None, *, lease=None,
                 concurrency=None, wait=None, work=None, logger=None):
        self.client = client if isinstance(client, Client) else Client(client)
        self._configure(queue, lease, concurrency, wait, work, logger)
        self._stopping = threading.Event()
        self._lock = threading.Condition()
        self._idle = self.concurrency
        self._running: dict[str, list] = {}   # receipt -> [lease, started, next extend]
        self._todo: queues.Queue = queues.Queue()
        self._acks: queues.Queue = queues.Queue()
        self._poller: Client | None = None
        self._beater: Client | None = None

    # -- control -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Asks run() to end: no new claim; a claim waiting now is cut short (the server
        hands back what it held for it). Safe from a signal handler and any thread."""
        self._stopping.set()
        if self._poller is not None:
            self._poller.close()
        with self._lock:
            self._lock.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        restore = self._handle_signals()
        self._poller = self.client.clone()
        # The heartbeat's own client gives up on an extend within a quarter of the lease: an
        # extend lost in the network must leave time for the next (sent at the next beat, a
        # sixth of the lease later at most), not hold the heartbeat for the client's whole
        # timeout while the lease lapses. The first extend goes at a third of the lease, so a
        # lost one and its successor are done by three quarters of it.
        self._beater = self.client.clone()
        self._beater.timeout = max(0.5, min(self.client.timeout, self.lease / 4))
        if self._stopping.is_set():
            self._poller.close()
        threads = [threading.Thread(target=self._execute, name=f"work-{i}", daemon=True)
                   for i in range(self.concurrency)]
        helpers = [threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True),
                   threading.Thread(target=self._acker, name="acker", daemon=True)]
        for t in threads + helpers:
            t.start()
        self.log.info("worker started on %s", self.queue,
                      extra={"queue": self.queue, "concurrency": self.concurrency})
        try:
            self._fetch()
        finally:
            self._stopping.set()
            for _ in threads:
                self._todo.put(None)
            for t in threads:
                t.join()
            self._acks.put(None)
            for t in helpers:
                t.join()
            self._poller.close()
            self._beater.close()
            restore()
            self.log.info("worker stopped: %d processed, %d failed", self.processed,
                          self.failed, extra={"queue": self.queue, "processed": self.processed,
                                              "failed": self.failed})

    def _handle_signals(self):
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.signal(s, lambda *_: self.stop())
                    for s in (signal.SIGTERM, signal.SIGINT)}
        return lambda: [signal.signal(s, h) for s, h in previous.items()]

    # -- claiming ----------------------------------------------------------------------------

    def _fetch(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            with self._lock:
                while self._idle == 0 and not self._stopping.is_set():
                    self._lock.wait()
                free = self._idle
            if self._stopping.is_set():
                return
            try:
                leases = self._poller.claim(self.queue, limit=min(free, MAX_LIMIT),
                                            lease=self.lease, wait=self.wait)
                failures = 0
            except RestMQError as e:
                if self._stopping.is_set():
                    return
                failures += 1
                self.log.warning("claim failed: %s", e, extra={"queue": self.queue,
                                                               "error": str(e)})
                self._stopping.wait(min(5.0, backoff(failures) * 5))
                continue
            with self._lock:
                self._idle -= len(leases)
            for lease in leases:
                lease.client = self.client
                self._todo.put(lease)

    # -- working -----------------------------------------------------------------------------

    def _execute(self) -> None:
        while True:
            lease = self._todo.get()
            if lease is None:
                return
            try:
                if self._stopping.is_set():
                    self._give_back(lease)
                else:
                    self._process(lease)
            except BaseException:  # never lose a thread, and with it a slot of concurrency
                self.log.exception("worker thread error", extra=fields(lease))
            finally:
                with self._lock:
                    self._idle += 1
                    self._lock.notify_all()

    def _give_back(self, lease: Lease) -> None:
        """A message claimed but not started when the worker stops goes back at once."""
        try:
            lease.release()
            self.log.info("released unstarted %s", lease.key, extra=fields(lease, RELEASE))
        except RestMQError as e:
            self.log.warning("could not release %s: %s (its lease will lapse)", lease.key, e,
                             extra=fields(lease, LAPSE, error=str(e)))

    def _process(self, lease: Lease) -> None:
        now = time.monotonic()
        with self._lock:
            self._running[lease.receipt] = [lease, now, now + self.lease / 3]
        started = time.monotonic()
        try:
            self.before(lease)
            self.work(lease)
        except BaseException as error:  # SystemExit too: the message must not stay held
            with self._lock:
                self._running.pop(lease.receipt, None)
                self.failed += 1
            outcome = self._failed(lease, error)
            self._exit_on(error)
        else:
            with self._lock:
                entry = self._running.pop(lease.receipt, None)
                self.processed += 1
            # a lease the heartbeat found lapsed cannot be acked any more
            outcome = ACK if entry is not None else STALE
            if entry is not None:
                outcome = self._acked(lease)
            self.log.debug("done %s", lease.key, extra=fields(
                lease, outcome, duration=time.monotonic() - started))
        try:
            self.after(lease, outcome)
        except BaseException as error:
            self.log.exception("after() raised", extra=fields(lease, outcome))
            self._exit_on(error)

    def _acked(self, lease: Lease) -> str:
        """Hands the lease to the acker. A worker with an after() hook waits for the ack's
        outcome (ack, stale when the lease had lapsed, lapse when the ack failed) so that
        after() is told the truth; one without goes on at once."""
        if type(self).after is Base.after:
            self._acks.put((lease, None))
            return ACK
        settled = [threading.Event(), LAPSE]
        self._acks.put((lease, settled))
        settled[0].wait()
        return settled[1]

    def _failed(self, lease: Lease, error: BaseException) -> str:
        delay = self._delay(lease, error)
        if delay is None:
            self.log.warning("failed %s: %r; left to lapse", lease.key, error,
                             extra=fields(lease, LAPSE, error=repr(error)))
            return LAPSE
        try:
            settled = lease.release(delay)
        except RestMQError as e:
            self.log.warning("failed %s: %r; release failed: %s", lease.key, error, e,
                             extra=fields(lease, LAPSE, error=repr(error)))
            return LAPSE
        outcome = DEAD if settled.dead else RELEASE if settled.ok else STALE
        self.log.warning("failed %s: %r; %s", lease.key, error, outcome,
                         extra=fields(lease, outcome, error=repr(error), delay=delay))
        return outcome

    # -- leases ------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        period = min(1.0, self.lease / 6)
        while True:
            time.sleep(period)
            now = time.monotonic()
            with self._lock:
                if self._stopping.is_set() and not self._running and self._todo.empty():
                    return
                due = [e for e in self._running.values() if e[2] <= now
                       and (self.max_hold is None or now - e[1] < self.max_hold)]
            for i in range(0, len(due), MAX_LIMIT):
                self._extend(due[i:i + MAX_LIMIT], now)

    def _extend(self, entries: list, now: float) -> None:
        try:
            settled = self._beater.extend(self.queue, [e[0].receipt for e in entries],
                                          self.lease)
        except Exception as e:  # any failure: the heartbeat thread must live on
            self.log.warning("extend failed: %s", e, extra={"queue": self.queue,
                                                            "error": str(e)})
            return
        with self._lock:
            for e in entries:
                e[2] = now + self.lease / 3
            for receipt in settled.stale:
                entry = self._running.pop(receipt, None)
                if entry:
                    self.log.warning("lease of %s lapsed while working", entry[0].key,
                                     extra=fields(entry[0], STALE))

    def _acker(self) -> None:
        done = False
        while not done:
            batch = [self._acks.get()]
            while len(batch) < MAX_LIMIT:
                try:
                    batch.append(self._acks.get_nowait())
                except queues.Empty:
                    break
            done = None in batch
            batch = [item for item in batch if item is not None]
            if batch:
                self._ack(batch)

    def _ack(self, batch: list) -> None:
        """Acks (lease, settled) pairs in one request; fills in and signals each `settled`
        that a work thread waits on."""
        outcomes = {}
        try:
            settled = self.client.ack(self.queue, [lease.receipt for lease, _ in batch])
            outcomes = dict.fromkeys(settled.ok, ACK) | dict.fromkeys(settled.stale, STALE)
            for receipt in settled.stale:
                self.log.warning("ack of %s came too late: the lease had lapsed", receipt,
                                 extra={"queue": self.queue, "receipt": receipt,
                                        "outcome": STALE})
        except Exception as e:  # any failure: the acker thread must live on
            self.log.error("ack of %d messages failed: %s (they will be delivered again)",
                           len(batch), e, extra={"queue": self.queue, "error": str(e)})
        for lease, waiter in batch:
            if waiter is not None:
                waiter[1] = outcomes.get(lease.receipt, LAPSE)
                waiter[0].set()
