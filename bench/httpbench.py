"""wrk measurements of HTTP cases against their baselines, interleaved round by round.

A section is a list of cases; a case may name another case of the same section as its
baseline. Every round runs every case once per connection count, back to back, so slow drift
of a shared machine (thermal, other work) hits a figure and its baseline alike; odd rounds run
the list forwards and even rounds backwards, so neither side always goes first. Each
figure's ratio is the median over the rounds of (case / its baseline in that round).
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Callable

import wrk
from common import CpuMeter


@dataclasses.dataclass
class Case:
    key: str                      # unique within its section, e.g. "add.off"
    label: str                    # for tables, e.g. "add `POST /q/<q>`"
    url: str
    script: Path | None           # wrk Lua script (method, body, headers); None: plain GET
    baseline: str | None = None   # key of the case this one is compared with
    # Processes whose CPU is metered while this case runs, by role ("server", "redis", ...).
    cpu: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # Before each run: fill whatever the case consumes for about this many requests (its best
    # rate so far, else the best of any case, times the run's duration).
    prepare: Callable[[float], None] | None = None
    # After each run: how many items are left to consume (must stay above 0, else the run
    # measured replies to an empty queue).
    remaining: Callable[[], int] | None = None


@dataclasses.dataclass
class Run:
    round: int
    case: str
    connections: int
    result: wrk.WrkResult
    cpu: dict[str, float]         # cores per role, plus wrk, machine and idle
    remaining: int | None = None


@dataclasses.dataclass
class Settings:
    wrk_bin: str
    rounds: int
    connections: list[int]
    durations: dict[int, float]   # seconds per run, by connection count
    pause: float                  # idle seconds between runs
    pin_wrk: str | None = None    # taskset -c CPUs for wrk


def threads_for(connections: int) -> int:
    # wrk needs connections >= threads; 2 threads use both CPUs at 50 connections.
    return min(2, connections)


def run_section(name: str, cases: list[Case], settings: Settings,
                best: dict[str, float]) -> list[Run]:
    """Run every case `settings.rounds` times per connection count. `best` (shared by all
    sections) holds the highest req/s seen so far per case and connection count ("key@50") and
    overall ("*"); prepare() plans for the case's own, else the overall one."""
    runs: list[Run] = []
    for rnd in range(1, settings.rounds + 1):
        order = cases if rnd % 2 else list(reversed(cases))
        for conns in settings.connections:
            for case in order:
                if case.prepare is not None:
                    rate = best.get(f"{case.key}@{conns}") or max(best.get("*", 0.0), 1000.0)
                    case.prepare(rate * settings.durations[conns])
                meter = CpuMeter(case.cpu)
                meter.start()
                measured = wrk.run(settings.wrk_bin, case.url, threads=threads_for(conns),
                                   connections=conns, duration=settings.durations[conns],
                                   script=case.script, cpus=settings.pin_wrk)
                cpu = meter.stop({"wrk": measured.cpu_seconds})
                res = measured.result
                left = case.remaining() if case.remaining is not None else None
                runs.append(Run(rnd, case.key, conns, res, cpu, left))
                for k in (f"{case.key}@{conns}", "*"):
                    best[k] = max(best.get(k, 0.0), res.requests_per_sec)
                print(f"  {name} round {rnd}/{settings.rounds} c{conns:<3} {case.key:<12}"
                      f"{res.requests_per_sec:>9,.0f} req/s  p50 {res.p50_ms:6.2f}  p99 "
                      f"{res.p99_ms:6.2f} ms  " + cpu_text(cpu)
                      + (f"  non-2xx {res.non_2xx}" if res.non_2xx else "")
                      + (f"  left {left:,}" if left is not None else ""), flush=True)
                time.sleep(settings.pause)  # let sockets and GC settle
    return runs


def cpu_text(cpu: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in cpu.items())


@dataclasses.dataclass
class Summary:
    """Medians over the rounds of one case at one connection count."""
    case: str
    connections: int
    rps: float
    p50: float
    p99: float
    cpu: dict[str, float]
    baseline: str | None = None
    # Medians of the per-round ratios to the baseline (None without a baseline).
    rps_ratio: float | None = None
    p50_ratio: float | None = None
    p99_ratio: float | None = None
    # Median of the per-round (baseline server CPU per request / this case's): how much
    # more work a request costs, whatever share of the CPUs other work left the servers.
    cpu_ratio: float | None = None
    base_rps: float | None = None
    base_p50: float | None = None
    base_p99: float | None = None
    rounds: int = 0


def summarize(cases: list[Case], runs: list[Run]) -> dict[tuple[str, int], Summary]:
    by = {(r.case, r.connections, r.round): r for r in runs}
    out: dict[tuple[str, int], Summary] = {}
    conns_seen = sorted({r.connections for r in runs})
    rounds = sorted({r.round for r in runs})
    for case in cases:
        for c in conns_seen:
            mine = [by[(case.key, c, n)] for n in rounds if (case.key, c, n) in by]
            if not mine:
                continue
            roles = mine[0].cpu.keys()
            s = Summary(case.key, c,
                        statistics.median(r.result.requests_per_sec for r in mine),
                        statistics.median(r.result.p50_ms for r in mine),
                        statistics.median(r.result.p99_ms for r in mine),
                        {k: statistics.median(r.cpu[k] for r in mine) for k in roles},
                        rounds=len(mine))
            if case.baseline is not None:
                pairs = [(by[(case.key, c, n)].result, by[(case.baseline, c, n)].result)
                         for n in rounds
                         if (case.key, c, n) in by and (case.baseline, c, n) in by]
                s.baseline = case.baseline
                s.rps_ratio = statistics.median(a.requests_per_sec / b.requests_per_sec
                                                for a, b in pairs)
                s.p50_ratio = statistics.median(a.p50_ms / b.p50_ms for a, b in pairs)
                s.p99_ratio = statistics.median(a.p99_ms / b.p99_ms for a, b in pairs)
                cpu_pairs = [(by[(case.key, c, n)], by[(case.baseline, c, n)]) for n in rounds
                             if (case.key, c, n) in by and (case.baseline, c, n) in by]
                if all(a.cpu.get("server") and b.cpu.get("server") for a, b in cpu_pairs):
                    s.cpu_ratio = statistics.median(
                        cpu_per_request(b) / cpu_per_request(a) for a, b in cpu_pairs)
                s.base_rps = statistics.median(b.requests_per_sec for _, b in pairs)
                s.base_p50 = statistics.median(b.p50_ms for _, b in pairs)
                s.base_p99 = statistics.median(b.p99_ms for _, b in pairs)
            out[(case.key, c)] = s
    return out


def cpu_per_request(run: Run) -> float:
    """Server CPU seconds per request during the run."""
    return run.cpu["server"] / run.result.requests_per_sec


def problems(name: str, runs: list[Run]) -> list[str]:
    """Runs whose replies were not all 2xx, had socket errors, or emptied their queue."""
    out = []
    for r in runs:
        tag = f"{name} round {r.round} {r.case} at {r.connections} connection(s)"
        if r.result.non_2xx:
            out.append(f"{tag}: {r.result.non_2xx:,} non-2xx replies")
        if r.result.socket_errors:
            out.append(f"{tag}: {r.result.socket_errors:,} socket errors")
        if r.remaining is not None and r.remaining <= 0:
            out.append(f"{tag}: the queue ran dry (replies to an empty queue were measured)")
    return out
