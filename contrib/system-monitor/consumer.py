#!/usr/bin/env python3
"""Consumes the samples of producer.py from a RestMQ queue (comet, GET /c/<queue>) and
dispatches on the figures: one line per sample, and a WARNING line for every figure above its
threshold in the config file. Exits after --count messages (0: until the queue is purged).

    python3 consumer.py --config system-monitor.conf
"""
from __future__ import annotations

import json
import sys
from itertools import islice

from monitor_settings import settings
from restmq.client import Client, RestMQError

# figure name -> (how to read it from a sample, unit)
FIGURES = {
    "cpu": (lambda s: s["cpu"], "%"),
    "memory": (lambda s: s["memory"], "%"),
    "swap": (lambda s: s["swap"], "%"),
    "load": (lambda s: s["load"][0] / max(1, s.get("cpus", 1)), " per cpu"),
}


def check(sample: dict, thresholds: dict[str, float]) -> list[str]:
    """The WARNING lines for the figures of `sample` above their thresholds."""
    warnings = []
    for name, (read, unit) in FIGURES.items():
        if name not in thresholds:
            continue
        value = read(sample)
        if value > thresholds[name]:
            warnings.append(f"WARNING {sample['host']}: {name} {value:g}{unit} "
                            f"is above {thresholds[name]:g}{unit}")
    return warnings


def dispatch(message, thresholds: dict[str, float]) -> None:
    """Prints the sample's line and its warnings, or says the message is not a sample."""
    try:
        sample = json.loads(message.value)
        line = (f"{message.key} {sample['host']}: cpu {sample['cpu']:g}% "
                f"memory {sample['memory']:g}% swap {sample['swap']:g}% "
                f"load {sample['load'][0]:g}")
        warnings = check(sample, thresholds)
    except (ValueError, KeyError, TypeError, IndexError):
        print(f"{message.key}: not a sample: {message.value}", flush=True)
        return
    print(line, flush=True)
    for warning in warnings:
        print(warning, flush=True)


def main() -> int:
    args, config = settings(__doc__.splitlines()[0])
    thresholds = {name: config.getfloat("thresholds", name)
                  for name in FIGURES if config.has_option("thresholds", name)}

    print(f"watching {args.url}/c/{args.queue}", flush=True)
    try:
        stream = Client(args.url).stream(args.queue, via="comet")
        for message in islice(stream, args.count or None):
            dispatch(message, thresholds)
    except RestMQError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
