"""Simulation (layer 5): the pack simulator on real python-can buses and the discrete-event latency model.

Two halves, one traffic table (:mod:`modbatt.sim.schedule`):

* :mod:`modbatt.sim.pack` — a pack controller and 1-31 modules bound and paired through the real
  protocol, exchanging legacy telemetry (exchange tier) and acknowledged critical commands
  (pairing tier) through each entity's :class:`~modbatt.nodes.channel.PairedChannel` on any python-can bus, in
  one process (:class:`PackSimulation`) or with every module in its own process over
  ``udp_multicast`` (:func:`run_multiprocess`). Functional: every frame really crosses the bus
  and is verified, but a virtual bus takes no time.
* :mod:`modbatt.sim.des` — simulated time: a CAN bus with arbitration by identifier and wire time
  from :mod:`modbatt.can.wiretime`, CPU cost profiles (``HOST`` measured here, STM32WB55 and
  ATmega64M1 from published figures), latency per validation level against the spec budgets
  (:func:`latency_table`) and a whole pack's bus load (:func:`simulate_pack_load`).

Layering: this package imports from every layer below it; nothing below imports it.
"""

from .des import (
    ATMEGA64M1,
    BUDGETS,
    BUSES,
    LEVELS,
    STM32WB55,
    TYPICAL_STUFF_SHARE,
    CanBusModel,
    CpuProfile,
    EventLoop,
    FrameRecord,
    OpCost,
    PackLoadResult,
    Platform,
    latency_table,
    measure_host,
    platforms,
    run_level,
    simulate_pack_load,
    wire_seconds,
)
from .pack import (
    AcceleratedClock,
    PackSimulation,
    RealClock,
    Scheduler,
    SimClock,
    SimStats,
    VirtualClock,
    multicast_available,
    run_multiprocess,
)
from .schedule import COMMAND_CLASSES, TELEMETRY, TelemetrySpec, TrafficPlan, frames_for_unit, uses_isotp

__all__ = [
    "ATMEGA64M1",
    "BUDGETS",
    "BUSES",
    "COMMAND_CLASSES",
    "LEVELS",
    "STM32WB55",
    "TELEMETRY",
    "TYPICAL_STUFF_SHARE",
    "AcceleratedClock",
    "CanBusModel",
    "CpuProfile",
    "EventLoop",
    "FrameRecord",
    "OpCost",
    "PackLoadResult",
    "PackSimulation",
    "Platform",
    "RealClock",
    "Scheduler",
    "SimClock",
    "SimStats",
    "TelemetrySpec",
    "TrafficPlan",
    "VirtualClock",
    "frames_for_unit",
    "latency_table",
    "measure_host",
    "multicast_available",
    "platforms",
    "run_level",
    "run_multiprocess",
    "simulate_pack_load",
    "uses_isotp",
    "wire_seconds",
]
