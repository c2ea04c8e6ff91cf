"""Compare a new benchmark report with the committed baseline: which ratios dropped?

    .venv/bin/python bench/check.py NEW_REPORT [BASELINE]    (BASELINE: bench/baseline.md)

Reads the fenced ```json block of each report (see report.py) and compares the figures of
kind `ratio` (each a ratio to a baseline measured in the same run, so comparable between
runs), prints those that got worse by more than --threshold (default 10 %), and exits 1 if
any did. "Worse" follows each figure's direction: a req/s ratio dropped, a latency ratio
rose. Kind `noisy` (p99 ratios, the syslog sink, the bare drain) swings with other work;
--noisy includes it. --absolute also compares absolute figures (same machine only). On a
shared machine the req/s ratios move with whatever else runs; the `*.cpu_ratio` figures (CPU
per request, baseline ÷ RestMQ) much less: --only '*cpu_ratio' compares just those.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

from report import load_data

BENCH_DIR = Path(__file__).resolve().parent


def goodness(old: float, new: float, better: str) -> float | None:
    """new relative to old, > 1 when better: new/old if higher is better, old/new if lower."""
    if better == "higher":
        return new / old if old else None
    return old / new if new else None


def compare(base: dict, new: dict, kinds: set[str], threshold: float, only: str = "*"):
    dropped, compared, missing = [], 0, []
    for key, b in sorted(base["figures"].items()):
        if b["kind"] not in kinds or not fnmatch.fnmatchcase(key, only):
            continue
        n = new["figures"].get(key)
        if n is None:
            missing.append(key)
            continue
        g = goodness(b["value"], n["value"], b["better"])
        if g is None:
            continue
        compared += 1
        if g < 1.0 - threshold:
            dropped.append((key, b, n, g))
    return dropped, compared, missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("new", type=Path, help="the new report (bench/report.md)")
    p.add_argument("baseline", type=Path, nargs="?", default=BENCH_DIR / "baseline.md",
                   help="the report to compare with (default bench/baseline.md)")
    p.add_argument("--threshold", type=float, default=0.10,
                   help="relative worsening that counts as a drop (default 0.10)")
    p.add_argument("--noisy", action="store_true",
                   help="also compare the noisy ratios (p99s, the syslog sink)")
    p.add_argument("--absolute", action="store_true", help="also compare absolute figures")
    p.add_argument("--only", default="*", metavar="GLOB",
                   help="compare only the figures whose key matches, e.g. '*.cpu_ratio'")
    args = p.parse_args(argv)
    try:
        base = load_data(args.baseline.read_text())
        new = load_data(args.new.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kinds = {"ratio"} | ({"noisy"} if args.noisy else set()) | \
        ({"absolute"} if args.absolute else set())
    dropped, compared, missing = compare(base, new, kinds, args.threshold, args.only)
    print(f"baseline {args.baseline} ({base['meta'].get('date', '?')}), new {args.new} "
          f"({new['meta'].get('date', '?')}): {compared} figures of kind "
          f"{', '.join(sorted(kinds))} compared")
    if missing:
        print(f"not in the new report ({len(missing)}; a skipped section?): "
              + ", ".join(missing))
    if not dropped:
        print(f"no figure got worse by more than {args.threshold:.0%}")
        return 0
    print(f"{len(dropped)} got worse by more than {args.threshold:.0%}:")
    width = max(len(k) for k, *_ in dropped)
    for key, b, n, g in dropped:
        print(f"  {key:<{width}}  {b['value']:>10.3f} -> {n['value']:>10.3f}  "
              f"({(g - 1) * 100:+.0f} %, {b['better']} is better; {b['unit']})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
