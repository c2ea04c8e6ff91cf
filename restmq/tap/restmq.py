"""The `restmq` twistd plugin: Options and makeService (only wiring, no queue logic). Redis,
live delivery and the HTTP application, stopped in the reverse order of their start."""
from __future__ import annotations

from twisted.application import internet, service
from twisted.python import usage

from restmq import __version__
from restmq.tap.options import (ListenOptions, RedisOptions, int_at_least, int_within, on_off,
                                port, seconds)
from restmq.tap.services import (OnStop, RedisVersionCheck, StopInOrder, exit_nonzero,
                                 redis_service)


class Options(RedisOptions, ListenOptions):
    """twistd restmq [options]"""

    synopsis = "[options]"
    longdesc = "RestMQ: a message queue over HTTP, kept in Redis."
    optParameters = [
        ["port", None, 8888, "TCP port to listen on.", port("port")],
        ["acl", None, "acl.conf",
         "ACL file: a path, else the packaged file of that name."],
        ["consumed-ttl", None, 3600,
         "Seconds a consumed value stays readable (0 deletes at once).",
         int_at_least(0, "consumed-ttl")],
        ["max-body", None, 1048576, "Largest request body and WebSocket message, in bytes.",
         int_at_least(1, "max-body")],
        ["max-batch", None, 100, "Most messages in one /batch/ request (1 to 1000).",
         int_within(1, 1000, "max-batch")],
        ["access-log", None, "on", "on: log every request (buffered, one write a second); "
         "off: no access log (when a proxy in front logs).", on_off("access-log")],
        ["pubsub-timeout", None, 5.0, "Seconds the pub/sub connection may leave a PING "
         "unanswered before it is replaced (live delivery pauses meanwhile).",
         seconds("pubsub-timeout")],
        ["live-stall-timeout", None, 20,
         "Seconds a live consumer may leave its output unread (or its peer stay silent to "
         "TCP) before it is disconnected.", int_at_least(1, "live-stall-timeout")],
        ["acl-check-interval", None, 5.0, "Seconds between two looks at the ACL file, which "
         "is reloaded when it changed.", seconds("acl-check-interval")],
        ["pop-lease", None, 30, "Seconds a message popped by /pop/ stays leased until its "
         "reply went out and it is acked (1 to 43200); a crash meanwhile hands it back after "
         "that.", int_within(1, 43200, "pop-lease")],
        ["metrics-queues", None, 10000, "Most queues /metrics exports (the first in byte "
         "order); beyond them restmq_metrics_truncated is 1.", int_at_least(1, "metrics-queues")],
    ]
    optFlags = [
        ["trusted-proxy", None, "Take the client address from X-Real-IP / X-Forwarded-For."],
        ["counters", None, "Keep per-queue counters in Redis (<q>:counters: acked, "
         "redelivered, dead letters, reads, deliveries ...) for /info/ and /metrics."],
        ["no-push", None, "Run no push dispatcher in this process (push queues are served by "
         "the other processes)."],
        ["push-private", None, "Allow push and hook targets on loopback, private, link-local "
         "and CGNAT addresses (tests, single-host setups)."],
    ]

    def opt_version(self):
        print(f"restmq {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        from restmq.acl import AclError, AclFile
        self.check_listen()
        self["access-log"] = self["access-log"] in (True, "on")  # the default is not coerced
        if self["ssl-cert"]:
            self.tls_options()  # a bad certificate is a usage error, not a crash at start
        try:
            self.acl = AclFile(self["acl"], trusted_proxy=self["trusted-proxy"])
        except AclError:
            raise usage.UsageError(f"Cannot load ACL file: {self['acl']}") from None


def makeService(options: Options, collectd_frontend: bool = False) -> service.IService:
    from twisted.internet import reactor

    from restmq.clock import use_monotonic_time, wall_time
    from restmq.core import Core
    from restmq.delivery import Delivery, Ticker
    from restmq.http import AccessLog, Context, load_static, make_application
    from restmq.redis import PubSubService
    from restmq.metrics import ProcessMetrics
    from restmq.redis.health import Health

    clock = use_monotonic_time(reactor)  # every timer below runs on it
    top = StopInOrder()
    redis = redis_service(options, clock)
    redis.setServiceParent(top)
    RedisVersionCheck(redis, clock, lambda: exit_nonzero(reactor)).setServiceParent(top)
    core = Core(redis, consumed_ttl=options["consumed-ttl"], clock=clock,
                counters=bool(options["counters"]))
    # Leases, delays and dead letters need a ticker in every HTTP process (it stops before
    # the Redis connections close, after the listener and live delivery).
    Ticker(core, clock).setServiceParent(top)
    pubsub = PubSubService(redis, timeout=options["pubsub-timeout"], clock=clock)
    delivery = Delivery(core, pubsub, db=options["redis-db"], clock=clock,
                        stall_timeout=options["live-stall-timeout"])
    pubsub.listener = delivery
    metrics = ProcessMetrics(delivery)
    redis.metrics = metrics
    pubsub.setServiceParent(top)
    delivery.setServiceParent(top)
    if not options["no-push"]:
        # Stopped before live delivery and Redis: its attempts settle over the pool.
        from restmq.delivery.push import PushService
        from restmq.redis.pubsub import FanOut
        push = PushService(core, pubsub, clock, reactor, db=options["redis-db"],
                           private=bool(options["push-private"]), wall=wall_time)
        pubsub.listener = FanOut(delivery, push)
        push.setServiceParent(top)
    acl = options.acl
    ctx = Context(core=core, acl=acl, delivery=delivery, redis_description=redis.description,
                  static=load_static(), pop_lease=options["pop-lease"],
                  health=Health(redis, clock), metrics=metrics,
                  metrics_queues=options["metrics-queues"])
    access_log = AccessLog(clock) if options["access-log"] else None
    app = make_application(ctx, max_body=options["max-body"], access_log=access_log,
                           collectd_frontend=collectd_frontend, clock=clock, wall=wall_time,
                           max_batch=options["max-batch"],
                           push_private=bool(options["push-private"]))
    if access_log is not None:
        top.addService(OnStop(access_log.flush))
    acl_reload = internet.TimerService(options["acl-check-interval"], acl.check_for_change)
    acl_reload.clock = clock
    acl_reload.setServiceParent(top)
    internet.StreamServerEndpointService(options.server_endpoint(reactor), app).setServiceParent(
        top)
    return top
