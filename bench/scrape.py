"""What `GET /metrics` costs with 10,000 queues: its latency, the Redis commands one scrape
sends, and what a scrape every second takes from the add throughput.

1. latency: 10,000 queues (one message each) registered straight in Redis; `GET /metrics`
   on one keep-alive connection, one at a time, from sending the request to the end of the
   body; the p50 of the scrapes (target < 1 s).
2. commands: Redis's MONITOR during one scrape (after a first one that loaded the script).
   The scrape's own commands are the listing (`SMEMBERS QUEUESET`) and the runs of the script
   that reads the queues (recognised by their keys; 500 queues a run, all sent in one
   pipeline: one connection, nothing of it in between); a command naming one of the queues
   outside a script would be a per-queue round trip (target: none, one round trip for the
   queues). Commands of the tick and of the cached persistence read that fall in the same
   window are counted apart.
3. add under scrapes: wrk `POST /q/<q>` at 50 connections, with and without a client that
   sends `GET /metrics` every second for the whole run (the 10,000 queues still there);
   ratio = req/s with ÷ req/s without, within a round, median of the rounds.

Its own Redis and one `twistd restmq --access-log off` (without --counters, the default).
`python bench/scrape.py [--quick]` prints the figures; bench/run.py runs it as `metrics`.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpbench
import redis_private
import wrk
from common import (BENCH_DIR, ServerProcess, checkout_env, free_ports, log_problems,
                    start_all, stop_all, venv_bin)
from live import BenchError, BlockingConn, percentile

# What every server logs at start on the benchmark's Redis, which persists nothing.
EXPECTED_LOG = ("without AOF", "health warning: persistence:none")
QUEUES = 10_000
SCRAPES = 9            # sequential scrapes for the latency (3 with --quick)
INTERVAL = 1.0         # seconds between two scrapes during the add runs
ADD_Q = "scrapeadd"
LATENCY_S = 1.0        # target: p50 under a second
# Registers queues mq00000 ... with one message each, as an add would leave them.
_QUEUES_LUA = """
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  local q = string.format('mq%05d', i)
  redis.call('SADD', 'QUEUESET', q)
  redis.call('SET', 'queuestat::' .. q, '1')
  local k = q .. ':' .. redis.call('INCR', q .. ':UUID')
  redis.call('SET', k, 'hello')
  redis.call('LPUSH', q .. ':queue', k)
end
return redis.call('SCARD', 'QUEUESET')
"""


@dataclasses.dataclass
class Servers:
    redis: redis_private.PrivateRedis
    restmq: ServerProcess
    ports: dict[str, int]


def make_servers(tmp: Path, redis_bin: str) -> Servers:
    ports = dict(zip(("redis", "restmq"), free_ports(2)))
    server = ServerProcess("metrics-restmq", [
        venv_bin("twistd"), "-n", "--pidfile=", "restmq", "--port", str(ports["restmq"]),
        "--redis-port", str(ports["redis"]), "--access-log", "off"],
        f"http://127.0.0.1:{ports['restmq']}/stats/", tmp / "restmq.log", env=checkout_env())
    return Servers(redis_private.PrivateRedis(redis_bin, ports["redis"], tmp), server, ports)


def make_queues(rc, count: int) -> None:
    for start in range(0, count, 2_000):
        rc.command("EVAL", _QUEUES_LUA, 0, start, min(count, start + 2_000) - 1)


def scrape(conn: BlockingConn) -> tuple[float, int]:
    """Seconds from sending `GET /metrics` to the end of its body, and the body's size."""
    t0 = time.perf_counter()
    conn.sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, body = conn.read_response()
    t1 = time.perf_counter()
    if status != 200 or b"restmq_redis_up" not in body:
        raise BenchError(f"GET /metrics: {status} {body[:200]!r}")
    return t1 - t0, len(body)


def measure_latency(port: int, count: int) -> dict:
    conn = BlockingConn(port)
    conn.sock.settimeout(30)
    try:
        scrape(conn)  # not timed: loads the script, warms the code
        samples = [scrape(conn) for _ in range(count)]
    finally:
        conn.close()
    seconds = [s for s, _ in samples]
    return {"seconds": seconds, "bytes": samples[-1][1],
            "p50": statistics.median(seconds), "max": max(seconds)}


# --------------------------------------------------------------------------- MONITOR

