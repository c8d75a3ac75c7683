"""Where binding private keys live: the interface, and the default backend over the key store.

Protocol code needs three things from a private key: its public half, labelled signatures and
ECDH (:class:`SigningKey`; :class:`~modbatt.crypto.suite.PrivateKey` is one). A
:class:`KeyBackend` makes, keeps and destroys such keys by name. The default,
:class:`FileKeyBackend`, keeps them in the encrypted :class:`~modbatt.crypto.keystore.KeyStore`;
:class:`~modbatt.crypto.pkcs11.Pkcs11KeyBackend` keeps them in a PKCS#11 token, where they are
generated, used and destroyed without ever leaving it (docs/crypto.md §Hardware key protection).

A fresh key from :meth:`KeyBackend.generate` is not stored yet: a binding decision is computed
first and persisted after (docs/architecture.md, two-phase decisions), and :meth:`KeyBackend.store`
is the persisting step. ``joins_store_transaction`` says whether ``store``/``delete`` take part
in an open key-store transaction (file backend) or act on their own medium at once (a token), so
the entity can order the two writes to never leave a record without its key.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .keystore import KeyStore
from .rng import RandomSource
from .suite import PrivateKey, PublicKey

__all__ = ["FileKeyBackend", "KeyBackend", "SigningKey"]


@runtime_checkable
class SigningKey(Protocol):
    """A private key as protocol code uses it; its secret may be out of reach (in a token)."""

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, label: bytes, message: bytes) -> bytes:
        """A raw 64-byte r‖s ECDSA-P256-SHA256 signature over the label-framed ``message``."""
        ...

    def exchange(self, peer: PublicKey) -> bytes:
        """The 32-byte ECDH shared secret (x coordinate) with a validated peer key."""
        ...


class KeyBackend(Protocol):
    """Makes, keeps and destroys named binding private keys."""

    joins_store_transaction: bool

    def generate(self, rng: RandomSource | None = None) -> SigningKey:
        """A new key, not stored yet (a token may ignore ``rng`` and use its own generator)."""
        ...

    def store(self, name: str, key: SigningKey) -> None:
        """Persist a key from :meth:`generate` under ``name``; refuses to overwrite one."""
        ...

    def load(self, name: str) -> SigningKey: ...

    def delete(self, name: str) -> None: ...

    def __contains__(self, name: object) -> bool: ...


class FileKeyBackend:
    """The default: keys as scalars in an encrypted :class:`KeyStore` (joins its transactions)."""

    joins_store_transaction = True

    def __init__(self, store: KeyStore) -> None:
        self.keystore = store

    def generate(self, rng: RandomSource | None = None) -> PrivateKey:
        return PrivateKey.generate(rng)

    def store(self, name: str, key: SigningKey) -> None:
        if not isinstance(key, PrivateKey):
            raise TypeError("a file key store keeps modbatt PrivateKeys")
        self.keystore.put_private_key(name, key)

    def load(self, name: str) -> PrivateKey:
        return self.keystore.private_key(name)

    def delete(self, name: str) -> None:
        self.keystore.delete(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.keystore.key_names()
