"""The `syslogd` twistd plugin: the TCP syslog receiver (see restmq.tap)."""
from restmq.tap import SyslogdOptions as Options, makeSyslogdService as makeService

__all__ = ["Options", "makeService"]
