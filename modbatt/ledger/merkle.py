"""RFC 9162 Merkle tree hashing and proofs, as pure functions (no I/O, no clock).

Definitions (RFC 9162 §2.1.1)::

    MTH({})        = SHA-256()
    MTH({d(0)})    = SHA-256(0x00 || d(0))                      leaf hash
    MTH(D[n])      = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  node hash,
                     k = the largest power of two smaller than n

The 0x00 / 0x01 prefixes keep a leaf from ever being confused with an interior node
(second-preimage resistance of the tree, RFC 9162 §2.1.1).

Proof *generation* is written against a :data:`SubtreeHasher`, a callback returning
``MTH(D[start:end])``. Every range the algorithms ask for is either a perfect subtree
(power-of-two size, aligned) or the right edge of the tree, so a store that caches
perfect-subtree hashes answers each proof with O(log n) look-ups (see
:mod:`modbatt.ledger.store`). :func:`subtree_hasher` builds such a callback over an
in-memory list of leaf hashes for callers without a store.

Proof *verification* follows the RFC 9162 §2.1.3.2 / §2.1.4.2 algorithms literally and
raises ``VerificationError(Reason.BAD_PROOF, ...)`` on any failure, including a
malformed proof shape.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from ..errors import Reason, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_BYTES",
    "MAX_PROOF_HASHES",
    "SubtreeHasher",
    "consistency_proof",
    "consistency_proof_from",
    "inclusion_proof",
    "inclusion_proof_from",
    "largest_power_of_two_below",
    "leaf_hash",
    "mth",
    "node_hash",
    "perfect_subtrees",
    "root_from_leaf_hashes",
    "root_from_perfect_subtrees",
    "subtree_hasher",
    "verify_consistency",
    "verify_inclusion",
]

HASH_BYTES: Final = 32
#: SHA-256 of the empty string: the root of the empty tree (RFC 9162 §2.1.1).
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
#: No valid proof for a tree of fewer than 2**63 leaves has more hashes than this
#: (inclusion ≤ 63, consistency ≤ 64 with the prepended first hash); anything longer
#: is rejected before any hashing so an attacker cannot make a verifier spin.
MAX_PROOF_HASHES: Final = 64
#: Tree sizes are SQLite INTEGERs and CBOR uints; cap them at 2**63 - 1.
MAX_TREE_SIZE: Final = (1 << 63) - 1

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"

#: ``subtree(start, end)`` returns ``MTH(D[start:end])`` for ``0 <= start < end``.
SubtreeHasher = Callable[[int, int], bytes]


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``: the hash of one log entry."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``): RFC 9162's ``k``."""
    if n < 2:
        raise ValueError("k is defined for n >= 2 only")
    return 1 << ((n - 1).bit_length() - 1)


def perfect_subtrees(start: int, end: int) -> list[tuple[int, int]]:
    """Decompose ``D[start:end]`` into the perfect subtrees whose hashes make its MTH.

    ``start`` must be a multiple of a power of two at least as large as ``end - start``
    rounded up (true for every range RFC 9162's recursions produce). Returns
    ``(level, index)`` pairs, left to right, where subtree ``(level, index)`` covers
    leaves ``[index * 2**level, (index + 1) * 2**level)``. The MTH of the range is the
    right fold of their hashes (:func:`root_from_perfect_subtrees`).
    """
    if not 0 <= start <= end:
        raise ValueError(f"bad range [{start}, {end})")
    out: list[tuple[int, int]] = []
    size = end - start
    while size > 0:
        level = size.bit_length() - 1
        if start & ((1 << level) - 1):
            raise ValueError(f"range [{start}, {end}) is not aligned to RFC 9162 subtrees")
        if size == 1 << level:  # the remainder is itself perfect
            out.append((level, start >> level))
            break
        k = 1 << level
        out.append((level, start >> level))
        start += k
        size -= k
    return out


