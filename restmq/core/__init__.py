"""The queue operations over Redis, no HTTP in sight: messages (add, get, pop, purge), leases
and dead letters, per-queue configuration, what is due (the tick), policy and status, stats,
and the running of long work in short steps."""
from restmq.core.adds import Added, Item
from restmq.core.config import DeadLetterState, QueueConfig, QueueInfo
from restmq.core.leases import (Acked, Claimed, Extended, Extension, Lease, Move, Redriven,
                                Released)
from restmq.core.peek import PEEK_STEP, Peeked, Pending
from restmq.core.messages import BATCH_BYTES, BATCH_COUNT, Core, Message
from restmq.core.policy import (POLICY_BROADCAST, POLICY_NAMES, POLICY_ROUNDROBIN, policy_name,
                                status_flag)
from restmq.core.schedule import TICK_QUEUES, TICK_SCAN, TICK_STEP, Due, Ticked
from restmq.core.stats import JOBS_MAX_KEYS, JOBS_SCAN_SECONDS, QueueStats
from restmq.core.steps import DEAD_STEP, MORE, PURGE_STEP, STATS_PAGE

__all__ = ["BATCH_BYTES", "BATCH_COUNT", "DEAD_STEP", "JOBS_MAX_KEYS", "JOBS_SCAN_SECONDS",
           "MORE", "PEEK_STEP", "POLICY_BROADCAST", "POLICY_NAMES", "POLICY_ROUNDROBIN",
           "PURGE_STEP", "STATS_PAGE", "TICK_QUEUES", "TICK_SCAN", "TICK_STEP", "Acked", "Added",
           "Claimed", "Core", "DeadLetterState", "Due", "Extended", "Extension", "Item", "Lease",
           "Message", "Move", "Peeked", "Pending", "QueueConfig", "QueueInfo", "QueueStats",
           "Redriven", "Released", "Ticked", "policy_name", "status_flag"]
