"""Sustained load: a 31-module pack at the documented telemetry rates plus acknowledged commands,
optionally with a bus node spraying junk identifiers at the same time.

Reuses the pack simulator (:class:`~modbatt.sim.pack.PackSimulation`): every module bound and
paired through the real protocol, every frame really crossing a python-can virtual bus, simulated
time on a :class:`~modbatt.sim.pack.VirtualClock`. The flood uses identifiers that are malformed
under the seed layout (reserved bits set) or address nodes outside the pack, so it exercises the
receivers' classification without touching the ISO-TP connections; a node that injects frames
*into* a connection's identifiers can always deny service on classic CAN (docs/threat-model.md).
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import can

from ..sim.pack import PackSimulation, VirtualClock
from ..transport.canbus import open_bus

__all__ = ["sustained_load"]

def sustained_load(
    modules: int = 31, seconds: float = 10.0, *, seed: int | None = None, flood_per_s: int = 0, max_wall: float = 60.0
) -> dict[str, Any]:
    """Run the pack for ``seconds`` of simulated time; the simulator's statistics plus a verdict.

    ``ok`` means every command was acknowledged exactly once, in order, nothing acknowledged was
    lost, and every unit sent was received and verified (the flood's frames are counted in
    ``rejects`` and ``flood_frames``, not in the units).
    """
    rng = random.Random(seed)
    sent = {"flood_frames": 0}
    with PackSimulation(modules, seed=seed, clock=VirtualClock()) as sim:
        attacker = open_bus(sim.config) if flood_per_s else None
        try:
            if attacker is not None:
                burst, period = max(flood_per_s // 100, 1), 0.01

                def spray() -> float:
                    for _ in range(burst):
                        if rng.random() < 0.5:
                            can_id = rng.getrandbits(29) | (1 << (21 + rng.randrange(5)))  # malformed
                        else:  # well-formed, for a node this pack does not have
                            can_id = (rng.getrandbits(21) & ~0xFF) | rng.randrange(0x20, 0xFF)
                        attacker.send(can.Message(arbitration_id=can_id, data=rng.randbytes(8), is_extended_id=True))
                        sent["flood_frames"] += 1
                    return period

                sim.scheduler.at(sim.clock.now(), spray)
            stats = sim.run(seconds, drain=0.5, max_wall=max_wall)
        finally:
            if attacker is not None:
                with contextlib.suppress(Exception):
                    attacker.shutdown()
    out = stats.to_dict()
    rejects = dict(stats.rejects)
    junk = rejects.pop("malformed", 0)
    out.update(sent)
    out["ok"] = (
        stats.lost_acknowledged == 0
        and stats.misordered_acknowledged == 0
        and stats.acks_received == stats.commands_sent == stats.commands_received
        and not rejects
        and not stats.transport_errors
        and sum(stats.units_rx.values()) == sum(stats.units_tx.values())
        and not stats.truncated
    )
    out["junk_classified"] = junk
    return out
