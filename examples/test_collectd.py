#!/usr/bin/env python3
"""Watches what collectd sends to RestMQ's collectd frontend: consumes the queues
collectd_data and collectd_event at once (one comet stream each, in two threads) and prints
one line per value or notification, with its host, plugin and value.

Run the server with `twistd -n collectd` and point collectd's write_http plugin at
/collectd/data (and a notification script at /collectd/event), then:

    python3 examples/test_collectd.py --url http://127.0.0.1:8888
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import threading

from restmq_client import DEFAULT_URL, RestMQError, comet

QUEUES = {"data": "collectd_data", "event": "collectd_event"}


def _joined(head: str, tail) -> str:
    return f"{head}-{tail}" if tail not in (None, "") else str(head)


def data_lines(items: list) -> list[str]:
    """One line per value. The frontend stores PUTVAL lines parsed (text/plain: host,
    plugin_instance, type_instance, value) and collectd's JSON format verbatim (host, plugin,
    plugin_instance, type, type_instance, values)."""
    lines = []
    for item in items:
        if "values" in item:
            plugin = _joined(item.get("plugin"), item.get("plugin_instance"))
            kind = _joined(item.get("type"), item.get("type_instance"))
            value = ":".join(str(v) for v in item["values"])
        else:
            plugin, kind, value = item.get("plugin_instance"), item.get("type_instance"), \
                item.get("value")
        lines.append(f"data   host={item.get('host')} plugin={plugin} type={kind} value={value}")
    return lines


def event_line(items: list) -> str:
    """A notification is stored as a list of one-field objects, the event text last."""
    fields = {}
    for item in items:
        fields.update(item)
    return (f"event  host={fields.get('host')} plugin={fields.get('plugin')} "
            f"type={fields.get('type')} severity={fields.get('severity')}: "
            f"{fields.get('event_text')}")


def describe(kind: str, value: str) -> list[str]:
    try:
        items = json.loads(value)
    except ValueError:
        return [f"{kind:6} (not JSON) {value}"]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return [f"{kind:6} {value}"]
    return data_lines(items) if kind == "data" else [event_line(items)]


def consume(url: str, kind: str, out: queue.Queue) -> None:
    """Runs in a thread: puts ("message", kind, message) for each message, then ("purged",
    kind, None) or ("error", kind, reason) when the stream ends."""
    try:
        for message in comet(url, QUEUES[kind]):
            out.put(("message", kind, message))
    except (RestMQError, OSError) as e:
        out.put(("error", kind, str(e)))
    else:
        out.put(("purged", kind, None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help=f"RestMQ base URL ({DEFAULT_URL})")
    parser.add_argument("--count", type=int, default=0,
                        help="exit after this many messages in all (0: until both are purged)")
    args = parser.parse_args()

    out: queue.Queue = queue.Queue()
    for kind in QUEUES:
        threading.Thread(target=consume, args=(args.url, kind, out), daemon=True).start()
    print(f"consuming {args.url}/c/collectd_data and {args.url}/c/collectd_event", flush=True)
    running, received, failed = len(QUEUES), 0, False
    try:
        while running:
            event, kind, message = out.get()
            if event == "error":
                print(f"error: {QUEUES[kind]}: {message}", file=sys.stderr, flush=True)
                running, failed = running - 1, True
            elif event == "purged":
                print(f"{QUEUES[kind]} purged", flush=True)
                running -= 1
            else:
                received += 1
                for line in describe(kind, message["value"]):
                    print(line, flush=True)
                if received == args.count:
                    return 0
    except KeyboardInterrupt:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
