"""Push queues: how fast one process dispatches, how late a pushed message arrives, and how
closely the token bucket holds its rate.

The section starts its own Redis, one `twistd restmq --access-log off --push-private` (the
dispatching process) and a target of its own process (bench/push_target.py: answers 204 at
once, notes each arrival on the machine's monotonic clock, which every process shares).

0. target: wrk POSTs straight to the target (50 connections): its own capacity, so that the
   dispatch figure below is known not to be the target's limit.
1. dispatch: DISPATCH_QUEUES push queues (push_rate is at most 1000 per queue, so one queue
   cannot show 2,000/s), each push_rate 1000, push_burst 1000, push_concurrency
   DISPATCH_CONCURRENCY (together under the pool's 100 persistent connections to one host),
   stopped, filled straight in Redis, then started (`/control/` start publishes `wake`).
   Messages/s = all of them ÷ the time from the first start request to the last arrival;
   afterwards every queue must be empty with nothing in flight (all acked). The limits allow
   DISPATCH_QUEUES × 1000/s plus the bursts: more than twice the target of 2,000/s.
2. latency: one push queue (rate 1000, burst 1000, concurrency 100); a client adds one
   message at a time, LATENCY_GAP_S apart, each value its number; from just before the add
   is sent until the target noted it.
3. rate: one push queue with push_rate RATE, push_burst BURST, concurrency 100, stopped,
   filled with more than it may send, then started; the target's arrivals over the next
   RATE_SECONDS (5 with --quick) are compared with what the bucket allows: BURST + RATE·t,
   i.e. an observed rate of RATE + BURST/t over the window t.

Each round runs 1, 2, 3; figures are medians over the rounds. `python bench/push.py
[--quick]` prints the figures; bench/run.py runs it as `push`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import redis_private
import wrk
from common import (BENCH_DIR, CpuMeter, ServerProcess, checkout_env, free_ports, log_problems,
                    start_all, stop_all, venv_bin)
from live import BenchError, BlockingConn, percentile, post_request

DISPATCH_QUEUES = 8
DISPATCH_CONCURRENCY = 12  # per queue: 96 in all, under the pool's 100 connections per host
DISPATCH_PER_QUEUE = 2_500
LATENCY_SAMPLES = 1_000
LATENCY_GAP_S = 0.005
RATE, BURST, RATE_SECONDS = 200, 20, 30.0
# Targets (issue 16)
DISPATCH_PER_S = 2_000
RATE_ERROR = 0.05
FORM = "application/x-www-form-urlencoded"


# --------------------------------------------------------------------------- servers

@dataclasses.dataclass
class Servers:
    redis: redis_private.PrivateRedis
    restmq: ServerProcess
    target: ServerProcess
    ports: dict[str, int]

    def procs(self) -> list[ServerProcess]:
        return [self.target, self.restmq]

    def target_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['target']}{path}"


def make_servers(tmp: Path, redis_bin: str) -> Servers:
    ports = dict(zip(("redis", "restmq", "target"), free_ports(3)))
    restmq = ServerProcess("push-restmq", [venv_bin("twistd"), "-n", "--pidfile=", "restmq",
                                           "--port", str(ports["restmq"]), "--redis-port",
                                           str(ports["redis"]), "--access-log", "off",
                                           "--push-private"],
                           f"http://127.0.0.1:{ports['restmq']}/stats/", tmp / "restmq.log",
                           env=checkout_env())
    target = ServerProcess("push-target", [venv_bin("python"),
                                           str(BENCH_DIR / "push_target.py"),
                                           "--port", str(ports["target"])],
                           f"http://127.0.0.1:{ports['target']}/ready", tmp / "target.log")
    return Servers(redis_private.PrivateRedis(redis_bin, ports["redis"], tmp), restmq, target,
                   ports)


# --------------------------------------------------------------------------- HTTP pieces

def call(conn: BlockingConn, method: str, path: str, form: str = "") -> tuple[int, bytes]:
    if method == "POST":
        conn.sock.sendall(post_request(path, form))
    else:
        conn.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return conn.read_response()


def ok(reply: tuple[int, bytes], what: str) -> bytes:
    status, body = reply
    if status != 200:
        raise BenchError(f"{what}: {status} {body[:200]!r}")
    return body


class Sink:
    """The target's notes, read over one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.conn = BlockingConn(port)

    def count(self) -> int:
        return int(ok(call(self.conn, "GET", "/count"), "target /count"))

    def receipts(self) -> list[tuple[float, str]]:
        return [tuple(r) for r in json.loads(ok(call(self.conn, "GET", "/receipts"),
                                                "target /receipts"))]

    def wait_for(self, n: int, timeout: float) -> int:
        give_up = time.monotonic() + timeout
        while (seen := self.count()) < n and time.monotonic() < give_up:
            time.sleep(0.02)
        return seen

    def close(self) -> None:
        self.conn.close()


