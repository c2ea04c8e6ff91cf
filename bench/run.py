"""The whole benchmark suite, one run, one report: `make bench` runs this.

Run from the repository root:  .venv/bin/python bench/run.py [--quick] [--only SECTIONS]
(--quick: 1 round of 1 s runs and small live/syslog sizes, a smoke test of the harness;
its report goes to bench/out/ and never replaces bench/report.md; nor does a run of only
some sections, whose report is bench/out/report-partial.md)

Sections, each figure beside a baseline measured in the same run and interleaved with it:

  http      add, hard get, JSON add, JSON take, XML-RPC set at 1 and 50 connections, with
            the access log off and (add, get) on, vs bare_server.py's handler (wrk)
  reuse     add and hard get with two processes sharing the port vs one
  collectd  POST /collectd/data (10 PUTVAL lines) vs the bare handler with the same body
  syslog    syslogd lines/s vs a bare line sink; no line lost while Redis is paused
  live      add→delivery latency (comet, WebSocket, SSE) vs a bare POST round trip;
            fan-out to 1,000 / 10,000, memory per idle consumer, backlog drain vs bare
  leases    claim + ack (1 message each) vs the bare POST; claim 100 + ack 100 messages/s
            vs the bare POST's req/s; lease-expiry redelivery latency; the tick's cost with
            10,000 idle queues and 100,000 messages in flight (bench/leases.py)
  rabbitmq  RabbitMQ's management HTTP API publish / get vs RestMQ add / hard get
  parser    the HTTP layer's CPU per request, in pinned pairs against the connection it
            replaced and stock cyclone's (bench/parser.py; its own servers)
  flow      /batch/ and /pop/ messages/s, 100,000 messages due at once, the long-poll wake
            across two processes, vs the bare handler (bench/flow.py; its own servers)
  dashboard add req/s and the server's CPU per add with and without the polling of 10
            open dashboards (/info/ of a page of queues, /stats/ of 1,000), and what the
            polling costs alone (bench/dashboard.py; its own servers)
  metrics   GET /metrics with 10,000 queues: latency, its Redis commands (MONITOR), and the
            add req/s with a scrape every second vs without (bench/scrape.py; its own servers)
  push      push dispatch messages/s from one process to a 204 target (and the target's own
            capacity), add → receipt latency, rate-limit accuracy over 30 s (bench/push.py;
            its own servers)
  client    restmq.client from one process: a Worker (concurrency 8, no-op work) in
            messages/s; Client.add vs a raw http.client loop (bench/client.py)

Everything (wrk, Redis, the servers, the clients) shares this machine; the report records
the machine, the versions, the load average, and each process's CPU during each wrk run.
The raw results go to bench/out/results.json; `--render-only` rebuilds the report and the
plots from that file.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import dashboard
import client as clientbench
import flow
import httpbench
import leases as leasebench
import live
import parser as layer
import push as pushbench
import rabbit
import redis_private
import scrape
import syslog as syslogd
import wrk
from common import (BENCH_DIR, ServerProcess, checkout_env, cpu_seconds, dist_version,
                    free_ports, log_problems, raise_exit, raise_nofile_limit, software_info,
                    start_all, stop_all, venv_bin)

SECTIONS = ("http", "reuse", "collectd", "syslog", "live", "leases", "rabbitmq", "parser",
            "flow", "dashboard", "metrics", "push", "client")
OUT_DIR = BENCH_DIR / "out"
FORM = "application/x-www-form-urlencoded"
PREFILL_MARGIN = 1.5  # queues are filled for 1.5x the requests the run is expected to make
PREFILL_MIN = 30_000
XMLRPC_SET = ("<?xml version=\"1.0\"?><methodCall><methodName>set</methodName><params>"
              "<param><value><string>benchxml</string></value></param>"
              "<param><value><string>hello</string></value></param></params></methodCall>")


def collectd_body(lines: int = 10) -> str:
    """A write_http plugin body in its default Command format: one PUTVAL per value, as
    collectd sends for a host's cpu, memory, load and interface values."""
    values = [("cpu-0/cpu-user", "1288548767.000:1234567"),
              ("cpu-0/cpu-system", "1288548767.000:234567"),
              ("cpu-0/cpu-idle", "1288548767.000:98765432"),
              ("cpu-1/cpu-user", "1288548767.000:1334567"),
              ("memory/memory-used", "1288548767.000:4198567936"),
              ("memory/memory-free", "1288548767.000:1029384756"),
              ("load/load", "1288548767.000:0.120000:0.090000:0.080000"),
              ("interface-eth0/if_octets", "1288548767.000:123456789:987654321"),
              ("interface-eth0/if_packets", "1288548767.000:123456:654321"),
              ("df-root/df_complex-free", "1288548767.000:116497408.000000")]
    return "".join(f"PUTVAL \"srv1.example.com/{ident}\" interval=10.000 {value}\n"
                   for ident, value in values[:lines])


