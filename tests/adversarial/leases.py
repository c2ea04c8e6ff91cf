"""What the adversarial model knows of claims, and its checks on them (a part of `model.Model`).

A claim leases messages: each lease is one delivery, named by its receipt, and it is *in
flight* until it is acknowledged (the message is then done: delivered never again), released
(pending again, or after its delay) or until it lapses (the server hands the message back,
next in line; the next claim counts one delivery more). So, per message:

* a delivery (claim, hard get, take, live consumer) that follows a lease comes only once that
  lease can be over: lapsed (not before the claim was sent plus its lease, or an extend's
  lease from when the extend was sent), or released; never after the lease was acked;
* a claim counts one delivery more than the previous lease of the message (more when a claim
  went unanswered: it may have leased the message unseen);
* an ack, extend or release answers each receipt in exactly one of its lists, in order: a
  receipt known to be over (acked, released, delivered again, purged) is stale; one whose lease
  cannot have ended yet is current (`acked`, `extended`, `released`), unless a request of
  unknown outcome may have ended it;
* at the verdict a claimed message is in flight (while its lease may run, plus the tick's
  margin), pending or delayed (its lease may be over), retired by an ack or a purge, in the
  dead-letter queue (once), or lost only in the ways the base model allows after it came back
  (it was pending again then);
* with `max_attempts` m (set through `/config/<q>`, with the dead-letter queue `<q>.dead`), a
  message is never claimed an (m+1)-th time, and a lease of the m-th delivery that ends (lapsed
  or released) sends the message to the dead-letter queue instead of back: a release answers
  `dead_lettered` exactly then, and the dead letter names the message's key, its last delivery
  count and why it came (`released` only after such a release).

An ack answered 503 (or not at all) may or may not have been applied: the message is then either
retired or comes back after its lease, as README's "Reliable workers" promises. The same holds
for a configuration change: until it is answered 200, the queue may have either setting.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

INF = float("inf")
SLACK = 0.05  # Redis's clock against ours over a few seconds
TICK_MARGIN = 3.0  # a lapsed lease is handed back within this (one tick a second, and retries)
RECEIPT_LISTS = {"ack": ("acked", "stale"), "extend": ("extended", "stale"),
                 "release": ("released", "dead_lettered", "stale")}


@dataclass(eq=False)
class Claim:
    n: int
    queue: str
    via: int
    limit: int
    lease: int
    sent: float
    replied: float | None = None
    status: int | None = None

    @property
    def unknown(self) -> bool:
        """It may have leased messages nobody saw (no reply yet, 503, none)."""
        return self.status not in (200, 204)


@dataclass(eq=False)
class Lease:
    claim: Claim
    add: object  # model.Add
    key: str
    receipt: str
    count: int
    earliest_end: float  # nobody else can get the message before this
    latest_end: float  # the lease has ended by then (the tick hands it back a little later)
    acked: float | None = None  # an ack answered `acked`
    maybe_acked: bool = False  # an ack went unanswered
    returned: float | None = None  # seen no longer leased after its end (handed back)
    dead_lettered: float | None = None  # a release answered `dead_lettered`
    released: float | None = None  # a release answered `released`
    delay: int = 0
    superseded: float | None = None  # the message was delivered again (seen then)
    stale: float | None = None  # a settle request answered it stale
    settles: list[str] = field(default_factory=list)  # what each settle request answered

    @property
    def known_over(self) -> str | None:
        if self.acked is not None:
            return "acked"
        if self.released is not None:
            return "released"
        if self.superseded is not None:
            return "delivered again"
        if self.stale is not None:
            return "answered stale before"
        if self.returned is not None:
            return "handed back"
        if self.dead_lettered is not None:
            return "dead-lettered"
        return None


@dataclass(eq=False)
class ConfigChange:
    n: int
    queue: str
    max_attempts: int  # 0: the configuration is deleted
    via: int
    sent: float
    replied: float | None = None
    status: int | None = None


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dead"


@dataclass(eq=False)
class Settle:
    n: int
    op: str  # ack, extend, release
    queue: str
    via: int
    receipts: list[str]
    leases: list[Lease | None]  # None: a receipt that names no lease of ours
    arg: int | None  # extend: lease; release: delay
    sent: float
    replied: float | None = None
    status: int | None = None


class LeaseBook:
    """Mixed into model.Model, whose lock, history and checks it shares."""

    def _init_leases(self) -> None:
        self.claims: list[Claim] = []
        # Those that may have leased messages nobody saw (in flight, 503, no reply): few, and
        # every delivery asks about them.
        self.unknown_claims: list[Claim] = []
        self.leases: list[Lease] = []
        self.by_receipt: dict[str, Lease] = {}
        self.settles: list[Settle] = []
        self.configs: list[ConfigChange] = []

    # -- claims ----------------------------------------------------------------------------------

    def claim_sent(self, queue: str, via: int, limit: int, lease: int) -> Claim:
        with self.lock:
            claim = Claim(self._next(), queue, via, limit, lease, time.monotonic())
            self.claims.append(claim)
            self.unknown_claims.append(claim)
            return claim

    def claim_replied(self, claim: Claim, status: int | None, body: bytes,
                      replied: float) -> list[Lease]:
        with self.lock:
            claim.status, claim.replied = status, replied
            if not claim.unknown:
                self.unknown_claims.remove(claim)
            what = f"claim#{claim.n} {claim.queue} limit {claim.limit} lease {claim.lease}s " \
                   f"via s{claim.via}"
            self._reply_checks(what, status, body, claim.sent, replied)
            if status == 204 and body == b"":
                self.log(f"{what} -> none")
                return []
            reply = _json(body) if status == 200 else None
            messages = reply.get("messages") if isinstance(reply, dict) else None
            if status == 200 and reply.get("queue") == claim.queue and \
                    isinstance(messages, list) and 1 <= len(messages) <= claim.limit:
                got = [self._leased(claim, m, replied) for m in messages]
                self.log(f"{what} -> " + " ".join(
                    f"{lease.key}#{lease.count}" for lease in got if lease))
                return [lease for lease in got if lease]
            self.log(f"{what} -> {status}")
            if status not in (503, None):
                self.problem(f"{what}: unexpected reply {status} {body[:200]!r}")
            return []

    def _leased(self, claim: Claim, message, at: float) -> Lease | None:
        try:
            key, value, receipt, count = (message["key"], message["value"],
                                          message["receipt"], message["deliveries"])
            number, count_in_receipt = receipt.split(".")[:2]
            assert f"{claim.queue}:{number}" == key and int(count_in_receipt) == count
        except (KeyError, TypeError, ValueError, AssertionError):
            self.problem(f"claim#{claim.n}: malformed message {message!r}")
            return None
        add = self.by_ident.get(str(value).split("|", 1)[0])
        if add is None or add.queue != claim.queue:  # _receive reports it
            self._receive(f"claim#{claim.n}", False, claim.queue, key, str(value), at)
            return None
        lease = Lease(claim, add, key, receipt, count, claim.sent + claim.lease - SLACK,
                      at + claim.lease)
        previous = self.last_lease(add)
        expected = 1 if previous is None else previous.count + 1
        since = add.sent if previous is None else previous.claim.sent
        unseen = [c for c in self.unknown_claims if c is not claim and c.queue == claim.queue
                  and c.sent < at and (c.replied or INF) > since]
        # Live delivery forgets a popped message's count, and a roundrobin pop that nobody
        # can take puts the message back without it (docs/redis-layout.md, "pop batch", step
        # 3, and "requeue"): it is then claimed as new.
        reset = count == 1 and previous is not None and \
            self._maybe_put_back(add, previous.earliest_end, at)
        if (count < expected and not reset) or (count > expected and not unseen):
            self.problem(f"claim#{claim.n}: {key} comes with {count} deliveries, the "
                         f"previous lease had {previous.count if previous else 0}")
        limits = self.possible_max_attempts(claim.queue, claim.sent, at)
        if all(0 < m < count for m in limits):
            self.problem(f"claim#{claim.n}: {key} leased for the {count}th time, although "
                         f"max_attempts was {sorted(limits)} (it belongs in the dead-letter "
                         "queue)")
        self._receive(f"claim#{claim.n}", False, claim.queue, key, str(value), at, lease=lease)
        self.leases.append(lease)
        self.by_receipt[receipt] = lease
        return lease

    def _maybe_put_back(self, add, t0: float, t1: float) -> bool:
        """Whether a roundrobin pop can have taken the message and put it back in [t0, t1]."""
        return "roundrobin" in self.possible_policies(add.queue, t0, t1) and \
            self.earliest_pop(add, t0) < t1

    def last_lease(self, add) -> Lease | None:
        return next((r.lease for r in reversed(self.receipts.get(f"m{add.n}", ()))
                     if r.lease is not None), None)

    def redelivery_problem(self, lease: Lease, source: str, at: float) -> str | None:
        """Why a delivery of the leased message (seen at `at`) may not happen, if so."""
        if lease.acked is not None:
            return (f"{lease.key} was acked ({lease.receipt}, at {self.at(lease.acked)}) "
                    f"and delivered again to {source}")
        if lease.dead_lettered is not None:
            return (f"{lease.key} was dead-lettered ({lease.receipt}) and delivered again to "
                    f"{source}")
        limits = self.possible_max_attempts(lease.claim.queue, lease.claim.sent, at)
        if all(0 < m <= lease.count for m in limits):
            return (f"{lease.key} came back to {source} after its lease {lease.receipt} of "
                    f"delivery {lease.count}, although max_attempts was {sorted(limits)} (it "
                    "belongs in the dead-letter queue)")
        # A release or extend still waiting for its reply may have ended the lease already.
        earliest = min([lease.earliest_end] + [
            s.sent + s.arg - SLACK for s in self.settles
            if s.op in ("release", "extend") and lease in s.leases and s.sent <= at
            and s.replied is None])
        if at < earliest:
            return (f"{lease.key} was delivered to {source} while its lease {lease.receipt} "
                    f"ran (it cannot end before {self.at(earliest)})")
        return None

    def possibly_claimed(self, add) -> bool:
        """Whether a claim may have held the message (it may come back out of order)."""
        return self.last_lease(add) is not None or any(
            c.queue == add.queue and (c.replied or INF) > add.sent
            for c in self.unknown_claims)

    # -- ack, extend, release --------------------------------------------------------------------

    def settle_sent(self, op: str, queue: str, via: int, receipts: list[str],
                    arg: int | None = None) -> Settle:
        with self.lock:
            # A receipt of another queue's lease names nothing here.
            leases = [lease if lease is not None and lease.claim.queue == queue else None
                      for lease in map(self.by_receipt.get, receipts)]
            settle = Settle(self._next(), op, queue, via, receipts, leases, arg,
                            time.monotonic())
            self.settles.append(settle)
            return settle

    def settle_replied(self, settle: Settle, status: int | None, body: bytes,
                       replied: float) -> None:
        with self.lock:
            settle.status, settle.replied = status, replied
            what = f"{settle.op}#{settle.n} {settle.queue} {settle.receipts}" + \
                (f" ({settle.arg}s)" if settle.arg is not None else "") + f" via s{settle.via}"
            self._reply_checks(what, status, body, settle.sent, replied)
            answers = self._answers(settle, what, status, body)
            self.log(f"{what} -> {status} {answers or ''}")
            for receipt, lease in zip(settle.receipts, settle.leases):
                outcome = answers.get(receipt) if answers else None
                if lease is not None:
                    lease.settles.append(f"{settle.op}#{settle.n}:{outcome}")
                self._settled(settle, receipt, lease, outcome, replied)

    def _answers(self, settle: Settle, what: str, status, body) -> dict[str, str] | None:
        """receipt -> the list it is in; None when the outcome is unknown."""
        if status != 200:
            if status not in (503, None):
                self.problem(f"{what}: unexpected reply {status} {body[:200]!r}")
            return None
        reply = _json(body)
        lists = RECEIPT_LISTS[settle.op]
        if not isinstance(reply, dict) or reply.get("queue") != settle.queue or \
                set(reply) != {"queue", *lists}:
            self.problem(f"{what}: malformed reply {body[:300]!r}")
            return None
        answers, order = {}, {r: i for i, r in enumerate(settle.receipts)}
        for name in lists:
            items = reply[name]
            if settle.op == "extend" and name == "extended":
                items = [item.get("receipt") if isinstance(item, dict) else item
                         for item in items]
            if [order.get(r, -1) for r in items] != sorted(order.get(r, -1) for r in items):
                self.problem(f"{what}: {name} out of order: {items}")
            for receipt in items:
                if receipt not in order or receipt in answers:
                    self.problem(f"{what}: {name} holds {receipt!r} unasked or twice")
                answers[receipt] = name
        if set(answers) != set(order):
            self.problem(f"{what}: receipts left unanswered: {set(order) - set(answers)}")
        return answers

    def _settled(self, settle: Settle, receipt: str, lease: Lease | None, outcome: str | None,
                 replied: float) -> None:
        what = f"{settle.op}#{settle.n} of {receipt}"
        if outcome is None:  # unknown: it may have been applied
            if lease is not None:
                self._may_have_applied(settle, lease)
            return
        if outcome == "stale":
            if lease is not None and not self._may_be_over(lease, settle, replied):
                self.problem(f"{what}: stale, yet its lease cannot have ended (not before "
                             f"{self.at(lease.earliest_end)}) and nothing else ended it")
            if lease is not None and lease.stale is None:
                lease.stale = replied
            return
        if lease is None:
            self.problem(f"{what}: {outcome}, a receipt that names no lease")
            return
        over = lease.known_over or self._purged_surely(lease, settle.sent)
        if over == "delivered again" and outcome == "released" and \
                lease.superseded >= settle.sent:
            over = None  # the message came back once this release had put it back
        if over:
            self.problem(f"{what}: {outcome}, although that lease was over ({over})")
        if settle.op == "release":
            self._last_attempt(settle, lease, outcome, what)
        if outcome == "dead_lettered":
            lease.dead_lettered = replied
        elif outcome == "acked":
            lease.acked = replied
        elif outcome == "extended":
            lease.earliest_end = settle.sent + settle.arg - SLACK
            lease.latest_end = replied + settle.arg
        elif outcome == "released":
            lease.released, lease.delay = replied, settle.arg
            lease.earliest_end = settle.sent + settle.arg - SLACK
            lease.latest_end = replied + settle.arg

    def _last_attempt(self, settle: Settle, lease: Lease, outcome: str, what: str) -> None:
        """A release of a message's `max_attempts`-th delivery dead-letters it; of an earlier
        one, puts it back."""
        limits = self.possible_max_attempts(settle.queue, settle.sent, settle.replied)
        last = [0 < m <= lease.count for m in limits]
        if outcome == "dead_lettered" and not any(last):
            self.problem(f"{what}: dead-lettered at delivery {lease.count}, although "
                         f"max_attempts was {sorted(limits)}")
        if outcome == "released" and all(last):
            self.problem(f"{what}: released at delivery {lease.count}, although max_attempts "
                         f"was {sorted(limits)} (it belongs in the dead-letter queue)")

    def _may_have_applied(self, settle: Settle, lease: Lease) -> None:
        if settle.op == "ack":
            lease.maybe_acked = True
        elif settle.op in ("extend", "release"):
            lease.earliest_end = min(lease.earliest_end, settle.sent + settle.arg - SLACK)
            lease.latest_end = max(lease.latest_end, (settle.replied or INF) + settle.arg)
            lease.delay = max(lease.delay, settle.arg if settle.op == "release" else 0)

    def _may_be_over(self, lease: Lease, settle: Settle, replied: float) -> bool:
        earlier_unknown = any(s.status != 200 and s.sent < replied and lease in s.leases
                              for s in self.settles if s is not settle)
        return (replied >= lease.earliest_end or lease.known_over is not None or
                earlier_unknown or self._purged_before(lease, replied) is not None)

    def _purged_before(self, lease: Lease, t: float) -> str | None:
        """A purge that may have run between the claim and `t` (it ends every lease)."""
        for purge in self.purges:
            if purge.queue == lease.claim.queue and purge.status in (200, 503, None) and \
                    purge.sent < t and (purge.replied or INF) > lease.claim.sent:
                return f"purge#{purge.n}"
        return None

    def _purged_surely(self, lease: Lease, t: float) -> str | None:
        """A purge that ran after the claim and was answered before `t`."""
        for purge in self.purges:
            if purge.queue == lease.claim.queue and purge.status == 200 and \
                    purge.sent > (lease.claim.replied or INF) and purge.replied < t:
                return f"purged by purge#{purge.n}"
        return None

    def handed_back(self, lease: Lease) -> None:
        """The lease is seen over in Redis (its message no longer leased): any settle of its
        receipt from now on is stale."""
        with self.lock:
            if lease.returned is None:
                lease.returned = time.monotonic()

    def unseen_claims(self, queue: str, since: float) -> bool:
        return any(c.queue == queue and (c.replied or INF) > since
                   for c in self.unknown_claims)

    def unseen_lease_until(self, queue: str, since: float) -> float:
        """When the leases that claims of unknown outcome may have taken since `since` end
        at the latest (-inf without such claims)."""
        return max(((c.replied or INF) + c.lease for c in self.unknown_claims
                    if c.queue == queue and (c.replied or INF) > since),
                   default=-INF)

    # -- configuration ----------------------------------------------------------------------------

    def config_sent(self, queue: str, max_attempts: int, via: int) -> ConfigChange:
        with self.lock:
            change = ConfigChange(self._next(), queue, max_attempts, via, time.monotonic())
            self.configs.append(change)
            return change

    def config_replied(self, change: ConfigChange, status: int | None, body: bytes,
                       replied: float) -> None:
        with self.lock:
            change.status, change.replied = status, replied
            what = f"config#{change.n} {change.queue} max_attempts={change.max_attempts}" \
                   f" via s{change.via}"
            self.log(f"{what} -> {status} {body[:120]!r}")
            self._reply_checks(what, status, body, change.sent, replied)
            if status in (503, None):
                return
            reply = _json(body) if status == 200 else None
            if change.max_attempts:
                config = reply.get("config") if isinstance(reply, dict) else None
                good = isinstance(config, dict) and reply.get("queue") == change.queue and \
                    config.get("max_attempts") == change.max_attempts and \
                    config.get("dead_letter") == dead_letter_queue(change.queue)
            else:
                good = isinstance(reply, dict) and set(reply) == {"queue", "deleted"} and \
                    reply["queue"] == change.queue and isinstance(reply["deleted"], bool)
            if not good:
                self.problem(f"{what}: unexpected reply {status} {body[:200]!r}")

    def possible_max_attempts(self, queue: str, t0: float, t1: float) -> set[int]:
        """The values `max_attempts` of `queue` may have had at some moment of [t0, t1] (0
        for none). A change answered 503 (or not at all) may or may not have been stored."""
        before, during = {0}, set()
        for change in self.configs:
            if change.queue != queue or change.sent >= t1:
                continue
            if change.replied is not None and change.replied <= t0:
                before = {change.max_attempts} if change.status == 200 else \
                    before | {change.max_attempts}
            else:
                during.add(change.max_attempts)
        return before | during

    # -- the verdict ------------------------------------------------------------------------------

    def dead_letter_verdict(self, add, letters: list[tuple[str, str, dict | None]],
                            where: str | None, now: float) -> list[str]:
        """The verdict on a message found in its queue's dead-letter queue (`letters`: the
        dead letters of its value, as (key, value, origin)); `where` it is in its own queue
        besides."""
        receipts = self.receipts.get(f"m{add.n}", [])
        lease = receipts[-1].lease if receipts else None
        label = f"{add.key} (m{add.n}), dead-lettered as {[k for k, _, _ in letters]}"
        if len(letters) > 1:
            return [f"{label}: more than once"]
        letter, value, origin = letters[0]
        problems = []
        if where:
            problems.append(f"{label}: and {where} in {add.queue} too")
        if value != add.value:
            problems.append(f"{label}: with a corrupted value")
        if not isinstance(origin, dict) or origin.get("queue") != add.queue or \
                origin.get("key") != add.key:
            problems.append(f"{label}: its origin is {origin!r}")
            return problems
        deliveries, reason = origin.get("deliveries"), origin.get("reason")
        unseen = self.unseen_claims(add.queue, add.sent if lease is None else lease.claim.sent)
        if lease is None:
            if not unseen:
                problems.append(f"{label}: never leased ({origin})")
            return problems
        if lease.acked is not None:
            problems.append(f"{label}: after it was acked ({lease.receipt})")
        if deliveries != lease.count and not (unseen and isinstance(deliveries, int) and
                                              deliveries > lease.count):
            problems.append(f"{label}: as delivered {deliveries} times, its last lease "
                            f"{lease.receipt} was delivery {lease.count}")
        limits = self.possible_max_attempts(add.queue, lease.claim.sent, now)
        if not isinstance(deliveries, int) or not any(0 < m <= deliveries for m in limits):
            problems.append(f"{label}: after {deliveries} deliveries, although max_attempts "
                            f"was {sorted(limits)}")
        releases = [s for s in lease.settles if s.startswith("release#") and
                    s.endswith((":dead_lettered", ":None"))]
        if reason == "released" and not releases:
            problems.append(f"{label}: as released, and no release can have done it "
                            f"({lease.settles})")
        ended = lease.released or lease.returned or lease.latest_end + TICK_MARGIN
        then = self.possible_max_attempts(add.queue, lease.claim.sent, ended)
        if reason == "max_attempts" and all(0 < m <= lease.count for m in then):
            problems.append(f"{label}: by a claim, although max_attempts was {sorted(then)} "
                            f"when its lease {lease.receipt} ended: that should have")
        if reason not in ("released", "lease_expired", "max_attempts"):
            problems.append(f"{label}: for an unknown reason {reason!r}")
        return problems


    def leased_verdict(self, add, lease: Lease, where: str | None, exists: bool, pttl: int,
                       now: float) -> tuple[str | None, float | None]:
        """The verdict on a message whose last delivery was `lease`: `where` it is (pending,
        inflight, delayed or None) and its value's state. Returns (a problem, or None) and,
        when the message is gone unexplained, the time from which it was pending again (for
        the base model's accounting of losses)."""
        label = f"{lease.key} (m{add.n}, last leased as {lease.receipt}, {lease.settles})"
        if lease.acked is not None:
            if where:
                return f"{label}: acked, yet {where}", None
            if not exists or pttl < 0:
                return f"{label}: acked, yet its value is {'gone' if not exists else 'kept'}", \
                    None
            return None, None
        if where == "inflight":
            until = max(lease.latest_end, self.faults_over(),
                        self.unseen_lease_until(lease.claim.queue, lease.earliest_end))
            if now > until + TICK_MARGIN:
                return f"{label}: still in flight {now - until:.1f} s after its lease " \
                       "ended", None
            return None, None
        if where == "delayed":
            if lease.delay == 0 or now > max(lease.latest_end,
                                             self.faults_over()) + TICK_MARGIN:
                return f"{label}: delayed, but no release asked for a delay that lasts", None
            return None, None
        if where == "pending":
            if now < lease.earliest_end:
                return f"{label}: pending while its lease runs", None
            return None, None
        if exists and pttl >= 0 and (lease.maybe_acked or
                                     self._purged_before(lease, INF) is not None):
            return None, None  # retired by the ack that went unanswered, or by a purge
        return None, lease.earliest_end


def _json(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return None
