"""Every error modbatt raises, under one base class.

Verification failures carry a :class:`Reason` so that callers (and the attack
suite) can count *why* something was rejected, not merely that it was.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "AuthorizationError",
    "ConfigError",
    "EncodingError",
    "KeyStoreError",
    "LedgerError",
    "ModbattError",
    "ProtocolError",
    "Reason",
    "ReproducibleModeError",
    "TransportError",
    "VerificationError",
    "counts_rejections",
]


class Reason(enum.StrEnum):
    """Why a message, key or record was rejected (docs/architecture.md, Errors: classified failures)."""

    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    UNKNOWN_FIELD = "unknown_field"
    INVALID_POINT = "invalid_point"
    BAD_SIGNATURE = "bad_signature"
    BAD_MAC = "bad_mac"
    BAD_PROOF = "bad_proof"
    STALE = "stale"
    REPLAY = "replay"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_PEER = "wrong_peer"
    WRONG_SESSION = "wrong_session"
    WRONG_LEVEL = "wrong_level"
    UNAUTHORIZED = "unauthorized"
    DUPLICATE = "duplicate"
    REVOKED = "revoked"
    EXHAUSTED = "exhausted"
    TIER_TOO_LOW = "tier_too_low"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    UNKNOWN_BINDING = "unknown_binding"
    HASH_MISMATCH = "hash_mismatch"
    KEY_MISMATCH = "key_mismatch"
    WRONG_STATE = "wrong_state"  # not accepted in the pack's current security state (docs/lifecycle.md)
    UNROUTABLE = "unroutable"  # no gateway route for this frame (docs/gateway.md)


class ModbattError(Exception):
    """Base class of every error raised by modbatt."""


class ConfigError(ModbattError):
    """A configuration value or command-line argument is unusable."""


class ReproducibleModeError(ModbattError):
    """Seeded (reproducible) randomness was requested where it is not allowed."""


class EncodingError(ModbattError, ValueError):
    """Bytes that do not decode as the expected structure."""

    reason = Reason.MALFORMED


class VerificationError(ModbattError):
    """Untrusted input failed a check; :attr:`reason` says which one."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = Reason(reason)
        self.detail = detail
        super().__init__(f"{self.reason.value}: {detail}" if detail else self.reason.value)


class AuthorizationError(VerificationError):
    """The requester is not entitled to ask for this."""

    def __init__(self, detail: str = "", reason: Reason = Reason.UNAUTHORIZED) -> None:
        super().__init__(reason, detail)


class ProtocolError(ModbattError):
    """A protocol machine was driven out of order (a local programming error)."""


class KeyStoreError(ModbattError):
    """A key store cannot be opened, read or written; the file on disk is unchanged."""


class LedgerError(ModbattError):
    """A ledger cannot be opened, appended to or verified."""


class TransportError(ModbattError):
    """An endpoint could not be reached or answered outside the protocol.

    :attr:`reason` classifies it where the transport knows why (``Reason.TIMEOUT``: no answer
    within the retry policy, or the bus refused to send, e.g. in bus-off); ``None`` otherwise.
    """

    def __init__(self, detail: str = "", reason: Reason | None = None) -> None:
        self.reason = None if reason is None else Reason(reason)
        super().__init__(detail)


_F = TypeVar("_F", bound=Callable[..., Any])


def counts_rejections(method: _F) -> _F:
    """Count a :class:`VerificationError` raised by ``method`` in ``self.rejections`` (a Counter), then re-raise.

    Every machine and node exposes such failure counters so monitors, notebooks and the attack
    matrix can see *why* input was refused (docs/architecture.md, Errors).
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except VerificationError as exc:
            self.rejections[exc.reason] += 1
            raise
        except EncodingError as exc:
            # Undecodable bytes (a garbage offer, certificate or notice) are rejections too, with
            # reason malformed/oversized; uncounted, an attacker could probe without moving a counter.
            self.rejections[exc.reason] += 1
            raise

    return wrapper  # type: ignore[return-value]
