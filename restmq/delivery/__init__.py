"""Live delivery: who is connected to which queue and which of them gets a popped message, and
when (live), and the flow control of their stream connections (streams)."""
from restmq.delivery.live import Consumer, Delivery
from restmq.delivery.streams import Outbox, StallWatch, tune_stream

__all__ = ["Consumer", "Delivery", "Outbox", "StallWatch", "tune_stream"]
