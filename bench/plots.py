"""The report's figures (matplotlib, PNG): each RestMQ bar beside its baseline of the same run.

draw() returns the file names it wrote, relative to the report's directory.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

import live as livemod  # noqa: E402

BASE = "#9e9e9e"    # baselines
OURS = "#1f77b4"    # RestMQ, access log off
LOG_ON = "#ff7f0e"  # RestMQ, access log on
PEER = "#2ca02c"    # RabbitMQ
TARGET = "#d62728"


def _label_bars(ax, bars, texts, fontsize=7) -> None:
    for bar, text in zip(bars, texts):
        if text:
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=fontsize, xytext=(0, 2),
                        textcoords="offset points")


def _save(fig, out_dir: Path, stem: str, name: str, written: list[str]) -> None:
    fig.tight_layout()
    path = out_dir / f"{stem}-{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path.name)


def draw(a, out_dir: Path, stem: str = "report") -> list[str]:
    """a: report.Analysis. Files are named <stem>-<figure>.png beside the report."""
    written: list[str] = []
    if a.http:
        _http(a, out_dir, stem, written)
        _latency(a, out_dir, stem, written)
    if a.reuse:
        _scaling(a, out_dir, stem, written)
    if getattr(a, "latency", None):
        _live(a, out_dir, stem, written)
    if a.sec.get("leases", {}).get("tick"):
        _leases(a, out_dir, stem, written)
    if a.rabbit or a.collectd or getattr(a, "syslog_rates", None):
        _peers(a, out_dir, stem, written)
    if a.sec.get("parser", {}).get("cases"):
        import parser as layer
        written.append(layer.plot(a.sec["parser"], out_dir, stem))
    if a.sec.get("flow", {}).get("runs"):
        import flow
        written.append(flow.plot(a.sec["flow"], out_dir, stem))
    if a.sec.get("push", {}).get("dispatch"):
        import push
        written.append(push.plot(a.sec["push"], out_dir, stem))
    return written


OPS = [("add", "add"), ("get", "hard get"), ("jadd", "JSON add"), ("jtake", "JSON take"),
       ("xmlrpc", "XML-RPC set")]


def _http(a, out_dir, stem, written) -> None:
    from report import C50_RATIO
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, conns in zip(axes, (1, 50)):
        x, labels = 0.0, []
        for op, label in OPS:
            base_key = "bare.get" if op == "get" else "bare.post"
            base = a.http.get((base_key, conns))
            series = [(f"{op}.off", OURS, "log off"), (f"{op}.on", LOG_ON, "log on")]
            series = [(k, c, n) for k, c, n in series if (k, conns) in a.http]
            if base is None or not series:
                continue
            width = 0.8 / (1 + len(series))
            b = ax.bar(x, base.rps, width, color=BASE,
                       label="bare cyclone handler" if x == 0 else None)
            for i, (key, color, name) in enumerate(series, start=1):
                s = a.http[(key, conns)]
                bars = ax.bar(x + i * width, s.rps, width, color=color,
                              label=f"RestMQ, access {name}" if x == 0 else None)
                _label_bars(ax, bars, [f"{s.rps_ratio:.2f}"])
                goal = C50_RATIO.get(key) if conns == 50 else None
                if goal:
                    ax.hlines(goal * base.rps, x + i * width - width / 2,
                              x + i * width + width / 2, colors=TARGET, linewidth=2,
                              label="target" if key == "add.off" else None)
            _label_bars(ax, b, [""])
            labels.append((x + width * len(series) / 2, label))
            x += 1.0
        ax.set_xticks([p for p, _ in labels], [t for _, t in labels])
        ax.set_ylabel("requests/s (median)")
        ax.set_title(f"{conns} connection{'s' if conns > 1 else ''}: req/s, ratio to bare on "
                     "the bar")
        ax.legend(fontsize=7, loc="upper right")
    _save(fig, out_dir, stem, "http", written)


def _latency(a, out_dir, stem, written) -> None:
    from report import C1_P50_MS, C1_P99_MS, LIVE_P50_MS
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    keys = [("bare.post", "bare POST"), ("bare.get", "bare GET"), ("add.off", "add"),
            ("add.on", "add log on"), ("get.off", "hard get"), ("get.on", "get log on"),
            ("jadd.off", "JSON add"), ("jtake.off", "JSON take"), ("xmlrpc.off", "XML-RPC")]
    keys = [(k, n) for k, n in keys if (k, 1) in a.http]
    xs = range(len(keys))
    p50 = [a.http[(k, 1)].p50 for k, _ in keys]
    p99 = [a.http[(k, 1)].p99 for k, _ in keys]
    colors = [BASE if k.startswith("bare") else (LOG_ON if k.endswith(".on") else OURS)
              for k, _ in keys]
    ax.bar([x - 0.2 for x in xs], p50, 0.4, color=colors, label="p50")
    ax.bar([x + 0.2 for x in xs], p99, 0.4, color=colors, alpha=0.45, hatch="//",
           label="p99 (hatched)")
    ax.axhline(C1_P50_MS, color=TARGET, linestyle="--", linewidth=1, label="p50 target")
    ax.axhline(C1_P99_MS, color=TARGET, linestyle=":", linewidth=1, label="p99 target")
    ax.set_xticks(list(xs), [n for _, n in keys], rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")  # a p99 can be 100x its p50 on a shared machine
    ax.set_ylabel("ms (log scale)")
    ax.set_title("1 connection: p50 and p99 latency (grey: bare baselines)")
    ax.legend(fontsize=7)
    ax = axes[1]
    lat = getattr(a, "latency", None)
    if lat is not None:
        chans = [("bare", "bare POST\nround trip"), ("comet", "comet"), ("ws", "WebSocket"),
                 ("sse", "SSE")]
        xs = range(len(chans))
        ax.bar([x - 0.2 for x in xs], [lat.pct(c, 50) for c, _ in chans], 0.4,
               color=[BASE, OURS, OURS, OURS], label="p50")
        ax.bar([x + 0.2 for x in xs], [lat.pct(c, 99) for c, _ in chans], 0.4,
               color=[BASE, OURS, OURS, OURS], alpha=0.45, hatch="//", label="p99 (hatched)")
        ax.axhline(LIVE_P50_MS, color=TARGET, linestyle="--", linewidth=1, label="p50 target")
        ax.set_xticks(list(xs), [n for _, n in chans])
        ax.set_ylabel("ms")
        ax.set_title("add → live delivery latency vs a bare round trip")
        ax.legend(fontsize=7)
    else:
        ax.axis("off")
    _save(fig, out_dir, stem, "latency", written)


def _scaling(a, out_dir, stem, written) -> None:
    from report import REUSE_TARGET, other_cpu
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    for i, op in enumerate(("add", "get")):
        one, two = a.reuse.get((f"{op}.1p", 50)), a.reuse.get((f"{op}.2p", 50))
        if not one or not two:
            continue
        ax.bar(i - 0.2, one.rps, 0.4, color=BASE, label="1 process" if i == 0 else None)
        bars = ax.bar(i + 0.2, two.rps, 0.4, color=OURS, label="2 processes" if i == 0 else None)
        _label_bars(ax, bars, [f"{two.rps_ratio:.2f}x"])
        if op == "add":
            ax.hlines(REUSE_TARGET * one.rps, i + 0.0, i + 0.4, colors=TARGET, linewidth=2,
                      label=f"target {REUSE_TARGET:g}x")
    ax.set_xticks([0, 1], ["add", "hard get"])
    ax.set_ylabel("requests/s (median), 50 connections")
    ax.set_title("--reuse-port: 2 processes vs 1")
    ax.legend(fontsize=7)
    ax = axes[1]
    cases = [("add.1p", "add 1p"), ("add.2p", "add 2p"), ("get.1p", "get 1p"),
             ("get.2p", "get 2p")]
    cases = [(k, n) for k, n in cases if (k, 50) in a.reuse]
    parts = [("server", "RestMQ process(es)", OURS), ("redis", "Redis", "#8c564b"),
             ("wrk", "wrk", "#7f7f7f"), ("other", "other work", "#bcbd22"),
             ("idle", "idle", "#dddddd")]
    bottom = [0.0] * len(cases)
    for part, name, color in parts:
        vals = [(other_cpu(a.reuse[(k, 50)].cpu) if part == "other"
                 else a.reuse[(k, 50)].cpu.get(part, 0.0)) for k, _ in cases]
        ax.bar(range(len(cases)), vals, 0.6, bottom=bottom, color=color, label=name)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(cases)), [n for _, n in cases])
    ax.set_ylabel("CPU cores (median of the runs)")
    ax.set_title("where the 2 cores went")
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, out_dir, stem, "scaling", written)


def _live(a, out_dir, stem, written) -> None:
    from report import DRAIN_PER_S, FAN_MS, KB_PER_CONSUMER
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    fans = a.fans
    ax = axes[0]
    for i, f in enumerate(fans):
        ax.bar(i - 0.2, f["bms"], 0.4, color=BASE, label="bare streams" if i == 0 else None)
        bars = ax.bar(i + 0.2, f["ms"], 0.4, color=OURS, label="RestMQ comet" if i == 0 else None)
        _label_bars(ax, bars, [f"{f['ms']:.0f} ms"])
        goal = FAN_MS.get(f["n"])
        if goal:
            ax.hlines(goal, i, i + 0.4, colors=TARGET, linewidth=2,
                      label="target" if i == 0 else None)
    ax.set_xticks(range(len(fans)), [f"{f['n']:,}" for f in fans])
    ax.set_xlabel("idle consumers")
    ax.set_ylabel("ms until every consumer has the line")
    ax.set_title("fan-out (median)")
    ax.legend(fontsize=7)
    ax = axes[1]
    for i, f in enumerate(fans):
        ax.bar(i - 0.2, f["bkb"], 0.4, color=BASE, label="bare streams" if i == 0 else None)
        ax.bar(i + 0.2, f["kb"], 0.4, color=OURS, label="RestMQ comet" if i == 0 else None)
    ax.axhline(KB_PER_CONSUMER, color=TARGET, linestyle="--", linewidth=1, label="target")
    ax.set_xticks(range(len(fans)), [f"{f['n']:,}" for f in fans])
    ax.set_xlabel("idle consumers")
    ax.set_ylabel("KiB of server RSS per consumer")
    ax.set_title("memory per idle consumer")
    ax.legend(fontsize=7)
    ax = axes[2]
    if a.drains:
        med = livemod.drain_medians(a.drains)
        sides = [s for s in ("bare", "broadcast", "roundrobin") if s in med]
        bars = ax.bar(range(len(sides)), [med[s] for s in sides],
                      color=[BASE if s == "bare" else OURS for s in sides])
        _label_bars(ax, bars, [f"{med[s]:,.0f}" for s in sides])
        ax.axhline(DRAIN_PER_S, color=TARGET, linestyle="--", linewidth=1, label="target")
        ax.set_xticks(range(len(sides)), ["bare stream" if s == "bare" else s for s in sides])
        ax.set_ylabel("messages/s (median)")
        ax.set_title("backlog drain to one comet consumer")
        ax.legend(fontsize=7)
    _save(fig, out_dir, stem, "live", written)


def _peers(a, out_dir, stem, written) -> None:
    panels = []
    if a.rabbit:
        panels.append("rabbit")
    if getattr(a, "syslog_rates", None):
        panels.append("syslog")
    if a.collectd:
        panels.append("collectd")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "rabbit":
            pairs = [("rabbit.publish", "add", "publish / add"), ("rabbit.get", "get", "get")]
            for i, (peer, ours, label) in enumerate(pairs):
                p, s = a.rabbit.get((peer, 50)), a.rabbit.get((ours, 50))
                if not p or not s:
                    continue
                ax.bar(i - 0.2, p.rps, 0.4, color=PEER,
                       label="RabbitMQ HTTP API" if i == 0 else None)
                bars = ax.bar(i + 0.2, s.rps, 0.4, color=OURS,
                              label="RestMQ" if i == 0 else None)
                _label_bars(ax, bars, [f"{s.rps_ratio:.1f}x"])
            ax.set_xticks([0, 1], ["publish / add", "get / hard get"])
            ax.set_ylabel("requests/s (median), 50 connections")
            ax.set_title("vs RabbitMQ's management API")
            ax.legend(fontsize=7)
        elif panel == "syslog":
            r = a.syslog_rates
            bars = ax.bar([0, 1], [r["sink"], r["restmq"]], color=[BASE, OURS])
            _label_bars(ax, bars, [f"{r['sink']:,.0f}", f"{r['restmq']:,.0f}"])
            ax.set_yscale("log")
            ax.set_xticks([0, 1], ["bare line sink", "syslogd"])
            ax.set_ylabel("lines/s (median, log scale)")
            ax.set_title("syslog ingest, 10 TCP senders")
        else:
            b, s = a.collectd.get(("bare.post", 50)), a.collectd.get(("data", 50))
            if b and s:
                bars = ax.bar([0, 1], [b.rps, s.rps], color=[BASE, OURS])
                _label_bars(ax, bars, ["", f"{s.rps_ratio:.2f}"])
            ax.set_xticks([0, 1], ["bare POST,\nsame body", "collectd\n/collectd/data"])
            ax.set_ylabel("posts/s (median), 50 connections")
            ax.set_title("collectd write_http posts (10 PUTVAL)")
    _save(fig, out_dir, stem, "peers", written)


def _leases(a, out_dir, stem, written) -> None:
    import leases as leasemod
    sec = a.sec["leases"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    ax = axes[0]
    cycle = a.leases.get(("cycle", 50)) if a.leases else None
    if cycle is not None:
        ax.bar(0, cycle.base_rps, 0.6, color=BASE, label="bare POST")
        bars = ax.bar(1, cycle.rps, 0.6, color=OURS, label="claim + ack")
        _label_bars(ax, bars, [f"{cycle.rps_ratio:.2f}"])
        ax.hlines(leasemod.CYCLE_RATIO * cycle.base_rps, 0.7, 1.3, colors=TARGET, linewidth=2,
                  label=f"target {leasemod.CYCLE_RATIO:.2f}")
        ax.set_xticks([0, 1], ["bare POST", "claim + ack\n(1 message)"])
        ax.set_ylabel("requests/s (median), 50 connections")
        ax.legend(fontsize=7)
    ax.set_title("claim + ack cycle vs bare POST")
    ax = axes[1]
    runs = sec["batch"]
    xs = range(len(runs))
    ax.bar([x - 0.2 for x in xs], [r["bare_rps"] for r in runs], 0.4, color=BASE,
           label="bare POST req/s")
    bars = ax.bar([x + 0.2 for x in xs], [r["messages_per_s"] for r in runs], 0.4, color=OURS,
                  label="messages/s acked")
    _label_bars(ax, bars, [f"{r['ratio']:.2f}" for r in runs])
    ax.axhline(leasemod.BATCH_PER_S, color=TARGET, linestyle="--", linewidth=1,
               label="target (messages/s)")
    ax.set_xticks(list(xs), [f"round {r['round']}" for r in runs])
    ax.set_title("claim 100 + ack 100, one process")
    ax.legend(fontsize=7)
    ax = axes[2]
    for r in sec["redelivery"]:
        samples = sorted(r["samples"])
        if samples:
            ax.plot(samples, [(i + 1) / len(samples) for i in range(len(samples))],
                    label=f"round {r['round']}")
    ax.axvline(leasemod.REDELIVERY_P99_MS, color=TARGET, linestyle="--", linewidth=1,
               label="p99 target")
    ax.axhline(0.99, color=BASE, linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("ms from the lease deadline to the redelivery (log)")
    ax.set_ylabel("share of messages")
    ax.set_title("lease-expiry redelivery")
    ax.legend(fontsize=7)
    ax = axes[3]
    rates = leasemod.tick_rates(sec)
    names = [n for n in ("empty", "loaded") if n in rates]
    t = sec["tick"]["settings"]
    labels = {"empty": "no lease", "loaded": f"{t['idle_queues']:,} idle queues\n"
                                             f"{t['inflight_queues'] * t['per_queue']:,} in flight"}
    bars = ax.bar(range(len(names)), [rates[n]["redis_cpu_ms"] for n in names], 0.6,
                  color=[BASE, OURS][:len(names)])
    _label_bars(ax, bars, [f"{rates[n]['redis_cpu_ms']:.2f} ms\n"
                           f"{rates[n]['script_calls']:.1f} scripts" for n in names])
    ax.set_xticks(range(len(names)), [labels[n] for n in names])
    ax.set_ylabel("Redis CPU ms per second")
    ax.set_ylim(0, 1.25 * max([rates[n]["redis_cpu_ms"] for n in names] + [1.0]))
    ticking = t.get("ticking", 1)
    ax.set_title(f"the tick's cost ({ticking} process{'es' if ticking > 1 else ''} ticking)")
    _save(fig, out_dir, stem, "leases", written)
