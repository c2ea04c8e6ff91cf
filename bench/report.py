"""From run.py's raw results: the figures, the targets, and the report (Markdown + plots).

Every figure the report shows is also in its fenced ```json block (after the line
`<!-- bench-data -->`), which is what check.py compares; nothing reads the tables back.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import dashboard as dashmod
import client as clientmod
import flow as flowmod
import httpbench
import leases as leasemod
import scrape as scrapemod
import live as livemod
import push as pushmod
import wrk

DATA_MARKER = "<!-- bench-data -->"
# Server log warnings the benchmark causes on purpose: not problems.
EXPECTED_LOG = {
    "Redis runs without AOF": "every server says so at start; the benchmark's Redis persists "
                              "nothing",
    "Redis health warning: persistence:none": "the same, as /health words it",
    "Redis unavailable": "syslogd, while the back-pressure run has Redis stopped",
}

HTTP_OPS = [  # (case key, label, baseline label); the order of the tables and plots
    ("add.off", "add `POST /q/<q>`", "bare POST"),
    ("add.on", "add, access log on", "bare POST"),
    ("get.off", "hard get `GET /q/<q>`", "bare GET"),
    ("get.on", "hard get, access log on", "bare GET"),
    ("jadd.off", "JSON add `POST /queue`", "bare POST"),
    ("jtake.off", "JSON take `POST /queue`", "bare POST"),
    ("xmlrpc.off", "XML-RPC set `POST /xmlrpc`", "bare POST"),
]
C1_P50_MS, C1_P99_MS = 1.0, 3.0
C50_RATIO = {"add.off": 0.60, "add.on": 0.60, "get.off": 0.55, "get.on": 0.55}
REUSE_TARGET = 1.7
LIVE_P50_MS = 5.0
FAN_MS = {1_000: 50.0, 10_000: 300.0}
KB_PER_CONSUMER = 10.0
RSS_10K_MB = 150.0
DRAIN_PER_S = 10_000.0


# --------------------------------------------------------------------------- summaries

def wrk_summaries(sec: dict) -> dict[tuple[str, int], httpbench.Summary]:
    cases = [httpbench.Case(c["key"], c["label"], "", None, c["baseline"]) for c in sec["cases"]]
    runs = [httpbench.Run(r["round"], r["case"], r["connections"],
                          wrk.WrkResult(**r["result"]), r["cpu"], r.get("remaining"))
            for r in sec["runs"]]
    return httpbench.summarize(cases, runs)


def other_cpu(cpu: dict[str, float]) -> float:
    """Cores busy with anything but the metered processes: other work on the machine (and
    this harness, a few per cent)."""
    mine = sum(v for k, v in cpu.items() if k not in ("machine", "idle"))
    return max(0.0, cpu.get("machine", 0.0) - mine)


def us_per_request(cores: float, rps: float) -> float:
    return cores / rps * 1e6 if rps else 0.0


class Figures:
    """The machine-readable figures: key -> value, unit, which way is better, and its kind:
    `ratio` to a baseline of the same run (portable between runs and machines), `noisy` (a
    ratio too, but swayed by other work on the machine: p99s; or by the client: the syslog
    sink, the bare drain) or `absolute` (meaningful on this machine only)."""

    def __init__(self) -> None:
        self.data: dict[str, dict] = {}

    def add(self, key: str, value: float | None, unit: str, better: str = "higher",
            kind: str = "absolute") -> None:
        if value is None:
            return
        self.data[key] = {"value": round(float(value), 4), "unit": unit, "better": better,
                          "kind": kind}

    def wrk(self, prefix: str, s: httpbench.Summary) -> None:
        k = f"{prefix}.{s.case}.c{s.connections}"
        self.add(f"{k}.rps", s.rps, "req/s")
        self.add(f"{k}.p50_ms", s.p50, "ms", "lower")
        self.add(f"{k}.p99_ms", s.p99, "ms", "lower")
        self.add(f"{k}.server_cpu_us", us_per_request(s.cpu.get("server", 0.0), s.rps),
                 "us CPU per request", "lower")
        if s.baseline is not None:
            self.add(f"{k}.rps_ratio", s.rps_ratio, f"x {s.baseline}", "higher", "ratio")
            self.add(f"{k}.p50_ratio", s.p50_ratio, f"x {s.baseline}", "lower", "ratio")
            self.add(f"{k}.p99_ratio", s.p99_ratio, f"x {s.baseline}", "lower", "noisy")
            self.add(f"{k}.cpu_ratio", s.cpu_ratio, f"{s.baseline} CPU per request ÷ this",
                     "higher", "ratio")


class Target:
    def __init__(self, what: str, measured: str, goal: str, met: bool, baseline: str = "",
                 limit: str = "", figure: str = "") -> None:
        self.what, self.measured, self.goal, self.met = what, measured, goal, met
        self.baseline, self.limit, self.figure = baseline, limit, figure

    def as_dict(self) -> dict:
        return {"what": self.what, "measured": self.measured, "goal": self.goal,
                "met": self.met, "figure": self.figure}


def verdict(met: bool | None) -> str:
    return "—" if met is None else ("**met**" if met else "**NOT MET**")


# --------------------------------------------------------------------------- analysis

class Analysis:
    """Everything derived from the raw results, computed once for the report and plots."""

    def __init__(self, results: dict) -> None:
        self.r = results
        self.sec = results["sections"]
        self.cpus = results["meta"].get("cpus", 2)  # usable CPUs of the measuring machine
        self.fig = Figures()
        self.targets: list[Target] = []
        self.info: list[Target] = []  # headline figures without a target
        self.problems: list[str] = list(results.get("errors", []))
        self.http = self._wrk("http")
        self.reuse = self._wrk("reuse")
        self.collectd = self._wrk("collectd")
        self.rabbit = self._wrk("rabbitmq")
        self.leases = self._wrk("leases")
        self._http_targets()
        self._reuse_targets()
        self._collectd()
        self._rabbit()
        self._live()
        self._syslog()
        self._leases()
        flowmod.analyse(self)
        dashmod.analyse(self)
        scrapemod.analyse(self)
        pushmod.analyse(self)

    def _wrk(self, name: str):
        sec = self.sec.get(name)
        if not sec or "runs" not in sec or not sec["runs"]:
            return None
        summaries = wrk_summaries(sec)
        for s in summaries.values():
            self.fig.wrk(name, s)
        self.problems += httpbench.problems(name, [
            httpbench.Run(r["round"], r["case"], r["connections"], wrk.WrkResult(**r["result"]),
                          r["cpu"], r.get("remaining")) for r in sec["runs"]])
        return summaries

    # ---- http

    def _http_targets(self) -> None:
        if not self.http:
            return
        h = self.http
        for key, label, base in HTTP_OPS:
            s = h.get((key, 1))
            if s is None:
                continue
            met50, met99 = s.p50 <= C1_P50_MS, s.p99 <= C1_P99_MS
            failed = [n for n, ok in (("p50", met50), ("p99", met99)) if not ok]
            self.targets.append(Target(
                f"{label}, 1 connection: p50 / p99", f"{s.p50:.2f} / {s.p99:.2f} ms",
                f"≤ {C1_P50_MS:g} / ≤ {C1_P99_MS:g} ms", met50 and met99,
                f"{base}: {s.base_p50:.2f} / {s.base_p99:.2f} ms",
                "" if not failed else self._limit_c1(s, failed),
                f"http.{key}.c1.p50_ms"))
        for key, label, base in HTTP_OPS:
            s = h.get((key, 50))
            if s is None:
                continue
            goal = C50_RATIO.get(key)
            row = Target(f"{label}, 50 connections: req/s ÷ {base}",
                         f"{s.rps_ratio:.2f} ({s.rps:,.0f} req/s)",
                         f"≥ {goal:.2f}" if goal else "", goal is not None and
                         s.rps_ratio >= goal, f"{base}: {s.base_rps:,.0f} req/s",
                         figure=f"http.{key}.c50.rps_ratio")
            if goal is None:
                row.met = None
                self.info.append(row)
            else:
                if not row.met:
                    row.limit = self._limit_c50(s, h[(s.baseline, 50)], goal)
                self.targets.append(row)
        for conns in (1, 50):
            cost = self.log_cost(conns)
            if cost is not None:
                self.fig.add(f"http.add.c{conns}.log_cpu_cost", cost,
                             "server CPU per request, access log on ÷ off", "lower", "ratio")

    def log_cost(self, conns: int) -> float | None:
        """Median over the rounds of the add's server CPU per request with the access log
        on ÷ off: the log's cost, whatever share of the machine other work left."""
        runs = {(r["case"], r["round"]): r for r in self.sec["http"]["runs"]
                if r["connections"] == conns}
        out = []
        for (case, rnd), on in runs.items():
            off = runs.get(("add.off", rnd))
            if case == "add.on" and off and on["cpu"].get("server") and off["cpu"].get("server"):
                out.append((on["cpu"]["server"] / on["result"]["requests_per_sec"])
                           / (off["cpu"]["server"] / off["result"]["requests_per_sec"]))
        return statistics.median(out) if out else None

    def _limit_c50(self, s: httpbench.Summary, b: httpbench.Summary, goal: float) -> str:
        c = s.cpu
        us, bus = us_per_request(c["server"], s.rps), us_per_request(b.cpu["server"], b.rps)
        rus = us_per_request(c["redis"], s.rps)
        text = (f"CPU, median of the runs: the RestMQ process {c['server']:.2f} cores, wrk "
                f"{c['wrk']:.2f}, Redis {c['redis']:.2f}, other work {other_cpu(c):.2f}, "
                f"idle {c['idle']:.2f}. Per request the server spends {us:.0f} µs of CPU "
                f"against the bare handler's {bus:.0f} µs: a CPU ratio of {s.cpu_ratio:.2f}, "
                f"the req/s ratio a CPU-bound Python process reaches with a core to itself "
                f"({goal:.2f} needs at most {bus / goal:.0f} µs); Redis works {rus:.0f} µs per "
                "request on the other core, in parallel. ")
        if other_cpu(c) > 0.3 and c["idle"] < 0.1:
            text += (f"In this run other work took {other_cpu(c):.2f} cores and left the server "
                     f"{c['server']:.2f} of one"
                     + (": the CPU cost meets the target, the shared machine did not."
                        if s.cpu_ratio >= goal else
                        ", and the CPU cost per request is itself above the target's."))
        elif c["idle"] >= 0.1 and c["server"] < 0.8:
            text += (f"The server was not CPU-bound ({c['server']:.2f} cores, {c['idle']:.2f} "
                     "idle): its requests waited on Redis round trips.")
        else:
            text += "The server was CPU-bound: what it does per request is the limit."
        return text

    def _limit_c1(self, s: httpbench.Summary, failed: list[str]) -> str:
        c = s.cpu
        us = us_per_request(c["server"], s.rps)
        rus = us_per_request(c["redis"], s.rps)
        parts = []
        if "p50" in failed:
            parts.append(f"p50 {s.p50:.2f} ms vs bare {s.base_p50:.2f} ms: one request at a "
                         f"time, so the latency is the work in series — {us:.0f} µs of RestMQ "
                         f"CPU and {rus:.0f} µs of Redis CPU per request, plus wrk and two "
                         "loopback round trips.")
        if "p99" in failed:
            parts.append(f"p99 {s.p99:.2f} ms vs bare {s.base_p99:.2f} ms: the tail, not the "
                         f"work — the median is {s.p50:.2f} ms. On 2 shared cores a request "
                         "waits whenever the server, Redis and wrk want the same CPU, or for "
                         "Python's garbage collector"
                         + (f"; other work took {other_cpu(c):.2f} cores" if other_cpu(c) > 0.1
                            else "") + ".")
        return " ".join(parts)

    # ---- reuse-port

    def _reuse_targets(self) -> None:
        if not self.reuse:
            return
        for op, label in (("add", "add"), ("get", "hard get")):
            two, one = self.reuse.get((f"{op}.2p", 50)), self.reuse.get((f"{op}.1p", 50))
            if not two or not one:
                continue
            row = Target(f"{label}, 2 processes `--reuse-port` ÷ 1 process (50 connections)",
                         f"{two.rps_ratio:.2f}x ({two.rps:,.0f} vs {one.rps:,.0f} req/s)",
                         f"≥ {REUSE_TARGET:g}x" if op == "add" else "",
                         two.rps_ratio >= REUSE_TARGET if op == "add" else None,
                         f"1 process: {one.rps:,.0f} req/s", figure=f"reuse.{op}.2p.c50.rps_ratio")
            ceiling = self.reuse_ceiling(op)
            self.fig.add(f"reuse.{op}.cpu_ceiling", ceiling, "x one process, CPU bound",
                         "higher", "ratio")
            if op == "add":
                if not row.met:
                    c1, c2 = one.cpu, two.cpu
                    us1 = us_per_request(c1["server"], one.rps)
                    us2 = us_per_request(c2["server"], two.rps)
                    side2 = us_per_request(c2["wrk"] + c2["redis"], two.rps)
                    row.limit = (
                        f"CPU, medians: 2 processes used {c2['server']:.2f} cores, wrk "
                        f"{c2['wrk']:.2f}, Redis {c2['redis']:.2f}, other work "
                        f"{other_cpu(c2):.2f}, idle {c2['idle']:.2f} (1 process: "
                        f"{c1['server']:.2f} cores, other work {other_cpu(c1):.2f}). The CPU a "
                        f"request costs caps it: one process spends {us1:.0f} µs of its own "
                        f"CPU per request, with wrk and Redis beside it on the other core; "
                        f"with two, a request costs {us2:.0f} µs of server CPU (each event loop "
                        f"handles fewer requests per wake-up) plus {side2:.0f} µs of wrk and "
                        f"Redis, all on the same 2 cores. Even "
                        f"with no other work that allows {ceiling:.2f}x one process (median "
                        "of the rounds), short of 1.7x: it needs the load generator and Redis "
                        "off the servers' cores (`--pin-wrk` only moves wrk between the same "
                        "2 CPUs). Other work also took a share, and the scheduler gives more "
                        "of the machine to 2 busy processes than to 1, which flatters the "
                        "measured ratio.")
                self.targets.append(row)
            else:
                self.info.append(row)

    def reuse_ceiling(self, op: str) -> float | None:
        """The speed-up the CPU costs allow: (all cores / CPU per request of the 2-process
        run, servers + wrk + Redis) ÷ (1 core / the one process's own CPU per request: wrk
        and Redis fit on the other core), median over the rounds. Independent of how much of
        the machine other work took."""
        runs = {(r["case"], r["round"]): r for r in self.sec["reuse"]["runs"]}
        out = []
        for (case, rnd), two in runs.items():
            one = runs.get((f"{op}.1p", rnd))
            if case != f"{op}.2p" or one is None:
                continue
            per2 = sum(two["cpu"][k] for k in ("server", "wrk", "redis")) / \
                two["result"]["requests_per_sec"]
            per1 = one["cpu"]["server"] / one["result"]["requests_per_sec"]
            out.append((self.cpus / per2) / (1.0 / per1))
        return statistics.median(out) if out else None

    # ---- collectd, RabbitMQ

    def _collectd(self) -> None:
        if not self.collectd:
            return
        s = self.collectd.get(("data", 50))
        if s:
            self.info.append(Target(
                "collectd `POST /collectd/data` (10 PUTVAL lines), 50 connections",
                f"{s.rps:,.0f} posts/s = {s.rps_ratio:.2f} of bare", "", None,
                f"bare POST, same body: {s.base_rps:,.0f} req/s",
                figure="collectd.data.c50.rps_ratio"))

    def _rabbit(self) -> None:
        sec = self.sec.get("rabbitmq", {})
        if sec.get("skipped"):
            self.info.append(Target("RabbitMQ management HTTP API", "skipped", "", None,
                                    sec["skipped"]))
            return
        if not self.rabbit:
            return
        for key, label, base in (("add", "add", "RabbitMQ publish"),
                                 ("get", "hard get", "RabbitMQ get")):
            s = self.rabbit.get((key, 50))
            if s:
                self.info.append(Target(
                    f"RestMQ {label} ÷ {base} (HTTP API, 50 connections)",
                    f"{s.rps_ratio:.2f}x ({s.rps:,.0f} vs {s.base_rps:,.0f} req/s)", "", None,
                    f"{base}: {s.base_rps:,.0f} req/s, p50 {s.base_p50:.1f} ms",
                    figure=f"rabbitmq.{key}.c50.rps_ratio"))

    # ---- live

    def _live(self) -> None:
        sec = self.sec.get("live")
        if not sec or "latency" not in sec:
            return
        lat = livemod.LatencyResult(sec["latency"]["samples"], sec["latency"]["problems"])
        self.latency = lat
        self.problems += lat.problems
        for ch in ("bare", *livemod.TRANSPORTS):
            self.fig.add(f"live.latency.{ch}.p50_ms", lat.pct(ch, 50), "ms", "lower")
            self.fig.add(f"live.latency.{ch}.p99_ms", lat.pct(ch, 99), "ms", "lower")
        names = {"comet": "comet `/c/`", "ws": "WebSocket `/ws/`", "sse": "SSE `/sse/`"}
        for ch in livemod.TRANSPORTS:
            ratio = statistics.median(
                livemod.percentile(a, 50) / livemod.percentile(b, 50)
                for a, b in zip(lat.samples[ch], lat.samples["bare"]))
            self.fig.add(f"live.latency.{ch}.p50_ratio", ratio, "x bare POST round trip",
                         "lower", "ratio")
            p50 = lat.pct(ch, 50)
            row = Target(f"add→{names[ch]} delivery latency, p50 (p99)",
                         f"{p50:.2f} ms ({lat.pct(ch, 99):.2f} ms)", f"≤ {LIVE_P50_MS:g} ms",
                         p50 <= LIVE_P50_MS,
                         f"bare POST round trip: {lat.pct('bare', 50):.2f} ms "
                         f"({lat.pct('bare', 99):.2f} ms)", figure=f"live.latency.{ch}.p50_ms")
            if not row.met:
                row.limit = ("The delivery path is POST → Redis script → PUBLISH → the "
                             "subscription → the consumer's write: three Redis round trips "
                             "in series on a shared machine.")
            self.targets.append(row)
        self.fans = [self._fan(f) for f in sec.get("fanout", [])]
        for n in sec.get("fan_skipped", []):
            self.targets.append(Target(f"fan-out to {n:,}", "not measured", "", False,
                                       limit=f"RLIMIT_NOFILE {sec['nofile']} is too low"))
        drains = [livemod.DrainResult(**d) for d in sec.get("drain", [])]
        self.drains = drains
        for d in drains:
            self.problems += d.problems
        if drains:
            med, ratios = livemod.drain_medians(drains), livemod.drain_ratios(drains)
            self.fig.add("live.drain.bare.rate", med.get("bare"), "messages/s")
            for policy in ("broadcast", "roundrobin"):
                if policy not in med:
                    continue
                self.fig.add(f"live.drain.{policy}.rate", med[policy], "messages/s")
                # The bare stream's rate is mostly how fast this client reads: noisy.
                self.fig.add(f"live.drain.{policy}.ratio", ratios.get(policy), "x bare stream",
                             "higher", "noisy")
                row = Target(f"backlog drain, {policy}", f"{med[policy]:,.0f} messages/s",
                             f"≥ {DRAIN_PER_S:,.0f}/s", med[policy] >= DRAIN_PER_S,
                             f"bare stream: {med.get('bare', 0):,.0f} lines/s",
                             figure=f"live.drain.{policy}.rate")
                if not row.met:
                    row.limit = ("Each batch of 10 is a Redis script round trip, then (broadcast) "
                                 "a PUBLISH that comes back on the subscription before it is "
                                 f"written; the client itself reads {med.get('bare', 0):,.0f} "
                                 "lines/s from the bare server.")
                self.targets.append(row)

    def _fan(self, f: dict) -> dict:
        n = f["n"]
        rm, bare = f["restmq"], f["bare"]
        self.problems += f["problems"]

        def med(side, field):
            return statistics.median(r[field] for r in side["rounds"])

        def kb(side):
            return (side["rss_after_kb"] - side["rss_before_kb"]) / n

        ms, bms = med(rm, "ms"), med(bare, "ms")
        ratio = statistics.median(a["ms"] / b["ms"] for a, b in zip(rm["rounds"],
                                                                      bare["rounds"]))
        self.fig.add(f"live.fanout.{n}.ms", ms, "ms", "lower")
        self.fig.add(f"live.fanout.{n}.bare_ms", bms, "ms", "lower")
        self.fig.add(f"live.fanout.{n}.ratio", ratio, "x bare fan-out", "lower", "ratio")
        self.fig.add(f"live.fanout.{n}.kb_per_consumer", kb(rm), "KiB", "lower")
        self.fig.add(f"live.fanout.{n}.bare_kb_per_consumer", kb(bare), "KiB", "lower")
        if kb(bare) > 0:
            self.fig.add(f"live.fanout.{n}.kb_ratio", kb(rm) / kb(bare), "x bare stream",
                         "lower", "ratio")
        goal = FAN_MS.get(n)
        if goal:
            row = Target(f"fan-out to {n:,} comet consumers (all have the line)",
                         f"{ms:.1f} ms (max {max(r['ms'] for r in rm['rounds']):.1f})",
                         f"≤ {goal:g} ms", ms <= goal, f"bare server: {bms:.1f} ms",
                         figure=f"live.fanout.{n}.ms")
            if not row.met:
                row.limit = (f"Per round the server used {med(rm, 'server_cpu_ms'):.0f} ms of "
                             f"CPU (the bare server {med(bare, 'server_cpu_ms'):.0f} ms) and the "
                             f"client {med(rm, 'client_cpu_ms'):.0f} ms, on 2 cores shared with "
                             f"other work. The bare server, writing from its POST handler with "
                             f"no Redis in between, took {bms:.1f} ms (RestMQ ÷ bare, median "
                             f"per round: {ratio:.2f}): the time is the {n:,} socket writes and "
                             "reads on this machine, not RestMQ's dispatch.")
            self.targets.append(row)
        row = Target(f"memory per idle consumer at {n:,}", f"{kb(rm):.1f} KiB",
                     f"≤ {KB_PER_CONSUMER:g} KiB", kb(rm) <= KB_PER_CONSUMER,
                     f"bare stream: {kb(bare):.1f} KiB",
                     figure=f"live.fanout.{n}.kb_per_consumer")
        if not row.met:
            row.limit = ("RSS grows with the Twisted transport, the cyclone request and "
                         "handler objects each consumer keeps; the bare stream keeps only the "
                         "first two.")
        self.targets.append(row)
        if n == 10_000:
            mb = rm["rss_after_kb"] * 1024 / 1e6
            self.targets.append(Target("server RSS with 10,000 consumers", f"{mb:.1f} MB",
                                       f"< {RSS_10K_MB:g} MB", mb < RSS_10K_MB,
                                       f"bare: {bare['rss_after_kb'] * 1024 / 1e6:.1f} MB",
                                       figure="live.fanout.10000.rss_mb"))
            self.fig.add("live.fanout.10000.rss_mb", mb, "MB", "lower")
        return {"n": n, "ms": ms, "bms": bms, "ratio": ratio, "kb": kb(rm), "bkb": kb(bare),
                "raw": f}

    # ---- leases

    def _leases(self) -> None:
        sec = self.sec.get("leases")
        if not sec or "tick" not in sec:
            return
        leasemod.add_figures(sec, self.fig.add)
        for r in sec["redelivery"]:
            self.problems += r["problems"]
        cycle = self.leases.get(("cycle", 50)) if self.leases else None
        for row in leasemod.targets(sec, cycle):
            target = Target(**row)
            if target.met is False and target.figure == "leases.cycle.c50.rps_ratio":
                target.limit = self._limit_c50(cycle, self.leases[("bare.post", 50)],
                                               leasemod.CYCLE_RATIO)
            (self.info if target.met is None else self.targets).append(target)

    # ---- syslog

    def _syslog(self) -> None:
        sec = self.sec.get("syslog")
        if not sec or "throughput" not in sec:
            return
        tp = sec["throughput"]
        for t in tp:
            self.problems += [f"syslog {t['side']} round {t['round']}: {p}" for p in t["problems"]]
        rate = {side: statistics.median(t["stored"] / t["seconds"] for t in tp
                                        if t["side"] == side) for side in ("restmq", "sink")}
        by_round = {(t["round"], t["side"]): t["stored"] / t["seconds"] for t in tp}
        ratio = statistics.median(by_round[(n, "restmq")] / by_round[(n, "sink")]
                                  for n in {t["round"] for t in tp})
        self.fig.add("syslog.lines_per_s", rate["restmq"], "lines/s")
        cpu = [t["server_cpu_s"] / t["stored"] * 1e6 for t in tp
               if t["side"] == "restmq" and t.get("server_cpu_s") and t["stored"]]
        if cpu:
            self.fig.add("syslog.server_cpu_us", statistics.median(cpu), "us CPU per line",
                         "lower")
        self.fig.add("syslog.sink_lines_per_s", rate["sink"], "lines/s")
        # The sink's rate is mostly the Python senders' (GIL-bound threads): noisy.
        self.fig.add("syslog.ratio", ratio, "x bare line sink", "higher", "noisy")
        self.syslog_rates = rate
        self.info.append(Target("syslogd, 10 TCP senders", f"{rate['restmq']:,.0f} lines/s", "",
                                None, f"bare line sink: {rate['sink']:,.0f} lines/s",
                                figure="syslog.lines_per_s"))
        bp = sec["backpressure"]
        self.problems += [f"syslog back-pressure: {p}" for p in bp["problems"]]
        self.fig.add("syslog.backpressure.lost", bp["lost"], "lines", "lower")
        self.targets.append(Target(
            f"syslogd: lines lost while Redis is paused {bp['pause']:g} s",
            f"{bp['lost']:,} of {bp['sent']:,}", "0", bp["lost"] == 0 and not bp["problems"],
            limit="" if bp["lost"] == 0 else "see the back-pressure notes"))


