"""The key store's sealed file: header, KDF, key-encryption key, body (docs/crypto.md §7).

A small clear header (magic, format version, flags, KDF id and parameters, salt, key-check
value, nonce, body length) is bound as AES-256-GCM associated data; the body is the
canonical-CBOR map ``{"format": 1, "keys": {name: scalar}, "records": {name: map}}``,
encrypted under the key-encryption key (KEK). The KEK comes from a passphrase (Argon2id, or
scrypt where Argon2id is unavailable) or from a key file, finished with HKDF-SHA256 under the
store's label. Everything here works on bytes; reading and writing files is
:mod:`modbatt.crypto.keystore`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import stat
import struct
import unicodedata
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..encoding import canonical_dumps, strict_loads
from ..errors import EncodingError, KeyStoreError, ReproducibleModeError, VerificationError
from . import labels
from .rng import REPRODUCIBLE_ENV, reproducible_mode_allowed
from .suite import AEAD_NONCE_BYTES, AEAD_TAG_BYTES, aead_decrypt, aead_encrypt, hkdf_sha256

try:  # cryptography >= 44 with OpenSSL >= 3.2
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
except ImportError:  # pragma: no cover - depends on the installed OpenSSL
    Argon2id = None  # type: ignore[assignment,misc]

__all__ = ["BACKUP_MAGIC", "FORMAT_VERSION", "HEADER_BYTES", "STORE_MAGIC", "KdfParams", "argon2id_available"]

_log = logging.getLogger("modbatt.crypto.keystore")

STORE_MAGIC: Final = b"MBKSTORE"
BACKUP_MAGIC: Final = b"MBKSBKUP"
FORMAT_VERSION: Final = 1
_BODY_FORMAT: Final = 1

# magic, version, flags, kdf id, kdf params (3 x u32), salt, key-check value, nonce, body length.
_HEADER = struct.Struct(">8sBBBIII16s16s12sI")
HEADER_BYTES: Final = _HEADER.size  # 71
_SALT_BYTES: Final = 16
_KCV_BYTES: Final = 16
_KEK_BYTES: Final = 32

_FLAG_REPRODUCIBLE: Final = 0x01
_KNOWN_FLAGS: Final = _FLAG_REPRODUCIBLE

_KDF_SCRYPT: Final = 1
_KDF_ARGON2ID: Final = 2
_KDF_KEY_FILE: Final = 3

#: Largest body we write or accept; keeps a hostile file from exhausting memory.
_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
_MAX_FILE_BYTES: Final = HEADER_BYTES + _MAX_BODY_BYTES + AEAD_TAG_BYTES
_MIN_KEY_FILE_BYTES: Final = 32
_MAX_KEY_FILE_BYTES: Final = 4096
_MAX_NAME_CHARS: Final = 128

# Upper bounds on KDF parameters read from a file: a tampered header must not be able to
# make open() allocate tens of GiB or spin for hours before the KCV check can fail. Memory
# admits RFC 9106's first recommended Argon2id option (2 GiB, one pass); the work (memory times
# passes, or scrypt's 128·N·r·p) is capped at 4 GiB, about twenty times the default profile:
# seconds on a desktop core, where 2 GiB times 1000 passes would take hours.
_MAX_KDF_MEMORY_BYTES: Final = 2 * 1024**3
_MAX_KDF_WORK_BYTES: Final = 4 * 1024**3
_MAX_ARGON2_ITERATIONS: Final = 1000
_MAX_ARGON2_LANES: Final = 64
_MAX_SCRYPT_P: Final = 16
# Lower bounds for production (OWASP password-storage minimums); anything weaker is a test
# profile and needs MODBATT_REPRODUCIBLE=1 to be *created*.
_MIN_ARGON2_MEMORY_KIB: Final = 19 * 1024
_MIN_ARGON2_ITERATIONS: Final = 2
_MIN_SCRYPT_N: Final = 1 << 15
_MIN_SCRYPT_R: Final = 8


_argon2_probe: bool | None = None


def argon2id_available() -> bool:
    """True when ``cryptography`` and its OpenSSL provide Argon2id (OpenSSL >= 3.2)."""
    global _argon2_probe
    if _argon2_probe is None:
        if Argon2id is None:
            _argon2_probe = False
        else:
            try:
                Argon2id(salt=bytes(8), length=32, iterations=1, lanes=1, memory_cost=8).derive(b"probe")
                _argon2_probe = True
            except Exception:  # UnsupportedAlgorithm on an OpenSSL without Argon2
                _argon2_probe = False
    return _argon2_probe


@dataclasses.dataclass(frozen=True)
class KdfParams:
    """How a passphrase becomes key material; stored in the clear header of each file.

    Use :meth:`default` in production, :meth:`cheap` in tests. Argon2id fields are
    ``iterations``, ``memory_kib`` and ``lanes``; scrypt fields are ``n``, ``r`` and ``p``.
    """

    algorithm: str
    iterations: int = 0
    memory_kib: int = 0
    lanes: int = 0
    n: int = 0
    r: int = 0
    p: int = 0

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise KeyStoreError(f"unusable KDF parameters: {problem}")

    def _problem(self) -> str:
        if self.algorithm == "argon2id":
            if self.n or self.r or self.p:
                return "argon2id takes iterations, memory_kib and lanes, not n/r/p"
            if not 1 <= self.iterations <= _MAX_ARGON2_ITERATIONS:
                return f"argon2id iterations must be 1..{_MAX_ARGON2_ITERATIONS}"
            if not 1 <= self.lanes <= _MAX_ARGON2_LANES:
                return f"argon2id lanes must be 1..{_MAX_ARGON2_LANES}"
            if not 8 * self.lanes <= self.memory_kib <= _MAX_KDF_MEMORY_BYTES // 1024:
                return "argon2id memory_kib must be at least 8 x lanes and at most 2 GiB"
            if self.memory_kib * 1024 * self.iterations > _MAX_KDF_WORK_BYTES:
                return "argon2id memory times iterations exceeds 4 GiB"
            return ""
        if self.algorithm == "scrypt":
            if self.iterations or self.memory_kib or self.lanes:
                return "scrypt takes n, r and p, not iterations/memory_kib/lanes"
            if self.n < 2 or self.n & (self.n - 1):
                return "scrypt n must be a power of two >= 2"
            if not 1 <= self.p <= _MAX_SCRYPT_P or self.r < 1:
                return f"scrypt needs r >= 1 and 1 <= p <= {_MAX_SCRYPT_P}"
            if 128 * self.n * self.r > _MAX_KDF_MEMORY_BYTES:
                return "scrypt memory (128 x n x r) exceeds 2 GiB"
            if 128 * self.n * self.r * self.p > _MAX_KDF_WORK_BYTES:
                return "scrypt work (128 x n x r x p) exceeds 4 GiB"
            return ""
        return f"unknown KDF {self.algorithm!r} (argon2id or scrypt)"

    @classmethod
    def argon2id(cls, *, iterations: int = 3, memory_kib: int = 64 * 1024, lanes: int = 4) -> KdfParams:
        """Argon2id; the defaults are RFC 9106's second recommended option (64 MiB, t=3, p=4)."""
        return cls("argon2id", iterations=iterations, memory_kib=memory_kib, lanes=lanes)

    @classmethod
    def scrypt(cls, *, n: int = 1 << 17, r: int = 8, p: int = 1) -> KdfParams:
        """scrypt; the defaults are OWASP's (N=2^17, r=8, p=1: 128 MiB)."""
        return cls("scrypt", n=n, r=r, p=p)

    @classmethod
    def default(cls) -> KdfParams:
        """Argon2id when available, else scrypt: about 0.2-0.5 s per open on a desktop core."""
        return cls.argon2id() if argon2id_available() else cls.scrypt()

    @classmethod
    def cheap(cls) -> KdfParams:
        """A deliberately weak profile for tests (sub-millisecond). Creating a store with it
        requires ``MODBATT_REPRODUCIBLE=1``."""
        if argon2id_available():
            return cls.argon2id(iterations=1, memory_kib=8, lanes=1)
        return cls.scrypt(n=16, r=1, p=1)  # pragma: no cover - depends on OpenSSL

    @property
    def is_weak(self) -> bool:
        """Below the production minimum (see :meth:`cheap`)."""
        if self.algorithm == "argon2id":
            return self.memory_kib < _MIN_ARGON2_MEMORY_KIB or self.iterations < _MIN_ARGON2_ITERATIONS
        return self.n < _MIN_SCRYPT_N or self.r < _MIN_SCRYPT_R

    def _header_fields(self) -> tuple[int, int, int, int]:
        if self.algorithm == "argon2id":
            return _KDF_ARGON2ID, self.iterations, self.memory_kib, self.lanes
        return _KDF_SCRYPT, self.n, self.r, self.p

    def _derive(self, secret: bytes, salt: bytes) -> bytes:
        if self.algorithm == "argon2id":
            if not argon2id_available():
                raise KeyStoreError("this key store uses Argon2id, which the installed OpenSSL lacks")
            return Argon2id(
                salt=salt,
                length=32,
                iterations=self.iterations,
                lanes=self.lanes,
                memory_cost=self.memory_kib,
            ).derive(secret)
        return Scrypt(salt=salt, length=32, n=self.n, r=self.r, p=self.p).derive(secret)