def root_from_perfect_subtrees(hashes: Sequence[bytes]) -> bytes:
    """Combine perfect-subtree hashes (largest first) into the MTH of their union.

    RFC 9162 splits at the largest power of two, so the tree hangs to the right:
    ``MTH = node(h0, node(h1, ... node(h_{m-2}, h_{m-1})))``.
    """
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def root_from_leaf_hashes(leaf_hashes: Iterable[bytes]) -> bytes:
    """MTH over a stream of leaf hashes in O(n) time and O(log n) memory.

    Keeps the "frontier" (the perfect subtrees of the current size, as a stack) and
    merges equal-sized neighbours as leaves arrive, like a binary counter.
    """
    stack: list[tuple[int, bytes]] = []  # (level, hash), levels strictly decreasing
    for h in leaf_hashes:
        level = 0
        while stack and stack[-1][0] == level:
            _, left = stack.pop()
            h = node_hash(left, h)
            level += 1
        stack.append((level, h))
    return root_from_perfect_subtrees([h for _, h in stack])


def mth(entries: Iterable[bytes]) -> bytes:
    """The Merkle Tree Hash of a list of entries (RFC 9162 §2.1.1)."""
    return root_from_leaf_hashes(leaf_hash(e) for e in entries)


def subtree_hasher(leaf_hashes: Sequence[bytes]) -> SubtreeHasher:
    """A :data:`SubtreeHasher` over in-memory leaf hashes (memoised per range).

    Proofs over a list cost O(n) hashing once; a persistent store should use its own
    cached hasher instead.
    """
    memo: dict[tuple[int, int], bytes] = {}

    def subtree(start: int, end: int) -> bytes:
        key = (start, end)
        cached = memo.get(key)
        if cached is not None:
            return cached
        if end - start == 1:
            value = leaf_hashes[start]
        else:
            k = largest_power_of_two_below(end - start)
            value = node_hash(subtree(start, start + k), subtree(start + k, end))
        memo[key] = value
        return value

    return subtree


