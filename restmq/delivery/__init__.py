"""Delivery: who is connected to which queue and which of them gets a popped message, and
when (live), the long polls waiting for one (waiters), the flow control of their stream
connections (streams), and when a process looks at what is due: leases ending, delayed
messages (ticker)."""
from restmq.delivery.live import Delivery
from restmq.delivery.presence import Consumer
from restmq.delivery.streams import Outbox, StallWatch, tune_stream
from restmq.delivery.ticker import Ticker
from restmq.delivery.waiters import Waiter

__all__ = ["Consumer", "Delivery", "Outbox", "StallWatch", "Ticker", "Waiter", "tune_stream"]
