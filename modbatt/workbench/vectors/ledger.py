"""Ledger vectors: RFC 9162 leaf hashes, roots, inclusion and consistency proofs over the real
entries of a seeded deployment's ledger (docs/ledger.md)."""

from __future__ import annotations

from typing import Any

from ...errors import Reason, VerificationError
from ...ledger import merkle
from ._format import VectorFile, h
from .trace import Record

__all__ = ["check_case", "generate"]


def generate(rec: Record) -> VectorFile:
    entries: list[bytes] = rec.facts["ledger_entries"]
    n = len(entries)
    vf = VectorFile(
        "modbatt-ledger-rfc9162",
        [
            "The ledger's Merkle tree (RFC 9162 §2.1): leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || l || r).",
            f"Entries are the {n} real entries (binding record, statements) of a seeded deployment, in order.",
            "RootTest: the root of the first treeSize entries. InclusionTest / ConsistencyTest: RFC 9162",
            "§2.1.3 / §2.1.4 proofs; invalid proofs fail with bad_proof.",
        ],
        {
            "ModifiedProof": "a proof hash changed",
            "ShortProof": "a proof hash missing",
            "LongProof": "an extra proof hash",
            "WrongIndex": "the proof checked for another leaf index",
            "WrongRoot": "the proof checked against another root",
        },
    )
    g = vf.group("LeafTest")
    for i, entry in enumerate(entries):
        g.add(f"entry {i}", index=i, entry=h(entry), leafHash=h(merkle.leaf_hash(entry)))
    g = vf.group("RootTest")
    for size in range(n + 1):
        g.add(f"tree of {size}", treeSize=size, root=h(merkle.mth(entries[:size])))
    g = vf.group("InclusionTest")
    for size in range(1, n + 1):
        for index in range(size):
            proof = merkle.inclusion_proof(index, entries[:size])
            g.add(f"leaf {index} in a tree of {size}", index=index, treeSize=size,
                  leafHash=h(merkle.leaf_hash(entries[index])), root=h(merkle.mth(entries[:size])),
                  proof=[h(p) for p in proof])  # fmt: skip
    size, index = n, min(2, n - 1)
    proof = merkle.inclusion_proof(index, entries)
    root, leaf = merkle.mth(entries), merkle.leaf_hash(entries[index])

    def bad_incl(what: str, flag: str, *, p: list[bytes] = proof, i: int = index, r: bytes = root) -> None:
        g.add(what, "invalid", reason=Reason.BAD_PROOF, flags=(flag,), index=i, treeSize=size, leafHash=h(leaf),
              root=h(r), proof=[h(x) for x in p])  # fmt: skip

    bad_incl("first proof hash flipped", "ModifiedProof", p=[bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]])
    bad_incl("last proof hash dropped", "ShortProof", p=proof[:-1])
    bad_incl("extra proof hash", "LongProof", p=[*proof, proof[0]])
    bad_incl("checked as the next leaf", "WrongIndex", i=index + 1)
    bad_incl("checked against the root of a smaller tree", "WrongRoot", r=merkle.mth(entries[: size - 1]))
    g = vf.group("ConsistencyTest")
    for new in range(1, n + 1):
        for old in range(1, new + 1):
            proof = merkle.consistency_proof(old, entries[:new])
            g.add(f"{old} -> {new}", oldSize=old, newSize=new, oldRoot=h(merkle.mth(entries[:old])),
                  newRoot=h(merkle.mth(entries[:new])), proof=[h(p) for p in proof])  # fmt: skip
    old = max(1, n // 2 - 1)
    proof = merkle.consistency_proof(old, entries)
    for what, flag, p, old_root in (
        ("first proof hash flipped", "ModifiedProof", [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]], None),
        ("last proof hash dropped", "ShortProof", proof[:-1], None),
        ("old root of another size", "WrongRoot", proof, merkle.mth(entries[: old + 1])),
    ):
        g.add(what, "invalid", reason=Reason.BAD_PROOF, flags=(flag,), oldSize=old, newSize=n,
              oldRoot=h(old_root or merkle.mth(entries[:old])), newRoot=h(merkle.mth(entries)),
              proof=[h(x) for x in p])  # fmt: skip
    return vf


def check_case(group: dict[str, Any], case: dict[str, Any]) -> None:
    kind = group["type"]
    if kind == "LeafTest":
        assert merkle.leaf_hash(bytes.fromhex(case["entry"])).hex() == case["leafHash"]
        return
    if kind == "RootTest":
        return  # checked through the leaves in check_file
    proof = [bytes.fromhex(p) for p in case["proof"]]
    try:
        if kind == "InclusionTest":
            merkle.verify_inclusion(bytes.fromhex(case["leafHash"]), case["index"], case["treeSize"], proof,
                                    bytes.fromhex(case["root"]))  # fmt: skip
        elif kind == "ConsistencyTest":
            merkle.verify_consistency(case["oldSize"], case["newSize"], bytes.fromhex(case["oldRoot"]),
                                      bytes.fromhex(case["newRoot"]), proof)  # fmt: skip
        else:
            raise AssertionError(f"unknown group type {kind}")
    except VerificationError as exc:
        assert case["result"] == "invalid" and exc.reason.value == case["reason"], case["tcId"]
        return
    assert case["result"] == "valid", case["tcId"]


def check_roots(data: dict[str, Any]) -> None:
    """Every RootTest root equals the MTH of the LeafTest entries."""
    groups = {g["type"]: g for g in data["testGroups"]}
    leaves = [bytes.fromhex(c["leafHash"]) for c in groups["LeafTest"]["tests"]]
    for case in groups["RootTest"]["tests"]:
        assert merkle.root_from_leaf_hashes(leaves[: case["treeSize"]]).hex() == case["root"], case["tcId"]
