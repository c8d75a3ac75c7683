"""The bus a notebook runs on, from its ``bus_interface`` / ``bus_channel`` / ``bus_port`` parameters.

One small function so every notebook resolves its bus the same way, through the package's bus
rule (:meth:`modbatt.transport.canbus.BusConfig.resolve`: explicit values first, then python-can's
configuration files and ``CAN_*`` environment). The embedded default stays python-can's ``virtual``
interface; there a notebook that names no channel gets a private one, so two runs never hear each
other. ``bus_port`` isolates ``udp_multicast`` runs on one host: every socket on a port hears every
group joined on that port (Linux ``IP_MULTICAST_ALL``), so a group alone does not separate runs.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..transport.canbus import BusConfig

__all__ = ["notebook_bus"]


def notebook_bus(
    interface: str | None = "virtual",
    channel: str | None = None,
    *,
    port: int | None = None,
    bitrate: int | None = None,
    **kwargs: Any,
) -> BusConfig:
    """The :class:`BusConfig` a notebook's bus parameters name (a private channel on ``virtual``).

    Raises :class:`~modbatt.errors.ConfigError` (one line) for an unknown interface or a value the
    interface cannot use, before anything is opened.
    """
    if port is not None:
        kwargs["port"] = port
    config = BusConfig.resolve(interface, channel, bitrate, **kwargs)
    if config.interface == "virtual" and config.channel is None:
        config = BusConfig(
            interface="virtual", channel=f"modbatt-nb-{uuid.uuid4().hex}", bitrate=config.bitrate, fd=config.fd,
            data_bitrate=config.data_bitrate, kwargs=config.kwargs, faults=config.faults,
        )  # fmt: skip
    return config
