"""Rules of the adversarial tier for workers (claim, ack, extend, release, a lease left to
lapse, `max_attempts` with a dead-letter queue) and for pipelining (requests written together on one connection, cut into segments at
chosen bytes, perhaps with a live stream last and requests behind it), mixed into the state
machine of test_adversarial.py; and what every rule shares (`step`, `allowed`, the queues)."""
from __future__ import annotations

import functools
import os
import time

from hypothesis import strategies as st
from hypothesis.stateful import rule

from tests.adversarial.clients import LiveConsumer, call
from tests.adversarial.leases import TICK_MARGIN, Lease, dead_letter_queue
from tests.adversarial.pipeline import Pipeline, request_bytes
from tests.adversarial.system import within

# Leave out some moves to look past a known failure: fault names (`kill_pubsub`) or families
# (`kill`, `pause`, `sigstop`), `early_drop` (consumers that leave before their head), `stall`,
# `leases` (every worker rule), `pipeline`.
WITHOUT = set(filter(None, os.environ.get("RESTMQ_ADVERSARIAL_WITHOUT", "").split(",")))


def allowed(*tags: str) -> bool:
    return not WITHOUT.intersection(tags)


SERVERS = 2
QUEUES = ("qa", "qb")
queues = st.sampled_from(QUEUES)
servers = st.integers(0, SERVERS - 1)
picks = st.integers(0, 999)
leases = st.sampled_from((1, 2))  # seconds: short enough to lapse within a run
MAX_LIVE = 6  # open live consumers at a time


def step(function):
    """Logs each step in the model's history, so that a failure shows what came when."""
    @functools.wraps(function)
    def logged(self, **kwargs):
        self.model.log(f"STEP {function.__name__}("
                       + ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items())) + ")")
        return function(self, **kwargs)
    return logged


def maybe(tag: str):
    """A rule that does nothing when its family is left out (hypothesis still draws it, so
    that a seed picks the same steps)."""
    def wrap(function):
        @functools.wraps(function)
        def run(self, **kwargs):
            if allowed(tag):
                return function(self, **kwargs)
            self.model.log(f"{tag} left out: nothing to do")
        return run
    return wrap


