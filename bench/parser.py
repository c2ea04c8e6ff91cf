"""The HTTP layer's own cost, measured in pairs: server CPU per request of two servers run at
the same time, both pinned to CPU 0 (`taskset -c 0`), each driven by its own wrk on CPU 1, for
the same seconds; the CPU is each server's own (`/proc/<pid>/task/*/schedstat`). Running the
two at once on one core makes both see the same machine: sequential A/B runs of one pair swung
from 0.80 to 1.32 here. A figure is the median of PAIRS pairs of the ratio A ÷ B.

Pairs:
* the bare handler (bench/bare_server.py: answers `ok`, does nothing) on RestMQ's connection
  (httptools) against the same handler on the connection it replaced (the fork of cyclone's
  parser, taken from git at FORK_REVISION), and against stock cyclone's;
* `twistd restmq` against the same server at FORK_REVISION: add and hard get.

`python bench/parser.py` prints the figures; `bench/run.py` runs it as its `parser` section.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis_private
import wrk
from common import REPO, ServerProcess, cpu_seconds, free_ports, start_all, stop_all, venv_bin

FORK_REVISION = "9388593"  # the last revision with the fork of cyclone's HTTP/1.x parser
PAIRS = 5
DURATION = 3.0  # seconds of each wrk run
CONNECTIONS = 10
SERVER_CPU, WRK_CPU = "0", "1"
FORM = "application/x-www-form-urlencoded"
# (key, what, server A, server B, path, method): servers are (program, tree)
CASES = [
    ("bare.fork", "bare handler: our connection ÷ the fork", ("bare", "new"), ("bare", "fork"),
     "/bare", "GET"),
    ("bare.stock", "bare handler: our connection ÷ stock cyclone", ("bare", "new"),
     ("stock", "new"), "/bare", "GET"),
    ("add.fork", "add `POST /q/<q>`: this tree ÷ the fork's", ("restmq", "new"),
     ("restmq", "fork"), "/q/padd", "POST"),
    ("get.fork", "hard get `GET /q/<q>`: this tree ÷ the fork's", ("restmq", "new"),
     ("restmq", "fork"), "/q/pget", "GET"),
]
TARGETS = {"bare.fork": 0.90, "add.fork": 1.00, "get.fork": 1.00}


def fork_tree(into: Path) -> Path | None:
    """FORK_REVISION's files under `into`, or None outside a git checkout that has it."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", FORK_REVISION],
                                 capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def server(name: str, kind: str, tree: Path, port: int, redis_port: int,
           tmp: Path) -> ServerProcess:
    env = dict(os.environ, PYTHONPATH=str(tree))
    pin = ["taskset", "-c", SERVER_CPU]
    if kind == "restmq":
        cmd = pin + [venv_bin("twistd"), "-n", "--pidfile=", "restmq", "--port", str(port),
                     "--redis-port", str(redis_port), "--access-log", "off"]
        ready = f"http://127.0.0.1:{port}/stats/"
    else:
        cmd = pin + [sys.executable, str(REPO / "bench" / "bare_server.py"), "--port", str(port)]
        if kind == "bare":
            cmd.append("--restmq-connection")
        ready = f"http://127.0.0.1:{port}/bare"
    proc = ServerProcess(name, cmd, ready, tmp / f"{name}.log", env=env)
    proc.base = f"http://127.0.0.1:{port}"
    return proc


def run_pair(a: ServerProcess, b: ServerProcess, path: str, script: Path | None,
             wrk_bin: str, duration: float) -> tuple[float, float]:
    """CPU µs per request of a and b, driven at the same time."""
    urls = [a.base + path, b.base + path]
    before = [cpu_seconds(a.pid), cpu_seconds(b.pid)]
    procs = []
    for url in urls:
        cmd = ["taskset", "-c", WRK_CPU, wrk_bin, "-t1", f"-c{CONNECTIONS}", f"-d{duration:g}s",
               "--latency"] + (["-s", str(script)] if script else []) + [url]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [p.communicate(timeout=duration + 60)[0].decode() for p in procs]
    after = [cpu_seconds(a.pid), cpu_seconds(b.pid)]
    per_request = []
    for output, start, end in zip(outputs, before, after):
        result = wrk.parse(output)
        if result.non_2xx or result.socket_errors or not result.requests:
            raise RuntimeError(f"bad wrk run:\n{output}")
        per_request.append((end - start) * 1e6 / result.requests)
    return per_request[0], per_request[1]


