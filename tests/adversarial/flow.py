"""Rules of the adversarial tier for the flow features of issue 15: adds with a priority and a
delay, batches (some with a bad item), idempotent retries (one after the client dropped the
connection before reading the first reply), pops and claims, long polls parked on one process
and woken by an add on either (clients that leave while parked or mid-reply), and peeks.

They work on a queue of their own, `qf`, which no other rule touches, so that the model of
that queue can be exact: the rules run one after another, and `FlowBook` knows at every
moment which messages exist, when each can have become pending and where it stands in the
order consumers get it (priority levels first, 9 highest; first in, first out within a level,
a delayed message counted from when it is due). What it checks:

* every message a 200 acknowledged is, at each checkpoint, pending, delayed or in flight in
  Redis until a consumer got it, and nothing else of `qf` is there (a retry stored nothing
  twice, a refused batch stored nothing);
* a pop or claim returns only messages that exist and are due, none twice, in that order, and
  skips none that was surely pending when it was sent (it takes what is pending up to `limit`);
* a claim counts deliveries (a message a claim was bringing to a client that left comes back
  with its delivery counted; nothing is claimed for a waiter that left before the add);
* a long poll is woken by an add, and one add wakes one waiter;
* a peek shows the same order and writes nothing (the queue's keys dump the same after).

What README's "Batch pop" allows is allowed: a pop whose client reset mid-reply either gave its
messages back (all, with the delivery counted) or acked them (all), should the kernel have taken
the whole reply.
"""
from __future__ import annotations

import http.client
import json
import socket
import struct
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from hypothesis import strategies as st
from hypothesis.stateful import rule

from tests.adversarial.clients import REQUEST_TIMEOUT
from tests.adversarial.pipeline import Pipeline, request_bytes
from tests.adversarial.rules import SERVERS, maybe, servers, step
from tests.adversarial.system import within

QUEUE = "qf"
SLACK = 0.05  # Redis's clock against ours
DUE_MARGIN = 1.5  # a due message is pending by then (another process's tick: within a second)
TICK_MARGIN = 3.0
INF = float("inf")

priorities = st.integers(0, 9)
delays = st.sampled_from((0, 0, 0, 0, 1, 2))
items = st.lists(st.tuples(priorities, delays, st.booleans()), min_size=1, max_size=20)


@dataclass(eq=False)
class Msg:
    key: str
    value: str
    prio: int
    lo: float  # it cannot have become pending before this (due time, less slack)
    hi: float  # it is pending by then (unless consumed)
    group: tuple | None = None  # messages of one batch and one delay: pending in key order
    gone: bool = False
    loose: bool = False  # handed back to the head of its level: out of the add order
    deliveries: int = 0

    @property
    def n(self) -> int:
        return int(self.key.rsplit(":", 1)[1])


