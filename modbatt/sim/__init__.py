"""Simulation (layer 5): the pack simulator on real python-can buses and the discrete-event latency model.

Two halves, one traffic table (:mod:`modbatt.sim.schedule`):

* :mod:`modbatt.sim.pack` — a pack controller and 1-31 modules bound and paired through the real
  protocol, exchanging legacy telemetry (exchange tier) and acknowledged critical commands
  (pairing tier) through each entity's :class:`~modbatt.nodes.channel.PairedChannel` on any python-can bus, in
  one process (:class:`PackSimulation`) or with every module in its own process over
  ``udp_multicast`` (:mod:`~modbatt.sim.multiprocess`, :func:`run_multiprocess`; the soak:
  :mod:`~modbatt.sim.soak`), on the clocks and scheduler of :mod:`~modbatt.sim.clock`.
  Functional: every frame really crosses the bus and is verified, but a virtual bus takes no time.
* the discrete-event model — simulated time, split by responsibility: :mod:`~modbatt.sim.eventloop`
  (clock and event queue), :mod:`~modbatt.sim.busmodel` (a CAN bus with arbitration by identifier
  and wire time from :mod:`modbatt.can.wiretime`), :mod:`~modbatt.sim.cpu` (CPU cost profiles:
  ``HOST`` measured here, STM32WB55 and ATmega64M1 from published figures),
  :mod:`~modbatt.sim.transactions` (each level as steps), :mod:`~modbatt.sim.latency` (latency per
  level against the spec budgets, :func:`latency_table`), :mod:`~modbatt.sim.load` (a whole pack's
  bus load, :func:`simulate_pack_load`), :mod:`~modbatt.sim.design` (every protocol profile ×
  platform × bus × pack size against the budgets, :func:`design_space`) and
  :mod:`~modbatt.sim.experiments` (``modbatt sweep``).

Layering: this package imports from every layer below it; nothing below imports it.
"""

from .busmodel import BUSES, TYPICAL_STUFF_SHARE, CanBusModel, FrameRecord, wire_seconds
from .clock import AcceleratedClock, RealClock, Scheduler, SimClock, VirtualClock
from .cpu import (
    ATMEGA64M1,
    STM32WB55,
    STM32WB55_SW,
    CpuProfile,
    OpCost,
    Platform,
    builtin_cpus,
    load_cpu_profile,
    measure_host,
    platforms,
)
from .design import DESIGN_PLATFORMS, answer_table, breakdown, design_space, resolve_platforms, summary_table
from .eventloop import EventLoop
from .latency import latency_table, run_level, step_rows
from .load import PackLoadResult, PackTraffic, cpu_load, simulate_pack_load
from .multiprocess import multicast_available, run_multiprocess
from .pack import PackSimulation, SimStats
from .schedule import COMMAND_CLASSES, TELEMETRY, TelemetrySpec, TrafficPlan, frames_for_unit, uses_isotp
from .transactions import BUDGET_LEVELS, BUDGETS, LEVELS, PROTOCOLS, ProfileModel, level_steps

__all__ = [
    "ATMEGA64M1",
    "BUDGETS",
    "BUDGET_LEVELS",
    "BUSES",
    "COMMAND_CLASSES",
    "DESIGN_PLATFORMS",
    "LEVELS",
    "PROTOCOLS",
    "STM32WB55",
    "STM32WB55_SW",
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
    "PackTraffic",
    "Platform",
    "ProfileModel",
    "RealClock",
    "Scheduler",
    "SimClock",
    "SimStats",
    "TelemetrySpec",
    "TrafficPlan",
    "VirtualClock",
    "answer_table",
    "breakdown",
    "builtin_cpus",
    "cpu_load",
    "design_space",
    "frames_for_unit",
    "latency_table",
    "level_steps",
    "load_cpu_profile",
    "measure_host",
    "multicast_available",
    "platforms",
    "resolve_platforms",
    "run_level",
    "run_multiprocess",
    "simulate_pack_load",
    "step_rows",
    "summary_table",
    "uses_isotp",
    "wire_seconds",
]
