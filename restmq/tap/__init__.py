"""The twistd plugins' Options and makeService, one module each (restmq, collectd, syslogd),
with the options and services they share. `restmq.tap` itself stays the restmq plugin, as
plugin files of installed copies name it."""
from restmq.tap.restmq import Options, makeService

__all__ = ["Options", "makeService"]
