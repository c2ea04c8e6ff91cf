"""`restmq`: the client library's calls from a shell, one JSON document on stdout per call
(`tail`: one JSON line per message).

Exit statuses: 0 done; 1 the server refused the request (its status and reason on stderr, as
JSON); 2 bad usage; 3 nothing there (an empty queue for get, pop and claim; a stale receipt for
ack); 4 the server or its Redis is unavailable, or the outcome is unknown; 5 the server speaks
protocol 1 only and the call needs protocol 2; 130 interrupted. When the reader of the output
leaves (`restmq tail ... | head -1`), the command ends quietly with 0."""
from __future__ import annotations

import argparse
import json
import os
import sys

from restmq.client.errors import ProtocolMismatch, RestMQError, Unavailable
from restmq.client.sync import Client

OK, REFUSED, USAGE, NOTHING, UNAVAILABLE, OLD_SERVER = 0, 1, 2, 3, 4, 5


def message(m) -> dict:
    out = {"key": m.key, "value": m.value}
    for name in ("priority", "receipt", "deliveries", "lease_until"):
        if getattr(m, name, None) is not None:
            out[name] = getattr(m, name)
    return out


def emit(document) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


def cmd_add(c: Client, a) -> int:
    values = a.values or [line.rstrip("\n") for line in sys.stdin if line.rstrip("\n")]
    extra = {k: v for k, v in (("ttl", a.ttl), ("delay", a.delay), ("eta", a.eta),
                               ("priority", a.priority)) if v is not None}
    key = a.idempotency_key if a.idempotency_key else "auto"
    if len(values) == 1:
        keys = [c.add(a.queue, values[0], idempotency_key=key, **extra)]
    else:
        keys = []
        for i in range(0, len(values), 100):
            items = [{"value": v, **extra} for v in values[i:i + 100]]
            keys += c.add_batch(a.queue, items, idempotency_key=batch_key(key, i, values))
    emit({"queue": a.queue, "keys": keys})
    return OK


def batch_key(key: str, start: int, values: list) -> str:
    """A user's key names the whole add: each batch of a longer one gets KEY.1, KEY.2 ...,
    so that running the same command again stores nothing twice (one key on every batch
    would be refused as reused for a different request)."""
    if key == "auto" or len(values) <= 100:
        return key
    return f"{key}.{start // 100 + 1}"


def cmd_get(c, a) -> int:
    m = c.get(a.queue)
    if m is None:
        return NOTHING
    emit({"queue": a.queue, **message(m)})
    return OK


def listed(a, messages, **more) -> int:
    emit({"queue": a.queue, "messages": [message(m) for m in messages], **more})
    return OK if messages else NOTHING


def cmd_pop(c, a) -> int:
    return listed(a, c.pop(a.queue, a.limit, a.wait))


def cmd_claim(c, a) -> int:
    return listed(a, c.claim(a.queue, a.limit, a.lease, a.wait))


def cmd_ack(c, a) -> int:
    settled = c.ack(a.queue, a.receipts)
    emit({"queue": a.queue, "acked": settled.ok, "stale": settled.stale})
    return NOTHING if settled.stale else OK


def cmd_peek(c, a) -> int:
    messages, after = c.peek(a.queue, a.limit, a.after)
    listed(a, messages, next=after)
    return OK


def cmd_info(c, a) -> int:
    emit(c.info(a.queue).raw)
    return OK


def cmd_config(c, a) -> int:
    if a.clear:
        emit({"queue": a.queue, "deleted": c.clear_config(a.queue)})
        return OK
    attrs = {}
    for pair in a.attributes:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"config: not name=value: {pair!r}")  # bad usage: status 2
        attrs[name] = value
    result = c.set_config(a.queue, unset=a.unset, **attrs) if attrs or a.unset \
        else c.config(a.queue)
    emit({"queue": result.queue, "config": result.config, "set": result.set})
    return OK


def cmd_redrive(c, a) -> int:
    r = c.redrive(a.queue, a.to, a.limit)
    emit({"queue": r.queue, "moved": [{"from": f, "to": t} for f, t in r.moved],
          "remaining": r.remaining, "stopped": r.stopped})
    return OK


def cmd_health(c, a) -> int:
    emit(c.health().raw)
    return OK


