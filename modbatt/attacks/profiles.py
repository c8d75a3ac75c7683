"""Attacks on the binding tier's authenticity under each protocol profile (docs/profiles.md).

Under ``seed`` a binding-tier unit carries an ECDSA signature with the sender's binding key; under
``efficient`` it carries an AEAD tag (4 bytes on classic CAN, 16 on FD) under keys from the
partners' binding MAC secret, which only the two holders of the binding private keys derive.

* ``binding_frame_forgery``: an attacker on the bus, without the binding keys, forges binding-tier
  units into the pack's channel: a captured unit with one byte changed (tag, ciphertext,
  freshness, identifier), a unit of random bytes in the right format, and (``efficient``) a unit
  sealed under keys from a secret it knows, the session's exchange secret (what a standard-mode
  controller that kept its keys holds). Refused as ``bad_signature`` (seed) or ``bad_mac``
  (efficient), on classic CAN and FD.
* ``profile_confusion``: one binding paired twice, once per profile. The two channels share the
  binding keys but not a format: a signed unit of the ``seed`` pairing (signed by the genuine
  binding key) offered to the ``efficient`` channel, and a sealed unit of the ``efficient`` pairing
  offered to the ``seed`` channel. Frames carry no profile marker, since the profile is fixed per
  pairing by the signed certificate; each channel refuses the other's frames as it refuses any
  forgery (``bad_mac``; ``malformed`` or ``bad_signature`` on the signed side).
"""

from __future__ import annotations

import hashlib

from ..can.ids import SEED_LAYOUT
from ..can.secured import Direction
from ..can.wiretime import CLASSIC, FD
from ..errors import Reason
from ..model.policy import MessageClass
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..model.tier import Tier
from ..nodes.channel import pump
from ..nodes.pairing_flow import pair_entities
from ._world import forged_sender, paired_pack
from .outcome import Outcome, attempt, counted, judge
from .registry import scenario

FAMILY = "spoofing"
_C = MessageClass.VALIDATION


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    index %= len(data)
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


@scenario(
    "binding_frame_forgery", family=FAMILY, profiles=("seed", "efficient"),
    expected={"seed": ("blocked", "bad_signature"), "efficient": ("blocked", "bad_mac")},
)  # fmt: skip
def binding_frame_forgery(seed: int | None = None, *, profile: ProtocolProfile = DEFAULT_PROFILE) -> Outcome:
    """Forge binding-tier units without the binding keys: altered, random, under the exchange secret (classic, FD)."""
    reasons = []
    counters: dict[str, int] = {}
    for bus in (CLASSIC, FD):
        pack = paired_pack(seed, profile=profile)
        tx, rx = pack.link(1, "module", profile=bus), pack.link(1, "pack", profile=bus)
        captured = tx.send(_C, b"module-01 status: ok")
        rx.receive(captured.can_id, captured.data, reassembled=True)
        fresh = tx.send(_C, b"module-01 status: ok")  # not yet seen by the pack: only its bytes change
        fv_at = -5 if profile.binding_mac and not bus.fd else 6  # classic AEAD: the FV byte before the tag
        # Arbitrary bytes of the right length (deterministic, so the matrix is; no key is involved).
        junk = hashlib.shake_256(b"attacker" + fresh.data).digest(len(fresh.data) - 7)
        tries = [
            (fresh.can_id, _flip(fresh.data, -1)),  # tag or signature
            (fresh.can_id, _flip(fresh.data, 8)),  # ciphertext, or the signed payload
            (fresh.can_id, _flip(fresh.data, fv_at, 0x02)),  # freshness: a value not seen yet
            (fresh.can_id + 1, fresh.data),  # another node's identifier (part of the nonce)
            (fresh.can_id, fresh.data[:7] + junk),  # made-up body and tag or signature
        ]
        if profile.binding_mac:
            # An insider with the exchange secret (a standard-mode controller) seals its own unit.
            secrets = pack.module(1).pairing_secrets(pack.pairing_id(1))
            assert secrets is not None
            forger = forged_sender(
                secrets, Tier.BINDING, direction=Direction(tx.sending_direction), profile=bus,
                secret=secrets.exchange_secret,
                start=10_000,
            )  # fmt: skip
            unit = forger.protect(SEED_LAYOUT.decode(fresh.can_id), b"module-01 status: ok")
            tries.append((unit.can_id, unit.data))
        reasons += [attempt(lambda i=i, d=d, r=rx: r.receive(i, d, reassembled=True)) for i, d in tries]
        # The genuine unit still goes through afterwards: nothing was accepted, no window moved.
        rx.receive(fresh.can_id, fresh.data, reassembled=True)
        counters.update(counted(f"{bus.name}.pack_link.rejects", rx.rejects))
        counters[f"{bus.name}.genuine_after"] = 1
        pack.close()
    counters["signature_on_binding_frames"] = int(not profile.binding_mac)
    expected = Reason.BAD_MAC if profile.binding_mac else Reason.BAD_SIGNATURE
    what = "AEAD tag under the binding MAC secret" if profile.binding_mac else "binding-key signature"
    return judge(reasons, expected, counters, detail=f"every forged unit fails the {what}")


@scenario("profile_confusion", family=FAMILY, expected=("blocked", "bad_mac"))
def profile_confusion(seed: int | None = None) -> Outcome:
    """Binding-tier units of a seed pairing offered to an efficient pairing of the same binding, and back."""
    pack = paired_pack(seed, profile=ProtocolProfile.SEED)
    dep, module, binding_id = pack.dep, pack.module(1), pack.records[1].binding_id
    seed_pid = pack.pairing_id(1)
    efficient = pair_entities(dep.controller, dep.pack, module, binding_id, profile=ProtocolProfile.EFFICIENT)
    eff_pid = efficient.certificate.metadata.pairing_id
    reasons = []
    counters: dict[str, int] = {}
    for bus in (CLASSIC, FD):
        seed_tx = module.channel(seed_pid, profile=bus)
        eff_tx = module.channel(eff_pid, profile=bus)
        seed_rx, eff_rx = dep.pack.channel(seed_pid, profile=bus), dep.pack.channel(eff_pid, profile=bus)
        pump(seed_tx, seed_rx)  # channels opened again (the second bus) resynchronise first
        pump(eff_tx, eff_rx)
        signed = seed_tx.send(_C, b"module-01 status: ok")
        sealed = eff_tx.send(_C, b"module-01 status: ok")
        longer = eff_tx.send(_C, bytes(80))  # long enough to parse as a signed unit
        # The identifiers are the same function and node: only the channel's profile differs.
        for rx, unit in ((eff_rx, signed), (seed_rx, sealed), (seed_rx, longer)):
            reasons.append(attempt(lambda rx=rx, u=unit: rx.receive(u.can_id, u.data, reassembled=True)))
        # Each channel's own frames still verify.
        seed_rx.receive(signed.can_id, signed.data, reassembled=True)
        eff_rx.receive(sealed.can_id, sealed.data, reassembled=True)
        counters.update(counted(f"{bus.name}.efficient_link.rejects", eff_rx.rejects))
        counters.update(counted(f"{bus.name}.seed_link.rejects", seed_rx.rejects))
        for channel in (seed_tx, eff_tx, seed_rx, eff_rx):
            channel.close()
    pack.close()
    counters["profiles_in_certificates"] = len(
        {pack.pairings[1].certificate.metadata.profile, efficient.certificate.metadata.profile}
    )
    return judge(reasons, Reason.BAD_MAC, counters, detail="frames carry no profile; the other format never verifies")
