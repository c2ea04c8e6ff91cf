"""Redis's clock as seen from this process. Write deadlines are compared with Redis's TIME inside
the scripts, so they are expressed in Redis's time base, whatever the two hosts' clocks say."""
from __future__ import annotations

from typing import Any

# A TIME reply that took longer than this to come back says little about when Redis read its
# clock; once an offset is known, such samples are ignored.
MAX_ROUND_TRIP = 0.25


class RedisClock:
    """The offset between Redis's clock and ours, from TIME replies. "Ours" is whatever clock
    the caller reads (a monotonic one, so that steps of the wall clock here do not matter)."""

    def __init__(self) -> None:
        self.offset: float | None = None  # Redis's time minus ours, in seconds

    @property
    def known(self) -> bool:
        return self.offset is not None

    def sample(self, sent: float, reply: Any, received: float) -> bool:
        """Take a TIME reply (seconds and microseconds as text) to a command sent at `sent`
        and answered at `received` (our seconds). Redis read its clock somewhere in between;
        taking it as read at `received` can only make deadlines early, never late.
        Returns whether the sample was used."""
        if self.offset is not None and received - sent > MAX_ROUND_TRIP:
            return False
        self.offset = int(reply[0]) + int(reply[1]) / 1e6 - received
        return True

    def assume_in_step(self) -> None:
        """Redis refused TIME (an ACL, say): fall back to trusting that the clocks agree."""
        if self.offset is None:
            self.offset = 0.0

    def redis_ms(self, ours: float) -> int:
        """Our time `ours` (seconds) as Redis's milliseconds since the epoch."""
        return int((ours + (self.offset or 0.0)) * 1000)
