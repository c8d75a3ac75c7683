"""Shared pieces of the validation machines: typed messages, strict decoding, freshness, sessions.

Every validation message is a canonical-CBOR map ``{"v": 2, "type": T, "level": L, <fields>,
<auth>}`` where ``<auth>`` is a signature or MAC over the canonical CBOR of the map without it.
Decoding checks the version, then the level (a message of another level is ``wrong_level``,
before anything else is looked at), then the type and the exact field set, then each field.
Nothing here does I/O or reads a clock: every check takes ``now`` (unix seconds).
"""

from __future__ import annotations

import collections
import dataclasses
import hmac as _hmac
from collections.abc import Callable, Hashable, Mapping
from typing import Any, ClassVar, Self

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from ...crypto import labels
from ...crypto.freshness import ReplayWindow
from ...crypto.suite import AEAD_NONCE_BYTES, aead_decrypt, aead_encrypt, hkdf_sha256, sha256
from ...encoding import canonical_dumps, strict_loads
from ...errors import EncodingError, Reason, VerificationError, counts_rejections
from ...model._fields import expect_map, integer, malformed, raw_bytes, text
from ...model.access import AccessData
from ..messages import CLOCK_SKEW_S

__all__ = [
    "CLOCK_SKEW_S",
    "ID_BYTES",
    "MAC_BYTES",
    "MAX_MESSAGE_BYTES",
    "Counted",
    "Message",
    "SequenceGuard",
    "Session",
    "auth_variant",
    "check_timestamp",
    "counted",
    "digest",
    "mac",
]

#: Session ids, nonces and challenges are 16 random bytes.
ID_BYTES = 16
#: A validation message never needs more (the L7 bundle with a 20-hash proof is ~2 KiB).
MAX_MESSAGE_BYTES = 8192
#: HMAC-SHA256 authenticators (levels 3 and 4 under a MAC key, the level-6 pairing MAC).
MAC_BYTES = 32
_U63 = (1 << 63) - 1

Reader = Callable[[Any, str], Any]


# --------------------------------------------------------------------------- field readers


def b(size: int | None = None, max_len: int = 4096) -> Reader:
    """A byte-string field (exact ``size`` when given)."""
    return lambda v, w: raw_bytes(v, w, size=size, max_len=max_len)


def u(lo: int = 0, hi: int = _U63) -> Reader:
    """An unsigned integer field in ``[lo, hi]``."""
    return lambda v, w: integer(v, w, lo=lo, hi=hi)


def t(max_len: int = 64) -> Reader:
    """A text field."""
    return lambda v, w: text(v, w, max_len=max_len)


def one_of(*values: str) -> Reader:
    """A text field restricted to ``values``."""

    def read(v: Any, w: str) -> str:
        if v not in values:
            raise malformed(f"{w} must be one of {', '.join(values)}")
        return str(v)

    return read


def flag(v: Any, w: str) -> bool:
    if not isinstance(v, bool):
        raise malformed(f"{w} must be true or false")
    return v


def opt(reader: Reader) -> Reader:
    """``reader`` or CBOR null."""
    return lambda v, w: None if v is None else reader(v, w)


def access(v: Any, w: str) -> AccessData:
    return AccessData.from_dict(v, w)


def small_map(v: Any, w: str) -> dict[str, Any]:
    """A map of short text keys to scalars/bytes (event details, changes)."""
    if not isinstance(v, dict) or len(v) > 16:
        raise malformed(f"{w} must be a map of at most 16 entries")
    for key, item in v.items():
        text(key, f"{w} key", max_len=64)
        if not isinstance(item, (str, int, bytes, bool)) or (isinstance(item, (str, bytes)) and len(item) > 256):
            raise malformed(f"{w}.{key} must be a short text, integer, bool or byte string")
    return dict(v)


def _out(value: Any) -> Any:
    if hasattr(value, "to_cbor"):
        return value.to_cbor()
    if isinstance(value, AccessData):
        return value.to_dict()
    return value


