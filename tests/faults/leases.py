"""Lease workers for the fault tier, and the record that judges their run.

Every delivery a worker sees is recorded with its receipt, its delivery count, when Redis
claimed it and until when it was leased (both on Redis's clock: `lease_until` from the reply,
minus the lease), and what became of the ack. The verdict (`LeaseLog.verdict`) then holds the
run to the promise of at-least-once:

* a message is delivered again only after its previous lease ended: the later claim ran at or
  after the earlier delivery's (last known) deadline, with a higher delivery count;
* a delivery whose ack answered `acked` is never followed by another delivery;
* so every duplicate is explained by a lapsed lease: the earlier delivery was never acked, or
  its ack came too late (answered `stale`, or lost to a fault: 503, a cut connection).

The History of tests/faults/history.py counts a value as consumed when an ack of it answered
`acked`: lost = an acknowledged add that no worker ever acked, duplicated = acked twice.

Workers are threads, or processes (`python -m tests.faults.leases URL...`) that print one JSON
line per event, so that a test can kill them with SIGKILL in the middle of a lease.
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.faults.history import History
from tests.faults.load import KeepAliveClient, RequestLog, Target, redis_client

RECEIPT = re.compile(r"(\d+)\.(\d+)\.([0-9a-f]{16})\Z")
ROOT = Path(__file__).resolve().parents[2]


def ident_of(value: str) -> str:
    return value.split("|", 1)[0]


@dataclass
class Delivery:
    value: str
    key: str
    receipt: str
    deliveries: int
    lease_ms: int  # the lease asked for
    lease_until: int  # ms, Redis's clock: the last deadline known (claim, then extends)
    worker: str
    lease_until_first: int = 0  # the deadline the claim set
    ack: str | None = None  # 'acked', 'stale', 'failed' (503, cut), or None: never sent
    ack_sent: float | None = None  # time.time() (the same host's clock as Redis's TIME)
    ack_replied: float | None = None
    extends: int = 0

    @property
    def claimed_at(self) -> int:
        """When Redis ran the claim (ms): the deadline less the lease."""
        return self.lease_until_first - self.lease_ms


@dataclass
class LeaseVerdict:
    deliveries: int
    values: int
    redelivered: list[str] = field(default_factory=list)  # values delivered more than once
    problems: list[str] = field(default_factory=list)
    stale_acks: int = 0
    failed_acks: int = 0
    never_acked: int = 0
    stale_sent_before_deadline: int = 0  # an ack sent in time that reached Redis too late

    def figures(self) -> dict:
        return {"deliveries": self.deliveries, "values_delivered": self.values,
                "redelivered": len(self.redelivered), "stale_acks": self.stale_acks,
                "failed_acks": self.failed_acks, "abandoned_leases": self.never_acked,
                "stale_sent_in_time": self.stale_sent_before_deadline,
                "problems": len(self.problems)}


class LeaseLog:
    """Every delivery of a run, thread-safe; acks are settled on the Delivery objects."""

    def __init__(self, history: History) -> None:
        self.history = history
        self._lock = threading.Lock()
        self.deliveries: list[Delivery] = []

    def claimed(self, reply: dict, lease_ms: int, worker: str) -> list[Delivery]:
        out = []
        for m in reply["messages"]:
            until = round(m["lease_until"] * 1000)
            out.append(Delivery(ident_of(m["value"]), m["key"], m["receipt"], m["deliveries"],
                                lease_ms, until, worker, lease_until_first=until))
        with self._lock:
            self.deliveries += out
        return out

    def extended(self, delivery: Delivery, reply: dict) -> bool:
        """Records an extend's reply; False when the receipt was stale."""
        for e in reply.get("extended", []):
            if e["receipt"] == delivery.receipt:
                delivery.lease_until = max(delivery.lease_until, round(e["lease_until"] * 1000))
                delivery.extends += 1
                return True
        return False

    def acking(self, batch: list[Delivery]) -> None:
        now = time.time()
        for d in batch:
            d.ack_sent = now

    def acked(self, batch: list[Delivery], reply: dict | None) -> None:
        """`reply` None: the ack failed (503, connection error): its outcome is unknown."""
        now = time.time()
        acked = set(reply["acked"]) if reply is not None else set()
        for d in batch:
            d.ack_replied = now
            if reply is None:
                d.ack = "failed"
            elif d.receipt in acked:
                d.ack = "acked"
                self.history.consumed(d.value, "ack")
            else:
                d.ack = "stale"

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def verdict(self) -> LeaseVerdict:
        by_value: dict[str, list[Delivery]] = {}
        all_deliveries = self.snapshot()
        for d in all_deliveries:
            by_value.setdefault(d.value, []).append(d)
        v = LeaseVerdict(len(all_deliveries), len(by_value))
        for d in all_deliveries:
            if d.ack == "stale":
                v.stale_acks += 1
                # Past its deadline a receipt stays current until a tick hands the message
                # back; a stale answer means that happened, so it can only come after the
                # deadline (ms of the same clock; 1 ms of rounding).
                if d.ack_replied is not None and d.ack_replied * 1000 < d.lease_until - 1:
                    v.problems.append(f"{d.receipt} ({d.value}): ack answered stale "
                                      f"{d.lease_until - d.ack_replied * 1000:.0f} ms before "
                                      "its deadline")
                if d.ack_sent is not None and d.ack_sent * 1000 < d.lease_until:
                    v.stale_sent_before_deadline += 1
            elif d.ack == "failed":
                v.failed_acks += 1
            elif d.ack is None:
                v.never_acked += 1
        for value, ds in by_value.items():
            ds.sort(key=lambda d: (d.deliveries, d.claimed_at))
            if len(ds) > 1:
                v.redelivered.append(value)
            for earlier, later in zip(ds, ds[1:]):
                where = f"{value}: {earlier.receipt} then {later.receipt}"
                if later.deliveries <= earlier.deliveries:
                    v.problems.append(f"{where}: delivery count not increasing")
                if later.claimed_at < earlier.lease_until:
                    early = earlier.lease_until - later.claimed_at
                    v.problems.append(f"{where}: claimed again {early} ms before the lease "
                                      "ended")
                if earlier.ack == "acked":
                    v.problems.append(f"{where}: delivered again after it was acked")
        return v