class WorkerRules:
    """Workers: what the test claimed and has not settled yet is `held`."""

    held: list[Lease]
    settled: list[Lease]

    def claim_one(self, queue: str, via: int, limit: int, lease: int,
                  hold: bool = True) -> tuple[int | None, list[Lease]]:
        """The reply's status and the leases got, which are `held` unless told otherwise."""
        claim = self.model.claim_sent(queue, via, limit, lease)
        reply = call(self.port(via), "POST", f"/claim/{queue}", {"limit": limit, "lease": lease})
        got = self.model.claim_replied(claim, reply.status, reply.body, reply.replied)
        if hold:
            with self.model.lock:
                self.held += got
        return reply.status, got

    def settle_one(self, op: str, queue: str, via: int, chosen: list[Lease],
                   extra: list[str] = (), arg: int | None = None):
        receipts = [lease.receipt for lease in chosen] + list(extra)
        form = {"receipt": ",".join(receipts)}
        if op == "extend":
            form["lease"] = arg
        elif op == "release":
            form["delay"] = arg
        settle = self.model.settle_sent(op, queue, via, receipts, arg)
        reply = call(self.port(via), "POST", f"/{op}/{queue}", form)
        self.model.settle_replied(settle, reply.status, reply.body, reply.replied)
        return reply.status

    def take_held(self, pick: int, count: int) -> list[Lease]:
        """Up to `count` held leases of one queue, from the `pick`th on; no longer held."""
        with self.model.lock:
            if not self.held:
                self.model.log("no lease held: nothing to do")
                return []
            first = self.held[pick % len(self.held)]
            chosen = [lease for lease in self.held[self.held.index(first):]
                      if lease.claim.queue == first.claim.queue][:count]
            self.held = [lease for lease in self.held if lease not in chosen]
            return chosen

    def junk_receipts(self, queue: str, junk: str, pick: int) -> list[str]:
        """Receipts that must be answered stale: of a lease that was settled, of the other
        queue, or made up."""
        if junk == "settled":
            old = [lease.receipt for lease in self.settled if lease.claim.queue == queue]
            return [old[pick % len(old)]] if old else []
        if junk == "other_queue":
            other = [lease.receipt for lease in self.settled + self.held
                     if lease.claim.queue != queue]
            return [other[pick % len(other)]] if other else []
        if junk == "forged":
            return [f"{pick % 50 + 1}.1.{pick:016x}"]
        return []

    @rule(queue=queues, via=servers, limit=st.integers(1, 3), lease=leases,
          fresh=st.integers(0, 3))
    @step
    @maybe("leases")
    def claim(self, queue, via, limit, lease, fresh):
        """Claims, after `fresh` adds (which live consumers compete for)."""
        for _ in range(fresh):
            self.add_one(queue, via)
        self.claim_one(queue, via, limit, lease)

    @rule(queue=queues, via=servers, attempts=st.sampled_from((1, 2, 3, 0)))
    @step
    @maybe("leases")
    def configure(self, queue, via, attempts):
        """`max_attempts` with a dead-letter queue, or (0) no configuration at all."""
        change = self.model.config_sent(queue, attempts, via)
        if attempts:
            reply = call(self.port(via), "POST", f"/config/{queue}",
                         {"max_attempts": attempts, "dead_letter": dead_letter_queue(queue)})
        else:
            reply = call(self.port(via), "DELETE", f"/config/{queue}")
        self.model.config_replied(change, reply.status, reply.body, reply.replied)

    @rule(pick=picks, count=st.integers(1, 3), via=servers,
          junk=st.sampled_from(("none", "none", "settled", "other_queue", "forged")))
    @step
    @maybe("leases")
    def ack(self, pick, count, via, junk):
        """Acks held leases, perhaps with a receipt that must be stale among them."""
        chosen = self.take_held(pick, count)
        queue = chosen[0].claim.queue if chosen else ("qa", "qb")[pick % 2]
        extra = self.junk_receipts(queue, junk, pick)
        if chosen or extra:
            self.settle_one("ack", queue, via, chosen, extra)
        self.settled += chosen

    @rule(pick=picks, count=st.integers(1, 2), via=servers, lease=st.sampled_from((1, 2, 3)))
    @step
    @maybe("leases")
    def extend(self, pick, count, via, lease):
        chosen = self.take_held(pick, count)
        if chosen:
            self.settle_one("extend", chosen[0].claim.queue, via, chosen, arg=lease)
        self.held += chosen

    @rule(pick=picks, count=st.integers(1, 2), via=servers, delay=st.sampled_from((0, 0, 1)))
    @step
    @maybe("leases")
    def release(self, pick, count, via, delay):
        chosen = self.take_held(pick, count)
        if chosen:
            self.settle_one("release", chosen[0].claim.queue, via, chosen, arg=delay)
        self.settled += chosen

    @rule(pick=picks, via=servers, limit=st.integers(1, 3))
    @step
    @maybe("leases")
    def lapse(self, pick, via, limit):
        """A worker too slow: its lease ends, the server must hand the message back (seen in
        Redis), the next claim of the queue may get it again (one delivery more), and the
        worker's late ack must not ack the copy now held by another."""
        chosen = self.take_held(pick, 1)
        if not chosen:
            return
        lease = chosen[0]
        queue = lease.claim.queue
        # The servers hand leases back once Redis runs again after a fault.
        end = max(lease.latest_end, self.model.faults_over())
        back = within(lambda: not self.system.current(queue, lease.key, lease.receipt),
                      max(0.1, end + TICK_MARGIN - time.monotonic()), 0.05)
        if not back:
            self.model.problem(f"{lease.key}: still in flight {TICK_MARGIN} s after its lease "
                               f"{lease.receipt} ended (no later than "
                               f"{self.model.at(lease.latest_end)}) or the last fault")
            return
        self.model.handed_back(lease)
        self.model.log(f"{lease.key} is no longer leased")
        self.claim_one(queue, via, limit, 1)
        self.settle_one("ack", queue, via, [lease])
        self.settled.append(lease)