# --------------------------------------------------------------------------- the servers

@dataclasses.dataclass
class Servers:
    redis: redis_private.PrivateRedis
    ports: dict[str, int]
    procs: dict[str, ServerProcess]

    def pids(self, *names: str) -> list[int]:
        return [self.procs[n].pid for n in names]

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"


def make_servers(tmp: Path, redis_bin: str, sections: set[str]) -> Servers:
    names = ["redis", "bare", "sink", "off", "on", "rp1", "rp2", "collectd", "syslogd"]
    ports = dict(zip(names, free_ports(len(names))))
    redis = redis_private.PrivateRedis(redis_bin, ports["redis"], tmp)
    twistd, env = venv_bin("twistd"), checkout_env()

    def restmq(name: str, port: int, *flags: str, plugin: str = "restmq") -> ServerProcess:
        return ServerProcess(name, [twistd, "-n", "--pidfile=", plugin, "--port", str(port),
                                    "--redis-port", str(ports["redis"]), *flags],
                             f"http://127.0.0.1:{port}/stats/", tmp / f"{name}.log", env=env)

    procs = {
        "bare": ServerProcess("bare", [venv_bin("python"), str(BENCH_DIR / "bare_server.py"),
                                       "--port", str(ports["bare"]),
                                       "--sink-port", str(ports["sink"])],
                              f"http://127.0.0.1:{ports['bare']}/bare", tmp / "bare.log"),
        "off": restmq("restmq-off", ports["off"], "--access-log", "off"),
    }
    if "http" in sections:
        procs["on"] = restmq("restmq-on", ports["on"])  # the default: access log on
    if "reuse" in sections:
        procs["rp1"] = restmq("restmq-rp1", ports["rp1"], "--reuse-port", "--access-log", "off")
        procs["rp2a"] = restmq("restmq-rp2a", ports["rp2"], "--reuse-port", "--access-log", "off")
        procs["rp2b"] = restmq("restmq-rp2b", ports["rp2"], "--reuse-port", "--access-log", "off")
    if "collectd" in sections:
        procs["collectd"] = restmq("collectd", ports["collectd"], "--access-log", "off",
                                   plugin="collectd")
    if "syslog" in sections:
        procs["syslogd"] = syslogd.SyslogServer(ports["syslogd"], ports["redis"], SYSLOG_DB,
                                                tmp / "syslogd.log")
    return Servers(redis, ports, procs)


SYSLOG_DB = 1  # syslogd writes to a database of its own, emptied before each round
SINK_SCALE = 20  # the bare line sink gets this many times the lines syslogd gets


# --------------------------------------------------------------------------- wrk sections

class Queues:
    """Prefill and remaining-count hooks for cases that consume a RestMQ queue."""

    def __init__(self, rc: redis_private.RespClient) -> None:
        self.rc = rc

    def prepare(self, queue: str):
        def fill(expected: float) -> None:
            target = max(PREFILL_MIN, math.ceil(PREFILL_MARGIN * expected))
            redis_private.top_up(self.rc, queue, target)
        return fill

    def remaining(self, queue: str):
        return lambda: redis_private.queue_length(self.rc, queue)


