"""Level 3, Signed handshake: binding-key authentication, an ephemeral session key.

SIGMA-style, three messages, every one signed with the sender's binding key (label
``sig/validation/signed-handshake``, the message type inside the signed bytes separates them)::

    I -> R  hello   {binding_id, sender, recipient, session_id, nonce_i, eph_i, ts_ms, ttl_s, single_use}
    R -> I  reply   {binding_id, sender, session_id, hello_hash, nonce_r, eph_r, ts_ms}
    I -> R  finish  {binding_id, sender, session_id, transcript_hash}

``eph_*`` are fresh P-256 keys; the session secret is HKDF(ECDH(eph_i, eph_r), salt =
SHA-256(hello) ‖ SHA-256(reply)), so it is forward secret and bound to both signed messages.
The session lives ``ttl_s`` seconds (at most 300) or, with ``single_use``, carries one message
each way. The responder accepts a hello's nonce once (``replay``), answers only within ±skew
(``stale``), and drops a handshake whose finish does not come within the handshake timeout
(``timeout``).

Protocol profiles (docs/profiles.md). Under ``seed`` (no pairing needed) the messages are signed
and each side draws its ephemeral key when the handshake runs. Under ``efficient`` the parties
pass their pairing session's secrets: each message carries an HMAC-SHA256 (``mac``) under
``K = HKDF(binding MAC secret, info = validation/handshake-binding-mac ‖ binding_id)``, which only
the two holders of the binding keys can compute, and the ephemeral keys come from an
:class:`EphemeralPool` the driver fills when the device is idle. The ephemeral ECDH and so
forward secrecy are the same in both profiles; what changes is non-repudiation (a MAC convinces
only the partner) and where the key generation happens.
"""

from __future__ import annotations

from typing import Any

from ...crypto import labels
from ...crypto.rng import RandomSource, SystemRandom
from ...crypto.suite import PrivateKey, PublicKey, hkdf_sha256
from ...errors import Reason, VerificationError
from ..pairing import PairingSecrets
from ._common import (
    CLOCK_SKEW_S,
    ID_BYTES,
    MAC_BYTES,
    Counted,
    Message,
    Session,
    _check_mac,
    auth_variant,
    authenticator,
    b,
    check_timestamp,
    counted,
    digest,
    flag,
    mac,
    message,
    opt,
    wire,
)
from ._common import t as text_field
from ._common import u as uint
from .escalation import SignedEscalation, read_escalation

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "MAX_SESSION_TTL_S",
    "EphemeralPool",
    "Finish",
    "Hello",
    "Reply",
    "SignedHandshakeInitiator",
    "SignedHandshakeResponder",
]

HANDSHAKE_TIMEOUT_S = 10.0
MAX_SESSION_TTL_S = 300


@message("hello", 3, profiles=("seed",))  # efficient: the variant below
class Hello(Message):
    binding_id: str = wire(text_field(64))
    sender: str = wire(text_field(64))
    recipient: str = wire(text_field(64))
    session_id: bytes = wire(b(ID_BYTES))
    nonce: bytes = wire(b(ID_BYTES))
    ephemeral: bytes = wire(b(33))
    ts_ms: int = wire(uint())
    ttl_s: int = wire(uint(1, MAX_SESSION_TTL_S))
    single_use: bool = wire(flag)
    escalation: SignedEscalation | None = wire(opt(read_escalation), default=None)
    sig: bytes = authenticator(64)


@message("reply", 3, profiles=("seed",))  # efficient: the variant below
class Reply(Message):
    binding_id: str = wire(text_field(64))
    sender: str = wire(text_field(64))
    session_id: bytes = wire(b(ID_BYTES))
    hello_hash: bytes = wire(b(32))
    nonce: bytes = wire(b(ID_BYTES))
    ephemeral: bytes = wire(b(33))
    ts_ms: int = wire(uint())
    sig: bytes = authenticator(64)


@message("finish", 3, profiles=("seed",))  # efficient: the variant below
class Finish(Message):
    binding_id: str = wire(text_field(64))
    sender: str = wire(text_field(64))
    session_id: bytes = wire(b(ID_BYTES))
    transcript_hash: bytes = wire(b(32))
    sig: bytes = authenticator(64)


#: The ``efficient`` profile's variants: the same messages authenticated by a MAC instead of a signature.
_MAC_VARIANTS: dict[type[Message], type[Message]] = {
    cls: auth_variant(cls, "mac", (MAC_BYTES,)) for cls in (Hello, Reply, Finish)
}


