"""Leases under faults: workers that die or stall mid-lease on three servers, a server killed
(-9) holding claims, Redis killed (-9) with `appendfsync always` under claim/ack load, and
Redis paused in the middle of acks. Every delivery is recorded (tests/faults/leases.py): no
acknowledged add is lost, nothing acked comes back, and every duplicate is a lease that lapsed
before its ack."""
from __future__ import annotations

import json
import threading
import time

import pytest

from tests.faults.history import History
from tests.faults.leases import (Behaviour, LeaseLog, LeaseWorker, WorkerProcess,
                                 acked_unanswered, consistency_problems, wait_drained)
from tests.faults.load import (Producer, RequestLog, Target, assert_replies_clean, figures,
                               pending_values, probe, redis_client, wait_for)
from tests.http_client import post

QUEUE = "leaseq"


def form_post(url: str, path: str, form: dict, timeout: float = 20.0):
    return post(url, path, {k: str(v) for k, v in form.items()}, timeout=timeout)


def claim(url: str, queue: str = QUEUE, **form) -> dict:
    reply = form_post(url, f"/claim/{queue}", form)
    assert reply.status in (200, 204), (reply.status, reply.body)
    return json.loads(reply.body) if reply.status == 200 else {"messages": []}


def settle(url: str, route: str, receipts: list[str], queue: str = QUEUE, **form):
    return form_post(url, f"/{route}/{queue}", {"receipt": ",".join(receipts), **form})


def redis_now_ms(port: int) -> int:
    client = redis_client(port)
    try:
        seconds, micros = client("TIME")
        return int(seconds) * 1000 + int(micros) // 1000
    finally:
        client.close()


class Run:
    """Producers (one per server, unique values) and lease workers sharing one history."""

    def __init__(self, urls: list[str], interval: float = 0.01):
        self.urls = urls
        self.history, self.log = History(), RequestLog()
        self.leases = LeaseLog(self.history)
        self.stop_producers, self.stop_workers = threading.Event(), threading.Event()
        self.calm = threading.Event()
        self.producers = [Producer(f"p{i}", Target(url), self.log, self.stop_producers,
                                   self.history, QUEUE, interval=interval)
                          for i, url in enumerate(urls)]
        self.workers: list[LeaseWorker] = []

    def worker(self, name: str, behaviour: Behaviour) -> None:
        self.workers.append(LeaseWorker(name, self.urls, QUEUE, self.leases, self.log,
                                        self.stop_workers, behaviour, self.calm,
                                        seed=len(self.workers)))

    def start(self) -> "Run":
        for thread in self.producers + self.workers:
            thread.start()
        return self

    def produced(self, at_least: int) -> bool:
        return all(p.sent >= at_least for p in self.producers)

    def stop_producing(self) -> None:
        self.stop_producers.set()
        for p in self.producers:
            p.join(30)

    def acked_since(self, since: float) -> int:
        return sum(d.ack == "acked" and d.ack_replied >= since
                   for d in self.leases.snapshot())

    def check_threads(self) -> None:
        failed = [(t.name, t.failure) for t in self.producers + self.workers if t.failure]
        assert not failed, failed

    def stop(self) -> None:
        self.stop_producers.set()
        self.stop_workers.set()
        for thread in self.producers + self.workers:
            thread.join(30)
        assert not [t.name for t in self.producers + self.workers if t.is_alive()]
        self.check_threads()


def faults_seen(run: Run, dead: list) -> bool:
    """Worker processes were killed, leases abandoned, acks came after a lapse, and a
    heartbeat kept a job past its first lease (acked 1.5 s after a claim of 1 s)."""
    verdict = run.leases.verdict()
    return len(dead) >= 3 and verdict.never_acked >= 5 and verdict.stale_acks >= 3 and any(
        d.ack == "acked" and d.extends >= 3 and d.ack_replied * 1000 - d.claimed_at > 1400
        for d in run.leases.snapshot())