def http_cases(s: Servers, tmp: Path, q: Queues) -> list[httpbench.Case]:
    post = wrk.write_post_script(tmp / "post.lua", "value=hello", FORM)
    jadd = wrk.write_post_script(tmp / "jadd.lua", "body=" + _urlquote(json.dumps(
        {"cmd": "add", "queue": "benchjson", "value": "hello"})), FORM)
    jtake = wrk.write_post_script(tmp / "jtake.lua", "body=" + _urlquote(json.dumps(
        {"cmd": "take", "queue": "benchtake"})), FORM)
    xml = wrk.write_post_script(tmp / "xmlrpc.lua", XMLRPC_SET, "text/xml")
    redis = [s.redis.pid]

    def cpu(*names):
        return {"server": s.pids(*names), "redis": redis}

    C = httpbench.Case
    return [
        C("bare.post", "bare POST", s.url("bare", "/bare"), post, None, cpu("bare")),
        C("add.off", "add", s.url("off", "/q/benchadd"), post, "bare.post", cpu("off")),
        C("add.on", "add, access log on", s.url("on", "/q/benchadd"), post, "bare.post",
          cpu("on")),
        C("jadd.off", "JSON add", s.url("off", "/queue"), jadd, "bare.post", cpu("off")),
        C("xmlrpc.off", "XML-RPC set", s.url("off", "/xmlrpc"), xml, "bare.post", cpu("off")),
        C("jtake.off", "JSON take", s.url("off", "/queue"), jtake, "bare.post", cpu("off"),
          q.prepare("benchtake"), q.remaining("benchtake")),
        C("bare.get", "bare GET", s.url("bare", "/bare"), None, None, cpu("bare")),
        C("get.off", "hard get", s.url("off", "/q/benchget"), None, "bare.get", cpu("off"),
          q.prepare("benchget"), q.remaining("benchget")),
        C("get.on", "hard get, access log on", s.url("on", "/q/benchget"), None, "bare.get",
          cpu("on"), q.prepare("benchget"), q.remaining("benchget")),
    ]


def reuse_cases(s: Servers, tmp: Path, q: Queues) -> list[httpbench.Case]:
    post = tmp / "post.lua"
    if not post.exists():
        wrk.write_post_script(post, "value=hello", FORM)
    redis = [s.redis.pid]
    C = httpbench.Case
    return [
        C("add.1p", "add, 1 process", s.url("rp1", "/q/benchadd"), post, None,
          {"server": s.pids("rp1"), "redis": redis}),
        C("add.2p", "add, 2 processes", s.url("rp2", "/q/benchadd"), post, "add.1p",
          {"server": s.pids("rp2a", "rp2b"), "redis": redis}),
        C("get.1p", "hard get, 1 process", s.url("rp1", "/q/benchget"), None, None,
          {"server": s.pids("rp1"), "redis": redis},
          q.prepare("benchget"), q.remaining("benchget")),
        C("get.2p", "hard get, 2 processes", s.url("rp2", "/q/benchget"), None, "get.1p",
          {"server": s.pids("rp2a", "rp2b"), "redis": redis},
          q.prepare("benchget"), q.remaining("benchget")),
    ]


def collectd_cases(s: Servers, tmp: Path) -> list[httpbench.Case]:
    body = collectd_body()
    script = wrk.write_post_script(tmp / "collectd.lua", body, "text/plain")
    redis = [s.redis.pid]
    return [
        httpbench.Case("bare.post", "bare POST, same body", s.url("bare", "/bare"), script,
                       None, {"server": s.pids("bare"), "redis": redis}),
        httpbench.Case("data", "collectd POST /collectd/data", s.url("collectd",
                                                                     "/collectd/data"),
                       script, "bare.post", {"server": s.pids("collectd"), "redis": redis}),
    ]


def _urlquote(text: str) -> str:
    from urllib.parse import quote
    return quote(text, safe="")


def wrk_section(name: str, cases: list[httpbench.Case], settings: httpbench.Settings,
                best: dict[str, float]) -> dict:
    runs = httpbench.run_section(name, cases, settings, best)
    return {"cases": [{"key": c.key, "label": c.label, "baseline": c.baseline,
                       "url_path": "/" + c.url.split("/", 3)[3]} for c in cases],
            "runs": [dataclasses.asdict(r) for r in runs],
            "connections": settings.connections,
            "durations": {str(k): v for k, v in settings.durations.items()}}


# --------------------------------------------------------------------------- leases