@dataclass
class Request:
    status: int | None
    headers: dict
    body: bytes
    sent: float
    replied: float

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> Request:
    """One request on a fresh connection, with the reply's headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    sent = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return Request(response.status, {k.lower(): v for k, v in response.getheaders()},
                       data, sent, time.monotonic())
    except (OSError, http.client.HTTPException):
        return Request(None, {}, b"", sent, time.monotonic())
    finally:
        conn.close()


class Waiter(Pipeline):
    """A long poll on a connection of its own (a tiny receive buffer: a reply that it does not
    read stays mid-way)."""

    def __init__(self, port: int, path: str, rcvbuf: int | None = None):
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(REQUEST_TIMEOUT)
        sock.connect(("127.0.0.1", port))
        self.on(sock)
        self.sent = time.monotonic()
        self.send(request_bytes("POST", path), [], 0.0)

    def reset(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


class FlowBook:
    """The exact model of `qf`; shares the main model's lock, history and problems."""

    def __init__(self, model):
        self.model = model
        self.msgs: dict[str, Msg] = {}
        self.values: dict[str, Msg] = {}
        self.idem: list[tuple[str, str, bytes | None, dict | None, list[str]]] = []
        self.fog = ""  # why the model can no longer be exact (a 503): checks stop
        self._groups = 0

    def log(self, text: str) -> None:
        self.model.log("flow: " + text)

    def problem(self, text: str) -> None:
        self.model.problem("flow: " + text)

    def foggy(self, what: str, status) -> bool:
        if status == 503 or status is None:
            if not self.fog:
                self.fog = f"{what} answered {status}"
                self.log(f"the model is no longer exact: {self.fog}")
            return True
        return False

    def value(self) -> str:
        return f"f{self.model.serial()}"

    def stored(self, keys: list[str], values: list[str], specs, sent: float,
               replied: float, batch: bool) -> None:
        if len(keys) != len(values) or len(set(keys)) != len(keys):
            self.problem(f"keys {keys} for {len(values)} values")
            return
        numbers = [int(k.rsplit(":", 1)[1]) for k in keys]
        if batch and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            self.problem(f"a batch's keys are not consecutive: {keys}")
        self._groups += 1
        for key, value, (prio, delay) in zip(keys, values, specs):
            if key in self.msgs:
                self.problem(f"{key} given to {value} and to {self.msgs[key].value} before")
                continue
            msg = Msg(key, value, prio, sent + delay - (SLACK if delay else 0),
                      replied + (delay + DUE_MARGIN if delay else 0),
                      (self._groups, delay) if batch else None)
            self.msgs[key] = self.values[value] = msg
        self.log(f"stored {keys}")

    def live(self) -> list[Msg]:
        return [m for m in self.msgs.values() if not m.gone]

    # -- order ------------------------------------------------------------------------------

    @staticmethod
    def before(a: Msg, b: Msg) -> bool:
        """Whether `a` surely comes before `b` for consumers."""
        if a.loose or b.loose:
            return False
        if a.prio != b.prio:
            return a.prio > b.prio
        if a.group is not None and a.group == b.group:
            return a.n < b.n
        return a.hi < b.lo

    def check_order(self, what: str, got: list[Msg]) -> None:
        for i, a in enumerate(got):
            for b in got[i + 1:]:
                if self.before(b, a):
                    self.problem(f"{what}: {a.key} (priority {a.prio}) came before {b.key} "
                                 f"(priority {b.prio})")

    def check_reply(self, what: str, pairs: list[tuple[str, str]], sent: float,
                    replied: float, limit: int | None) -> list[Msg]:
        """The messages (key, value) a pop, claim or peek returned, sent at `sent`; with
        `limit`, nothing surely pending then may be left out (None: a woken long poll, which
        took what was pending at a moment we do not know)."""
        got = []
        for key, value in pairs:
            msg = self.msgs.get(key)
            if msg is None or msg.value != value:
                if self.values.get(value) is None or not self.fog:
                    self.problem(f"{what}: {key}={value!r} is no message of ours")
                continue
            if msg.gone:
                self.problem(f"{what}: {key} again, although it was consumed")
            if msg.lo > replied:
                self.problem(f"{what}: {key} {msg.lo - replied:.2f} s before it was due")
            if msg in got:
                self.problem(f"{what}: {key} twice")
            got.append(msg)
        self.check_order(what, got)
        if limit is None or self.fog:
            return got
        for msg in self.live():
            if msg in got or msg.hi >= sent or msg.loose:
                continue
            if len(got) < limit:
                self.problem(f"{what}: {msg.key} was pending and left out of a reply of "
                             f"{len(got)} < {limit}")
            elif any(self.before(msg, g) for g in got):
                self.problem(f"{what}: {msg.key} (priority {msg.prio}) was skipped")
        return got

    # -- the verdict -------------------------------------------------------------------------

    def verdict(self, redis) -> list[str]:
        """Every live message is pending, delayed or in flight; nothing else of ours is."""
        places = {}
        for key in redis("LRANGE", f"{QUEUE}:queue", 0, -1) or []:
            places.setdefault(key, []).append("pending")
        for name in ("priority", "delayed", "inflight"):
            for key in redis("ZRANGE", f"{QUEUE}:{name}", 0, -1) or []:
                places.setdefault(key, []).append(name)
        problems = []
        for key, where in places.items():
            if len(where) > 1:
                problems.append(f"flow: {key} is {where} at once")
            msg = self.msgs.get(key)
            if msg is None and not self.fog:
                problems.append(f"flow: {key} ({redis('GET', key)!r}) is {where[0]}, and no "
                                "acknowledged add or batch stored it")
            elif msg is not None and msg.gone:
                problems.append(f"flow: {key} is {where[0]} after a consumer got it")
        if not self.fog:
            for msg in self.live():
                if msg.key not in places:
                    problems.append(f"flow: {msg.key} ({msg.value}) is lost: neither pending, "
                                    "delayed nor in flight, and no consumer got it")
        return problems


