"""Secured CAN frame vectors: every tier on every bus profile, valid and invalid
(docs/can-frames.md §2, docs/spec/frames). Seed identifier layout throughout.

A group fixes the tier, the bus profile, the key direction and the keys (a tier secret for the
symmetric tiers, a signing key and context for BINDING under the ``seed`` protocol profile, the
session's binding MAC secret for BINDING under ``efficient``: ``protocolProfile`` in the group).
A valid case gives the sender's inputs (identifier fields, freshness value, payload) and the
exact bytes it must produce, and what the receiver opens; an invalid case gives bytes and the
receiver state that must reject them, with the reason. ``accepted`` lists the freshness values
the receiver accepted before, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...can.ids import SEED_LAYOUT, CanIdFields
from ...can.secured import (
    CLASSIC,
    FD,
    MAX_PDU,
    BusProfile,
    Direction,
    SecuredReceiver,
    SecuredSender,
    TrafficKeys,
    derive_traffic_keys,
    frame_format,
)
from ...crypto.freshness import FreshnessCounter, MemoryCounterStore, ReplayWindow
from ...crypto.suite import P256_ORDER, PrivateKey, PublicKey, sha256
from ...errors import Reason, VerificationError
from ...model.profile import ProtocolProfile
from ...model.tier import Tier
from ._format import Group, VectorFile, fixed_key, h

__all__ = ["BINDING_CONTEXT", "RECEIVER", "check_case", "generate"]

#: Receiver parameters every group uses: replay window of 32, classic FV reconstruction 64 back.
RECEIVER = {"windowSize": 32, "behind": 64}
#: The BINDING signature context of a paired link: the pairing id ‖ the 16-byte session id
#: (:attr:`~modbatt.protocol.pairing.PairingSecrets.context`, docs/can-frames.md §2).
BINDING_CONTEXT = b"00000000-0000-4000-8000-000000000018" + sha256(b"modbatt-vectors/session-id")[:16]
_SECRETS = {
    Tier.EXCHANGE: sha256(b"modbatt-vectors/exchange-secret"),
    Tier.PAIRING: sha256(b"modbatt-vectors/pairing-secret"),
    Tier.BINDING: sha256(b"modbatt-vectors/binding-mac-secret"),  # the efficient profile's
}
_FIELDS = CanIdFields(function=0x42, node=0x03, priority=6, direction=1)
_RESERVED_BIT = 1 << 21
_FLAG_BIT = 1 << 17


def _keys(group: dict[str, Any], *, sending: bool) -> TrafficKeys:
    tier, direction = Tier(group["tierCode"]), Direction(group["direction"])
    if tier is Tier.NONE:
        return TrafficKeys.clear(direction)
    if tier is Tier.BINDING and group.get("protocolProfile") == "seed":
        context = bytes.fromhex(group["context"])
        if sending:
            signer = PrivateKey.from_scalar_bytes(bytes.fromhex(group["signerPrivateKey"]), reproducible=True)
            return TrafficKeys.binding(direction, signer=signer, context=context)
        return TrafficKeys.binding(
            direction, verifier=PublicKey.from_bytes(bytes.fromhex(group["signerPublicKey"])), context=context
        )
    return derive_traffic_keys(bytes.fromhex(group["tierSecret"]), tier, direction)


def _profile(group: dict[str, Any]) -> BusProfile:
    return FD if group["profile"] == "fd" else CLASSIC


def _receiver(group: dict[str, Any], case: dict[str, Any]) -> SecuredReceiver:
    window = (
        ReplayWindow(group["receiver"]["windowSize"])
        if case.get("synced", True)
        else ReplayWindow.unsynced(group["receiver"]["windowSize"])
    )
    for fv in case.get("accepted", []):
        window.accept(fv)
    return SecuredReceiver(
        SEED_LAYOUT, _profile(group), _keys(group, sending=False), window, behind=group["receiver"]["behind"]
    )


def _protect(group: dict[str, Any], fields: CanIdFields, fv: int, payload: bytes) -> tuple[int, bytes, bool]:
    sender = SecuredSender(
        SEED_LAYOUT, _profile(group), _keys(group, sending=True), FreshnessCounter(MemoryCounterStore(fv))
    )
    pdu = sender.protect(fields, payload)
    return pdu.can_id, pdu.data, pdu.single_frame


def _fields_json(fields: CanIdFields) -> dict[str, int]:
    return {
        "priority": fields.priority,
        "direction": fields.direction,
        "function": fields.function,
        "node": fields.node,
    }


class _Builder:
    """Adds cases to one group by running the package's sender and receiver."""

    def __init__(self, group: Group) -> None:
        self.g = group
        self.inputs = {"type": group.type, **group.inputs}

    def valid(self, comment: str, payload: bytes, fv: int = 0, *, accepted: tuple[int, ...] = (),
              flags: tuple[str, ...] = (), fields: CanIdFields = _FIELDS) -> tuple[int, bytes, bool]:  # fmt: skip
        tier = Tier(self.inputs["tierCode"])
        can_id, data, single = _protect(self.inputs, fields, fv, payload)
        opened = _receiver(self.inputs, {"accepted": list(accepted)}).open(can_id, data, reassembled=not single)
        self.g.add(
            comment,
            flags=flags,
            id=_fields_json(fields),
            canId=can_id,
            freshness=None if tier is Tier.NONE else fv,
            payload=h(payload),
            accepted=list(accepted),
            frame=h(data),
            singleFrame=single,
            opened=h(opened.payload),
        )
        return can_id, data, single

    def invalid(self, comment: str, can_id: int, data: bytes, reason: Reason, *, accepted: tuple[int, ...] = (),
                flags: tuple[str, ...] = (), reassembled: bool = False, synced: bool = True,
                result: str = "invalid") -> None:  # fmt: skip
        extra: dict[str, Any] = {} if synced else {"synced": False}
        self.g.add(
            comment,
            result,
            reason=reason if result == "invalid" else None,
            flags=flags,
            canId=can_id,
            accepted=list(accepted),
            frame=h(data),
            reassembled=reassembled,
            **extra,
        )


