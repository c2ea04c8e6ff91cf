"""Everything that talks to Redis: the command pool (connection), the pub/sub connection,
the Lua scripts (scripts), the bytes of commands and replies (wire) and the names of the keys
RestMQ keeps (keys)."""
from restmq.redis.connection import (CLOCK_INTERVAL, COMMAND_TIMEOUT, DEADLINE, DEADLINE_SLACK,
                                     RECONNECT_MAX_DELAY, RedisService)
from restmq.redis.pubsub import PubSubService
from restmq.redis.scripts import Script, load_script
from restmq.redis.wire import text

__all__ = ["CLOCK_INTERVAL", "COMMAND_TIMEOUT", "DEADLINE", "DEADLINE_SLACK",
           "RECONNECT_MAX_DELAY", "PubSubService", "RedisService", "Script", "load_script",
           "text"]
