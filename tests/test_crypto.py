"""Unit tests of cipher suite v1 (modbatt.crypto.suite) and the randomness sources."""

from __future__ import annotations

import hashlib
import pickle

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from modbatt.crypto import labels, suite
from modbatt.crypto.rng import SeededRandom, SystemRandom, reproducible_mode_allowed
from modbatt.crypto.suite import (
    P256_HALF_ORDER,
    P256_ORDER,
    SEAL_OVERHEAD,
    PrivateKey,
    PublicKey,
    aead_decrypt,
    aead_encrypt,
    hkdf_sha256,
    open_sealed,
    seal_to_semi_public_key,
    sha256,
)
from modbatt.errors import Reason, ReproducibleModeError, VerificationError

P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
LABEL = labels.SIG_BINDING_RECORD
CTX = b"modbatt/test/context"


@pytest.fixture(scope="module")
def sk() -> PrivateKey:
    return PrivateKey.generate()


def _reason(fn: object, *args: object, **kwargs: object) -> Reason:
    with pytest.raises(VerificationError) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return info.value.reason


def _uncompressed(key: PublicKey) -> bytes:
    return key._key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _non_residue_x() -> int:
    """An x for which x^3 - 3x + b has no square root mod p: no P-256 point has it."""
    b = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
    for x in range(1, 100):
        rhs = (x**3 - 3 * x + b) % P256_P
        if pow(rhs, (P256_P - 1) // 2, P256_P) == P256_P - 1:
            return x
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- signatures


def test_sign_verify_round_trip(sk: PrivateKey) -> None:
    sig = sk.sign(LABEL, b"hello")
    assert len(sig) == suite.SIGNATURE_BYTES
    sk.public_key.verify(LABEL, b"hello", sig)
    assert sk.sign(LABEL, b"hello") == sig  # RFC 6979: deterministic
    assert _reason(sk.public_key.verify, LABEL, b"hellO", sig) is Reason.BAD_SIGNATURE
    assert _reason(PrivateKey.generate().public_key.verify, LABEL, b"hello", sig) is Reason.BAD_SIGNATURE


def test_signing_is_rfc6979() -> None:
    """RFC 6979 A.2.5, P-256 with SHA-256, message "sample" (checks the ECDSA mode we configure)."""
    x = bytes.fromhex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
    key = PrivateKey.from_scalar_bytes(x)
    r, s = decode_dss_signature(key._key.sign(b"sample", suite._ECDSA))
    assert r == 0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716
    assert s == 0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8


def test_label_separation(sk: PrivateKey) -> None:
    sig = sk.sign(labels.SIG_BINDING_RECORD, b"payload")
    for other in (labels.SIG_TREE_HEAD, labels.SIG_PAIRING_CERTIFICATE, b""):
        assert _reason(sk.public_key.verify, other, b"payload", sig) is Reason.BAD_SIGNATURE
    # The unlabelled form of the same bytes does not verify either.
    assert _reason(sk.public_key.verify_unlabelled, b"payload", sig) is Reason.BAD_SIGNATURE


def test_label_framing_is_unambiguous(sk: PrivateKey) -> None:
    # Without the length prefix, ("ab", "c") and ("a", "bc") would sign the same bytes.
    sig = sk.sign(b"ab", b"c")
    assert _reason(sk.public_key.verify, b"a", b"bc", sig) is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("r", "s"),
    [(0, 1), (1, 0), (0, 0), (P256_ORDER, 1), (1, P256_ORDER), (P256_ORDER + 1, 1), (2**256 - 1, 2**256 - 1)],
)
def test_out_of_range_scalars_are_malformed(sk: PrivateKey, r: int, s: int) -> None:
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert _reason(sk.public_key.verify, LABEL, b"m", sig) is Reason.MALFORMED


def test_largest_low_s_is_in_range(sk: PrivateKey) -> None:
    # r = n - 1 and s = (n - 1) / 2 are the largest canonical scalars: judged, and they fail.
    sig = (P256_ORDER - 1).to_bytes(32, "big") + P256_HALF_ORDER.to_bytes(32, "big")
    assert _reason(sk.public_key.verify, LABEL, b"m", sig) is Reason.BAD_SIGNATURE
    high = (P256_ORDER - 1).to_bytes(32, "big") + (P256_HALF_ORDER + 1).to_bytes(32, "big")
    assert _reason(sk.public_key.verify, LABEL, b"m", high) is Reason.MALFORMED