def _flip(data: bytes, index: int, mask: int = 1) -> bytes:
    index %= len(data)
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def _common_id_cases(b: _Builder, can_id: int, data: bytes, reassembled: bool) -> None:
    tier = Tier(b.inputs["tierCode"])
    b.invalid("reserved identifier bit 21 set", can_id | _RESERVED_BIT, data, Reason.MALFORMED,
              flags=("ReservedBits",), reassembled=reassembled)  # fmt: skip
    b.invalid("identifier wider than 29 bits", can_id | (1 << 29), data, Reason.MALFORMED,
              flags=("ReservedBits",), reassembled=reassembled)  # fmt: skip
    if tier is not Tier.NONE:
        b.invalid("flag bit cleared: level says protected, flag says clear", can_id & ~_FLAG_BIT, data,
                  Reason.MALFORMED, flags=("FlagLevelMismatch",), reassembled=reassembled)  # fmt: skip
        lower = SEED_LAYOUT.encode(CanIdFields(**_fields_json(_FIELDS), tier=Tier(int(tier) - 1)))
        b.invalid(f"identifier signals {Tier(int(tier) - 1).label} on a {tier.label} channel (downgrade)", lower,
                  data, Reason.TIER_TOO_LOW, flags=("WrongTier",), reassembled=reassembled)  # fmt: skip
    else:
        b.invalid("flag set with level 00", can_id | _FLAG_BIT, data, Reason.MALFORMED, flags=("FlagLevelMismatch",))
    if tier is not Tier.BINDING:
        higher = SEED_LAYOUT.encode(CanIdFields(**_fields_json(_FIELDS), tier=Tier(int(tier) + 1)))
        b.invalid(f"identifier signals {Tier(int(tier) + 1).label} on a {tier.label} channel", higher, data,
                  Reason.WRONG_LEVEL, flags=("WrongTier",), reassembled=reassembled)  # fmt: skip


def _none(b: _Builder, fd: bool) -> None:
    b.valid("empty payload", b"")
    can_id, data, _ = b.valid("8-byte payload", bytes(range(1, 9)))
    if fd:
        b.valid("9-byte payload padded to 12", bytes(range(1, 10)), flags=("FdPadding",))
        b.valid("64-byte payload", bytes(range(64)))
        b.invalid("13 bytes: not a CAN FD length", can_id, bytes(13), Reason.MALFORMED, flags=("WrongLength",))
        b.invalid("65 bytes in one frame", can_id, bytes(65), Reason.OVERSIZED, flags=("WrongLength",))
    else:
        b.invalid("9 bytes in one classic frame", can_id, bytes(9), Reason.OVERSIZED, flags=("WrongLength",))
    _common_id_cases(b, can_id, data, False)


