"""Signed tree heads (STHs) and offline proof checks that need only the controller key.

An STH is the auth controller's signed statement "my log has ``tree_size`` entries and
root ``root_hash`` at ``timestamp``" (RFC 9162 §4.10, reduced to what modbatt needs).
The signed bytes are the deterministic CBOR array::

    [v, tree_size, timestamp_ms, root_hash]        ; v = the protocol version, uint, uint, bstr(32)

signed with ECDSA P-256 / SHA-256 under the label ``labels.SIG_TREE_HEAD``
(``modbatt/v2/sig/tree-head``, length-framed by :meth:`PrivateKey.sign`). An array,
rather than a map, keeps the encoding free of any key-ordering question, so an outside
auditor reproduces it byte for byte with any CBOR library.

Everything here is pure: no I/O, no clock (the caller passes the timestamp).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..crypto import labels
from ..crypto.suite import SIGNATURE_BYTES, PrivateKey, PublicKey
from ..encoding import canonical_dumps, strict_loads
from ..errors import EncodingError, Reason, VerificationError
from . import merkle

__all__ = [
    "STH_VERSION",
    "SignedTreeHead",
    "sign_tree_head",
    "tree_head_message",
    "verify_consistency",
    "verify_inclusion",
]

#: Version tag inside the signed CBOR; a new layout means a new number, never a reuse.
STH_VERSION: Final = labels.PROTOCOL_VERSION
_MAX_UINT63: Final = (1 << 63) - 1


def _malformed(detail: str) -> VerificationError:
    return VerificationError(Reason.MALFORMED, detail)


def _check_uint(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_UINT63:
        raise _malformed(f"{name} must be an integer in [0, 2**63 - 1]")
    return value


def tree_head_message(tree_size: int, timestamp: int, root_hash: bytes) -> bytes:
    """The exact bytes an STH signature covers (before the label framing)."""
    _check_uint("tree_size", tree_size)
    _check_uint("timestamp", timestamp)
    if not isinstance(root_hash, (bytes, bytearray)) or len(root_hash) != merkle.HASH_BYTES:
        raise _malformed("root_hash must be 32 bytes")
    return canonical_dumps([STH_VERSION, tree_size, timestamp, bytes(root_hash)])


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    """A tree size and root hash at a time (ms since the Unix epoch), signed by ``public_key``.

    Construction checks only the shape of the fields; call :meth:`verify` before trusting
    a head received from anyone.
    """

    tree_size: int
    root_hash: bytes
    timestamp: int
    signature: bytes
    public_key: PublicKey

    def __post_init__(self) -> None:
        _check_uint("tree_size", self.tree_size)
        _check_uint("timestamp", self.timestamp)
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != merkle.HASH_BYTES:
            raise _malformed("root_hash must be 32 bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise _malformed("signature must be 64 bytes (r‖s)")
        if not isinstance(self.public_key, PublicKey):
            raise _malformed("public_key must be a PublicKey")

    @classmethod
    def sign(cls, private_key: PrivateKey, *, tree_size: int, root_hash: bytes, timestamp: int) -> SignedTreeHead:
        """Sign a tree head with the controller's key (deterministic ECDSA, RFC 6979)."""
        message = tree_head_message(tree_size, timestamp, root_hash)
        signature = private_key.sign(labels.SIG_TREE_HEAD, message)
        return cls(tree_size, bytes(root_hash), timestamp, signature, private_key.public_key)

    def signed_message(self) -> bytes:
        """The canonical CBOR the signature covers."""
        return tree_head_message(self.tree_size, self.timestamp, self.root_hash)

    def verify(self, public_key: PublicKey | None = None) -> None:
        """Check the signature; with ``public_key``, also that the head was signed by that key.

        Pass the pinned controller key whenever you have it: a head that verifies under a
        key it carries itself proves nothing about who signed it. Raises
        ``VerificationError(Reason.BAD_SIGNATURE)``.
        """
        if public_key is not None and public_key != self.public_key:
            raise VerificationError(
                Reason.BAD_SIGNATURE,
                f"tree head signed by key {self.public_key.key_id().hex()}, "
                f"expected the controller key {public_key.key_id().hex()}",
            )
        try:
            self.public_key.verify(labels.SIG_TREE_HEAD, self.signed_message(), self.signature)
        except VerificationError as exc:
            # Out-of-range r/s is as much a bad signature as a wrong one for a caller.
            raise VerificationError(Reason.BAD_SIGNATURE, f"tree head: {exc.detail}") from None

    # --- wire and JSON forms ------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Compact CBOR for the wire: ``[1, size, ts, root, signature, compressed key]``."""
        return canonical_dumps(
            [
                STH_VERSION,
                self.tree_size,
                self.timestamp,
                self.root_hash,
                self.signature,
                self.public_key.to_bytes(),
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedTreeHead:
        """Parse :meth:`to_bytes` output from an untrusted source (shape only; then verify)."""
        try:
            value = strict_loads(data, max_bytes=256)
        except EncodingError as exc:
            raise VerificationError(exc.reason, f"tree head: {exc}") from None
        if not isinstance(value, list) or len(value) != 6 or value[0] != STH_VERSION:
            raise _malformed(f"tree head is not a version-{STH_VERSION} six-element array")
        _, size, ts, root, sig, key = value
        if not isinstance(key, bytes):
            raise _malformed("tree head public key must be bytes")
        return cls(size, root, ts, sig, PublicKey.from_bytes(key))

    def to_dict(self) -> dict[str, Any]:
        """The JSON view used by ``Ledger.export()`` and the CLI (binary fields base64)."""
        return {
            "tree_size": self.tree_size,
            "root_hash": base64.b64encode(self.root_hash).decode("ascii"),
            "timestamp": self.timestamp,
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "public_key": base64.b64encode(self.public_key.to_spki_der()).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignedTreeHead:
        """Parse :meth:`to_dict` output from an untrusted source (shape only; then verify)."""
        if not isinstance(data, Mapping):
            raise _malformed("tree head must be a JSON object")
        expected = {"tree_size", "root_hash", "timestamp", "signature", "public_key"}
        if set(data) != expected:
            raise _malformed(f"tree head must have exactly the fields {sorted(expected)}")
        try:
            root = base64.b64decode(data["root_hash"], validate=True)
            sig = base64.b64decode(data["signature"], validate=True)
            der = base64.b64decode(data["public_key"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise _malformed("tree head has a field that is not base64") from None
        return cls(data["tree_size"], root, data["timestamp"], sig, PublicKey.from_spki_der(der))


def sign_tree_head(private_key: PrivateKey, *, tree_size: int, root_hash: bytes, timestamp: int) -> SignedTreeHead:
    """Module-level spelling of :meth:`SignedTreeHead.sign`."""
    return SignedTreeHead.sign(private_key, tree_size=tree_size, root_hash=root_hash, timestamp=timestamp)


def verify_inclusion(
    entry: bytes,
    index: int,
    proof: Sequence[bytes],
    sth: SignedTreeHead,
    public_key: PublicKey,
) -> None:
    """Offline Level-7 check: ``entry`` is leaf ``index`` of the log the controller signed.

    Needs only the pinned controller ``public_key``: the STH must be signed by exactly
    that key (``Reason.BAD_SIGNATURE`` otherwise) and the audit path must lead from
    ``SHA-256(0x00 || entry)`` to ``sth.root_hash`` (``Reason.BAD_PROOF`` otherwise).
    """
    sth.verify(public_key)
    if not isinstance(entry, (bytes, bytearray)):
        raise VerificationError(Reason.BAD_PROOF, "entry must be bytes")
    merkle.verify_inclusion(merkle.leaf_hash(bytes(entry)), index, sth.tree_size, proof, sth.root_hash)


def verify_consistency(
    old_sth: SignedTreeHead,
    new_sth: SignedTreeHead,
    proof: Sequence[bytes],
    public_key: PublicKey,
) -> None:
    """Offline check that ``new_sth``'s log is an append-only extension of ``old_sth``'s.

    Both heads must be signed by the pinned controller ``public_key``
    (``Reason.BAD_SIGNATURE``); the proof must be an RFC 9162 consistency proof between
    them (``Reason.BAD_PROOF``, also when the new head is smaller than the old one).
    Two heads of equal size with different roots are a provable fork (split view).
    """
    old_sth.verify(public_key)
    new_sth.verify(public_key)
    merkle.verify_consistency(old_sth.tree_size, new_sth.tree_size, old_sth.root_hash, new_sth.root_hash, proof)
