#!/bin/sh
# collectd exec plugin NotificationExec script for tests/test_collectd.py: collectd writes the
# notification (header lines, a blank line, the message) to stdin; post it unchanged to the
# URL given as the first argument (RestMQ's /collectd/event).
exec curl -s -S -o /dev/null --max-time 10 --data-binary @- "$1"