def _classic_symmetric(b: _Builder) -> None:
    b.valid("empty payload", b"", 0)
    can_id, data, _ = b.valid("3 bytes: the most one classic frame carries", b"\x11\x22\x33", 1, accepted=(0,))
    b.valid("2 bytes, freshness 300 rebuilt from its low byte", b"\xa5\x5a", 300, accepted=(299,), flags=("Truncated",))
    b.valid("out of order within the window", b"\x01", 35, accepted=(40,), flags=("OutOfOrder",))
    b.valid("192 ahead: the furthest a truncated value reconstructs", b"\x02", 1192, accepted=(1000,),
            flags=("Truncated",))  # fmt: skip
    unit_id, unit, _ = b.valid("8-byte payload: a 13-byte multi-frame unit", bytes(range(8)), 2, accepted=(0, 1),
                               flags=("MultiFrame",))  # fmt: skip
    far_id, far = _at(b, 1193)
    b.invalid("193 ahead of the receiver: the low byte rebuilds 63 behind, outside the window", far_id, far,
              Reason.STALE, accepted=(1000,), flags=("Truncated", "Stale"))  # fmt: skip
    b.invalid("last tag byte flipped", can_id, _flip(data, -1), Reason.BAD_MAC, accepted=(0,), flags=("ModifiedTag",))
    b.invalid("first ciphertext byte flipped", can_id, _flip(data, 0), Reason.BAD_MAC, accepted=(0,),
              flags=("ModifiedCiphertext",))  # fmt: skip
    b.invalid("freshness byte changed to 2", can_id, data[:3] + b"\x02" + data[4:], Reason.BAD_MAC, accepted=(0,),
              flags=("ModifiedFreshness",))  # fmt: skip
    b.invalid("identifier changed (node 0x04)", can_id + 1, data, Reason.BAD_MAC, accepted=(0,),
              flags=("ModifiedId",))  # fmt: skip
    b.invalid("replayed: freshness 1 already accepted", can_id, data, Reason.REPLAY, accepted=(0, 1), flags=("Replay",))
    b.invalid("stale: 40 behind the highest accepted", *_at(b, 60), Reason.STALE, accepted=(100,), flags=("Stale",))
    b.invalid("receiver restarted and not yet resynchronised", can_id, data, Reason.STALE, synced=False,
              flags=("Stale",))  # fmt: skip
    b.invalid("4 bytes: shorter than FV + tag", can_id, data[:4], Reason.MALFORMED, flags=("WrongLength",))
    b.invalid("9 bytes in one classic frame", can_id, data + b"\x00", Reason.OVERSIZED, flags=("WrongLength",))
    b.invalid("multi-frame unit with its tag flipped", unit_id, _flip(unit, -1), Reason.BAD_MAC, accepted=(0, 1),
              reassembled=True, flags=("MultiFrame", "ModifiedTag"))  # fmt: skip
    _common_id_cases(b, can_id, data, False)


def _at(b: _Builder, fv: int) -> tuple[int, bytes]:
    can_id, data, _ = _protect(b.inputs, _FIELDS, fv, b"\x07")
    return can_id, data


def _fd_symmetric(b: _Builder) -> None:
    b.valid("empty payload: 24-byte frame, no padding", b"", 0)
    can_id, data, _ = b.valid("1 byte: 25 bytes padded to 32", b"\x42", 1, accepted=(0,), flags=("FdPadding",))
    b.valid("8 bytes: 32-byte frame", bytes(range(8)), 2, accepted=(0, 1))
    b.valid("40 bytes: the most one FD frame carries", bytes(range(40)), 3, accepted=(0, 1, 2))
    b.valid("41 bytes: a 65-byte multi-frame unit", bytes(range(41)), 4, accepted=(0, 1, 2, 3), flags=("MultiFrame",))
    b.valid("full 56-bit freshness on the wire: no reconstruction", b"\x01\x02", 1_000_000, accepted=(5,))
    b.invalid("last tag byte flipped", can_id, _flip(data, 24), Reason.BAD_MAC, accepted=(0,), flags=("ModifiedTag",))
    b.invalid(
        "freshness changed", can_id, _flip(data, 6, 2), Reason.BAD_MAC, accepted=(0,), flags=("ModifiedFreshness",)
    )
    b.invalid("pad count 7 -> 6 (authenticated)", can_id, data[:7] + b"\x06" + data[8:], Reason.BAD_MAC,
              accepted=(0,), flags=("FdPadding",))  # fmt: skip
    b.invalid("non-zero padding byte", can_id, _flip(data, -1), Reason.MALFORMED, accepted=(0,), flags=("FdPadding",))
    b.invalid("pad count larger than the frame allows", can_id, data[:7] + b"\x10" + data[8:], Reason.MALFORMED,
              accepted=(0,), flags=("FdPadding",))  # fmt: skip
    b.invalid("replayed: freshness 1 already accepted", can_id, data, Reason.REPLAY, accepted=(0, 1), flags=("Replay",))
    b.invalid("stale: 40 behind the highest accepted", *_at(b, 60), Reason.STALE, accepted=(100,), flags=("Stale",))
    b.invalid("receiver restarted and not yet resynchronised", can_id, data, Reason.STALE, synced=False,
              flags=("Stale",))  # fmt: skip
    b.invalid("25 bytes: not a CAN FD length", can_id, data[:25], Reason.MALFORMED, flags=("WrongLength",))
    b.invalid("20 bytes: shorter than FV + pad + tag", can_id, data[:20], Reason.MALFORMED, flags=("WrongLength",))
    b.invalid("65 bytes in one frame", can_id, data + bytes(33), Reason.OVERSIZED, flags=("WrongLength",))
    _common_id_cases(b, can_id, data, False)