def leases_section(s: Servers, tmp: Path, q: Queues, settings: httpbench.Settings,
                   best: dict[str, float], args: argparse.Namespace,
                   rc: redis_private.RespClient) -> dict:
    post = tmp / "post.lua"
    if not post.exists():
        wrk.write_post_script(post, "value=hello", FORM)
    cycle = leasebench.write_cycle_script(tmp / "cycle.lua", "benchcycle", 1)
    redis = [s.redis.pid]
    bare_cpu = {"server": s.pids("bare"), "redis": redis}
    off_cpu = {"server": s.pids("off"), "redis": redis}
    C = httpbench.Case
    cases = [C("bare.post", "bare POST", s.url("bare", "/bare"), post, None, bare_cpu),
             C("cycle", leasebench.CYCLE_LABEL, s.url("off", "/claim/benchcycle"), cycle,
               "bare.post", off_cpu, q.prepare("benchcycle"), q.remaining("benchcycle"))]
    port = s.ports["off"]
    # The tick first: its idle windows need a quiet Redis, and the batches below leave a
    # million retired values behind, whose housekeeping Redis goes on doing for a while.
    ticking = sum(1 for name in s.procs if name not in ("bare", "syslogd"))
    print(f"  d. the tick ({ticking} RestMQ process{'es' if ticking > 1 else ''} on this Redis)",
          flush=True)
    tick = leasebench.measure_tick(port, rc, s.procs["off"].pid, ticking, **args.tick_sizes)
    print("  a. claim + ack", flush=True)
    out = wrk_section("leases", cases, settings, best)
    out["tick"] = tick
    leasebench.purge(port, "benchcycle")  # the claims the last requests left in flight
    print(f"  b. claim {args.batch_limit} + ack {args.batch_limit}", flush=True)
    batches = leasebench.measure_batches(
        settings.wrk_bin, port, rc, tmp, args.rounds, settings.durations[50], 50, off_cpu,
        (s.url("bare", "/bare"), post, bare_cpu), settings.pin_wrk, args.batch_limit)
    out["batch"] = [{**dataclasses.asdict(b), "ratio": b.ratio} for b in batches]
    print(f"  c. redelivery: {args.rounds} rounds x {args.lapse_messages} messages", flush=True)
    out["redelivery"] = [dataclasses.asdict(r) for r in leasebench.measure_redelivery(
        port, args.lapse_messages, args.rounds)]
    return out


# --------------------------------------------------------------------------- RabbitMQ

def rabbit_section(s: Servers, tmp: Path, q: Queues, settings: httpbench.Settings,
                   best: dict[str, float]) -> dict:
    skip = rabbit.ensure_installed(lambda m: print(f"  {m}", flush=True))
    if skip:
        print(f"  rabbitmq skipped: {skip}", flush=True)
        return {"skipped": skip}
    amqp, http, dist, epmd = free_ports(4)
    node = rabbit.RabbitMQ(tmp / "rabbitmq", amqp, http, dist, epmd)
    queue = "benchq"
    try:
        t0 = time.monotonic()
        node.start()
        print(f"  rabbitmq up in {time.monotonic() - t0:.1f} s (beam pid {node.beam_pid}, "
              f"management :{http})", flush=True)
        version, erlang = node.versions()
        node.declare(queue)
        auth = {"Content-Type": "application/json", "Authorization": rabbit.AUTH}
        pub = wrk.write_script(tmp / "rabbit-publish.lua", "POST", json.dumps(
            {**rabbit.PUBLISH_BODY, "routing_key": queue}), auth)
        get = wrk.write_script(tmp / "rabbit-get.lua", "POST", json.dumps(rabbit.GET_BODY),
                               auth)
        post = tmp / "post.lua"
        if not post.exists():
            wrk.write_post_script(post, "value=hello", FORM)

        def fill_rabbit(expected: float) -> None:
            # RabbitMQ's get is far slower than any other case: plan from its own rate, or
            # from its publish rate before it has one (not from the fastest case overall).
            conns = settings.connections[-1]
            rate = (best.get(f"rabbit.get@{conns}") or best.get(f"rabbit.publish@{conns}")
                    or 2000.0)
            node.top_up(queue, max(5000, math.ceil(
                PREFILL_MARGIN * rate * settings.durations[conns])))

        cpu_r = {"server": [node.beam_pid], "redis": [s.redis.pid]}
        cpu_q = {"server": s.pids("off"), "redis": [s.redis.pid]}
        C = httpbench.Case
        cases = [
            C("rabbit.publish", "RabbitMQ publish",
              f"{node.base}/api/exchanges/%2F/amq.default/publish", pub, None, cpu_r),
            C("add", "RestMQ add", s.url("off", "/q/benchadd"), post, "rabbit.publish", cpu_q),
            C("rabbit.get", "RabbitMQ get", f"{node.base}/api/queues/%2F/{queue}/get", get,
              None, cpu_r, fill_rabbit, lambda: node.depth(queue)),
            C("get", "RestMQ hard get", s.url("off", "/q/benchget"), None, "rabbit.get", cpu_q,
              q.prepare("benchget"), q.remaining("benchget")),
        ]
        out = wrk_section("rabbitmq", cases, settings, best)
        out["versions"] = {"rabbitmq": version, "erlang": erlang}
        return out
    finally:
        t0 = time.monotonic()
        node.stop()
        print(f"  rabbitmq stopped in {time.monotonic() - t0:.1f} s", flush=True)