def loads(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Strict canonical CBOR; an encoding problem becomes a classified ``VerificationError``."""
    try:
        return strict_loads(data, max_bytes=max_bytes)
    except EncodingError as exc:
        raise VerificationError(exc.reason, str(exc)) from None


def digest(data: bytes) -> bytes:
    """SHA-256 of a message's bytes (transcripts, request hashes)."""
    return sha256(data)


# --------------------------------------------------------------------------- messages


class Message:
    """Base of every typed validation message (frozen dataclasses below it).

    Subclasses set ``TYPE``, ``LEVEL``, ``SPEC`` (field name → reader, in declaration order)
    and ``AUTH`` (the name of the signature/MAC field, ``None`` for an unauthenticated message).
    """

    TYPE: ClassVar[str]
    LEVEL: ClassVar[int]
    SPEC: ClassVar[Mapping[str, Reader]]
    AUTH: ClassVar[str | None] = "sig"
    AUTH_SIZES: ClassVar[tuple[int, ...]] = (64,)
    #: The protocol profiles that use this message class (docs/profiles.md).
    PROFILES: ClassVar[tuple[str, ...]] = ("seed", "efficient")

    def body(self) -> dict[str, Any]:
        out = {name: _out(getattr(self, name)) for name in self.SPEC}
        return {**out, "v": labels.PROTOCOL_VERSION, "type": self.TYPE, "level": self.LEVEL}

    def signed_bytes(self) -> bytes:
        """What the signature or MAC covers: every field but the authenticator, canonically."""
        return canonical_dumps(self.body())

    def encode(self) -> bytes:
        body = self.body()
        if self.AUTH is not None:
            body[self.AUTH] = getattr(self, self.AUTH)
        return canonical_dumps(body)

    def authenticated(self, value: bytes) -> Self:
        """A copy carrying ``value`` as its signature/MAC."""
        assert self.AUTH is not None
        return dataclasses.replace(self, **{self.AUTH: value})  # type: ignore[type-var]

    @classmethod
    def peek_level(cls, data: bytes) -> int:
        """The level a message claims (for routing); ``malformed`` if it names none."""
        value = loads(data)
        if not isinstance(value, dict) or not isinstance(value.get("level"), int):
            raise malformed("not a validation message")
        return int(value["level"])

    @classmethod
    def decode(cls, data: bytes) -> Self:
        value = loads(data)
        if not isinstance(value, dict):
            raise malformed("a validation message is a CBOR map")
        if value.get("v") != labels.PROTOCOL_VERSION:
            raise malformed("unsupported validation message version")
        if value.get("level") != cls.LEVEL:
            raise VerificationError(
                Reason.WRONG_LEVEL, f"a level-{value.get('level')!r} message where level {cls.LEVEL} is expected"
            )
        if value.get("type") != cls.TYPE:
            raise malformed(f"expected a {cls.TYPE} message, got {value.get('type')!r}")
        auth = {cls.AUTH} if cls.AUTH is not None else set()
        m = expect_map(value, cls.TYPE, required=set(cls.SPEC) | {"v", "type", "level"} | auth)
        kwargs = {name: reader(m[name], f"{cls.TYPE}.{name}") for name, reader in cls.SPEC.items()}
        if cls.AUTH is not None:
            sig = raw_bytes(m[cls.AUTH], f"{cls.TYPE}.{cls.AUTH}", max_len=64)
            if len(sig) not in cls.AUTH_SIZES:
                raise malformed(f"{cls.TYPE}.{cls.AUTH} has the wrong length")
            kwargs[cls.AUTH] = sig
        return cls(**kwargs)


def auth_variant(
    cls: type[Message], auth: str | None, sizes: tuple[int, ...] = (), *, profiles: tuple[str, ...] = ("efficient",)
) -> type[Message]:
    """``cls`` with another authenticator: a field ``auth`` of one of ``sizes`` bytes, or none at all.

    Same type, level and fields, so the message means the same thing; the pairing's protocol
    profile decides which variant a machine speaks and accepts (docs/profiles.md): under
    ``efficient`` a handshake message carries a MAC instead of a signature, a level-5 command no
    authenticator of its own (its AEAD tag covers every field). A variant never decodes the other's
    bytes: the authenticator's key is missing (``malformed``) or unexpected (``unknown_field``).
    """

    def copy(f: dataclasses.Field[Any]) -> dataclasses.Field[Any]:
        kw: dict[str, Any] = {"repr": f.repr}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        if f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        return dataclasses.field(**kw)  # type: ignore[no-any-return]

    fields: list[Any] = [(f.name, f.type, copy(f)) for f in dataclasses.fields(cls) if f.name != cls.AUTH]
    if auth is not None:
        fields.append((auth, "bytes", dataclasses.field(default=b"", repr=False)))
    namespace = {"TYPE": cls.TYPE, "LEVEL": cls.LEVEL, "SPEC": cls.SPEC, "AUTH": auth, "AUTH_SIZES": sizes,
                 "PROFILES": profiles, "__module__": cls.__module__}  # fmt: skip
    suffix = auth.capitalize() if auth is not None else "Sealed"
    return dataclasses.make_dataclass(  # type: ignore[no-any-return]
        f"{cls.__name__}{suffix}", fields, bases=(Message,), namespace=namespace, frozen=True, slots=True
    )


def mac(key: bytes, label: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (``cryptography``) over a labelled message."""
    h = crypto_hmac.HMAC(key, hashes.SHA256())
    h.update(len(label).to_bytes(1, "big") + label + data)
    return h.finalize()


def _check_mac(key: bytes, label: bytes, data: bytes, tag: bytes) -> None:
    if not _hmac.compare_digest(mac(key, label, data), tag):
        raise VerificationError(Reason.BAD_MAC, "MAC does not verify")


# --------------------------------------------------------------------------- freshness


def check_timestamp(ts_ms: int, now: float, *, skew_s: float = CLOCK_SKEW_S, max_age_s: float | None = None) -> None:
    """``stale`` outside ±skew of ``now``; ``expired`` when older than ``max_age_s`` (if given)."""
    age = now - ts_ms / 1000
    if max_age_s is not None and age > max_age_s:
        raise VerificationError(Reason.EXPIRED, f"message is {age:.3f} s old (limit {max_age_s} s)")
    if abs(age) > skew_s:
        raise VerificationError(Reason.STALE, f"timestamp is {age:+.0f} s off this clock (limit ±{skew_s} s)")


class SequenceGuard:
    """One replay window per stream (sender, pairing, …): each sequence number accepted once."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._windows: dict[Hashable, ReplayWindow] = {}

    def check(self, stream: Hashable, seq: int) -> None:
        """``replay`` for a repeat, ``stale`` for one behind the window; changes nothing."""
        window = self._windows.get(stream)
        if window is not None:
            window.check(seq)

    def commit(self, stream: Hashable, seq: int) -> None:
        """Mark ``seq`` seen; call only after the message authenticated."""
        self._windows.setdefault(stream, ReplayWindow(self.size)).commit(seq)

    def snapshot(self, stream: Hashable) -> tuple[int, int] | None:
        """``(highest, bitmap)`` of one stream's window (None before its first commit), for persisting."""
        window = self._windows.get(stream)
        return window.snapshot() if window is not None else None

    def restore(self, stream: Hashable, highest: int, bitmap: int) -> None:
        """Reload one stream's window from a :meth:`snapshot` (after a restart)."""
        self._windows[stream] = ReplayWindow.restore(self.size, highest, bitmap)


# --------------------------------------------------------------------------- counters

class Counted:
    """A machine that counts its rejections by reason (docs/architecture.md, Errors)."""

    rejections: collections.Counter[Reason]

    def __init__(self) -> None:
        self.rejections = collections.Counter()


#: Count a ``VerificationError`` in ``self.rejections`` (one definition: :mod:`modbatt.errors`).
counted = counts_rejections


# --------------------------------------------------------------------------- sessions


@dataclasses.dataclass(frozen=True, slots=True)
class SessionData(Message):
    """Application data inside an L3/L4 session: AES-256-GCM under the session's direction key."""

    TYPE: ClassVar[str] = "session_data"
    LEVEL: ClassVar[int] = 0  # replaced per level below; the level is in the header
    SPEC: ClassVar[Mapping[str, Reader]] = {"session_id": b(ID_BYTES), "seq": u(), "ct": b(max_len=2048)}
    AUTH: ClassVar[str | None] = None

    session_id: bytes
    seq: int
    ct: bytes


def _session_data_class(level: int) -> type[SessionData]:
    return type(f"SessionDataL{level}", (SessionData,), {"LEVEL": level, "__slots__": ()})


_SESSION_DATA = {3: _session_data_class(3), 4: _session_data_class(4)}


class Session(Counted):
    """An established L3 or L4 session: two direction keys, a lifetime, optionally single-use.

    ``seal`` numbers messages from 0 (the number is the GCM nonce, unique per direction key);
    ``open`` accepts each number once. Past ``expires_at`` both refuse (``expired``); a single-use
    session carries one message each way and is then spent (``exhausted``).
    """

    def __init__(
        self,
        *,
        level: int,
        session_id: bytes,
        secret: bytes,
        initiator: bool,
        created: float,
        ttl_s: float,
        single_use: bool,
        peer: str,
    ) -> None:
        super().__init__()
        self.level = level
        self.session_id = session_id
        self.peer = peer
        self.created = created
        self.expires_at = created + ttl_s
        self.single_use = single_use
        keys = [
            hkdf_sha256(secret, info=labels.VALIDATION_SESSION_KEY + bytes([level]) + session_id + d)
            for d in (b"i>r", b"r>i")
        ]
        self._send_key, self._recv_key = keys if initiator else keys[::-1]
        self._next_seq = 0
        self._window = ReplayWindow(64)
        self.received = 0

    def _live(self, now: float) -> None:
        if now > self.expires_at:
            raise VerificationError(Reason.EXPIRED, f"level-{self.level} session expired")

    def _aad(self, seq: int) -> bytes:
        return canonical_dumps({"level": self.level, "session_id": self.session_id, "seq": seq})

    @counted
    def seal(self, plaintext: bytes, now: float) -> bytes:
        """Encrypt one message to the peer."""
        self._live(now)
        if self.single_use and self._next_seq >= 1:
            raise VerificationError(Reason.EXHAUSTED, "single-use session already carried its message")
        seq = self._next_seq
        self._next_seq += 1
        nonce = seq.to_bytes(AEAD_NONCE_BYTES, "big")
        ct = aead_encrypt(self._send_key, nonce, plaintext, self._aad(seq))
        return _SESSION_DATA[self.level](self.session_id, seq, ct).encode()

    @counted
    def open(self, data: bytes, now: float) -> bytes:
        """Decrypt one message from the peer; rejections are counted on this session."""
        msg = _SESSION_DATA[self.level].decode(data)
        if msg.session_id != self.session_id:
            raise VerificationError(Reason.WRONG_SESSION, "data belongs to another session")
        self._live(now)
        if self.single_use and self.received >= 1:
            raise VerificationError(Reason.EXHAUSTED, "single-use session already carried its message")
        self._window.check(msg.seq)
        plain = aead_decrypt(self._recv_key, msg.seq.to_bytes(AEAD_NONCE_BYTES, "big"), msg.ct, self._aad(msg.seq))
        self._window.commit(msg.seq)
        self.received += 1
        return plain