def worst_duplicates(run: Run, values: list[str], limit: int = 5) -> list[str]:
    lines = []
    for value in values[:limit]:
        ds = [d for d in run.leases.snapshot() if d.value == value]
        lines.append(f"{value}: " + "; ".join(
            f"{d.receipt} c={d.deliveries} claimed={d.claimed_at} until={d.lease_until} "
            f"ack={d.ack}" for d in ds))
    return lines


def judge(run: Run, port: int, name: str, **extra):
    """The history's report (a value is consumed when an ack of it answered `acked`) and the
    lease verdict, with the figures printed; fails on any lost, twice-acked or unexpected
    value and on any delivery that breaks the lease rules."""
    report = run.history.check(pending_values(port, QUEUE))
    verdict = run.leases.verdict()
    figures(name, lost=len(report.lost), acked_twice=len(report.duplicated),
            unexpected=len(report.unexpected), produced=report.produced,
            add_acked=report.acked, add_refused=report.refused,
            refused_but_stored=len(report.refused_but_stored), **verdict.figures(),
            statuses=dict(run.log.statuses()), **extra)
    assert not report.lost, (report.details(), worst_duplicates(run, report.lost))
    assert not report.duplicated and not report.unexpected, report.details()
    assert not verdict.problems, (verdict.problems[:10],
                                  worst_duplicates(run, verdict.redelivered))
    return report, verdict


# -- several processes -------------------------------------------------------------------------


def test_ten_workers_on_three_servers_some_dying_lose_nothing(procs):
    """Three servers on one Redis; 10 workers claim with 1 s leases through all three: three
    well-behaved, two that die holding a quarter of their claims, one that acks a third of its
    jobs after 1.6 s, two that extend every 0.3 s through 1.5 s jobs but whose heartbeat stops
    after one beat for a third of them, and two worker processes killed (-9) mid-lease, again
    and again. Every lapsed lease is handed back once, by one of the three processes."""
    redis = procs.redis()
    servers = [procs.server(redis.port) for _ in range(3)]
    urls = [s.url for s in servers]
    run = Run(urls)
    for i in range(3):
        run.worker(f"steady{i}", Behaviour(work_s=0.01))
    for i in range(2):
        run.worker(f"dying{i}", Behaviour(work_s=0.01, abandon=0.25))
    run.worker("late", Behaviour(work_s=0.01, late=0.33, late_s=1.6))
    for i in range(2):
        run.worker(f"heartbeat{i}", Behaviour(limit=(1, 1), work_s=1.5, heartbeat_s=0.3,
                                              stop_heartbeat=0.33))
    processes = [WorkerProcess(f"proc{i}", urls, QUEUE, run.leases) for i in range(2)]
    dead: list[WorkerProcess] = []
    run.start()
    try:
        # Kill a worker process while it holds a lease (it printed a claim, not its ack),
        # and start another in its place, until 250 adds each went out and every fault
        # happened a few times (late jobs are a third of one worker's, so how many a fixed
        # number of adds sees depends on the machine's speed).
        turn, started = 0, time.monotonic()
        while not (run.produced(250) and faults_seen(run, dead)):
            run.check_threads()
            assert time.monotonic() - started < 120, (len(dead), run.leases.verdict().figures())
            victim = processes[turn % 2]
            try:
                wait_for(lambda: victim.pending and not victim.ack_unknown, 10, interval=0.005,
                         message=f"{victim.name} holding a lease")
            except AssertionError:
                if victim.proc.poll() is not None:
                    raise AssertionError(victim.stop())
                continue
            victim.kill()
            dead.append(victim)
            processes[turn % 2] = WorkerProcess(f"proc{len(dead) + 1}", urls, QUEUE,
                                                run.leases)
            turn += 1
            time.sleep(0.5)
        run.stop_producing()
        run.calm.set()  # no more abandoned or late jobs: the queue can drain
        drained = wait_drained(redis.port, QUEUE, 60, run.check_threads)
    finally:
        run.stop()
        errors = [p.stop() for p in processes + dead]

    unknown = [d for p in dead for d in p.ack_unknown]
    acked_at_kill = acked_unanswered(redis.port, QUEUE, run.leases, unknown)
    assert not [e for p, e in zip(processes, errors) if e.strip()], errors
    report, verdict = judge(run, redis.port, "lease_workers_3_servers", processes_killed=len(
        dead), acks_cut_by_kill=len(unknown), acked_at_kill=len(acked_at_kill),
        drained_s=drained)
    assert_replies_clean(run.log)
    assert set(run.log.statuses()) <= {200, 204}, run.log.statuses()
    # The faults happened: leases were abandoned (threads and killed processes), acks came
    # too late, and messages were delivered again.
    assert faults_seen(run, dead) and verdict.redelivered
    deliveries = run.leases.snapshot()
    assert any(d.deliveries >= 2 for d in deliveries)
    assert {d.worker for d in deliveries if d.deliveries >= 2} - {"late"}
    """Worker processes were killed, leases abandoned, acks came after a lapse, and a
    heartbeat kept a job past its first lease (acked 1.5 s after a claim of 1 s)."""
    verdict = run.leases.verdict()
    return len(dead) >= 3 and verdict.never_acked >= 5 and verdict.stale_acks >= 3 and any(
        d.ack == "acked" and d.extends >= 3 and d.ack_replied * 1000 - d.claimed_at > 1400
        for d in run.leases.snapshot())
    # Nothing half-done is left: no lease, no delivery count.
    assert not consistency_problems(redis.port, QUEUE)
    admin = redis_client(redis.port)
    try:
        assert admin("HLEN", f"{QUEUE}:deliveries") == 0
    finally:
        admin.close()