# --------------------------------------------------------------------------- live, syslog

def live_section(s: Servers, args: argparse.Namespace, nofile: int) -> dict:
    port, bare_port = s.ports["off"], s.ports["bare"]
    server_pid, bare_pid = s.procs["off"].pid, s.procs["bare"].pid
    out: dict = {"settings": {"latency_messages": args.latency_messages,
                              "latency_rounds": args.rounds, "fan_sizes": args.fan_sizes,
                              "fan_repeats": args.fan_repeats, "drain": args.drain,
                              "drain_rounds": args.rounds}}
    print(f"  a. latency: {args.rounds} rounds x {args.latency_messages} messages per "
          "channel", flush=True)
    lat = live.measure_latency(port, bare_port, args.latency_messages, args.rounds)
    out["latency"] = {"samples": lat.samples, "problems": lat.problems}
    for c in ("bare", *live.TRANSPORTS):
        print(f"     {c:<6} p50 {lat.pct(c, 50):.2f} ms  p99 {lat.pct(c, 99):.2f} ms",
              flush=True)
    fans, skipped = [], []
    for n in args.fan_sizes:
        if n + live.FD_MARGIN > nofile:
            skipped.append(n)
            continue
        f = live.measure_fanout(port, server_pid, bare_port, bare_pid, n, args.fan_repeats)
        print(f"  b. fan-out {n:,}: restmq median {f.restmq.median('ms'):.1f} ms, bare "
              f"{f.bare.median('ms'):.1f} ms; {f.restmq.kb_per_consumer:.1f} KB/consumer "
              f"(bare {f.bare.kb_per_consumer:.1f})", flush=True)
        fans.append(dataclasses.asdict(f))
    out["fanout"], out["fan_skipped"] = fans, skipped
    drains = []
    for rnd in range(1, args.rounds + 1):
        sides = ["broadcast", "roundrobin", "bare"]
        for side in sides if rnd % 2 else reversed(sides):
            if side == "bare":
                d = live.measure_bare_drain(bare_port, args.drain, rnd)
            else:
                d = live.measure_drain(port, s.redis.port, side, args.drain, rnd)
            print(f"  c. drain round {rnd} {side:<10} {d.rate:>9,.0f} messages/s", flush=True)
            drains.append(dataclasses.asdict(d))
    out["drain"] = drains
    out["nofile"] = nofile
    return out


