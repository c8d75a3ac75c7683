"""Live bus inspection for the notebooks: a pack simulation watched by a monitor, and decryption.

:func:`watch_pack` runs :class:`modbatt.sim.PackSimulation` on any python-can bus and, on a tap
opened on the same channel, feeds every frame to a :class:`modbatt.transport.monitor.Monitor`.
:func:`decrypted_demo_trace` shows the other half of ``modbatt monitor --keystore``: the demo's
frames read back through an entity's key store.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can

from ..crypto.keystore import KeyStore
from ..nodes.monitor_keys import KeyStoreDecryptor
from ..transport.canbus import BusConfig, open_bus
from ..transport.monitor import Monitor
from .demo import PACK_ID, run_demo
from .monitor_view import format_frame

__all__ = ["WatchedRun", "decrypted_demo_trace", "watch_pack"]

#: Frames a tap keeps at most (the monitor's own statistics are unbounded-safe; this bounds memory).
MAX_TAPPED_FRAMES = 200_000


@dataclass
class WatchedRun:
    stats: Any  # modbatt.sim.pack.SimStats
    monitor: Monitor
    frames: int


def watch_pack(modules: int = 3, duration: float = 2.0, *, bus: BusConfig | None = None, seed: int | None = None,
               bitrate: int = 250_000) -> WatchedRun:  # fmt: skip
    """Simulate ``modules`` modules for ``duration`` seconds on ``bus`` and monitor every frame."""
    from ..sim.pack import PackSimulation

    sim = PackSimulation(modules, bus=bus, seed=seed)
    tap = open_bus(sim.config)  # opened before traffic starts, so it sees every frame
    monitor = Monitor(builtin_databases=True, bitrate=bitrate)
    frames = 0
    try:
        stats = sim.run(duration)
        while frames < MAX_TAPPED_FRAMES:
            msg = tap.recv(timeout=0.05)
            if msg is None:
                break
            monitor.observe(msg)
            frames += 1
    finally:
        tap.shutdown()
        sim.close()
    return WatchedRun(stats, monitor, frames)


def decrypted_demo_trace(state_dir: Path | None = None) -> list[str]:
    """Run the demo in process and return its CAN frames as the monitor shows them with the pack's key store."""
    state = Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="modbatt-live-"))
    result = run_demo(state, transport="in-process")
    store_path = result.state_dir / "entities" / f"{PACK_ID}.keystore"
    store = KeyStore.open(store_path, key_file=store_path.with_suffix(".kek"))
    # The demo sends short illustrative payloads as single frames, not the catalog's framing.
    monitor = Monitor(decryptor=KeyStoreDecryptor(store), reassemble=False)
    lines = []
    for i, frame in enumerate(result.frames):
        msg = can.Message(timestamp=float(i), arbitration_id=int(frame["can_id"], 16),
                          data=bytes.fromhex(frame["data"]), is_extended_id=True)  # fmt: skip
        lines.append(format_frame(monitor, monitor.observe(msg)))
    return lines
