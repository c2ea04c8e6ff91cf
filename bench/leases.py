"""Leases (README, "Reliable workers"): what claims and acks cost, how soon a lapsed lease
comes back, and what the tick costs Redis with many queues and leases.

Used by run.py against `twistd restmq --access-log off`:

a. claim + ack cycle: a wrk script that claims one message (`POST /claim/<q>`, lease 600 s)
   and, on the same wrk thread, acks it by its receipt (`POST /ack/<q>`); req/s counts both
   requests. run.py runs it as a wrk case beside the bare POST, interleaved round by round.
b. claim 100 + ack 100: the same script with `limit=100` and the hundred receipts in one ack;
   messages/s = the messages that left the queue acked (pending less, in flight not more)
   over the run, counted in Redis.
c. lease-expiry redelivery: messages claimed one by one with a 3 s lease, then a comet
   consumer; each message comes back when its lease lapses (the tick hands it back and wakes
   the queue, live delivery pops it). Latency = its arrival less its deadline, both on this
   host's clock (Redis's TIME is the same clock).
d. the tick's cost (measured first, on a quiet Redis): Redis CPU (INFO cpu) and script time
   (INFO commandstats, `evalsha`) per second while the server is otherwise idle, first with
   no lease anywhere, then with 10,000 idle queues and 100,000 messages in flight (100
   queues of 1,000, leased for an hour); then those 100,000 deadlines are moved to now and
   the ticks hand them all back: how long that takes and what it costs.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import redis_private
import wrk
from common import CpuMeter, cpu_seconds
from live import BenchError, BlockingConn, CometStream, percentile

CYCLE_LUA = """\
-- claim {limit}, then ack what was claimed, on each wrk thread (acks go first)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
local claim_path, ack_path = "/claim/{queue}", "/ack/{queue}"
local claim_body = "limit={limit}&lease={lease}"
local acks, head, tail = {{}}, 1, 0
request = function()
  if tail >= head then
    local receipts = acks[head]
    acks[head] = nil
    head = head + 1
    return wrk.format(nil, ack_path, nil, "receipt=" .. receipts)
  end
  return wrk.format(nil, claim_path, nil, claim_body)
