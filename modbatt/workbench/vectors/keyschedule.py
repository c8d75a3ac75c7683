"""Key-schedule vectors: every label of suite v1, every HKDF derivation the package makes, and
the CAN traffic keys per tier and direction (docs/vectors.md)."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM

from ...can.secured import CLASSIC_TAG_BYTES, Direction, derive_traffic_keys
from ...crypto import labels
from ...crypto.suite import PrivateKey, PublicKey, hkdf_sha256
from ...model.tier import Tier
from ...protocol.pairing import derive_binding_mac_secret
from ._format import VectorFile, h
from .trace import HkdfCall, Record

__all__ = ["LABEL_USES", "all_labels", "check_case", "generate", "label_of"]

#: Calls kept per label (distinct inputs, first seen first).
PER_LABEL = 2
#: How labels that are neither an HKDF info nor a signature label are used (docs/crypto.md).
LABEL_USES = {
    "SEAL_PARTNER_KEY": "seal-context",
    "SEAL_PAIRING_SECTION": "seal-context",
    "PAIRING_SESSION_TRANSCRIPT": "hash",
    "COMMIT_SEMI_PUBLIC_KEY": "hash",
    "WITNESS_ACCESS_HASH": "hash",
    "PKCS11_PIN_CHECK": "hash",
    "KEY_ID": "hash",
    "LCT_ID": "hash",
    "REPRODUCIBLE_STREAM": "hash",
    "KEYSTORE_BLOB": "aead-aad",
}
#: Labels only the efficient protocol profile derives with.
_EFFICIENT_LABELS = frozenset({"PAIRING_BINDING_MAC_SECRET", "PAIRING_BOUND_TRAFFIC_SECRET", "HANDSHAKE_BINDING_MAC"})
_PROBE_NONCE = bytes(12)
_PROBE = b"modbatt traffic-key probe"


def all_labels() -> dict[str, bytes]:
    """Every label of :mod:`modbatt.crypto.labels` by constant name, in definition order."""
    return {
        name: value
        for name, value in vars(labels).items()
        if name.isupper() and not name.startswith("_") and isinstance(value, bytes) and value.startswith(b"modbatt/")
    }


def label_of(info: bytes) -> str:
    """The name of the longest label that ``info`` starts with."""
    best = max((v, n) for n, v in all_labels().items() if info.startswith(v))
    return best[1]


def _uses(rec: Record) -> dict[str, str]:
    hkdf = {label_of(c.info) for c in rec.hkdf}
    sig = {label_of(s.label) for s in rec.signatures if s.label in all_labels().values()}
    out = {}
    for name in all_labels():
        if name in hkdf:
            out[name] = "hkdf-info"
        elif name in sig or name.startswith("SIG_"):
            out[name] = "signature"
        else:
            out[name] = LABEL_USES.get(name, "unclassified")
    return out


def _hkdf_case(call: HkdfCall, name: str) -> dict[str, Any]:
    label = all_labels()[name]
    return {
        "ikm": h(call.ikm),
        "salt": None if call.salt is None else h(call.salt),
        "info": h(call.info),
        "infoAfterLabel": h(call.info[len(label) :]),
        "length": call.length,
        "okm": h(call.okm),
        "derivedBy": call.caller,
    }


def generate(rec: Record) -> VectorFile:
    vf = VectorFile(
        "modbatt-key-schedule",
        [
            "Labels of cipher suite v1 and every HKDF-SHA256 (RFC 5869) derivation modbatt makes, recorded",
            "from a seeded deployment that binds, pairs (standard, blind and under the efficient profile) and runs",
            "validation levels 1-7 under both profiles.",
            "info = label || infoAfterLabel; a null salt is HKDF's default (32 zero bytes).",
            "TrafficKeyTest: the CAN keys of a symmetric tier: HKDF(tierSecret, info = 'modbatt/v2/can/traffic-key'",
            "|| tier (1 byte) || direction (1 byte) || mode),",
            "mode 'aes-256-ccm-32' (classic) or 'aes-256-gcm-128' (FD); the binding tier (3) under the efficient",
            "protocol profile, from the session's binding MAC secret.",
            "BindingMacSecretTest: the efficient profile's binding MAC secret of a session = HKDF(ECDH(own",
            "binding key, partner's), info = 'modbatt/v2/pairing/binding-mac-secret' || pairing id || session id",
            "|| Q_a || Q_b); both roles derive the same secret.",
        ],
        {
            "Blind": "controller mode blind: the derivation mixes in an ECDH secret the controller lacks",
            "KeyStore": "key-store KEK/KCV derivation from a key file (no stretching KDF)",
            "Efficient": "the efficient protocol profile (docs/profiles.md)",
        },
    )
    uses = _uses(rec)
    g = vf.group("LabelTest")
    for name, value in all_labels().items():
        g.add(f"label {name}", constant=name, ascii=value.decode("ascii"), bytes=h(value), use=uses[name])
    by_label: dict[str, list[HkdfCall]] = {}
    for call in rec.hkdf:
        kept = by_label.setdefault(label_of(call.info), [])
        if len(kept) < PER_LABEL and all((c.ikm, c.info, c.salt) != (call.ikm, call.info, call.salt) for c in kept):
            kept.append(call)
    for name, calls in by_label.items():
        g = vf.group("HkdfLabelTest", label=name, labelBytes=h(all_labels()[name]))
        flags: tuple[str, ...] = ("Blind",) if "BLIND" in name else ("KeyStore",) if "KEYSTORE" in name else (
            ("Efficient",) if name in _EFFICIENT_LABELS else ()
        )
        for i, call in enumerate(calls):
            g.add(
                f"{name} derivation {i + 1} ({call.caller.rsplit('.', 1)[-1]})", flags=flags, **_hkdf_case(call, name)
            )
    secrets, efficient = rec.facts["secrets"], rec.facts["efficient_secrets"]
    tiers = ((Tier.EXCHANGE, secrets.exchange_secret, "seed"), (Tier.PAIRING, secrets.pairing_secret, "seed"),
             (Tier.BINDING, efficient.binding_secret, "efficient"))  # fmt: skip
    for tier, secret, profile in tiers:
        g = vf.group(
            "TrafficKeyTest", tier=tier.label, tierCode=int(tier), tierSecret=h(secret), protocolProfile=profile
        )
        for direction in Direction:
            info = labels.CAN_TRAFFIC_KEY + bytes([int(tier), int(direction)])
            g.add(
                f"{tier.label} keys, direction {direction.name.lower()}",
                direction=int(direction),
                classicInfo=h(info + b"aes-256-ccm-32"),
                classicKey=h(hkdf_sha256(secret, info=info + b"aes-256-ccm-32")),
                fdInfo=h(info + b"aes-256-gcm-128"),
                fdKey=h(hkdf_sha256(secret, info=info + b"aes-256-gcm-128")),
            )
    keys = rec.facts["binding_keys"]
    pid = rec.facts["efficient_pairing_id"]
    points = {r: keys[r].public_key.to_bytes() for r in ("a", "b")}
    g = vf.group("BindingMacSecretTest", pairingId=pid, sessionId=h(efficient.session_id), publicKeyA=h(points["a"]),
                 publicKeyB=h(points["b"]))  # fmt: skip
    info = labels.PAIRING_BINDING_MAC_SECRET + pid.encode("ascii") + efficient.session_id + points["a"] + points["b"]
    for role, other in (("a", "b"), ("b", "a")):
        g.add(
            f"role {role}: its own private key and the partner's public key",
            flags=("Efficient",),
            role=role,
            privateKey=h(keys[role].scalar_bytes()),
            sharedSecret=h(keys[role].exchange(keys[other].public_key)),
            info=h(info),
            bindingMacSecret=h(efficient.binding_secret),
        )
    return vf


def check_case(group: dict[str, Any], case: dict[str, Any]) -> None:
    """Raise AssertionError unless the package reproduces ``case``."""
    kind = group["type"]
    if kind == "LabelTest":
        assert all_labels()[case["constant"]] == bytes.fromhex(case["bytes"]), case["constant"]
        assert case["use"] != "unclassified", f"label {case['constant']} has no documented use"
        return
    if kind == "HkdfLabelTest":
        info = bytes.fromhex(case["info"])
        assert info == all_labels()[group["label"]] + bytes.fromhex(case["infoAfterLabel"])
        salt = None if case["salt"] is None else bytes.fromhex(case["salt"])
        okm = hkdf_sha256(bytes.fromhex(case["ikm"]), info=info, salt=salt, length=case["length"])
        assert okm.hex() == case["okm"], f"tcId {case['tcId']}"
        return
    if kind == "TrafficKeyTest":
        keys = derive_traffic_keys(bytes.fromhex(group["tierSecret"]), Tier(group["tierCode"]), case["direction"])
        ccm = AESCCM(bytes.fromhex(case["classicKey"]), tag_length=CLASSIC_TAG_BYTES)
        gcm = AESGCM(bytes.fromhex(case["fdKey"]))
        # The package holds only prepared cipher objects: equal outputs on a probe show equal keys.
        assert keys._ccm.encrypt(_PROBE_NONCE, _PROBE, None) == ccm.encrypt(_PROBE_NONCE, _PROBE, None)  # type: ignore[union-attr]
        assert keys._gcm.encrypt(_PROBE_NONCE, _PROBE, None) == gcm.encrypt(_PROBE_NONCE, _PROBE, None)  # type: ignore[union-attr]
        return
    if kind == "BindingMacSecretTest":
        own = PrivateKey.from_scalar_bytes(bytes.fromhex(case["privateKey"]), reproducible=True)
        keys = {r: PublicKey.from_bytes(bytes.fromhex(group[f"publicKey{r.upper()}"])) for r in ("a", "b")}
        role = case["role"]
        assert own.public_key == keys[role], f"tcId {case['tcId']}: the private key is not role {role}'s"
        partner = keys["b" if role == "a" else "a"]
        assert own.exchange(partner).hex() == case["sharedSecret"], f"tcId {case['tcId']}"
        secret = derive_binding_mac_secret(
            own, partner, role=role, pairing_id=group["pairingId"], session_id=bytes.fromhex(group["sessionId"])
        )
        assert secret.hex() == case["bindingMacSecret"], f"tcId {case['tcId']}"
        return
    raise AssertionError(f"unknown group type {kind}")
