"""Batches in, delayed messages falling due together, pops out and the long-poll wake: the
figures of the producer/consumer flow, each beside the bare handler measured in the same run.

1. batch: `POST /batch/<q>`, a JSON array of 100 messages, wrk at 50 connections on one
   process. Messages/s = 100 × wrk's 2xx replies/s; the queue (emptied before) must hold at
   least that many after the run. Baseline: the bare handler given the same body.
2. due: 100,000 messages added in batches with one `eta` a few seconds ahead; from just
   before that instant a client asks Redis for the queue's pending length every millisecond.
   The i-th message became pending by the first answer counting at least i (an upper bound:
   lateness = that answer's time - the due time; max, p99, p50); rate = the messages ÷ the
   time from the last answer that counted none to the first that counted all. The polls see
   what any consumer would, for one cheap command each. Two processes run their TICK; the
   one that took the adds schedules it for the due time. Baseline of the rate: the bare
   POST's req/s in the same round.
3. pop: `POST /pop/<q>?limit=100` (acknowledged once the reply is written), wrk at 50
   connections on a queue filled straight in Redis. Messages/s = 100 × replies/s; at least
   that many must have left the queue, and a lease left after the run means a reply was
   never acknowledged.
   Baseline: the bare POST with an empty body.
4. wake: a waiter `POST /pop/<q>?wait=20` on process B; once B holds the queue's
   subscription (PUBSUB NUMSUB, a fresh queue per sample) `POST /q/<q>` goes to process A;
   from just before the add is sent until the waiter's reply is complete. Baseline: a
   `POST /bare` round trip from the same client, the two alternating sample by sample.

Each round runs the wrk cases (in reverse order every other round), then 2, then 4; ratios
are taken within a round and reported as medians over the rounds, like every other section.
This module starts its own Redis, bare server and two `twistd restmq --access-log off` (A and
B), so that only these two processes tick. Redis's INFO commandstats before and after each
wrk run gives the commands Redis ran per message (those inside scripts included).

`python bench/flow.py [--quick]` prints the figures; bench/run.py runs it as `flow`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpbench
import redis_private
import wrk
from common import (BENCH_DIR, CpuMeter, ServerProcess, checkout_env, free_ports, log_problems,
                    start_all, stop_all, venv_bin)
from live import BenchError, BlockingConn, parse_head, percentile, post_request

BATCH = 100          # messages per /batch/ request
POP_LIMIT = 100      # messages per /pop/ request
DUE_COUNT = 100_000  # messages due at one instant
DUE_ADDERS = 4       # connections adding them
POLL_S = 0.001       # between two looks at the pending length
WAKE_SAMPLES = 200   # wake latencies per round
WAKE_WAIT = 20       # the waiter's `wait`
JSON_TYPE = "application/json"
BATCH_Q, POP_Q, DUE_Q = "flowbatch", "flowpop", "flowdue"
# Targets (issue 15): messages/s, seconds late, ms.
BATCH_PER_S, POP_PER_S, DUE_PER_S = 100_000, 50_000, 20_000
DUE_LATE_S = 1.0
WAKE_P50_MS, WAKE_P99_MS = 5.0, 20.0


# --------------------------------------------------------------------------- servers

@dataclasses.dataclass
class Servers:
    redis: redis_private.PrivateRedis
    bare: ServerProcess
    a: ServerProcess
    b: ServerProcess
    ports: dict[str, int]

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def procs(self) -> list[ServerProcess]:
        return [self.bare, self.a, self.b]


def make_servers(tmp: Path, redis_bin: str) -> Servers:
    ports = dict(zip(("redis", "bare", "a", "b"), free_ports(4)))
    env = checkout_env()

    def restmq(name: str) -> ServerProcess:
        return ServerProcess(f"flow-{name}", [venv_bin("twistd"), "-n", "--pidfile=", "restmq",
                                              "--port", str(ports[name]), "--redis-port",
                                              str(ports["redis"]), "--access-log", "off"],
                             f"http://127.0.0.1:{ports[name]}/stats/", tmp / f"{name}.log",
                             env=env)

    bare = ServerProcess("flow-bare", [venv_bin("python"), str(BENCH_DIR / "bare_server.py"),
                                       "--port", str(ports["bare"])],
                         f"http://127.0.0.1:{ports['bare']}/bare", tmp / "bare.log")
    return Servers(redis_private.PrivateRedis(redis_bin, ports["redis"], tmp), bare,
                   restmq("a"), restmq("b"), ports)


# --------------------------------------------------------------------------- HTTP pieces

def request(method: str, path: str, body: bytes = b"", ctype: str = JSON_TYPE) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_reply(conn: BlockingConn) -> tuple[int, bytes]:
    """A response that may be a 204 without Content-Length."""
    while (end := conn.buf.find(b"\r\n\r\n")) < 0:
        conn._recv()
    status, headers = parse_head(bytes(conn.buf[:end]))
    del conn.buf[:end + 4]
    length = int(headers.get("content-length", "0"))
    while len(conn.buf) < length:
        conn._recv()
    body = bytes(conn.buf[:length])
    del conn.buf[:length]
    return status, body


def call(conn: BlockingConn, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    conn.sock.sendall(request(method, path, body))
    return read_reply(conn)


def pop_messages(body: bytes, status: int) -> list[dict]:
    if status == 204:
        return []
    if status != 200:
        raise BenchError(f"/pop/: {status} {body[:200]!r}")
    return json.loads(body)["messages"]


def has_pop(port: int) -> str | None:
    """None when the server pops 100 at once from a full queue; else why parts 3-4 cannot
    run. Needs POP_Q holding at least POP_LIMIT messages."""
    conn = BlockingConn(port)
    try:
        status, body = call(conn, "POST", f"/pop/{POP_Q}?limit={POP_LIMIT}")
    finally:
        conn.close()
    if status in (404, 405):
        return f"this tree has no `POST /pop/` route ({status})"
    got = len(pop_messages(body, status))
    return None if got == POP_LIMIT else f"/pop/ of {POP_LIMIT} from a full queue gave {got}"


# --------------------------------------------------------------------------- Redis pieces

def command_stats(rc: redis_private.RespClient) -> dict[str, int]:
    """Calls and microseconds of every command Redis ran so far, and of the scripts."""
    out = {"calls": 0, "usec": 0, "scripts": 0}
    for line in rc.command("INFO", "commandstats").decode().splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line[8:].partition(":")
        stats = dict(f.split("=") for f in fields.split(","))
        out["calls"] += int(stats["calls"])
        out["usec"] += int(stats["usec"])
        if name in ("eval", "evalsha"):
            out["scripts"] += int(stats["calls"])
    return out


def redis_clock(rc: redis_private.RespClient) -> float:
    """Redis's clock minus this one, in seconds (due times are Redis's TIME)."""
    t0 = time.time()
    secs, micros = rc.command("TIME")
    t1 = time.time()
    return int(secs) + int(micros) / 1e6 - (t0 + t1) / 2


# --------------------------------------------------------------------------- 1 and 3: wrk

class Counted:
    """prepare/remaining hooks of a wrk case that note, per run, the messages it moved and the
    Redis commands that took: `fill` empties the database first (batch) or tops the queue up
    (pop, `per_request` messages a request)."""

    def __init__(self, rc, key: str, queue: str, fill: str, per_request: int,
                 duration: float, records: list[dict]) -> None:
        self.rc, self.key, self.queue, self.fill = rc, key, queue, fill
        self.per_request, self.duration, self.records = per_request, duration, records
        self.best = 0.0  # messages/s of its best run so far

    def prepare(self, _expected: float) -> None:
        if self.fill == "flush":
            self.rc.command("FLUSHDB")  # nothing else is stored meanwhile: keep Redis small
        else:
            # Planned from its best rate, at least 100,000/s (a round may run much faster than
            # the one before); the report checks it never ran dry.
            rate = max(self.best, 2 * POP_PER_S)
            redis_private.top_up(self.rc, self.queue, int(1.5 * rate * self.duration) + 10_000)
        self.before = redis_private.queue_length(self.rc, self.queue)
        self.stats = command_stats(self.rc)

    def remaining(self) -> int:
        # The pops cut short when wrk stopped are acknowledged or released within a moment
        # (longer on a busy machine); what is still leased after 5 s never will be.
        deadline = time.monotonic() + 5.0
        while self.fill != "flush" and time.monotonic() < deadline and \
                int(self.rc.command("ZCARD", f"{self.queue}:inflight")):
            time.sleep(0.05)
        time.sleep(0.3)  # and the last acks' replies are in
        stats = command_stats(self.rc)
        after = redis_private.queue_length(self.rc, self.queue)
        moved = after - self.before if self.fill == "flush" else self.before - after
        self.records.append({
            "case": self.key, "messages": moved,
            "commands": stats["calls"] - self.stats["calls"] - 1,  # less prepare's INFO
            "scripts": stats["scripts"] - self.stats["scripts"],
            "redis_usec": stats["usec"] - self.stats["usec"],
            "leased_after": int(self.rc.command("ZCARD", f"{self.queue}:inflight"))})
        self.best = max(self.best, moved / self.duration)
        return after


def wrk_cases(srv: Servers, tmp: Path, rc, duration: float, pop: bool,
              records: list[dict]) -> list[httpbench.Case]:
    body = json.dumps(["hello"] * BATCH)
    batch_lua = wrk.write_post_script(tmp / "batch.lua", body, JSON_TYPE)
    empty_lua = wrk.write_script(tmp / "post-empty.lua", "POST", "")
    cpu = {"server": [srv.a.pid], "redis": [srv.redis.pid]}
    bare_cpu = {"server": [srv.bare.pid], "redis": [srv.redis.pid]}
    batch = Counted(rc, "batch", BATCH_Q, "flush", BATCH, duration, records)
    C = httpbench.Case
    cases = [C("bare.batch", "bare POST, same body", srv.url("bare", "/bare"), batch_lua,
               None, bare_cpu),
             C("batch", f"batch of {BATCH}", srv.url("a", f"/batch/{BATCH_Q}"), batch_lua,
               "bare.batch", cpu, batch.prepare, batch.remaining),
             C("bare.post", "bare POST, empty body", srv.url("bare", "/bare"), empty_lua, None,
               bare_cpu)]
    if pop:
        popped = Counted(rc, "pop", POP_Q, "top_up", POP_LIMIT, duration, records)
        cases.append(C("pop", f"pop of {POP_LIMIT}",
                       srv.url("a", f"/pop/{POP_Q}?limit={POP_LIMIT}"), empty_lua,
                       "bare.post", cpu, popped.prepare, popped.remaining))
    return cases


# --------------------------------------------------------------------------- 2: due

def add_due(port: int, count: int, eta: float) -> float:
    """Add `count` messages due at `eta` (Unix seconds, Redis's clock) by batches over
    DUE_ADDERS connections; returns the seconds it took."""
    body = json.dumps([{"value": "due", "eta": round(eta, 3)}] * BATCH).encode()
    batches = -(-count // BATCH)
    errors: list[str] = []

    def adder(n: int) -> None:
        conn = BlockingConn(port)
        try:
            for _ in range(n):
                status, reply = call(conn, "POST", f"/batch/{DUE_Q}", body)
                if status != 200:
                    errors.append(f"/batch/: {status} {reply[:200]!r}")
                    return
        finally:
            conn.close()

    shares = [batches // DUE_ADDERS + (i < batches % DUE_ADDERS) for i in range(DUE_ADDERS)]
    t0 = time.monotonic()
    threads = [threading.Thread(target=adder, args=(n,)) for n in shares if n]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(errors[0])
    return time.monotonic() - t0


def watch_due(rc, count: int, due_local: float, timeout: float) -> dict:
    """Poll the pending length from just before `due_local` (this clock) until it counts
    `count`. Returns the curve [(ms after due, pending)] at each change and the bounds."""
    pending = f"{DUE_Q}:queue"
    time.sleep(max(0.0, due_local - 0.1 - time.time()))
    curve: list[list[float]] = []
    last_zero_ms, early, n = None, 0, 0
    while True:
        t0 = time.time()
        n = int(rc.command("LLEN", pending))
        t1 = time.time()
        if n == 0:
            last_zero_ms = (t0 - due_local) * 1000
        elif not curve or curve[-1][1] != n:
            curve.append([round((t1 - due_local) * 1000, 2), n])
            if t1 < due_local - 0.005:
                early = max(early, n)
        if n >= count or t1 > due_local + timeout:
            break
        time.sleep(POLL_S)
    return {"curve": curve, "last_zero_ms": last_zero_ms, "pending": n, "early": early}


def late_ms(curve: list[list[float]], i: int) -> float | None:
    """When the i-th message (1-based) was pending, in ms after the due time."""
    for ms, n in curve:
        if n >= i:
            return ms
    return None


def measure_due(srv: Servers, rc, count: int, batch_rate: float, rnd: int) -> dict:
    rc.command("FLUSHDB")
    offset = redis_clock(rc)
    # Due once the adds are surely done: three times their expected time, at least 2 s ahead.
    lead = max(2.0, 3 * count / max(batch_rate, 10_000.0) + 1.0)
    due_local = time.time() + lead
    meter = CpuMeter({"a": [srv.a.pid], "b": [srv.b.pid], "redis": [srv.redis.pid]})
    adds_s = add_due(srv.ports["a"], count, due_local + offset)
    problems = []
    if time.time() > due_local - 0.1:
        problems.append(f"due round {rnd}: the adds took {adds_s:.1f} s, past the due time")
    time.sleep(max(0.0, due_local - 0.1 - time.time()))
    meter.start()
    seen = watch_due(rc, count, due_local, timeout=60.0)
    cpu = meter.stop()
    left = int(rc.command("ZCARD", f"{DUE_Q}:delayed"))
    if seen["pending"] != count or left:
        problems.append(f"due round {rnd}: {seen['pending']:,} of {count:,} pending after "
                        f"60 s, {left:,} still delayed")
    if seen["early"]:
        problems.append(f"due round {rnd}: {seen['early']:,} pending before their due time")
    curve, last_zero = seen["curve"], seen["last_zero_ms"] or 0.0
    done = late_ms(curve, count)
    out = {"round": rnd, "count": count, "adds_s": adds_s, "lead_s": lead,
           "clock_offset_ms": offset * 1000, "curve": curve, "last_zero_ms": last_zero,
           "cpu": cpu, "problems": problems,
           "late_ms": {str(p): late_ms(curve, max(1, round(count * p / 100)))
                       for p in (50, 99, 100)}}
    out["rate"] = count / ((done - last_zero) / 1000) if done and done > last_zero else None
    print(f"  flow round {rnd} due: {count:,} added in {adds_s:.1f} s; all pending "
          f"{(done or 0) / 1000:.3f} s after due (p99 {out['late_ms']['99'] or 0:.0f} ms), "
          f"{out['rate'] or 0:,.0f} msg/s", flush=True)
    return out


# --------------------------------------------------------------------------- 4: wake

def wait_subscribed(rc, queue: str, timeout: float) -> bool:
    channel = f"{queue}:PUBSUB"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(rc.command("PUBSUB", "NUMSUB", channel)[1]) >= 1:
            return True
        time.sleep(0.0005)
    return False


def measure_wake(srv: Servers, rc, samples: int, rnd: int, warmup: int = 20) -> dict:
    """Wake latencies and bare round trips (ms), alternating; see the module's doc."""
    producer, bare = BlockingConn(srv.ports["a"]), BlockingConn(srv.ports["bare"])
    waiter = BlockingConn(srv.ports["b"])
    waiter.sock.settimeout(WAKE_WAIT + 10)
    out: dict = {"round": rnd, "wake": [], "bare": [], "problems": [], "unobserved": 0}

    def wake(i: int) -> float:
        queue, value = f"wake{rnd}x{i}", f"w{rnd}-{i}"
        waiter.sock.sendall(request("POST", f"/pop/{queue}?wait={WAKE_WAIT}"))
        if not wait_subscribed(rc, queue, 2.0):
            out["unobserved"] += 1  # then it has waited 2 s: surely registered
        t0 = time.perf_counter()
        producer.sock.sendall(post_request(f"/q/{queue}", f"value={value}"))
        status, body = read_reply(waiter)
        t1 = time.perf_counter()
        added, reply = read_reply(producer)
        if added != 200:
            raise BenchError(f"POST /q/{queue}: {added} {reply!r}")
        got = pop_messages(body, status)
        if [m.get("value") for m in got] != [value]:
            out["problems"].append(f"wake round {rnd} sample {i}: waiter got {got!r} "
                                   f"({status}) for {value}")
        return (t1 - t0) * 1000

    def round_trip() -> float:
        t0 = time.perf_counter()
        status, body = bare.post("/bare", "value=hello")
        t1 = time.perf_counter()
        if status != 200:
            raise BenchError(f"POST /bare: {status} {body!r}")
        return (t1 - t0) * 1000

    try:
        for i in range(warmup):  # not timed: the first samples pay for code not yet run
            wake(-1 - i)
            round_trip()
        for i in range(samples):
            if i % 2:
                out["bare"].append(round_trip())
                out["wake"].append(wake(i))
            else:
                out["wake"].append(wake(i))
                out["bare"].append(round_trip())
    finally:
        for conn in (producer, bare, waiter):
            conn.close()
    if out["unobserved"]:
        out["problems"].append(f"wake round {rnd}: {out['unobserved']} waiter(s) never showed "
                               "a subscription; their adds went out 2 s after the pop")
    print(f"  flow round {rnd} wake: p50 {percentile(out['wake'], 50):.2f} ms, p99 "
          f"{percentile(out['wake'], 99):.2f} ms; bare round trip p50 "
          f"{percentile(out['bare'], 50):.2f} ms", flush=True)
    return out


# --------------------------------------------------------------------------- the section

def measure(redis_bin: str, wrk_bin: str, rounds: int = 3, duration: float = 3.0,
            pause: float = 0.3, quick: bool = False) -> dict:
    due_count = 10_000 if quick else DUE_COUNT
    wake_samples = 50 if quick else WAKE_SAMPLES
    settings = httpbench.Settings(wrk_bin, 1, [50], {50: duration}, pause)
    out: dict = {"settings": {"rounds": rounds, "duration": duration, "batch": BATCH,
                              "cpus": len(os.sched_getaffinity(0)),
                              "pop_limit": POP_LIMIT, "due_count": due_count,
                              "wake_samples": wake_samples, "poll_ms": POLL_S * 1000},
                 "runs": [], "counts": [], "due": [], "wake": [], "problems": []}
    with tempfile.TemporaryDirectory(prefix="restmq-flow-") as tmp_name:
        tmp = Path(tmp_name)
        srv = make_servers(tmp, redis_bin)
        srv.redis.start()
        try:
            start_all(srv.procs())
            with redis_private.RespClient(srv.redis.port) as rc:
                redis_private.top_up(rc, POP_Q, POP_LIMIT)
                out["pop_skipped"] = skip = has_pop(srv.ports["a"])
                if skip:
                    print(f"  flow: parts 3 and 4 not run: {skip}", flush=True)
                records: list[dict] = []
                cases = wrk_cases(srv, tmp, rc, duration, not skip, records)
                out["cases"] = [{"key": c.key, "label": c.label, "baseline": c.baseline,
                                 "url_path": "/" + c.url.split("/", 3)[3]} for c in cases]
                best: dict[str, float] = {}
                for rnd in range(1, rounds + 1):
                    print(f"  flow round {rnd}/{rounds}", flush=True)
                    order = cases if rnd % 2 else cases[::-1]
                    for run in httpbench.run_section("flow", order, settings, best):
                        run.round = rnd
                        out["runs"].append(dataclasses.asdict(run))
                        if run.case == "batch":
                            batch_rate = run.result.requests_per_sec * BATCH
                    for rec in records:
                        rec.setdefault("round", rnd)
                    out["due"].append(measure_due(srv, rc, due_count, batch_rate, rnd))
                    if not skip:
                        out["wake"].append(measure_wake(srv, rc, wake_samples, rnd))
                out["counts"] = records
        finally:
            try:
                stop_all(srv.procs())
            finally:
                srv.redis.stop()
            for proc in srv.procs():
                out["problems"] += [f"{proc.name} logged: {line[:300]}"
                                    for line in log_problems(proc.logfile)
                                    if "without AOF" not in line][:5]
    return out


# --------------------------------------------------------------------------- analysis

def _by_round(sec: dict, case: str) -> dict[int, dict]:
    return {r["round"]: r for r in sec["runs"] if r["case"] == case}


def per_message(sec: dict, case: str, base: str) -> dict | None:
    """Medians over the rounds of a wrk case's messages/s, its ratio to the baseline's req/s
    of the same round, and what a message cost: server and Redis CPU, Redis commands."""
    runs, bases = _by_round(sec, case), _by_round(sec, base)
    counts = {c["round"]: c for c in sec["counts"] if c["case"] == case}
    rounds = sorted(n for n in runs if n in bases and n in counts and counts[n]["messages"])
    if not rounds:
        return None
    # Every 2xx reply added or took `per` messages; requests still in flight when wrk stopped
    # moved some more (counted in `messages`, not in the rate).
    per = sec["settings"]["batch" if case == "batch" else "pop_limit"]
    rate = {n: runs[n]["result"]["requests_per_sec"] * per for n in rounds}

    def med(f) -> float:
        return statistics.median(f(n) for n in rounds)

    return {"rate": med(lambda n: rate[n]), "rounds": [rate[n] for n in rounds],
            "base_rps": med(lambda n: bases[n]["result"]["requests_per_sec"]),
            "ratio": med(lambda n: rate[n] / bases[n]["result"]["requests_per_sec"]),
            "server_us": med(lambda n: runs[n]["cpu"]["server"] / rate[n] * 1e6),
            "redis_us": med(lambda n: runs[n]["cpu"]["redis"] / rate[n] * 1e6),
            "base_us": med(lambda n: bases[n]["cpu"]["server"]
                           / bases[n]["result"]["requests_per_sec"] * 1e6),
            "commands": med(lambda n: counts[n]["commands"] / counts[n]["messages"]),
            "scripts": med(lambda n: counts[n]["scripts"] / counts[n]["messages"]),
            # The messages/s the CPU a message costs (server, Redis, wrk) allows on all of
            # the machine's cores with nothing else running; whatever share other work took.
            "ceiling": med(lambda n: sec["settings"].get("cpus", 2) * rate[n] / sum(
                runs[n]["cpu"][k] for k in ("server", "redis", "wrk"))),
            "cpu": {k: med(lambda n, k=k: runs[n]["cpu"][k]) for k in runs[rounds[0]]["cpu"]},
            "leased_after": max(counts[n]["leased_after"] for n in rounds),
            "short": [n for n in rounds if counts[n]["messages"]
                      < runs[n]["result"]["requests"] * per]}


def due_summary(sec: dict) -> dict | None:
    dues = [d for d in sec["due"] if d.get("rate")]
    if not dues:
        return None
    bare = _by_round(sec, "bare.post")
    ratios = [d["rate"] / bare[d["round"]]["result"]["requests_per_sec"] for d in dues
              if d["round"] in bare]
    return {"rate": statistics.median(d["rate"] for d in dues),
            "ratio": statistics.median(ratios) if ratios else None,
            "base_rps": statistics.median(bare[d["round"]]["result"]["requests_per_sec"]
                                          for d in dues if d["round"] in bare),
            "p50_ms": statistics.median(d["late_ms"]["50"] for d in dues),
            "p99_ms": max(d["late_ms"]["99"] for d in dues),
            "max_ms": max(d["late_ms"]["100"] for d in dues),
            "count": dues[0]["count"]}


def wake_summary(sec: dict) -> dict | None:
    rounds = [w for w in sec["wake"] if w["wake"]]
    if not rounds:
        return None

    def pct(side: str, p: float) -> float:
        return statistics.median(percentile(w[side], p) for w in rounds)

    return {"p50": pct("wake", 50), "p99": pct("wake", 99), "max": max(max(w["wake"])
                                                                       for w in rounds),
            "bare_p50": pct("bare", 50), "bare_p99": pct("bare", 99),
            "p50_ratio": statistics.median(percentile(w["wake"], 50) / percentile(w["bare"], 50)
                                           for w in rounds),
            "p99_ratio": statistics.median(percentile(w["wake"], 99) / percentile(w["bare"], 99)
                                           for w in rounds),
            "samples": sum(len(w["wake"]) for w in rounds)}


def analyse(a) -> None:
    """Adds this section's figures, targets and problems to report.Analysis `a`."""
    from report import Target, other_cpu, wrk_summaries
    sec = a.sec.get("flow")
    if not sec or not sec.get("runs"):
        return
    for s in wrk_summaries(sec).values():
        a.fig.wrk("flow", s)
    runs = [httpbench.Run(r["round"], r["case"], r["connections"], wrk.WrkResult(**r["result"]),
                          r["cpu"], r.get("remaining")) for r in sec["runs"]]
    a.problems += httpbench.problems("flow", runs) + sec.get("problems", [])
    a.problems += [p for d in sec["due"] for p in d["problems"]]
    a.problems += [p for w in sec["wake"] for p in w["problems"]][:10]
    fig = a.fig.add
    for case, base, label, goal in (("batch", "bare.batch", f"`/batch/` of {BATCH}",
                                     BATCH_PER_S),
                                    ("pop", "bare.post", f"`/pop/` of {POP_LIMIT} + its ack",
                                     POP_PER_S)):
        m = per_message(sec, case, base)
        if m is None:
            if case == "pop" and sec.get("pop_skipped"):
                a.targets.append(Target(f"{label}, messages/s (50 connections)", "not run",
                                        f"≥ {goal:,}/s", None, limit=sec["pop_skipped"]))
            continue
        fig(f"flow.{case}.messages_per_s", m["rate"], "messages/s")
        fig(f"flow.{case}.ratio", m["ratio"], f"messages per {base} request", "higher",
            "ratio")
        fig(f"flow.{case}.server_us", m["server_us"], "us server CPU per message", "lower")
        fig(f"flow.{case}.redis_commands", m["commands"], "Redis commands per message",
            "lower")
        if m["short"]:
            a.problems.append(f"flow {case}: in round(s) {m['short']} the queue moved fewer "
                              "messages than the 2xx replies times their size")
        if m["leased_after"]:
            a.problems.append(f"flow {case}: {m['leased_after']:,} messages still leased after "
                              "a run (replies never acknowledged)")
        row = Target(f"{label}, messages/s (50 connections)",
                     f"{m['rate']:,.0f} = {m['ratio']:.1f} × bare req/s",
                     f"≥ {goal:,}/s", m["rate"] >= goal,
                     f"{base.replace('.', ' ')}: {m['base_rps']:,.0f} req/s",
                     figure=f"flow.{case}.messages_per_s")
        if not row.met:
            per = m["server_us"] + m["redis_us"]
            row.limit = (f"CPU, medians: the server {m['cpu']['server']:.2f} cores, Redis "
                         f"{m['cpu']['redis']:.2f}, wrk {m['cpu']['wrk']:.2f}, other work "
                         f"{other_cpu(m['cpu']):.2f}, idle {m['cpu'].get('idle', 0):.2f}. A "
                         f"message costs {m['server_us']:.1f} µs of server CPU and "
                         f"{m['redis_us']:.1f} µs of Redis CPU ({m['commands']:.1f} Redis "
                         f"commands; the bare handler spends {m['base_us']:.0f} µs per "
                         f"request): one core shared by the two allows {1e6 / per:,.0f}/s, "
                         f"the machine's cores with nothing else running {m['ceiling']:,.0f}/s "
                         "(wrk included). " + _short_of(m, goal, other_cpu(m["cpu"])))
        a.targets.append(row)
    d = due_summary(sec)
    if d:
        fig("flow.due.messages_per_s", d["rate"], "messages/s")
        fig("flow.due.ratio", d["ratio"], "messages per bare.post request", "higher", "ratio")
        for k in ("p50_ms", "p99_ms", "max_ms"):
            fig(f"flow.due.late_{k}", d[k], "ms after the due time", "lower")
        a.targets.append(Target(
            f"{d['count']:,} messages due at once: rate of becoming pending",
            f"{d['rate']:,.0f}/s = {d['ratio']:.1f} × bare req/s", f"≥ {DUE_PER_S:,}/s",
            d["rate"] >= DUE_PER_S, f"bare POST: {d['base_rps']:,.0f} req/s",
            figure="flow.due.messages_per_s"))
        a.targets.append(Target(
            f"{d['count']:,} messages due at once: lateness max / p99 (worst round)",
            f"{d['max_ms'] / 1000:.2f} / {d['p99_ms'] / 1000:.2f} s",
            f"≤ {DUE_LATE_S:g} / ≤ {DUE_LATE_S:g} s",
            d["max_ms"] <= DUE_LATE_S * 1000 and d["p99_ms"] <= DUE_LATE_S * 1000,
            f"p50 {d['p50_ms']:.0f} ms", figure="flow.due.late_max_ms"))
    w = wake_summary(sec)
    if w:
        fig("flow.wake.p50_ms", w["p50"], "ms", "lower")
        fig("flow.wake.p99_ms", w["p99"], "ms", "lower")
        fig("flow.wake.p50_ratio", w["p50_ratio"], "x bare POST round trip", "lower", "ratio")
        fig("flow.wake.p99_ratio", w["p99_ratio"], "x bare POST round trip", "lower", "noisy")
        row = Target("long-poll wake, add on A → waiter on B: p50 / p99",
                     f"{w['p50']:.2f} / {w['p99']:.2f} ms",
                     f"< {WAKE_P50_MS:g} / < {WAKE_P99_MS:g} ms",
                     w["p50"] < WAKE_P50_MS and w["p99"] < WAKE_P99_MS,
                     f"bare POST round trip: {w['bare_p50']:.2f} / {w['bare_p99']:.2f} ms",
                     figure="flow.wake.p50_ms")
        a.targets.append(row)
    elif sec.get("pop_skipped"):
        a.targets.append(Target("long-poll wake, add on A → waiter on B: p50 / p99", "not run",
                                f"< {WAKE_P50_MS:g} / < {WAKE_P99_MS:g} ms", None,
                                limit=sec["pop_skipped"]))


def _short_of(m: dict, goal: float, other: float) -> str:
    """Why a rate whose CPU costs are `m` fell short of `goal`."""
    if m["ceiling"] < goal:
        return "The CPU a message costs is the limit."
    if m["cpu"].get("idle", 0) >= 0.2:
        return (f"Neither process was CPU-bound ({m['cpu']['idle']:.2f} cores idle, other "
                f"work {other:.2f}): the server and Redis take turns on each request (its "
                "script, then the reply; for a pop, the claim, the reply, then the ack), so "
                "each waits on the other and for a core whenever other work holds one.")
    return f"Other work on the shared machine took {other:.2f} cores of it."


# --------------------------------------------------------------------------- report

def render(sec: dict) -> list[str]:
    """The report's section (report.py adds the targets to its table)."""
    from report import fmt_cpu, raw_table
    st = sec["settings"]
    o = ["## 7. Batches, due messages, pops and the long-poll wake", "",
         f"bench/flow.py, {st['rounds']} round(s), its own Redis, bare server and two "
         "`twistd restmq --access-log off` (A, B). wrk at 50 connections, "
         f"{st['duration']:g} s per run, on process A. A message rate's ratio is messages/s "
         "÷ the bare handler's req/s in the same round (how many messages one bare request's "
         "time carries), median of the rounds. Batch: a JSON array of "
         f"{st['batch']} strings, baseline the bare POST given the same body. Pop: "
         f"`POST /pop/<q>?limit={st['pop_limit']}` on a queue filled straight in Redis, "
         "baseline the bare POST with an empty body. Messages/s = the 200 replies/s × their "
         "messages (checked against what the queue gained or lost). Redis commands per "
         "message from INFO commandstats (script bodies included). CPU ceiling: the "
         "messages/s the CPU a message costs (server, Redis and wrk) allows on all of the "
         "machine's cores with nothing else running, median of the rounds.", "",
         "| operation | messages/s | baseline req/s | ratio | each round | CPU cores: server / "
         "Redis / wrk / other / idle | server µs CPU per message | Redis µs CPU per message | "
         "Redis commands per message | scripts per message | CPU ceiling messages/s |",
         "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for case, base, label in (("batch", "bare.batch", f"`/batch/` of {st['batch']}"),
                              ("pop", "bare.post", f"`/pop/` of {st['pop_limit']} + ack")):
        m = per_message(sec, case, base)
        if m is None:
            if case == "pop" and sec.get("pop_skipped"):
                o.append(f"| {label} | not run: {sec['pop_skipped']} | | | | | | | | | |")
            continue
        o.append(f"| {label} | {m['rate']:,.0f} | {m['base_rps']:,.0f} | **{m['ratio']:.1f}** "
                 f"| {', '.join(f'{r:,.0f}' for r in m['rounds'])} | {fmt_cpu(m['cpu'])} | "
                 f"{m['server_us']:.1f} | {m['redis_us']:.1f} | {m['commands']:.2f} | "
                 f"{m['scripts']:.3f} | {m['ceiling']:,.0f} |")
    d = due_summary(sec)
    o += ["", f"Due: {st['due_count']:,} messages added by `/batch/` with one `eta`, then the "
          f"pending length polled every {st['poll_ms']:g} ms from just before that instant; "
          "a message's lateness is bounded by the first poll that counted it; rate = all of "
          "them ÷ the time from the last poll that counted none to the first that counted "
          "all. CPU: cores used from the due time until all were pending.", "",
          "| round | adds s | due after s | first pending ms | p50 ms | p99 ms | all ms | "
          "messages/s | ÷ bare POST req/s | CPU cores A / B / Redis / machine |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    bare = _by_round(sec, "bare.post")
    for r in sec["due"]:
        late, c = r["late_ms"], r["cpu"]
        first = r["curve"][0][0] if r["curve"] else None
        rps = bare.get(r["round"], {}).get("result", {}).get("requests_per_sec")
        ratio = f"{r['rate'] / rps:.1f}" if r.get("rate") and rps else ""
        o.append(f"| {r['round']} | {r['adds_s']:.1f} | {r['lead_s']:.1f} | {_ms(first)} | "
                 f"{_ms(late['50'])} | {_ms(late['99'])} | {_ms(late['100'])} | "
                 f"{r['rate'] or 0:,.0f} | {ratio} | {c['a']:.2f} / {c['b']:.2f} / "
                 f"{c['redis']:.2f} / {c['machine']:.2f} |")
    if d:
        o += ["", f"Median rate {d['rate']:,.0f} messages/s ({d['ratio']:.1f} × the bare POST's "
              f"req/s); worst round: all pending {d['max_ms']:.0f} ms after the due time, "
              f"p99 {d['p99_ms']:.0f} ms."]
    w = wake_summary(sec)
    o += ["", "Wake: a waiter `POST /pop/<q>?wait=20` on B; once B is subscribed to the queue's "
          "channel (PUBSUB NUMSUB; a fresh queue per sample), `POST /q/<q>` on A; from just "
          "before the add is sent until the waiter's whole reply is in. Baseline: a `POST "
          "/bare` round trip from the same client, alternating with the wakes. Medians over "
          "the rounds of each round's percentile.", ""]
    if w:
        o += ["| | p50 ms | p99 ms | max ms | p50 ÷ bare | p99 ÷ bare | samples |",
              "|---|---:|---:|---:|---:|---:|---:|",
              f"| bare POST round trip | {w['bare_p50']:.2f} | {w['bare_p99']:.2f} | | | | |",
              f"| add on A → waiter on B | {w['p50']:.2f} | {w['p99']:.2f} | {w['max']:.2f} | "
              f"{w['p50_ratio']:.2f} | {w['p99_ratio']:.2f} | {w['samples']:,} |"]
    else:
        o.append(f"Not run: {sec.get('pop_skipped') or 'no samples'}.")
    o += ["", "| section | round | case | conns | req/s | p50 ms | p99 ms | requests | non-2xx | "
          "socket errors | CPU server / Redis / wrk / other / idle | left in queue |",
          "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    return o + raw_table("flow", sec) + [""]


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def plot(sec: dict, out_dir: Path, stem: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from plots import BASE, OURS, TARGET, _label_bars
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    bars = [("bare POST\n(req/s)", _median_rps(sec, "bare.post"), BASE, None, "")]
    for case, base, name, goal in (("batch", "bare.batch", f"batch of {BATCH}", BATCH_PER_S),
                                   ("pop", "bare.post", f"pop of {POP_LIMIT}", POP_PER_S)):
        m = per_message(sec, case, base)
        if m:
            bars.append((name, m["rate"], OURS, goal, f"{m['ratio']:.1f}x"))
    d = due_summary(sec)
    if d:
        bars.append((f"{d['count']:,} due\nbecome pending", d["rate"], OURS, DUE_PER_S,
                     f"{d['ratio']:.1f}x"))
    for i, (name, value, color, goal, text) in enumerate(bars):
        drawn = ax.bar(i, value or 0, 0.6, color=color)
        _label_bars(ax, drawn, [text])
        if goal:
            ax.hlines(goal, i - 0.3, i + 0.3, colors=TARGET, linewidth=2,
                      label="target" if i == 1 else None)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("messages/s (median); label: ÷ bare req/s")
    ax.set_title("messages/s, one process, 50 connections")
    ax.legend(fontsize=7)
    ax = axes[1]
    for r in sec["due"]:
        if r["curve"]:
            xs = [r["last_zero_ms"]] + [ms for ms, _ in r["curve"]]
            ys = [0] + [n for _, n in r["curve"]]
            ax.step(xs, ys, where="post", label=f"round {r['round']}")
    ax.axvline(DUE_LATE_S * 1000, color=TARGET, linestyle="--", linewidth=1,
               label="target: all within 1 s")
    ax.set_xlabel("ms after the due time")
    ax.set_ylabel("messages pending")
    ax.set_title(f"{sec['settings']['due_count']:,} messages due at one instant")
    ax.legend(fontsize=7)
    ax = axes[2]
    w = wake_summary(sec)
    if w:
        ax.bar([-0.2, 0.8], [w["bare_p50"], w["p50"]], 0.4, color=[BASE, OURS], label="p50")
        ax.bar([0.2, 1.2], [w["bare_p99"], w["p99"]], 0.4, color=[BASE, OURS], alpha=0.45,
               hatch="//", label="p99 (hatched)")
        ax.hlines([WAKE_P50_MS, WAKE_P99_MS], [0.6, 1.0], [1.0, 1.4], colors=TARGET,
                  linewidth=2, label="targets")
        ax.set_xticks([0, 1], ["bare POST\nround trip", "add on A →\nwaiter on B"])
        ax.set_ylabel("ms")
        ax.set_title("long-poll wake")
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.text(0.5, 0.5, "long-poll wake: not run", ha="center", va="center")
        ax.axis("off")
    fig.tight_layout()
    path = out_dir / f"{stem}-flow.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _median_rps(sec: dict, case: str) -> float:
    return statistics.median(r["result"]["requests_per_sec"] for r in sec["runs"]
                             if r["case"] == case)


if __name__ == "__main__":
    import argparse
    import shutil
    p = argparse.ArgumentParser(description="bench/flow.py: batches, due messages, pops, wake")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--quick", action="store_true", help="1 round of 1 s, fewer messages")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 1.0
    result = measure(shutil.which("redis-server"), wrk.find_wrk(), args.rounds, args.duration,
                     quick=args.quick)
    (BENCH_DIR / "out").mkdir(exist_ok=True)
    (BENCH_DIR / "out" / "flow.json").write_text(json.dumps(result))
    print("\n".join(render(result)))
