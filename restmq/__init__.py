"""RestMQ: a message queue over HTTP, kept in Redis."""
__version__ = "2.0.0"
