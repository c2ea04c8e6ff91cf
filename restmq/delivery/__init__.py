"""Live delivery: who is connected to which queue and which of them gets a popped message, and
when (live), and the flow control of their stream connections (streams)."""
from restmq.delivery.live import Consumer, Delivery
from restmq.delivery.streams import StallWatch, tune_stream, unsent_bytes

__all__ = ["Consumer", "Delivery", "StallWatch", "tune_stream", "unsent_bytes"]