@dataclasses.dataclass(frozen=True)
class _Header:
    magic: bytes
    flags: int
    kdf_id: int
    params: tuple[int, int, int]
    salt: bytes
    kcv: bytes
    nonce: bytes
    body_len: int

    def pack(self) -> bytes:
        return _HEADER.pack(
            self.magic, FORMAT_VERSION, self.flags, self.kdf_id, *self.params,
            self.salt, self.kcv, self.nonce, self.body_len,
        )  # fmt: skip

    @property
    def kdf(self) -> KdfParams | None:
        return _kdf_from_fields(self.kdf_id, self.params)


def _kdf_from_fields(kdf_id: int, params: tuple[int, int, int]) -> KdfParams | None:
    """The KDF a header names (None for key-file stores); raises on out-of-bounds values."""
    a, b, c = params
    if kdf_id == _KDF_ARGON2ID:
        return KdfParams("argon2id", iterations=a, memory_kib=b, lanes=c)
    if kdf_id == _KDF_SCRYPT:
        return KdfParams("scrypt", n=a, r=b, p=c)
    return None


@dataclasses.dataclass
class _State:
    """What the body holds. Values are immutable (bytes) or private deep copies."""

    keys: dict[str, bytes] = dataclasses.field(default_factory=dict)
    records: dict[str, Any] = dataclasses.field(default_factory=dict)

    def copy(self) -> _State:
        return _State(dict(self.keys), dict(self.records))

    def encode(self) -> bytes:
        return canonical_dumps({"format": _BODY_FORMAT, "keys": self.keys, "records": self.records})