# -- servers and Redis killed ------------------------------------------------------------------


def test_server_kill9_holding_claims_they_come_back_after_their_lease(procs):
    redis = procs.redis()
    first = procs.server(redis.port)
    for n in range(20):
        assert form_post(first.url, f"/q/{QUEUE}", {"value": f"v{n:02d}"}).status == 200
    short = claim(first.url, limit=10, lease=2)["messages"]
    long = claim(first.url, limit=3, lease=600)["messages"]
    assert len(short) == 10 and len(long) == 3
    assert all(m["deliveries"] == 1 for m in short + long)
    procs.kill9_server(first)
    # No process runs: once the short leases are over on Redis's clock they wait in Redis.
    deadline = max(round(m["lease_until"] * 1000) for m in short)
    wait_for(lambda: redis_now_ms(redis.port) > deadline + 100, 10, interval=0.05,
             message="the short leases to end")
    admin = redis_client(redis.port)
    try:
        assert admin("ZCARD", f"{QUEUE}:inflight") == 13
        assert admin("LLEN", f"{QUEUE}:queue") == 7
    finally:
        admin.close()
    assert not consistency_problems(redis.port, QUEUE)

    second = procs.server(redis.port)
    # The new process's first tick hands the 10 back, next in line (before the 7 never
    # claimed): wait for it, then claim.
    admin = redis_client(redis.port)
    try:
        wait_for(lambda: admin("ZCARD", f"{QUEUE}:inflight") == 3, 15, interval=0.02,
                 message="the new server's tick")
        assert admin("LLEN", f"{QUEUE}:queue") == 17
    finally:
        admin.close()
    got = claim(second.url, limit=100, lease=600)["messages"]
    assert len(got) == 17
    back = {m["key"]: m for m in got}
    for m in short:
        again = back[m["key"]]
        assert again["value"] == m["value"] and again["deliveries"] == 2
        assert again["receipt"] != m["receipt"]
        # claimed again only once its lease was over (Redis's clock, ms)
        assert round(again["lease_until"] * 1000) - 600_000 >= round(m["lease_until"] * 1000)
    assert [m["key"] for m in got[:10]] == [m["key"] for m in short]
    assert all(back[k]["deliveries"] == 1 for k in back if k not in {m["key"] for m in short})
    assert not {m["key"] for m in long} & set(back)
    # The dead server's receipts: the lapsed ones are stale, the long leases still hold.
    stale = json.loads(settle(second.url, "ack", [m["receipt"] for m in short]).body)
    assert stale["acked"] == [] and len(stale["stale"]) == 10
    held = json.loads(settle(second.url, "ack", [m["receipt"] for m in long]).body)
    assert held["acked"] == [m["receipt"] for m in long]
    done = json.loads(settle(second.url, "ack", [m["receipt"] for m in got]).body)
    assert len(done["acked"]) == 17
    assert not consistency_problems(redis.port, QUEUE)
    admin = redis_client(redis.port)
    try:
        assert admin("ZCARD", f"{QUEUE}:inflight") == 0 and admin("LLEN", f"{QUEUE}:queue") == 0
        assert admin("HLEN", f"{QUEUE}:deliveries") == 0
    finally:
        admin.close()
    figures("lease_server_kill9", claimed=13, lapsed_and_back=10, held=3)


