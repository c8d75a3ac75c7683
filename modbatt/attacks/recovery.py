"""Passive recovery of semi-public keys from ECDSA signatures (public-key recovery, SEC 1 §4.1.6).

The seed (1.2) and DESIGN §3 make semi-public keys confidential: "shared only with the auth
controller and bound partner, never exposed publicly". But every ECDSA signature, together with
the message it signs, reveals its public key (two candidates; the ledger's commitment
``SHA-256(label ‖ binding_id ‖ point)`` tells which one is right). Binding keys sign messages that
travel in clear: the pairing offers of the half exchange (every signed field is in the offer) and
binding-tier CAN frames such as the level-1 announce (signature over the nonce, which the identifier
and the freshness value give, and the clear payload). A passive bus observer therefore learns both
semi-public keys of every pairing it watches.

Outcome: ``limit``. This is a documented limit of cipher suite v1 (ECDSA P-256, the seed's
"ECC-P256"), not a defence that failed: nothing sealed to a semi-public key is accepted without a
controller or binding-key signature, so no forgery follows, but confidentiality of the keys
against eavesdroppers is not provided. The way out is a suite whose signatures do not reveal the
key (Ed25519: ``s·B = R + H(R‖A‖M)·A`` puts the key inside the hash), or sealing every
binding-key signature to its receiver; see docs/threat-model.md (F1).

The recovery uses python-ecdsa (``ecdsa`` on PyPI), an attack tool here, never a protocol primitive.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from ..can.ids import SEED_LAYOUT
from ..crypto import labels
from ..crypto.suite import PublicKey
from ..encoding import canonical_dumps, strict_loads
from ..errors import ConfigError
from ..model.binding import key_commitment
from ..model.policy import MessageClass
from ..nodes.pairing_flow import PairingService, pair_over
from ..transport.http import InProcessEntityClient
from ._world import RecordingClient, paired_pack
from .outcome import Outcome
from .registry import scenario

FAMILY = "extraction"
_EXT = 1 << 31


def recover_public_keys(label: bytes, message: bytes, signature: bytes) -> list[bytes]:
    """Compressed points of every P-256 key under which ``signature`` verifies for ``message``."""
    try:
        from ecdsa import NIST256p, VerifyingKey
        from ecdsa.util import sigdecode_string
    except ImportError:  # an attack tool, not a dependency of the protocol
        raise ConfigError("semi_public_key_recovery needs python-ecdsa: pip install ecdsa") from None

    framed = bytes([len(label)]) + label + message  # modbatt's signature framing (docs/crypto.md §3)
    keys = VerifyingKey.from_public_key_recovery(
        signature, framed, NIST256p, hashfunc=hashlib.sha256, sigdecode=sigdecode_string
    )
    return [k.to_string("compressed") for k in keys]


def _from_offer(offer: bytes) -> tuple[bytes, bytes]:
    body: dict[str, Any] = dict(strict_loads(offer))
    signature = body.pop("signature")
    return canonical_dumps(body), signature


def _from_binding_frame(can_id: int, data: bytes, pairing_id: str) -> tuple[bytes, bytes]:
    fields = SEED_LAYOUT.decode(can_id)
    fv = int.from_bytes(data[:7], "big")
    nonce = ((fields.direction << 88) | ((_EXT | can_id) << 56) | fv).to_bytes(12, "big")  # all from the wire
    context = pairing_id.encode("ascii")  # signed into binding-tier frames; clear in the certificate
    return bytes([len(context)]) + context + nonce + data[7:-64], data[-64:]


@scenario("semi_public_key_recovery", family=FAMILY, expected=("limit", "ecdsa_public_key_recovery"))
def semi_public_key_recovery(seed: int | None = None) -> Outcome:
    """A passive observer of the pairing offers and one binding-tier frame recovers both semi-public keys."""
    pack = paired_pack(seed, pair=False)
    dep, module = pack.dep, pack.module(1)
    binding_id = pack.records[1].binding_id
    # A passive tap on the pairing's wire: everything the two entities exchange, as sent.
    wire = RecordingClient(
        InProcessEntityClient({n.access_data.endpoint: PairingService(n) for n in (dep.pack, module)})
    )
    pack.pairings[1] = pair_over(dep.controller, wire, binding_id)
    pid = pack.pairing_id(1)
    offer_a, offer_b = (base64.b64decode(payload["offer"]) for _, op, payload in wire.calls if op == "pairing-offer")
    announce = pack.link(1, "module").send(MessageClass.IDENTITY, b"module-01 here")
    captured = {
        "offer_a": (labels.SIG_PAIRING_OFFER, *_from_offer(offer_a)),
        "offer_b": (labels.SIG_PAIRING_OFFER, *_from_offer(offer_b)),
        "announce_frame": (labels.SIG_CAN_FRAME, *_from_binding_frame(announce.can_id, announce.data, pid)),
    }
    # The ledger (public to auditors) holds the commitments that pick the right candidate.
    record = pack.records[1]
    commitments = {
        key_commitment(binding_id, record.entity_a.semi_public_key),
        key_commitment(binding_id, record.entity_b.semi_public_key),
    }
    truth = {record.entity_a.semi_public_key.to_bytes(), record.entity_b.semi_public_key.to_bytes()}
    recovered: set[bytes] = set()
    confirmed = 0
    for label, message, signature in captured.values():
        for point in recover_public_keys(label, message, signature):
            if key_commitment(binding_id, PublicKey.from_bytes(point)) in commitments:
                recovered.add(point)
                confirmed += 1
    counters = {
        "messages_observed": len(captured),
        "keys_recovered": len(recovered & truth),
        "confirmed_by_ledger_commitment": confirmed,
        "false_candidates_kept": len(recovered - truth),
    }
    pack.close()
    if recovered & truth:
        return Outcome(
            "limit", "ecdsa_public_key_recovery", counters,
            "suite v1 limit: ECDSA signatures in clear (offers, binding-tier frames) reveal the semi-public keys",
        )  # fmt: skip
    return Outcome("blocked", "no_key_recovered", counters)
