"""Throughput benchmark: RestMQ add / hard get against a bare cyclone handler, with wrk.

Run from the repository root:  .venv/bin/python bench/run.py [--duration 10] [--rounds 3]
[--connections 50] [--out bench/report.md]   (--quick: 2 s, 1 round, for smoke tests)

The bare server (bench/bare_server.py) is the ceiling for any cyclone handler on this
machine, so RestMQ is reported as a ratio to it; ratios travel between machines far better
than absolute req/s. Each round runs bare then RestMQ back to back for each test, so slow
drift of the machine (thermal, noisy neighbours) hits both sides alike; medians over the
rounds damp the rest.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis_private
import wrk
from common import (BENCH_DIR, ServerProcess, checkout_env, free_ports,
                    software_info, venv_bin)
from common import raise_exit as _raise_exit

QUEUE = "benchq"
POST_BODY = "value=hello"
FORM_TYPE = "application/x-www-form-urlencoded"
TESTS = ("add", "get")
TEST_LABELS = {"add": "add (POST)", "get": "hard get (GET)"}
# Minimum acceptable restmq/bare throughput ratio per test.
TARGETS = {"add": 0.45, "get": 0.40}
# Prefill = this many times the best rate seen so far x duration: the restmq side is not
# expected to beat the bare side, so 1.5x its rate leaves a comfortable margin.
PREFILL_MARGIN = 1.5


# --------------------------------------------------------------------------- measuring

@dataclasses.dataclass
class Side:
    name: str   # "bare" or "restmq"
    url_base: str
    path: str   # same path for POST and GET

    @property
    def url(self) -> str:
        return self.url_base + self.path


@dataclasses.dataclass
class Run:
    round: int
    test: str
    side: str
    result: wrk.WrkResult
    queue_before: int | None = None  # restmq GET only: pending messages before / after
    queue_after: int | None = None


def measure(args: argparse.Namespace, wrk_bin: str, sides: list[Side], redis_port: int,
            post_script: Path) -> list[Run]:
    runs: list[Run] = []
    best_rate = 0.0
    with redis_private.RespClient(redis_port) as rc:
        for rnd in range(1, args.rounds + 1):
            for test in TESTS:
                for side in sides:  # bare first, then restmq: A/B within the round
                    before = None
                    if test == "get" and side.name == "restmq":
                        # Hard gets on an empty queue are cheap 204s; keep it non-empty.
                        target = max(args.prefill_min,
                                     math.ceil(PREFILL_MARGIN * best_rate * args.duration))
                        t0 = time.monotonic()
                        before = redis_private.top_up(rc, QUEUE, target)
                        print(f"  prefill: {QUEUE} has {before:,} pending "
                              f"({time.monotonic() - t0:.1f} s)", flush=True)
                    res = wrk.run(wrk_bin, side.url, threads=args.threads,
                                  connections=args.connections, duration=args.duration,
                                  script=post_script if test == "add" else None)
                    after = (redis_private.queue_length(rc, QUEUE)
                             if before is not None else None)
                    runs.append(Run(rnd, test, side.name, res, before, after))
                    best_rate = max(best_rate, res.requests_per_sec)
                    print(f"round {rnd}/{args.rounds}  {test:<4} {side.name:<7}"
                          f"{res.requests_per_sec:>10,.0f} req/s  p50 {res.p50_ms:7.2f} ms  "
                          f"p99 {res.p99_ms:7.2f} ms  non-2xx {res.non_2xx}"
                          + (f"  queue {before:,} -> {after:,}" if before is not None else ""),
                          flush=True)
                    time.sleep(args.pause)  # let TIME_WAIT sockets and GC settle
    return runs


@dataclasses.dataclass
class Summary:
    test: str
    bare_rps: float
    restmq_rps: float
    bare_p50: float
    bare_p99: float
    restmq_p50: float
    restmq_p99: float

    @property
    def ratio(self) -> float:
        return self.restmq_rps / self.bare_rps if self.bare_rps else 0.0

    @property
    def met(self) -> bool:
        return self.ratio >= TARGETS[self.test]


def summarize(runs: list[Run]) -> list[Summary]:
    def med(test: str, side: str, field: str) -> float:
        return statistics.median(getattr(r.result, field) for r in runs
                                 if r.test == test and r.side == side)

    return [Summary(test,
                    med(test, "bare", "requests_per_sec"), med(test, "restmq", "requests_per_sec"),
                    med(test, "bare", "p50_ms"), med(test, "bare", "p99_ms"),
                    med(test, "restmq", "p50_ms"), med(test, "restmq", "p99_ms"))
            for test in TESTS]


# --------------------------------------------------------------------------- reporting

def machine_info(redis: redis_private.PrivateRedis, wrk_bin: str) -> dict[str, str]:
    return {**software_info(redis.version()), "wrk": wrk.version(wrk_bin)}


def _ms(p50: float, p99: float) -> str:
    return f"{p50:.2f} / {p99:.2f}"


def summary_table(summaries: list[Summary]) -> str:
    lines = ["| test | bare req/s | restmq req/s | ratio | bare p50/p99 ms | restmq p50/p99 ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lines.append(f"| {TEST_LABELS[s.test]} | {s.bare_rps:,.0f} | {s.restmq_rps:,.0f} | "
                     f"{s.ratio:.2f} | {_ms(s.bare_p50, s.bare_p99)} | "
                     f"{_ms(s.restmq_p50, s.restmq_p99)} |")
    return "\n".join(lines)


def target_lines(summaries: list[Summary]) -> list[str]:
    return [f"- {TEST_LABELS[s.test]}: ratio {s.ratio:.2f}, target >= {TARGETS[s.test]:.2f}: "
            f"**{'met' if s.met else 'NOT MET'}**" for s in summaries]


def notes(runs: list[Run], self_test: bool) -> list[str]:
    out = []
    bad = [r for r in runs if r.result.non_2xx]
    if bad:
        for r in bad:
            out.append(f"- round {r.round} {r.test} {r.side}: {r.result.non_2xx:,} responses with "
                       f"status >= 400 (of {r.result.requests:,}); its req/s includes them")
    else:
        out.append("- every response was 2xx/3xx (wrk reported no non-2xx responses)")
    for r in runs:
        if r.result.socket_errors:
            out.append(f"- round {r.round} {r.test} {r.side}: {r.result.socket_errors} socket "
                       f"errors (connect/read/write/timeout)")
    gets = [r for r in runs if r.queue_before is not None]
    dry = [r for r in gets if r.queue_after == 0]
    for r in dry:
        out.append(f"- round {r.round}: **the queue ran dry** during the restmq GET run (0 left "
                   f"afterwards); some GETs may have been cheap empty-queue 204s, so its numbers "
                   f"may be too optimistic (raise --prefill-min)")
    if gets and not dry:
        low = min(r.queue_after for r in gets)
        out.append(f"- the queue never ran dry during restmq GET runs (lowest remaining: {low:,})")
    if not self_test:
        # Every 2xx hard get pops one message; fewer pops than successes means some GETs
        # were answered without a message (204s are not counted by wrk as errors).
        for r in gets:
            popped = r.queue_before - r.queue_after
            ok = r.result.requests - r.result.non_2xx
            if popped < ok:
                out.append(f"- round {r.round}: {ok:,} successful GETs but only {popped:,} "
                           f"messages popped: some GETs returned no message")
    return out


def raw_table(runs: list[Run]) -> str:
    lines = ["| round | test | side | req/s | p50 ms | p99 ms | requests | non-2xx | "
             "socket errors | queue before -> after |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        res = r.result
        queue = (f"{r.queue_before:,} -> {r.queue_after:,}"
                 if r.queue_before is not None else "")
        lines.append(f"| {r.round} | {r.test} | {r.side} | {res.requests_per_sec:,.0f} | "
                     f"{res.p50_ms:.2f} | {res.p99_ms:.2f} | {res.requests:,} | {res.non_2xx:,} | "
                     f"{res.socket_errors} | {queue} |")
    return "\n".join(lines)


def render_report(args: argparse.Namespace, info: dict[str, str], runs: list[Run],
                  summaries: list[Summary], started: datetime.datetime) -> str:
    restmq_desc = ("a second bare server (--self-test: harness check, not a RestMQ result)"
                   if args.self_test else
                   f"`twistd -n restmq`, `POST /q/{QUEUE}` (`{POST_BODY}`) and `GET /q/{QUEUE}`")
    parts = [
        "# RestMQ benchmark" + (" (SELF-TEST)" if args.self_test else ""),
        "",
        f"- date: {started:%Y-%m-%d %H:%M:%S %Z}",
        f"- machine: {info['nproc']}, {info['cpu']}, {info['os']}",
        f"- software: Python {info['python']}, Twisted {info['twisted']}, cyclone "
        f"{info['cyclone']}, txredisapi {info['txredisapi']}, redis-server "
        f"{info['redis-server']}, {info['wrk']}",
        f"- restmq revision: {info['restmq']}",
        f"- load: `wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency`, "
        f"keep-alive; {args.rounds} round(s); in each round bare then restmq for each test; "
        f"wrk, both servers and Redis share this machine",
        f"- bare: `bench/bare_server.py`, one cyclone handler writing `ok\\r\\n`, no log observer",
        f"- restmq: {restmq_desc}",
        f"- before each restmq GET run the queue is filled directly in Redis (RestMQ key "
        f"layout) to {PREFILL_MARGIN}x the best rate seen so far times the duration "
        f"(at least {args.prefill_min:,})",
        "",
        f"## Medians over {args.rounds} round(s)",
        "",
        summary_table(summaries),
        "",
        "ratio = restmq req/s / bare req/s (medians).",
        "",
        "## Targets",
        "",
        *target_lines(summaries),
        "",
        "## Notes",
        "",
        *notes(runs, args.self_test),
        "",
        "## Per-round raw numbers",
        "",
        raw_table(runs),
        "",
    ]
    return "\n".join(parts)


# --------------------------------------------------------------------------- self-test

def check_parser() -> list[str]:
    """Compare the parser's reading of a canned wrk report with the known values."""
    got = wrk.parse(wrk.SAMPLE_OUTPUT)
    problems = []
    for field in dataclasses.fields(wrk.WrkResult):
        a, b = getattr(got, field.name), getattr(wrk.SAMPLE_EXPECTED, field.name)
        if not math.isclose(a, b, rel_tol=1e-9):
            problems.append(f"parser: {field.name} = {a}, expected {b}")
    return problems


