"""The cyclone Application: every route and its handler, in the order they are matched, and
the packaged static files the pages serve.
"""
from __future__ import annotations

from importlib import resources
from typing import Any, Callable

from restmq.clock import reactor_clock, wall_time
from restmq.http.accesslog import AccessLog
from restmq.http.adds import MAX_BATCH, BatchHandler
from restmq.http.base import Context
from restmq.http.commands import JsonProtocolHandler, XmlRpcHandler
from restmq.http.compat import Application, ChunkedTransferEncoding
from restmq.http.config import ConfigHandler, InfoHandler
from restmq.http.reading import BODY_TIMEOUT, HEAD_TIMEOUT
from restmq.http.leases import (AckHandler, ClaimHandler, ExtendHandler, RedriveHandler,
                                ReleaseHandler)
from restmq.http.live import SSE_KEEPALIVE, CometHandler, SSEHandler, WebSocketHandler
from restmq.http.ops import HealthHandler, MetricsHandler, PingHandler
from restmq.http.pages import JobsHandler, NotFoundHandler, StaticHandler
from restmq.http.peek import PeekHandler
from restmq.http.polls import PopHandler
from restmq.http.queues import (CollectdHandler, ControlHandler, PolicyHandler, QueueHandler,
                                RootHandler, StatsHandler)


def load_static() -> dict[str, bytes]:
    """Every file under the packaged static/ directory, by relative path."""
    files: dict[str, bytes] = {}

    def walk(folder, prefix):
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.is_file():
                files[prefix + entry.name] = entry.read_bytes()

    walk(resources.files("restmq") / "static", "")
    return files


def routes(ctx: Context, collectd_frontend: bool = False) -> list:
    kw = {"ctx": ctx}
    frontend = [(r"/collectd/.*", CollectdHandler, kw)] if collectd_frontend else []
    return frontend + [
        (r"/", RootHandler, kw),
        (r"/q/.*", QueueHandler, kw),
        (r"/c/.*", CometHandler, kw),
        (r"/ws/.*", WebSocketHandler, kw),
        (r"/sse/.*", SSEHandler, kw),
        (r"/p/.*", PolicyHandler, kw),
        (r"/control/.*", ControlHandler, kw),
        (r"/stats/.*", StatsHandler, kw),
        (r"/j/.*", JobsHandler, kw),
        (r"/queue", JsonProtocolHandler, kw),
        (r"/xmlrpc", XmlRpcHandler, kw),
        (r"/claim/.*", ClaimHandler, kw),
        (r"/ack/.*", AckHandler, kw),
        (r"/extend/.*", ExtendHandler, kw),
        (r"/release/.*", ReleaseHandler, kw),
        (r"/redrive/.*", RedriveHandler, kw),
        (r"/pop/.*", PopHandler, kw),
        (r"/config/.*", ConfigHandler, kw),
        (r"/info/.*", InfoHandler, kw),
        (r"/batch/.*", BatchHandler, kw),
        (r"/peek/.*", PeekHandler, kw),
        (r"/ping", PingHandler, kw),
        (r"/health", HealthHandler, kw),
        (r"/metrics", MetricsHandler, kw),
        (r"/static/.*", StaticHandler, kw),
        (r"/(?:favicon\.ico|robots\.txt)", StaticHandler, kw),
        (r".*", NotFoundHandler, kw),
    ]


def make_application(ctx: Context, max_body: int = 1024 * 1024,
                     access_log: AccessLog | None = None,
                     collectd_frontend: bool = False, clock: Any = None,
                     wall: Callable[[], float] = wall_time, head_timeout: float = HEAD_TIMEOUT,
                     body_timeout: float = BODY_TIMEOUT,
                     sse_keepalive: float = SSE_KEEPALIVE,
                     max_batch: int = MAX_BATCH, push_private: bool = False) -> Application:
    """The Application; `access_log` None means no access log at all. `clock` (an
    IReactorTime) runs every timer of the connections and streams, `wall` gives the date.
    `max_batch` bounds the messages of one `/batch/` request; `push_private` lets push and
    hook targets be on loopback and private addresses."""
    settings: dict[str, Any] = {"max_body": max_body, "max_batch": max_batch,
                                "log_function": access_log or (lambda handler: None),
                                "clock": reactor_clock() if clock is None else clock,
                                "wall_time": wall, "head_timeout": head_timeout,
                                "body_timeout": body_timeout, "sse_keepalive": sse_keepalive,
                                "push_private": push_private}
    app = Application(routes(ctx, collectd_frontend), **settings)
    app.transforms = [ChunkedTransferEncoding]
    return app
