"""restmq.client: a client library for RestMQ servers.

    from restmq.client import Client, Worker

`Client` and `Worker` need only the standard library; `TxClient` and `TxWorker` (Twisted) are
imported on first use, so a program that uses the blocking client never loads Twisted. Nothing
here imports the server's modules.
"""
from __future__ import annotations

from restmq.client.errors import (IdempotencyConflict, OutcomeUnknown, ProtocolMismatch,
                                  RestMQError, TooLarge, Unauthorized, Unavailable)
from restmq.client.models import Config, Health, Info, Lease, Message, Redrive, Settled
from restmq.client.sync import Client
from restmq.client.wire import AUTO
from restmq.client.worker import Worker

__all__ = ["AUTO", "Client", "Config", "Health", "IdempotencyConflict", "Info", "Lease",
           "Message", "OutcomeUnknown", "ProtocolMismatch", "Redrive", "RestMQError",
           "Settled", "TooLarge", "Unauthorized", "Unavailable",
           "Worker"]


def __getattr__(name: str):
    if name in ("TxClient", "TxWorker"):
        from restmq.client import tx
        return getattr(tx, name)
    raise AttributeError(f"module 'restmq.client' has no attribute {name!r}")
