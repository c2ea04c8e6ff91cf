"""The `syslogd` twistd plugin: the TCP syslog receiver, whose messages become messages of the
queue syslogd:<peer ip>."""
from __future__ import annotations

from twisted.application import internet, service

from restmq.tap.options import ListenOptions, RedisOptions, int_at_least, port
from restmq.tap.services import RedisVersionCheck, exit_nonzero, redis_service


class Options(RedisOptions, ListenOptions):
    """twistd syslogd [options]"""

    synopsis = "[options]"
    longdesc = "RestMQ's syslog receiver: TCP syslog messages become messages of syslogd:<ip>."
    optParameters = [
        ["port", None, 25000, "TCP port to listen on.", port("port")],
        ["max-line", None, 16384, "Largest syslog message in bytes; longer ones are discarded.",
         int_at_least(1, "max-line")],
    ]

    def postOptions(self) -> None:
        self.check_listen()
        if self["ssl-cert"]:
            self.tls_options()


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    from restmq.clock import use_monotonic_time, wall_time
    from restmq.core import Core
    from restmq.frontends.syslogd import SyslogFactory

    clock = use_monotonic_time(reactor)  # every timer below runs on it
    top = service.MultiService()
    redis = redis_service(options, clock)
    redis.setServiceParent(top)
    RedisVersionCheck(redis, clock, lambda: exit_nonzero(reactor)).setServiceParent(top)
    factory = SyslogFactory(Core(redis, clock=clock), options["max-line"], clock=clock,
                            wall=wall_time)
    internet.StreamServerEndpointService(options.server_endpoint(reactor),
                                         factory).setServiceParent(top)
    return top
