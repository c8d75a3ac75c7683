"""The controller proves a bound entity it reaches remotely still holds its binding key (level 7).

The controller sends the level-7 ``binding_challenge`` to the entity's ``validate`` op through any
:class:`~modbatt.transport.http.EntityClient` (HTTP, MQTT, CAN: whatever the endpoint in the
binding record names) and checks the ``entity_proof`` it gets back against the semi-public key it
recorded for that entity: the right challenge (hash and nonce), the right binding, subject and
event, before the deadline, signed with the binding key (docs/validation.md, level 7; docs/controller.md).

This is the part of level 7 a controller can run against an entity elsewhere. The full level adds
the bound LCT's attestation and the ledger inclusion proof, which a partner checks offline
(:func:`modbatt.nodes.validation.level7`); the controller needs neither, it holds the record.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from ..crypto import labels
from ..crypto.rng import RandomSource
from ..crypto.suite import PublicKey
from ..errors import Reason, VerificationError
from ..protocol.validation import BindingValidationVerifier
from ..protocol.validation._common import digest
from ..protocol.validation.binding_validation import BindingChallenge, EntityProof
from ..transport.http import EntityClient
from .controller import AuthController

__all__ = ["prove_binding_key"]


def prove_binding_key(
    controller: AuthController,
    client: EntityClient,
    binding_id: str,
    device_id: str,
    *,
    clock: Callable[[], float],
    rng: RandomSource | None = None,
    event: str = "verification",
    endpoint: str | None = None,
) -> dict[str, Any]:
    """Challenge ``device_id`` of ``binding_id`` at the endpoint its record names; raise unless it proves its key.

    ``endpoint`` reaches the entity elsewhere (where a verified announce says it is now).

    Returns ``{"device_id", "endpoint", "challenge_bytes", "proof_bytes"}``. Raises
    :class:`~modbatt.errors.VerificationError` (classified) for an answer that does not prove the
    key, and :class:`~modbatt.errors.TransportError` when the entity cannot be reached.
    """
    record = controller.record(binding_id)
    if record is None:
        raise VerificationError(Reason.UNKNOWN_BINDING, f"no binding {binding_id}")
    if controller.is_revoked(binding_id):
        raise VerificationError(Reason.REVOKED, f"binding {binding_id} is revoked")
    entity = record.entity(device_id)
    verifier = BindingValidationVerifier(verifier_id="controller", controller_key=controller.public_key, rng=rng)
    challenge = verifier.challenge(binding_id=binding_id, subject=device_id, event=event, now=clock())
    sent = BindingChallenge.decode(challenge)
    endpoint = entity.access_data.endpoint if endpoint is None else endpoint
    answer = client.call(endpoint, "validate", {"message": base64.b64encode(challenge).decode()})
    try:
        proof_bytes = base64.b64decode(answer["message"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise VerificationError(Reason.MALFORMED, "the entity's answer is not a validation message") from None
    proof = EntityProof.decode(proof_bytes)
    if proof.nonce != sent.nonce or proof.challenge_hash != digest(challenge):
        raise VerificationError(Reason.WRONG_SESSION, "the entity answered another challenge")
    if (proof.binding_id, proof.subject, proof.event) != (binding_id, device_id, event):
        raise VerificationError(Reason.WRONG_SESSION, "the answer names another binding, subject or event")
    if clock() * 1000 > sent.deadline_ms:
        raise VerificationError(Reason.TIMEOUT, "the answer came after the challenge deadline")
    if proof.semi_public_key != entity.semi_public_key.to_bytes():
        raise VerificationError(Reason.WRONG_PEER, "the entity answered with a key other than the one recorded")
    PublicKey.from_bytes(proof.semi_public_key).verify(labels.SIG_BINDING_VALIDATION, proof.signed_bytes(), proof.sig)
    return {
        "device_id": device_id,
        "endpoint": endpoint,
        "challenge_bytes": len(challenge),
        "proof_bytes": len(proof_bytes),
    }
