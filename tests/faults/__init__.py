"""Fault-injection tier: Redis and server crashes, pauses and resets under concurrent load,
checked against a history of what producers were told and what consumers received."""
