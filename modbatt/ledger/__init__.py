"""Layer 2: the verifiable ledger, the protocol's "private blockchain" (docs/ledger.md).

An append-only RFC 9162 Merkle log kept in SQLite (:class:`Ledger`), whose heads the auth
controller signs (:class:`SignedTreeHead`). Anyone holding only the controller's public
key can check offline that an entry is in the log (:func:`verify_inclusion`, the Level 7
"blockchain proof") and that a later head extends an earlier one
(:func:`verify_consistency`). :mod:`.merkle` has the pure RFC 9162 functions, :mod:`.pin`
the signer's anti-rollback pin (:class:`KeyStoreHeadPin`), and :mod:`.schema` the file's
exact schema and the hardened, read-only opening of untrusted files.
"""

from __future__ import annotations

from . import merkle
from .merkle import EMPTY_ROOT, leaf_hash, mth, node_hash
from .pin import HeadPin, KeyStoreHeadPin
from .store import APPLICATION_ID, FORMAT_VERSION, MAX_ENTRY_BYTES, Ledger, LedgerRollbackError, VerifyReport
from .tree_head import (
    STH_VERSION,
    SignedTreeHead,
    sign_tree_head,
    tree_head_message,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "APPLICATION_ID",
    "EMPTY_ROOT",
    "FORMAT_VERSION",
    "MAX_ENTRY_BYTES",
    "STH_VERSION",
    "HeadPin",
    "KeyStoreHeadPin",
    "Ledger",
    "LedgerRollbackError",
    "SignedTreeHead",
    "VerifyReport",
    "leaf_hash",
    "merkle",
    "mth",
    "node_hash",
    "sign_tree_head",
    "tree_head_message",
    "verify_consistency",
    "verify_inclusion",
]