def syslog_section(s: Servers, args: argparse.Namespace) -> dict:
    port, per = s.ports["syslogd"], args.syslog_lines
    server_pid = s.procs["syslogd"].pid
    rounds = []
    for rnd in range(1, args.rounds + 1):
        for side in (["restmq", "sink"] if rnd % 2 else ["sink", "restmq"]):
            cpu0 = cpu_seconds(server_pid)
            if side == "restmq":
                tp = syslogd.measure_throughput(port, s.redis.port, SYSLOG_DB, per)
            else:
                # The sink is ~100x faster: SINK_SCALE times the lines gives it a duration
                # that 1 ms polling can time.
                tp = syslogd.measure_sink(s.ports["sink"], s.ports["bare"], per * SINK_SCALE)
            print(f"  syslog round {rnd} {side:<6} {tp.rate:>11,.0f} lines/s "
                  f"({tp.stored:,} in {tp.seconds:.2f} s)", flush=True)
            # syslogd's own CPU for the round (it is idle while the check reads Redis)
            cpu = cpu_seconds(server_pid) - cpu0 if side == "restmq" else None
            rounds.append({"round": rnd, "side": side, "server_cpu_s": cpu,
                           **dataclasses.asdict(tp)})
    print(f"  back-pressure: {args.bp_duration:g} s, Redis paused {args.bp_pause:g} s",
          flush=True)
    bp = syslogd.measure_backpressure(port, s.redis, SYSLOG_DB, s.procs["syslogd"].pid,
                                      args.bp_duration, args.bp_pause)
    print(f"     sent {bp.sent:,}, stored {bp.stored:,}, lost {bp.lost:,}", flush=True)
    return {"throughput": rounds, "backpressure": {**dataclasses.asdict(bp), "lost": bp.lost},
            "settings": {"senders": syslogd.SENDERS, "lines_per_sender": per,
                         "lines_per_send": syslogd.LINES_PER_SEND,
                         "send_buffer": syslogd.SEND_BUFFER, "sink_scale": SINK_SCALE}}


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="RestMQ benchmark suite (one report).")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (3)")
    p.add_argument("--duration", type=float, default=3.0,
                   help="seconds per wrk run at 50 connections (3)")
    p.add_argument("--duration-c1", type=float, default=2.0,
                   help="seconds per wrk run at 1 connection (2)")
    p.add_argument("--pause", type=float, default=0.3, help="idle seconds between runs")
    p.add_argument("--pin-wrk", metavar="CPUS", default=None,
                   help="run wrk under `taskset -c CPUS` (default: not pinned)")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run ({','.join(SECTIONS)})")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 round of 1 s runs, small sizes; report in bench/out/")
    p.add_argument("--out", type=Path, default=None, help="report (default bench/report.md)")
    p.add_argument("--render-only", type=Path, metavar="RESULTS_JSON", default=None,
                   help="rebuild the report and plots from a results.json, measure nothing")
    p.add_argument("--no-plots", action="store_true", help="write the report without plots")
    args = p.parse_args(argv)
    args.batch_limit = 100
    args.sections = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if args.quick:
        args.rounds, args.duration, args.duration_c1, args.pause = 1, 1.0, 1.0, 0.2
        args.latency_messages, args.fan_sizes, args.fan_repeats = 100, [100, 1_000], 3
        args.drain, args.syslog_lines, args.bp_duration, args.bp_pause = 5_000, 1_000, 4.0, 1.5
        args.lapse_messages, args.tick_sizes = 50, {"idle_queues": 1_000, "inflight_queues": 10,
                                                    "per_queue": 1_000, "window": 3.0}
    else:
        args.latency_messages, args.fan_sizes, args.fan_repeats = 300, [1_000, 10_000], 5
        args.drain, args.syslog_lines, args.bp_duration, args.bp_pause = 40_000, 5_000, 10.0, 4.0
        args.lapse_messages, args.tick_sizes = 200, {"idle_queues": 10_000,
                                                     "inflight_queues": 100,
                                                     "per_queue": 1_000, "window": 10.0}
        if args.rounds < 3:
            p.error("--rounds must be at least 3 (medians of 3 rounds or more); --quick for less")
    args.partial = set(args.sections) != set(SECTIONS)
    if args.render_only and args.out is None:
        # What the results hold decides, not the options of this call.
        meta = json.loads(args.render_only.read_text())["meta"]
        args.quick, args.partial = meta.get("quick"), set(meta["sections"]) != set(SECTIONS)
    if args.out is None:
        args.out = default_report(args.quick, args.partial)
    return args


def default_report(quick: bool, partial: bool) -> Path:
    """Only a full run replaces bench/report.md: a partial one would drop every section it did
    not run, a quick one is no measurement."""
    if quick:
        return OUT_DIR / "report-quick.md"
    return OUT_DIR / "report-partial.md" if partial else BENCH_DIR / "report.md"