def configure(conn: BlockingConn, queue: str, url: str, rate: float, burst: int,
              concurrency: int) -> None:
    ok(call(conn, "POST", f"/config/{queue}",
            f"push_url={url}&push_rate={rate:g}&push_burst={burst}"
            f"&push_concurrency={concurrency}"), f"/config/{queue}")


def wait_subscribed(rc, queues: list[str], timeout: float = 10.0) -> None:
    """Until the dispatching process holds each queue's channel: it made their dispatchers
    (it reads the push queues every second), so a `wake` reaches them."""
    give_up = time.monotonic() + timeout
    for q in queues:
        while int(rc.command("PUBSUB", "NUMSUB", f"{q}:PUBSUB")[1]) < 1:
            if time.monotonic() > give_up:
                raise BenchError(f"no dispatcher subscribed to {q}:PUBSUB")
            time.sleep(0.02)


def control(conn: BlockingConn, queue: str, status: str) -> None:
    ok(call(conn, "POST", f"/control/{queue}", f"status={status}"), f"/control/{queue}")


def settled(rc, queues: list[str], timeout: float = 30.0) -> list[str]:
    """The queues still holding a pending or in-flight message after `timeout` s."""
    give_up = time.monotonic() + timeout
    while True:
        left = [q for q in queues if redis_private.queue_length(rc, q)
                or int(rc.command("ZCARD", f"{q}:inflight"))]
        if not left or time.monotonic() > give_up:
            return left
        time.sleep(0.05)


# --------------------------------------------------------------------------- 0: the target

def measure_target(srv: Servers, wrk_bin: str, tmp: Path, duration: float) -> dict:
    script = wrk.write_post_script(tmp / "push-target.lua", "x" * 5, "text/plain")
    meter = CpuMeter({"target": [srv.target.pid]})
    meter.start()
    m = wrk.run(wrk_bin, srv.target_url("/capacity"), threads=2, connections=50,
                duration=duration, script=script)
    cpu = meter.stop({"wrk": m.cpu_seconds})
    sink = Sink(srv.ports["target"])
    try:
        sink.receipts()  # forget them
    finally:
        sink.close()
    return {"rps": m.result.requests_per_sec, "p50_ms": m.result.p50_ms,
            "non2xx": m.result.non_2xx, "cpu": cpu}


# --------------------------------------------------------------------------- 1: dispatch

def measure_dispatch(srv: Servers, rc, per_queue: int, rnd: int) -> dict:
    queues = [f"pushbench{i}" for i in range(DISPATCH_QUEUES)]
    conn, sink = BlockingConn(srv.ports["restmq"]), Sink(srv.ports["target"])
    problems = []
    try:
        sink.receipts()
        for q in queues:
            configure(conn, q, srv.target_url(f"/{q}"), 1000, 1000, DISPATCH_CONCURRENCY)
            control(conn, q, "stop")
            rc.command("DEL", f"{q}:bucket")  # a full bucket, as a new queue's
            redis_private.top_up(rc, q, per_queue)
        wait_subscribed(rc, queues)
        total = per_queue * len(queues)
        meter = CpuMeter({"server": [srv.restmq.pid], "redis": [srv.redis.pid],
                          "target": [srv.target.pid]})
        meter.start()
        t0 = time.monotonic()
        for q in queues:
            control(conn, q, "start")
        seen = sink.wait_for(total, timeout=max(60.0, total / 200))
        cpu = meter.stop()
        notes = sink.receipts()
        left = settled(rc, queues)
    finally:
        conn.close()
        sink.close()
    if seen < total or left:
        problems.append(f"dispatch round {rnd}: the target got {seen:,} of {total:,}; "
                        f"not settled: {', '.join(left) or 'none'}")
    last = max((t for t, _ in notes), default=t0)
    first = min((t for t, _ in notes), default=t0)
    rate = len(notes) / (last - t0) if last > t0 else 0.0
    return {"round": rnd, "messages": total, "received": len(notes), "seconds": last - t0,
            "first_ms": (first - t0) * 1000, "rate": rate, "cpu": cpu, "problems": problems,
            "curve": _curve([t - t0 for t, _ in notes], 0.1)}


