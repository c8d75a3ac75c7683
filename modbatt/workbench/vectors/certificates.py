"""Signature and certificate vectors: ECDSA P-256 with RFC 6979 nonces over label-framed
messages, and the pairing certificate's encoding, hashes and signature (docs/pairing.md)."""

from __future__ import annotations

from typing import Any

import cbor2

from ...crypto import labels
from ...crypto.suite import P256_ORDER, PrivateKey, PublicKey, sha256, signed_digest
from ...errors import EncodingError, Reason, VerificationError
from ...model.pairing import PairingCertificate
from ._format import VectorFile, h
from .keyschedule import all_labels, label_of
from .trace import Record

__all__ = ["check_case", "generate"]


def _framed(label: bytes, message: bytes, signer: bytes) -> bytes:
    """The signed bytes as the specification states them (docs/crypto.md §3, §3.1)."""
    return bytes([len(label)]) + label + (signer if label in labels.KEY_HIDING else b"") + message


def _high_s(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:], "big")
    return sig[:32] + (P256_ORDER - s).to_bytes(32, "big")


def generate(rec: Record) -> VectorFile:
    vf = VectorFile(
        "modbatt-signatures-and-certificates",
        [
            "SignatureTest: ECDSA P-256 / SHA-256 with RFC 6979 deterministic nonces, raw r || s (64 bytes),",
            "over framed = len(label) (1 byte) || label || message (docs/crypto.md §3), with the signer's",
            "33-byte compressed public key between label and message for a key-hiding label (flag KeyHiding,",
            "docs/crypto.md §3.1); s is at most n/2 (low S). One case per label the package signs with,",
            "recorded from a seeded deployment (so the messages are real ones).",
            "CertificateTest: a pairing certificate (deterministic CBOR, docs/pairing.md): signedBytes is the",
            "certificate map without 'signature'; certificateHash = SHA-256(signedBytes); metadataHash =",
            "SHA-256(metadata bytes).",
        ],
        {
            "HighS": "s replaced by n - s: valid to plain ECDSA, refused by suite v1 (low S only) as malformed",
            "KeyHiding": "a label signed by a semi-public key: the signer's public key is part of the signed bytes",
            "ModifiedSignature": "a bit of r or s flipped",
            "ModifiedContent": "a signed byte changed after signing",
            "UnknownField": "an extra map key",
            "WrongVersion": "v is not the protocol version",
            "NonCanonical": "the same value in a CBOR encoding that is not the deterministic one",
            "Blind": "a certificate for controller mode blind",
        },
    )
    seen: set[bytes] = set()
    groups: dict[tuple[bytes, bytes], Any] = {}
    for call in rec.signatures:
        if call.label in seen or call.label not in all_labels().values():
            continue
        seen.add(call.label)
        key = (call.private_key, call.public_key.to_bytes())
        if key not in groups:
            groups[key] = vf.group(
                "SignatureTest", privateKey=h(call.private_key), publicKey=h(call.public_key.to_bytes())
            )
        framed = _framed(call.label, call.message, call.public_key.to_bytes())
        groups[key].add(
            f"{label_of(call.label)}",
            flags=("KeyHiding",) if call.label in labels.KEY_HIDING else (),
            label=h(call.label),
            message=h(call.message),
            framed=h(framed),
            digest=h(sha256(framed)),
            signature=h(call.signature),
        )
    controller: PrivateKey = rec.facts["controller_key"]
    g = vf.group(
        "CertificateTest",
        controllerPrivateKey=h(controller.scalar_bytes()),
        controllerPublicKey=h(controller.public_key.to_bytes()),
        label=h(labels.SIG_PAIRING_CERTIFICATE),
    )
    for cert, flags in ((rec.facts["certificate"], ()), (rec.facts["blind_certificate"], ("Blind",))):
        g.add(
            f"pairing certificate, controller mode {cert.metadata.controller_mode.value}",
            flags=flags,
            certificate=h(cert.encode()),
            metadata=h(cert.metadata_bytes),
            signedBytes=h(cert._signed()),
            signature=h(cert.signature),
            certificateHash=h(cert.certificate_hash),
            metadataHash=h(cert.metadata_hash),
        )
    cert: PairingCertificate = rec.facts["certificate"]
    as_map = cbor2.loads(cert.encode())

    def bad(what: str, data: bytes, result: str, reason: Reason | None, flag: str) -> None:
        g.add(what, result, reason=reason, flags=(flag,), certificate=h(data))

    sig = cert.signature
    flipped = sig[:31] + bytes([sig[31] ^ 1]) + sig[32:]
    bad(
        "r flipped in its last bit",
        _with(as_map, signature=flipped),
        "invalid",
        Reason.BAD_SIGNATURE,
        "ModifiedSignature",
    )
    bad("high-S twin of the signature", _with(as_map, signature=_high_s(sig)), "invalid", Reason.MALFORMED, "HighS")
    sections = dict(as_map["sections"])
    sections["entity_b"] = sections["entity_b"][:-1] + bytes([sections["entity_b"][-1] ^ 1])
    bad("a sealed section changed after signing", _with(as_map, sections=sections), "invalid", Reason.BAD_SIGNATURE,
        "ModifiedContent")  # fmt: skip
    bad("an extra top-level field", _with(as_map, extra=1), "invalid", Reason.UNKNOWN_FIELD, "UnknownField")
    other = labels.PROTOCOL_VERSION - 1
    bad(f"v = {other}", _with(as_map, v=other), "invalid", Reason.MALFORMED, "WrongVersion")
    bad("map keys in insertion order, not canonical", cbor2.dumps(dict(reversed(list(as_map.items())))), "invalid",
        Reason.MALFORMED, "NonCanonical")  # fmt: skip
    return vf


