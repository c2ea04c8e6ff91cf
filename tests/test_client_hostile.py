"""restmq.client used by a hostile program, against a real server: a worker whose hooks raise
SystemExit or return nonsense, calls against a server that accepts and never answers, adds
whose replies are lost. Each test names what would be lost, duplicated or hung."""
from __future__ import annotations

import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import pytest_twisted

from restmq.client import Client, OutcomeUnknown, Unavailable, Worker
from tests.util import wait_until


class Running:
    """A Worker's run() in a thread (signals stay with the test's main thread)."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 15.0) -> bool:
        """True when run() returned within `timeout` after stop()."""
        self.worker.stop()
        self.thread.join(timeout)
        return not self.thread.is_alive()


def test_work_raising_systemexit_releases_the_message_and_stops_the_worker(H, redis):
    c = Client(H, timeout=10)
    c.add("exit", "quit")
    raised = threading.Event()

    def work(message):
        raised.set()
        raise SystemExit(3)

    worker = Worker(c, "exit", lease=60, wait=1, work=work)
    running = Running(worker)
    wait_until(raised.is_set, 10, "the job")
    # released at once, not held (and extended) by a thread that is gone
    wait_until(lambda: c.info("exit").pending == 1, 10, "the message released")
    assert c.info("exit").inflight == 0
    assert running.stop()
    assert (worker.processed, worker.failed) == (0, 1)


def test_after_raising_systemexit_stops_the_worker_gracefully(H, redis):
    c = Client(H, timeout=10)
    c.add_batch("after", ["1", "2", "3"])
    done = []

    class Stubborn(Worker):
        queue, lease, wait, concurrency = "after", 60, 1, 1

        def work(self, message):
            done.append(message.value)

        def after(self, message, outcome):
            raise SystemExit("after() wants out")

    running = Running(Stubborn(c))
    running.thread.join(15)  # run() returns by itself: no stop() called
    assert not running.thread.is_alive()
    # the job done was acked, the others never claimed (one thread: one at a time)
    assert done == ["1"]
    assert (c.info("after").pending, c.info("after").inflight) == (2, 0)


def test_fail_returning_nonsense_releases_and_the_worker_goes_on(H, redis):
    c = Client(H, timeout=10)
    c.add_batch("junk", ["bad", "good"])
    done = []

    class Odd(Worker):
        queue, lease, wait, concurrency = "junk", 60, 1, 1

        def work(self, message):
            if message.value == "bad" and message.deliveries == 1:
                raise ValueError("bad job")
            done.append(message.value)

        def fail(self, message, error):
            return "soon"

    running = Running(Odd(c))
    wait_until(lambda: sorted(done) == ["bad", "good"], 10, "both jobs, bad one retried")
    assert running.stop()
    assert c.info("junk").inflight == c.info("junk").pending == 0


# -- a server that accepts and never answers ----------------------------------------------------


class Silent:
    """Accepts connections, reads what comes, never answers; counts the connections."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self.listener.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def silent():
    stub = Silent()
    yield stub
    stub.close()


CALLS = {"add": lambda c: c.add("q", "v"), "add_batch": lambda c: c.add_batch("q", ["v"]),
         "claim": lambda c: c.claim("q"), "ack": lambda c: c.ack("q", ["r"]),
         "get": lambda c: c.get("q"), "health": lambda c: c.health()}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_call_to_a_server_that_never_answers_ends_within_its_timeout(silent, call):
    # a retry after a timeout would start another wait as long: the timeout bounds the call
    c = Client(silent.url, timeout=1, retries=3)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        CALLS[call](c)
    took = time.monotonic() - started
    assert len(silent.conns) == 1, f"{len(silent.conns)} connections in {took:.1f} s"
    assert took < 3.0  # 1 s, with room for a loaded machine (4 attempts took 4.7 s and more)
    c.close()


@pytest.mark.parametrize("call", ["add", "claim", "health"])
@pytest_twisted.ensureDeferred
async def test_a_tx_call_to_a_server_that_never_answers_ends_within_its_timeout(silent, call):
    from restmq.client import TxClient
    c = TxClient(silent.url, timeout=1, retries=3)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await CALLS[call](c)
    took = time.monotonic() - started
    assert len(silent.conns) == 1, f"{len(silent.conns)} connections in {took:.1f} s"
    assert took < 3.0
    await c.close()


# -- replies lost after the server did the work ---------------------------------------------------


class Dropper(BaseHTTPRequestHandler):
    """A protocol-2 server whose every POST is read, then its connection reset: the add may
    well have been stored, the client never hears of it."""
    protocol_version = "HTTP/1.1"
    keys: list = []

    def do_GET(self):
        body = b'{"status": "ok", "protocol": 2}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.keys.append(self.headers.get("Idempotency-Key"))
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def dropper():
    Dropper.keys = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Dropper)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("call", ["add", "add_batch"])