def _curve(times: list[float], step: float) -> list[list[float]]:
    """Cumulative arrivals at every `step` seconds: [[s, n], ...]."""
    times = sorted(times)
    out, n, t = [], 0, 0.0
    end = times[-1] if times else 0.0
    while t <= end + step:
        while n < len(times) and times[n] <= t:
            n += 1
        out.append([round(t, 3), n])
        t += step
    return out


# --------------------------------------------------------------------------- 2: latency

def measure_latency(srv: Servers, rc, samples: int, rnd: int) -> dict:
    queue = "pushlatency"
    conn, sink = BlockingConn(srv.ports["restmq"]), Sink(srv.ports["target"])
    sent: dict[str, float] = {}
    try:
        configure(conn, queue, srv.target_url("/latency"), 1000, 1000, 100)
        control(conn, queue, "start")
        wait_subscribed(rc, [queue])
        sink.receipts()
        for i in range(samples):
            value = f"r{rnd}-{i}"
            due = time.monotonic() + LATENCY_GAP_S
            sent[value] = time.monotonic()
            ok(call(conn, "POST", f"/q/{queue}", f"value={value}"), "add")
            time.sleep(max(0.0, due - time.monotonic()))
        sink.wait_for(samples, timeout=30.0)
        notes = sink.receipts()
        left = settled(rc, [queue])
    finally:
        conn.close()
        sink.close()
    ms = [(t - sent[v]) * 1000 for t, v in notes if v in sent]
    problems = []
    if len(ms) < samples or left:
        problems.append(f"latency round {rnd}: {len(ms)} of {samples} arrived"
                        + (", not settled" if left else ""))
    return {"round": rnd, "ms": ms, "problems": problems}


# --------------------------------------------------------------------------- 3: rate

def measure_rate(srv: Servers, rc, seconds: float, rnd: int) -> dict:
    queue = "pushrate"
    conn, sink = BlockingConn(srv.ports["restmq"]), Sink(srv.ports["target"])
    allowed = BURST + RATE * seconds
    try:
        configure(conn, queue, srv.target_url("/rate"), RATE, BURST, 100)
        control(conn, queue, "stop")
        rc.command("DEL", f"{queue}:bucket")
        redis_private.top_up(rc, queue, int(allowed * 1.2) + 100)
        wait_subscribed(rc, [queue])
        sink.receipts()
        t0 = time.monotonic()
        control(conn, queue, "start")
        time.sleep(seconds + 0.5)
        conn.close()  # idle past the server's 20 s keep-alive: a new connection
        conn = BlockingConn(srv.ports["restmq"])
        control(conn, queue, "stop")
        notes = sink.receipts()
        rc.command("DEL", f"{queue}:queue")  # the rest is not needed
        left = settled(rc, [queue])
    finally:
        conn.close()
        sink.close()
    times = sorted(t - t0 for t, _ in notes)
    within = sum(1 for t in times if t <= seconds)
    expected = RATE + BURST / seconds
    observed = within / seconds
    # The worst excess over the bucket in any window starting at an arrival (1 s or more).
    worst = 0.0
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            span = times[j] - start
            if span >= 1.0:
                worst = max(worst, (j - i + 1) / (BURST + RATE * span))
                break
    problems = [f"rate round {rnd}: not settled"] if left else []
    return {"round": rnd, "seconds": seconds, "within": within, "observed": observed,
            "expected": expected, "error": observed / expected - 1,
            "worst_window_ratio": worst, "curve": _curve(times, 0.25), "problems": problems}


# --------------------------------------------------------------------------- the section