def _check_size(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TREE_SIZE:
        raise ValueError(f"{name} must be an integer in [0, 2**63 - 1], got {value!r}")


# --- proof generation -------------------------------------------------------------------


def inclusion_proof_from(index: int, tree_size: int, subtree: SubtreeHasher) -> list[bytes]:
    """The audit path ``PATH(index, D[tree_size])`` of RFC 9162 §2.1.3.1.

    Deepest sibling first, as the RFC concatenates ``PATH(m, D[0:k]) : MTH(D[k:n])``.
    Raises ``ValueError`` unless ``0 <= index < tree_size``.
    """
    _check_size("tree_size", tree_size)
    _check_size("index", index)
    if index >= tree_size:
        raise ValueError(f"leaf {index} is not in a tree of size {tree_size}")
    path: list[bytes] = []
    start, end, m = 0, tree_size, index
    # Walk down from the root; each step records the sibling of the side holding m.
    while end - start > 1:
        k = largest_power_of_two_below(end - start)
        if m < k:
            path.append(subtree(start + k, end))
            end = start + k
        else:
            path.append(subtree(start, start + k))
            start += k
            m -= k
    path.reverse()  # collected root-first; the RFC lists leaf-first
    return path


def consistency_proof_from(old_size: int, new_size: int, subtree: SubtreeHasher) -> list[bytes]:
    """``PROOF(old_size, D[new_size])`` of RFC 9162 §2.1.4.1.

    Empty when ``old_size`` is 0 or equals ``new_size`` (nothing to prove: every tree
    extends the empty tree, and a tree is consistent with itself when the roots match).
    Raises ``ValueError`` unless ``0 <= old_size <= new_size``.
    """
    _check_size("old_size", old_size)
    _check_size("new_size", new_size)
    if old_size > new_size:
        raise ValueError(f"old size {old_size} is larger than new size {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    # SUBPROOF(m, D[start:end], b), unrolled; siblings are appended on the way back up,
    # so collect them root-first and reverse at the end.
    tail: list[bytes] = []
    start, end, m, complete = 0, new_size, old_size, True
    while True:
        if m == end - start:
            if not complete:
                tail.append(subtree(start, end))
            break
        k = largest_power_of_two_below(end - start)
        if m <= k:
            tail.append(subtree(start + k, end))
            end = start + k
        else:
            tail.append(subtree(start, start + k))
            start += k
            m -= k
            complete = False
    tail.reverse()
    return tail


def inclusion_proof(index: int, entries: Sequence[bytes]) -> list[bytes]:
    """Audit path for ``entries[index]`` in the tree of all ``entries``."""
    leaves = [leaf_hash(e) for e in entries]
    return inclusion_proof_from(index, len(leaves), subtree_hasher(leaves))


def consistency_proof(old_size: int, entries: Sequence[bytes]) -> list[bytes]:
    """Consistency proof from the first ``old_size`` entries to all ``entries``."""
    leaves = [leaf_hash(e) for e in entries]
    return consistency_proof_from(old_size, len(leaves), subtree_hasher(leaves))


# --- proof verification -----------------------------------------------------------------


def _bad(detail: str) -> VerificationError:
    return VerificationError(Reason.BAD_PROOF, detail)


def _check_hashes(proof: Sequence[bytes], what: str) -> list[bytes]:
    if isinstance(proof, (bytes, bytearray, str)):
        raise _bad(f"{what} must be a sequence of hashes, not one string")
    try:
        hashes = list(proof)
    except TypeError:
        raise _bad(f"{what} is not a sequence of hashes") from None
    if len(hashes) > MAX_PROOF_HASHES:
        raise _bad(f"{what} has {len(hashes)} hashes; no valid proof has more than {MAX_PROOF_HASHES}")
    for h in hashes:
        if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_BYTES:
            raise _bad(f"{what} contains an element that is not a {HASH_BYTES}-byte hash")
    return [bytes(h) for h in hashes]


def _check_root(root: bytes, what: str) -> bytes:
    if not isinstance(root, (bytes, bytearray)) or len(root) != HASH_BYTES:
        raise _bad(f"{what} is not a {HASH_BYTES}-byte hash")
    return bytes(root)


def _sizes_ok(*values: int) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_TREE_SIZE for v in values)


def verify_inclusion(leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root_hash: bytes) -> None:
    """Check that leaf hash ``leaf`` sits at ``index`` in the tree of ``tree_size`` with ``root_hash``.

    RFC 9162 §2.1.3.2. Note ``leaf`` is the *leaf hash* (:func:`leaf_hash` of the entry),
    not the entry. Raises ``VerificationError(Reason.BAD_PROOF)``.
    """
    leaf = _check_root(leaf, "leaf hash")
    root_hash = _check_root(root_hash, "root hash")
    path = _check_hashes(proof, "inclusion proof")
    if not _sizes_ok(index, tree_size):
        raise _bad("leaf index and tree size must be integers in [0, 2**63 - 1]")
    if index >= tree_size:
        raise _bad(f"leaf index {index} is outside a tree of size {tree_size}")
    fn, sn, r = index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            raise _bad("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # Skip levels where this node is a lone right-edge child (no sibling).
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _bad("inclusion proof is shorter than the tree is deep")
    if not hmac.compare_digest(r, root_hash):
        raise _bad("inclusion proof does not lead to the root hash")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Check that the tree (``new_size``, ``new_root``) extends (``old_size``, ``old_root``).

    RFC 9162 §2.1.4.2, plus the two trivial cases the RFC leaves to the caller:
    ``old_size == 0`` (the old root must be the empty root, the proof empty) and
    ``old_size == new_size`` (the roots must be equal, the proof empty).
    Raises ``VerificationError(Reason.BAD_PROOF)``.
    """
    old_root = _check_root(old_root, "old root hash")
    new_root = _check_root(new_root, "new root hash")
    path = _check_hashes(proof, "consistency proof")
    if not _sizes_ok(old_size, new_size):
        raise _bad("tree sizes must be integers in [0, 2**63 - 1]")
    if old_size > new_size:
        raise _bad(f"old tree size {old_size} is larger than new tree size {new_size}")
    if old_size == 0:
        if path:
            raise _bad("a consistency proof from the empty tree must be empty")
        if not hmac.compare_digest(old_root, EMPTY_ROOT):
            raise _bad("the root of the empty tree is not SHA-256('')")
        return
    if old_size == new_size:
        if path:
            raise _bad("a consistency proof between equal sizes must be empty")
        if not hmac.compare_digest(old_root, new_root):
            raise _bad("two trees of the same size have different roots")
        return
    if not path:
        raise _bad("consistency proof is empty")
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the new tree
        path = [old_root, *path]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise _bad("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _bad("consistency proof is shorter than the tree is deep")
    if not hmac.compare_digest(fr, old_root):
        raise _bad("consistency proof does not reproduce the old root")
    if not hmac.compare_digest(sr, new_root):
        raise _bad("consistency proof does not lead to the new root")
