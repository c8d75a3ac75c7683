"""Layer 4 transports: python-can buses from configuration (``canbus``), the slcan adapter
emulator, log recording, the bus monitor's core, and the HTTP / MQTT bindings (own modules).

Nothing here knows protocol rules; CAN frames go in and out as :class:`can.Message`. The bus
names below are resolved on first use (PEP 562), so importing another transport module does not
pay for importing python-can.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .canbus import BusConfig, EchoFilteringUdpMulticastBus, open_bus

__all__ = ["BusConfig", "EchoFilteringUdpMulticastBus", "open_bus"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".canbus", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