def cmd_tail(c, a) -> int:
    seen = 0
    for m in c.stream(a.queue, via=a.via):
        emit(message(m))
        seen += 1
        if seen == a.count:
            break
    return OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="restmq", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--auth", help="user:password for HTTP Basic authentication")
    p.add_argument("--auth-key", help="an auth key (sent as X-Auth-Key)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call (30)")
    p.add_argument("--retries", type=int, default=3, help="safe retries per call (3)")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, func, help, queue=True):
        s = sub.add_parser(name, help=help, description=help)
        s.add_argument("url", help="the server's base URL, http://host:port")
        if queue:
            s.add_argument("queue", help="the queue's name")
        s.set_defaults(func=func)
        return s

    s = command("add", cmd_add, "add messages (the arguments, else stdin lines)")
    s.add_argument("values", nargs="*", help="one message each; none: one per stdin line; "
                   "several go in batches of 100, each stored all or none")
    s.add_argument("--ttl", type=int, help="seconds before an unconsumed message expires")
    s.add_argument("--delay", type=int, help="seconds before the messages are due")
    s.add_argument("--priority", type=int, help="0 (default) ... 9 (first out)")
    s.add_argument("--eta", type=float, help="Unix time when the messages are due")
    s.add_argument("--idempotency-key", metavar="KEY", help="the key of this add (default: "
                   "a fresh one per request, reused on its retries)")
    command("get", cmd_get, "take the oldest message for good (hard get)")
    for name, func, help in (("pop", cmd_pop, "take messages, acknowledged once sent"),
                             ("claim", cmd_claim, "lease messages (ack, extend or release "
                                                  "them by receipt)")):
        s = command(name, func, help)
        s.add_argument("--limit", type=int, default=1, help="at most this many (1)")
        s.add_argument("--wait", type=int, default=0,
                       help="seconds to wait for a message when none is pending (0)")
        if name == "claim":
            s.add_argument("--lease", type=int,
                           help="seconds of the lease (the queue's default)")
    s = command("ack", cmd_ack, "acknowledge claimed messages by receipt")
    s.add_argument("receipts", nargs="+", help="receipts of claim")
    s = command("peek", cmd_peek, "list pending messages without consuming them")
    s.add_argument("--limit", type=int, default=10, help="at most this many (10)")
    s.add_argument("--after", metavar="KEY", help="continue after this key (a peek's next)")
    command("info", cmd_info, "a queue's pending, in-flight and delayed counts")
    s = command("config", cmd_config, "read, set (name=value ...) or clear a configuration")
    s.add_argument("attributes", nargs="*", metavar="name=value", help="attributes to set")
    s.add_argument("--unset", metavar="NAMES", help="attributes to remove, comma separated")
    s.add_argument("--clear", action="store_true", help="remove the whole configuration")
    s = command("redrive", cmd_redrive, "move dead letters back")
    s.add_argument("--to", metavar="QUEUE",
                   help="the queue to move them to (default: where each came from)")
    s.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    command("health", cmd_health, "the server's /health", queue=False)
    s = command("tail", cmd_tail, "print messages delivered live until the queue is purged")
    s.add_argument("--via", choices=("sse", "comet"), default="sse",
                   help="the live route (sse)")
    s.add_argument("--count", type=int, default=0, help="stop after this many (0: no limit)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    auth = tuple(a.auth.split(":", 1)) if a.auth else None
    if auth is not None and len(auth) != 2:
        parser().error("--auth takes user:password")
    try:
        client = Client(a.url, auth=auth, auth_key=a.auth_key, timeout=a.timeout,
                        retries=a.retries)
        return a.func(client, a)
    except ValueError as e:
        print(json.dumps({"error": str(e)}), file=sys.stderr)
        return USAGE
    except RestMQError as e:
        print(json.dumps({"status": e.status, "error": e.reason}), file=sys.stderr)
        if isinstance(e, ProtocolMismatch):
            return OLD_SERVER
        return UNAVAILABLE if isinstance(e, Unavailable) else REFUSED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader of our output left (`restmq tail ... | head -1`): nothing more to say, and
        # the interpreter's own flush at exit must not meet the closed pipe either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK


if __name__ == "__main__":
    sys.exit(main())
