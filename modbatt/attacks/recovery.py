"""Passive recovery of semi-public keys from ECDSA signatures (public-key recovery, SEC 1 §4.1.6).

Semi-public keys are shared only with the partner and the auth controller (docs/threat-model.md,
assets). A plain ECDSA signature, together with the message it signs, reveals its public key (two
candidates; the ledger's commitment ``SHA-256(label ‖ binding_id ‖ point)`` tells which one is
right), and binding keys sign messages that travel in clear: the pairing offers of the half
exchange (every signed field is in the offer) and binding-tier CAN frames such as the level-1
announce (signature over the nonce, which the identifier and the freshness value give, and the
clear payload).

Under the ``efficient`` profile (docs/profiles.md) binding-tier frames carry no signature at all
(an AEAD tag under keys from the partners' binding MAC secret), so the observer captures one
signature fewer; the pairing offers stay signed in every profile.

What stops it: every label a binding key signs under is key-hiding (``labels.KEY_HIDING``), so
the signed digest covers the signer's own compressed point (docs/crypto.md §3.1). Recovery needs
the digest, the digest needs the key. The observer here runs the recovery on the exact bytes it
captured (a control checks they verify under the true keys, so the capture is right), tries
every candidate for self-consistency (framing the candidate in must give the candidate back) and
against the ledger's commitments. Outcome ``blocked`` with reason ``key_hiding_signature`` when
no candidate matches; ``succeeded`` if any true key comes out.

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
from ..errors import ConfigError, VerificationError
from ..model.binding import key_commitment
from ..model.policy import MessageClass
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..nodes.pairing_flow import PairingService, pair_over
from ..protocol.pairing import SESSION_ID_BYTES, transcript_of_offers
from ..transport.http import InProcessEntityClient
from ._world import RecordingClient, paired_pack
from .outcome import Outcome
from .registry import scenario

FAMILY = "extraction"
_EXT = 1 << 31


def recover_public_keys(label: bytes, message: bytes, signature: bytes, *, signer_point: bytes = b"") -> list[bytes]:
    """Compressed points of every P-256 key under which ``signature`` verifies for the frame.

    The frame is modbatt's (docs/crypto.md §3): ``len ‖ label ‖ signer_point ‖ message``; an
    observer who does not know the key leaves ``signer_point`` empty or guesses one.
    """
    try:
        from ecdsa import NIST256p, VerifyingKey
        from ecdsa.util import sigdecode_string
    except ImportError:  # an attack tool, not a dependency of the protocol
        raise ConfigError("semi_public_key_recovery needs python-ecdsa: pip install ecdsa") from None

    framed = bytes([len(label)]) + label + signer_point + message
    keys = VerifyingKey.from_public_key_recovery(
        signature, framed, NIST256p, hashfunc=hashlib.sha256, sigdecode=sigdecode_string
    )
    return [k.to_string("compressed") for k in keys]


def _from_offer(offer: bytes) -> tuple[bytes, bytes]:
    body: dict[str, Any] = dict(strict_loads(offer))
    signature = body.pop("signature")
    return canonical_dumps(body), signature


def _from_binding_frame(can_id: int, data: bytes, context: bytes) -> tuple[bytes, bytes]:
    fields = SEED_LAYOUT.decode(can_id)
    fv = int.from_bytes(data[:7], "big")
    nonce = ((fields.direction << 88) | ((_EXT | can_id) << 56) | fv).to_bytes(12, "big")  # all from the wire
    return bytes([len(context)]) + context + nonce + data[7:-64], data[-64:]


@scenario(
    "semi_public_key_recovery", family=FAMILY, expected=("blocked", "key_hiding_signature"),
    profiles=("seed", "efficient"),
)  # fmt: skip
def semi_public_key_recovery(seed: int | None = None, *, profile: ProtocolProfile = DEFAULT_PROFILE) -> Outcome:
    """A passive observer of the pairing offers and one binding-tier frame tries to recover both semi-public keys."""
    pack = paired_pack(seed, pair=False, profile=profile)
    dep, module = pack.dep, pack.module(1)
    binding_id = pack.records[1].binding_id
    # A passive tap on the pairing's wire: everything the two entities exchange, as sent.
    wire = RecordingClient(
        InProcessEntityClient({n.access_data.endpoint: PairingService(n) for n in (dep.pack, module)})
    )
    pack.pairings[1] = pair_over(dep.controller, wire, binding_id, profile=profile)
    pid = pack.pairing_id(1)
    offer_a, offer_b = (base64.b64decode(payload["offer"]) for _, op, payload in wire.calls if op == "pairing-offer")
    # The binding-tier signature context: pairing id (clear in the certificate) ‖ session id, which
    # the two offers on the wire give (docs/pairing.md, "Sessions").
    context = pid.encode("ascii") + transcript_of_offers(offer_a, offer_b)[:SESSION_ID_BYTES]
    link = pack.link(1, "module")
    announce = link.send(MessageClass.IDENTITY, b"module-01 here")
    captured = {
        "offer_a": (labels.SIG_PAIRING_OFFER, *_from_offer(offer_a)),
        "offer_b": (labels.SIG_PAIRING_OFFER, *_from_offer(offer_b)),
    }
    signed_frames = 0 if link.protocol.binding_mac else 1  # efficient: a tag, no signature on the frame
    if signed_frames:
        captured["announce_frame"] = (
            labels.SIG_CAN_FRAME, *_from_binding_frame(announce.can_id, announce.data, context)
        )  # fmt: skip
    # The ledger (public to auditors) holds the commitments that would confirm a candidate.
    record = pack.records[1]
    keys = (record.entity_a.semi_public_key, record.entity_b.semi_public_key)
    commitments = {key_commitment(binding_id, k) for k in keys}
    truth = {k.to_bytes() for k in keys}
    verified_by_true_key = sum(any(_verifies(k, *c) for k in keys) for c in captured.values())
    if verified_by_true_key != len(captured):  # the observer must attack the real bytes, or it proves nothing
        pack.close()
        raise RuntimeError("semi_public_key_recovery captured bytes that no true key signed")
    candidates: set[bytes] = set()
    self_consistent: set[bytes] = set()
    confirmed = 0
    for label, message, signature in captured.values():
        for point in recover_public_keys(label, message, signature):
            candidates.add(point)
            # Key-hiding framing: a right guess would come back out of its own recovery.
            if point in recover_public_keys(label, message, signature, signer_point=point):
                self_consistent.add(point)
            if key_commitment(binding_id, PublicKey.from_bytes(point)) in commitments:
                confirmed += 1
    recovered = (candidates | self_consistent) & truth
    counters = {
        "messages_observed": len(captured),
        "binding_frames_observed": 1,
        "binding_frame_signatures": signed_frames,
        "verified_by_true_key": verified_by_true_key,
        "candidates_recovered": len(candidates),
        "candidates_self_consistent": len(self_consistent),
        "confirmed_by_ledger_commitment": confirmed,
        "keys_recovered": len(recovered),
    }
    pack.close()
    if recovered or confirmed:
        return Outcome(
            "succeeded", "ecdsa_public_key_recovery", counters,
            "a semi-public key came out of a signature seen in clear",
        )  # fmt: skip
    return Outcome(
        "blocked", "key_hiding_signature", counters,
        "key-hiding signatures: the digest covers the signer's key, so recovery yields only unrelated points",
    )  # fmt: skip


def _verifies(key: PublicKey, label: bytes, message: bytes, signature: bytes) -> bool:
    try:
        key.verify(label, message, signature)
    except VerificationError:
        return False
    return True
