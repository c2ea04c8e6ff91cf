#!/usr/bin/env python3
"""Samples this machine's cpu, memory, swap and load with psutil and posts each sample as JSON
to a RestMQ queue (POST /q/<queue>) every --interval seconds, --count times (0: forever).

    python3 producer.py --config system-monitor.conf --interval 2
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

import psutil

from monitor_settings import settings
from restmq.client import Client, RestMQError


def sample() -> dict:
    """One reading; cpu is the use since the previous call (psutil's cpu_percent)."""
    load1, load5, load15 = os.getloadavg()
    return {
        "host": socket.gethostname(),
        "time": round(time.time(), 3),
        "cpu": psutil.cpu_percent(interval=None),
        "cpus": psutil.cpu_count() or 1,
        "memory": psutil.virtual_memory().percent,
        "swap": psutil.swap_memory().percent,
        "load": [round(load1, 2), round(load5, 2), round(load15, 2)],
    }


def main() -> int:
    args, config = settings(__doc__.splitlines()[0], lambda parser: parser.add_argument(
        "--interval", type=float, help="seconds between samples (config: [producer] interval)"))
    interval = args.interval if args.interval is not None else \
        config.getfloat("producer", "interval")

    psutil.cpu_percent(interval=None)   # the first reading is meaningless: start the clock
    mq = Client(args.url, timeout=10)
    sent = 0
    try:
        while True:
            time.sleep(interval)
            figures = sample()
            try:
                key = mq.add(args.queue, json.dumps(figures))
            except RestMQError as e:
                print(f"error: {e}", file=sys.stderr, flush=True)
                return 1
            sent += 1
            print(f"{key}: cpu {figures['cpu']}% memory {figures['memory']}% "
                  f"swap {figures['swap']}% load {figures['load'][0]}", flush=True)
            if sent == args.count:
                return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
