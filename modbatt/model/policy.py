"""Selective encryption: which message classes need which tier (docs/seed.md §2.4 and §4.2).

A policy maps every :class:`MessageClass` to the minimum :class:`~modbatt.model.tier.Tier` it
may be sent at. Sending below the minimum is refused (``Reason.TIER_TOO_LOW``); sending above
it is allowed (escalation raises tiers, never lowers them). The default follows the seed:
critical operations at the pairing tier, routine monitoring at the exchange tier, validation,
certificates and identity at the binding tier. A pairing certificate carries its own policy,
which may allow routine classes in clear ("Exchange Key or Clear", docs/seed.md §4.2) but can never put
a critical class below the pairing tier.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import Reason, VerificationError
from ._fields import expect_map, malformed
from .tier import Tier

__all__ = [
    "COMMAND_CLASSES",
    "CRITICAL_CLASSES",
    "DEFAULT_POLICY",
    "MANAGEMENT_CLASSES",
    "ROUTINE_CLASSES",
    "EncryptionPolicy",
    "MessageClass",
]


class MessageClass(enum.StrEnum):
    """What a message is, for the tier policy."""

    # Critical operations (docs/seed.md §4.2) and medium-value events (§2.4): pairing key.
    CHARGE_COMMAND = "charge_command"
    DISCHARGE_COMMAND = "discharge_command"
    SAFETY_LIMITS = "safety_limits"
    FIRMWARE_UPDATE = "firmware_update"
    CONFIGURATION = "configuration"
    CRITICAL_TELEMETRY = "critical_telemetry"
    # Pack-management commands on the module bus (docs/lifecycle.md §5): pairing key, like the
    # other critical operations of the ModBatt workflow's §3.1 (named there).
    CELL_BALANCING = "cell_balancing"
    EMERGENCY_SHUTDOWN = "emergency_shutdown"
    # Routine monitoring: exchange key (or clear where a certificate allows it).
    VOLTAGE_TELEMETRY = "voltage_telemetry"
    CURRENT_TELEMETRY = "current_telemetry"
    TEMPERATURE_TELEMETRY = "temperature_telemetry"
    STATUS = "status"
    HEARTBEAT = "heartbeat"
    LOG = "log"
    # High-value events: binding keys.
    VALIDATION = "validation"
    CERTIFICATE = "certificate"
    IDENTITY = "identity"


#: The command classes: critical operations a partner asks for (what a certificate's
#: ``allowed_operations`` names, and what a level-5 command may carry).
COMMAND_CLASSES = frozenset(
    {
        MessageClass.CHARGE_COMMAND,
        MessageClass.DISCHARGE_COMMAND,
        MessageClass.SAFETY_LIMITS,
        MessageClass.FIRMWARE_UPDATE,
        MessageClass.CONFIGURATION,
        MessageClass.CELL_BALANCING,
        MessageClass.EMERGENCY_SHUTDOWN,
    }
)
#: Classes whose minimum can never be lowered below the pairing tier by a certificate.
CRITICAL_CLASSES = COMMAND_CLASSES | {MessageClass.CRITICAL_TELEMETRY}
#: The protocol's own traffic, at the binding tier.
MANAGEMENT_CLASSES = frozenset({MessageClass.VALIDATION, MessageClass.CERTIFICATE, MessageClass.IDENTITY})
#: Routine monitoring, at the exchange tier by default.
ROUTINE_CLASSES = frozenset(
    {
        MessageClass.VOLTAGE_TELEMETRY,
        MessageClass.CURRENT_TELEMETRY,
        MessageClass.TEMPERATURE_TELEMETRY,
        MessageClass.STATUS,
        MessageClass.HEARTBEAT,
        MessageClass.LOG,
    }
)


@dataclass(frozen=True)
class EncryptionPolicy:
    """Minimum tier per message class."""

    minimum: Mapping[MessageClass, Tier]

    def __post_init__(self) -> None:
        missing = set(MessageClass) - set(self.minimum)
        if missing:
            raise malformed(f"encryption policy lacks classes: {sorted(missing)}")
        for cls in CRITICAL_CLASSES:
            if self.minimum[cls] < Tier.PAIRING:
                raise VerificationError(Reason.TIER_TOO_LOW, f"{cls.value} must be at least at the pairing tier")
        for cls in MANAGEMENT_CLASSES:
            if self.minimum[cls] < Tier.BINDING:
                raise VerificationError(Reason.TIER_TOO_LOW, f"{cls.value} must be at the binding tier")
        object.__setattr__(self, "minimum", MappingProxyType(dict(self.minimum)))

    def check(self, message_class: MessageClass, tier: Tier) -> None:
        """Raise ``TIER_TOO_LOW`` if ``tier`` is below this class's minimum."""
        need = self.minimum[MessageClass(message_class)]
        if Tier(tier) < need:
            raise VerificationError(
                Reason.TIER_TOO_LOW, f"{message_class} needs at least the {need.label} tier, not {Tier(tier).label}"
            )

    def tier_for(self, message_class: MessageClass, *, floor: Tier = Tier.NONE) -> Tier:
        """The tier to send at: the class minimum, raised to ``floor`` (escalation)."""
        return max(self.minimum[MessageClass(message_class)], floor)

    def with_clear(self, *classes: MessageClass) -> EncryptionPolicy:
        """A copy allowing the given routine classes in clear."""
        return EncryptionPolicy({**self.minimum, **{MessageClass(c): Tier.NONE for c in classes}})

    def to_dict(self) -> dict[str, str]:
        return {cls.value: tier.label for cls, tier in sorted(self.minimum.items())}

    @classmethod
    def from_dict(cls, value: Any) -> EncryptionPolicy:
        m = expect_map(value, "encryption_policy", required={c.value for c in MessageClass})
        try:
            return cls({MessageClass(k): Tier[str(v).upper()] for k, v in m.items()})
        except KeyError:
            raise malformed("encryption_policy tiers are none, exchange, pairing or binding") from None


DEFAULT_POLICY = EncryptionPolicy(
    {
        **{c: Tier.PAIRING for c in CRITICAL_CLASSES},
        **{c: Tier.BINDING for c in MANAGEMENT_CLASSES},
        **{c: Tier.EXCHANGE for c in ROUTINE_CLASSES},
    }
)