def run_all(args: argparse.Namespace) -> dict:
    wrk_bin, redis_bin = wrk.find_wrk(), shutil.which("redis-server")
    if wrk_bin is None or redis_bin is None:
        raise SystemExit("error: wrk and redis-server must be on PATH (Debian: apt-get install "
                         "wrk redis-server; `make bench` does it)")
    if wrk.parse(wrk.SAMPLE_OUTPUT) != wrk.SAMPLE_EXPECTED:  # the harness's own check
        raise SystemExit("error: bench/wrk.py misreads its sample wrk report")
    nofile = raise_nofile_limit()  # before any child starts: they inherit it
    sections = set(args.sections)
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    results: dict = {"meta": {"date": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
                              "load_before": [round(x, 2) for x in os.getloadavg()],
                              "quick": args.quick,
                              "sections": args.sections, "rounds": args.rounds,
                              "durations": {"1": args.duration_c1, "50": args.duration},
                              "pause": args.pause, "pin_wrk": args.pin_wrk,
                              "nofile": nofile, "cpus": len(os.sched_getaffinity(0))},
                     "sections": {}, "errors": []}
    settings = httpbench.Settings(wrk_bin, args.rounds, [1, 50],
                                  {1: args.duration_c1, 50: args.duration}, args.pause,
                                  args.pin_wrk)
    settings50 = dataclasses.replace(settings, connections=[50])
    best: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="restmq-bench-") as tmp_name:
        tmp = Path(tmp_name)
        s = make_servers(tmp, redis_bin, sections)
        procs = list(s.procs.values())
        try:
            s.redis.start()
            t0 = time.monotonic()
            start_all(procs)
            print(f"redis :{s.redis.port}; {len(procs)} servers up in "
                  f"{time.monotonic() - t0:.1f} s: "
                  + ", ".join(f"{p.name} (pid {p.pid})" for p in procs), flush=True)
            results["meta"]["software"] = {**software_info(s.redis.version()),
                                           "wrk": wrk.version(wrk_bin),
                                           "hiredis": dist_version("hiredis"),
                                           "matplotlib": dist_version("matplotlib")}
            with redis_private.RespClient(s.redis.port) as rc:
                q = Queues(rc)
                plan = [
                    ("http", lambda: wrk_section("http", http_cases(s, tmp, q), settings,
                                                 best)),
                    ("reuse", lambda: wrk_section("reuse", reuse_cases(s, tmp, q), settings50,
                                                  best)),
                    ("collectd", lambda: {**wrk_section("collectd", collectd_cases(s, tmp),
                                                        settings50, best),
                                          "body_lines": len(collectd_body().splitlines())}),
                    ("syslog", lambda: syslog_section(s, args)),
                    ("live", lambda: live_section(s, args, nofile)),
                    ("leases", lambda: leases_section(s, tmp, q, settings50, best, args, rc)),
                    ("rabbitmq", lambda: rabbit_section(s, tmp, q, settings50, best)),
                    ("parser", lambda: layer.measure(
                        redis_bin, wrk_bin, pairs=layer.PAIRS if not args.quick else 1,
                        duration=layer.DURATION if not args.quick else 1.0)),
                    ("flow", lambda: flow.measure(redis_bin, wrk_bin, args.rounds,
                                                  args.duration, args.pause, args.quick)),
                    ("dashboard", lambda: dashboard.measure(
                        redis_bin, wrk_bin, args.rounds, max(args.duration, 10.0),
                        args.pause, args.quick)),
                    ("metrics", lambda: scrape.measure(redis_bin, wrk_bin, args.rounds,
                                                       args.duration, args.pause, args.quick)),
                    ("push", lambda: pushbench.measure(redis_bin, wrk_bin, args.rounds,
                                                       args.quick)),
                    ("client", lambda: clientbench.measure(redis_bin, args.rounds,
                                                           args.quick)),
                ]
                for name, run in plan:
                    if name not in sections:
                        continue
                    t0 = time.monotonic()
                    print(f"[{name}]", flush=True)
                    try:
                        results["sections"][name] = run()
                    except Exception as exc:  # noqa: BLE001 - one broken section is reported
                        traceback.print_exc()
                        results["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
                    results["sections"].setdefault(name, {})["seconds"] = \
                        time.monotonic() - t0
                    for p in procs:
                        if not p.alive():
                            raise RuntimeError(f"{p.name} died during [{name}]:\n"
                                               f"{p.log_tail()}")
            # (restmq-on's log also holds the access log: its URLs hold no problem word.)
            results["server_log"] = {p.name: log_problems(p.logfile)[:10] for p in procs}
        finally:
            # Cleanup must not be cut short by a second Ctrl-C / SIGTERM; each step has a
            # timeout, so this cannot hang for long.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                stop_all(procs)
            finally:
                s.redis.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, raise_exit)
    results["meta"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results["meta"]["elapsed_s"] = time.monotonic() - t_start
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_exit)
    OUT_DIR.mkdir(exist_ok=True)
    if args.render_only:
        results = json.loads(args.render_only.read_text())
    else:
        try:
            results = run_all(args)
        except KeyboardInterrupt:
            print("interrupted; servers stopped", file=sys.stderr)
            return 130
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        name = "results-quick.json" if args.quick else \
            "results-partial.json" if args.partial else "results.json"
        (OUT_DIR / name).write_text(json.dumps(results))
    import report  # after the run: nothing it imports slows the measurements
    text = report.render(results, args.out, with_plots=not args.no_plots)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"\nreport written to {args.out}")
    print(report.headline_text(results))
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