# -- workers -----------------------------------------------------------------------------------

FORM_TIMEOUT = 20.0


class Clients:
    """One keep-alive client per server; each request goes to the next server in turn, so a
    claim, its extends and its ack usually reach different processes."""

    def __init__(self, urls: list[str], log: RequestLog) -> None:
        self.clients = [KeepAliveClient(Target(url), log, FORM_TIMEOUT) for url in urls]
        self.turn = random.randrange(len(urls))

    def post(self, role: str, path: str, form: dict) -> dict | None:
        """The JSON reply of a 200, {} for a 204, None for anything else."""
        self.turn = (self.turn + 1) % len(self.clients)
        entry = self.clients[self.turn].request(role, "POST", path, form)
        if entry.status == 204:
            return {}
        if entry.status == 200:
            return json.loads(entry.body)
        return None

    def close(self) -> None:
        for c in self.clients:
            c.close()


@dataclass
class Behaviour:
    """What a worker does with a claim. `abandon`: the share of claims it drops without an ack
    (it died holding them; a new worker takes its place); `late`: the share it acks only after
    `late_s`, past the lease; `work_s`: how long a job takes; `heartbeat_s`: extend every so
    often while working (0: never); `stop_heartbeat`: the share of jobs whose heartbeat stops
    after the first extend (the heartbeat died, the work went on)."""

    limit: tuple[int, int] = (1, 3)
    lease: int = 1
    work_s: float = 0.0
    abandon: float = 0.0
    late: float = 0.0
    late_s: float = 1.6
    heartbeat_s: float = 0.0
    stop_heartbeat: float = 0.0
    idle_s: float = 0.02