# --------------------------------------------------------------------------- rendering

def fmt_cpu(c: dict[str, float]) -> str:
    return (f"{c.get('server', 0):.2f} / {c.get('redis', 0):.2f} / {c.get('wrk', 0):.2f} / "
            f"{other_cpu(c):.2f} / {c.get('idle', 0):.2f}")


def wrk_table(summaries: dict, keys: list[tuple[str, str]], conns: int,
              labels: dict[str, str]) -> list[str]:
    out = ["| operation | req/s | baseline req/s | ratio | p50 ms | baseline p50 | p50 ratio "
           "| p99 ms | baseline p99 | p99 ratio | CPU cores: server / Redis / wrk / other / "
           "idle | server µs CPU per request | CPU ratio |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for key, label in keys:
        s = summaries.get((key, conns))
        if s is None:
            continue
        us = us_per_request(s.cpu.get("server", 0.0), s.rps)
        if s.baseline is None:
            out.append(f"| {label} (baseline) | {s.rps:,.0f} | | | {s.p50:.2f} | | | "
                       f"{s.p99:.2f} | | | {fmt_cpu(s.cpu)} | {us:.0f} | |")
        else:
            out.append(f"| {label} | {s.rps:,.0f} | {s.base_rps:,.0f} ({labels[s.baseline]}) | "
                       f"**{s.rps_ratio:.2f}** | {s.p50:.2f} | {s.base_p50:.2f} | "
                       f"{s.p50_ratio:.2f} | {s.p99:.2f} | {s.base_p99:.2f} | {s.p99_ratio:.2f} "
                       f"| {fmt_cpu(s.cpu)} | {us:.0f} | "
                       f"{'' if s.cpu_ratio is None else format(s.cpu_ratio, '.2f')} |")
    return out


def raw_table(name: str, sec: dict) -> list[str]:
    out = []
    for r in sec["runs"]:
        res, c = r["result"], r["cpu"]
        left = "" if r.get("remaining") is None else f"{r['remaining']:,}"
        out.append(f"| {name} | {r['round']} | {r['case']} | {r['connections']} | "
                   f"{res['requests_per_sec']:,.0f} | {res['p50_ms']:.2f} | {res['p99_ms']:.2f} "
                   f"| {res['requests']:,} | {res['non_2xx']} | {res['socket_errors']} | "
                   f"{fmt_cpu(c)} | {left} |")
    return out


def render(results: dict, out_path: Path, with_plots: bool = True) -> str:
    a = Analysis(results)
    meta = results["meta"]
    sw = meta.get("software", {})
    plots: list[str] = []
    plot_note = ""
    if with_plots:
        try:
            import plots as plotmod
            plots = plotmod.draw(a, out_path.parent, stem=out_path.stem)
        except ImportError as exc:
            plot_note = f"(no plots: {exc}; `make bench` installs bench/requirements.txt)"

    def plot(name: str) -> list[str]:
        match = [p for p in plots if p.endswith(f"-{name}.png")]
        return [f"![{name}]({match[0]})", ""] if match else []

    lb, la = meta["load_before"], meta.get("load_after", [0, 0, 0])
    quick = " (--quick: a smoke test, not a measurement)" if meta.get("quick") else ""
    o = [f"# RestMQ benchmark{quick}", "",
         f"- date: {meta['date']}; the whole run took {meta.get('elapsed_s', 0) / 60:.1f} min",
         f"- machine: {sw.get('nproc', '?')}, {sw.get('cpu', '?')}, {sw.get('os', '?')}",
         f"- software: Python {sw.get('python')}, Twisted {sw.get('twisted')}, cyclone "
         f"{sw.get('cyclone')}, txredisapi {sw.get('txredisapi')}, hiredis {sw.get('hiredis')}, "
         f"redis-server {sw.get('redis-server')}, {sw.get('wrk')}"
         + (f", RabbitMQ {a.sec['rabbitmq']['versions']['rabbitmq']} (Erlang/OTP "
            f"{a.sec['rabbitmq']['versions']['erlang']})"
            if a.sec.get("rabbitmq", {}).get("versions") else "")
         + f", matplotlib {sw.get('matplotlib')}",
         f"- restmq revision: {sw.get('restmq')}",
         f"- load average: {lb[0]:.2f} {lb[1]:.2f} {lb[2]:.2f} before the run, {la[0]:.2f} "
         f"{la[1]:.2f} {la[2]:.2f} after (1/5/15 min; the machine is shared, and other work "
         "shows in the figures and in the `other` CPU column)",
         f"- method: {meta['rounds']} round(s); in each, every figure and its baseline run back "
         "to back (A/B interleaved; the order reverses every other round); figures are "
         "medians over the rounds, and a ratio is the median of the per-round ratios. "
         f"wrk: keep-alive, {meta['durations']['1']:g} s per run at 1 connection (`-t1 -c1`), "
         f"{meta['durations']['50']:g} s at 50 (`-t2 -c50`), "
         + (f"pinned with `taskset -c {meta['pin_wrk']}`" if meta.get("pin_wrk")
            else "not pinned (pinning it to one CPU changed nothing measurable here)")
         + "; wrk, Redis, the servers and the clients share the machine's CPUs",
         "- servers: `twistd restmq --access-log off` (the main series: like the bare "
         "server, it writes no log), `twistd restmq` (default, access log on), private "
         "redis-server without persistence; baselines from `bench/bare_server.py` (cyclone "
         "handlers that do no work, a Twisted line sink)",
         ""]
    if plot_note:
        o += [plot_note, ""]

    o += ["## Targets", "",
          "| figure | measured | baseline, same run | target | verdict |",
          "|---|---|---|---|---|"]
    for t in a.targets:
        o.append(f"| {t.what} | {t.measured} | {t.baseline} | {t.goal} | {verdict(t.met)} |")
    o += ["", "Other headline figures (no target):", "",
          "| figure | measured | baseline, same run |", "|---|---|---|"]
    for t in a.info:
        o.append(f"| {t.what} | {t.measured} | {t.baseline} |")
    o += ["", "## What limited it", ""]
    missed = [t for t in a.targets if t.met is False]
    o += [f"- **{t.what}** ({t.measured}, target {t.goal}): {t.limit}" for t in missed] or \
        ["- every target was met"]
    o.append("")

    if a.sec.get("parser", {}).get("cases"):
        import parser as layer
        o += layer.render(a.sec["parser"]) + plot("parser")

    if a.http:
        labels = {"bare.post": "bare POST", "bare.get": "bare GET"}
        keys = [("bare.post", "bare POST `value=hello`"), ("bare.get", "bare GET")] + \
            [(k, label) for k, label, _ in HTTP_OPS]
        o += ["## 1. HTTP API vs the bare cyclone handler", "",
              "Each operation against `bench/bare_server.py` (GET for hard get, POST with the "
              "same form body `value=hello` for the rest), medians. Queues that a case "
              "consumes are filled straight in Redis before each run, for 1.5x the requests "
              "expected, so no run measures replies to an empty queue. CPU: cores each "
              "process used during the run (`other` = the rest of the machine: other work "
              "and this harness). CPU ratio: the baseline's server CPU per request ÷ this "
              "server's (median of the rounds) — the req/s ratio a CPU-bound server reaches "
              "with a core to itself, whatever other work took.", ""]
        for conns in (1, 50):
            o += [f"### {conns} connection{'s' if conns > 1 else ''}", ""]
            o += wrk_table(a.http, keys, conns, labels)
            o.append("")
        cost = a.fig.data.get("http.add.c50.log_cpu_cost")
        cost1 = a.fig.data.get("http.add.c1.log_cpu_cost")
        if cost:
            o += [f"The access log (on by default, buffered, written once a second) makes an "
                  f"add cost {100 * (cost['value'] - 1):+.0f} % server CPU per request at 50 "
                  "connections"
                  + (f" and {100 * (cost1['value'] - 1):+.0f} % at 1" if cost1 else "")
                  + " (on ÷ off, median of the rounds; the req/s of the two series above also "
                  "carry whatever other work took from each run).", ""]
        o += plot("http") + plot("latency")

    if a.reuse:
        o += ["## 2. Two processes sharing the port", "",
              "Two `twistd restmq --reuse-port --access-log off` on one port (the kernel "
              "spreads the connections) against one, 50 connections. The CPU columns show "
              "where the machine's 2 cores went. CPU ceiling: the speed-up the CPU costs "
              "allow — 2 cores ÷ the CPU the 2-process runs spend per request (servers, wrk "
              "and Redis, all sharing the cores), against 1 core ÷ the one process's own CPU "
              "per request; median of the rounds, independent of other work.", ""]
        o += wrk_table(a.reuse, [("add.1p", "add, 1 process"), ("add.2p", "add, 2 processes"),
                                 ("get.1p", "hard get, 1 process"),
                                 ("get.2p", "hard get, 2 processes")], 50,
                       {"add.1p": "1 process", "get.1p": "1 process"})
        for op in ("add", "get"):
            c = a.fig.data.get(f"reuse.{op}.cpu_ceiling")
            if c:
                o.append(f"\n{op}: CPU ceiling {c['value']:.2f}x one process.")
        o += [""] + plot("scaling")

    if getattr(a, "latency", None):
        lat = a.latency
        o += ["## 3. Live delivery", "",
              "### a. add → delivery latency", "",
              f"{meta['rounds']} rounds × {len(lat.samples['bare'][0]):,} messages per "
              "channel, the channels taking turns message by message: `POST /q/<q>` on a "
              "keep-alive connection, one consumer per transport on a queue of its own; "
              "from just before the POST is sent to the arrival of the message. Baseline: "
              "the round trip of `POST /bare` from the same client. Medians over the rounds "
              "of each round's percentile.", "",
              "| channel | p50 ms | p95 ms | p99 ms | max ms | p50 ÷ bare | p50 per round |",
              "|---|---:|---:|---:|---:|---:|---|"]
        for ch, label in (("bare", "bare POST round trip (baseline)"), ("comet", "comet"),
                          ("ws", "WebSocket"), ("sse", "SSE")):
            rounds = lat.samples[ch]
            ratio = a.fig.data.get(f"live.latency.{ch}.p50_ratio")
            o.append(f"| {label} | {lat.pct(ch, 50):.2f} | {lat.pct(ch, 95):.2f} | "
                     f"{lat.pct(ch, 99):.2f} | {max(max(r) for r in rounds):.2f} | "
                     f"{'' if ratio is None else format(ratio['value'], '.2f')} | "
                     + ", ".join(f"{livemod.percentile(r, 50):.2f}" for r in rounds) + " |")
        o += ["", "### b. fan-out and memory per idle consumer", "",
              "N idle comet consumers held open, then one `POST`; until every consumer had "
              "the complete line. Baseline: the bare server's held-open chunked streams, "
              "written from its POST handler (no Redis). Each side's consumers are in a "
              "client process of their own, both sets open at once, the two sides "
              "alternating round by round. RSS: server VmRSS before opening and 1 s after.",
              "",
              "| N | all lines ms (median) | max | bare ms | ÷ bare | first line ms | server "
              "CPU ms | bare server CPU ms | client CPU ms | KiB per consumer | bare KiB | RSS "
              "with N MiB | open s | release s |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for f in a.fans:
            rm = f["raw"]["restmq"]

            def med(field, side=rm):
                return statistics.median(r[field] for r in side["rounds"])
            rel = "never" if rm["release_s"] is None else f"{rm['release_s']:.1f}"
            o.append(f"| {f['n']:,} | {f['ms']:.1f} | {max(r['ms'] for r in rm['rounds']):.1f} "
                     f"| {f['bms']:.1f} | {f['ratio']:.2f} | {med('first_ms'):.1f} | "
                     f"{med('server_cpu_ms'):.0f} | "
                     f"{med('server_cpu_ms', f['raw']['bare']):.0f} | "
                     f"{med('client_cpu_ms'):.0f} | {f['kb']:.1f} "
                     f"| {f['bkb']:.1f} | {rm['rss_after_kb'] / 1024:.1f} | "
                     f"{rm['open_s']:.1f} | {rel} |")
        if a.drains:
            med, ratios = livemod.drain_medians(a.drains), livemod.drain_ratios(a.drains)
            o += ["", "### c. backlog drain", "",
                  f"{a.drains[0].count:,} messages put straight into Redis, then one comet "
                  "consumer; from sending its GET until its last line arrived (FIFO order "
                  "and count checked). Baseline: the bare server streaming the same lines, "
                  "10 per reactor turn — what this client can read.", "",
                  "| side | messages/s (median) | ÷ bare | each round |", "|---|---:|---:|---|"]
            for side in med:
                each = ", ".join(f"{d.rate:,.0f}" for d in a.drains if d.side == side)
                r = ratios.get(side)
                o.append(f"| {side} | {med[side]:,.0f} | "
                         f"{'' if r is None else format(r, '.2f')} | {each} |")
        o += [""] + plot("live")

    if a.sec.get("syslog", {}).get("throughput") or a.collectd:
        o += ["## 4. Ingest: syslogd and collectd", ""]
    if a.sec.get("syslog", {}).get("throughput"):
        sec = a.sec["syslog"]
        st = sec["settings"]
        o += [f"syslogd: {st['senders']} TCP senders × {st['lines_per_sender']:,} lines "
              f"(`<13>Nov 22 10:00:00 host app: message <sender> <n>`, {st['lines_per_send']} "
              "lines per send) at once; from the first byte until all are stored (LLEN), then "
              "every stored message is checked. Baseline: the same senders to a Twisted "
              "receiver that only counts lines — the cost of TCP and line splitting alone "
              f"(it gets {st.get('sink_scale', 1)}x the lines, to last long enough to time).",
              "",
              "| round | side | lines | seconds | lines/s | syslogd µs CPU per line |",
              "|---:|---|---:|---:|---:|---:|"]
        for t in sec["throughput"]:
            cpu = (f"{t['server_cpu_s'] / t['stored'] * 1e6:.0f}"
                   if t.get("server_cpu_s") and t["stored"] else "")
            o.append(f"| {t['round']} | {t['side']} | {t['stored']:,} | {t['seconds']:.3f} | "
                     f"{t['stored'] / t['seconds']:,.0f} | {cpu} |")
        bp = sec["backpressure"]
        after = "-" if bp["catch_up_after_cont"] is None else f"{bp['catch_up_after_cont']:.2f}"
        o += ["", f"Back-pressure: the senders send as fast as they can for {bp['duration']:g} s "
              f"while Redis is stopped (SIGSTOP) for {bp['pause']:g} s in the middle; sent = "
              "lines fully handed to the kernel.", "",
              "| sent | during the pause | stored | lost | catch-up after SIGCONT s | RSS "
              "before → peak MiB |", "|---:|---:|---:|---:|---:|---|",
              f"| {bp['sent']:,} | {bp['sent_during_pause']:,} | {bp['stored']:,} | "
              f"{bp['lost']:,} | {after} | {bp['rss_before_kb'] / 1024:.1f} → "
              f"{bp['rss_peak_kb'] / 1024:.1f} |", ""]
    if a.collectd:
        lines = a.sec["collectd"].get("body_lines", "?")
        o += [f"collectd: `POST /collectd/data`, Content-Type text/plain, a write_http "
              f"Command body of {lines} PUTVAL lines (`twistd collectd --access-log off`), "
              "against the bare handler given the same body.", ""]
        o += wrk_table(a.collectd, [("bare.post", "bare POST, same body"),
                                    ("data", "collectd /collectd/data")], 50,
                       {"bare.post": "bare"})
        o.append("")
    o += plot("peers") if not a.rabbit else []

    rsec = a.sec.get("rabbitmq", {})
    if rsec.get("skipped") or a.rabbit:
        o += ["## 5. RabbitMQ's management HTTP API", ""]
    if rsec.get("skipped"):
        o += [f"Skipped: {rsec['skipped']}.", ""]
    elif a.rabbit:
        o += ["Debian's rabbitmq-server with the management plugin, on 127.0.0.1 only, "
              "started and stopped by the benchmark (its own node name, ports, epmd and "
              "files). Publish = `POST /api/exchanges/%2F/amq.default/publish` (JSON body, "
              "routing key the queue), get = `POST /api/queues/%2F/<q>/get` with ackmode "
              "`ack_requeue_false`, basic auth guest:guest, a non-durable queue (RestMQ's "
              "Redis persists nothing either) filled over AMQP before each get run. RestMQ: "
              "add and hard get on `--access-log off`. 50 connections; ratio = RestMQ ÷ "
              "RabbitMQ.", ""]
        o += wrk_table(a.rabbit, [("rabbit.publish", "RabbitMQ publish"),
                                  ("add", "RestMQ add"), ("rabbit.get", "RabbitMQ get"),
                                  ("get", "RestMQ hard get")], 50,
                       {"rabbit.publish": "RabbitMQ", "rabbit.get": "RabbitMQ"})
        o += ["", "(server = the RabbitMQ VM for its rows.)", ""]
        o += plot("peers")

    if a.sec.get("leases", {}).get("tick"):
        o += leasemod.render(a.sec["leases"], a.leases, wrk_table) + plot("leases")
    if a.sec.get("flow", {}).get("runs"):
        o += flowmod.render(a.sec["flow"]) + plot("flow")
    if a.sec.get("dashboard", {}).get("rounds"):
        o += dashmod.render(a.sec["dashboard"])
    if a.sec.get("metrics", {}).get("latency"):
        o += scrapemod.render(a.sec["metrics"])
    if a.sec.get("push", {}).get("dispatch"):
        o += pushmod.render(a.sec["push"]) + plot("push")
    if a.sec.get("client", {}).get("worker"):
        o += clientmod.render(a.sec["client"])

    o += ["## Problems and server logs", ""]
    o += [f"- {p}" for p in a.problems] or ["- none: every reply was 2xx, no socket errors, "
                                            "no queue ran dry, every delivered and stored "
                                            "message was checked"]
    logs = {name: [line for line in lines if not any(e in line for e in EXPECTED_LOG)]
            for name, lines in results.get("server_log", {}).items()}
    for name, lines in logs.items():
        if lines:
            o.append(f"- {name} logged {len(lines)} warning/error line(s); the first:")
            o += [f"  - `{line[:300]}`" for line in lines[:5]]
    expected = "; ".join(f"`{k}`: {v}" for k, v in EXPECTED_LOG.items())
    o.append(f"- no server logged any other warning, error or traceback (left out as expected: "
             f"{expected})" if not any(logs.values()) else f"- left out as expected: {expected}")
    o += ["", "## Every wrk run", "",
          "| section | round | case | conns | req/s | p50 ms | p99 ms | requests | non-2xx | "
          "socket errors | CPU server / Redis / wrk / other / idle | left in queue |",
          "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name in ("http", "reuse", "collectd", "leases", "rabbitmq"):
        if a.sec.get(name, {}).get("runs"):
            o += raw_table(name, a.sec[name])
    sections_time = ", ".join(f"{k} {v.get('seconds', 0):.0f} s" for k, v in a.sec.items())
    o += ["", f"Section times: {sections_time}.", ""]

    data = {"meta": {k: meta[k] for k in ("date", "rounds", "durations", "load_before",
                                          "load_after", "elapsed_s", "quick") if k in meta},
            "software": sw, "targets": [t.as_dict() for t in a.targets],
            "figures": a.fig.data}
    o += ["## Data", "",
          "Every figure above, for `bench/check.py`. Kind `ratio`: to a baseline of the same "
          "run, comparable between runs (what check.py compares); `noisy`: a ratio swayed by "
          "other work on the machine (p99s) or by the client (the syslog sink, the bare "
          "drain); `absolute`: this machine only. `.venv/bin/python bench/check.py "
          "bench/report.md` compares with bench/baseline.md.", "",
          DATA_MARKER, "```json", dump_data(data), "```", ""]
    return "\n".join(o)


def dump_data(data: dict) -> str:
    """JSON with one target or figure per line: readable in a diff, one json.loads away."""
    def lines(items) -> str:
        return ",\n".join(f"    {item}" for item in items)

    parts = [f'  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}'
             for k, v in data.items() if k not in ("targets", "figures")]
    parts.append('  "targets": [\n' + lines(json.dumps(t, ensure_ascii=False)
                                          for t in data["targets"]) + "\n  ]")
    parts.append('  "figures": {\n' + lines(
        f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}"
        for k, v in sorted(data["figures"].items())) + "\n  }")
    return "{\n" + ",\n".join(parts) + "\n}"


def load_data(text: str) -> dict:
    """The data block of a report (check.py's reader)."""
    at = text.find(DATA_MARKER)
    if at < 0:
        raise ValueError(f"no {DATA_MARKER} in the report")
    start = text.index("```json", at) + len("```json")
    end = text.index("```", start)
    return json.loads(text[start:end])


def headline_text(results: dict) -> str:
    a = Analysis(results)
    out = ["", "targets:"]
    for t in a.targets:
        out.append(f"  {verdict(t.met).strip('*').ljust(7)}  {t.what}: {t.measured} "
                   f"(target {t.goal}; {t.baseline})")
    out.append("other figures:")
    out += [f"           {t.what}: {t.measured} ({t.baseline})" for t in a.info]
    if a.problems:
        out.append("problems:")
        out += [f"  {p}" for p in a.problems]
    return "\n".join(out).replace("**", "")
