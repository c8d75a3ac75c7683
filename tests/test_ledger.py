"""The verifiable ledger: RFC 9162 hashing and proofs, signed tree heads, the SQLite store."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from modbatt.crypto import labels
from modbatt.crypto.rng import SeededRandom
from modbatt.crypto.suite import PrivateKey
from modbatt.errors import LedgerError, Reason, VerificationError
from modbatt.ledger import (
    MAX_ENTRY_BYTES,
    Ledger,
    SignedTreeHead,
    merkle,
    verify_consistency,
    verify_inclusion,
)
from modbatt.ledger import store as store_module

# --- an independent, naive reading of RFC 9162 §2.1 (slices and recursion, no shortcuts) ---


def ref_leaf(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def ref_node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def ref_k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return ref_leaf(d[0])
    k = ref_k(len(d))
    return ref_node(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = ref_k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = ref_k(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return [] if m in (0, len(d)) else ref_subproof(m, d, True)


N = 40
ENTRIES = [f"entry {i}".encode() * (i % 3) for i in range(N)]  # includes empty entries


def bad_proof(excinfo: pytest.ExceptionInfo[VerificationError]) -> None:
    assert excinfo.value.reason is Reason.BAD_PROOF


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return PrivateKey.generate(SeededRandom("ledger-tests/controller"))


@pytest.fixture(scope="module")
def other_key() -> PrivateKey:
    return PrivateKey.generate(SeededRandom("ledger-tests/impostor"))


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- merkle.py ---------------------------------------------------------------------------

# transparency-dev/merkle testonly/constants.go (RFC 6962 hashing): leaf inputs and the
# root of every prefix; an outside check that our reading of the RFC is the common one.
TV_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
TV_ROOTS = [
    bytes.fromhex(h)
    for h in (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
# transparency-dev/merkle proof/verify_test.go: (index, size, path) and (old, new, proof).
TV_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
TV_CONSISTENCY = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def test_published_vectors() -> None:
    for n, root in enumerate(TV_ROOTS):
        assert merkle.mth(TV_LEAVES[:n]) == root
    for index, size, path in TV_INCLUSION:
        proof = [bytes.fromhex(h) for h in path]
        assert merkle.inclusion_proof(index, TV_LEAVES[:size]) == proof
        merkle.verify_inclusion(merkle.leaf_hash(TV_LEAVES[index]), index, size, proof, TV_ROOTS[size])
    for old, new, path in TV_CONSISTENCY:
        proof = [bytes.fromhex(h) for h in path]
        assert merkle.consistency_proof(old, TV_LEAVES[:new]) == proof
        merkle.verify_consistency(old, new, TV_ROOTS[old], TV_ROOTS[new], proof)


def test_hashing_matches_naive_reference() -> None:
    assert hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT
    assert merkle.leaf_hash(b"abc") == ref_leaf(b"abc")
    assert merkle.node_hash(b"a" * 32, b"b" * 32) == ref_node(b"a" * 32, b"b" * 32)
    for n in range(N + 1):
        assert merkle.mth(ENTRIES[:n]) == ref_mth(ENTRIES[:n])


def test_leaf_and_node_domains_differ() -> None:
    # A two-leaf root must not verify as a leaf of a one-entry tree (second preimage).
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.leaf_hash(a + b) != merkle.node_hash(a, b)


def test_inclusion_every_index_every_size() -> None:
    for n in range(1, N + 1):
        d = ENTRIES[:n]
        root = ref_mth(d)
        for m in range(n):
            proof = merkle.inclusion_proof(m, d)
            assert proof == ref_path(m, d)
            merkle.verify_inclusion(ref_leaf(d[m]), m, n, proof, root)


def test_consistency_every_pair() -> None:
    roots = [ref_mth(ENTRIES[:n]) for n in range(N + 1)]
    for new in range(N + 1):
        d = ENTRIES[:new]
        for old in range(new + 1):
            proof = merkle.consistency_proof(old, d)
            assert proof == ref_proof(old, d), (old, new)
            merkle.verify_consistency(old, new, roots[old], roots[new], proof)


def test_inclusion_tampering_rejected() -> None:
    for n in (1, 2, 5, 8, 13, 32, 37):
        d = ENTRIES[:n]
        root = ref_mth(d)
        for m in range(n):
            leaf = ref_leaf(d[m])
            proof = merkle.inclusion_proof(m, d)
            probes: list[tuple[int, int, bytes, list[bytes], bytes]] = [
                (m, n, leaf, [*proof, root], root),  # trailing garbage
                (m, n, leaf, [root, *proof], root),  # preceding garbage
                (m, n, ref_leaf(b"forged"), proof, root),  # wrong entry
                (m, n, leaf, proof, merkle.EMPTY_ROOT),  # wrong root
                (m, n * 2, leaf, proof, root),  # wrong tree height
                (m, n // 2, leaf, proof, root),
                (m, n, leaf, [*proof[:-1], b"short"], root) if proof else (m, n, leaf, [b"x"], root),
            ]
            if proof:
                probes.append((m, n, leaf, proof[:-1], root))  # removed component
            if n > 1:
                probes += [((m + 1) % n, n, leaf, proof, root), (m ^ 2, n, leaf, proof, root)]
            for i in range(len(proof)):  # one flipped bit in each element
                flipped = list(proof)
                flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
                probes.append((m, n, leaf, flipped, root))
            for idx, size, lf, pf, rt in probes:
                if (idx, size, lf, pf, rt) == (m, n, leaf, proof, root):
                    continue
                with pytest.raises(VerificationError) as excinfo:
                    merkle.verify_inclusion(lf, idx, size, pf, rt)
                bad_proof(excinfo)


def test_inclusion_malformed_arguments() -> None:
    root = ref_mth(ENTRIES[:4])
    leaf = ref_leaf(ENTRIES[0])
    good = merkle.inclusion_proof(0, ENTRIES[:4])
    for args in (
        (leaf, 0, 0, [], root),  # empty tree
        (leaf, 4, 4, good, root),  # index == size
        (leaf, -1, 4, good, root),
        (leaf, 0, 4, b"".join(good), root),  # bytes instead of a list
        (leaf, 0, 4, [*good] * 30, root),  # absurdly long
        (leaf[:31], 0, 4, good, root),
        (leaf, 0, 4, good, root[:31]),
        (leaf, 0, 4, [h.hex() for h in good], root),
    ):
        with pytest.raises(VerificationError) as excinfo:
            merkle.verify_inclusion(*args)  # type: ignore[arg-type]
        bad_proof(excinfo)


def test_consistency_tampering_rejected() -> None:
    roots = [ref_mth(ENTRIES[:n]) for n in range(N + 1)]
    for old, new in [(1, 2), (1, 8), (3, 7), (4, 8), (6, 8), (5, 37), (16, 33), (31, 40)]:
        proof = merkle.consistency_proof(old, ENTRIES[:new])
        r1, r2 = roots[old], roots[new]
        probes = [
            (old - 1, new, r1, r2, proof),
            (old + 1, new, r1, r2, proof),
            (old, new * 2, r1, r2, proof),
            (old, new // 2, r1, r2, proof),
            (old ^ 2, new, r1, r2, proof),
            (old, new, r2, r1, proof),
            (old, new, merkle.EMPTY_ROOT, r2, proof),
            (old, new, r1, merkle.EMPTY_ROOT, proof),
            (old, new, r1, r2, []),
            (old, new, r1, r2, [*proof, r1]),
            (old, new, r1, r2, [r2, *proof]),
            (old, new, r1, r2, [proof[0], *proof]),
            (old, new, r1, r2, proof[:-1]),
            (new, old, r2, r1, proof),  # time travel
        ]
        for i in range(len(proof)):
            flipped = list(proof)
            flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
            probes.append((old, new, r1, r2, flipped))
        for o, n, a, b, p in probes:
            with pytest.raises(VerificationError) as excinfo:
                merkle.verify_consistency(o, n, a, b, p)
            bad_proof(excinfo)


def test_consistency_trivial_cases() -> None:
    r3 = ref_mth(ENTRIES[:3])
    merkle.verify_consistency(0, 3, merkle.EMPTY_ROOT, r3, [])
    merkle.verify_consistency(3, 3, r3, r3, [])
    for args in (
        (0, 3, r3, r3, []),  # size 0 must have the empty root
        (0, 3, merkle.EMPTY_ROOT, r3, [r3]),  # and an empty proof
        (3, 3, r3, merkle.EMPTY_ROOT, []),  # equal sizes, different roots: a fork
        (3, 3, r3, r3, [r3]),
    ):
        with pytest.raises(VerificationError) as excinfo:
            merkle.verify_consistency(*args)
        bad_proof(excinfo)


def test_generation_rejects_bad_ranges() -> None:
    with pytest.raises(ValueError):
        merkle.inclusion_proof(3, ENTRIES[:3])
    with pytest.raises(ValueError):
        merkle.consistency_proof(4, ENTRIES[:3])


# --- tree_head.py ------------------------------------------------------------------------


def make_sth(key: PrivateKey, n: int, ts: int = 1_700_000_000_000) -> SignedTreeHead:
    return SignedTreeHead.sign(key, tree_size=n, root_hash=ref_mth(ENTRIES[:n]), timestamp=ts)


def test_sth_sign_verify_and_encoding(key: PrivateKey) -> None:
    sth = make_sth(key, 7)
    sth.verify()
    sth.verify(key.public_key)
    assert SignedTreeHead.from_bytes(sth.to_bytes()) == sth
    assert SignedTreeHead.from_dict(sth.to_dict()) == sth
    # The signed bytes are the documented CBOR array under the documented label.
    v = labels.PROTOCOL_VERSION
    assert sth.signed_message() == cbor2.dumps([v, 7, sth.timestamp, sth.root_hash], canonical=True)
    assert labels.SIG_TREE_HEAD == b"modbatt/v2/sig/tree-head"


def test_sth_signature_checked_independently(key: PrivateKey) -> None:
    """An auditor with only `cryptography` and the docs can check an STH."""
    sth = make_sth(key, 11)
    d = sth.to_dict()
    pub = serialization.load_der_public_key(base64.b64decode(d["public_key"]))
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    message = cbor2.dumps([labels.PROTOCOL_VERSION, d["tree_size"], d["timestamp"], base64.b64decode(d["root_hash"])])
    label = b"modbatt/v2/sig/tree-head"
    sig = base64.b64decode(d["signature"])
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    pub.verify(der, bytes([len(label)]) + label + message, ec.ECDSA(hashes.SHA256()))


def test_sth_tampering_rejected(key: PrivateKey, other_key: PrivateKey) -> None:
    sth = make_sth(key, 7)
    forgeries = [
        SignedTreeHead(8, sth.root_hash, sth.timestamp, sth.signature, sth.public_key),
        SignedTreeHead(7, ref_mth(ENTRIES[:6]), sth.timestamp, sth.signature, sth.public_key),
        SignedTreeHead(7, sth.root_hash, sth.timestamp + 1, sth.signature, sth.public_key),
        SignedTreeHead(
            7, sth.root_hash, sth.timestamp, bytes([sth.signature[0] ^ 1]) + sth.signature[1:], sth.public_key
        ),
        SignedTreeHead(7, sth.root_hash, sth.timestamp, bytes(64), sth.public_key),
        SignedTreeHead(7, sth.root_hash, sth.timestamp, sth.signature, other_key.public_key),
    ]
    for forged in forgeries:
        with pytest.raises(VerificationError) as excinfo:
            forged.verify()
        assert excinfo.value.reason is Reason.BAD_SIGNATURE
    # A head that is genuinely signed, but by another key than the pinned controller key.
    impostor = make_sth(other_key, 7)
    impostor.verify()
    with pytest.raises(VerificationError) as excinfo:
        impostor.verify(key.public_key)
    assert excinfo.value.reason is Reason.BAD_SIGNATURE


def test_sth_shape_checked(key: PrivateKey) -> None:
    sth = make_sth(key, 3)
    for bad in (
        dict(tree_size=-1),
        dict(root_hash=b"x" * 31),
        dict(signature=b"x" * 63),
        dict(timestamp=True),
        dict(public_key=b"\x02" * 33),
    ):
        fields = (
            dict(
                tree_size=3,
                root_hash=sth.root_hash,
                timestamp=sth.timestamp,
                signature=sth.signature,
                public_key=sth.public_key,
            )
            | bad
        )
        with pytest.raises(VerificationError) as excinfo:
            SignedTreeHead(**fields)  # type: ignore[arg-type]
        assert excinfo.value.reason is Reason.MALFORMED
    for blob in (b"", b"\xa0", sth.to_bytes() + b"\x00", cbor2.dumps([2, 3, 0, b"x" * 32, b"y" * 64, b"z"])):
        with pytest.raises(VerificationError):
            SignedTreeHead.from_bytes(blob)
    for d in ({}, {**sth.to_dict(), "extra": 1}, {**sth.to_dict(), "root_hash": "!!"}):
        with pytest.raises(VerificationError):
            SignedTreeHead.from_dict(d)


def test_offline_inclusion_and_consistency(key: PrivateKey, other_key: PrivateKey) -> None:
    pub = key.public_key
    heads = {n: make_sth(key, n) for n in range(N + 1)}
    for n in (1, 6, 17, N):
        for m in range(n):
            verify_inclusion(ENTRIES[m], m, merkle.inclusion_proof(m, ENTRIES[:n]), heads[n], pub)
    for old, new in [(0, 5), (3, 3), (5, 17), (16, 32), (17, N)]:
        verify_consistency(heads[old], heads[new], merkle.consistency_proof(old, ENTRIES[:new]), pub)

    proof = merkle.inclusion_proof(4, ENTRIES[:17])
    with pytest.raises(VerificationError) as excinfo:
        verify_inclusion(b"forged entry", 4, proof, heads[17], pub)
    bad_proof(excinfo)
    with pytest.raises(VerificationError) as excinfo:
        verify_inclusion(ENTRIES[4], 4, proof, heads[16], pub)  # wrong root for this proof
    bad_proof(excinfo)
    # A correct proof under a head signed by someone else, or pinned to someone else.
    with pytest.raises(VerificationError) as excinfo:
        verify_inclusion(ENTRIES[4], 4, proof, make_sth(other_key, 17), pub)
    assert excinfo.value.reason is Reason.BAD_SIGNATURE
    with pytest.raises(VerificationError) as excinfo:
        verify_inclusion(ENTRIES[4], 4, proof, heads[17], other_key.public_key)
    assert excinfo.value.reason is Reason.BAD_SIGNATURE
    forged = SignedTreeHead(17, heads[17].root_hash, 1, heads[17].signature, pub)
    with pytest.raises(VerificationError) as excinfo:
        verify_inclusion(ENTRIES[4], 4, proof, forged, pub)
    assert excinfo.value.reason is Reason.BAD_SIGNATURE

    cproof = merkle.consistency_proof(5, ENTRIES[:17])
    with pytest.raises(VerificationError) as excinfo:
        verify_consistency(heads[17], heads[5], cproof, pub)  # shrinking log
    bad_proof(excinfo)
    fork = SignedTreeHead.sign(key, tree_size=17, root_hash=ref_mth([b"x", *ENTRIES[1:17]]), timestamp=1)
    with pytest.raises(VerificationError) as excinfo:
        verify_consistency(heads[5], fork, cproof, pub)
    bad_proof(excinfo)
    with pytest.raises(VerificationError) as excinfo:
        verify_consistency(heads[5], make_sth(other_key, 17), cproof, pub)
    assert excinfo.value.reason is Reason.BAD_SIGNATURE


# --- store.py ----------------------------------------------------------------------------


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


def test_store_proofs_match_reference(key: PrivateKey) -> None:
    with Ledger(":memory:", signer=key) as led:
        assert led.size == 0 and led.root_hash() == merkle.EMPTY_ROOT
        for i, e in enumerate(ENTRIES):
            assert led.append(e) == i
            assert led.root_hash() == ref_mth(ENTRIES[: i + 1])
        for n in range(N + 1):
            assert led.root_hash(n) == ref_mth(ENTRIES[:n])
            for m in range(n):
                assert led.inclusion_proof(m, n) == ref_path(m, ENTRIES[:n])
            for old in range(n + 1):
                assert led.consistency_proof(old, n) == ref_proof(old, ENTRIES[:n])
        assert [led.entry(i) for i in range(N)] == ENTRIES
        assert list(led.entries()) == ENTRIES
        led.verify()


def test_store_proofs_at_larger_sizes() -> None:
    """Around powers of two, where the right edge changes shape, the cache must agree."""
    big = [i.to_bytes(4, "big") for i in range(1025)]
    with Ledger(":memory:") as led:
        for lo, hi in [(0, 511), (511, 512), (512, 1000), (1000, 1024), (1024, 1025)]:
            led.append_many(big[lo:hi])
        leaves = [ref_leaf(e) for e in big]
        for n in (255, 256, 257, 511, 512, 513, 1023, 1024, 1025):
            sub = merkle.subtree_hasher(leaves[:n])
            assert led.root_hash(n) == ref_mth(big[:n])
            for m in (0, 1, n // 2, n - 2, n - 1):
                assert led.inclusion_proof(m, n) == merkle.inclusion_proof_from(m, n, sub)
            for old in (1, 2, 3, n // 3, n // 2, n - 1):
                assert led.consistency_proof(old, n) == merkle.consistency_proof_from(old, n, sub)
                merkle.verify_consistency(old, n, ref_mth(big[:old]), led.root_hash(n), led.consistency_proof(old, n))
        led.verify()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=70), min_size=1, max_size=8), st.data())
def test_store_any_batching(batches: list[int], data: st.DataObject) -> None:
    """However appends are split into transactions, roots and proofs are the RFC's."""
    entries = [i.to_bytes(3, "big") for i in range(sum(batches))]
    with Ledger(":memory:") as led:
        done = 0
        for b in batches:
            assert led.append_many(entries[done : done + b]) == range(done, done + b)
            done += b
            assert led.root_hash() == merkle.mth(entries[:done])
        if done:
            n = data.draw(st.integers(1, done))
            m = data.draw(st.integers(0, n - 1))
            old = data.draw(st.integers(0, n))
            assert led.inclusion_proof(m, n) == ref_path(m, entries[:n])
            assert led.consistency_proof(old, n) == ref_proof(old, entries[:n])
        led.verify()