def measure(redis_bin: str, wrk_bin: str, pairs: int = PAIRS,
            duration: float = DURATION) -> dict:
    with tempfile.TemporaryDirectory(prefix="restmq-parser-") as tmp_name:
        tmp = Path(tmp_name)
        fork = fork_tree(tmp / "fork")
        trees = {"new": REPO, "fork": fork}
        cases = [c for c in CASES if all(trees[side[1]] is not None for side in c[2:4])]
        redis_port, *ports = free_ports(1 + 2 * len(cases))
        redis = redis_private.PrivateRedis(redis_bin, redis_port, tmp)
        script = wrk.write_post_script(tmp / "post.lua", "value=hello", FORM)
        out: dict = {"pairs": pairs, "duration": duration, "connections": CONNECTIONS,
                     "fork_revision": FORK_REVISION if fork else None, "cases": {}}
        redis.start()
        try:
            with redis_private.RespClient(redis_port) as rc:
                for i, (key, what, side_a, side_b, path, method) in enumerate(cases):
                    a = server(f"{key}-a", side_a[0], trees[side_a[1]], ports[2 * i],
                               redis_port, tmp)
                    b = server(f"{key}-b", side_b[0], trees[side_b[1]], ports[2 * i + 1],
                               redis_port, tmp)
                    start_all([a, b])
                    try:
                        runs = []
                        for _ in range(pairs):
                            if method == "GET" and path.startswith("/q/"):
                                redis_private.top_up(rc, path[3:], 60_000)
                            runs.append(run_pair(a, b, path, script if method == "POST"
                                                 else None, wrk_bin, duration))
                            time.sleep(0.3)
                    finally:
                        stop_all([a, b])
                    ratios = [x / y for x, y in runs]
                    out["cases"][key] = {
                        "what": what, "runs_us": runs, "ratio": statistics.median(ratios),
                        "a_us": statistics.median(r[0] for r in runs),
                        "b_us": statistics.median(r[1] for r in runs),
                        "target": TARGETS.get(key)}
                    print(f"  {what}: {out['cases'][key]['ratio']:.3f}", flush=True)
        finally:
            redis.stop()
    return out


def render(sec: dict) -> list[str]:
    """The report's section: one table."""
    o = ["## HTTP layer: paired, pinned CPU per request", "",
         f"Two servers at once on CPU 0, each driven by its own wrk (`-t1 -c{sec['connections']}`, "
         f"{sec['duration']:g} s) on CPU 1; server CPU per request from schedstat; the ratio "
         f"is the median over {sec['pairs']} pairs (bench/parser.py). The fork is "
         f"restmq at {sec.get('fork_revision') or '(not available)'}.", "",
         "| pair | CPU per request, A / B | ratio A ÷ B | target | verdict |",
         "|---|---|---|---|---|"]
    for case in sec["cases"].values():
        target = case.get("target")
        verdict = "" if target is None else ("**met**" if case["ratio"] <= target
                                             else "**NOT MET**")
        o.append(f"| {case['what']} | {case['a_us']:.0f} / {case['b_us']:.0f} µs | "
                 f"{case['ratio']:.3f} | {'' if target is None else f'≤ {target:.2f}'} | "
                 f"{verdict} |")
    return o + [""]


def plot(sec: dict, out_dir: Path, stem: str) -> str | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cases = list(sec["cases"].values())
    fig, ax = plt.subplots(figsize=(8, 3.2))
    bars = ax.barh([c["what"].replace("`", "") for c in cases], [c["ratio"] for c in cases],
                   color="#4c72b0")
    for bar, case in zip(bars, cases):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2,
                f"{case['ratio']:.3f}", va="center", fontsize=8)
        if case.get("target"):
            ax.plot([case["target"]] * 2, [bar.get_y(), bar.get_y() + bar.get_height()],
                    color="#c44e52", linewidth=2)
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("server CPU per request, A ÷ B (red: target)")
    ax.invert_yaxis()
    fig.tight_layout()
    path = out_dir / f"{stem}-parser.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


if __name__ == "__main__":
    import json
    import shutil
    result = measure(shutil.which("redis-server"), wrk.find_wrk())
    (REPO / "bench" / "out").mkdir(exist_ok=True)
    (REPO / "bench" / "out" / "parser.json").write_text(json.dumps(result))
    print("\n".join(render(result)))