class LeaseWorker(threading.Thread):
    """Claims from `queue` through `urls` until stopped, behaving as `behaviour` says.
    `calm` (an Event): once set, the worker stops misbehaving and only claims and acks."""

    def __init__(self, name: str, urls: list[str], queue: str, leases: LeaseLog,
                 log: RequestLog, stop: threading.Event, behaviour: Behaviour,
                 calm: threading.Event | None = None, seed: int = 0) -> None:
        super().__init__(name=name, daemon=True)
        self.queue, self.leases, self.behaviour = queue, leases, behaviour
        self.clients = Clients(urls, log)
        self.stop_event = stop
        self.calm = calm or threading.Event()
        self.random = random.Random(seed)
        self.failure: BaseException | None = None
        self.claims = 0

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.step()
        except BaseException as e:  # surfaced by the test
            self.failure = e
        finally:
            self.clients.close()

    def step(self) -> None:
        b = self.behaviour
        reply = self.clients.post("claim", f"/claim/{self.queue}",
                                  {"limit": str(self.random.randint(*b.limit)),
                                   "lease": str(b.lease)})
        if not reply:
            self.stop_event.wait(b.idle_s if reply == {} else 0.05)
            return
        self.claims += 1
        batch = self.leases.claimed(reply, b.lease * 1000, self.name)
        calm = self.calm.is_set()
        if not calm and self.random.random() < b.abandon:
            return  # died holding the lease
        late = not calm and self.random.random() < b.late
        self.work(batch, b.late_s if late else b.work_s,
                  heartbeat=b.heartbeat_s,
                  stop_after_one=not calm and self.random.random() < b.stop_heartbeat)
        self.ack(batch)

    def work(self, batch: list[Delivery], seconds: float, heartbeat: float,
             stop_after_one: bool) -> None:
        end = time.monotonic() + seconds
        beats = 0
        while not self.stop_event.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            if not heartbeat or (stop_after_one and beats >= 1):
                self.stop_event.wait(left)
                continue
            self.stop_event.wait(min(left, heartbeat))
            if end - time.monotonic() > 0:
                self.extend(batch)
                beats += 1

    def extend(self, batch: list[Delivery]) -> None:
        reply = self.clients.post("extend", f"/extend/{self.queue}",
                                  {"receipt": ",".join(d.receipt for d in batch),
                                   "lease": str(self.behaviour.lease)})
        if reply:
            for d in batch:
                self.leases.extended(d, reply)

    def ack(self, batch: list[Delivery]) -> None:
        self.leases.acking(batch)
        reply = self.clients.post("ack", f"/ack/{self.queue}",
                                  {"receipt": ",".join(d.receipt for d in batch)})
        self.leases.acked(batch, reply or None)


# -- worker processes --------------------------------------------------------------------------

