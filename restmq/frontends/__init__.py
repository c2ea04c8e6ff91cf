"""The ways in besides the REST routes: the JSON protocol of POST /queue (jsoncmd), XML-RPC,
collectd's write_http bodies and the TCP syslog receiver; each one goes through the core."""