def test_perfect_subtrees() -> None:
    assert merkle.perfect_subtrees(0, 0) == []
    assert merkle.perfect_subtrees(0, 13) == [(3, 0), (2, 2), (0, 12)]
    assert merkle.perfect_subtrees(8, 13) == [(2, 2), (0, 12)]
    with pytest.raises(ValueError):
        merkle.perfect_subtrees(4, 13)  # not a range any RFC 9162 recursion produces


def test_store_rejects_bad_requests(key: PrivateKey) -> None:
    with Ledger(":memory:") as led:
        led.append_many(ENTRIES[:5])
        for call in (
            lambda: led.inclusion_proof(5),
            lambda: led.inclusion_proof(0, 6),
            lambda: led.inclusion_proof(-1),
            lambda: led.consistency_proof(4, 3),
            lambda: led.root_hash(6),
            lambda: led.entry(5),
            led.signed_tree_head,  # no signer
            led.export,  # nothing signed
        ):
            with pytest.raises(LedgerError):
                call()


def test_append_many_and_persistence(ledger_path: Path, key: PrivateKey) -> None:
    with Ledger(ledger_path, signer=key) as led:
        assert led.append_many([]) == range(0, 0)
        assert led.append_many(ENTRIES[:13]) == range(0, 13)
        sth = led.signed_tree_head()
        assert led.latest_tree_head() == sth
    with Ledger(ledger_path, signer=key) as led:  # the frontier is rebuilt from the file
        assert led.size == 13 and led.public_key == key.public_key
        assert led.append_many(ENTRIES[13:]) == range(13, N)
        assert led.root_hash() == ref_mth(ENTRIES)
        sth2 = led.signed_tree_head()
        verify_consistency(sth, sth2, led.consistency_proof(13), key.public_key)
        assert led.tree_head_at(13) == sth
        report = led.verify()
        assert (report.tree_size, report.root_hash, report.tree_heads) == (N, ref_mth(ENTRIES), 2)