@dataclasses.dataclass(frozen=True)
class _Unlocked:
    """Everything needed to write a file again without re-running the KDF."""

    magic: bytes
    flags: int
    kdf_id: int
    params: tuple[int, int, int]
    salt: bytes
    kcv: bytes
    kek: bytes = dataclasses.field(repr=False)


# --------------------------------------------------------------------------- helpers


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    if isinstance(passphrase, str):
        # NFC so that the same passphrase typed on different systems gives the same bytes.
        passphrase = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    elif not isinstance(passphrase, (bytes, bytearray)):
        raise KeyStoreError("a passphrase is a str or bytes")
    if not passphrase:
        raise KeyStoreError("the passphrase is empty")
    return bytes(passphrase)


def _read_key_file(key_file: str | os.PathLike[str]) -> bytes:
    path = Path(key_file)
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size > _MAX_KEY_FILE_BYTES:
                raise KeyStoreError(f"key file {path} is larger than {_MAX_KEY_FILE_BYTES} bytes")
            data = fh.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyStoreError(f"cannot read key file {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) < _MIN_KEY_FILE_BYTES:
        raise KeyStoreError(f"key file {path} holds {len(data)} bytes; at least {_MIN_KEY_FILE_BYTES} needed")
    if st.st_mode & 0o077:
        _log.warning("key file %s is readable by group or others (mode %o)", path, stat.S_IMODE(st.st_mode))
    return data


def _unlock_secret(
    passphrase: str | bytes | None, key_file: str | os.PathLike[str] | None
) -> tuple[bytes, bool]:
    """The raw secret and whether it came from a key file."""
    if (passphrase is None) == (key_file is None):
        raise KeyStoreError("give exactly one of passphrase= or key_file=")
    if passphrase is not None:
        return _passphrase_bytes(passphrase), False
    assert key_file is not None
    return _read_key_file(key_file), True


def _derive(
    secret: bytes, kdf_id: int, params: tuple[int, int, int], salt: bytes, label: bytes
) -> tuple[bytes, bytes]:
    """KEK and key-check value from the unlock secret.

    The passphrase (or key file) goes through the stretching KDF named in the header, then
    HKDF-SHA256 with the store's label, whose 48 output bytes split into KEK ‖ KCV. The KCV
    lets open() tell "wrong passphrase" from "corrupted file"; it gives an attacker no
    cheaper guess test than the GCM tag already does.
    """
    if kdf_id == _KDF_KEY_FILE:
        ikm = secret
    else:
        header_kdf = _kdf_from_fields(kdf_id, params)
        assert header_kdf is not None
        try:
            ikm = header_kdf._derive(secret, salt)
        except KeyStoreError:
            raise
        except MemoryError:
            raise KeyStoreError("the header's KDF parameters need more memory than this process may use") from None
        except Exception:
            # No detail: the KDF's own error text is not ours to vouch for.
            raise KeyStoreError("the key-derivation function rejected the header's parameters") from None
    okm = hkdf_sha256(ikm, info=label, salt=salt, length=_KEK_BYTES + _KCV_BYTES)
    return okm[:_KEK_BYTES], okm[_KEK_BYTES:]


def _parse_header(data: bytes, path: object, expected_magic: bytes) -> _Header:
    if len(data) < HEADER_BYTES:
        raise KeyStoreError(f"{path} is truncated or is not a modbatt key store ({len(data)} bytes)")
    magic, version, flags, kdf_id, a, b, c, salt, kcv, nonce, body_len = _HEADER.unpack_from(data)
    if magic != expected_magic:
        if magic == BACKUP_MAGIC:
            raise KeyStoreError(f"{path} is a key-store backup; restore it with KeyStore.restore_backup()")
        if magic == STORE_MAGIC:
            raise KeyStoreError(f"{path} is a key store, not a backup")
        raise KeyStoreError(f"{path} is not a modbatt key store (bad magic)")
    if version != FORMAT_VERSION:
        raise KeyStoreError(
            f"{path} has key-store format version {version}; this modbatt reads {FORMAT_VERSION}"
        )
    if flags & ~_KNOWN_FLAGS:
        raise KeyStoreError(f"{path} has unknown header flags {flags:#04x} (damaged or from a newer modbatt)")
    header = _Header(magic, flags, kdf_id, (a, b, c), salt, kcv, nonce, body_len)
    if kdf_id == _KDF_KEY_FILE:
        if (a, b, c) != (0, 0, 0):
            raise KeyStoreError(f"{path} has a damaged header (key-file parameters)")
    elif kdf_id in (_KDF_SCRYPT, _KDF_ARGON2ID):
        try:
            header.kdf  # noqa: B018 - validates the parameters against our bounds
        except KeyStoreError:
            raise KeyStoreError(f"{path} has a damaged header (KDF parameters out of bounds)") from None
    else:
        raise KeyStoreError(f"{path} has a damaged header (unknown KDF id {kdf_id})")
    if body_len < AEAD_TAG_BYTES or body_len > _MAX_BODY_BYTES + AEAD_TAG_BYTES:
        raise KeyStoreError(f"{path} has a damaged header (body length {body_len})")
    actual = len(data) - HEADER_BYTES
    if actual < body_len:
        raise KeyStoreError(f"{path} is truncated: body has {actual} of {body_len} bytes")
    if actual > body_len:
        raise KeyStoreError(f"{path} has {actual - body_len} unexpected bytes after the body")
    return header


def _decode_body(plain: bytes, path: object) -> _State:
    try:
        body = strict_loads(plain, max_bytes=_MAX_BODY_BYTES)
    except EncodingError:
        raise KeyStoreError(f"{path} decrypted but its body is not canonical CBOR") from None
    if not isinstance(body, dict) or set(body) != {"format", "keys", "records"}:
        raise KeyStoreError(f"{path} decrypted but its body has an unexpected structure")
    if body["format"] != _BODY_FORMAT:
        raise KeyStoreError(f"{path} has body format {body['format']!r}; this modbatt reads {_BODY_FORMAT}")
    keys, records = body["keys"], body["records"]
    if not isinstance(keys, dict) or not isinstance(records, dict):
        raise KeyStoreError(f"{path} decrypted but its body has an unexpected structure")
    for name, scalar in keys.items():
        _check_name(name)
        if not isinstance(scalar, bytes) or len(scalar) != 32:
            raise KeyStoreError(f"{path}: private key {name!r} is not a 32-byte scalar")
    for name, value in records.items():
        _check_name(name)
        if not isinstance(value, dict):
            raise KeyStoreError(f"{path}: record {name!r} is not a map")
    if set(keys) & set(records):
        raise KeyStoreError(f"{path}: a name is used both for a key and for a record")
    return _State(keys, records)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME_CHARS or not name.isprintable():
        raise KeyStoreError(f"a key-store name is 1..{_MAX_NAME_CHARS} printable characters")
    return name


def _new_unlocked(
    magic: bytes,
    label: bytes,
    secret: bytes,
    from_key_file: bool,
    kdf: KdfParams | None,
    reproducible: bool,
) -> _Unlocked:
    if from_key_file:
        if kdf is not None:
            raise KeyStoreError("kdf= applies to passphrases; a key file is used through HKDF only")
        kdf_id, params = _KDF_KEY_FILE, (0, 0, 0)
    else:
        kdf = kdf if kdf is not None else KdfParams.default()
        if kdf.is_weak and not reproducible_mode_allowed():
            raise ReproducibleModeError(
                f"KDF parameters below the production minimum are for tests only; set {REPRODUCIBLE_ENV}=1"
            )
        kdf_id, *rest = kdf._header_fields()
        params = (rest[0], rest[1], rest[2])
    salt = secrets.token_bytes(_SALT_BYTES)
    kek, kcv = _derive(secret, kdf_id, params, salt, label)
    flags = _FLAG_REPRODUCIBLE if reproducible else 0
    return _Unlocked(magic, flags, kdf_id, params, salt, kcv, kek)


def _seal(unlocked: _Unlocked, state: _State) -> bytes:
    body = state.encode()
    if len(body) > _MAX_BODY_BYTES:
        raise KeyStoreError(f"key-store contents exceed {_MAX_BODY_BYTES} bytes")
    # A fresh random 96-bit nonce per write under the long-lived KEK: safe for far more
    # writes (2^32) than a key store will ever see.
    nonce = secrets.token_bytes(AEAD_NONCE_BYTES)
    header = _Header(
        unlocked.magic, unlocked.flags, unlocked.kdf_id, unlocked.params, unlocked.salt, unlocked.kcv,
        nonce, len(body) + AEAD_TAG_BYTES,
    ).pack()  # fmt: skip
    # The whole clear header is associated data, so no header byte can change unnoticed.
    return header + aead_encrypt(unlocked.kek, nonce, body, labels.KEYSTORE_BLOB + header)


def _unseal(
    data: bytes, path: Path, magic: bytes, label: bytes, secret: bytes, from_key_file: bool
) -> tuple[_Unlocked, _State]:
    header = _parse_header(data, path, magic)
    if header.kdf_id == _KDF_KEY_FILE and not from_key_file:
        raise KeyStoreError(f"{path} is unlocked with a key file, not a passphrase")
    if header.kdf_id != _KDF_KEY_FILE and from_key_file:
        raise KeyStoreError(f"{path} is unlocked with a passphrase, not a key file")
    kek, kcv = _derive(secret, header.kdf_id, header.params, header.salt, label)
    if not secrets.compare_digest(kcv, header.kcv):
        what = "key file" if from_key_file else "passphrase"
        raise KeyStoreError(f"wrong {what} for {path} (or its header is damaged)")
    state = _open_body(data, header, kek, path)
    return _Unlocked(
        header.magic, header.flags, header.kdf_id, header.params, header.salt, header.kcv, kek
    ), state


def _reseal_check(data: bytes, path: Path, unlocked: _Unlocked) -> _State:
    """Decrypt a store file written by another holder of the same KEK (see :meth:`KeyStore.refresh`)."""
    header = _parse_header(data, path, unlocked.magic)
    same = (header.flags, header.kdf_id, header.params, header.salt, header.kcv) == (
        unlocked.flags, unlocked.kdf_id, unlocked.params, unlocked.salt, unlocked.kcv,
    )  # fmt: skip
    if not same:
        raise KeyStoreError(f"{path} was re-created or restored by someone else; reopen it")
    return _open_body(data, header, unlocked.kek, path)


def _open_body(data: bytes, header: _Header, kek: bytes, path: Path) -> _State:
    """Authenticate and decode the body; the whole clear header is associated data."""
    try:
        plain = aead_decrypt(kek, header.nonce, data[HEADER_BYTES:], labels.KEYSTORE_BLOB + data[:HEADER_BYTES])
    except VerificationError:
        raise KeyStoreError(f"{path} is corrupted or has been tampered with (authentication failed)") from None
    return _decode_body(plain, path)
