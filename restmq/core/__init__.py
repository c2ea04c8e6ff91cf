"""The queue operations over Redis, no HTTP in sight: messages (add, get, pop, purge), policy
and status, stats, and the running of long work in short steps."""
from restmq.core.messages import BATCH_BYTES, BATCH_COUNT, Core, Message
from restmq.core.policy import (POLICY_BROADCAST, POLICY_NAMES, POLICY_ROUNDROBIN, policy_name,
                                status_flag)
from restmq.core.stats import JOBS_MAX_KEYS, JOBS_SCAN_SECONDS, QueueStats
from restmq.core.steps import DEAD_STEP, MORE, PURGE_STEP, STATS_PAGE

__all__ = ["BATCH_BYTES", "BATCH_COUNT", "DEAD_STEP", "JOBS_MAX_KEYS", "JOBS_SCAN_SECONDS",
           "MORE", "POLICY_BROADCAST", "POLICY_NAMES", "POLICY_ROUNDROBIN", "PURGE_STEP",
           "STATS_PAGE", "Core", "Message", "QueueStats", "policy_name", "status_flag"]
