"""The bus options every command shares, mapped onto the one bus rule.

Each command that touches a CAN bus calls :func:`add_bus_arguments` and then :func:`bus_from_args`,
which hands everything to :func:`modbatt.transport.canbus.resolve_bus` (docs/buses.md §2): the
same flags, the same python-can configuration sources, the same one-line errors everywhere.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..workbench.parameters import parse_value

if TYPE_CHECKING:
    from ..transport.canbus import BusConfig

__all__ = ["add_bus_arguments", "bus_arguments", "bus_from_args", "bus_given", "parse_bus_options"]


def add_bus_arguments(parser: argparse.ArgumentParser, *, faults: bool = False, title: str | None = None) -> None:
    """Add ``-i/--interface``, ``-c/--channel``, ``-b/--bitrate``, ``--fd``, ``--data-bitrate``,
    ``--config-context``, ``--can-config``, ``--bus-option`` and ``--run-id`` (and ``--faults``)."""
    g = parser.add_argument_group(
        title or "bus (python-can's configuration: these flags, CAN_* variables, ~/.canrc; docs/buses.md §2)"
    )
    g.add_argument("-i", "--interface", help="python-can interface: virtual, udp_multicast, socketcan, slcan, pcan …")
    g.add_argument("-c", "--channel", help="channel: multicast group, vcan0/can0, serial port, virtual name …")
    g.add_argument("-b", "--bitrate", type=int, help="nominal bit rate in bit/s")
    g.add_argument("--fd", action="store_true", default=None, help="open the bus for CAN FD")
    g.add_argument("--data-bitrate", type=int, help="CAN FD data-phase bit rate in bit/s")
    g.add_argument("--config-context", metavar="SECTION", help="python-can config section (and CAN_*_SECTION)")
    g.add_argument("--can-config", metavar="FILE", type=Path, help="python-can config file instead of the defaults")
    g.add_argument(
        "--bus-option",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="any other backend argument, e.g. port=45000 for udp_multicast; repeatable",
    )
    g.add_argument(
        "--run-id",
        metavar="ID",
        help="isolate this run: a udp_multicast group and port (or a virtual channel) derived from ID",
    )
    if faults:
        g.add_argument(
            "--faults",
            metavar="SPEC",
            help="inject faults through the fault bus, e.g. loss=0.05,dup=0.01,seed=7 (docs/buses.md §8)",
        )


def parse_bus_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as backend keywords (values as JSON when they parse: ``port=45000`` is an int)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--bus-option wants KEY=VALUE with KEY a python-can argument name, got {item!r}")
        out[key] = parse_value(value)
    return out


_CHOICE_FLAGS = ("interface", "channel", "fd", "config_context", "can_config", "bus_option", "run_id")


def bus_given(args: argparse.Namespace, *, rates: bool = True) -> bool:
    """Whether any flag choosing a bus was given (``rates=False``: bit rates do not count)."""
    names = _CHOICE_FLAGS + (("bitrate", "data_bitrate") if rates else ())
    return any(getattr(args, name, None) not in (None, [], False) for name in names)


def bus_from_args(args: argparse.Namespace, *, embedded: bool = True, purpose: str = "this command") -> BusConfig:
    """The bus the flags and python-can's configuration choose (the one rule); ConfigError otherwise."""
    from ..transport.canbus import resolve_bus  # python-can is imported by commands that use a bus only

    return resolve_bus(
        args.interface,
        args.channel,
        args.bitrate,
        fd=True if args.fd or args.data_bitrate else None,
        data_bitrate=args.data_bitrate,
        faults=getattr(args, "faults", None),
        options=parse_bus_options(args.bus_option),
        run_id=args.run_id,
        config_file=args.can_config,
        context=args.config_context,
        embedded=embedded,
        purpose=purpose,
    )


def bus_arguments(config: BusConfig) -> list[str]:
    """The flags that choose ``config`` again in another ``modbatt`` process (:func:`bus_from_args`'s inverse).

    Explicit flags win over python-can's configuration in that process (docs/buses.md §2.1), and
    every setting beyond interface and channel goes as ``--bus-option KEY=JSON``, so the child opens
    exactly this bus.
    """
    out = ["--interface", config.interface]
    if config.channel is not None:
        out += ["--channel", str(config.channel)]
    for key, value in sorted(config.options().items()):
        out += ["--bus-option", f"{key}={json.dumps(value)}"]
    return out