def monitor_scrape(redis_port: int, port: int) -> dict:
    """The commands Redis saw during one scrape, sorted into the scrape's own and others."""
    mon = socket.create_connection(("127.0.0.1", redis_port), timeout=30)
    lines: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        buf = bytearray()
        mon.settimeout(0.2)
        while not stop.is_set():
            try:
                data = mon.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                break
            buf += data
            *done, rest = bytes(buf).split(b"\r\n")
            lines.extend(done)
            buf = bytearray(rest)

    conn = BlockingConn(port)
    conn.sock.settimeout(30)
    scrape(conn)  # not watched: the first scrape also loads the script (EVALSHA, then EVAL)
    mon.sendall(b"MONITOR\r\n")
    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    try:
        scrape(conn)
    finally:
        conn.close()
    time.sleep(0.3)
    stop.set()
    reader.join()
    mon.close()
    return classify(lines)


def classify(lines: list[bytes]) -> dict:
    """`queue_script`: runs of the script that reads the queues (it names them in its keys),
    `script_clients`: the connections they came on, `interleaved`: other commands of those
    connections between the first run and the last (one connection and none between: the
    runs came in one pipeline, one round trip)."""
    out = {"listing": 0, "queue_script": 0, "per_queue": 0, "inside_scripts": 0,
           "other": {}}
    seen: list[tuple[bytes, bool]] = []  # (connection, a queue script?) outside scripts
    for line in lines:
        if not line.startswith(b"+") or line == b"+OK":
            continue
        at = line.find(b"] ")
        if at < 0:
            continue
        client, args = line[:at], line[at + 2:]
        name = args.split(b" ", 1)[0].strip(b'"').lower().decode("latin-1")
        if b" lua]" in client or client.endswith(b" lua"):
            out["inside_scripts"] += 1
            continue
        script = name in ("evalsha", "eval") and b'"mq0' in args
        seen.append((client.rsplit(b" ", 1)[-1], script))
        if name == "smembers" and b'"QUEUESET"' in args:
            out["listing"] += 1
        elif script:
            out["queue_script"] += 1
        elif b'"mq0' in args:
            out["per_queue"] += 1
            out.setdefault("per_queue_seen", []).append(args[:200].decode("latin-1"))
        else:
            out["other"][name] = out["other"].get(name, 0) + 1
    runs = [i for i, (_, script) in enumerate(seen) if script]
    clients = {seen[i][0] for i in runs}
    out["script_clients"] = len(clients)
    out["interleaved"] = sum(1 for addr, script in seen[runs[0]:runs[-1] + 1]
                             if addr in clients and not script) if runs else 0
    return out


# --------------------------------------------------------------------------- add + scrapes

class Scraper:
    """prepare/remaining hooks of the `add.scraped` case: a thread scrapes every INTERVAL
    seconds while wrk runs; its latencies are kept per run."""

    def __init__(self, port: int, rc, records: list[dict]) -> None:
        self.port, self.rc, self.records = port, rc, records
        self.thread: threading.Thread | None = None

    def prepare(self, _expected: float) -> None:
        self.stop, self.seconds = threading.Event(), []
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        conn = BlockingConn(self.port)
        conn.sock.settimeout(30)
        try:
            next_at = time.monotonic()
            while not self.stop.is_set():
                self.seconds.append(scrape(conn)[0])
                next_at += INTERVAL
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            conn.close()

    def remaining(self) -> int:
        self.stop.set()
        self.thread.join()
        self.records.append({"scrapes": len(self.seconds), "seconds": self.seconds})
        return redis_private.queue_length(self.rc, ADD_Q)


def wrk_cases(srv: Servers, tmp: Path, rc, records: list[dict]) -> list[httpbench.Case]:
    add_lua = wrk.write_post_script(tmp / "add.lua", "value=hello",
                                    "application/x-www-form-urlencoded")
    url = f"http://127.0.0.1:{srv.ports['restmq']}/q/{ADD_Q}"
    cpu = {"server": [srv.restmq.pid], "redis": [srv.redis.pid]}
    scraper = Scraper(srv.ports["restmq"], rc, records)
    return [httpbench.Case("add", "add `POST /q/<q>`", url, add_lua, None, cpu),
            httpbench.Case("add.scraped", "add, `GET /metrics` every second", url, add_lua,
                           "add", cpu, scraper.prepare, scraper.remaining)]


# --------------------------------------------------------------------------- the section