def test_an_add_whose_replies_were_all_lost_is_an_unknown_outcome_with_its_key(dropper, call):
    c = Client(dropper, timeout=10, retries=2)
    with pytest.raises(OutcomeUnknown) as lost:
        CALLS[call](c)
    # sent again with one key (a fourth time when the first went on the kept-alive connection
    # of /health); the caller gets that key to try again without a duplicate
    assert len(Dropper.keys) >= 3 and len(set(Dropper.keys)) == 1 and Dropper.keys[0]
    assert lost.value.idempotency_key == Dropper.keys[0]



# -- what after() is told --------------------------------------------------------------------------


def test_after_hears_stale_when_the_ack_came_after_the_lease_lapsed(H, redis):
    # the heartbeat stops extending after max_hold (as it would if every extend failed); the
    # job returns only once the server has taken the message back: its ack is stale
    c = Client(H, timeout=10)
    c.add("late", "slow job")
    outcomes = []

    class Slow(Worker):
        queue, lease, wait, max_hold = "late", 1, 1, 0.1

        def work(self, message):
            wait_until(lambda: c.info("late").inflight == 0, 15, "the lease to lapse")

        def after(self, message, outcome):
            outcomes.append(outcome)
            self.stop()

    running = Running(Slow(c))
    running.thread.join(20)
    assert not running.thread.is_alive()
    assert outcomes == ["stale"]
    assert c.info("late").pending == 1  # back in the queue, for the next worker


def test_after_hears_ack_once_the_ack_was_taken(H, redis):
    c = Client(H, timeout=10)
    c.add("fine", "quick job")
    seen = []

    class Quick(Worker):
        queue, lease, wait = "fine", 30, 1

        def work(self, message):
            pass

        def after(self, message, outcome):
            seen.append((outcome, c.info("fine").inflight))
            self.stop()

    running = Running(Quick(c))
    running.thread.join(20)
    assert seen == [("ack", 0)]  # told "ack" when the server had it


@pytest_twisted.ensureDeferred
async def test_tx_worker_stops_extending_a_hung_job_after_max_hold(H, redis):
    from twisted.internet import defer, reactor, task

    from restmq.client import TxClient, TxWorker
    hung = defer.Deferred()
    outcomes = []

    class Hung(TxWorker):
        queue, lease, wait, max_hold = "hung", 1, 1, 0.1

        def work(self, message):
            return hung  # never fires by itself

        def after(self, message, outcome):
            outcomes.append(outcome)

    c = TxClient(H, timeout=10)
    await c.add("hung", "job")
    worker = Hung(c)
    worker.start()

    async def until(pending, inflight):
        for _ in range(300):
            info = await c.info("hung")
            if (info.pending, info.inflight) == (pending, inflight):
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"still {info}")

    await until(0, 1)  # claimed
    await until(1, 0)  # given up by the heartbeat: the server takes the message back
    stopped = worker.stop()
    hung.callback(None)  # the job ends at last: its ack is stale
    await stopped
    assert outcomes == ["stale"]
    await c.close()


# -- a heartbeat that meets a hung extend ----------------------------------------------------------


class HoldFirstExtend(BaseHTTPRequestHandler):
    """Forwards every request to the real server, except the first POST /extend/, which is
    read and never answered: one extend lost in the network while the job runs on."""
    protocol_version = "HTTP/1.1"
    target = ""
    held = threading.Event()
    release = threading.Event()

    def _forward(self):
        import http.client
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command == "POST" and self.path.startswith("/extend/") and \
                not self.held.is_set():
            self.held.set()
            self.release.wait(60)
            self.close_connection = True
            return
        host, port = self.target.split(":")
        upstream = http.client.HTTPConnection(host, int(port), timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        upstream.request(self.command, self.path, body or None, headers)
        reply = upstream.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for k, v in reply.getheaders():
            if k.lower() not in ("connection", "content-length", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_POST = do_DELETE = _forward

    def log_message(self, *args):
        pass


def test_a_hung_extend_does_not_let_the_lease_lapse(H, redis):
    # The job runs longer than its lease. Its first extend is swallowed by the network; the
    # heartbeat must give up on it within a quarter of the lease and extend again, or the
    # lease lapses, the message goes back to the queue and the job's ack comes back stale.
    HoldFirstExtend.target = H.split("//", 1)[1].rstrip("/")
    HoldFirstExtend.held.clear()
    HoldFirstExtend.release.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), HoldFirstExtend)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        proxied = Client(f"http://127.0.0.1:{httpd.server_address[1]}", timeout=30)
        direct = Client(H, timeout=10)
        direct.add("beat", "long job")
        outcomes = []

        class Long(Worker):
            queue, lease, wait = "beat", 6, 1

            def work(self, message):
                wait_until(HoldFirstExtend.held.is_set, 10, "the first extend to be held")
                time.sleep(8)  # past the 6 s lease: only the extends after the lost one keep it

            def after(self, message, outcome):
                outcomes.append(outcome)
                self.stop()

        running = Running(Long(proxied))
        running.thread.join(30)
        assert outcomes == ["ack"]
        assert not running.thread.is_alive()
        info = direct.info("beat")
        assert (info.pending, info.inflight) == (0, 0)
    finally:
        HoldFirstExtend.release.set()
        httpd.shutdown()
        httpd.server_close()