def check_runs(runs: list[Run]) -> list[str]:
    """Sanity checks that hold when both sides are bare servers answering 200."""
    problems = []
    for r in runs:
        res, tag = r.result, f"round {r.round} {r.test} {r.side}"
        if res.requests <= 0 or res.requests_per_sec <= 0:
            problems.append(f"{tag}: no requests measured")
        if not 0 < res.p50_ms <= res.p99_ms:
            problems.append(f"{tag}: implausible latencies p50 {res.p50_ms} p99 {res.p99_ms}")
        if res.non_2xx or res.socket_errors:
            problems.append(f"{tag}: {res.non_2xx} non-2xx, {res.socket_errors} socket errors")
        # wrk's req/s is requests / elapsed; the two must agree with what we parsed.
        if not math.isclose(res.requests / res.seconds, res.requests_per_sec, rel_tol=0.05):
            problems.append(f"{tag}: req/s {res.requests_per_sec} does not match "
                            f"{res.requests} requests in {res.seconds} s")
    return problems


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="RestMQ vs bare cyclone throughput benchmark (wrk).")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    p.add_argument("--out", type=Path, default=None,
                   help="report file (default bench/report.md)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 s, 1 round")
    p.add_argument("--pause", type=float, default=1.0,
                   help="seconds of idle between wrk runs (default 1)")
    p.add_argument("--prefill-min", type=int, default=20_000,
                   help="minimum pending messages before a restmq GET run (default 20000)")
    # Hidden: measure a second bare server as "restmq", to check the harness itself.
    p.add_argument("--self-test", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.rounds = 2, 1
    if args.duration < 1 or args.rounds < 1 or args.connections < 1 or args.threads < 1:
        p.error("--duration, --rounds, --connections and --threads must be >= 1")
    if args.connections < args.threads:
        p.error("--connections must be >= --threads (a wrk requirement)")
    if args.out is None:
        # A self-test must never overwrite the real report.
        args.out = BENCH_DIR / ("report-selftest.md" if args.self_test else "report.md")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk_bin = wrk.find_wrk()
    if wrk_bin is None:
        print("error: wrk not found on PATH. Install it (Debian: apt-get install wrk) and retry.",
              file=sys.stderr)
        return 2
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        print("error: redis-server not found on PATH. Install it (Debian: apt-get install "
              "redis-server) and retry.", file=sys.stderr)
        return 2

    problems = check_parser() if args.self_test else []
    # SIGTERM takes the same try/finally path as Ctrl-C, so nothing is left running.
    signal.signal(signal.SIGTERM, _raise_exit)
    started = datetime.datetime.now(datetime.timezone.utc)

    with tempfile.TemporaryDirectory(prefix="restmq-bench-") as tmp_name:
        tmp = Path(tmp_name)
        redis_port, bare_port, restmq_port = free_ports(3)
        redis = redis_private.PrivateRedis(redis_bin, redis_port, tmp)
        python = venv_bin("python")
        bare = ServerProcess("bare server",
                             [python, str(BENCH_DIR / "bare_server.py"), "--port", str(bare_port)],
                             f"http://127.0.0.1:{bare_port}/bare", tmp / "bare.log")
        if args.self_test:
            restmq = ServerProcess("second bare server (self-test)",
                                   [python, str(BENCH_DIR / "bare_server.py"),
                                    "--port", str(restmq_port)],
                                   f"http://127.0.0.1:{restmq_port}/bare", tmp / "restmq.log")
            restmq_path = "/bare"
        else:
            restmq = ServerProcess("restmq server",
                                   [venv_bin("twistd"), "-n", "--pidfile=", "restmq",
                                    "--port", str(restmq_port), "--redis-port", str(redis_port)],
                                   f"http://127.0.0.1:{restmq_port}/stats/", tmp / "restmq.log",
                                   env=checkout_env())
            restmq_path = f"/q/{QUEUE}"
        sides = [Side("bare", f"http://127.0.0.1:{bare_port}", "/bare"),
                 Side("restmq", f"http://127.0.0.1:{restmq_port}", restmq_path)]
        post_script = wrk.write_post_script(tmp / "post.lua", POST_BODY, FORM_TYPE)

        try:
            redis.start()
            info = machine_info(redis, wrk_bin)
            bare.start()
            restmq.start()
            print(f"redis :{redis_port}  bare :{bare_port}  restmq :{restmq_port}  "
                  f"({args.rounds} round(s) x 4 runs of {args.duration} s)", flush=True)
            runs = measure(args, wrk_bin, sides, redis_port, post_script)
            for server in (bare, restmq):
                if server.proc is not None and server.proc.poll() is not None:
                    raise RuntimeError(f"{server.name} died during the benchmark:\n"
                                       f"{server.log_tail()}")
        except KeyboardInterrupt:
            print("interrupted; stopping servers", file=sys.stderr)
            return 130
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            # Cleanup must not be cut short by a second Ctrl-C / SIGTERM; each step has a
            # timeout, so this cannot hang for long.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                for server in (restmq, bare):
                    server.stop()
            finally:
                redis.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, _raise_exit)

    summaries = summarize(runs)
    report = render_report(args, info, runs, summaries, started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print()
    print(summary_table(summaries))
    print()
    print("\n".join(target_lines(summaries)).replace("**", ""))
    for line in notes(runs, args.self_test):
        print(line.replace("**", ""))
    print(f"\nreport written to {args.out}")

    if args.self_test:
        problems += check_runs(runs)
        for problem in problems:
            print(f"SELF-TEST FAILED: {problem}", file=sys.stderr)
        print("self-test: " + ("FAILED" if problems else "ok (parser and harness checks passed)"))
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
