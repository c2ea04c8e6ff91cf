# One line per plugin: importing cyclone or txredisapi here would install a reactor while
# twistd scans plugins and break --reactor (see docs/stack-notes.md#plugin-files).
from twisted.application.service import ServiceMaker

restmq = ServiceMaker("restmq", "restmq.tap.restmq",
                      "RestMQ: a message queue over HTTP and Redis", "restmq")
collectd = ServiceMaker("collectd", "restmq.tap.collectd",
                        "RestMQ with the collectd write_http frontend", "collectd")
syslogd = ServiceMaker("syslogd", "restmq.tap.syslogd",
                       "RestMQ's TCP syslog receiver", "syslogd")