def test_redis_kill9_with_aof_always_under_claim_ack_load(procs):
    """Redis killed (-9) and restarted on its append-only file (`appendfsync always`) while
    two servers take adds and claims, extends and acks. An ack that answered `acked` was on
    disk: that message never comes back; an add that answered 200 is acked by some worker
    in the end; a claim or ack that answered 503 may have run: those messages come back when
    their lease ends."""
    redis = procs.redis(durable=True)
    servers = [procs.server(redis.port) for _ in range(2)]
    run = Run([s.url for s in servers], interval=0.005)
    for i in range(3):
        run.worker(f"steady{i}", Behaviour(lease=2, work_s=0.01))
    run.worker("heartbeat", Behaviour(limit=(1, 1), lease=2, work_s=2.5, heartbeat_s=0.5))
    run.start()
    try:
        wait_for(lambda: run.acked_since(0) >= 200, 60, message="200 acks")
        killed = time.time()
        redis.kill9()
        time.sleep(1.0)  # Redis stays down for a second
        redis.start()
        up = time.time()
        wait_for(lambda: run.acked_since(up) >= 200, 60, message="200 acks after the restart")
        run.stop_producing()
        drained = wait_drained(redis.port, QUEUE, 60, run.check_threads)
    finally:
        run.stop()

    # An ack Redis ran just before it died, whose reply the kill swallowed (503): its
    # message is acked in Redis though no reply said so.
    unanswered = [d for d in run.leases.snapshot() if d.ack == "failed"]
    applied = acked_unanswered(redis.port, QUEUE, run.leases, unanswered)
    report, verdict = judge(run, redis.port, "lease_redis_kill9", drained_s=drained,
                            redis_down_s=up - killed, acks_503_applied=len(applied))
    assert_replies_clean(run.log)
    outage = [e for e in run.log.snapshot() if e.status == 503]
    assert outage and all(e.unavailable_json for e in outage)
    assert not consistency_problems(redis.port, QUEUE)


# -- Redis paused mid-ack ----------------------------------------------------------------------


def lease_state(port: int, key: str) -> tuple[str, str | None]:
    """Where a message is: ('inflight' | 'pending' | 'acked' | 'gone', its delivery count)."""
    client = redis_client(port)
    try:
        count = client("HGET", f"{QUEUE}:deliveries", key)
        if client("ZSCORE", f"{QUEUE}:inflight", key) is not None:
            return "inflight", count
        if key in (client("LRANGE", f"{QUEUE}:queue", 0, -1) or []):
            return "pending", count
        if client("TTL", key) > 0:
            return "acked", count
        return "gone", count
    finally:
        client.close()


class Paused:
    """Redis stopped (SIGSTOP) or its writes paused (`CLIENT PAUSE ... WRITE`, as a failover
    does), until `resume`."""

    def __init__(self, redis, how: str):
        self.redis, self.how = redis, how

    def __enter__(self) -> "Paused":
        if self.how == "sigstop":
            self.redis.pause()
        else:
            admin = redis_client(self.redis.port)
            try:
                assert admin("CLIENT", "PAUSE", 30_000, "WRITE") == "OK"
            finally:
                admin.close()
        return self

    def __exit__(self, *exc) -> None:
        if self.how == "sigstop":
            self.redis.resume()
        else:
            admin = redis_client(self.redis.port)
            try:
                admin("CLIENT", "UNPAUSE")
            finally:
                admin.close()


