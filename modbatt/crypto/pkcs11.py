"""Binding private keys in a PKCS#11 token (an HSM, a secure element, SoftHSM for tests).

:class:`Pkcs11KeyBackend` implements :class:`~modbatt.crypto.keybackend.KeyBackend` with
python-pkcs11 (https://python-pkcs11.readthedocs.io). Keys are P-256 EC pairs generated *in the
token* with ``CKA_SENSITIVE`` true and ``CKA_EXTRACTABLE`` false, so the private scalar can never
be read or wrapped out (PKCS#11 v2.40 §4.9: neither attribute can be relaxed afterwards, and a
copy keeps them). Signing (``CKM_ECDSA`` over :func:`~modbatt.crypto.suite.signed_digest`) and
ECDH (``CKM_ECDH1_DERIVE``, null KDF) run in the token. The ECDH shared secret does leave it, as
a session object derived extractable and destroyed at once: HKDF and AES-GCM run on the host, as
for the file store, and the secret is one sealed box's, never the binding key.

:meth:`Pkcs11KeyBackend.generate` makes a *session* key pair (gone when the session closes), and
:meth:`~Pkcs11KeyBackend.store` copies it to token objects labelled ``prefix + name``: a binding
decision that is never persisted leaves nothing in the token. Every call goes through one
session guarded by a lock (PKCS#11 sessions are not thread-safe). Token signatures are randomized
ECDSA, not RFC 6979: they verify the same but are not reproducible.
"""

from __future__ import annotations

import hmac
import threading
from typing import Any, Final

from ..errors import ConfigError, KeyStoreError
from . import labels
from .rng import RandomSource
from .suite import COMPRESSED_POINT_BYTES, UNCOMPRESSED_POINT_BYTES, PublicKey, low_s, sha256, signed_digest

__all__ = ["Pkcs11KeyBackend", "TokenKey"]

_P256: Final = "secp256r1"
# (module, token label) -> labelled hash of the PIN this process logged in with.
_LOGINS: dict[tuple[str, str], bytes] = {}
_DER_HEADER: Final = bytes((0x04, UNCOMPRESSED_POINT_BYTES))  # OCTET STRING of 65 bytes


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise ConfigError("PKCS#11 keys need python-pkcs11 (pip install 'modbatt[hsm]')") from None
    return pkcs11


def _point(ec_point: bytes) -> bytes:
    """The SEC1 point from ``CKA_EC_POINT``: a DER OCTET STRING per PKCS#11, raw from some tokens."""
    data = bytes(ec_point)
    if data[:2] == _DER_HEADER and len(data) == len(_DER_HEADER) + UNCOMPRESSED_POINT_BYTES:
        return data[2:]
    if len(data) in (COMPRESSED_POINT_BYTES, UNCOMPRESSED_POINT_BYTES):
        return data
    raise KeyStoreError("the token returned an EC point of unexpected form")


class TokenKey:
    """A handle to an EC private key inside a token; the scalar is out of reach."""

    __slots__ = ("_backend", "_private", "_public", "_public_obj")

    #: Never from seeded randomness (the token has its own generator).
    reproducible = False

    def __init__(self, backend: Pkcs11KeyBackend, private: Any, public_obj: Any, public: PublicKey) -> None:
        self._backend = backend
        self._private = private
        self._public_obj = public_obj
        self._public = public

    @property
    def public_key(self) -> PublicKey:
        return self._public

    @property
    def extractable(self) -> bool:
        """What the token reports for ``CKA_EXTRACTABLE`` (always False for keys made here)."""
        p = _pkcs11()
        with self._backend._lock:
            return bool(self._private[p.Attribute.EXTRACTABLE])

    def sign(self, label: bytes, message: bytes) -> bytes:
        p = _pkcs11()
        with self._backend._guard("sign"):
            raw = self._private.sign(signed_digest(label, message, signer=self._public), mechanism=p.Mechanism.ECDSA)
        if len(raw) != 64:  # CKM_ECDSA returns r‖s, each as long as the order (PKCS#11 §2.3.1)
            raise KeyStoreError("the token returned a signature of unexpected length")
        return low_s(bytes(raw))  # tokens return either half; suite v1 accepts only low-S

    def exchange(self, peer: PublicKey) -> bytes:
        p = _pkcs11()
        other = peer.to_uncompressed()
        template = {p.Attribute.SENSITIVE: False, p.Attribute.EXTRACTABLE: True, p.Attribute.TOKEN: False}
        with self._backend._guard("ECDH"):
            secret = self._private.derive_key(
                p.KeyType.GENERIC_SECRET, 256, mechanism_param=(p.KDF.NULL, None, other), template=template
            )
            try:
                return bytes(secret[p.Attribute.VALUE])
            finally:
                secret.destroy()

    def __repr__(self) -> str:
        return f"TokenKey(public_key_id={self._public.key_id().hex()})"

    def __reduce__(self) -> object:  # pragma: no cover - defensive
        raise TypeError("token keys cannot be pickled")