def _with(value: dict[str, Any], **changes: Any) -> bytes:
    return cbor2.dumps({**value, **changes}, canonical=True)


def check_case(group: dict[str, Any], case: dict[str, Any]) -> None:
    kind = group["type"]
    if kind == "SignatureTest":
        key = PrivateKey.from_scalar_bytes(bytes.fromhex(group["privateKey"]), reproducible=True)
        assert key.public_key.to_bytes().hex() == group["publicKey"]
        label, message = bytes.fromhex(case["label"]), bytes.fromhex(case["message"])
        framed = _framed(label, message, key.public_key.to_bytes())
        assert framed.hex() == case["framed"]
        assert sha256(framed) == signed_digest(label, message, signer=key.public_key), case["tcId"]
        assert key.sign(label, message).hex() == case["signature"], f"tcId {case['tcId']}: not RFC 6979"
        key.public_key.verify(label, message, bytes.fromhex(case["signature"]))
        return
    if kind == "CertificateTest":
        controller = PublicKey.from_bytes(bytes.fromhex(group["controllerPublicKey"]))
        try:
            cert = PairingCertificate.decode(bytes.fromhex(case["certificate"]))
            cert.verify(controller)
        except (VerificationError, EncodingError) as exc:
            assert case["result"] in ("invalid", "acceptable"), (case["tcId"], exc)
            if case["result"] == "invalid":
                assert exc.reason.value == case["reason"], (case["tcId"], exc.reason)
            return
        assert case["result"] in ("valid", "acceptable"), case["tcId"]
        if case["result"] == "valid":
            assert cert.encode().hex() == case["certificate"]
            assert cert._signed().hex() == case["signedBytes"]
            assert cert.certificate_hash.hex() == case["certificateHash"]
            assert cert.metadata_hash.hex() == case["metadataHash"]
            signer = PrivateKey.from_scalar_bytes(bytes.fromhex(group["controllerPrivateKey"]), reproducible=True)
            assert cert.sign(signer).signature.hex() == case["signature"], "not RFC 6979"
        return
    raise AssertionError(f"unknown group type {kind}")