end
response = function(status, headers, body)
  if status == 200 then
    local found = {{}}
    for receipt in body:gmatch('"receipt": "([^"]+)"') do
      found[#found + 1] = receipt
    end
    if #found > 0 then
      tail = tail + 1
      acks[tail] = table.concat(found, ",")
    end
  end
end
"""
LEASE_S = 600  # the benchmark's claims never lapse while it runs


def write_cycle_script(path: Path, queue: str, limit: int) -> Path:
    path.write_text(CYCLE_LUA.format(queue=queue, limit=limit, lease=LEASE_S))
    return path


def purge(port: int, queue: str) -> None:
    conn = BlockingConn(port)
    try:
        conn.sock.sendall(f"DELETE /q/{queue} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        status, body = conn.read_response()
        if status != 200:
            raise BenchError(f"DELETE /q/{queue}: {status} {body!r}")
    finally:
        conn.close()


def claim(conn: BlockingConn, queue: str, limit: int, lease: int) -> list[dict]:
    status, body = conn.post(f"/claim/{queue}", f"limit={limit}&lease={lease}")
    if status == 204:
        return []
    if status != 200:
        raise BenchError(f"POST /claim/{queue}: {status} {body!r}")
    return json.loads(body)["messages"]


# --------------------------------------------------------------------------- b. batches

@dataclasses.dataclass
class BatchRun:
    round: int
    connections: int
    seconds: float
    acked: int
    messages_per_s: float
    result: wrk.WrkResult
    cpu: dict[str, float]
    left: int
    bare_rps: float  # the bare POST's req/s in the same round, just before or after
    bare_cpu: dict[str, float]

    @property
    def ratio(self) -> float:
        """Messages acked per second ÷ bare POST requests per second."""
        return self.messages_per_s / self.bare_rps


def measure_batches(wrk_bin: str, port: int, rc: redis_private.RespClient, tmp: Path,
                    rounds: int, duration: float, connections: int,
                    pids: dict[str, list[int]], bare: tuple[str, Path, dict[str, list[int]]],
                    pin: str | None = None, limit: int = 100) -> list[BatchRun]:
    """Each round: the bare POST (`bare`: url, script, pids) and the batch cycle back to back
    (the order alternating), the batch on a fresh queue filled straight in Redis and
    purged afterwards."""
    out = []
    for rnd in range(1, rounds + 1):
        bare_first = rnd % 2 == 0
        if bare_first:
            bare_run = _bare(wrk_bin, bare, connections, duration, pin)
        queue = f"benchbatch{rnd}"
        script = write_cycle_script(tmp / f"batch{rnd}.lua", queue, limit)
        redis_private.top_up(rc, queue, int(max(100_000, 2 * 60_000 * duration)))
        pending0 = redis_private.queue_length(rc, queue)
        meter = CpuMeter(pids)
        meter.start()
        measured = wrk.run(wrk_bin, f"http://127.0.0.1:{port}/", threads=min(2, connections),
                           connections=connections, duration=duration, script=script,
                           cpus=pin)
        cpu = meter.stop({"wrk": measured.cpu_seconds})
        pending1 = redis_private.queue_length(rc, queue)
        inflight = int(rc.command("ZCARD", f"{queue}:inflight"))
        acked = pending0 - pending1 - inflight
        res = measured.result
        purge(port, queue)
        time.sleep(0.3)
        if not bare_first:
            bare_run = _bare(wrk_bin, bare, connections, duration, pin)
        run = BatchRun(rnd, connections, res.seconds, acked, acked / res.seconds, res, cpu,
                       pending1, bare_run[0].requests_per_sec, bare_run[1])
        out.append(run)
        print(f"  leases batch round {rnd}/{rounds} c{connections}: {run.messages_per_s:,.0f} "
              f"messages/s ({res.requests_per_sec:,.0f} req/s, p99 {res.p99_ms:.1f} ms; bare "
              f"POST {run.bare_rps:,.0f} req/s: ratio {run.ratio:.2f}) "
              + " ".join(f"{k} {v:.2f}" for k, v in cpu.items()), flush=True)
    return out


def _bare(wrk_bin: str, bare: tuple[str, Path, dict[str, list[int]]], connections: int,
          duration: float, pin: str | None) -> tuple[wrk.WrkResult, dict[str, float]]:
    url, script, pids = bare
    meter = CpuMeter(pids)
    meter.start()
    measured = wrk.run(wrk_bin, url, threads=min(2, connections), connections=connections,
                       duration=duration, script=script, cpus=pin)
    cpu = meter.stop({"wrk": measured.cpu_seconds})
    time.sleep(0.3)
    return measured.result, cpu


# --------------------------------------------------------------------------- c. redelivery

@dataclasses.dataclass
class Redelivery:
    round: int
    samples: list[float]  # ms after the deadline, one per message
    claim_s: float  # how long the claims took
    problems: list[str]


def measure_redelivery(port: int, count: int, rounds: int, lease: int = 3,
                       spread: float = 2.0) -> list[Redelivery]:
    """`count` messages per round, claimed one by one over `spread` seconds (so that their
    deadlines spread too), then consumed by comet as their leases lapse."""
    out = []
    for rnd in range(1, rounds + 1):
        queue = f"benchlapse{rnd}"
        conn = BlockingConn(port)
        problems: list[str] = []
        try:
            for n in range(count):
                status, body = conn.post(f"/q/{queue}", f"value=m{n}")
                if status != 200:
                    raise BenchError(f"POST /q/{queue}: {status} {body!r}")
            deadlines: dict[str, float] = {}
            t0 = time.monotonic()
            for n in range(count):
                for m in claim(conn, queue, 1, lease):
                    deadlines[m["key"]] = m["lease_until"] * 1000.0
                pause = t0 + spread * (n + 1) / count - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            claim_s = time.monotonic() - t0
        finally:
            conn.close()
        if len(deadlines) != count:
            raise BenchError(f"claimed {len(deadlines)} of {count} messages")
        stream = CometStream(port, queue)
        if time.time() * 1000.0 > min(deadlines.values()):
            problems.append(f"round {rnd}: the consumer came after the first deadline")
        arrived: dict[str, float] = {}
        try:
            while len(arrived) < count:
                messages = stream.next_messages()
                now = time.time() * 1000.0
                for m in messages:
                    if m["key"] not in deadlines or m["key"] in arrived:
                        problems.append(f"round {rnd}: unexpected delivery {m!r}")
                        continue
                    arrived[m["key"]] = now - deadlines[m["key"]]
        except OSError as e:  # the stream's read timeout: some never came back
            problems.append(f"round {rnd}: {count - len(arrived)} messages not redelivered "
                            f"({e!r})")
        finally:
            stream.close()
        early = [ms for ms in arrived.values() if ms < 0]
        if early:
            problems.append(f"round {rnd}: {len(early)} messages back before their deadline")
        samples = sorted(arrived.values())
        print(f"  leases redelivery round {rnd}/{rounds}: p50 {percentile(samples, 50):.1f} ms, "
              f"p99 {percentile(samples, 99):.1f} ms, max {samples[-1]:.1f} ms after the "
              f"deadline ({len(samples)} messages)", flush=True)
        out.append(Redelivery(rnd, samples, claim_s, problems))
        purge(port, queue)
    return out


# --------------------------------------------------------------------------- d. the tick

_IDLE_QUEUES_LUA = """
for i = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  local q = ARGV[1] .. i
  redis.call('SADD', 'QUEUESET', q)
  redis.call('SETNX', 'queuestat::' .. q, '1')
  local k = q .. ':' .. redis.call('INCR', q .. ':UUID')
  redis.call('SET', k, 'idle')
  redis.call('LPUSH', q .. ':queue', k)
end
return 1
"""
_IN_FLIGHT_LUA = """
local n = 0
for _, key in ipairs(KEYS) do
  n = n + redis.call('ZCARD', key)
end
return n
"""
# Every lease of a queue ends now, and the queue is due now (what a lapse of all of them
# at the same moment looks like).
_LAPSE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keys = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, k in ipairs(keys) do
  redis.call('ZADD', KEYS[1], 'XX', now, k)
end
redis.call('ZADD', KEYS[2], now, ARGV[1])
return #keys
"""


@dataclasses.dataclass
class Window:
    """Redis's work over `seconds` while the server idles: CPU (INFO cpu, user + sys) and
    scripts (INFO commandstats: evalsha calls and µs), and the server process's CPU."""
    seconds: float
    redis_cpu_s: float
    script_calls: int
    script_us: int
    server_cpu_s: float

    def per_second(self) -> dict[str, float]:
        return {"redis_cpu_ms": 1000 * self.redis_cpu_s / self.seconds,
                "script_calls": self.script_calls / self.seconds,
                "script_us": self.script_us / self.seconds,
                "server_cpu_ms": 1000 * self.server_cpu_s / self.seconds}


def _info(rc: redis_private.RespClient, section: str) -> dict[str, str]:
    text = rc.command("INFO", section)
    text = text.decode() if isinstance(text, bytes) else text
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _redis_cpu(rc: redis_private.RespClient) -> float:
    info = _info(rc, "cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _evalsha(rc: redis_private.RespClient) -> tuple[int, int]:
    stat = _info(rc, "commandstats").get("cmdstat_evalsha", "")
    fields = dict(item.split("=", 1) for item in stat.split(",") if "=" in item)
    return int(fields.get("calls", 0)), int(fields.get("usec", 0))


class _Meter:
    def __init__(self, rc: redis_private.RespClient, server_pid: int) -> None:
        self.rc, self.pid = rc, server_pid

    def start(self) -> None:
        self.t0, self.cpu0 = time.monotonic(), _redis_cpu(self.rc)
        self.calls0, self.us0 = _evalsha(self.rc)
        self.server0 = cpu_seconds(self.pid)

    def stop(self) -> Window:
        calls, us = _evalsha(self.rc)
        return Window(time.monotonic() - self.t0, _redis_cpu(self.rc) - self.cpu0,
                      calls - self.calls0, us - self.us0, cpu_seconds(self.pid) - self.server0)


QUIET_CPU_MS = 6.0  # Redis CPU per second of an idle Redis (its timers, our INFO) and less


def _wait_quiet(rc: redis_private.RespClient, ticking: int, timeout: float = 60.0) -> float:
    """Wait until, over one second, Redis runs no more scripts than the idle looks of
    `ticking` processes (one a second each, and a little slack) and uses no more CPU than an
    idle Redis; the seconds waited, or None after `timeout`. Earlier work goes on after its
    reply: a purge retires a long queue's values in steps, Redis rehashes its key table in
    the background after a million keys came and went; either would count as the tick's."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        calls0, cpu0 = _evalsha(rc)[0], _redis_cpu(rc)
        time.sleep(1.0)
        if _evalsha(rc)[0] - calls0 <= ticking + 2 and \
                1000 * (_redis_cpu(rc) - cpu0) <= QUIET_CPU_MS:
            return time.monotonic() - started
    return None


def _idle_window(rc, server_pid: int, seconds: float) -> Window:
    meter = _Meter(rc, server_pid)
    meter.start()
    time.sleep(seconds)
    return meter.stop()


def measure_tick(port: int, rc: redis_private.RespClient, server_pid: int, ticking: int,
                 idle_queues: int = 10_000, inflight_queues: int = 100,
                 per_queue: int = 1_000, window: float = 10.0) -> dict:
    """The tick's cost per second, without and with many idle queues and leases, and the
    hand-back of all those leases at once; `ticking`: how many RestMQ processes run on this
    Redis (each ticks). Removes what it created."""
    out: dict = {"settings": {"idle_queues": idle_queues, "inflight_queues": inflight_queues,
                              "per_queue": per_queue, "window_s": window,
                              "ticking": ticking}}
    out["quiet_wait_s"] = [_wait_quiet(rc, ticking)]
    out["empty"] = dataclasses.asdict(_idle_window(rc, server_pid, window))
    t0 = time.monotonic()
    for start in range(0, idle_queues, 1000):
        rc.command("EVAL", _IDLE_QUEUES_LUA, 0, "benchidle", start,
                   min(idle_queues, start + 1000) - 1)
    conn = BlockingConn(port)
    held = 0
    try:
        for i in range(inflight_queues):
            queue = f"benchheld{i}"
            redis_private.top_up(rc, queue, per_queue)
            for _ in range(0, per_queue, 100):
                held += len(claim(conn, queue, 100, 3600))
    finally:
        conn.close()
    if held != inflight_queues * per_queue:
        raise BenchError(f"{held} messages in flight, {inflight_queues * per_queue} wanted")
    out["setup_s"] = time.monotonic() - t0
    print(f"  leases tick: {idle_queues:,} idle queues and {held:,} messages in flight set up "
          f"in {out['setup_s']:.1f} s", flush=True)
    out["quiet_wait_s"].append(_wait_quiet(rc, ticking))
    out["loaded"] = dataclasses.asdict(_idle_window(rc, server_pid, window))

    # Every lease ends at once: the ticks hand the 100,000 back. Nothing tells the processes
    # (a lease ends on its own), so the first look comes within the ticker's interval (1 s);
    # `first_s` says when the first message was back.
    meter = _Meter(rc, server_pid)
    total = inflight_queues * per_queue
    for i in range(inflight_queues):
        rc.command("EVAL", _LAPSE_LUA, 2, f"benchheld{i}:inflight", "DUESET", f"benchheld{i}")
    meter.start()
    deadline, first = time.monotonic() + 120, None
    inflight_keys = [f"benchheld{i}:inflight" for i in range(inflight_queues)]
    while True:
        left = int(rc.command("EVAL", _IN_FLIGHT_LUA, len(inflight_keys), *inflight_keys))
        if first is None and left < total:
            first = time.monotonic() - meter.t0
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    lapse = meter.stop()
    requeued = sum(redis_private.queue_length(rc, f"benchheld{i}")
                   for i in range(inflight_queues))
    out["lapse"] = {**dataclasses.asdict(lapse), "left_in_flight": left, "requeued": requeued,
                    "first_s": first}
    print(f"  leases tick: {requeued:,} lapsed leases handed back in {lapse.seconds:.2f} s "
          f"(the first after {first or 0:.2f} s), {lapse.script_calls:,} scripts, "
          f"{lapse.script_us / max(1, requeued):.1f} µs of script per lease", flush=True)
    for i in range(inflight_queues):
        purge(port, f"benchheld{i}")
    _remove_idle(rc, idle_queues)
    for name in ("empty", "loaded"):
        w = Window(**out[name])
        print(f"  leases tick, {name}: " + ", ".join(
            f"{k} {v:.2f}" for k, v in w.per_second().items()) + " per second", flush=True)
    return out


_REMOVE_IDLE_LUA = """
for i = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  local q = ARGV[1] .. i
  redis.call('SREM', 'QUEUESET', q)
  redis.call('DEL', 'queuestat::' .. q, q .. ':UUID', q .. ':queue', q .. ':1')
end
return 1
"""


def _remove_idle(rc: redis_private.RespClient, count: int) -> None:
    for start in range(0, count, 1000):
        rc.command("EVAL", _REMOVE_IDLE_LUA, 0, "benchidle", start, min(count, start + 1000) - 1)


def redelivery_summary(rounds: list[Redelivery]) -> dict[str, float]:
    """Medians over the rounds of each round's percentile (as the live latencies)."""
    return {f"p{p}": statistics.median(percentile(r.samples, p) for r in rounds if r.samples)
            for p in (50, 95, 99)} | {"max": max(max(r.samples) for r in rounds if r.samples)}


# --------------------------------------------------------------------------- the report

CYCLE_RATIO = 0.40  # claim + ack requests/s ÷ bare POST requests/s, 50 connections
BATCH_PER_S = 20_000.0  # messages/s claimed 100 at a time and acked 100 at a time
REDELIVERY_P99_MS = 100.0  # after the deadline, while a process runs
CYCLE_LABEL = "claim + ack `POST /claim/<q>`, `POST /ack/<q>` (1 message each)"


def handing_back_s(lapse: dict) -> float:
    """From the first lapsed lease handed back to the last (the wait for the first look
    left out), as polled every 10 ms."""
    return lapse["seconds"] - (lapse.get("first_s") or 0.0)


def batch_medians(sec: dict) -> dict[str, float]:
    runs = sec["batch"]
    return {"messages_per_s": statistics.median(r["messages_per_s"] for r in runs),
            "ratio": statistics.median(r["ratio"] for r in runs),
            "bare_rps": statistics.median(r["bare_rps"] for r in runs),
            "p99_ms": statistics.median(r["result"]["p99_ms"] for r in runs),
            "server_us": statistics.median(1e6 * r["cpu"].get("server", 0.0) * r["seconds"]
                                           / r["acked"] for r in runs if r["acked"]),
            "redis_us": statistics.median(1e6 * r["cpu"].get("redis", 0.0) * r["seconds"]
                                          / r["acked"] for r in runs if r["acked"]),
            "server_cores": statistics.median(r["cpu"].get("server", 0.0) for r in runs),
            "redis_cores": statistics.median(r["cpu"].get("redis", 0.0) for r in runs)}


def tick_rates(sec: dict) -> dict[str, dict[str, float]]:
    return {name: Window(**sec["tick"][name]).per_second() for name in ("empty", "loaded")}


def add_figures(sec: dict, add) -> None:
    """`add(key, value, unit, better, kind)`: report.Figures.add."""
    b = batch_medians(sec)
    add("leases.batch.messages_per_s", b["messages_per_s"], "messages/s")
    add("leases.batch.ratio", b["ratio"], "messages/s ÷ bare POST req/s", "higher", "ratio")
    add("leases.batch.server_cpu_us", b["server_us"], "us server CPU per message", "lower")
    add("leases.batch.redis_cpu_us", b["redis_us"], "us Redis CPU per message", "lower")
    r = redelivery_summary([Redelivery(**x) for x in sec["redelivery"]])
    for p in ("p50", "p99"):
        add(f"leases.redelivery.{p}_ms", r[p], "ms after the deadline", "lower")
    for name, rates in tick_rates(sec).items():
        add(f"leases.tick.{name}.redis_cpu_ms_per_s", rates["redis_cpu_ms"],
            "ms Redis CPU per second", "lower")
        add(f"leases.tick.{name}.script_us_per_s", rates["script_us"],
            "us script time per second", "lower")
        add(f"leases.tick.{name}.script_calls_per_s", rates["script_calls"],
            "script runs per second", "lower")
    lapse = sec["tick"]["lapse"]
    if lapse["requeued"]:
        add("leases.tick.lapse.spread_s", handing_back_s(lapse),
            "s from the first lapsed lease back to the last", "lower")
        add("leases.tick.lapse.script_us", lapse["script_us"] / lapse["requeued"],
            "us script time per lapsed lease", "lower")


def targets(sec: dict, cycle) -> list[dict]:
    """Rows for report.Target: `cycle` is the wrk Summary of the claim + ack case at 50
    connections (None when it did not run). `met` None: a figure without a target."""
    rows = []
    if cycle is not None:
        ok = cycle.rps_ratio >= CYCLE_RATIO
        server_us = 1e6 * cycle.cpu.get("server", 0.0) / cycle.rps if cycle.rps else 0.0
        rows.append(dict(
            what=f"{CYCLE_LABEL}, 50 connections: req/s ÷ bare POST",
            measured=f"{cycle.rps_ratio:.2f} ({cycle.rps:,.0f} req/s = {cycle.rps / 2:,.0f} "
                     f"cycles/s; CPU ratio {cycle.cpu_ratio or 0:.2f})",
            goal=f"≥ {CYCLE_RATIO:.2f}", met=ok, baseline=f"bare POST: {cycle.base_rps:,.0f} "
                                                           "req/s",
            limit="" if ok else (f"the server spends {server_us:.0f} µs of CPU per request "
                                 f"(CPU ratio to the bare handler {cycle.cpu_ratio or 0:.2f}); "
                                 "see the CPU columns of section 6"),
            figure="leases.cycle.c50.rps_ratio"))
    b = batch_medians(sec)
    ok = b["messages_per_s"] >= BATCH_PER_S
    rows.append(dict(
        what="claim 100 + ack 100, one process, 50 connections: messages/s (÷ bare POST req/s)",
        measured=f"{b['messages_per_s']:,.0f} messages/s ({b['ratio']:.2f})",
        goal=f"≥ {BATCH_PER_S:,.0f}/s", met=ok,
        baseline=f"bare POST: {b['bare_rps']:,.0f} req/s; per message server {b['server_us']:.1f}"
                 f" µs, Redis {b['redis_us']:.1f} µs of CPU",
        limit="" if ok else (f"the server used {b['server_cores']:.2f} cores and Redis "
                             f"{b['redis_cores']:.2f}: per message {b['server_us']:.1f} µs "
                             f"and {b['redis_us']:.1f} µs of CPU"),
        figure="leases.batch.messages_per_s"))
    rounds = [Redelivery(**x) for x in sec["redelivery"]]
    r = redelivery_summary(rounds)
    ok = r["p99"] <= REDELIVERY_P99_MS and not any(x.problems for x in rounds)
    rows.append(dict(
        what="lease-expiry redelivery to a comet consumer, after the deadline: p99 (p50)",
        measured=f"{r['p99']:.1f} ms ({r['p50']:.1f} ms)", goal=f"≤ {REDELIVERY_P99_MS:g} ms",
        met=ok, baseline=f"max {r['max']:.1f} ms",
        limit="" if ok else "; ".join(p for x in rounds for p in x.problems) or
        "the tick runs at the deadlines this process created; see section 6",
        figure="leases.redelivery.p99_ms"))
    t = sec["tick"]
    rates = tick_rates(sec)
    s = t["settings"]
    rows.append(dict(
        what=f"tick with {s['idle_queues']:,} idle queues and "
             f"{s['inflight_queues'] * s['per_queue']:,} messages in flight, per second",
        measured=f"{rates['loaded']['redis_cpu_ms']:.2f} ms Redis CPU, "
                 f"{rates['loaded']['script_us']:.0f} µs of script "
                 f"({rates['loaded']['script_calls']:.1f} runs)", goal="", met=None,
        baseline=f"no lease anywhere: {rates['empty']['redis_cpu_ms']:.2f} ms, "
                 f"{rates['empty']['script_us']:.0f} µs", figure=""))
    lapse = t["lapse"]
    if lapse["requeued"]:
        rows.append(dict(
            what=f"{lapse['requeued']:,} leases lapsing at once: handed back by the ticks",
            measured=f"all back {handing_back_s(lapse):.2f} s after the first, "
                     f"{lapse['script_us'] / lapse['requeued']:.1f} µs of script each",
            goal="", met=None, baseline=f"Redis CPU {lapse['redis_cpu_s']:.2f} s",
            figure="leases.tick.lapse.script_us"))
    return rows


def render(sec: dict, summaries: dict | None, wrk_table) -> list[str]:
    """Section 6 of the report; `wrk_table` is report.wrk_table."""
    o = ["## 6. Leases: claim, ack, lapse", ""]
    if summaries:
        o += ["Claim + ack: a wrk script claims one message (`limit=1&lease=600`) and acks it "
              "by its receipt on the same wrk thread; req/s counts claims and acks (a cycle is "
              "two requests), against the bare POST in the same rounds. The queue is filled "
              "straight in Redis before each run.", ""]
        o += wrk_table(summaries, [("bare.post", "bare POST `value=hello`"),
                                   ("cycle", "claim + ack")], 50, {"bare.post": "bare POST"})
        o.append("")
    o += ["Claim 100 + ack 100: the same script with `limit=100` and the hundred receipts in "
          "one ack, 50 connections, one process; messages/s = the messages that left the queue "
          "acked (pending before − pending after − in flight after, read in Redis) ÷ the run. "
          "Each round runs the bare POST beside it (the order alternating); ratio = messages/s "
          "÷ the bare POST's req/s.",
          "", "| round | messages/s | bare POST req/s | ratio | req/s | p50 ms | p99 ms | CPU "
          "cores: server / Redis / wrk / other / idle | server µs per message | Redis µs per "
          "message |",
          "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in sec["batch"]:
        c, res = r["cpu"], r["result"]
        other = max(0.0, c.get("machine", 0.0) - sum(v for k, v in c.items()
                                                      if k not in ("machine", "idle")))
        per = r["seconds"] / r["acked"] * 1e6 if r["acked"] else 0.0
        o.append(f"| {r['round']} | {r['messages_per_s']:,.0f} | {r['bare_rps']:,.0f} | "
                 f"{r['ratio']:.2f} | {res['requests_per_sec']:,.0f} "
                 f"| {res['p50_ms']:.2f} | {res['p99_ms']:.2f} | {c.get('server', 0):.2f} / "
                 f"{c.get('redis', 0):.2f} / {c.get('wrk', 0):.2f} / {other:.2f} / "
                 f"{c.get('idle', 0):.2f} | {c.get('server', 0) * per:.1f} | "
                 f"{c.get('redis', 0) * per:.1f} |")
    rounds = [Redelivery(**x) for x in sec["redelivery"]]
    o += ["", f"Lease-expiry redelivery: per round {len(rounds[0].samples) if rounds else 0} "
          "messages claimed one by one over 2 s with a 3 s lease, then one comet consumer; "
          "each message's arrival less its deadline (`lease_until`), both on this host's "
          "clock, which is Redis's. Nothing acks: the process that served the claims looks at "
          "each deadline it created (any other process on this Redis looks once a second), "
          "its tick hands the message back and wakes the queue, and live delivery pops it.",
          "",
          "| round | messages | p50 ms | p95 ms | p99 ms | max ms | problems |",
          "|---:|---:|---:|---:|---:|---:|---|"]
    for r in rounds:
        s = r.samples
        o.append(f"| {r.round} | {len(s)} | {percentile(s, 50):.1f} | {percentile(s, 95):.1f} "
                 f"| {percentile(s, 99):.1f} | {max(s):.1f} | {'; '.join(r.problems)} |")
    t = sec["tick"]
    s = t["settings"]
    ticking = s.get("ticking", 1)
    who = (f"{ticking} RestMQ processes on this Redis, each ticking" if ticking > 1
           else "one RestMQ process on this Redis")
    o += ["", f"The tick: over {s['window_s']:g} s while the servers are otherwise idle ({who}), "
          "Redis's CPU (`INFO cpu`, user + sys) and its script time (`INFO commandstats`, "
          "`evalsha`, wall time inside the scripts, which other work on the machine "
          "stretches: each process's look at `DUESET`, a second apart while nothing is due, "
          "and the tick of a queue when one is due: a queue with nothing due is never looked "
          f"at), first with no lease anywhere, then with {s['idle_queues']:,} idle queues "
          f"(one pending message each) and {s['inflight_queues'] * s['per_queue']:,} "
          f"messages in flight ({s['inflight_queues']} queues of {s['per_queue']:,}, claimed "
          "with a 1 h lease; "
          f"set up in {t['setup_s']:.1f} s). Then a script moved all those deadlines to now, "
          "and the ticks handed them back.", "",
          "| state | Redis CPU ms/s | script runs/s | script µs/s | server CPU ms/s |",
          "|---|---:|---:|---:|---:|"]
    quiet = t.get("quiet_wait_s", [])
    for name, rates in tick_rates(sec).items():
        o.append(f"| {name} | {rates['redis_cpu_ms']:.2f} | {rates['script_calls']:.2f} | "
                 f"{rates['script_us']:.0f} | {rates['server_cpu_ms']:.2f} |")
    o += ["", "The script runs are the tick's own work: one look a second per process, however "
          "many idle queues and leases wait. The CPU columns are at the floor of idle "
          "processes (their timers, and the meter's `INFO`), which on this shared machine "
          "swings by several ms a second from one sample to the next."]
    if quiet:
        o[-1] += (" Each window began once Redis had been quiet for a second (no more scripts "
                  f"than the looks, at most {QUIET_CPU_MS:g} ms of CPU): after "
                  + " and ".join("never (60 s)" if q is None else f"{q:.0f} s" for q in quiet)
                  + " of waiting.")
    lapse = t["lapse"]
    o += ["", f"All {lapse['requeued']:,} lapsing at once: the first was back "
          f"{lapse.get('first_s') or 0:.2f} s after the deadlines moved (nothing tells a "
          "process that a lease ended: its next look, at most a second later, finds it), all "
          f"{handing_back_s(lapse):.2f} s after the first (polled every 10 ms), by "
          f"{lapse['script_calls']:,} scripts "
          f"({lapse['script_us'] / 1000:.0f} ms of script, Redis CPU {lapse['redis_cpu_s']:.2f} "
          f"s, server CPU {lapse['server_cpu_s']:.2f} s); left in flight: "
          f"{lapse['left_in_flight']}.", ""]
    return o