def measure(redis_bin: str, wrk_bin: str, rounds: int = 3, duration: float = 3.0,
            pause: float = 0.3, quick: bool = False) -> dict:
    queues = 1_000 if quick else QUEUES
    out: dict = {"settings": {"rounds": rounds, "duration": duration, "queues": queues,
                              "scrapes": 3 if quick else SCRAPES, "interval": INTERVAL},
                 "latency": [], "monitor": None, "runs": [], "scraped": [], "problems": []}
    settings = httpbench.Settings(wrk_bin, 1, [50], {50: duration}, pause)
    with tempfile.TemporaryDirectory(prefix="restmq-metrics-") as tmp_name:
        tmp = Path(tmp_name)
        srv = make_servers(tmp, redis_bin)
        srv.redis.start()
        try:
            start_all([srv.restmq])
            with redis_private.RespClient(srv.redis.port) as rc:
                make_queues(rc, queues)
                port = srv.ports["restmq"]
                out["monitor"] = monitor_scrape(srv.redis.port, port)
                records: list[dict] = []
                cases = wrk_cases(srv, tmp, rc, records)
                out["cases"] = [{"key": c.key, "label": c.label, "baseline": c.baseline}
                                for c in cases]
                best: dict[str, float] = {}
                for rnd in range(1, rounds + 1):
                    print(f"  metrics round {rnd}/{rounds}", flush=True)
                    lat = measure_latency(port, out["settings"]["scrapes"])
                    lat["round"] = rnd
                    out["latency"].append(lat)
                    print(f"  metrics round {rnd} scrape of {queues:,} queues: p50 "
                          f"{lat['p50'] * 1000:.0f} ms, max {lat['max'] * 1000:.0f} ms, "
                          f"{lat['bytes']:,} bytes", flush=True)
                    order = cases if rnd % 2 else cases[::-1]
                    for run in httpbench.run_section("metrics", order, settings, best):
                        run.round = rnd
                        out["runs"].append(dataclasses.asdict(run))
                    for rec in records:
                        rec.setdefault("round", rnd)
                out["scraped"] = records
        finally:
            try:
                stop_all([srv.restmq])
            finally:
                srv.redis.stop()
            out["problems"] += [f"{srv.restmq.name} logged: {line[:300]}"
                                for line in log_problems(srv.restmq.logfile)
                                if not any(e in line for e in EXPECTED_LOG)][:5]
    return out


# --------------------------------------------------------------------------- analysis

def summary(sec: dict) -> dict | None:
    if not sec.get("latency"):
        return None
    runs = {(r["round"], r["case"]): r["result"]["requests_per_sec"] for r in sec["runs"]}
    rounds = sorted({n for n, case in runs if case == "add.scraped" and (n, "add") in runs})
    during = [s for rec in sec["scraped"] for s in rec["seconds"]]
    return {"p50": statistics.median(lat["p50"] for lat in sec["latency"]),
            "max": max(lat["max"] for lat in sec["latency"]),
            "bytes": sec["latency"][-1]["bytes"],
            "ratio": statistics.median(runs[(n, "add.scraped")] / runs[(n, "add")]
                                       for n in rounds) if rounds else None,
            "add_rps": statistics.median(runs[(n, "add")] for n in rounds) if rounds else None,
            "scraped_rps": statistics.median(runs[(n, "add.scraped")] for n in rounds)
            if rounds else None,
            "during_p50": percentile(during, 50) if during else None,
            "scrapes_during": len(during)}


def analyse(a) -> None:
    """Adds this section's figures, targets and problems to report.Analysis `a`."""
    from report import Target
    sec = a.sec.get("metrics")
    s = summary(sec) if sec else None
    if s is None:
        return
    a.problems += httpbench.problems("metrics", [
        httpbench.Run(r["round"], r["case"], r["connections"], wrk.WrkResult(**r["result"]),
                      r["cpu"], r.get("remaining")) for r in sec["runs"]])
    a.problems += sec.get("problems", [])
    n = sec["settings"]["queues"]
    fig = a.fig.add
    fig("metrics.scrape.p50_ms", s["p50"] * 1000, f"ms, /metrics with {n:,} queues", "lower")
    a.targets.append(Target(f"`GET /metrics` with {n:,} queues: p50 of "
                            f"{sec['settings']['scrapes']} scrapes (median of the rounds)",
                            f"{s['p50'] * 1000:,.0f} ms (max {s['max'] * 1000:,.0f} ms, "
                            f"{s['bytes'] / 1e6:.1f} MB)", f"< {LATENCY_S:g} s",
                            s["p50"] < LATENCY_S, "", figure="metrics.scrape.p50_ms",
                            limit="runs of the script over 500 queues (7 keys each) in one "
                                  "pipeline; the server renders only what changed; see section 8"))
    m = sec["monitor"]
    one_trip = _one_pipeline(m)
    fig("metrics.scrape.queue_scripts", m["queue_script"], "script runs per scrape", "lower")
    fig("metrics.scrape.per_queue_commands", m["per_queue"], "commands per scrape", "lower")
    a.targets.append(Target(
        "`GET /metrics`: Redis round trips reading the queues (MONITOR)",
        f"{'1 pipeline of ' if one_trip else ''}{m['queue_script']} script run(s) + "
        f"{m['per_queue']} per-queue commands (and the listing: {m['listing']} SMEMBERS)",
        "1 round trip, no per-queue command", one_trip and m["per_queue"] == 0, "",
        figure="metrics.scrape.queue_scripts"))
    if s["ratio"] is not None:
        fig("metrics.add.scraped_ratio", s["ratio"], "add req/s with ÷ without scrapes",
            "higher", "noisy")
        a.info.append(Target(
            f"add, 50 connections, with `GET /metrics` ({n:,} queues) every second ÷ without",
            f"{s['ratio']:.3f} ({s['scraped_rps']:,.0f} vs {s['add_rps']:,.0f} req/s)", "",
            None, f"scrape p50 under that load {s['during_p50'] * 1000:,.0f} ms"
            if s["during_p50"] else ""))


