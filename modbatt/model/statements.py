"""Controller-signed ledger statements: pairing issued, completed, revoked (and later events).

A statement is a CBOR map ``{"v": 2, "kind": ..., "timestamp": ..., <fields>, "authority": sig}``;
the authority signature (label ``sig/ledger-statement``) covers the map without
``authority``. Binding and revocation records keep their own type
(:mod:`modbatt.model.binding`); everything else the audit trail needs is a statement.
Statements never carry secrets or semi-public keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..crypto import labels
from ..crypto.suite import PrivateKey, PublicKey
from ..encoding import canonical_dumps, strict_loads
from ..errors import Reason, VerificationError
from ._fields import malformed, raw_bytes
from .binding import LEDGER_ENTRY_VERSION, format_timestamp

__all__ = ["KINDS", "read_statement", "sign_statement"]

#: ``pairing_renewed`` links a renewal to the pairing it replaces; ``entity_event`` is an event an
#: entity reported (queued while the controller was unreachable, docs/lifecycle.md §8).
KINDS = (
    "pairing_issued",
    "pairing_completed",
    "pairing_revoked",
    "pairing_renewed",
    "validation",
    "escalation",
    "entity_event",
)


def sign_statement(controller_key: PrivateKey, kind: str, fields: Mapping[str, Any], now: float) -> bytes:
    """The ledger entry bytes for one statement."""
    if kind not in KINDS:
        raise ValueError(f"unknown statement kind {kind!r}")
    body = {**fields, "v": LEDGER_ENTRY_VERSION, "kind": kind, "timestamp": format_timestamp(now)}
    return canonical_dumps(
        {**body, "authority": controller_key.sign(labels.SIG_LEDGER_STATEMENT, canonical_dumps(body))}
    )


def read_statement(entry: bytes, controller_key: PublicKey) -> dict[str, Any]:
    """Decode and verify a statement; raises ``VerificationError``."""
    value = strict_loads(entry)
    if not isinstance(value, dict) or not set(value) >= _REQUIRED:
        raise malformed("a statement is a map with v, kind, timestamp and authority")
    body = dict(value)
    authority = raw_bytes(body.pop("authority"), "authority", size=64)
    if body["kind"] not in KINDS:
        raise VerificationError(Reason.MALFORMED, f"not a statement kind: {body['kind']!r}")
    controller_key.verify(labels.SIG_LEDGER_STATEMENT, canonical_dumps(body), authority)
    return body


_REQUIRED = frozenset({"v", "kind", "timestamp", "authority"})