class PipelineRules:
    """Requests pipelined on one keep-alive connection."""

    def piped(self, kind: str, queue: str, via: int):
        """(the model's record, method, request bytes, how to record its reply)."""
        m = self.model
        if kind == "add":
            record = m.add_sent(queue, via)
            return record, "POST", request_bytes("POST", f"/q/{queue}", {"value": record.value}), \
                m.add_replied
        if kind in ("get", "take"):
            record = m.pull_sent(kind, queue, via)
            data = request_bytes("GET", f"/q/{queue}") if kind == "get" else request_bytes(
                "POST", "/queue", {"body": f'{{"cmd": "take", "queue": "{queue}"}}'})
            return record, ("GET" if kind == "get" else "POST"), data, m.pull_replied
        if kind == "purge":
            return m.purge_sent(queue, via), "DELETE", request_bytes("DELETE", f"/q/{queue}"), \
                m.purge_replied
        if kind in ("broadcast", "roundrobin"):
            return m.policy_sent(queue, kind, via), "POST", request_bytes(
                "POST", f"/p/{queue}", {"policy": kind}), m.policy_replied
        def claimed(record, status, body, replied):
            got = m.claim_replied(record, status, body, replied)
            with m.lock:
                self.held += got

        record = m.claim_sent(queue, via, 2, 1)
        return record, "POST", request_bytes("POST", f"/claim/{queue}",
                                             {"limit": 2, "lease": 1}), claimed

    @staticmethod
    def ghost_bytes(kind: str, queue: str) -> bytes:
        if kind == "add":
            return request_bytes("POST", f"/q/{queue}", {"value": "ghost"})
        if kind == "purge":
            return request_bytes("DELETE", f"/q/{queue}")
        return request_bytes("GET", f"/q/{queue}")

    def ghost_queue(self, live) -> str | None:
        """A queue of its own for the requests written behind a stream, holding one message:
        should one of them run, the queue's counter or its pending list shows it."""
        queue = f"ghost{live.name}"
        reply = call(self.port(live.via), "POST", f"/q/{queue}", {"value": "sentinel"})
        if reply.status != 200:
            self.model.log(f"{queue}: its sentinel add answered {reply.status}; no ghosts")
            return None
        self.model.ghosts_behind(live, queue)
        return queue

    @rule(ops=st.lists(st.tuples(st.sampled_from(
              ("add", "add", "get", "take", "purge", "roundrobin", "broadcast", "claim")),
              queues), min_size=2, max_size=8),
          via=servers, stream=st.sampled_from(("none", "none", "comet", "comet", "sse")),
          stream_queue=queues,
          behind=st.lists(st.sampled_from(("add", "add", "get", "purge")), max_size=3),
          cuts=st.lists(st.integers(0, 1 << 16), max_size=6),
          pause=st.sampled_from((0.0, 0.001, 0.01)))
    @step
    @maybe("pipeline")
    def pipeline(self, ops, via, stream, stream_queue, behind, cuts, pause):
        """Requests written at once on one connection, in pieces: each must be answered in
        order, once, as if sent alone. A stream last is served, and what is written behind it
        (an add, a hard get, a purge) is neither answered nor run; without a stream, a last
        request whose reply only it can get shows that no reply was left over."""
        pipe = Pipeline(self.port(via))
        items = [self.piped(kind, queue, via) for kind, queue in ops]
        data = b"".join(data for _, _, data, _ in items)
        live = client = None
        if stream != "none" and len(self.open_lives(streaming=False)) < MAX_LIVE:
            live = self.model.live_opened(stream, stream_queue, via)
            client = LiveConsumer(stream, self.port(via), stream_queue, self.on_event(live),
                                  sock=pipe.sock)
            data += client.request_bytes()
            ghosts = self.ghost_queue(live) if behind else None
            for kind in behind if ghosts else ():
                data += self.ghost_bytes(kind, ghosts)
        else:
            marker = f"marker{self.model.serial()}"
            data += request_bytes("GET", f"/stats/{marker}")
        pipe.send(data, cuts, pause)
        for record, method, _, replied in items:
            reply = pipe.reply(method)
            replied(record, reply.status, reply.body, reply.replied)
        if pipe.broken and not pipe.malformed:
            self.pipeline_broken(pipe, via)
        if live is None:
            self.pipeline_marker(pipe, marker)
        if pipe.malformed:
            self.model.problem(f"pipelined replies broke HTTP/1.1's framing: {pipe.broken}")
        for record, method, _, _ in items:
            if method == "DELETE" and record.status == 200:
                self.purge_ended(record)
        if live is None:
            pipe.close()
            return
        self.clients[live.name] = client
        client.preread = pipe.buffer
        self.read_head(live)
        if not client.streaming:
            self.drop(live, "fin")
        self.sync_subscriptions()

    def pipeline_broken(self, pipe: Pipeline, via: int) -> None:
        """What the client saw, the sockets and the server's last words when a pipeline's
        connection failed before its replies were all read: enough to tell a server that
        closed or reset it from one that never answered."""
        self.model.log(f"pipeline from :{pipe.local_port} broke: {pipe.broken}; sent "
                       f"{pipe.sent_bytes} bytes in {pipe.pieces} piece(s); sockets: "
                       f"{self.system.tcp_state(pipe.local_port)}")
        for line in self.servers[via].log().splitlines()[-12:]:
            self.model.log(f"s{via} log: {line[line.find(']') + 1:].strip()[:300]}")

    def pipeline_marker(self, pipe: Pipeline, marker: str) -> None:
        """The reply after the last request's is the marker's (`GET /stats/<marker>`): no
        request was answered twice, and none is still to be answered."""
        if pipe.broken:  # the requests' records have the problem already
            return
        reply = pipe.reply("GET")
        body = reply.json() if reply.status == 200 else None
        if reply.status == 503 or (isinstance(body, dict) and body.get("queue") == marker):
            self.model.log(f"{marker}: the pipeline's last reply is the marker's")
        else:
            self.model.problem(f"the reply after a pipeline's last request is not that of its "
                               f"marker {marker}: {reply.status} {reply.body[:200]!r} "
                               f"{pipe.broken}")
