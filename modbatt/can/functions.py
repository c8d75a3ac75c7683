"""Function codes of the secured protocol (the seed layout's 9-bit ``function`` field).

Defined once here: the link, the DBC export, the monitor and the simulator all read this table.
Each function carries one :class:`~modbatt.model.policy.MessageClass`, so a receiver can check
the tier signalled in the identifier against the policy minimum for what the frame claims to be
(a command sent in clear, or with the flag bits stripped, is refused as ``tier_too_low``).

Ranges: 0x001-0x03F protocol management (binding tier by default), 0x040-0x07F routine
monitoring (exchange tier), 0x080-0x0BF critical operations (pairing tier).

The freshness resync of a paired channel (docs/can-frames.md §3) has three functions of its own:
``RESYNC_REQUEST`` and ``RESYNC_RESTART`` carry a receiver's 8-byte challenge in clear (the
second also says "I restarted, my counters jumped: challenge me back"), ``RESYNC_ANSWER`` carries
a sender's authenticated full freshness value at the tier it answers for. Their ``tiers`` are
fixed by the protocol, not by the policy table.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from ..errors import Reason, VerificationError
from ..model.policy import MessageClass
from ..model.tier import Tier
from .ids import CanIdFields

__all__ = [
    "EMERGENCY_PRIORITY",
    "FUNCTIONS",
    "RESYNC_FUNCTIONS",
    "Function",
    "function_for",
    "function_named",
    "message_class_of",
]

#: The priority value only emergency shutdown may use (checked when the table is built).
EMERGENCY_PRIORITY = 0


@dataclass(frozen=True, slots=True)
class Function:
    """One function code: its name (as in the DBC), the message class it carries, its priority.

    ``priority`` fills the layout's 3-bit priority field (0 most urgent, J1939 style). CAN
    arbitration is by identifier, so it decides who waits on a loaded bus: emergency shutdown
    first, then safety limits and charge/discharge commands (and their acknowledgements, which
    share the function), bulk firmware blocks and logs last.

    Priority 0 is reserved for emergency shutdown (:data:`EMERGENCY_PRIORITY`): the priority
    bits are the identifier's most significant, so an emergency shutdown frame wins arbitration
    against every other secured frame whatever its node, direction, tier or function code, and
    escalation raising its tier cannot change that (docs/lifecycle.md §arbitration).
    """

    code: int
    name: str
    message_class: MessageClass
    priority: int = 3
    #: Tiers the function travels at when the protocol fixes them (resync); None: the policy decides.
    tiers: tuple[Tier, ...] | None = None

    def id_fields(self, node: int, direction: int, tier: Tier | None = None) -> CanIdFields:
        """The identifier fields of this function for ``node`` in ``direction`` (one place for all senders)."""
        return CanIdFields(function=self.code, node=node, priority=self.priority, direction=direction, tier=tier)


_TABLE = (
    Function(0x001, "ANNOUNCE", MessageClass.IDENTITY, 3),
    Function(0x002, "WITNESS", MessageClass.VALIDATION, 3),
    Function(0x003, "VALIDATION", MessageClass.VALIDATION, 3),
    Function(0x004, "CERTIFICATE", MessageClass.CERTIFICATE, 4),
    # The binding API (generate-keys, distribute-key, revoke) over ISO-TP for modules without an IP
    # stack: C2N requests, N2C answers (modbatt.transport.can_entity). Signed envelopes, so the
    # binding tier; class VALIDATION because that class is not looked up by function_for.
    Function(0x005, "BINDING_API", MessageClass.VALIDATION, 4),
    # Freshness resync of a paired channel (modbatt.nodes.channel). Class VALIDATION, like
    # BINDING_API, because function_for never looks that class up; the channel routes these
    # before the policy check. Priority 2: a link that lost sync carries nothing until it is back.
    Function(0x006, "RESYNC_REQUEST", MessageClass.VALIDATION, 2, (Tier.NONE,)),
    Function(0x007, "RESYNC_RESTART", MessageClass.VALIDATION, 2, (Tier.NONE,)),
    Function(0x008, "RESYNC_ANSWER", MessageClass.VALIDATION, 2, (Tier.EXCHANGE, Tier.PAIRING, Tier.BINDING)),
    Function(0x040, "VOLTAGE", MessageClass.VOLTAGE_TELEMETRY, 5),
    Function(0x041, "CURRENT", MessageClass.CURRENT_TELEMETRY, 5),
    Function(0x042, "TEMPERATURE", MessageClass.TEMPERATURE_TELEMETRY, 5),
    Function(0x043, "STATUS", MessageClass.STATUS, 5),
    Function(0x044, "HEARTBEAT", MessageClass.HEARTBEAT, 6),
    Function(0x045, "LOG", MessageClass.LOG, 7),
    Function(0x080, "CHARGE_COMMAND", MessageClass.CHARGE_COMMAND, 1),
    Function(0x081, "DISCHARGE_COMMAND", MessageClass.DISCHARGE_COMMAND, 1),
    Function(0x082, "SAFETY_LIMITS", MessageClass.SAFETY_LIMITS, 1),
    Function(0x083, "FIRMWARE_UPDATE", MessageClass.FIRMWARE_UPDATE, 6),
    Function(0x084, "CONFIGURATION", MessageClass.CONFIGURATION, 2),
    Function(0x085, "CRITICAL_TELEMETRY", MessageClass.CRITICAL_TELEMETRY, 1),
    # Upstream budget: emergency response < 10 ms (ModBatt docs/protocols/README.md §Timing
    # Constraints); the reserved priority makes bus access the smallest part of it.
    Function(0x086, "EMERGENCY_SHUTDOWN", MessageClass.EMERGENCY_SHUTDOWN, EMERGENCY_PRIORITY),
    Function(0x087, "CELL_BALANCING", MessageClass.CELL_BALANCING, 3),
)


def _checked(table: tuple[Function, ...]) -> tuple[Function, ...]:
    """The table, once its codes and names are unique and priority 0 is emergency shutdown's alone."""
    codes = [f.code for f in table]
    names = [f.name for f in table]
    if len(set(codes)) != len(codes) or len(set(names)) != len(names):
        raise AssertionError("function codes and names must be unique")
    if [f.name for f in table if f.priority == EMERGENCY_PRIORITY] != ["EMERGENCY_SHUTDOWN"]:
        raise AssertionError("priority 0 is reserved for EMERGENCY_SHUTDOWN (docs/lifecycle.md §arbitration)")
    return table


_TABLE = _checked(_TABLE)

#: Function code -> :class:`Function`.
FUNCTIONS = MappingProxyType({f.code: f for f in _TABLE})
_BY_CLASS = MappingProxyType({f.message_class: f for f in _TABLE if f.message_class is not MessageClass.VALIDATION})
_BY_NAME = MappingProxyType({f.name: f for f in _TABLE})
#: Function codes of the resync exchange (handled by the channel, never by the policy check).
RESYNC_FUNCTIONS = frozenset(_BY_NAME[n].code for n in ("RESYNC_REQUEST", "RESYNC_RESTART", "RESYNC_ANSWER"))


def function_for(message_class: MessageClass) -> Function:
    """The function that carries ``message_class`` (validation: see ``function_named``)."""
    if message_class is MessageClass.VALIDATION:
        return _BY_NAME["VALIDATION"]
    return _BY_CLASS[MessageClass(message_class)]


def function_named(name: str) -> Function:
    return _BY_NAME[name]


def message_class_of(code: int) -> MessageClass:
    """The message class a function code claims; an unknown code is ``malformed``."""
    f = FUNCTIONS.get(code)
    if f is None:
        raise VerificationError(Reason.MALFORMED, f"unknown function code 0x{code:03x}")
    return f.message_class
