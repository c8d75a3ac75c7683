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
import inspect
from collections.abc import Callable, Hashable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Self, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from ...crypto import labels
from ...crypto.freshness import ReplayWindow
from ...crypto.suite import AEAD_NONCE_BYTES, aead_decrypt, aead_encrypt, hkdf_sha256, sha256
from ...encoding import canonical_dumps, strict_loads
from ...errors import EncodingError, Reason, VerificationError, counts_rejections
from ...model._fields import malformed
from ...model.access import ACCESS_DATA
from ...model.schema import (
    REGISTRY,
    Kind,
    Record,
    Schema,
    authenticator,
    bytes_,
    flag,
    one_of,
    optional,
    small_map,
    text_,
    uint,
    wire,
)
from ..messages import CLOCK_SKEW_S

__all__ = [
    "CLOCK_SKEW_S",
    "ID_BYTES",
    "MAC_BYTES",
    "MAX_MESSAGE_BYTES",
    "MESSAGES",
    "Counted",
    "Message",
    "SequenceGuard",
    "Session",
    "access",
    "auth_variant",
    "authenticator",
    "b",
    "check_timestamp",
    "counted",
    "derive",
    "digest",
    "flag",
    "mac",
    "message",
    "one_of",
    "opt",
    "small_map",
    "t",
    "u",
    "wire",
]

#: Session ids, nonces and challenges are 16 random bytes.
ID_BYTES = 16
#: A validation message never needs more (the L7 bundle with a 20-hash proof is ~2 KiB).
MAX_MESSAGE_BYTES = 8192
#: HMAC-SHA256 authenticators (levels 3 and 4 under a MAC key, the level-6 pairing MAC).
MAC_BYTES = 32

Reader = Callable[[Any, str], Any]

# The field kinds of the message schema (modbatt.model.schema), by their short names here.
b = bytes_
u = uint
t = text_
opt = optional
access = ACCESS_DATA


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

#: Every concrete validation message class, by (level, type, authenticator field or "none").
MESSAGES: dict[tuple[int, str, str], type[Message]] = {}


class Message(Record):
    """Base of every typed validation message, declared with :func:`message`.

    The fields are the class's :func:`~modbatt.model.schema.wire` fields, each declared once; the
    authenticator (signature or MAC) is its :func:`~modbatt.model.schema.authenticator` field,
    absent for an unauthenticated message. ``SPEC`` (field name → kind), ``AUTH`` and
    ``AUTH_SIZES`` are derived from them.
    """

    __slots__ = ()
    TYPE: ClassVar[str]
    LEVEL: ClassVar[int]
    SPEC: ClassVar[Mapping[str, Kind]]
    AUTH: ClassVar[str | None] = None
    AUTH_SIZES: ClassVar[tuple[int, ...]] = ()
    #: The protocol profiles that use this message class (docs/profiles.md).
    PROFILES: ClassVar[tuple[str, ...]] = ("seed", "efficient")

    def body(self) -> dict[str, Any]:
        return {**self.__schema__.write(self, auth=False), "v": labels.PROTOCOL_VERSION, "type": self.TYPE,
                "level": self.LEVEL}  # fmt: skip

    def signed_bytes(self) -> bytes:
        """What the signature or MAC covers: every field but the authenticator, canonically."""
        return canonical_dumps(self.body())

    def encode(self) -> bytes:
        return canonical_dumps({**self.__schema__.write(self), "v": labels.PROTOCOL_VERSION, "type": self.TYPE,
                                "level": self.LEVEL})  # fmt: skip

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
        """Version, then level (``wrong_level`` before anything else), then type, then the schema."""
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
        return cls(**cls.__schema__.read(value, cls.TYPE, extra=_HEADER, prefix=f"{cls.TYPE}."))


_HEADER = frozenset({"v", "type", "level"})
M = TypeVar("M", bound=type[Message])


def _finish(cls: Any, type_: str, level: int, profiles: tuple[str, ...]) -> Any:
    schema = Schema.of(cls)
    cls.__schema__ = dataclasses.replace(schema, what=type_)
    cls.__schema_owner__ = cls
    cls.TYPE, cls.LEVEL, cls.PROFILES = type_, level, profiles
    auth = schema.auth
    cls.AUTH = auth.attr if auth is not None else None
    cls.AUTH_SIZES = auth.kind.args["sizes"] if auth is not None else ()
    cls.SPEC = MappingProxyType({f.attr: f.kind for f in schema.fields if not f.auth})
    if level:
        MESSAGES[(level, type_, cls.AUTH or "none")] = cls
    REGISTRY.append(cls)
    return cls


def _copy_field(f: dataclasses.Field[Any]) -> dataclasses.Field[Any]:
    kw: dict[str, Any] = {"repr": f.repr, "metadata": f.metadata}
    if f.default is not dataclasses.MISSING:
        kw["default"] = f.default
    return dataclasses.field(**kw)  # type: ignore[no-any-return]


def message(
    type_: str, level: int, *, profiles: tuple[str, ...] = ("seed", "efficient"), then: type | None = None
) -> Callable[[M], M]:
    """Declare a validation message: a frozen dataclass of schema fields, ``type`` and ``level`` on the wire.

    ``then``: a plain class of schema fields several messages share, declared there once and placed
    after the message's own fields (before its authenticator).
    """

    def wrap(cls: M) -> M:
        if then is not None:
            own = inspect.get_annotations(cls)
            auth = [n for n in own if getattr(cls.__dict__.get(n), "metadata", {}).get("auth")]
            shared = inspect.get_annotations(then)
            for name in shared:
                setattr(cls, name, _copy_field(then.__dict__[name]))
            cls.__annotations__ = {**{n: t for n, t in own.items() if n not in auth}, **shared,
                                   **{n: own[n] for n in auth}}  # fmt: skip
        return _finish(dataclasses.dataclass(frozen=True, slots=True)(cls), type_, level, profiles)  # type: ignore[no-any-return]

    return wrap


_KEEP = object()


def derive(
    cls: type[Message],
    *,
    name: str,
    level: int | None = None,
    auth: Any = _KEEP,
    sizes: tuple[int, ...] = (),
    profiles: tuple[str, ...] | None = None,
) -> type[Message]:
    """A message class with ``cls``'s fields (declared once, there), at another level or with
    another authenticator (``auth``: its field name, or ``None`` for none)."""

    drop = cls.AUTH if auth is not _KEEP else None
    fields: list[Any] = [(f.name, f.type, _copy_field(f)) for f in dataclasses.fields(cls) if f.name != drop]
    if auth is not _KEEP and auth is not None:
        fields.append((auth, "bytes", authenticator(*sizes)))
    made = dataclasses.make_dataclass(
        name, fields, bases=(Message,), namespace={"__module__": cls.__module__}, frozen=True, slots=True
    )
    return _finish(made, cls.TYPE, cls.LEVEL if level is None else level,  # type: ignore[no-any-return]
                   cls.PROFILES if profiles is None else profiles)  # fmt: skip


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
    suffix = auth.capitalize() if auth is not None else "Sealed"
    return derive(cls, name=f"{cls.__name__}{suffix}", auth=auth, sizes=sizes, profiles=profiles)


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


@message("session_data", 3)
class SessionData(Message):
    """Application data inside an L3/L4 session: AES-256-GCM under the session's direction key."""

    session_id: bytes = wire(b(ID_BYTES))
    seq: int = wire(u())
    ct: bytes = wire(b(max_len=2048))


#: The same message at each session level (the level is in the header).
_SESSION_DATA = {3: SessionData, 4: derive(SessionData, level=4, name="SessionDataL4")}


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
