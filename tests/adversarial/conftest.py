"""The adversarial tier runs against a redis-server of its own, so that the faults it injects
(pauses, SIGSTOP, killed connections) never reach the other tests' Redis."""
from __future__ import annotations

import pytest

from tests.adversarial.system import System
from tests.conftest import RedisProcess


@pytest.fixture(scope="module")
def adversarial_system():
    redis = RedisProcess().start()
    system = System(redis)
    try:
        yield system
    finally:
        system.stop_servers()
        redis.stop()