class WorkerProcess:
    """A worker in a process of its own (this module run as a script), killed with SIGKILL
    by the test. Its events arrive as JSON lines, read by a thread into `leases`. What it
    claimed or acked just before the kill, without printing it, is unknown here: a claim then
    shows as a later delivery count, an ack as a message no longer anywhere (see
    `acked_unanswered`)."""

    def __init__(self, name: str, urls: list[str], queue: str, leases: LeaseLog,
                 lease: int = 1, work_s: float = 0.3) -> None:
        self.name, self.leases, self.lease = name, leases, lease
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get(
            "PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.leases", ",".join(urls), queue, str(lease),
             str(work_s)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pending: dict[str, Delivery] = {}  # receipt -> delivery, claimed, not settled
        self.ack_unknown: list[Delivery] = []  # the ack was on its way at the kill
        self.events = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            event = json.loads(line)
            self.events += 1
            if event["event"] == "claimed":
                for d in self.leases.claimed(event["reply"], self.lease * 1000, self.name):
                    self.pending[d.receipt] = d
            elif event["event"] == "acking":
                batch = [self.pending[r] for r in event["receipts"]]
                self.leases.acking(batch)
                self.ack_unknown = batch
            elif event["event"] == "acked":
                batch = [self.pending.pop(r) for r in event["receipts"]]
                self.leases.acked(batch, event["reply"])
                self.ack_unknown = []

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.reader.join(10)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.kill()
        err = self.proc.stderr.read().decode(errors="replace")
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err


def acked_unanswered(port: int, queue: str, leases: LeaseLog,
                     candidates: list[Delivery]) -> list[Delivery]:
    """Of `candidates` (deliveries whose ack was sent but never answered: the worker process
    was killed, or Redis died after running it), those Redis shows acked, recorded as acked.
    Only a value no other ack settled can tell: its message is in no list any more, has no
    delivery count, and its value is retired (kept with a ttl)."""
    settled = {d.value for d in leases.snapshot() if d.ack == "acked"}
    client = redis_client(port)
    try:
        done = []
        pending = set(client("LRANGE", f"{queue}:queue", 0, -1) or [])
        for d in candidates:
            if (d.value not in settled and d.key not in pending
                    and client("ZSCORE", f"{queue}:inflight", d.key) is None
                    and client("HEXISTS", f"{queue}:deliveries", d.key) == 0
                    and client("TTL", d.key) > 0):
                leases.acked([d], {"acked": [d.receipt]})
                settled.add(d.value)
                done.append(d)
        return done
    finally:
        client.close()


def process_worker(urls: list[str], queue: str, lease: int, work_s: float) -> None:
    """The loop of a WorkerProcess: claim 1 to 3, work, ack; forever, until killed."""
    log = RequestLog()
    clients = Clients(urls, log)

    def say(**event) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    while True:
        reply = clients.post("claim", f"/claim/{queue}",
                             {"limit": str(random.randint(1, 3)), "lease": str(lease)})
        if not reply:
            time.sleep(0.02)
            continue
        say(event="claimed", reply=reply)
        time.sleep(work_s)
        receipts = [m["receipt"] for m in reply["messages"]]
        say(event="acking", receipts=receipts)
        settled = clients.post("ack", f"/ack/{queue}", {"receipt": ",".join(receipts)})
        say(event="acked", receipts=receipts, reply=settled or None)


# -- Redis state -------------------------------------------------------------------------------

def consistency_problems(port: int, queue: str) -> list[str]:
    """What breaks the lease layout in Redis right now: a key in more than one of the pending
    list, the priority set, the in-flight set and the delayed set (or twice in the list); a
    key in flight without a leased delivery count (`c.token`); a leased count whose key is
    not in flight (an ack or an expiry half applied)."""
    client = redis_client(port)
    try:
        pending = client("LRANGE", f"{queue}:queue", 0, -1) or []
        priority = client("ZRANGE", f"{queue}:priority", 0, -1) or []
        inflight = client("ZRANGE", f"{queue}:inflight", 0, -1) or []
        delayed = client("ZRANGE", f"{queue}:delayed", 0, -1) or []
        raw = client("HGETALL", f"{queue}:deliveries") or []
        counts = dict(zip(raw[::2], raw[1::2]))
    finally:
        client.close()
    problems = []
    if len(set(pending)) != len(pending):
        problems.append("a key twice in the pending list")
    places: dict[str, list[str]] = {}
    for name, members in (("queue", pending), ("priority", priority), ("inflight", inflight),
                          ("delayed", delayed)):
        for key in set(members):
            places.setdefault(key, []).append(name)
    problems += [f"{key} in {', '.join(names)}" for key, names in places.items()
                 if len(names) > 1]
    for key in inflight:
        if not re.fullmatch(r"\d+\.[0-9a-f]{16}", counts.get(key, "")):
            problems.append(f"{key} in flight with delivery count {counts.get(key)!r}")
    for key, count in counts.items():
        if "." in count and key not in set(inflight):
            problems.append(f"{key} leased ({count}) but not in flight")
    return problems


def wait_drained(port: int, queue: str, timeout: float, check: Callable[[], None]) -> float:
    """Wait until nothing of `queue` is pending or in flight; the seconds it took."""
    client = redis_client(port)
    started = time.monotonic()
    try:
        while True:
            check()
            if client("LLEN", f"{queue}:queue") == 0 and \
                    client("ZCARD", f"{queue}:inflight") == 0:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"{queue} not drained after {timeout} s: "
                    f"{client('LLEN', f'{queue}:queue')} pending, "
                    f"{client('ZCARD', f'{queue}:inflight')} in flight")
            time.sleep(0.1)
    finally:
        client.close()


if __name__ == "__main__":
    process_worker(sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