def test_entry_limits_leave_state_unchanged() -> None:
    with Ledger(":memory:") as led:
        led.append(b"a")
        root = led.root_hash()
        with pytest.raises(VerificationError) as excinfo:
            led.append_many([b"ok", b"x" * (MAX_ENTRY_BYTES + 1)])
        assert excinfo.value.reason is Reason.OVERSIZED
        with pytest.raises(TypeError):
            led.append("text")  # type: ignore[arg-type]
        assert led.size == 1 and led.root_hash() == root
        led.append(b"x" * MAX_ENTRY_BYTES)  # the limit itself is fine
        led.verify()


def test_two_writers_share_a_file(ledger_path: Path) -> None:
    with Ledger(ledger_path) as a, Ledger(ledger_path) as b:
        a.append_many(ENTRIES[:5])
        b.append_many(ENTRIES[5:9])  # b must notice a's entries before extending the tree
        a.append(ENTRIES[9])
        assert a.root_hash() == b.root_hash() == ref_mth(ENTRIES[:10])
        b.verify()


def test_tree_head_timestamps(key: PrivateKey) -> None:
    clock = FakeClock(1_800_000_000.123)
    with Ledger(":memory:", signer=key, clock=clock) as led:
        assert led.latest_tree_head() is None
        first = led.signed_tree_head()
        assert first.tree_size == 0 and first.root_hash == merkle.EMPTY_ROOT
        assert first.timestamp == 1_800_000_000_123
        clock.t -= 60  # clock steps back: stored heads stay ordered
        led.append(b"x")
        assert led.signed_tree_head().timestamp == first.timestamp
        led.verify()


