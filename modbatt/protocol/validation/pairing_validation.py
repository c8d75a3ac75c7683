"""Level 6, Pairing validation: completion, revocation or modification, signed by all three parties.

Flow (three parties, four messages)::

    C -> A, B  validation_challenge  {pairing_id, binding_id, event, changes, entity_a, entity_b,
                                      nonce, ts_ms, deadline_ms}                 signed: controller
    A -> B     pairing_validation    {challenge, initiator, pairing_mac, initiator_sig}
    B -> C     pairing_validation    … + countersig                              signed: A, then B
    C -> A, B  ledger statement      kind "validation", level 6                  signed: controller

``pairing_mac`` is an HMAC under a key derived from the pairing secret: the partner checks it
before countersigning, so both entities prove to each other that they hold the same pairing —
without the controller ever learning the secret. The controller checks both binding-key
signatures with the semi-public keys it recorded at binding, appends the statement to the
ledger (the node does the append) and hands it to both entities as the receipt. A challenge is
good once (``replay``) and until its deadline (``timeout``).

Protocol profiles (docs/profiles.md). Under ``seed`` the partner also checks the initiator's
signature before countersigning. Under ``efficient`` the pairing secret is bound to the session's
binding MAC secret, so ``pairing_mac`` alone shows the partner that the other binding-key holder
of this pairing made the message: the partners check each other by MAC only, and both still sign
for the controller, which checks both signatures as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ...crypto import labels
from ...crypto.rng import RandomSource, SystemRandom
from ...crypto.suite import PrivateKey, PublicKey, hkdf_sha256
from ...encoding import canonical_dumps
from ...errors import Reason, VerificationError
from ...model.statements import read_statement
from ..pairing import PairingSecrets
from ._common import (
    ID_BYTES,
    MAC_BYTES,
    Counted,
    Message,
    _check_mac,
    authenticator,
    b,
    counted,
    loads,
    mac,
    message,
    one_of,
    opt,
    small_map,
    wire,
)
from ._common import t as text_field
from ._common import u as uint
from .escalation import SignedEscalation, read_escalation

__all__ = [
    "EVENTS",
    "PairingValidation",
    "PairingValidationAuthority",
    "PairingValidationParty",
    "ValidationChallenge",
]

EVENTS = ("completion", "revocation", "modification")
#: The L6 budget is < 100 ms (docs/simulation.md §3); the deadline also covers slow module crypto
#: (seconds per ECDSA operation on the module MCU, docs/simulation.md §4).
DEFAULT_TIMEOUT_S = 30.0


@message("validation_challenge", 6)
class ValidationChallenge(Message):
    pairing_id: str = wire(text_field(64))
    binding_id: str = wire(text_field(64))
    event: str = wire(one_of(*EVENTS))
    changes: dict[str, Any] = wire(small_map)
    entity_a: str = wire(text_field(64))
    entity_b: str = wire(text_field(64))
    nonce: bytes = wire(b(ID_BYTES))
    ts_ms: int = wire(uint())
    deadline_ms: int = wire(uint())
    sig: bytes = authenticator(64)


@message("pairing_validation", 6)
class PairingValidation(Message):
    challenge: bytes = wire(b(max_len=1024))
    initiator: str = wire(text_field(64))
    pairing_mac: bytes = wire(b(MAC_BYTES))
    initiator_sig: bytes = wire(b(64))
    escalation: SignedEscalation | None = wire(opt(read_escalation), default=None)
    countersig: bytes = authenticator(0, 64)  # empty until the partner countersigns

    def initiator_bytes(self) -> bytes:
        """What the initiator signs: everything but its own signature and the countersignature."""
        body = self.body()
        del body["initiator_sig"]
        return canonical_dumps(body)


def _open_challenge(data: bytes, controller_key: PublicKey) -> ValidationChallenge:
    ch = ValidationChallenge.decode(data)
    try:
        controller_key.verify(labels.SIG_PAIRING_VALIDATION, ch.signed_bytes(), ch.sig)
    except VerificationError as exc:
        raise VerificationError(Reason.UNAUTHORIZED, f"challenge is not the controller's ({exc.reason})") from None
    return ch


class PairingValidationAuthority(Counted):
    """The controller's side: issues challenges, checks both entities' signatures."""

    def __init__(
        self, *, controller_key: PrivateKey, rng: RandomSource | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        super().__init__()
        self._key = controller_key
        self._rng = rng or SystemRandom()
        self.timeout_s = timeout_s
        self._pending: dict[bytes, tuple[ValidationChallenge, dict[str, PublicKey]]] = {}
        self._used: set[bytes] = set()

    def challenge(
        self,
        *,
        pairing_id: str,
        binding_id: str,
        entities: Mapping[str, PublicKey],
        event: str,
        now: float,
        changes: Mapping[str, Any] | None = None,
    ) -> bytes:
        """``entities``: device id → semi-public key, entity a first (from the binding record)."""
        (dev_a, dev_b) = list(entities)
        ch = ValidationChallenge(
            pairing_id, binding_id, event, dict(changes or {}), dev_a, dev_b, self._rng.token_bytes(ID_BYTES),
            int(now * 1000), int((now + self.timeout_s) * 1000),
        )  # fmt: skip
        ch = ch.authenticated(self._key.sign(labels.SIG_PAIRING_VALIDATION, ch.signed_bytes()))
        self._pending[ch.nonce] = (ch, dict(entities))
        return ch.encode()

    @counted
    def finalize(self, data: bytes, now: float) -> dict[str, Any]:
        """Check a countersigned validation; returns the fields of the level-6 ledger statement."""
        pv = PairingValidation.decode(data)
        ch = _open_challenge(pv.challenge, self._key.public_key)
        if ch.nonce in self._used:
            raise VerificationError(Reason.REPLAY, "this validation was already recorded")
        pending = self._pending.get(ch.nonce)
        if pending is None or pending[0].encode() != pv.challenge:
            raise VerificationError(Reason.WRONG_SESSION, "no such validation challenge outstanding")
        if now * 1000 > ch.deadline_ms:
            del self._pending[ch.nonce]
            raise VerificationError(Reason.TIMEOUT, "validation completed after its deadline")
        keys = pending[1]
        if pv.initiator not in keys:
            raise VerificationError(Reason.WRONG_PEER, f"{pv.initiator} is not part of this pairing")
        if len(pv.countersig) != 64:
            raise VerificationError(Reason.UNAUTHORIZED, "the partner has not countersigned")
        partner = next(d for d in keys if d != pv.initiator)
        keys[pv.initiator].verify(labels.SIG_PAIRING_VALIDATION, pv.initiator_bytes(), pv.initiator_sig)
        keys[partner].verify(labels.SIG_PAIRING_VALIDATION, pv.signed_bytes(), pv.countersig)
        del self._pending[ch.nonce]
        self._used.add(ch.nonce)
        return {
            "level": 6,
            "event": ch.event,
            "pairing_id": ch.pairing_id,
            "binding_id": ch.binding_id,
            "nonce": ch.nonce,
            "changes": ch.changes,
            "initiator": pv.initiator,
            "entity_signatures": {pv.initiator: pv.initiator_sig, partner: pv.countersig},
        }


class PairingValidationParty(Counted):
    """An entity's side: sign as initiator, or check and countersign as partner; check the receipt."""

    def __init__(
        self,
        *,
        secrets: PairingSecrets,
        device_id: str,
        partner_id: str,
        binding_key: PrivateKey,
        partner_key: PublicKey,
        controller_key: PublicKey,
    ) -> None:
        super().__init__()
        self.pairing_id = secrets.pairing_id
        self.device_id = device_id
        self.partner_id = partner_id
        self._key = binding_key
        self._partner_key = partner_key
        self._controller_key = controller_key
        self._mac_key = hkdf_sha256(
            secrets.pairing_secret, info=labels.PAIRING_VALIDATION_MAC + secrets.pairing_id.encode()
        )
        #: Whether the partner's signature is checked here too (``seed``) or only its MAC (``efficient``).
        self.checks_partner_signature = not secrets.profile.binding_mac
        self._signed: set[bytes] = set()

    def _challenge(self, data: bytes, now: float) -> ValidationChallenge:
        ch = _open_challenge(data, self._controller_key)
        if ch.pairing_id != self.pairing_id:
            raise VerificationError(Reason.WRONG_SESSION, "challenge for another pairing")
        if {ch.entity_a, ch.entity_b} != {self.device_id, self.partner_id}:
            raise VerificationError(Reason.WRONG_PEER, "challenge names other entities")
        if now * 1000 > ch.deadline_ms:
            raise VerificationError(Reason.TIMEOUT, "validation challenge past its deadline")
        if ch.nonce in self._signed:
            raise VerificationError(Reason.REPLAY, "already signed a validation for this challenge")
        return ch

    @counted
    def sign(self, challenge: bytes, now: float, *, escalation: SignedEscalation | None = None) -> bytes:
        ch = self._challenge(challenge, now)
        pv = PairingValidation(challenge, self.device_id, b"", b"", escalation)
        pv = dataclasses.replace(pv, pairing_mac=mac(self._mac_key, labels.PAIRING_VALIDATION_MAC, self._maced(pv)))
        pv = dataclasses.replace(pv, initiator_sig=self._key.sign(labels.SIG_PAIRING_VALIDATION, pv.initiator_bytes()))
        self._signed.add(ch.nonce)
        return pv.encode()

    def _maced(self, pv: PairingValidation) -> bytes:
        """What ``pairing_mac`` covers: the challenge (``seed``: the initiator's signature covers the
        rest); ``efficient``: every field but the MAC and the signatures, since the MAC is then the
        partner's only check."""
        if self.checks_partner_signature:
            return pv.challenge
        body = pv.body()
        del body["pairing_mac"], body["initiator_sig"]
        return canonical_dumps(body)

    @counted
    def countersign(self, data: bytes, now: float) -> bytes:
        pv = PairingValidation.decode(data)
        if pv.countersig:
            raise VerificationError(Reason.MALFORMED, "already countersigned")
        ch = self._challenge(pv.challenge, now)
        if pv.initiator != self.partner_id:
            raise VerificationError(Reason.WRONG_PEER, f"initiated by {pv.initiator}, not the partner")
        if self.checks_partner_signature:
            self._partner_key.verify(labels.SIG_PAIRING_VALIDATION, pv.initiator_bytes(), pv.initiator_sig)
        _check_mac(self._mac_key, labels.PAIRING_VALIDATION_MAC, self._maced(pv), pv.pairing_mac)
        self._signed.add(ch.nonce)
        return pv.authenticated(self._key.sign(labels.SIG_PAIRING_VALIDATION, pv.signed_bytes())).encode()

    @counted
    def accept_receipt(self, statement: bytes, challenge: bytes) -> dict[str, Any]:
        """Check the controller's ledger statement closes *this* validation."""
        body = read_statement(statement, self._controller_key)
        ch = ValidationChallenge.decode(challenge)
        if body.get("kind") != "validation" or body.get("level") != 6:
            raise VerificationError(Reason.WRONG_LEVEL, "receipt is not a level-6 validation")
        if body.get("nonce") != ch.nonce or body.get("pairing_id") != self.pairing_id:
            raise VerificationError(Reason.WRONG_SESSION, "receipt closes another validation")
        return body


def peek_challenge(data: bytes) -> dict[str, Any]:
    """The clear fields of a challenge (routing, logs); not a verification."""
    value = loads(data)
    return {k: value.get(k) for k in ("pairing_id", "event")} if isinstance(value, dict) else {}
