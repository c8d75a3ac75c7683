"""A pack simulation as a traffic source in a process of its own: ``python -m modbatt.sim.source``.

It binds and pairs a pack with ``--modules`` modules, writes the pack's key store (encrypted, its
key file beside it) to ``--state DIR/pack.keystore`` so that a listener elsewhere can decrypt
the traffic, writes ``DIR/ready``, waits for ``DIR/go`` (or ``--start-after`` seconds), runs
the pack's secured traffic on the bus for ``--duration`` seconds in real time, and writes what it
sent to ``DIR/stats.json`` (:meth:`~modbatt.sim.pack.SimStats.to_dict`, the frames sent per class
and tier: what a listener compares its own count against). Exit status 0 when the run itself saw
nothing lost, 1 otherwise, 2 for a usage error; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..errors import ModbattError
from ..transport.canbus import BusConfig
from .pack import PackSimulation, RealClock, _persist_entity

__all__ = ["main", "sent_frames"]

KEYSTORE = "pack.keystore"


def sent_frames(stats: dict) -> int:
    """Frames a source reported sending (``stats.json``): every frame any of its nodes put on the bus."""
    return int(sum(stats["frames_tx"].values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modbatt.sim.source", description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of traffic")
    parser.add_argument("--interface", default=None)
    parser.add_argument("--channel", default=None)
    parser.add_argument("--port", type=int, default=None, help="udp_multicast port")
    parser.add_argument("--seed", type=int, default=None, help="reproducible keys (needs MODBATT_REPRODUCIBLE=1)")
    parser.add_argument("--state", type=Path, required=True, help="folder for the key store, ready/go and stats")
    parser.add_argument("--start-after", type=float, default=30.0, help="start anyway after this many seconds")
    args = parser.parse_args(argv)
    try:
        kwargs = {"port": args.port} if args.port is not None else {}
        config = BusConfig.resolve(args.interface, args.channel, **kwargs)
        args.state.mkdir(parents=True, exist_ok=True)
        with PackSimulation(args.modules, bus=config, seed=args.seed, clock=RealClock()) as sim:
            _persist_entity(sim.deployment.pack, args.state / KEYSTORE)
            (args.state / "ready").write_text(config.describe() + "\n")
            deadline = time.monotonic() + args.start_after
            while not (args.state / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            stats = sim.run(args.duration)
        tmp = args.state / "stats.json.tmp"
        tmp.write_text(json.dumps(stats.to_dict(), sort_keys=True))
        os.replace(tmp, args.state / "stats.json")  # whole or absent: a reader never sees half
    except ModbattError as exc:
        print(f"modbatt.sim.source: {exc}", file=sys.stderr)
        return 2
    return 0 if stats.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