def _one_pipeline(m: dict) -> bool:
    """The script runs reading the queues came in one pipeline: on one connection with
    nothing else of it between them (older results, one run: `script_clients` absent)."""
    return m["queue_script"] >= 1 and m.get("script_clients", 1) == 1 and \
        m.get("interleaved", 0) == 0


def render(sec: dict) -> list[str]:
    from report import raw_table
    st, s, m = sec["settings"], summary(sec), sec["monitor"]
    o = ["## 8. `/metrics` with 10,000 queues", "",
         f"bench/scrape.py, {st['rounds']} round(s), its own Redis and one `twistd restmq "
         f"--access-log off` (no `--counters`). {st['queues']:,} queues registered straight "
         "in Redis with one message each. Latency: `GET /metrics` on one keep-alive "
         "connection, from sending the request to the end of the body, "
         f"{st['scrapes']} scrapes a round one after the other, p50 per round (median of the "
         "rounds) and the slowest of all. Add under scrapes: wrk `POST /q/<q>` at 50 "
         f"connections for {st['duration']:g} s, with and without a client scraping every "
         f"{st['interval']:g} s during the whole run; ratio within a round, median of the "
         "rounds.", ""]
    if s:
        rows = ", ".join(f"{lat['p50'] * 1000:,.0f}" for lat in sec["latency"])
        o += ["| | p50 ms | max ms | each round's p50 ms | bytes |",
              "|---|---:|---:|---|---:|",
              f"| `GET /metrics`, {st['queues']:,} queues | {s['p50'] * 1000:,.0f} | "
              f"{s['max'] * 1000:,.0f} | {rows} | {s['bytes']:,} |", ""]
    other = ", ".join(f"{k} {v}" for k, v in sorted(m["other"].items())) or "none"
    o += [f"Redis commands during one scrape (MONITOR): the listing `SMEMBERS QUEUESET` "
          f"×{m['listing']}, the queue-reading script ×{m['queue_script']} "
          f"({'one pipeline: ' if _one_pipeline(m) else ''}on {m.get('script_clients', 1)} "
          f"connection(s), {m.get('interleaved', 0)} other command(s) of it between them; its "
          f"{m['inside_scripts']:,} calls inside the script are not round trips), commands "
          f"naming a queue outside a script: {m['per_queue']}; others in the same window "
          f"(the tick, the cached persistence read): {other}.", ""]
    if s and s["ratio"] is not None:
        o += [f"Add at 50 connections: {s['add_rps']:,.0f} req/s without scrapes, "
              f"{s['scraped_rps']:,.0f} with one every second (ratio **{s['ratio']:.3f}**, "
              f"{s['scrapes_during']} scrapes, p50 {s['during_p50'] * 1000:,.0f} ms under that "
              "load). A scrape renders in steps of at most 5 ms on the reactor's thread and "
              "renders again only the lines whose value changed since the last scrape.", ""]
    o += ["| section | round | case | conns | req/s | p50 ms | p99 ms | requests | non-2xx | "
          "socket errors | CPU server / Redis / wrk / other / idle | left in queue |",
          "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    return o + raw_table("metrics", sec) + [""]


if __name__ == "__main__":
    import argparse
    import shutil
    p = argparse.ArgumentParser(description="bench/scrape.py: /metrics with 10,000 queues")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--quick", action="store_true", help="1 round of 1 s, 1,000 queues")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 1.0
    result = measure(shutil.which("redis-server"), wrk.find_wrk(), args.rounds, args.duration,
                     quick=args.quick)
    (BENCH_DIR / "out").mkdir(exist_ok=True)
    (BENCH_DIR / "out" / "metrics.json").write_text(json.dumps(result))
    print("\n".join(render(result)))
