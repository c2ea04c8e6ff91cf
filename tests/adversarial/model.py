"""The model of the adversarial tier: what the test did and saw, and the verdict on it.

Every add gets a unique value `m<n>` (optionally padded: `m<n>|xxx`). An add answered 200 with
its key is *acknowledged*, and must end up in exactly one of these places:

* still pending in Redis (its key in `<q>:queue`);
* received once by a pull consumer (hard get or take), and then by nobody else;
* received by live consumers: by one only when the queue could only have been roundrobin between
  the add and the delivery; under broadcast by each consumer at most once, and by *every*
  consumer that was registered before the add and stayed to the end, unless a fault (Redis paused
  or stopped, connections killed) overlapped the delivery;
* held by a claim, acknowledged by its worker, or in the dead-letter queue, as
  `leases.LeaseBook` checks (a claimed message may come back once its lease is over: what
  follows it is judged from then on);
* lost in one of the ways the server documents as at-most-once, which the model bounds:
  (a) a hard get or take answered 503 (or not at all) may have consumed one message it did not
      return: each such reply explains one message added before it, a hard get a *retired* one
      (value still readable by its key), a take a deleted one;
  (b) a live consumer the test closed (or the server cut after it stopped reading) may lose
      what was written to it but not read: only a message that Redis could have popped while
      that consumer was there (after the add was sent and a consumer of the queue connected,
      before the server was seen to close the connection, not while a CLIENT PAUSE held every
      script), and newer than the last message that consumer read (it receives in queue
      order);
  (c) a purge retires what is pending: a retired message added before a purge's reply;
  and the losses of live delivery the README documents besides: a batch that no consumer can
  take any more after a purge, broadcast batches missed while a pub/sub connection is down,
  roundrobin batches whose pop reply was lost (see `_documented_loss`).

Anything else is a failure, reported with the history. The model does no I/O: the test feeds it
events (from several threads) and, for the verdict, what Redis holds.
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from tests.adversarial.leases import TICK_MARGIN, Lease, LeaseBook

INF = float("inf")
SLOW_REPLY = 7.0  # the server's Redis budget is 5 s; later replies are noted (never failed)
UNAVAILABLE = ({"error": "redis unavailable"}, {"error": "redis error"})


def ident(value: str) -> str:
    return value.split("|", 1)[0]


def key_number(key: str) -> int:
    return int(key.rsplit(":", 1)[1])


@dataclass
class Add:
    n: int
    queue: str
    value: str
    via: int
    sent: float
    replied: float | None = None
    status: int | None = None
    key: str | None = None  # set when acknowledged


@dataclass
class Pull:
    n: int
    kind: str  # "get" (hard get) or "take"
    queue: str
    via: int
    sent: float
    replied: float | None = None
    status: int | None = None
    key: str | None = None

    @property
    def maybe_consumed_unseen(self) -> bool:
        """A 503 or no reply: Redis may have run it (connection cut after the script)."""
        return self.replied is not None and self.status in (503, None)


@dataclass
class Purge:
    n: int
    queue: str
    via: int
    sent: float
    replied: float | None = None
    status: int | None = None


@dataclass
class PolicyChange:
    n: int
    queue: str
    policy: str
    via: int
    sent: float
    replied: float | None = None
    status: int | None = None


@dataclass
class Fault:
    n: int
    kind: str
    started: float
    ended: float | None = None  # when the system was seen whole again
    pubsub: bool = False  # may cut or silence the servers' pub/sub connections
    lost_pops: int = 0  # how many popped messages may be lost with a pop's reply


@dataclass
class ScriptPause:
    """A CLIENT PAUSE: Redis runs no script from when it answered the command (`begun`) until
    at least `sent` + its length (`until`)."""
    begun: float
    until: float


@dataclass
class Receipt:
    source: str  # "get#3", "take#4", "claim#5" or a live consumer's name
    live: bool
    key: str
    at: float
    lease: Lease | None = None  # a delivery through a claim


@dataclass
class Live:
    name: str
    kind: str  # comet, sse, ws
    queue: str
    via: int
    opened: float
    status: int | None = None  # 200 (101 for ws) once streaming; None while unknown
    registered: float | None = None  # head read and the server's subscription seen in Redis
    dropped: float | None = None  # the test closed it (how: rst, fin, shut_wr, ws_close)
    how: str = ""
    gone: float | None = None  # the server was seen to close its end (INF: never seen)
    purged: float | None = None  # a purge answered 200 while it was registered
    ended: float | None = None  # the final null of a purge
    eof: float | None = None  # the server closed the stream
    stalled: bool = False  # it stopped reading at some point
    cut: float | None = None  # the server closed it (seen at this time) while it was stalled
    keys: list[int] = field(default_factory=list)  # key numbers received, in order
    # ... of the messages no claim can have held (a lease that ends puts its message back at
    # the head of the line, out of the order of the adds)
    ordered: list[int] = field(default_factory=list)

    @property
    def streaming(self) -> bool:
        return self.status in (200, 101)

    @property
    def active(self) -> bool:
        """Registered with the server as far as we know."""
        return (self.streaming and self.gone is None and self.purged is None
                and self.ended is None and self.eof is None)

    @property
    def to_the_end(self) -> bool:
        return self.registered is not None and self.active and self.dropped is None


class Model(LeaseBook):
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.t0 = time.monotonic()
        self.history: list[str] = []
        self.problems: list[str] = []
        self.failed = False  # a check has failed already
        self.notes: list[str] = []
        self.adds: list[Add] = []
        self.by_ident: dict[str, Add] = {}
        self.pulls: list[Pull] = []
        self.purges: list[Purge] = []
        self.policies: list[PolicyChange] = []
        self.faults: list[Fault] = []
        self.script_pauses: list[ScriptPause] = []
        self.lives: dict[str, Live] = {}
        self.receipts: dict[str, list[Receipt]] = defaultdict(list)
        self.ghosts: dict[str, Live] = {}  # queue of requests written behind a stream -> it
        self._n = 0
        self._init_leases()

    # -- bookkeeping -------------------------------------------------------------------------------

    def _next(self) -> int:
        self._n += 1
        return self._n

    def serial(self) -> int:
        with self.lock:
            return self._next()

    def at(self, t: float | None) -> str:
        return "-" if t is None else ("inf" if t == INF else f"{t - self.t0:.3f}")

    def log(self, text: str) -> None:
        with self.lock:
            self.history.append(f"{self.at(time.monotonic()):>8} {text}")

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)
            self.failed = True
            self.log("PROBLEM " + text)

    def _reply_checks(self, what: str, status: int | None, body: bytes, sent: float,
                      replied: float) -> None:
        if status is None:
            self.problem(f"{what}: no reply (the connection failed, or the client timeout "
                         f"passed) after {replied - sent:.1f} s")
        elif status == 503:
            try:
                reason = json.loads(body)
            except ValueError:
                reason = body[:100]
            if reason not in UNAVAILABLE:
                self.problem(f"{what}: 503 with body {body[:200]!r}")
        if replied - sent > SLOW_REPLY:
            self.notes.append(f"{what}: answered {status} after {replied - sent:.1f} s")

    # -- producers and pull consumers --------------------------------------------------------------

    def add_sent(self, queue: str, via: int, pad: int = 0) -> Add:
        with self.lock:
            n = self._next()
            value = f"m{n}" + ("|" + "x" * pad if pad else "")
            add = Add(n, queue, value, via, time.monotonic())
            self.adds.append(add)
            self.by_ident[f"m{n}"] = add
            return add

    def add_replied(self, add: Add, status: int | None, body: bytes, replied: float) -> None:
        with self.lock:
            add.status, add.replied = status, replied
            what = f"add#{add.n} m{add.n} to {add.queue} via s{add.via}"
            if status == 200:
                key = body.decode("utf-8", "replace").strip()
                if not key.startswith(add.queue + ":") or not key.rsplit(":", 1)[1].isdigit():
                    self.problem(f"{what}: 200 with body {body[:200]!r}")
                    return
                add.key = key
                self.log(f"{what} -> {key}")
                for receipt in self.receipts.get(f"m{add.n}", ()):
                    if receipt.key != key:
                        self.problem(f"m{add.n} was delivered as {receipt.key}, acked as {key}")
            else:
                self.log(f"{what} -> {status}")
                if status not in (503, None):
                    self.problem(f"{what}: unexpected status {status} {body[:200]!r}")
            self._reply_checks(what, status, body, add.sent, replied)

    def ghosts_behind(self, live: "Live", queue: str) -> None:
        """Requests to `queue` (which holds one message) are written behind `live` on its
        connection: while the stream runs, the server must neither answer nor run them."""
        with self.lock:
            self.ghosts[queue] = live
            self.log(f"requests to {queue} written behind {live.name}")

    def pull_sent(self, kind: str, queue: str, via: int) -> Pull:
        with self.lock:
            pull = Pull(self._next(), kind, queue, via, time.monotonic())
            self.pulls.append(pull)
            return pull

    def pull_replied(self, pull: Pull, status: int | None, body: bytes, replied: float) -> None:
        with self.lock:
            pull.status, pull.replied = status, replied
            what = f"{pull.kind}#{pull.n} {pull.queue} via s{pull.via}"
            reply = None
            if status == 200:
                try:
                    reply = json.loads(body)
                except ValueError:
                    reply = None
            if status == 200 and isinstance(reply, dict) and "value" in reply:
                pull.key = reply.get("key")
                self.log(f"{what} -> {pull.key} {ident(str(reply['value']))}")
                self._receive(f"{pull.kind}#{pull.n}", False, pull.queue, str(pull.key),
                              str(reply["value"]), replied)
            elif (pull.kind == "get" and status == 204) or \
                    (pull.kind == "take" and reply == {"error": "empty queue"}):
                self.log(f"{what} -> empty")
            else:
                self.log(f"{what} -> {status}")
                if status not in (503, None):
                    self.problem(f"{what}: unexpected reply {status} {body[:200]!r}")
            self._reply_checks(what, status, body, pull.sent, replied)

    def purge_sent(self, queue: str, via: int) -> Purge:
        with self.lock:
            purge = Purge(self._next(), queue, via, time.monotonic())
            self.purges.append(purge)
            return purge

    def purge_replied(self, purge: Purge, status: int | None, body: bytes,
                      replied: float) -> None:
        with self.lock:
            purge.status, purge.replied = status, replied
            what = f"purge#{purge.n} {purge.queue} via s{purge.via}"
            self.log(f"{what} -> {status} {body[:60]!r}")
            if status == 200:
                for live in self.lives.values():
                    if live.queue == purge.queue and live.active:
                        live.purged = replied
            if status not in (200, 503, None):
                self.problem(f"{what}: unexpected status {status} {body[:200]!r}")
            self._reply_checks(what, status, body, purge.sent, replied)

    def policy_sent(self, queue: str, policy: str, via: int) -> PolicyChange:
        with self.lock:
            change = PolicyChange(self._next(), queue, policy, via, time.monotonic())
            self.policies.append(change)
            return change

    def policy_replied(self, change: PolicyChange, status: int | None, body: bytes,
                       replied: float) -> None:
        with self.lock:
            change.status, change.replied = status, replied
            what = f"policy#{change.n} {change.queue}={change.policy} via s{change.via}"
            self.log(f"{what} -> {status}")
            if status == 200 and body.strip() != b"OK" or status not in (200, 503, None):
                self.problem(f"{what}: unexpected reply {status} {body[:200]!r}")
            self._reply_checks(what, status, body, change.sent, replied)

    # -- faults ----------------------------------------------------------------------------------

    def fault_started(self, kind: str, pubsub: bool = False, lost_pops: int = 0) -> Fault:
        with self.lock:
            fault = Fault(self._next(), kind, time.monotonic(), pubsub=pubsub,
                          lost_pops=lost_pops)
            self.faults.append(fault)
            self.log(f"fault#{fault.n} {kind} begins")
            return fault

    def fault_ended(self, fault: Fault, ended: float | None = None) -> None:
        with self.lock:
            fault.ended = time.monotonic() if ended is None else ended
            self.log(f"fault#{fault.n} {fault.kind} over (whole again at {self.at(fault.ended)})")

    def scripts_paused(self, begun: float, until: float) -> None:
        with self.lock:
            self.script_pauses.append(ScriptPause(begun, until))
            self.log(f"no script runs from {self.at(begun)} until at least {self.at(until)}")

    def faults_over(self) -> float:
        """When the last fault ended (-inf without faults; inf while one lasts)."""
        with self.lock:
            return max((INF if f.ended is None else f.ended for f in self.faults),
                       default=-INF)

    def _fault_during(self, t0: float, t1: float) -> Fault | None:
        for fault in self.faults:
            if fault.started < t1 and (fault.ended is None or fault.ended > t0):
                return fault
        return None

    # -- live consumers ---------------------------------------------------------------------------

    def live_opened(self, kind: str, queue: str, via: int) -> Live:
        with self.lock:
            live = Live(f"{kind}{self._next()}", kind, queue, via, time.monotonic())
            self.lives[live.name] = live
            self.log(f"{live.name} connects to s{via} for {queue}")
            return live

    def live_head(self, live: Live, status: int | None, body: bytes = b"") -> None:
        with self.lock:
            live.status = status
            self.log(f"{live.name} head: {status} {body[:80]!r}")
            if status not in (200, 101, 503, None):
                self.problem(f"{live.name}: unexpected status {status} {body[:200]!r}")

    def live_registered(self, live: Live) -> None:
        with self.lock:
            live.registered = time.monotonic()
            self.log(f"{live.name} registered")

    def live_stalled(self, live: Live) -> None:
        with self.lock:
            live.stalled = True
            self.log(f"{live.name} stops reading")

    def live_dropped(self, live: Live, how: str) -> None:
        with self.lock:
            live.dropped, live.how = time.monotonic(), how
            self.log(f"{live.name} dropped by the test ({how})")

    def live_gone(self, live: Live, seen: bool) -> None:
        with self.lock:
            live.gone = time.monotonic() if seen else INF
            self.log(f"{live.name} {'closed by the server' if seen else 'NOT seen closed'}")
            if not seen:
                self.problem(f"{live.name}: the server kept its end of the connection open "
                             "after the client closed it")

    def live_event(self, live: Live, kind: str, detail) -> None:
        now = time.monotonic()
        with self.lock:
            if kind == "message":
                key, value = detail
                after_end = live.ended is not None
                self._receive(live.name, True, live.queue, key, value, now, live)
                if after_end:
                    self.problem(f"{live.name} received {key} after its final null")
            elif kind == "end":
                self.log(f"{live.name} got the final null")
                if live.ended is not None:
                    self.problem(f"{live.name}: a second final null")
                if not any(p.queue == live.queue and p.sent < now and
                           (p.replied or INF) > live.opened for p in self.purges):
                    self.problem(f"{live.name}: a final null, and no purge of {live.queue} "
                                 "can have sent it")
                live.ended = now
            elif kind == "eof":
                live.eof = now
                self.log(f"{live.name} ended by the server: {detail}")
                if live.ended is None and live.dropped is None:
                    if live.stalled:  # documented: a consumer too far behind is cut
                        live.cut = now
                        self.notes.append(f"{live.name} was cut by the server after it had "
                                          "stopped reading")
                    else:
                        self.problem(f"{live.name}: the server ended the stream without a "
                                     f"null ({detail})")
            else:
                self.problem(f"{live.name}: malformed stream: {detail}")

    # -- deliveries ---------------------------------------------------------------------------------

    def _receive(self, source: str, live_flag: bool, queue: str, key: str, value: str,
                 at: float, live: Live | None = None, lease: Lease | None = None) -> None:
        name = ident(value)
        add = self.by_ident.get(name)
        if live is not None:
            self.log(f"{source} <- {key} {name}")
        if add is None or add.queue != queue:
            self.problem(f"{source} received {key}={value[:40]!r}, never added to {queue}")
            return
        if value != add.value:
            self.problem(f"{source} received {key} with a corrupted value")
        if add.key is not None and add.key != key:
            self.problem(f"{source} received m{add.n} as {key}, acked as {add.key}")
        earlier = self.receipts[name]
        previous = self.last_lease(add)
        # Deliveries since the message last came back from a lease (or since its add).
        since = [r for r in earlier[next((i + 1 for i in range(len(earlier) - 1, -1, -1)
                                          if earlier[i].lease), 0):]]
        if previous is not None and not since:
            if previous.superseded is None:
                previous.superseded = at
            problem = self.redelivery_problem(previous, source, at)
            if problem:
                self.problem(problem)
        twice = self._twice(add, source, live_flag, key, since, at, claim=lease is not None)
        if twice and (live_flag or any(r.live for r in since)) and \
                self._fault_during(add.sent, at):
            # Documented: a put-back whose reply was lost is tried again, and may bring back
            # a message that was delivered meanwhile.
            self.notes.append(twice + " (a put-back retried after a fault?)")
        elif twice:
            self.problem(twice)
        earlier.append(Receipt(source, live_flag, key, at, lease))
        if live is not None:
            number = key_number(key)
            live.keys.append(number)
            if self.possibly_claimed(add):
                return
            if live.ordered and number < live.ordered[-1] and not self._policy_changed(
                    queue, live.opened, at):
                self.problem(f"{source} received {key} after {queue}:{live.ordered[-1]}")
            live.ordered.append(number)

    def _twice(self, add: Add, source: str, live_flag: bool, key: str, since: list[Receipt],
               at: float, claim: bool) -> str | None:
        """Why this delivery is one too many after the deliveries `since` (those after the
        message last came back from a lease), if it is."""
        if not since:
            return None
        sources = [r.source for r in since]
        if source in sources:
            return f"{source} received {key} twice"
        if claim or not live_flag or any(not r.live for r in since):
            return f"{key} delivered twice: {sources + [source]}"
        back = self.last_lease(add)
        t0 = add.sent if back is None else back.earliest_end
        if "broadcast" not in self.possible_policies(add.queue, t0, since[0].at):
            return f"{key} delivered to several consumers under roundrobin: {sources + [source]}"
        return None

    def possible_policies(self, queue: str, t0: float, t1: float) -> set[str]:
        """The policies `queue` may have had at some moment of [t0, t1]. A change answered 503
        (or not at all) may or may not have been stored."""
        before, during = {"broadcast"}, set()
        for change in self.policies:
            if change.queue != queue or change.sent >= t1:
                continue
            if change.replied is not None and change.replied <= t0:
                before = {change.policy} if change.status == 200 else before | {change.policy}
            else:
                during.add(change.policy)
        return before | during

    def _policy_changed(self, queue: str, t0: float, t1: float) -> bool:
        return any(c.queue == queue and c.sent < t1 and (c.replied or INF) > t0
                   for c in self.policies)

    # -- what the test needs to know ----------------------------------------------------------------

    def active_queues(self, via: int) -> set[str]:
        """Queues with a consumer registered on server `via` as far as the model knows: the
        server should be subscribed to exactly their channels."""
        with self.lock:
            return {live.queue for live in self.lives.values() if live.via == via and live.active}

    def acked(self) -> list[Add]:
        with self.lock:
            return [add for add in self.adds if add.key is not None]

    # -- the verdict -------------------------------------------------------------------------------

    def verdict(self, pending: dict[str, list[str]],
                stored: Callable[[list[str]], dict[str, tuple[bool, int]]],
                held: dict[str, str] | None = None,
                dead: list[tuple[str, str, dict | None]] = (),
                now: float | None = None) -> list[str]:
        """Problems with acknowledged messages. `pending`: LRANGE of every queue; `stored`
        answers (exists, PTTL in ms) for the keys it is given; `held`: key -> `inflight` or
        `delayed` for the messages of every queue that are leased or wait for their delay;
        `dead`: the dead letters of every queue as (key, value, origin)."""
        now = time.monotonic() if now is None else now
        held = held or {}
        letters = defaultdict(list)
        for letter in dead:
            letters[ident(str(letter[1]))].append(letter)
        with self.lock:
            problems = []
            self._spent = {}  # per fault: popped messages already counted as lost with a reply
            pending_keys = set()
            for queue, keys in pending.items():
                if len(keys) != len(set(keys)):
                    problems.append(f"{queue}:queue holds a key twice: {keys}")
                pending_keys.update(keys)
            twice = pending_keys.intersection(held)
            if twice:
                problems.append(f"pending and leased or delayed at once: {sorted(twice)}")
            missing, leased = [], []  # (add, since when it was pending last)
            for add in self.acked():
                receipts = self.receipts.get(f"m{add.n}", [])
                where = held.get(add.key) or ("pending" if add.key in pending_keys else None)
                if f"m{add.n}" in letters:
                    problems += self.dead_letter_verdict(add, letters.pop(f"m{add.n}"), where,
                                                         now)
                    continue
                if receipts and receipts[-1].lease is not None:
                    leased.append((add, receipts[-1].lease, where))
                    continue
                last = max((i for i, r in enumerate(receipts) if r.lease), default=None)
                since = add.sent if last is None else receipts[last].lease.earliest_end
                after = receipts if last is None else receipts[last + 1:]
                if where in ("inflight", "delayed"):
                    problems += self._held_unclaimed(add, where, since, now)
                elif where and after:
                    text = f"{add.key} received by {[r.source for r in after]} and still pending"
                    if self._fault_during(add.sent, now):
                        self.notes.append(text + " (a put-back retried after a fault?)")
                    else:
                        problems.append(text)
                elif not where and not after:
                    missing.append((add, since))
                elif after and after[0].live:
                    problems += self._broadcast_complete(add, after, since)
            values = stored([add.key for add, _, where in leased if not where])
            for add, lease, where in leased:
                problem, since = self.leased_verdict(add, lease, where,
                                                     *values.get(add.key, (False, -2)), now)
                if problem:
                    problems.append(problem)
                if since is not None:
                    missing.append((add, since))
            problems += self._account(missing, stored([add.key for add, _ in missing]), now)
            for name, items in letters.items():  # none of an acknowledged add
                add = self.by_ident.get(name)
                if add is None or add.status not in (503, None) or \
                        any(not key.startswith(add.queue + ".dead:") for key, _, _ in items):
                    problems.append(f"dead letters {[k for k, _, _ in items]} hold {name}, "
                                    "which no add to their queue can have added")
            return problems

    def _held_unclaimed(self, add: Add, where: str, since: float, now: float) -> list[str]:
        """A message leased or delayed although no claim of ours holds it: a claim answered
        503 (or not at all) may have leased it, for that claim's lease."""
        until = self.unseen_lease_until(add.queue, since)
        if until > -INF:
            until = max(until, self.faults_over())
        if where == "inflight" and now <= until + TICK_MARGIN:
            return []
        return [f"{add.key} (m{add.n}) is {where}, and no claim can explain it"
                f"{self.hints(add, now)}"]

    def ghost_verdict(self, counters: dict[str, int],
                      pending: dict[str, list[str]]) -> list[str]:
        """Requests written behind a stream did nothing: their queue's counter still counts
        the one message added first, which is still pending. Once the server ended the stream
        (or refused it), the connection may serve what came behind it as new requests."""
        with self.lock:
            problems = []
            for queue, live in self.ghosts.items():
                if live.ended is not None or live.eof is not None or not live.streaming:
                    continue
                if counters.get(queue) != 1 or pending.get(queue) != [f"{queue}:1"]:
                    problems.append(
                        f"{queue}: counter {counters.get(queue)}, pending "
                        f"{pending.get(queue)}: a request written behind {live.name} ran")
            return problems

    def _broadcast_complete(self, add: Add, receipts: list[Receipt],
                            since: float) -> list[str]:
        """Under broadcast, every consumer registered before the message was pending (its
        add, or the end of its last lease) that stayed to the end received it, unless a fault
        overlapped the delivery."""
        first = receipts[0].at
        if self.possible_policies(add.queue, since, first) != {"broadcast"} or \
                self._fault_during(since, first):
            return []
        got = {r.source for r in receipts}
        return [f"{add.key}: broadcast consumer {live.name} (registered at "
                f"{self.at(live.registered)}) never received it; {sorted(got)} did"
                for live in self.lives.values()
                if live.queue == add.queue and live.to_the_end and live.registered < since
                and live.name not in got]

    def _account(self, missing: list[tuple[Add, float]], stored: dict[str, tuple[bool, int]],
                 now: float) -> list[str]:
        """`missing`: messages neither pending nor leased nor received since `since`, when
        they were pending last (their add, or the end of their last lease)."""
        retired, deleted, problems = [], [], []
        for add, since in missing:
            exists, pttl = stored.get(add.key, (False, -2))
            if exists and pttl >= 0:
                purge = next((p for p in self.purges if p.queue == add.queue and
                              p.replied is not None and p.replied > since and
                              p.status in (200, 503, None)), None)
                if purge is None:
                    retired.append((add, since))
            elif exists:
                problems.append(f"{add.key}: stored without expiry, yet neither pending nor "
                                f"delivered{self.hints(add, now)}")
            else:
                witness = self._broadcast_witness(add, since, now)
                if witness is not None:
                    problems.append(f"{add.key}: deleted (popped for live delivery) but not "
                                    f"received, although {witness.name} was registered under "
                                    f"broadcast throughout{self.hints(add, now)}")
                elif self._lossy_consumer(add, since) is None and \
                        self._documented_loss(add, since, now) is None:
                    deleted.append((add, since))
        problems += self._match(retired, "get", "retired (as by a hard get or purge) but "
                                "neither received nor explained by a purge or a 503", now)
        problems += self._match(deleted, "take", "deleted (as by a live pop or a take) but "
                                "received by no consumer", now)
        return problems

    def _documented_loss(self, add: Add, since: float, now: float) -> str | None:
        """Live-delivery losses the server documents besides a vanished consumer's:
        (c') a batch popped before a purge (or by a pop that Redis ran just after it) that no
        consumer can take any more is dropped with the purged messages: popped before the
        process heard of the purge, which is before its consumers saw their final null;
        (d) under broadcast, batches published while a process's pub/sub connection is cut or
        silent miss its consumers; (e) under roundrobin, a pop whose reply is lost (connection
        killed, or Redis stopped before it sent the reply) loses its batch: at most
        `lost_pops` messages per fault."""
        popped = self.earliest_pop(add, since)
        if popped == INF:
            return None
        for purge in self.purges:
            if purge.queue != add.queue or purge.replied is None or \
                    purge.status not in (200, 503, None):
                continue
            heard = max([purge.replied] + [live.ended for live in self.lives.values()
                                           if live.purged == purge.replied and live.ended])
            if popped < heard:
                return f"dropped with purge#{purge.n}"
        for fault in self.faults:
            ended = INF if fault.ended is None else fault.ended
            if popped >= ended:
                continue
            policies = self.possible_policies(add.queue, popped, ended)
            if fault.pubsub and "broadcast" in policies:
                return f"broadcast batch missed during fault#{fault.n}"
            spent = self._spent.get(fault.n, 0)
            if "roundrobin" in policies and spent < fault.lost_pops:
                self._spent[fault.n] = spent + 1
                return f"pop reply lost in fault#{fault.n}"
        return None

    def _broadcast_witness(self, add: Add, since: float, now: float) -> Live | None:
        if self.possible_policies(add.queue, since, now) != {"broadcast"} or \
                self._fault_during(since, now):
            return None
        return next((live for live in self.lives.values() if live.queue == add.queue and
                     live.to_the_end and live.registered < since), None)

    def _lossy_consumer(self, add: Add, since: float) -> Live | None:
        """A consumer the test closed (or the server cut after it stopped reading) that may
        have had this message in flight (bound b): the message can have been popped while that
        consumer was still there, and is newer than the last message it read (when no claim
        can have held it: one that did puts it back out of order)."""
        number = key_number(add.key)
        claimed = self.possibly_claimed(add)
        popped = self.earliest_pop(add, since)
        for live in self.lives.values():
            if live.queue != add.queue or (live.dropped is None and live.cut is None):
                continue
            closed = (live.gone or INF) if live.dropped is not None else live.cut
            if self._scripts_ran(max(popped, live.opened), closed) and \
                    (claimed or not live.ordered or number > live.ordered[-1]):
                return live
        return None

    def _scripts_ran(self, t0: float, t1: float) -> bool:
        """Whether Redis can have run a script at some moment of [t0, t1)."""
        t = t0
        while t < t1:
            pause = next((p for p in self.script_pauses if p.begun <= t < p.until), None)
            if pause is None:
                return True
            t = pause.until
        return False

    def earliest_pop(self, add: Add, since: float) -> float:
        """A lower bound of when live delivery can have popped this message: not before it
        was pending (`since`), nor before a live consumer of its queue had connected, nor while
        Redis was running no scripts."""
        t = since
        while True:
            later = self._first_consumer_since(add.queue, t)
            for pause in self.script_pauses:
                if pause.begun <= later < pause.until:
                    later = pause.until
            if later == t:
                return t
            t = later

    def _first_consumer_since(self, queue: str, t: float) -> float:
        starts = []
        for live in self.lives.values():
            if live.queue != queue or live.status not in (200, 101, None):
                continue
            left = min(x for x in (live.gone, live.ended, live.eof, live.cut, INF)
                       if x is not None)
            if left > t:
                starts.append(max(live.opened, t))
        return min(starts, default=INF)

    def _match(self, adds: list[tuple[Add, float]], kind: str, label: str,
               now: float) -> list[str]:
        """Each get (take) answered 503 or not at all explains one retired (deleted) message
        pending before its reply (bound a); earliest first, which is an optimal matching."""
        spare = sorted((p for p in self.pulls if p.kind == kind and p.maybe_consumed_unseen),
                       key=lambda p: p.replied)
        problems = []
        for add, since in sorted(adds, key=lambda pair: pair[1]):
            use = next((p for p in spare if p.queue == add.queue and p.replied > since), None)
            if use is not None:
                spare.remove(use)
            else:
                problems.append(f"{add.key} (m{add.n}): {label}{self.hints(add, now)}")
        return problems

    def hints(self, add: Add, now: float) -> str:
        """Events on the message's queue (and faults) between its add and now."""
        t0 = add.sent
        out = [f"added at {self.at(add.sent)}..{self.at(add.replied)} via s{add.via}"]
        for live in self.lives.values():
            if live.queue != add.queue:
                continue
            if (live.dropped or live.ended or live.eof or INF) > t0:
                out.append(f"{live.name}@s{live.via} opened {self.at(live.opened)} "
                           f"registered {self.at(live.registered)} status {live.status} "
                           f"dropped {self.at(live.dropped)} ({live.how}) gone "
                           f"{self.at(live.gone)} ended {self.at(live.ended)} eof "
                           f"{self.at(live.eof)} last key {live.keys[-1] if live.keys else '-'}")
        for purge in self.purges:
            if purge.queue == add.queue and (purge.replied or INF) > t0:
                out.append(f"purge#{purge.n} {self.at(purge.sent)}..{self.at(purge.replied)} "
                           f"-> {purge.status}")
        for change in self.policies:
            if change.queue == add.queue and (change.replied or INF) > t0:
                out.append(f"policy#{change.n} {change.policy} {self.at(change.sent)} -> "
                           f"{change.status}")
        for fault in self.faults:
            if (fault.ended or INF) > t0:
                out.append(f"fault#{fault.n} {fault.kind} {self.at(fault.started)}.."
                           f"{self.at(fault.ended)}")
        return "\n      " + "\n      ".join(out)

    def report(self, problems: list[str], limit: int = 600) -> str:
        with self.lock:
            lines = self.history[-limit:]
            skipped = len(self.history) - len(lines)
            return "\n".join(
                ["PROBLEMS:"] + [f"  - {p}" for p in problems]
                + [f"NOTES: {self.notes}" if self.notes else ""]
                + [f"HISTORY (times in s from the start{f', first {skipped} lines cut' if skipped else ''}):"]
                + lines)