def test_keys_are_pinned(ledger_path: Path, key: PrivateKey, other_key: PrivateKey) -> None:
    with Ledger(ledger_path, signer=key) as led:
        led.append(b"x")
        led.signed_tree_head()
    with pytest.raises(LedgerError, match="pinned"):
        Ledger(ledger_path, public_key=other_key.public_key)
    with pytest.raises(LedgerError, match="refusing"):
        Ledger(ledger_path, signer=other_key)
    with pytest.raises(LedgerError, match="pinned"):
        Ledger(":memory:", signer=key, public_key=other_key.public_key)
    with Ledger(ledger_path, public_key=key.public_key) as led:
        led.verify()
    with Ledger(":memory:", public_key=key.public_key) as led, pytest.raises(LedgerError, match="never"):
        led.verify()  # pinning a key means "must be signed by it"


def test_opening_non_ledgers(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database " * 100)
    with pytest.raises(LedgerError, match="not a modbatt ledger"):
        Ledger(text)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(LedgerError, match="not a modbatt ledger"):
        Ledger(other)
    assert other.read_bytes() == before  # not switched to WAL or otherwise touched
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(LedgerError, match="directory"):
        Ledger(tmp_path)


def test_corrupt_file(ledger_path: Path) -> None:
    with Ledger(ledger_path) as led:
        led.append_many([os.urandom(200) for _ in range(300)])
    conn = sqlite3.connect(ledger_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(ledger_path.read_bytes())
    page = 4096
    for i in range(2 * page, len(data), page):  # scribble over the body of every later page
        data[i + 100 : i + 300] = os.urandom(200)
    ledger_path.write_bytes(bytes(data))
    # At open or at verify, but never another exception type.
    with pytest.raises(LedgerError), Ledger(ledger_path) as led:
        led.verify()


# --- crash safety ------------------------------------------------------------------------


def test_exception_mid_append_rolls_back(ledger_path: Path, key: PrivateKey, monkeypatch: pytest.MonkeyPatch) -> None:
    with Ledger(ledger_path, signer=key) as led:
        led.append_many(ENTRIES[:7])
        led.signed_tree_head()
        root = led.root_hash()

        def boom(self: Ledger, rows: object) -> None:
            raise RuntimeError("power cut between the entry rows and the node rows")

        # The entries are already inserted in the open transaction when this fires.
        monkeypatch.setattr(Ledger, "_insert_nodes", boom)
        with pytest.raises(RuntimeError):
            led.append_many(ENTRIES[7:12])
        with pytest.raises(RuntimeError):
            led.append(ENTRIES[7])
        monkeypatch.undo()
        assert led.size == 7 and led.root_hash() == root
        led.verify()

        def sign_fails(*args: object, **kwargs: object) -> SignedTreeHead:
            raise RuntimeError("HSM unplugged")

        monkeypatch.setattr(store_module.SignedTreeHead, "sign", sign_fails)
        led.append(ENTRIES[7])
        with pytest.raises(RuntimeError):
            led.signed_tree_head()
        monkeypatch.undo()
        assert led.latest_tree_head() is not None and led.latest_tree_head().tree_size == 7  # type: ignore[union-attr]
        led.append_many(ENTRIES[8:])  # the instance is still usable after the failures
        assert led.root_hash() == ref_mth(ENTRIES)
    with Ledger(ledger_path) as led:
        assert led.size == N
        led.verify()


_CHILD = textwrap.dedent(
    """
    import sys
    from modbatt.crypto.rng import SeededRandom
    from modbatt.crypto.suite import PrivateKey
    from modbatt.ledger import Ledger

    led = Ledger(sys.argv[1], signer=PrivateKey.generate(SeededRandom("ledger-tests/controller")))
    i = 0
    while True:
        if i % 3 == 0:
            led.append(b"single %d" % i)
        else:
            led.append_many([b"batch %d/%d" % (i, j) * (j % 5) for j in range(1 + i % 40)])
        if i % 4 == 0:
            led.signed_tree_head()
        i += 1
        print(i, flush=True)
    """
)


def _run_and_kill(path: Path, after: int) -> None:
    env = {**os.environ, "MODBATT_REPRODUCIBLE": "1"}  # the child's seeded controller key
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if int(line) >= after:  # it is in its write loop; kill it wherever it is
                break
        else:  # pragma: no cover - the child died on its own
            pytest.fail(child.stderr.read() if child.stderr else "child exited")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert child.returncode == -signal.SIGKILL


def test_sigkill_mid_append_leaves_a_verifying_log(ledger_path: Path, key: PrivateKey) -> None:
    size = 0
    for after in (40, 7, 23):  # three kills at different points of the write loop
        _run_and_kill(ledger_path, after)
        with Ledger(ledger_path, public_key=key.public_key) as led:
            report = led.verify()
            assert report.tree_size > size and report.tree_heads >= 2
            size = report.tree_size
    with Ledger(ledger_path, signer=key) as led:
        led.append(b"after the crashes")
        led.signed_tree_head()
        led.verify()


# --- tampering from outside --------------------------------------------------------------


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


@pytest.fixture
def signed_ledger(ledger_path: Path, key: PrivateKey) -> Path:
    with Ledger(ledger_path, signer=key) as led:
        led.append_many(ENTRIES[:20])
        led.signed_tree_head()
        led.append_many(ENTRIES[20:33])
        led.signed_tree_head()
    return ledger_path


def test_triggers_refuse_rewrites(signed_ledger: Path) -> None:
    conn = _raw(signed_ledger)
    for sql in (
        "UPDATE entries SET entry = x'00' WHERE idx = 3",
        "DELETE FROM entries WHERE idx = 32",
        "UPDATE nodes SET hash = zeroblob(32)",
        "DELETE FROM tree_heads",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.close()


@contextlib.contextmanager
def _untriggered(path: Path) -> Iterator[sqlite3.Connection]:
    """An attacker's connection: the append-only triggers dropped, then put back as they were
    (a ledger whose schema differs is refused before any row is read)."""
    conn = _raw(path)
    saved = [sql for (sql,) in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger'")]
    for t in ("entries", "nodes", "tree_heads"):
        for op in ("update", "delete"):
            conn.execute(f"DROP TRIGGER IF EXISTS {t}_no_{op}")
    yield conn
    for sql in saved:
        conn.execute(sql)
    conn.close()


def _tamper(path: Path, *sql: str) -> None:
    with _untriggered(path) as conn:
        for s in sql:
            conn.execute(s)


def test_altered_entry_detected(signed_ledger: Path) -> None:
    _tamper(signed_ledger, "UPDATE entries SET entry = CAST('forged' AS BLOB) WHERE idx = 5")
    with Ledger(signed_ledger) as led, pytest.raises(LedgerError, match="entry 5") as excinfo:
        led.verify()
    assert excinfo.value.problems  # type: ignore[attr-defined]


def test_consistent_rewrite_caught_by_signature(signed_ledger: Path) -> None:
    """Rewrite an entry, its leaf hash and every cached node: only the STHs can tell."""
    with Ledger(signed_ledger) as led:
        entries = list(led.entries())
    entries[25] = b"forged"
    rebuilt = Ledger(":memory:")
    rebuilt.append_many(entries)
    rows = rebuilt._conn.execute("SELECT level, idx, hash FROM nodes").fetchall()
    rebuilt.close()
    with _untriggered(signed_ledger) as conn:
        conn.execute(
            "UPDATE entries SET entry = ?, leaf_hash = ? WHERE idx = 25", (b"forged", merkle.leaf_hash(b"forged"))
        )
        conn.executemany("UPDATE nodes SET hash = ? WHERE level = ? AND idx = ?", [(h, lv, i) for lv, i, h in rows])
    with Ledger(signed_ledger) as led, pytest.raises(LedgerError, match="tree head #2"):
        led.verify()


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("DELETE FROM entries WHERE idx >= 30", "truncated"),
        ("DELETE FROM entries WHERE idx = 10", "entry 10 is missing"),
        ("UPDATE nodes SET hash = zeroblob(32) WHERE level = 2 AND idx = 1", r"node \(2, 1\)"),
        ("DELETE FROM nodes WHERE level = 3 AND idx = 0", r"node \(3, 0\)"),
        ("INSERT INTO nodes VALUES (9, 9, zeroblob(32))", "nodes table"),
        ("UPDATE tree_heads SET tree_size = 21 WHERE id = 1", "tree head #1"),
        ("UPDATE tree_heads SET signature = zeroblob(64) WHERE id = 2", "tree head #2"),
        ("UPDATE tree_heads SET timestamp = 0 WHERE id = 2", "tree head #2"),
    ],
)
def test_tampering_detected(signed_ledger: Path, sql: str, match: str) -> None:
    _tamper(signed_ledger, sql)
    with pytest.raises(LedgerError, match=match), Ledger(signed_ledger) as led:
        led.verify()


def test_swapped_public_key_detected(signed_ledger: Path, other_key: PrivateKey, key: PrivateKey) -> None:
    _tamper(signed_ledger, "DELETE FROM meta WHERE key = 'public_key'")
    conn = _raw(signed_ledger)
    conn.execute("INSERT INTO meta VALUES ('public_key', ?)", (other_key.public_key.to_spki_der(),))
    conn.close()
    with Ledger(signed_ledger) as led, pytest.raises(LedgerError, match="bad_signature"):
        led.verify()
    with pytest.raises(LedgerError, match="pinned"):
        Ledger(signed_ledger, public_key=key.public_key)


# --- export ------------------------------------------------------------------------------


def test_export_shape_and_independent_root(signed_ledger: Path, key: PrivateKey) -> None:
    with Ledger(signed_ledger) as led:
        led.append(b"not yet signed")  # without a signer, export stops at the latest head
        data = led.export()
    assert set(data) == {"entries", "sth"}
    assert set(data["sth"]) == {"tree_size", "root_hash", "timestamp", "signature", "public_key"}
    entries = [base64.b64decode(e, validate=True) for e in data["entries"]]
    assert entries == ENTRIES[:33] and data["sth"]["tree_size"] == 33
    assert ref_mth(entries) == base64.b64decode(data["sth"]["root_hash"])
    assert base64.b64decode(data["sth"]["public_key"]) == key.public_key.to_spki_der()
    SignedTreeHead.from_dict(data["sth"]).verify(key.public_key)

    with Ledger(signed_ledger, signer=key) as led:  # with a signer, the whole log
        data = led.export()
    assert data["sth"]["tree_size"] == 34
    assert ref_mth([base64.b64decode(e) for e in data["entries"]]) == base64.b64decode(data["sth"]["root_hash"])
