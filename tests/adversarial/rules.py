"""Rules of the adversarial tier for pipelining (requests written together on one connection,
cut into segments at chosen bytes, perhaps with a live stream last and requests behind it),
mixed into the state machine of test_adversarial.py; and what every rule shares (`step`,
`allowed`, the queues)."""
from __future__ import annotations

import functools
import os

from hypothesis import strategies as st
from hypothesis.stateful import rule

from tests.adversarial.clients import LiveConsumer, call
from tests.adversarial.pipeline import Pipeline, request_bytes

# Leave out some moves to look past a known failure: fault names (`kill_pubsub`) or families
# (`kill`, `pause`, `sigstop`), `early_drop` (consumers that leave before their head), `stall`,
# `pipeline`.
WITHOUT = set(filter(None, os.environ.get("RESTMQ_ADVERSARIAL_WITHOUT", "").split(",")))


def allowed(*tags: str) -> bool:
    return not WITHOUT.intersection(tags)


SERVERS = 2
QUEUES = ("qa", "qb")
queues = st.sampled_from(QUEUES)
servers = st.integers(0, SERVERS - 1)
picks = st.integers(0, 999)
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
        return m.policy_sent(queue, kind, via), "POST", request_bytes(
            "POST", f"/p/{queue}", {"policy": kind}), m.policy_replied

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
              ("add", "add", "get", "take", "purge", "roundrobin", "broadcast")),
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