def _binding_sealed(b: _Builder, fd: bool) -> None:
    """The binding tier under ``efficient``: the symmetric formats, always a multi-frame unit."""
    can_id, data, _ = b.valid("empty payload: a multi-frame unit even though it would fit a frame", b"", 0,
                              flags=("MultiFrame",))  # fmt: skip
    b.valid("3 bytes", b"\x11\x22\x33", 1, accepted=(0,), flags=("MultiFrame",))
    unit_id, unit, _ = b.valid("20 bytes", bytes(range(20)), 2, accepted=(0, 1), flags=("MultiFrame",))
    if not fd:
        b.valid("freshness 300 rebuilt from its low byte", b"\xa5\x5a", 300, accepted=(299,),
                flags=("MultiFrame", "Truncated"))  # fmt: skip
    tag_at = -1 if not fd else len(unit) - 1
    b.invalid("last tag byte flipped", unit_id, _flip(unit, tag_at), Reason.BAD_MAC, accepted=(0, 1),
              reassembled=True, flags=("MultiFrame", "ModifiedTag"))  # fmt: skip
    b.invalid("identifier changed (node 0x04)", unit_id + 1, unit, Reason.BAD_MAC, accepted=(0, 1), reassembled=True,
              flags=("MultiFrame", "ModifiedId"))  # fmt: skip
    b.invalid("replayed: freshness 2 already accepted", unit_id, unit, Reason.REPLAY, accepted=(0, 1, 2),
              reassembled=True, flags=("MultiFrame", "Replay"))  # fmt: skip
    b.invalid("receiver restarted and not yet resynchronised", unit_id, unit, Reason.STALE, synced=False,
              reassembled=True, flags=("MultiFrame", "Stale"))  # fmt: skip
    short = 4 if not fd else 20
    b.invalid(f"{short} bytes: shorter than the overhead", can_id, data[:short], Reason.MALFORMED, reassembled=True,
              flags=("WrongLength",))  # fmt: skip
    b.invalid("a unit offered as one frame: binding-tier units are multi-frame only", can_id, data,
              Reason.OVERSIZED, flags=("WrongLength",))  # fmt: skip
    signed = _binding_signed_unit(unit_id, bytes(range(20)), 2)
    b.invalid("a signed (seed profile) unit of the same payload", unit_id, signed, Reason.BAD_MAC, accepted=(0, 1),
              reassembled=True, flags=("MultiFrame", "OtherProfile"))  # fmt: skip
    _common_id_cases(b, can_id, data, True)


def _binding_signed_unit(can_id: int, payload: bytes, fv: int) -> bytes:
    """A well-formed seed-profile binding unit: FV ‖ payload ‖ a signature (of the frames signer)."""
    signer = fixed_key("binding/frames")
    fields = SEED_LAYOUT.decode(can_id)
    keys = TrafficKeys.binding(Direction.INITIATOR_TO_RESPONDER, signer=signer, context=BINDING_CONTEXT)
    pdu = SecuredSender(SEED_LAYOUT, CLASSIC, keys, FreshnessCounter(MemoryCounterStore(fv))).protect(fields, payload)
    return pdu.data


