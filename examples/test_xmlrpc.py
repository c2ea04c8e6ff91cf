#!/usr/bin/env python3
"""Calls every XML-RPC method of RestMQ (`POST /xmlrpc`) on one queue with the standard
library's xmlrpc.client and prints each call with its result or fault.

    python3 examples/test_xmlrpc.py --queue xmlrpc-demo
"""
from __future__ import annotations

import argparse
import sys
import xmlrpc.client

DEFAULT_URL = "http://127.0.0.1:8888"


def show(server: xmlrpc.client.ServerProxy, method: str, *args: str):
    """Calls `method`, prints `method(args) -> result` (or the fault), returns the result."""
    call = f"{method}({', '.join(map(repr, args))})"
    try:
        result = getattr(server, method)(*args)
    except xmlrpc.client.Fault as fault:
        print(f"{call:40} -> fault {fault.faultCode}: {fault.faultString}", flush=True)
        return None
    shown = repr(result)
    if isinstance(result, list) and len(result) > 10:
        shown = f"{len(result)} queues"
    print(f"{call:40} -> {shown}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help=f"RestMQ base URL ({DEFAULT_URL})")
    parser.add_argument("--queue", default="xmlrpc-demo", help="queue to work on (xmlrpc-demo)")
    args = parser.parse_args()
    q = args.queue
    server = xmlrpc.client.ServerProxy(args.url.rstrip("/") + "/xmlrpc")
    try:
        show(server, "set", q, "first")            # the new key
        show(server, "set", q, "second")
        show(server, "len", q)                      # pending messages
        show(server, "get", q)                      # hard get: the oldest value
        show(server, "take", q)                     # remove and delete the next one
        show(server, "len", q)
        show(server, "get", q)                      # nothing left: fault 404
        show(server, "policy_get", q)
        show(server, "policy_set", q, "roundrobin")
        show(server, "policy_get", q)
        show(server, "policy_set", q, "broadcast")
        show(server, "status_get", q)
        show(server, "status_set", q, "stop")       # pause live delivery
        show(server, "status_get", q)
        show(server, "status_set", q, "start")
        queues = show(server, "queues")
        print(f"{q!r} is {'' if q in (queues or []) else 'not '}in queues()", flush=True)
        show(server, "no_such_method", q)           # fault 501
    except (OSError, xmlrpc.client.ProtocolError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