@pytest.mark.parametrize("how", ["sigstop", "client-pause"])
def test_redis_paused_mid_ack_the_ack_is_applied_or_the_lease_lapses(procs, how):
    """Acks, a release and an extend sent while Redis is paused answer 503 (Redis did not
    answer in time). Afterwards each is applied or not, never half: a message is acked (in
    no list, no delivery count, its value retired), or in flight with its receipt current,
    or back in the pending list with its count (its lease lapsed meanwhile)."""
    redis = procs.redis()
    server = procs.server(redis.port)
    url = server.url
    # Every script Redis must run later is loaded first (on another queue): a script Redis
    # does not know yet fails with NOSCRIPT and would hide what a late run does.
    assert form_post(url, "/q/warmup", {"value": "w"}).status == 200
    warm = claim(url, "warmup")["messages"][0]["receipt"]
    for route in ("extend", "release", "ack"):
        extra = {"lease": 1} if route == "extend" else {}
        assert settle(url, route, [warm], "warmup", **extra).status == 200
    for n in range(4):
        assert form_post(url, f"/q/{QUEUE}", {"value": f"v{n}"}).status == 200
    a, b = claim(url, limit=2, lease=2)["messages"]  # leases that end during the pause
    c, d = claim(url, limit=2, lease=600)["messages"]  # leases that outlast it
    calls = {"ack short": ("ack", a, {}), "release short": ("release", b, {}),
             "ack long": ("ack", c, {}), "extend long": ("extend", d, {"lease": 1200})}
    replies: dict[str, tuple[int, float]] = {}

    def call(name: str) -> None:
        route, message, extra = calls[name]
        started = time.monotonic()
        reply = settle(url, route, [message["receipt"]], **extra)
        replies[name] = (reply.status, round(time.monotonic() - started, 2))

    with Paused(redis, how):
        threads = [threading.Thread(target=call, args=(name,)) for name in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert all(status == 503 for status, _ in replies.values()), replies
    # A request from a new connection is served after whatever reached Redis before.
    assert probe(url) == 200
    assert not consistency_problems(redis.port, QUEUE)
    # The short leases are over: wait until the tick has dealt with them.
    wait_for(lambda: lease_state(redis.port, a["key"])[0] != "inflight" and
             lease_state(redis.port, b["key"])[0] != "inflight", 15,
             message="the short leases to be settled")
    assert not consistency_problems(redis.port, QUEUE)
    outcome = {}
    state_a = lease_state(redis.port, a["key"])
    assert state_a in (("acked", None), ("pending", "1")), state_a
    outcome["ack short"] = "applied" if state_a[0] == "acked" else "lease lapsed"
    assert lease_state(redis.port, b["key"]) == ("pending", "1")  # released or lapsed
    state_c = lease_state(redis.port, c["key"])
    token = c["receipt"].rsplit(".", 1)[1]
    assert state_c in (("acked", None), ("inflight", f"1.{token}")), state_c
    outcome["ack long"] = "applied" if state_c[0] == "acked" else "not applied, still leased"
    if state_c[0] == "inflight":  # the lease holds: the retry is acked
        retry = json.loads(settle(url, "ack", [c["receipt"]]).body)
        assert retry["acked"] == [c["receipt"]]
    admin = redis_client(redis.port)
    try:
        score = int(admin("ZSCORE", f"{QUEUE}:inflight", d["key"]))
    finally:
        admin.close()
    before = round(d["lease_until"] * 1000)
    assert score == before or score >= before + 600_000, (score, before)
    outcome["extend long"] = "applied" if score != before else "not applied"
    # The lapsed or released messages come back with their next delivery count.
    again = claim(url, limit=10, lease=600)["messages"]
    expect = {b["key"]} | ({a["key"]} if state_a[0] == "pending" else set())
    assert {m["key"] for m in again} == expect
    assert all(m["deliveries"] == 2 for m in again)
    assert not consistency_problems(redis.port, QUEUE)
    figures(f"lease_redis_pause_{how}", replies=replies, outcomes=outcome)
