"""What bytes go on the wire: the HTTP connection and the WebSocket codec, the handlers of
every route (queues, commands, live streams, leases, queue configuration, pages) and the
Application that routes to them."""
from restmq.http.accesslog import AccessLog
from restmq.http.app import load_static, make_application, routes
from restmq.http.base import Context

__all__ = ["AccessLog", "Context", "load_static", "make_application", "routes"]
