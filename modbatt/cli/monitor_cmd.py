"""``modbatt monitor``: watch a CAN bus or a recorded log, decoded.

Forms::

    modbatt monitor                                   python-can config / CAN_* env (an error if none)
    modbatt monitor --interface slcan --channel /dev/ttyACM0 --bitrate 500000
    modbatt monitor --interface udp_multicast --per-id --duration 10
    modbatt monitor --log capture.blf --dbc extra.dbc --count 100
    modbatt monitor --interface pcan --channel PCAN_USBBUS1 --record run.asc

Decoding and statistics live in :mod:`modbatt.transport.monitor`, the text in
:mod:`modbatt.workbench.monitor_view`; this module maps arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigError
from . import EXIT_OK
from .bus_options import add_bus_arguments, bus_from_args, bus_given

__all__ = ["decryptor_from_keystore", "register"]


def register(subparsers: Any) -> None:
    """Add ``monitor`` to the ``modbatt`` parser."""
    parser = subparsers.add_parser(
        "monitor",
        help="show CAN frames with decoded IDs and signals, per-ID rates and bus load",
        description=(
            "Show frames from a CAN bus (any python-can interface) or a recorded log, with the "
            "29-bit ID split by a modbatt ID layout and signals decoded by databases. Stops on "
            "--count, --duration, the end of a log or Ctrl-C, then prints frames/s and bus load."
        ),
    )
    add_bus_arguments(
        parser,
        title="bus (python-can's configuration: these flags, CAN_* variables, ~/.canrc; no bus chosen is an error)",
    )
    src = parser.add_argument_group("instead of a bus")
    src.add_argument(
        "--log", metavar="FILE", help="read a recorded log instead of a bus (.log .asc .blf .trc .csv .db .mf4)"
    )
    src.add_argument(
        "-f",
        "--filter",
        metavar="ID:MASK",
        action="append",
        default=[],
        help="hex ID:MASK, ID~MASK (inverse) or ID; a frame passes if any filter matches; repeatable",
    )

    dec = parser.add_argument_group("decoding")
    dec.add_argument("--layout", metavar="NAME", help="CAN ID layout (default: the seed layout)")
    dec.add_argument(
        "--dbc", metavar="FILE", action="append", default=[], help="extra database (DBC/KCD/ARXML…); repeatable"
    )
    dec.add_argument(
        "--keystore",
        metavar="FILE",
        help="an entity's key store: show its pairings' encrypted payloads in clear (key file FILE.kek, "
        "or the passphrase in $MODBATT_PASSPHRASE)",
    )
    dec.add_argument(
        "--no-reassembly",
        action="store_true",
        help="take every frame as a unit by itself (traffic that does not follow the payload catalog's "
        "ISO-TP framing, such as the demo's short single frames)",
    )
    dec.add_argument(
        "--no-builtin-dbc",
        action="store_true",
        help="do not decode with modbatt's own databases (secured protocol, legacy catalog)",
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "--per-id",
        action="store_true",
        help="one line per ID: count, Δt, rate, last data (redrawn in place on a terminal)",
    )
    out.add_argument("--refresh", type=float, default=1.0, metavar="S", help="--per-id table period (live)")
    out.add_argument("-n", "--count", type=int, metavar="N", help="stop after N frames")
    out.add_argument("-d", "--duration", type=float, metavar="S", help="stop after S seconds")
    out.add_argument(
        "--record", metavar="FILE", help="also record every frame seen (.log .asc .blf .trc .csv .db .mf4)"
    )
    parser.set_defaults(handler=_monitor)


def _monitor(args: argparse.Namespace) -> int:
    from ..transport import recording
    from ..transport.canbus import open_bus
    from ..transport.monitor import Monitor, load_databases, parse_filters, run_monitor
    from ..workbench.monitor_view import LiveTableView, TraceView
    from ..workbench.terminal import escape

    if args.refresh <= 0:
        raise ConfigError("--refresh must be a positive number of seconds")
    if args.log is not None and bus_given(args, rates=False):  # bit rates still size the bus load
        raise ConfigError("--log reads a file: leave out the bus options (--interface, --channel, …)")
    if args.record is not None:
        recording.log_format(args.record)  # fail on a bad suffix before opening anything
    if args.log is not None:
        recording.log_format(args.log, "read")
    filters = parse_filters(args.filter)

    config = None
    if args.log is None:
        # A monitor on a private virtual bus would never see a frame: a bus must be chosen.
        config = bus_from_args(args, embedded=False, purpose="a live monitor (or read a log: --log FILE)")

    def problem(text: str) -> None:
        print(f"# {escape(text)}", file=sys.stderr, flush=True)

    monitor = Monitor(
        args.layout,
        load_databases(args.dbc),
        decryptor=decryptor_from_keystore(args.keystore, args.layout) if args.keystore else None,
        builtin_databases=not args.no_builtin_dbc,
        on_problem=problem,
        bitrate=args.bitrate or (config.bitrate if config else None),
        data_bitrate=args.data_bitrate or (config.data_bitrate if config else None),
        reassemble=not args.no_reassembly,
    )
    if args.per_id:
        view: TraceView = LiveTableView(sys.stdout)
    else:
        view = TraceView(lambda line: print(line, flush=True))

    channel = None if config is None else str(config.channel if config.channel is not None else config.interface)
    recorder = recording.open_writer(args.record, channel=channel) if args.record is not None else None
    notes = recording.ReaderNotes()
    try:
        if config is None:
            problem(f"log {args.log}")
            run_monitor(
                monitor,
                recording.read_log(args.log, notes=notes),
                view,
                per_id=args.per_id,
                count=args.count,
                duration=args.duration,
                recorder=recorder,
                filters=filters,
            )
        else:
            if monitor.builtin is not None:
                monitor.builtin.prepare(fd=config.fd)  # before the bus: no frames queue meanwhile
            with open_bus(config) as bus:
                problem(f"bus: {config.describe(source=True)}")
                run_monitor(
                    monitor,
                    bus,
                    view,
                    per_id=args.per_id,
                    count=args.count,
                    duration=args.duration,
                    recorder=recorder,
                    refresh=args.refresh,
                    filters=filters,
                )
    finally:
        if notes.count:
            problem(f"{args.log}: {notes.describe()}")
        if recorder is not None:
            recorder.stop()
            if recorder.skipped:
                problem(f"{recorder.skipped} CAN FD or remote frames not recorded: {args.record} cannot hold them")
    return EXIT_OK


def decryptor_from_keystore(path: str, layout_name: str | None = None) -> Any:
    """A decryptor from an entity key store, unlocked by FILE.kek or $MODBATT_PASSPHRASE."""
    import os
    from pathlib import Path

    from ..crypto.keystore import KeyStore
    from ..nodes.monitor_keys import KeyStoreDecryptor
    from ..transport.decoding import resolve_layout

    store_path = Path(path)
    passphrase = os.environ.get("MODBATT_PASSPHRASE")
    if passphrase:
        store = KeyStore.open(store_path, passphrase=passphrase)
    else:
        store = KeyStore.open(store_path, key_file=store_path.with_suffix(".kek"))
    return KeyStoreDecryptor(store, layout=resolve_layout(layout_name))