def _binding(b: _Builder) -> None:
    can_id, data, _ = b.valid("empty payload: FV + signature, 71 bytes", b"", 0, flags=("MultiFrame",))
    b.valid("8-byte payload", bytes(range(8)), 1, accepted=(0,), flags=("MultiFrame",))
    sig_at = len(data) - 64
    s = int.from_bytes(data[sig_at + 32 :], "big")
    high_s = data[: sig_at + 32] + (P256_ORDER - s).to_bytes(32, "big")
    b.invalid("high-S twin of the signature", can_id, high_s, Reason.MALFORMED, reassembled=True,
              flags=("HighS",))  # fmt: skip
    b.invalid("signature r flipped", can_id, _flip(data, sig_at), Reason.BAD_SIGNATURE, reassembled=True,
              flags=("ModifiedSignature",))  # fmt: skip
    b.invalid("freshness changed after signing", can_id, _flip(data, 6, 2), Reason.BAD_SIGNATURE, reassembled=True,
              flags=("ModifiedFreshness",))  # fmt: skip
    b.invalid("identifier changed (node 0x04)", can_id + 1, data, Reason.BAD_SIGNATURE, reassembled=True,
              flags=("ModifiedId",))  # fmt: skip
    b.invalid("replayed: freshness 0 already accepted", can_id, data, Reason.REPLAY, accepted=(0,), reassembled=True,
              flags=("Replay",))  # fmt: skip
    b.invalid("receiver restarted and not yet resynchronised", can_id, data, Reason.STALE, synced=False,
              reassembled=True, flags=("Stale",))  # fmt: skip
    b.invalid("70 bytes: shorter than FV + signature", can_id, data[:70], Reason.MALFORMED, reassembled=True,
              flags=("WrongLength",))  # fmt: skip
    b.invalid("a whole unit offered as one frame", can_id, data, Reason.OVERSIZED, flags=("WrongLength",))
    b.invalid(f"{MAX_PDU + 1}-byte unit", can_id, data + bytes(MAX_PDU + 1 - len(data)), Reason.OVERSIZED,
              reassembled=True, flags=("WrongLength",))  # fmt: skip
    _common_id_cases(b, can_id, data, True)


_CASES: dict[tuple[Tier, bool], Callable[[_Builder], None]] = {
    (Tier.NONE, False): lambda b: _none(b, False),
    (Tier.NONE, True): lambda b: _none(b, True),
    (Tier.EXCHANGE, False): _classic_symmetric,
    (Tier.PAIRING, False): _classic_symmetric,
    (Tier.EXCHANGE, True): _fd_symmetric,
    (Tier.PAIRING, True): _fd_symmetric,
    (Tier.BINDING, False): _binding,
    (Tier.BINDING, True): _binding,
}
_SEALED_BINDING: dict[bool, Callable[[_Builder], None]] = {
    False: lambda b: _binding_sealed(b, False),
    True: lambda b: _binding_sealed(b, True),
}
NOTES = {
    "MultiFrame": "a unit longer than one frame, carried by the multi-frame transport and opened reassembled",
    "Truncated": "classic frames carry the low 8 bits of the freshness value; the receiver rebuilds it",
    "OutOfOrder": "an older value inside the replay window, not seen before",
    "FdPadding": "FD frames are padded to a valid FD length; the pad count is authenticated, padding is zero",
    "ModifiedTag": "a tag byte changed",
    "ModifiedCiphertext": "a ciphertext byte changed",
    "ModifiedFreshness": "the freshness value on the wire changed",
    "ModifiedId": "the CAN identifier changed (it is part of the nonce)",
    "ModifiedSignature": "a signature byte changed",
    "HighS": "s replaced by n - s (ECDSA malleability): suite v1 takes low S only, a high S is malformed",
    "Replay": "a freshness value the receiver already accepted",
    "Stale": "a freshness value behind the window, or a receiver that has not resynchronised",
    "WrongLength": "a data length the tier or profile does not allow (DLC)",
    "ReservedBits": "identifier bits the layout reserves are set",
    "FlagLevelMismatch": "the encryption flag disagrees with the level (seed layout)",
    "WrongTier": "the identifier signals another tier than the channel's",
    "OtherProfile": "a unit in the other protocol profile's binding-tier format (docs/profiles.md)",
}