@pytest.mark.parametrize("length", [0, 1, 63, 65, 72, 128])
def test_wrong_signature_length_is_malformed(sk: PrivateKey, length: int) -> None:
    sig = (sk.sign(LABEL, b"m") * 3)[:length]
    assert _reason(sk.public_key.verify, LABEL, b"m", sig) is Reason.MALFORMED


def test_der_signature_is_malformed(sk: PrivateKey) -> None:
    der = sk._key.sign(suite._framed(LABEL, b"m"), suite._ECDSA)
    assert _reason(sk.public_key.verify, LABEL, b"m", der) is Reason.MALFORMED


def _high_s_twin(sig: bytes) -> bytes:
    return sig[:32] + (P256_ORDER - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")


@pytest.mark.parametrize("label", [LABEL, labels.SIG_PAIRING_OFFER, labels.SIG_CAN_FRAME])
def test_high_s_twin_is_refused(sk: PrivateKey, label: bytes) -> None:
    """ECDSA is malleable: (r, n - s) is the same signature to the curve. Suite v1 signs low-S
    only and refuses the twin as malformed (docs/crypto.md §2), for every label."""
    sig = sk.sign(label, b"m")
    assert int.from_bytes(sig[32:], "big") <= P256_HALF_ORDER
    assert _reason(sk.public_key.verify, label, b"m", _high_s_twin(sig)) is Reason.MALFORMED
    # The twin is a valid ECDSA signature: the policy, not the arithmetic, refuses it.
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    framed = suite._signed_bytes(label, sk.public_key, b"m")
    sk.public_key._key.verify(encode_dss_signature(r, P256_ORDER - s), framed, ec.ECDSA(hashes.SHA256()))


def test_signing_normalises_to_low_s() -> None:
    """RFC 6979 A.2.5 gives a high s for "sample"; our signer returns its low twin."""
    x = bytes.fromhex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721")
    key = PrivateKey.from_scalar_bytes(x)
    raw_high = 0
    for i in range(64):  # about half of OpenSSL's raw signatures are high-S
        message = b"low-s %d" % i
        _, raw_s = decode_dss_signature(key._key.sign(suite._framed(LABEL, message), suite._ECDSA))
        sig = key.sign(LABEL, message)
        s = int.from_bytes(sig[32:], "big")
        assert s == min(raw_s, P256_ORDER - raw_s) and s <= P256_HALF_ORDER
        key.public_key.verify(LABEL, message, sig)
        raw_high += raw_s > P256_HALF_ORDER
    assert 0 < raw_high < 64  # both branches of the normalisation ran


# --------------------------------------------------------------------------- key hiding


def test_key_hiding_labels_are_the_semi_public_signatures() -> None:
    hidden = {
        "SIG_PROOF_OF_POSSESSION", "SIG_BINDING_ACK", "SIG_PAIRING_OFFER", "SIG_PAIRING_COMPLETION",
        "SIG_CAN_FRAME", "SIG_CAN_RESYNC", "SIG_ANNOUNCE", "SIG_WITNESS_REQUEST", "SIG_WITNESS_ACK",
        "SIG_HANDSHAKE", "SIG_COMMAND", "SIG_COMMAND_ACK", "SIG_PAIRING_VALIDATION",
        "SIG_BINDING_VALIDATION", "SIG_ESCALATION",
    }  # fmt: skip
    sig_labels = {n: v for n, v in vars(labels).items() if n.startswith("SIG_")}
    assert {n for n, v in sig_labels.items() if v in labels.KEY_HIDING} == hidden
    assert set(sig_labels.values()) >= labels.KEY_HIDING


def test_key_hiding_signature_covers_the_signer_key(sk: PrivateKey) -> None:
    label = labels.SIG_ANNOUNCE
    sig = sk.sign(label, b"hello")
    sk.public_key.verify(label, b"hello", sig)
    # It is a signature over label ‖ compressed key ‖ message, not over label ‖ message.
    assert _reason(sk.public_key.verify_unlabelled, suite._framed(label, b"hello"), sig) is Reason.BAD_SIGNATURE
    sk.public_key.verify_unlabelled(suite._framed(label, sk.public_key.to_bytes() + b"hello"), sig)
    # A controller-type label is unchanged: label ‖ message.
    sk.public_key.verify_unlabelled(suite._framed(LABEL, b"hello"), sk.sign(LABEL, b"hello"))


def test_key_hiding_defeats_public_key_recovery(sk: PrivateKey) -> None:
    """SEC 1 §4.1.6 recovery (python-ecdsa as the attacker's tool) finds the key of a plain
    signature, and no candidate of a key-hiding one (docs/crypto.md §3.1)."""
    ecdsa = pytest.importorskip("ecdsa")
    from ecdsa.util import sigdecode_string

    def recover(framed: bytes, sig: bytes) -> set[bytes]:
        keys = ecdsa.VerifyingKey.from_public_key_recovery(
            sig, framed, ecdsa.NIST256p, hashfunc=hashlib.sha256, sigdecode=sigdecode_string
        )
        return {k.to_string("compressed") for k in keys}

    plain = sk.sign(LABEL, b"m")
    assert sk.public_key.to_bytes() in recover(suite._framed(LABEL, b"m"), plain)
    hidden = sk.sign(labels.SIG_ANNOUNCE, b"m")
    candidates = recover(suite._framed(labels.SIG_ANNOUNCE, b"m"), hidden)
    assert candidates and sk.public_key.to_bytes() not in candidates
    # A candidate is not even self-consistent: framing it in gives yet other points.
    for point in candidates:
        assert point not in recover(suite._framed(labels.SIG_ANNOUNCE, point + b"m"), hidden)


@settings(max_examples=40, deadline=None)
@given(
    message=st.binary(max_size=300), label=st.sampled_from([labels.SIG_TREE_HEAD, labels.SIG_BINDING_RECORD])
)
def test_sign_verify_property(sk: PrivateKey, message: bytes, label: bytes) -> None:
    sig = sk.sign(label, message)
    sk.public_key.verify(label, message, sig)
    flipped = bytearray(sig)
    flipped[len(message) % 64] ^= 0x01
    assert _reason(sk.public_key.verify, label, message, bytes(flipped)) in (
        Reason.BAD_SIGNATURE,
        Reason.MALFORMED,
    )


# --------------------------------------------------------------------------- points and keys


def test_point_encodings_round_trip(sk: PrivateKey) -> None:
    pub = sk.public_key
    compressed = pub.to_bytes()
    assert len(compressed) == 33 and compressed[0] in (2, 3)
    assert PublicKey.from_bytes(compressed) == pub
    assert PublicKey.from_bytes(_uncompressed(pub)) == pub
    assert PublicKey.from_uncompressed(_uncompressed(pub)) == pub
    assert PublicKey.from_spki_der(pub.to_spki_der()) == pub
    assert hash(PublicKey.from_bytes(compressed)) == hash(pub)
    assert len(pub.key_id()) == 8 and pub.key_id() == sha256(labels.KEY_ID + compressed)[:8]
    assert pub != PrivateKey.generate().public_key and pub != compressed


def _invalid_points(pub: PublicKey) -> dict[str, bytes]:
    unc = _uncompressed(pub)
    x, y = unc[1:33], int.from_bytes(unc[33:], "big")
    bad_x = _non_residue_x().to_bytes(32, "big")
    return {
        "off-curve (y+1)": b"\x04" + x + ((y + 1) % P256_P).to_bytes(32, "big"),
        "all-zero uncompressed": b"\x04" + bytes(64),
        "x = p (not reduced)": b"\x04"
        + P256_P.to_bytes(32, "big")
        + bytes.fromhex(
            "66485c780e2f83d72433bd5d84a06bb6541c2af31dae871728bf856a174f93f4"
        ),  # (0, sqrt(b)) is on the curve; x = p is the same x unreduced
        "y = 2^256 - 1": b"\x04" + x + b"\xff" * 32,
        "compressed x with no point": b"\x02" + bad_x,
        "compressed x = p": b"\x02" + P256_P.to_bytes(32, "big"),
        "compressed x = 2^256 - 1": b"\x03" + b"\xff" * 32,
        "bad prefix 05 (33)": b"\x05" + unc[1:33],
        "bad prefix 00 (33)": b"\x00" + unc[1:33],
        "04 prefix on 33 bytes": b"\x04" + unc[1:33],
        "02 prefix on 65 bytes": b"\x02" + unc[1:],
        "hybrid 06": b"\x06" + unc[1:],
        "hybrid 07": b"\x07" + unc[1:],
        "infinity (SEC1 00)": b"\x00",
        "empty": b"",
        "32 bytes": unc[1:33],
        "64 bytes (raw x||y)": unc[1:],
        "66 bytes": unc + b"\x00",
    }


def test_invalid_points_rejected(sk: PrivateKey) -> None:
    for name, data in _invalid_points(sk.public_key).items():
        assert _reason(PublicKey.from_bytes, data) is Reason.INVALID_POINT, name


def test_from_uncompressed_only_takes_65_bytes(sk: PrivateKey) -> None:
    assert _reason(PublicKey.from_uncompressed, sk.public_key.to_bytes()) is Reason.INVALID_POINT
    for name, data in _invalid_points(sk.public_key).items():
        assert _reason(PublicKey.from_uncompressed, data) is Reason.INVALID_POINT, name


def test_spki_rejects_garbage_and_other_curves() -> None:
    assert _reason(PublicKey.from_spki_der, b"\x30\x03\x02\x01\x00") is Reason.INVALID_POINT
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = p384.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert _reason(PublicKey.from_spki_der, der) is Reason.INVALID_POINT
    assert _reason(PublicKey, p384) is Reason.INVALID_POINT


def test_private_key_scalars(sk: PrivateKey) -> None:
    scalar = sk.scalar_bytes()
    assert len(scalar) == 32
    assert PrivateKey.from_scalar_bytes(scalar).public_key == sk.public_key
    for bad in (bytes(32), P256_ORDER.to_bytes(32, "big"), b"\xff" * 32, scalar[:31], b"\x00" + scalar):
        with pytest.raises(ValueError):
            PrivateKey.from_scalar_bytes(bad)
    assert PrivateKey.from_scalar_bytes((P256_ORDER - 1).to_bytes(32, "big")).public_key


def test_ecdh_agrees() -> None:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    shared = a.exchange(b.public_key)
    assert len(shared) == 32 and shared == b.exchange(a.public_key)
    assert shared != a.exchange(PrivateKey.generate().public_key)


def test_reprs_hide_secrets(sk: PrivateKey) -> None:
    scalar_hex = sk.scalar_bytes().hex()
    for text in (repr(sk), str(sk), repr(sk.public_key), repr([sk])):
        assert scalar_hex not in text and scalar_hex.upper() not in text
        assert str(int.from_bytes(sk.scalar_bytes(), "big")) not in text
    assert sk.public_key.key_id().hex() in repr(sk)
    with pytest.raises(TypeError):
        pickle.dumps(sk)


# --------------------------------------------------------------------------- ECIES


def test_seal_open_round_trip(sk: PrivateKey) -> None:
    box = seal_to_semi_public_key(sk.public_key, b"pairing half A", context=CTX)
    assert len(box) == len(b"pairing half A") + SEAL_OVERHEAD
    assert open_sealed(sk, box, context=CTX) == b"pairing half A"
    again = seal_to_semi_public_key(sk.public_key, b"pairing half A", context=CTX)
    assert again[:33] != box[:33], "each box needs a fresh ephemeral key (the GCM nonce is fixed)"
    assert open_sealed(sk, seal_to_semi_public_key(sk.public_key, b"", context=b""), context=b"") == b""


def test_seal_construction_is_as_documented(sk: PrivateKey) -> None:
    """Re-derive a box by hand from the documented construction (docs/crypto.md)."""
    box = seal_to_semi_public_key(sk.public_key, b"secret", context=CTX)
    eph = PublicKey.from_bytes(box[:33])
    key = hkdf_sha256(sk.exchange(eph), info=labels.ECIES_KEY + box[:33] + sk.public_key.to_bytes())
    assert aead_decrypt(key, bytes(12), box[33:], CTX) == b"secret"


def test_open_rejects_wrong_context_tamper_and_recipient(sk: PrivateKey) -> None:
    box = seal_to_semi_public_key(sk.public_key, b"payload!", context=CTX)
    assert _reason(open_sealed, sk, box, context=CTX + b"x") is Reason.BAD_MAC
    assert _reason(open_sealed, sk, box, context=b"") is Reason.BAD_MAC
    assert _reason(open_sealed, PrivateKey.generate(), box, context=CTX) is Reason.BAD_MAC
    for i in range(33, len(box)):  # every ciphertext and tag byte
        tampered = bytearray(box)
        tampered[i] ^= 0x40
        assert _reason(open_sealed, sk, bytes(tampered), context=CTX) is Reason.BAD_MAC, i
    for i in range(1, 33):  # the ephemeral x: either no longer a point, or the wrong one
        tampered = bytearray(box)
        tampered[i] ^= 0x01
        assert _reason(open_sealed, sk, bytes(tampered), context=CTX) in (
            Reason.INVALID_POINT,
            Reason.BAD_MAC,
        )
    flipped_parity = bytes([box[0] ^ 1]) + box[1:]  # the other point with the same x
    assert _reason(open_sealed, sk, flipped_parity, context=CTX) is Reason.BAD_MAC


def test_open_rejects_invalid_ephemeral_point(sk: PrivateKey) -> None:
    body = seal_to_semi_public_key(sk.public_key, b"payload", context=CTX)[33:]
    for eph in (
        b"\x02" + _non_residue_x().to_bytes(32, "big"),
        b"\x05" + bytes(32),
        b"\x00" * 33,
        b"\x03" + b"\xff" * 32,
    ):
        assert _reason(open_sealed, sk, eph + body, context=CTX) is Reason.INVALID_POINT


def test_open_rejects_short_boxes(sk: PrivateKey) -> None:
    box = seal_to_semi_public_key(sk.public_key, b"", context=CTX)
    assert len(box) == SEAL_OVERHEAD
    for n in (0, 1, 33, SEAL_OVERHEAD - 1):
        assert _reason(open_sealed, sk, box[:n], context=CTX) is Reason.MALFORMED


@settings(max_examples=30, deadline=None)
@given(plaintext=st.binary(max_size=200), context=st.binary(max_size=40))
def test_seal_open_property(sk: PrivateKey, plaintext: bytes, context: bytes) -> None:
    box = seal_to_semi_public_key(sk.public_key, plaintext, context=context)
    assert open_sealed(sk, box, context=context) == plaintext


def test_seal_with_seeded_rng_is_reproducible(sk: PrivateKey) -> None:
    a = seal_to_semi_public_key(sk.public_key, b"x", context=CTX, rng=SeededRandom(5))
    b = seal_to_semi_public_key(sk.public_key, b"x", context=CTX, rng=SeededRandom(5))
    assert a == b and open_sealed(sk, a, context=CTX) == b"x"


# --------------------------------------------------------------------------- AEAD and HKDF


def test_aead_round_trip_and_failures() -> None:
    key, nonce = bytes(range(32)), bytes(12)
    ct = aead_encrypt(key, nonce, b"hello", b"aad")
    assert len(ct) == 5 + 16
    assert aead_decrypt(key, nonce, ct, b"aad") == b"hello"
    assert _reason(aead_decrypt, key, nonce, ct, b"AAD") is Reason.BAD_MAC
    assert _reason(aead_decrypt, bytes(32), nonce, ct, b"aad") is Reason.BAD_MAC
    assert _reason(aead_decrypt, key, b"\x01" * 12, ct, b"aad") is Reason.BAD_MAC
    assert _reason(aead_decrypt, key, nonce, ct[:-1] + bytes([ct[-1] ^ 1]), b"aad") is Reason.BAD_MAC
    assert _reason(aead_decrypt, key, nonce, ct[:15], b"aad") is Reason.MALFORMED
    assert _reason(aead_decrypt, key, bytes(16), ct, b"aad") is Reason.MALFORMED
    assert _reason(aead_decrypt, key[:16], nonce, ct, b"aad") is Reason.MALFORMED
    with pytest.raises(ValueError):
        aead_encrypt(key[:16], nonce, b"x")  # AES-128 is not suite v1
    with pytest.raises(ValueError):
        aead_encrypt(key, bytes(8), b"x")


def test_hkdf_rfc5869_a1_and_label_separation() -> None:
    okm = hkdf_sha256(
        bytes.fromhex("0b" * 22), salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42
    )
    assert okm.hex().startswith("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf")
    assert hkdf_sha256(b"k" * 32, info=labels.KEYSTORE_KEK) != hkdf_sha256(
        b"k" * 32, info=labels.KEYSTORE_BACKUP
    )
    assert sha256(b"abc").hex().startswith("ba7816bf")


def test_labels_are_unique_and_versioned() -> None:
    values = [v for k, v in vars(labels).items() if k.isupper() and isinstance(v, bytes)]
    assert len(values) == len(set(values))
    assert all(v.startswith(b"modbatt/v2/") and len(v) < 256 for v in values)


# --------------------------------------------------------------------------- randomness


def test_seeded_random_needs_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODBATT_REPRODUCIBLE", raising=False)
    assert not reproducible_mode_allowed()
    with pytest.raises(ReproducibleModeError, match="MODBATT_REPRODUCIBLE"):
        SeededRandom(1)
    monkeypatch.setenv("MODBATT_REPRODUCIBLE", "true")  # only exactly "1" opts in
    with pytest.raises(ReproducibleModeError):
        SeededRandom(1)


def test_seeded_random_is_deterministic() -> None:
    a, b = SeededRandom("docs"), SeededRandom("docs")
    assert a.token_bytes(5) + a.token_bytes(40) == b.token_bytes(45)
    assert SeededRandom(1).token_bytes(32) != SeededRandom(2).token_bytes(32)
    assert SeededRandom(b"x").token_bytes(16) == SeededRandom("x").token_bytes(16)
    k1, k2 = PrivateKey.generate(SeededRandom(7)), PrivateKey.generate(SeededRandom(7))
    assert k1.public_key == k2.public_key and k1.reproducible and k2.reproducible
    assert not PrivateKey.generate(SystemRandom()).reproducible and not PrivateKey.generate().reproducible
    assert repr(SeededRandom(1234567)) == "SeededRandom(<seed hidden>)" and "1234567" not in repr(
        SeededRandom(1234567)
    )
    assert repr(SystemRandom()) == "SystemRandom()"


def test_bench_area_contract() -> None:
    """The bench area loads and declares its contract (running it is `modbatt bench`'s job)."""
    from modbatt.bench import load_area

    area = load_area("crypto")
    assert area is not None and area.NAME == "crypto" and area.DESCRIPTION
    assert callable(area.run)


def test_external_signer_contract() -> None:
    """A signer outside this process (a PKCS#11 token) signs signed_digest() and passes its raw
    r‖s through low_s(); PublicKey.verify then accepts it, key-hiding labels included."""
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    token = ec.generate_private_key(ec.SECP256R1())  # randomised ECDSA, like a token's CKM_ECDSA
    public = PublicKey(token.public_key())
    raw_high = 0
    for i, label in enumerate([labels.SIG_PAIRING_OFFER, labels.SIG_TREE_HEAD] * 16):
        message = b"external %d" % i
        digest = suite.signed_digest(label, message, signer=public)
        r, s = decode_dss_signature(token.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
        raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        public.verify(label, message, suite.low_s(raw))
        if s > P256_HALF_ORDER:
            raw_high += 1
            assert _reason(public.verify, label, message, raw) is Reason.MALFORMED
    assert raw_high  # the normalisation mattered at least once
    with pytest.raises(TypeError):
        suite.signed_digest(labels.SIG_PAIRING_OFFER, b"m")  # type: ignore[call-arg]  # the signer is required
    with pytest.raises(ValueError):
        suite.low_s(b"short")