class Pkcs11KeyBackend:
    """Binding keys in the token labelled ``token_label`` of the PKCS#11 ``module``.

    ``prefix`` namespaces this entity's objects (several entities may share a token). Errors
    opening the module, finding the token or logging in are :class:`KeyStoreError` naming what
    failed, never the PIN.
    """

    joins_store_transaction = False

    def __init__(self, module: str, *, token_label: str, user_pin: str, prefix: str = "modbatt/") -> None:
        p = _pkcs11()
        self.prefix = prefix
        self._lock = threading.RLock()
        self._closed = False
        try:
            self._token = p.lib(module).get_token(token_label=token_label)
        except p.exceptions.PKCS11Error as exc:
            detail = exc.__class__.__name__
            raise KeyStoreError(f"no PKCS#11 token {token_label!r} in {module} ({detail})") from None
        except (OSError, RuntimeError) as exc:
            raise KeyStoreError(f"cannot load PKCS#11 module {module} ({exc.__class__.__name__})") from None
        login = (module, token_label)
        pin_hash = sha256(labels.PKCS11_PIN_CHECK + user_pin.encode("utf-8"))
        try:
            self._session = self._token.open(rw=True, user_pin=user_pin)
        except p.exceptions.UserAlreadyLoggedIn:
            # PKCS#11 logs in per application, not per session, and a second login is refused
            # without checking the PIN: another backend of this process logged in, so compare with
            # the PIN it used rather than let any PIN through.
            if not hmac.compare_digest(_LOGINS.get(login, b""), pin_hash):
                raise KeyStoreError(f"token {token_label!r} is logged in with another PIN") from None
            self._session = self._token.open(rw=True)
        except p.exceptions.PKCS11Error as exc:
            raise KeyStoreError(f"cannot log in to token {token_label!r} ({exc.__class__.__name__})") from None
        _LOGINS[login] = pin_hash

    def _guard(self, what: str) -> Any:
        return _Guard(self._lock, what)

    def _label(self, name: str) -> str:
        return self.prefix + name

    def generate(self, rng: RandomSource | None = None) -> TokenKey:
        """A session key pair made in the token (``rng`` is not used: the token draws its own)."""
        p = _pkcs11()
        from pkcs11.util.ec import encode_named_curve_parameters

        with self._guard("key generation"):
            params = self._session.create_domain_parameters(
                p.KeyType.EC, {p.Attribute.EC_PARAMS: encode_named_curve_parameters(_P256)}, local=True
            )
            public_obj, private = params.generate_keypair(
                store=False,
                private_template={
                    p.Attribute.SENSITIVE: True,
                    p.Attribute.EXTRACTABLE: False,
                    p.Attribute.SIGN: True,
                    p.Attribute.DERIVE: True,
                },
            )
            point = _point(public_obj[p.Attribute.EC_POINT])
        return TokenKey(self, private, public_obj, PublicKey.from_bytes(point))

    def store(self, name: str, key: Any) -> None:
        """Copy a session key from :meth:`generate` into the token as ``prefix + name``."""
        p = _pkcs11()
        if not isinstance(key, TokenKey) or key._backend is not self:
            raise TypeError("only keys generated by this token backend can be stored in it")
        if name in self:
            raise KeyStoreError(f"a key named {name!r} is already in the token")
        attrs = {p.Attribute.TOKEN: True, p.Attribute.LABEL: self._label(name)}
        with self._guard("storing a key"):
            private = key._private.copy(attrs)
            try:
                public_obj = key._public_obj.copy(attrs)
            except p.exceptions.PKCS11Error:
                private.destroy()
                raise
            key._private.destroy()
            key._public_obj.destroy()
            key._private, key._public_obj = private, public_obj

    def load(self, name: str) -> TokenKey:
        p = _pkcs11()
        with self._guard("loading a key"):
            try:
                private = self._session.get_key(p.ObjectClass.PRIVATE_KEY, p.KeyType.EC, label=self._label(name))
                public_obj = self._session.get_key(p.ObjectClass.PUBLIC_KEY, p.KeyType.EC, label=self._label(name))
            except (p.exceptions.NoSuchKey, p.exceptions.MultipleObjectsReturned):
                raise KeyStoreError(f"no single key named {name!r} in the token") from None
            point = _point(public_obj[p.Attribute.EC_POINT])
        return TokenKey(self, private, public_obj, PublicKey.from_bytes(point))

    def delete(self, name: str) -> None:
        p = _pkcs11()
        with self._guard("deleting a key"):
            found = list(self._session.get_objects({p.Attribute.LABEL: self._label(name), p.Attribute.TOKEN: True}))
            if not found:
                raise KeyStoreError(f"no key named {name!r} in the token")
            for obj in found:
                obj.destroy()

    def names(self) -> list[str]:
        """Names of the private keys this backend keeps in the token, sorted."""
        p = _pkcs11()
        with self._guard("listing keys"):
            query = {p.Attribute.CLASS: p.ObjectClass.PRIVATE_KEY, p.Attribute.TOKEN: True}
            objs = self._session.get_objects(query)
            labels = [str(o[p.Attribute.LABEL]) for o in objs]
        return sorted(label[len(self.prefix) :] for label in labels if label.startswith(self.prefix))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def close(self) -> None:
        """Close the session (idempotent); session keys never stored vanish with it."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._session.close()

    def __enter__(self) -> Pkcs11KeyBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Guard:
    """The backend lock, and token errors turned into :class:`KeyStoreError` naming the operation."""

    __slots__ = ("_lock", "_what")

    def __init__(self, lock: threading.RLock, what: str) -> None:
        self._lock, self._what = lock, what

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self._lock.release()
        if exc is not None and exc.__class__.__module__.startswith("pkcs11"):
            raise KeyStoreError(f"token {self._what} failed ({exc.__class__.__name__})") from None
        return False
