"""bench section `client`: restmq.client from one process against one server.

* worker: a Worker with concurrency=8 and a no-op `work` drains a queue filled beforehand;
  messages/s from claim to ack (target: at least 2,000).
* add: the blocking Client's `add` (an idempotency key per add, a kept-alive connection)
  against a raw http.client loop sending the same POST /q/<q> on one connection; the
  client's time per add over the raw loop's (target: at most 20 % more).
Rounds alternate which of the two adds goes first; the report gives the median round."""
from __future__ import annotations

import http.client
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis_private
from common import (REPO, ServerProcess, checkout_env, free_ports, log_problems, start_all,
                    stop_all, venv_bin)

sys.path.insert(0, str(REPO))
from restmq.client import Client, Worker  # noqa: E402

WORKER_MESSAGES = 20_000
ADDS = 3_000


def worker_rate(url: str, count: int) -> float:
    client = Client(url)
    for i in range(0, count, 100):
        client.add_batch("bench.work", [str(n) for n in range(i, min(count, i + 100))])
    done = [0]

    def work(message):
        done[0] += 1
        if done[0] >= count:
            worker.stop()

    worker = Worker(client, "bench.work", concurrency=8, wait=1, work=work)
    worker.handle_signals = False
    started = time.perf_counter()
    worker.run()
    return worker.processed / (time.perf_counter() - started)


def raw_adds(port: int, count: int, keyed: bool = True) -> float:
    """The same request as Client.add's: the form body and, when keyed, an
    Idempotency-Key (which costs the server a fingerprint and a record)."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    started = time.perf_counter()
    for _ in range(count):
        if keyed:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        conn.request("POST", "/q/bench.raw", b"value=x", headers)
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 200
    conn.close()
    return (time.perf_counter() - started) / count


def client_adds(url: str, count: int, keyed: bool = True) -> float:
    client = Client(url)
    client.server_protocol()
    key = "auto" if keyed else None
    started = time.perf_counter()
    for _ in range(count):
        client.add("bench.client", "x", idempotency_key=key)
    client.close()
    return (time.perf_counter() - started) / count


def measure(redis_bin: str, rounds: int = 3, quick: bool = False) -> dict:
    count, adds = (2_000, 500) if quick else (WORKER_MESSAGES, ADDS)
    out: dict = {"settings": {"rounds": rounds, "worker_messages": count, "adds": adds},
                 "worker": [], "raw_add_ms": [], "client_add_ms": [], "raw_plain_ms": [],
                 "client_plain_ms": [], "problems": []}
    with tempfile.TemporaryDirectory(prefix="restmq-client-") as tmp_name:
        tmp = Path(tmp_name)
        redis_port, port = free_ports(2)
        redis = redis_private.PrivateRedis(redis_bin, redis_port, tmp)
        server = ServerProcess("client-server", [
            venv_bin("twistd"), "-n", "--pidfile=", "restmq", "--port", str(port),
            "--redis-port", str(redis_port), "--access-log", "off"],
            f"http://127.0.0.1:{port}/stats/", tmp / "server.log", env=checkout_env())
        url = f"http://127.0.0.1:{port}"
        redis.start()
        try:
            start_all([server])
            for rnd in range(1, rounds + 1):
                print(f"  client round {rnd}/{rounds}", flush=True)
                out["worker"].append(worker_rate(url, count))
                pairs = [("raw_add_ms", lambda: raw_adds(port, adds)),
                         ("client_add_ms", lambda: client_adds(url, adds)),
                         ("raw_plain_ms", lambda: raw_adds(port, adds, keyed=False)),
                         ("client_plain_ms", lambda: client_adds(url, adds, keyed=False))]
                for key, run in (pairs if rnd % 2 else pairs[::-1]):
                    out[key].append(run() * 1000)
        finally:
            try:
                stop_all([server])
            finally:
                redis.stop()
            out["problems"] += [line[:300] for line in log_problems(server.logfile)
                                if "without AOF" not in line][:5]
    return summarise(out)


def summarise(out: dict) -> dict:
    if out["worker"]:
        out["worker_median"] = statistics.median(out["worker"])
        raw = statistics.median(out["raw_add_ms"])
        ours = statistics.median(out["client_add_ms"])
        out["add_overhead"] = ours / raw - 1
        out["plain_overhead"] = (statistics.median(out["client_plain_ms"])
                                 / statistics.median(out["raw_plain_ms"]) - 1)
    return out


def render(sec: dict) -> list[str]:
    if "worker_median" not in sec:
        return []
    s = sec["settings"]
    return [
        "## Client library", "",
        f"One process, one server, {s['rounds']} rounds (median shown).", "",
        "| measure | figure | target |", "|---|---|---|",
        f"| Worker, concurrency 8, no-op work ({s['worker_messages']} messages) | "
        f"{sec['worker_median']:,.0f} msg/s | ≥ 2,000 msg/s |",
        f"| Client.add vs raw http.client POST ({s['adds']} adds) | "
        f"{statistics.median(sec['client_add_ms']):.3f} vs "
        f"{statistics.median(sec['raw_add_ms']):.3f} ms: "
        f"{sec['add_overhead'] * 100:+.0f} % | ≤ +20 % |",
        f"| the same without idempotency keys | "
        f"{statistics.median(sec['client_plain_ms']):.3f} vs "
        f"{statistics.median(sec['raw_plain_ms']):.3f} ms: "
        f"{sec['plain_overhead'] * 100:+.0f} % | |", "",
        "Both loops send the same request: the raw one adds the UUID4 key the client makes "
        "up, whose cost on the server (a fingerprint and a record per add) is no client "
        "overhead.", ""]


if __name__ == "__main__":
    import json
    import shutil
    print(json.dumps(measure(shutil.which("redis-server"), rounds=int(sys.argv[1])
                             if len(sys.argv) > 1 else 3), indent=1))