def measure(redis_bin: str, wrk_bin: str, rounds: int = 3, quick: bool = False) -> dict:
    per_queue = 500 if quick else DISPATCH_PER_QUEUE
    samples = 200 if quick else LATENCY_SAMPLES
    seconds = 5.0 if quick else RATE_SECONDS
    out: dict = {"settings": {"rounds": rounds, "queues": DISPATCH_QUEUES,
                              "concurrency": DISPATCH_CONCURRENCY, "per_queue": per_queue,
                              "latency_samples": samples, "latency_gap_ms": LATENCY_GAP_S * 1e3,
                              "rate": RATE, "burst": BURST, "rate_seconds": seconds,
                              "cpus": len(os.sched_getaffinity(0))},
                 "target": [], "dispatch": [], "latency": [], "rate": [], "problems": []}
    with tempfile.TemporaryDirectory(prefix="restmq-push-") as tmp_name:
        tmp = Path(tmp_name)
        srv = make_servers(tmp, redis_bin)
        srv.redis.start()
        try:
            start_all(srv.procs())
            with redis_private.RespClient(srv.redis.port) as rc:
                for rnd in range(1, rounds + 1):
                    print(f"  push round {rnd}/{rounds}", flush=True)
                    t = measure_target(srv, wrk_bin, tmp, 1.0 if quick else 3.0)
                    out["target"].append({"round": rnd, **t})
                    print(f"     target alone {t['rps']:,.0f} req/s", flush=True)
                    d = measure_dispatch(srv, rc, per_queue, rnd)
                    out["dispatch"].append(d)
                    print(f"     dispatch {d['rate']:,.0f} messages/s ({d['received']:,} in "
                          f"{d['seconds']:.2f} s)", flush=True)
                    lat = measure_latency(srv, rc, samples, rnd)
                    out["latency"].append(lat)
                    if lat["ms"]:
                        print(f"     add → target p50 {percentile(lat['ms'], 50):.2f} ms, "
                              f"p99 {percentile(lat['ms'], 99):.2f} ms", flush=True)
                    r = measure_rate(srv, rc, seconds, rnd)
                    out["rate"].append(r)
                    print(f"     rate {r['observed']:.2f}/s over {seconds:g} s, allowed "
                          f"{r['expected']:.2f}/s ({r['error'] * 100:+.2f} %)", flush=True)
        finally:
            try:
                stop_all(srv.procs())
            finally:
                srv.redis.stop()
            for proc in srv.procs():
                out["problems"] += [f"{proc.name} logged: {line[:300]}"
                                    for line in log_problems(proc.logfile)
                                    if "without AOF" not in line
                                    and "persistence:none" not in line][:5]
    return out


# --------------------------------------------------------------------------- analysis

def summary(sec: dict) -> dict | None:
    """Medians over the rounds."""
    d = [r for r in sec["dispatch"] if r["rate"]]
    if not d:
        return None
    lat = [r["ms"] for r in sec["latency"] if r["ms"]]
    rate = sec["rate"]

    def med(values) -> float:
        return statistics.median(list(values))

    server_us = med(r["cpu"]["server"] / r["rate"] * 1e6 for r in d)
    return {"rate": med(r["rate"] for r in d), "rounds": [r["rate"] for r in d],
            "target_rps": med(t["rps"] for t in sec["target"]),
            "ratio": med(r["rate"] / t["rps"] for r, t in zip(d, sec["target"])),
            "server_us": server_us, "ceiling": 1e6 / server_us,
            "cpu": {k: med(r["cpu"][k] for r in d) for k in d[0]["cpu"]},
            "p50": med(percentile(x, 50) for x in lat) if lat else None,
            "p99": med(percentile(x, 99) for x in lat) if lat else None,
            "max": max(max(x) for x in lat) if lat else None,
            "samples": sum(len(x) for x in lat),
            "observed": med(r["observed"] for r in rate) if rate else None,
            "expected": rate[0]["expected"] if rate else None,
            "error": med(r["error"] for r in rate) if rate else None,
            "worst_error": max((r["error"] for r in rate), key=abs) if rate else None,
            "worst_window": max(r["worst_window_ratio"] for r in rate) if rate else None}


