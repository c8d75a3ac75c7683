"""ECIES vectors: sealing to a semi-public key with fixed ephemeral keys (docs/crypto.md §4)."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ...crypto import labels
from ...crypto.rng import ScriptedRandom
from ...crypto.suite import (
    COMPRESSED_POINT_BYTES,
    PrivateKey,
    PublicKey,
    _seal_key,
    open_sealed,
    seal_to_semi_public_key,
)
from ...errors import Reason, VerificationError
from ._format import VectorFile, fixed_key, h

__all__ = ["check_case", "generate"]

#: A 33-byte string with a valid prefix whose x is not on P-256 (x³ − 3x + b is not a square for x = 1).
_OFF_CURVE = b"\x02" + (1).to_bytes(32, "big")


def _seal(recipient: PublicKey, eph: PrivateKey, plaintext: bytes, context: bytes) -> bytes:
    return seal_to_semi_public_key(recipient, plaintext, context=context, rng=ScriptedRandom([eph.scalar_bytes()]))


def generate() -> VectorFile:
    vf = VectorFile(
        "modbatt-ecies-p256-hkdf-aes256gcm",
        [
            "Sealing to a semi-public key (docs/crypto.md §4): E = e*G (compressed), Z = x(e*R),",
            "K = HKDF-SHA256(Z, salt absent, info = 'modbatt/v2/ecies/key' || E || compressed(R), 32),",
            "box = E || AES-256-GCM(K, nonce = 12 zero bytes, plaintext, aad = context).",
            "The ephemeral scalar is fixed here; a real sealer draws it fresh for every box.",
        ],
        {
            "ModifiedTag": "a byte of the GCM tag or ciphertext changed",
            "WrongContext": "opened with another context (associated data) than it was sealed with",
            "InvalidPoint": "the ephemeral point is not a valid P-256 point",
            "Truncated": "shorter than the 49-byte overhead",
        },
    )
    recipient = fixed_key("ecies/recipient")
    g = vf.group(
        "EciesTest",
        recipientPrivateKey=h(recipient.scalar_bytes()),
        recipientPublicKey=h(recipient.public_key.to_bytes()),
        recipientPublicKeyUncompressed=h(
            recipient.public_key._key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        ),
    )
    plain_cases = [
        (b"", labels.SEAL_PARTNER_KEY, "empty plaintext"),
        (bytes(range(33)), labels.SEAL_PARTNER_KEY, "a 33-byte semi-public key sealed to the partner"),
        (b"\x5a" * 32, labels.SEAL_PAIRING_SECTION + b"pairing-1" + b"a", "a pairing-section half"),
    ]
    boxes = []
    for i, (plaintext, context, what) in enumerate(plain_cases):
        eph = fixed_key(f"ecies/ephemeral-{i}")
        box = _seal(recipient.public_key, eph, plaintext, context)
        shared = eph.exchange(recipient.public_key)
        key = _seal_key(shared, eph.public_key.to_bytes(), recipient.public_key.to_bytes())
        boxes.append((plaintext, context, box))
        g.add(
            what,
            ephemeralPrivateKey=h(eph.scalar_bytes()),
            ephemeralPublicKey=h(eph.public_key.to_bytes()),
            sharedSecret=h(shared),
            key=h(key),
            context=h(context),
            plaintext=h(plaintext),
            box=h(box),
        )
    plaintext, context, box = boxes[1]

    def bad(what: str, data: bytes, reason: Reason, flag: str, ctx: bytes = context) -> None:
        g.add(what, "invalid", reason=reason, flags=(flag,), context=h(ctx), box=h(data))

    bad("last tag byte flipped", box[:-1] + bytes([box[-1] ^ 1]), Reason.BAD_MAC, "ModifiedTag")
    bad("first ciphertext byte flipped", box[:33] + bytes([box[33] ^ 0x80]) + box[34:], Reason.BAD_MAC, "ModifiedTag")
    bad("opened under another context", box, Reason.BAD_MAC, "WrongContext", labels.SEAL_PAIRING_SECTION)
    bad("ephemeral prefix 0x05", b"\x05" + box[1:], Reason.INVALID_POINT, "InvalidPoint")
    bad("ephemeral x not on the curve", _OFF_CURVE + box[COMPRESSED_POINT_BYTES:], Reason.INVALID_POINT, "InvalidPoint")
    bad("48 bytes: shorter than E and the tag", box[:48], Reason.MALFORMED, "Truncated")
    return vf


def check_case(group: dict[str, Any], case: dict[str, Any]) -> None:
    recipient = PrivateKey.from_scalar_bytes(bytes.fromhex(group["recipientPrivateKey"]), reproducible=True)
    assert recipient.public_key.to_bytes().hex() == group["recipientPublicKey"]
    assert PublicKey.from_bytes(bytes.fromhex(group["recipientPublicKeyUncompressed"])) == recipient.public_key
    context, box = bytes.fromhex(case["context"]), bytes.fromhex(case["box"])
    try:
        plaintext = open_sealed(recipient, box, context=context)
    except VerificationError as exc:
        assert case["result"] == "invalid" and exc.reason.value == case["reason"], (case["tcId"], exc.reason)
        return
    assert case["result"] == "valid", case["tcId"]
    assert plaintext.hex() == case["plaintext"]
    eph = PrivateKey.from_scalar_bytes(bytes.fromhex(case["ephemeralPrivateKey"]), reproducible=True)
    assert _seal(recipient.public_key, eph, plaintext, context) == box
    assert eph.exchange(recipient.public_key).hex() == case["sharedSecret"]