class FlowRules:
    """Mixed into the state machine of test_adversarial.py."""

    @property
    def flow(self) -> FlowBook:
        if getattr(self, "_flow", None) is None or self._flow.model is not self.model:
            self._flow = FlowBook(self.model)
        return self._flow

    def flow_verdict(self) -> list[str]:
        return self.flow.verdict(self.system.redis)

    # -- adds ------------------------------------------------------------------------------

    def flow_add_one(self, via: int, prio: int, delay: int, key: str | None = None,
                     value: str | None = None) -> Request:
        value = value or self.flow.value()
        form = {"value": value, "priority": prio, "delay": delay}
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if key:
            headers["Idempotency-Key"] = key
        body = urlencode(form).encode()
        reply = request(self.port(via), "POST", f"/q/{QUEUE}", body, headers)
        what = f"add {value} priority {prio} delay {delay} via s{via}" + \
            (f" key {key}" if key else "")
        self.flow.log(f"{what} -> {reply.status} {reply.body[:40]!r}")
        if reply.status == 200 and not reply.headers.get("idempotent-replayed"):
            self.flow.stored([reply.body.decode().strip()], [value], [(prio, delay)],
                             reply.sent, reply.replied, batch=False)
        elif not self.flow.foggy(what, reply.status) and reply.status != 200:
            self.flow.problem(f"{what}: {reply.status} {reply.body[:200]!r}")
        if key and reply.status == 200:
            self.flow.idem.append((key, "add", body, headers, [reply.body.decode().strip()]))
        return reply

    @staticmethod
    def batch_items(values, specs, bad: int | None):
        out = []
        for value, (prio, delay, plain) in zip(values, specs):
            if plain and not prio and not delay:
                out.append(value)
            else:
                out.append({"value": value, "priority": prio, "delay": delay})
        if bad is not None:
            out[bad % len(out)] = {"value": "bad", "priority": 10} if bad % 2 else \
                {"value": "bad", "delay": -1}
        return out

    def flow_batch_one(self, via: int, specs, bad: int | None, key: str | None) -> None:
        values = [self.flow.value() for _ in specs]
        body = json.dumps(self.batch_items(values, specs, bad)).encode()
        headers = {"Idempotency-Key": key} if key else {}
        counter = self.system.redis("GET", f"{QUEUE}:UUID")
        reply = request(self.port(via), "POST", f"/batch/{QUEUE}", body, headers)
        what = f"batch of {len(specs)} via s{via}" + (f" key {key}" if key else "") + \
            (f" bad item {bad % len(specs)}" if bad is not None else "")
        self.flow.log(f"{what} -> {reply.status} {reply.body[:80]!r}")
        if self.flow.foggy(what, reply.status):
            return
        if bad is not None:
            field = "priority" if bad % 2 else "delay"
            expected = {"error": f"invalid argument: messages[{bad % len(specs)}].{field}"}
            if reply.status != 400 or reply.json() != expected:
                self.flow.problem(f"{what}: {reply.status} {reply.body[:200]!r}, expected 400 "
                                  f"{expected}")
            if self.system.redis("GET", f"{QUEUE}:UUID") != counter:
                self.flow.problem(f"{what}: refused, yet {QUEUE}:UUID moved from {counter}")
            return
        keys = (reply.json() or {}).get("keys") if reply.status == 200 else None
        if not isinstance(keys, list):
            self.flow.problem(f"{what}: {reply.status} {reply.body[:200]!r}")
            return
        self.flow.stored(keys, values, [s[:2] for s in specs], reply.sent, reply.replied,
                         batch=True)
        if key:
            self.flow.idem.append((key, "batch", body, headers, keys))

    @rule(specs=items, via=servers, how=st.sampled_from(("adds", "batch", "batch", "bad")),
          idem=st.booleans(), bad=st.integers(0, 99))
    @step
    @maybe("flow")
    def flow_add(self, specs, via, how, idem, bad):
        """Adds with priorities and delays, one by one or as a batch (`bad`: one item bad)."""
        key = f"k{self.model.serial()}" if idem else None
        if how == "adds":
            for i, (prio, delay, _) in enumerate(specs[:6]):
                self.flow_add_one(via, prio, delay, key=key and f"{key}.{i}")
        else:
            self.flow_batch_one(via, specs, bad if how == "bad" else None, key)

    @rule(pick=st.integers(0, 999), via=servers,
          how=st.sampled_from(("same", "same", "other", "dropped")),
          prio=priorities, delay=delays)
    @step
    @maybe("flow")
    def flow_retry(self, pick, via, how, prio, delay):
        """An idempotent add or batch again: the same request is a replay of the first reply
        and stores nothing; another under the key is 422. `dropped`: a new idempotent add
        whose client drops the connection before reading the reply, then retries."""
        if how == "dropped" or not self.flow.idem:
            return self.flow_dropped_retry(via, prio, delay)
        key, kind, body, headers, keys = self.flow.idem[pick % len(self.flow.idem)]
        path = f"/q/{QUEUE}" if kind == "add" else f"/batch/{QUEUE}"
        if how == "other":
            body = body.replace(b"value=", b"value=other", 1) if kind == "add" else \
                body[:-1] + b', "other"]'
        counter = self.system.redis("GET", f"{QUEUE}:UUID")
        reply = request(self.port(via), "POST", path, body, headers)
        what = f"retry ({how}) of {kind} key {key} via s{via}"
        self.flow.log(f"{what} -> {reply.status} {reply.body[:80]!r} "
                      f"replayed={reply.headers.get('idempotent-replayed')}")
        if self.flow.foggy(what, reply.status):
            return
        if how == "other":
            if reply.status != 422 or reply.json() != {"error": "idempotency key reused"}:
                self.flow.problem(f"{what}: {reply.status} {reply.body[:200]!r}, expected 422")
        else:
            got = [reply.body.decode().strip()] if kind == "add" else \
                (reply.json() or {}).get("keys")
            if reply.status != 200 or got != keys or \
                    reply.headers.get("idempotent-replayed") != "true":
                self.flow.problem(f"{what}: {reply.status} {reply.body[:200]!r} "
                                  f"{reply.headers}, expected a replay of {keys}")
        if self.system.redis("GET", f"{QUEUE}:UUID") != counter:
            self.flow.problem(f"{what}: {QUEUE}:UUID moved from {counter}")

    def flow_dropped_retry(self, via: int, prio: int, delay: int) -> None:
        key = f"k{self.model.serial()}"
        value = self.flow.value()
        form = {"value": value, "priority": prio, "delay": delay}
        data = request_bytes("POST", f"/q/{QUEUE}", form).replace(
            b"Host: restmq\r\n", f"Host: restmq\r\nIdempotency-Key: {key}\r\n".encode())
        sent = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", self.port(via)), timeout=REQUEST_TIMEOUT)
        sock.sendall(data)
        # Reset before a byte of the reply was read, perhaps before the server read it all.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        self.flow.log(f"add {value} key {key} sent to s{via}, connection reset unread")
        reply = self.flow_add_one((via + 1) % SERVERS, prio, delay, key=key, value=value)
        if reply.status == 200 and reply.headers.get("idempotent-replayed"):
            # The first was stored: the replay names its key, which the model learns now.
            self.flow.stored([reply.body.decode().strip()], [value], [(prio, delay)],
                             sent, reply.replied, batch=False)

    # -- consumers -------------------------------------------------------------------------

    def flow_ack(self, via: int, msgs: list[Msg], receipts: list[str]) -> None:
        reply = request(self.port(via), "POST", f"/ack/{QUEUE}",
                        urlencode({"receipt": ",".join(receipts)}).encode(),
                        {"Content-Type": "application/x-www-form-urlencoded"})
        body = reply.json() if reply.status == 200 else None
        if self.flow.foggy("ack", reply.status):
            return
        if not isinstance(body, dict) or body.get("acked") != receipts:
            self.flow.problem(f"ack of {receipts}: {reply.status} {reply.body[:200]!r}")
        for msg in msgs:
            msg.gone = True

    def flow_received(self, kind: str, what: str, reply_status, body, sent, replied,
                      limit: int | None, via: int) -> list[Msg]:
        """Checks a pop's or claim's reply; a claim's messages are acked at once."""
        if self.flow.foggy(what, reply_status):
            return []
        if reply_status == 204:
            self.flow.check_reply(what, [], sent, replied, limit)
            self.flow.log(f"{what} -> 204")
            return []
        messages = body.get("messages") if isinstance(body, dict) else None
        if reply_status != 200 or not isinstance(messages, list) or not messages:
            self.flow.problem(f"{what}: {reply_status} {str(body)[:200]}")
            return []
        got = self.flow.check_reply(what, [(m.get("key"), m.get("value")) for m in messages],
                                    sent, replied, limit)
        self.flow.log(f"{what} -> {[m.key for m in got]}")
        if kind == "claim":
            for msg, m in zip(got, messages):
                if m.get("deliveries") != msg.deliveries + 1:
                    self.flow.problem(f"{what}: {msg.key} with {m.get('deliveries')} "
                                      f"deliveries, after {msg.deliveries}")
                msg.deliveries = m.get("deliveries") or msg.deliveries + 1
                msg.loose = False
            self.flow_ack(via, got, [m["receipt"] for m in messages])
        else:
            for msg in got:
                msg.gone = True
        return got

    def flow_pull(self, kind: str, via: int, limit: int) -> list[Msg]:
        path = f"/{kind}/{QUEUE}?limit={limit}" + ("&lease=5" if kind == "claim" else "")
        reply = request(self.port(via), "POST", path)
        return self.flow_received(kind, f"{kind} limit {limit} via s{via}", reply.status,
                                  reply.json(), reply.sent, reply.replied, limit, via)

    @rule(kind=st.sampled_from(("pop", "claim")), via=servers, limit=st.integers(1, 8))
    @step
    @maybe("flow")
    def flow_take(self, kind, via, limit):
        self.flow_pull(kind, via, limit)

    def flow_drain(self, via: int) -> None:
        for _ in range(20):
            if not self.flow_pull("pop", via, 100) or self.flow.fog:
                return

    @rule(kind=st.sampled_from(("pop", "claim")), wait=st.sampled_from((1, 1, 2, 3)),
          waiters=st.integers(1, 2), via=servers, add_via=servers, prio=priorities,
          leave=st.sampled_from(("stay", "stay", "parked", "midreply")))
    @step
    @maybe("flow")
    def flow_long_poll(self, kind, wait, waiters, via, add_via, prio, leave):
        """Long polls parked on the empty queue, then an add (perhaps on the other process):
        it wakes one of them. `parked`: the only waiter leaves before the add, which must
        stay pending, claimed by nobody. `midreply`: the only waiter does not read a large
        reply and resets: the messages come back (a pop's may have gone, all of them)."""
        self.flow_drain(via)
        if self.flow.fog:
            return
        if leave != "stay":
            waiters = 1
        # The waiters are read one after another, so a woken claim's ack can come up to `wait`
        # seconds after its reply: its lease outlasts that (a lapse would be a documented
        # duplicate, not a fault). Mid-reply, the one-second lease brings back what went out.
        lease = ""
        if kind == "claim":
            lease = "&lease=1" if leave == "midreply" else f"&lease={wait + 10}"
        limit = 4 if leave == "midreply" else 2
        path = f"/{kind}/{QUEUE}?wait={wait}&limit={limit}{lease}"
        parked = [Waiter(self.port(via), path, 4096 if leave == "midreply" else None)
                  for _ in range(waiters)]
        for waiter in parked:
            within(lambda: self.system.request_read(waiter.sock), 5.0)
        if leave == "parked":
            return self.flow_waiter_left(parked[0], via, add_via, kind, prio)
        if leave == "midreply":
            return self.flow_reset_mid_reply(parked[0], via, add_via, kind, prio)
        reply = self.flow_add_one(add_via, prio, 0)
        added = self.flow.msgs.get(reply.body.decode().strip()) if reply.status == 200 else None
        woken, others = [], []
        for i, waiter in enumerate(parked):
            answer = waiter.reply("POST")
            waiter.close()
            got = self.flow_received(kind, f"waiting {kind} #{i} via s{via}", answer.status,
                                     answer.json(), waiter.sent, answer.replied, None, via)
            woken += [msg for msg in got if msg is added]
            others += [msg for msg in got if msg is not added]
        if added is not None and not self.flow.fog:
            if len(woken) > 1:
                self.flow.problem(f"{added.key} woke {len(woken)} waiters")
            elif not woken and not others and reply.replied + 0.5 < parked[0].sent + wait:
                self.flow.problem(f"{added.key}, added {parked[0].sent + wait - reply.replied:.1f}"
                                  f" s before the waiters' wait ended, woke none of them")

    def flow_waiter_left(self, waiter: Waiter, via: int, add_via: int, kind: str,
                         prio: int) -> None:
        server = self.servers[via]
        sock = self.system.server_socket(server, waiter.sock.getsockname()[1])
        waiter.reset()
        if sock is None or not within(lambda: self.system.socket_closed(server, sock), 10.0):
            self.flow.log("the server was not seen closing the waiter's connection")
            return
        reply = self.flow_add_one(add_via, prio, 0)
        key = reply.body.decode().strip() if reply.status == 200 else None
        if key and self.system.redis("ZSCORE", f"{QUEUE}:inflight", key) is not None:
            self.flow.problem(f"{key} was claimed for a waiter that had left")
        # A claim must find it delivered never before.
        self.flow_pull("claim", add_via, 1)

    def flow_reset_mid_reply(self, waiter: Waiter, via: int, add_via: int, kind: str,
                             prio: int) -> None:
        values = [self.flow.value() + "|" + "x" * 200_000 for _ in range(4)]
        body = json.dumps([{"value": v, "priority": prio} for v in values]).encode()
        reply = request(self.port(add_via), "POST", f"/batch/{QUEUE}", body)
        keys = (reply.json() or {}).get("keys") if reply.status == 200 else None
        if not isinstance(keys, list):
            self.flow.foggy("a batch of large values", reply.status) or self.flow.problem(
                f"a batch of large values: {reply.status} {reply.body[:200]!r}")
            waiter.reset()
            return
        self.flow.stored(keys, values, [(prio, 0)] * 4, reply.sent, reply.replied, batch=True)
        # The reply starts to arrive: the server is writing it.
        within(lambda: waiter.sock.recv(1, socket.MSG_PEEK), 10.0)
        waiter.reset()
        self.flow.log(f"the waiting {kind} reset mid-reply")
        msgs = [self.flow.msgs[k] for k in keys]
        # What it had taken is given back (or acked, for a pop that got it all out), or,
        # for a claim whose reply went out, comes back when its one-second lease ends.
        if not within(lambda: not any(self.system.redis("ZSCORE", f"{QUEUE}:inflight", k)
                                      for k in keys), 1 + TICK_MARGIN + 1, 0.05):
            self.flow.problem(f"{keys} still in flight after the waiter left")
            return
        pending = set(self.system.redis("LRANGE", f"{QUEUE}:queue", 0, -1) or []) | \
            set(self.system.redis("ZRANGE", f"{QUEUE}:priority", 0, -1) or [])
        back = [m for m in msgs if m.key in pending]
        if kind == "claim" and len(back) != len(msgs) or back and len(back) != len(msgs):
            self.flow.problem(f"after the waiting {kind} reset mid-reply, only "
                              f"{[m.key for m in back]} of {keys} came back")
        for msg in msgs:
            if msg in back:
                msg.deliveries += 1
                msg.loose = True  # handed back to the head of its level
            else:
                msg.gone = True
        self.flow.log(f"back: {[m.key for m in back]}")

    # -- peek ------------------------------------------------------------------------------

    def flow_snapshot(self) -> dict:
        keys = self.system.redis("KEYS", f"{QUEUE}:*") or []
        return {key: self.system.redis("DUMP", key) for key in keys}

    @rule(via=servers, limit=st.sampled_from((3, 100)))
    @step
    @maybe("flow")
    def flow_peek(self, via, limit):
        """Pages through the pending messages: the model's order, and nothing written."""
        now = time.monotonic()
        quiet = all(m.hi + 0.5 < now or m.lo > now + 10 for m in self.flow.live())
        before = self.flow_snapshot() if quiet else None
        pairs, after, sent = [], "", time.monotonic()
        for _ in range(60):
            reply = request(self.port(via), "GET",
                            f"/peek/{QUEUE}?limit={limit}" + (f"&after={after}" if after else ""))
            if self.flow.foggy("peek", reply.status):
                return
            body = reply.json()
            if reply.status != 200 or not isinstance(body, dict):
                self.flow.problem(f"peek: {reply.status} {reply.body[:200]!r}")
                return
            pairs += [(m.get("key"), m.get("value"), m.get("priority"))
                      for m in body.get("messages", [])]
            after = body.get("next")
            if not after:
                break
        got = self.flow.check_reply(f"peek via s{via}", [p[:2] for p in pairs], sent,
                                    reply.replied, 10_000)
        self.flow.log(f"peek via s{via}: {[m.key for m in got]}")
        for key, _, prio in pairs:
            msg = self.flow.msgs.get(key)
            if msg is not None and msg.prio != prio:
                self.flow.problem(f"peek shows {key} at priority {prio}, added at {msg.prio}")
        if before is not None and time.monotonic() < now + 1.0:
            after_dump = self.flow_snapshot()
            changed = sorted(k for k in set(before) | set(after_dump)
                             if before.get(k) != after_dump.get(k))
            if changed:
                self.flow.problem(f"a peek changed {changed}")