def analyse(a) -> None:
    """Adds this section's figures, targets and problems to report.Analysis `a`."""
    from report import Target
    sec = a.sec.get("push")
    if not sec or not sec.get("dispatch"):
        return
    a.problems += sec.get("problems", [])
    a.problems += [p for part in ("dispatch", "latency", "rate") for r in sec[part]
                   for p in r["problems"]]
    m = summary(sec)
    if m is None:
        return
    st, fig = sec["settings"], a.fig.add
    fig("push.target.rps", m["target_rps"], "req/s")
    fig("push.dispatch.messages_per_s", m["rate"], "messages/s")
    fig("push.dispatch.ratio", m["ratio"], "messages per target-alone request", "higher",
        "ratio")
    fig("push.dispatch.server_us", m["server_us"], "us server CPU per message", "lower")
    row = Target(f"push dispatch from one process to a 204 target ({st['queues']} queues), "
                 "messages/s", f"{m['rate']:,.0f}/s (rounds: "
                 + ", ".join(f"{r:,.0f}" for r in m["rounds"]) + ")",
                 f"≥ {DISPATCH_PER_S:,}/s", m["rate"] >= DISPATCH_PER_S,
                 f"target alone: {m['target_rps']:,.0f} req/s; {m['server_us']:.0f} µs server "
                 "CPU per message", figure="push.dispatch.messages_per_s")
    if not row.met:
        row.limit = (f"CPU, medians: the server had {m['cpu']['server']:.2f} cores, Redis "
                     f"{m['cpu']['redis']:.2f}, the target {m['cpu']['target']:.2f}, idle "
                     f"{m['cpu'].get('idle', 0):.2f} (the rest: other work on the machine). "
                     f"A push costs {m['server_us']:.0f} µs of the server's CPU (claim, POST "
                     "through twisted.web.client.Agent, reply, ack), so a whole core allows "
                     f"{m['ceiling']:,.0f}/s; the server got a share of one.")
    a.targets.append(row)
    if m["p50"] is not None:
        fig("push.latency.p50_ms", m["p50"], "ms", "lower")
        fig("push.latency.p99_ms", m["p99"], "ms", "lower")
        a.info.append(Target("push: add → the target's receipt, p50 / p99",
                             f"{m['p50']:.2f} / {m['p99']:.2f} ms", "", None,
                             f"max {m['max']:.1f} ms, {m['samples']:,} adds "
                             f"{st['latency_gap_ms']:g} ms apart", figure="push.latency.p50_ms"))
    if m["error"] is not None:
        fig("push.rate.error_pct", m["error"] * 100, "% observed vs allowed", "lower")
        a.targets.append(Target(
            f"push rate limit: push_rate {st['rate']}, push_burst {st['burst']}, over "
            f"{st['rate_seconds']:g} s: observed ÷ (rate + burst/t)",
            f"{m['observed']:.2f}/s vs {m['expected']:.2f}/s = {m['error'] * 100:+.2f} % "
            f"(worst round {m['worst_error'] * 100:+.2f} %)", f"within ±{RATE_ERROR:.0%}",
            abs(m["worst_error"]) <= RATE_ERROR,
            f"worst window ≥ 1 s: {m['worst_window']:.3f} × burst + rate·t",
            figure="push.rate.error_pct"))


