"""A pairing certificate's restrictions, enforced on every message the receiving end verified.

The certificate's clear metadata carries ``restrictions {allowed_operations, data_types,
max_messages_per_s}`` (docs/pairing.md, :class:`~modbatt.model.pairing.Restrictions`). The names
are message classes (:class:`~modbatt.model.policy.MessageClass` values): an *operation* is a
command class (:data:`OPERATION_CLASSES`), a *data type* a monitoring class (:data:`DATA_CLASSES`).
An empty list restricts nothing of its kind and a rate of 0 is unlimited, so a certificate
without restrictions behaves as before. A name that is not a class of its kind names nothing
(fail closed); the controller refuses to issue one (:func:`check_restrictions`).

Never restricted (docs/lifecycle.md §4 and §3): the protocol's own management classes
(validation, certificate, identity), and emergency shutdown, which a pack accepts authenticated
in every energisable state: no certificate can take it away, and a flood of other traffic cannot
exhaust its rate.

:class:`RestrictionGate` is sans-I/O: the caller passes ``now``. It is asked only after a message
verified (a forged frame never spends the sender's rate), and refuses ``unauthorized`` (an
operation or data type the certificate does not allow) or ``rate_limited`` (a token bucket of
``max_messages_per_s`` tokens refilled at that rate), counted in :attr:`RestrictionGate.rejections`
and by kind in :attr:`RestrictionGate.refused`. A refused message changes nothing but the counters.
"""

from __future__ import annotations

import collections
from typing import Final

from ..errors import ConfigError, Reason, VerificationError, counts_rejections
from ..model.pairing import Restrictions
from ..model.policy import COMMAND_CLASSES, MANAGEMENT_CLASSES, ROUTINE_CLASSES, MessageClass

__all__ = [
    "DATA_CLASSES",
    "MANAGEMENT_CLASSES",
    "OPERATION_CLASSES",
    "UNRESTRICTED",
    "RestrictionGate",
    "check_restrictions",
]

_C = MessageClass
#: Command classes: what ``allowed_operations`` names.
OPERATION_CLASSES: Final = COMMAND_CLASSES
#: Monitoring classes: what ``data_types`` names.
DATA_CLASSES: Final = ROUTINE_CLASSES | {_C.CRITICAL_TELEMETRY}
#: Classes no restriction applies to (kind or rate): management, and emergency shutdown.
_EXEMPT: Final = MANAGEMENT_CLASSES | {_C.EMERGENCY_SHUTDOWN}
UNRESTRICTED: Final = Restrictions()


def check_restrictions(restrictions: Restrictions) -> None:
    """Refuse (``ConfigError``, one line) restrictions naming a class that is not of its kind.

    For the issuer: a receiver treats such a name as naming nothing, which would refuse traffic
    the issuer probably meant to allow.
    """
    for field, kind in (("allowed_operations", OPERATION_CLASSES), ("data_types", DATA_CLASSES)):
        for name in getattr(restrictions, field):
            if name not in {c.value for c in kind}:
                choices = ", ".join(sorted(c.value for c in kind))
                raise ConfigError(f"restrictions.{field} names {name!r}; choose from {choices}")


class RestrictionGate:
    """One receiving end's enforcement of one pairing's restrictions (a rate bucket of its own)."""

    def __init__(self, restrictions: Restrictions = UNRESTRICTED) -> None:
        self.restrictions = restrictions
        self._operations = {c for c in OPERATION_CLASSES if c.value in restrictions.allowed_operations}
        self._data = {c for c in DATA_CLASSES if c.value in restrictions.data_types}
        rate = restrictions.max_messages_per_s
        self._rate = float(rate)
        # A one-second bucket: a sender may burst its per-second allowance, never more.
        self._tokens = float(rate)
        self._last: float | None = None
        #: Refused messages by reason (``unauthorized``, ``rate_limited``).
        self.rejections: collections.Counter[Reason] = collections.Counter()
        #: Refused messages by what they broke: ``operation``, ``data_type``, ``rate``.
        self.refused: collections.Counter[str] = collections.Counter()

    @property
    def unrestricted(self) -> bool:
        r = self.restrictions
        return not (r.allowed_operations or r.data_types or r.max_messages_per_s)

    def allows_class(self, message_class: MessageClass) -> bool:
        """Whether the certificate allows this class at all (the rate aside)."""
        cls = MessageClass(message_class)
        if cls in _EXEMPT:
            return True
        if cls in OPERATION_CLASSES:
            return not self.restrictions.allowed_operations or cls in self._operations
        return not self.restrictions.data_types or cls in self._data

    @counts_rejections
    def check(self, message_class: MessageClass, now: float) -> None:
        """Admit one verified message of ``message_class`` at ``now``, or raise and count.

        ``unauthorized`` for a class the certificate does not allow, ``rate_limited`` past
        ``max_messages_per_s``; neither spends a token.
        """
        cls = MessageClass(message_class)
        if cls in _EXEMPT:
            return
        if not self.allows_class(cls):
            kind = "operation" if cls in OPERATION_CLASSES else "data_type"
            self.refused[kind] += 1
            listed = "allowed_operations" if kind == "operation" else "data_types"
            raise VerificationError(Reason.UNAUTHORIZED, f"{cls.value} is not in the certificate's {listed}")
        if not self._rate:
            return
        if self._last is not None and now > self._last:
            self._tokens = min(self._rate, self._tokens + (now - self._last) * self._rate)
        self._last = now if self._last is None else max(self._last, now)
        if self._tokens < 1.0:
            self.refused["rate"] += 1
            raise VerificationError(
                Reason.RATE_LIMITED, f"over the certificate's {self.restrictions.max_messages_per_s} messages/s"
            )
        self._tokens -= 1.0

    def counters(self) -> dict[str, int]:
        """Refusals by kind, for monitors and the attack matrix."""
        return dict(self.refused)
