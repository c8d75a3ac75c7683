"""The key-free binding witness: a broadcast that a binding was recorded, naming no key.

After the controller records a binding it may broadcast a witness (docs/binding.md,
Witness: the optional step 5 of the ModBatt binding) so that parties without access to the
ledger learn that *some* binding of two parties exists. It carries no semi-public key and no key
commitment, only:

* ``binding_id``;
* ``entity_a_hash`` / ``entity_b_hash`` = SHA-256(``modbatt/v2/witness/access-data-hash`` ‖
  deterministic CBOR of the party's access data), 32 bytes each;
* ``timestamp``, the binding record's own RFC 3339 time;
* ``sig``, the controller's signature (label ``modbatt/v2/sig/binding-witness``) over the
  canonical CBOR of the map without ``sig``.

Linkability: the hashes do not hide who is bound. ``binding_id`` is in clear and access data is
guessable (device ids and CAN addresses follow patterns), so anyone who can guess a party's access
data can confirm it is in the binding (:meth:`BindingWitness.names`). docs/binding.md §Witness.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from ..crypto import labels
from ..crypto.suite import SIGNATURE_BYTES, PrivateKey, PublicKey, sha256
from ..encoding import canonical_dumps, strict_loads
from ..errors import Reason, VerificationError
from ._fields import expect_map, malformed
from .access import AccessData
from .binding import TIMESTAMP, BindingRecord
from .schema import Record, authenticator, bytes_, record, uuid_, wire

__all__ = ["WITNESS_KIND", "BindingWitness", "access_hash"]

WITNESS_KIND: Final = "binding_witness"
_VERSION: Final = labels.PROTOCOL_VERSION
_MAX_BYTES: Final = 512  # an encoded witness is 276 bytes
_HASH_BYTES: Final = 32
#: The constant keys of every witness, outside its declared fields.
_HEADER: Final = frozenset({"v", "kind"})


def access_hash(access: AccessData) -> bytes:
    """SHA-256 over the labelled deterministic CBOR of ``access`` (one encoding per value)."""
    return sha256(labels.WITNESS_ACCESS_HASH + canonical_dumps(access.to_dict()))


@record(what="binding witness")
class BindingWitness(Record):
    """The witness broadcast; make one with :meth:`of` and :meth:`sign`, read one with :meth:`decode`.

    Its fields are declared once (docs/architecture.md, Message schema); the time is declared
    first because an untrusted witness is read in declaration order and its time is checked first.
    """

    timestamp: str = wire(TIMESTAMP)
    binding_id: str = wire(uuid_)
    entity_a_hash: bytes = wire(bytes_(_HASH_BYTES))
    entity_b_hash: bytes = wire(bytes_(_HASH_BYTES))
    signature: bytes = authenticator(kind=bytes_(SIGNATURE_BYTES), name="sig")

    @classmethod
    def of(cls, record: BindingRecord) -> BindingWitness:
        """The unsigned witness of a recorded binding."""
        return cls(
            timestamp=record.timestamp,
            binding_id=record.binding_id,
            entity_a_hash=access_hash(record.entity_a.access_data),
            entity_b_hash=access_hash(record.entity_b.access_data),
        )

    def _body(self) -> dict[str, Any]:
        return {"v": _VERSION, "kind": WITNESS_KIND, **self.signed_map()}

    def sign(self, controller_key: PrivateKey) -> BindingWitness:
        sig = controller_key.sign(labels.SIG_BINDING_WITNESS, canonical_dumps(self._body()))
        return dataclasses.replace(self, signature=sig)

    def encode(self) -> bytes:
        """The broadcast bytes (deterministic CBOR)."""
        if not self.signature:
            raise VerificationError(Reason.UNAUTHORIZED, "the witness is not signed")
        return canonical_dumps({"v": _VERSION, "kind": WITNESS_KIND, **self.to_cbor()})

    @classmethod
    def decode(cls, data: bytes) -> BindingWitness:
        """Parse untrusted bytes strictly (the signature is checked by :meth:`verify`)."""
        schema = cls.__schema__
        m = expect_map(strict_loads(data, max_bytes=_MAX_BYTES), schema.what, required=set(schema.names | _HEADER))
        if m["v"] != _VERSION or m["kind"] != WITNESS_KIND:
            raise malformed(f"not a version-{_VERSION} binding witness")
        return cls(**schema.read(m, extra=_HEADER))

    def verify(self, controller_key: PublicKey) -> None:
        """Raise ``bad_signature`` unless ``controller_key`` signed this witness."""
        controller_key.verify(labels.SIG_BINDING_WITNESS, canonical_dumps(self._body()), self.signature)

    def names(self, a: AccessData, b: AccessData) -> bool:
        """Whether this witness is of a binding between ``a`` and ``b`` (either order)."""
        return {access_hash(a), access_hash(b)} == {self.entity_a_hash, self.entity_b_hash}

    def matches(self, record: BindingRecord) -> None:
        """Raise unless this witness is of ``record`` (binding id, both parties, time)."""
        if record.binding_id != self.binding_id:
            raise VerificationError(Reason.WRONG_SESSION, "witness of another binding")
        if (access_hash(record.entity_a.access_data), access_hash(record.entity_b.access_data)) != (
            self.entity_a_hash,
            self.entity_b_hash,
        ) or record.timestamp != self.timestamp:
            raise VerificationError(Reason.HASH_MISMATCH, "witness names other parties or another time")
