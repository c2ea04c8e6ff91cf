"""The `collectd` twistd plugin: the restmq plugin plus the collectd write_http frontend at
/collectd/data and /collectd/event."""
from __future__ import annotations

from twisted.application import service

from restmq.tap import restmq as restmq_plugin


class Options(restmq_plugin.Options):
    """twistd collectd [options]: every restmq route plus /collectd/<kind>."""

    longdesc = "RestMQ with the collectd write_http frontend at /collectd/data and /collectd/event."


def makeService(options: Options) -> service.IService:
    return restmq_plugin.makeService(options, collectd_frontend=True)
