"""Run a pairing between two entity nodes: certificate to both, halves swapped, completion to the callback.

This is the wiring the seed's flow implies (2.3): the controller issues the certificate; both
entities receive all of it; entity ``a`` starts the half exchange; entity ``b`` answers; ``a``
sends the completion proof to the controller's callback and learns the outcome. Here the
messages are delivered in process; the simulator carries the same bytes over CAN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..model.pairing import PairingCertificate
from ..protocol.pairing import PairingSecrets
from .controller import AuthController
from .entity import EntityNode

__all__ = ["PairingOutcome", "pair_entities"]


@dataclass(frozen=True)
class PairingOutcome:
    """A completed pairing: its certificate, where completion sits in the ledger, both ends' secrets."""

    certificate: PairingCertificate
    ledger_index: int
    secrets: dict[str, PairingSecrets]  # by device id
    offer_sizes: tuple[int, int]


def pair_entities(
    controller: AuthController, a: EntityNode, b: EntityNode, binding_id: str, **issue: Any
) -> PairingOutcome:
    """Issue a certificate for ``binding_id`` and pair ``a`` (role a) with ``b`` (role b)."""
    cert = controller.issue_pairing(binding_id, **issue)
    meta = cert.metadata
    if meta.entity_a.device_id != a.access_data.device_id:
        a, b = b, a  # the certificate decides who initiates
    data = cert.encode()
    initiator = a.accept_certificate(data)
    b.accept_certificate(data)
    offer_a = a.pairing_start(meta.pairing_id)
    offer_b = b.pairing_offer(meta.pairing_id, offer_a)
    assert offer_b is not None
    a.pairing_offer(meta.pairing_id, offer_b)
    assert initiator.completion is not None
    index = controller.complete_pairing(initiator.completion)
    initiator.confirm()
    secrets = {}
    for node in (a, b):
        s = node.pairing_secrets(meta.pairing_id)
        assert s is not None
        secrets[node.access_data.device_id] = s
    return PairingOutcome(cert, index, secrets, (len(offer_a), len(offer_b)))