def render(sec: dict) -> list[str]:
    st = sec["settings"]
    m = summary(sec)
    o = ["## 9. Push queues", "",
         f"bench/push.py, {st['rounds']} round(s), its own Redis, one `twistd restmq "
         "--access-log off --push-private` (the dispatching process) and a target in a process "
         "of its own (bench/push_target.py: a Twisted protocol that answers 204 at once and "
         "notes each arrival on the monotonic clock all processes share).", "",
         "* Target alone: wrk POSTs to it at 50 connections, its capacity (it must not be "
         "the limit below).",
         f"* Dispatch: {st['queues']} push queues (push_rate is at most 1000 per queue), "
         f"each push_rate 1000, push_burst 1000, push_concurrency {st['concurrency']} "
         f"({st['queues'] * st['concurrency']} in all, under the pool's 100 persistent "
         f"connections per host), stopped, filled with {st['per_queue']:,} messages each "
         "straight in Redis, then started; messages/s = all of them ÷ the time from the "
         "first start to the last arrival; every queue empty and nothing in flight after. "
         f"The limits allow {st['queues'] * 1000:,}/s plus the bursts, so they do not bind.",
         f"* Latency: one push queue (rate 1000, burst 1000, concurrency 100), one add at a "
         f"time {st['latency_gap_ms']:g} ms apart from one client; from just before the add "
         "is sent until the target noted it (add, `wake`, push claim, POST).",
         f"* Rate: push_rate {st['rate']}, push_burst {st['burst']}, concurrency 100, a "
         f"stopped queue filled beyond what it may send, then started; arrivals over "
         f"{st['rate_seconds']:g} s against burst + rate·t.", ""]
    if m is None:
        return o + ["Not run.", ""]
    o += ["| round | target alone req/s | dispatch messages/s | first arrival ms | server "
          "cores | Redis cores | target cores | idle | server µs per message | p50 ms | "
          "p99 ms | rate observed/s | allowed/s | error |",
          "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t, d, lat, r in zip(sec["target"], sec["dispatch"], sec["latency"], sec["rate"]):
        c = d["cpu"]
        us = c["server"] / d["rate"] * 1e6 if d["rate"] else 0
        p50 = f"{percentile(lat['ms'], 50):.2f}" if lat["ms"] else ""
        p99 = f"{percentile(lat['ms'], 99):.2f}" if lat["ms"] else ""
        o.append(f"| {d['round']} | {t['rps']:,.0f} | {d['rate']:,.0f} | {d['first_ms']:.1f} | "
                 f"{c['server']:.2f} | {c['redis']:.2f} | {c['target']:.2f} | "
                 f"{c.get('idle', 0):.2f} | {us:.0f} | {p50} | {p99} | {r['observed']:.2f} | "
                 f"{r['expected']:.2f} | {r['error'] * 100:+.2f} % |")
    o += ["", f"Medians: dispatch {m['rate']:,.0f} messages/s ({m['ratio']:.2f} of the target "
          f"alone), {m['server_us']:.0f} µs of server CPU per push (a whole core: "
          f"{m['ceiling']:,.0f}/s); add → receipt p50 {m['p50']:.2f} ms, p99 {m['p99']:.2f} ms; "
          f"rate {m['observed']:.2f}/s against {m['expected']:.2f}/s allowed "
          f"({m['error'] * 100:+.2f} %).", ""]
    return o


def plot(sec: dict, out_dir: Path, stem: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from plots import BASE, OURS, TARGET, _label_bars
    m = summary(sec)
    st = sec["settings"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    ax = axes[0]
    bars = ax.bar([0, 1], [m["target_rps"], m["rate"]], 0.6, color=[BASE, OURS])
    _label_bars(ax, bars, [f"{m['target_rps']:,.0f}", f"{m['rate']:,.0f}"])
    ax.hlines(DISPATCH_PER_S, 0.7, 1.3, colors=TARGET, linewidth=2, label="target 2,000/s")
    ax.set_xticks([0, 1], ["target alone\n(wrk, req/s)", "dispatch, one process\n(messages/s)"])
    ax.set_title("push dispatch to a 204 target")
    ax.legend(fontsize=7)
    ax = axes[1]
    for r in sec["latency"]:
        if r["ms"]:
            xs = sorted(r["ms"])
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))],
                    label=f"round {r['round']}")
    ax.set_xscale("log")
    ax.set_xlabel("ms from the add to the target's receipt")
    ax.set_ylabel("fraction of the pushes")
    ax.set_title(f"add → push latency (p50 {m['p50']:.2f}, p99 {m['p99']:.2f} ms)")
    ax.legend(fontsize=7)
    ax = axes[2]
    for r in sec["rate"]:
        ax.step([t for t, _ in r["curve"]], [n for _, n in r["curve"]], where="post",
                label=f"round {r['round']} ({r['error'] * 100:+.1f} %)")
    t_end = st["rate_seconds"]
    ax.plot([0, t_end], [st["burst"], st["burst"] + st["rate"] * t_end], color=TARGET,
            linestyle="--", linewidth=1, label="burst + rate·t")
    ax.set_xlim(0, t_end)
    ax.set_xlabel("s after the start")
    ax.set_ylabel("pushes received")
    ax.set_title(f"rate limit: push_rate {st['rate']}, push_burst {st['burst']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"{stem}-push.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


if __name__ == "__main__":
    import argparse
    import shutil
    p = argparse.ArgumentParser(description="bench/push.py: push dispatch, latency, rate")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1 round, fewer messages, 5 s rate")
    args = p.parse_args()
    if args.quick:
        args.rounds = 1
    result = measure(shutil.which("redis-server"), wrk.find_wrk(), args.rounds, args.quick)
    (BENCH_DIR / "out").mkdir(exist_ok=True)
    (BENCH_DIR / "out" / "push.json").write_text(json.dumps(result))
    print("\n".join(render(result)))