def generate() -> VectorFile:
    vf = VectorFile(
        "modbatt-can-secured-frames",
        [
            "Secured CAN frames per tier and bus profile (docs/spec/frames), seed identifier layout.",
            "Valid: id fields + freshness + payload -> canId and frame bytes (sender), and opened payload (receiver).",
            "Invalid: canId + frame + receiver state -> reason. accepted = freshness values accepted before, in order;",
            "synced false = a receiver after a restart.",
            "reassembled = the bytes came through the multi-frame transport.",
            "Binding groups name their protocolProfile: seed (signed) or efficient (the symmetric formats under",
            "traffic keys from the binding MAC secret, tierSecret; multi-frame only).",
        ],
        NOTES,
    )
    signer = fixed_key("binding/frames")
    for fd, profile in ((False, CLASSIC), (True, FD)):
        for tier in Tier:
            fmt = frame_format(tier, profile)
            inputs: dict[str, Any] = {
                "tier": tier.label,
                "tierCode": int(tier),
                "profile": profile.name,
                "dataField": profile.data_field,
                "layout": SEED_LAYOUT.name,
                "direction": int(Direction.INITIATOR_TO_RESPONDER),
                "format": {
                    "freshnessBits": fmt.fv_bits,
                    "tagBytes": fmt.tag_bytes,
                    "headerBytes": fmt.header_bytes,
                    "trailerBytes": fmt.trailer_bytes,
                    "room": fmt.room,
                },
                "receiver": RECEIVER,
            }
            if tier in (Tier.EXCHANGE, Tier.PAIRING):
                inputs["tierSecret"] = h(_SECRETS[tier])
            if tier is Tier.BINDING:
                inputs["protocolProfile"] = "seed"
                inputs["signerPrivateKey"] = h(signer.scalar_bytes())
                inputs["signerPublicKey"] = h(signer.public_key.to_bytes())
                inputs["context"] = h(BINDING_CONTEXT)
            _CASES[(tier, fd)](_Builder(vf.group("CanFrameTest", **inputs)))
        # The binding tier under the efficient profile: the symmetric format, keys from the binding MAC secret.
        fmt = frame_format(Tier.BINDING, profile, ProtocolProfile.EFFICIENT)
        inputs = {
            "tier": Tier.BINDING.label, "tierCode": int(Tier.BINDING), "profile": profile.name,
            "protocolProfile": "efficient", "dataField": profile.data_field, "layout": SEED_LAYOUT.name,
            "direction": int(Direction.INITIATOR_TO_RESPONDER),
            "format": {"freshnessBits": fmt.fv_bits, "tagBytes": fmt.tag_bytes, "headerBytes": fmt.header_bytes,
                       "trailerBytes": fmt.trailer_bytes, "room": fmt.room},
            "receiver": RECEIVER, "tierSecret": h(_SECRETS[Tier.BINDING]),
        }  # fmt: skip
        _SEALED_BINDING[fd](_Builder(vf.group("CanFrameTest", **inputs)))
    # The key direction is in the nonce and the key: one group the other way round.
    inputs = {**vf.groups[1].inputs, "direction": int(Direction.RESPONDER_TO_INITIATOR)}
    b = _Builder(vf.group("CanFrameTest", **inputs))
    b.valid("3 bytes, responder to initiator", b"\x11\x22\x33", 1, accepted=(0,))
    return vf


def check_case(group: dict[str, Any], case: dict[str, Any]) -> None:
    """Run the package's receiver (and, for valid cases, its sender) on ``case``."""
    if "payload" in case:
        fields = CanIdFields(**case["id"])
        fv = case["freshness"] or 0
        can_id, data, single = _protect(group, fields, fv, bytes.fromhex(case["payload"]))
        assert (can_id, data.hex(), single) == (case["canId"], case["frame"], case["singleFrame"]), case["tcId"]
        reassembled = not single
    else:
        reassembled = case["reassembled"]
    rx = _receiver(group, case)
    try:
        opened = rx.open(case["canId"], bytes.fromhex(case["frame"]), reassembled=reassembled)
    except VerificationError as exc:
        assert case["result"] in ("invalid", "acceptable"), (case["tcId"], exc)
        if case["result"] == "invalid":
            assert exc.reason.value == case["reason"], (case["tcId"], exc.reason.value, case["reason"])
        return
    assert case["result"] in ("valid", "acceptable"), (case["tcId"], "accepted")
    if case["result"] == "valid":
        assert opened.payload.hex() == case["opened"], case["tcId"]
        assert opened.freshness == case["freshness"], case["tcId"]