class EphemeralPool:
    """Ephemeral key pairs made ahead of time, off the critical path (``efficient``, docs/profiles.md).

    Sans-I/O: the driver calls :meth:`refill` when the device is idle, a handshake takes one key
    with :meth:`take`. Keys live in memory only (a stored ephemeral key would be a long-term key)
    and each is handed out once, so forward secrecy is unchanged; what a memory compromise adds is
    the keys still waiting in the pool. An empty pool makes a key on the spot and counts a
    :attr:`miss <misses>` (that handshake pays the key generation after all).
    """

    def __init__(self, size: int = 2) -> None:
        if not 1 <= size <= 64:
            raise ValueError("an ephemeral pool holds 1-64 keys")
        self.size = size
        self._keys: list[PrivateKey] = []
        #: Handshakes that found the pool empty.
        self.misses = 0

    def __len__(self) -> int:
        return len(self._keys)

    def refill(self, rng: RandomSource | None = None) -> int:
        """Fill the pool up to :attr:`size` (idle time); returns the number of keys made."""
        made = self.size - len(self._keys)
        self._keys.extend(PrivateKey.generate(rng) for _ in range(made))
        return made

    def take(self, rng: RandomSource | None = None) -> PrivateKey:
        """One key, never handed out again (made now, and counted as a miss, if the pool is empty)."""
        if self._keys:
            return self._keys.pop(0)
        self.misses += 1
        return PrivateKey.generate(rng)


def _session_secret(own: PrivateKey, peer_ephemeral: bytes, transcript: bytes) -> bytes:
    shared = own.exchange(PublicKey.from_bytes(peer_ephemeral))  # validated point
    return hkdf_sha256(shared, salt=transcript, info=labels.VALIDATION_SESSION_KEY + b"l3-secret")


class _Party(Counted):
    def __init__(
        self,
        *,
        binding_id: str,
        device_id: str,
        binding_key: PrivateKey,
        partner_id: str,
        partner_key: PublicKey,
        rng: RandomSource | None = None,
        skew_s: float = CLOCK_SKEW_S,
        secrets: PairingSecrets | None = None,
        ephemerals: EphemeralPool | None = None,
    ) -> None:
        super().__init__()
        self.binding_id = binding_id
        self.device_id = device_id
        self._key = binding_key
        self.partner_id = partner_id
        self._partner_key = partner_key
        self._rng = rng or SystemRandom()
        self.skew_s = skew_s
        self._pool = ephemerals
        # efficient: a MAC key only the two binding-key holders derive (from the session's secret).
        self._mac_key = (
            hkdf_sha256(secrets.binding_secret, info=labels.HANDSHAKE_BINDING_MAC + binding_id.encode())
            if secrets is not None and secrets.binding_secret is not None
            else None
        )

    @property
    def authenticator(self) -> str:
        """``"sig"`` (binding-key signatures, ``seed``) or ``"mac"`` (the binding MAC, ``efficient``)."""
        return "sig" if self._mac_key is None else "mac"

    def _decode(self, cls: type[Message], data: bytes) -> Any:
        return (cls if self._mac_key is None else _MAC_VARIANTS[cls]).decode(data)

    def _message(self, cls: type[Message], *args: Any) -> Message:
        return (cls if self._mac_key is None else _MAC_VARIANTS[cls])(*args)

    def _ephemeral(self) -> PrivateKey:
        return self._pool.take(self._rng) if self._pool is not None else PrivateKey.generate(self._rng)

    def _sign(self, msg: Message) -> bytes:
        if self._mac_key is not None:
            return msg.authenticated(mac(self._mac_key, labels.HANDSHAKE_BINDING_MAC, msg.signed_bytes())).encode()
        return msg.authenticated(self._key.sign(labels.SIG_HANDSHAKE, msg.signed_bytes())).encode()

    def _check_peer(self, msg: Any) -> None:
        if msg.binding_id != self.binding_id:
            raise VerificationError(Reason.WRONG_SESSION, "handshake for another binding")
        if msg.sender != self.partner_id:
            raise VerificationError(Reason.WRONG_PEER, f"handshake from {msg.sender}, bound to {self.partner_id}")
        if self._mac_key is not None:
            _check_mac(self._mac_key, labels.HANDSHAKE_BINDING_MAC, msg.signed_bytes(), msg.mac)
        else:
            self._partner_key.verify(labels.SIG_HANDSHAKE, msg.signed_bytes(), msg.sig)


