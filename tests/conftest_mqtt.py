"""A real mosquitto for MQTT tests: started on 127.0.0.1 on a free port, stopped afterwards.

Import the fixture into a test module (``from conftest_mqtt import mosquitto  # noqa: F401``).
Without mosquitto the tests skip with an install hint, unless ``MODBATT_REQUIRE_MOSQUITTO=1``
(CI) turns the skip into a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from modbatt.transport.mosquitto import INSTALL_HINT, MosquittoBroker, find_mosquitto

__all__ = ["mosquitto", "require_mosquitto"]


def require_mosquitto() -> None:
    """Skip (or fail, when CI demands the broker) if mosquitto is not installed."""
    if find_mosquitto() is not None:
        return
    if os.environ.get("MODBATT_REQUIRE_MOSQUITTO") == "1":
        pytest.fail(f"MODBATT_REQUIRE_MOSQUITTO=1 but mosquitto is missing ({INSTALL_HINT})")
    pytest.skip(f"mosquitto not found ({INSTALL_HINT})")


@pytest.fixture
def mosquitto() -> Iterator[MosquittoBroker]:
    """A running broker of its own for one test (the test may stop and restart it)."""
    require_mosquitto()
    broker = MosquittoBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