class SignedHandshakeInitiator(_Party):
    """Starts the handshake; :attr:`session` is set once the reply verified."""

    session: Session | None = None

    def start(
        self, now: float, *, ttl_s: int = 60, single_use: bool = False, escalation: SignedEscalation | None = None
    ) -> bytes:
        self._eph = self._ephemeral()
        hello = self._message(
            Hello,
            self.binding_id, self.device_id, self.partner_id, self._rng.token_bytes(ID_BYTES),
            self._rng.token_bytes(ID_BYTES), self._eph.public_key.to_bytes(), int(now * 1000), ttl_s, single_use,
            escalation,
        )  # fmt: skip
        self._hello = self._sign(hello)
        self._hello_msg = hello
        self._deadline = now + HANDSHAKE_TIMEOUT_S
        self.session = None
        return self._hello

    @counted
    def on_reply(self, data: bytes, now: float) -> bytes:
        if not hasattr(self, "_hello"):
            # Untrusted input, not a local mistake: nothing was started, so it answers no session of ours.
            raise VerificationError(Reason.WRONG_SESSION, "no handshake in progress")
        reply = self._decode(Reply, data)
        if reply.session_id != self._hello_msg.session_id:
            raise VerificationError(Reason.WRONG_SESSION, "reply to another session")
        if self.session is not None:
            raise VerificationError(Reason.REPLAY, "this session is already established")
        self._check_peer(reply)
        if reply.hello_hash != digest(self._hello):
            raise VerificationError(Reason.HASH_MISMATCH, "reply signs another hello")
        if now > self._deadline:
            raise VerificationError(Reason.TIMEOUT, "reply came after the handshake timeout")
        check_timestamp(reply.ts_ms, now, skew_s=self.skew_s)
        transcript = digest(self._hello) + digest(data)
        secret = _session_secret(self._eph, reply.ephemeral, transcript)
        self.session = Session(
            level=3, session_id=reply.session_id, secret=secret, initiator=True, created=now,
            ttl_s=self._hello_msg.ttl_s, single_use=self._hello_msg.single_use, peer=self.partner_id,
        )  # fmt: skip
        return self._sign(self._message(Finish, self.binding_id, self.device_id, reply.session_id, digest(transcript)))


class SignedHandshakeResponder(_Party):
    """Answers hellos from its bound partner; :meth:`on_finish` returns the established session."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._nonces: dict[bytes, float] = {}  # hello nonce -> forget after
        self._pending: dict[bytes, tuple[Hello, bytes, float]] = {}  # session id -> (hello, transcript, deadline)
        self._ephemerals: dict[bytes, PrivateKey] = {}
        self.sessions: dict[bytes, Session] = {}
        self.last_hello: Hello | None = None

    @counted
    def on_hello(self, data: bytes, now: float) -> bytes:
        hello = self._decode(Hello, data)
        if hello.recipient != self.device_id:
            raise VerificationError(Reason.WRONG_PEER, f"hello addressed to {hello.recipient}")
        self._check_peer(hello)
        PublicKey.from_bytes(hello.ephemeral)  # invalid-curve points are refused before any work
        check_timestamp(hello.ts_ms, now, skew_s=self.skew_s)
        self._nonces = {n: t for n, t in self._nonces.items() if t >= now}
        for sid in [sid for sid, pending in self._pending.items() if pending[2] < now]:
            del self._pending[sid]  # abandoned handshakes: drop the state and the ephemeral key
            self._ephemerals.pop(sid, None)
        if hello.nonce in self._nonces or hello.session_id in self._pending or hello.session_id in self.sessions:
            raise VerificationError(Reason.REPLAY, "hello already answered")
        # Remembered for as long as its timestamp is acceptable: older copies fail as stale.
        self._nonces[hello.nonce] = now + 2 * self.skew_s
        eph = self._ephemeral()
        reply = self._sign(
            self._message(
                Reply,
                self.binding_id,
                self.device_id,
                hello.session_id,
                digest(data),
                self._rng.token_bytes(ID_BYTES),
                eph.public_key.to_bytes(),
                int(now * 1000),
            )
        )
        transcript = digest(data) + digest(reply)
        self._pending[hello.session_id] = (hello, transcript, now + HANDSHAKE_TIMEOUT_S)
        self._ephemerals[hello.session_id] = eph
        self.last_hello = hello
        return reply

    @counted
    def on_finish(self, data: bytes, now: float) -> Session:
        fin = self._decode(Finish, data)
        if fin.session_id in self.sessions:
            raise VerificationError(Reason.REPLAY, "session already established")
        pending = self._pending.get(fin.session_id)
        if pending is None:
            raise VerificationError(Reason.WRONG_SESSION, "finish for a handshake this entity is not running")
        self._check_peer(fin)
        hello, transcript, deadline = pending
        if fin.transcript_hash != digest(transcript):
            raise VerificationError(Reason.HASH_MISMATCH, "finish signs another transcript")
        del self._pending[fin.session_id]
        eph = self._ephemerals.pop(fin.session_id)
        if now > deadline:
            raise VerificationError(Reason.TIMEOUT, "finish came after the handshake timeout")
        session = Session(
            level=3, session_id=fin.session_id, secret=_session_secret(eph, hello.ephemeral, transcript),
            initiator=False, created=now, ttl_s=hello.ttl_s, single_use=hello.single_use, peer=self.partner_id,
        )  # fmt: skip
        self.sessions[fin.session_id] = session
        return session
