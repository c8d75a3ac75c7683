"""Level 3, Signed handshake: binding-key signatures, no pairing, an ephemeral session key.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ...crypto import labels
from ...crypto.rng import RandomSource, SystemRandom
from ...crypto.suite import PrivateKey, PublicKey, hkdf_sha256
from ...errors import Reason, VerificationError
from ._common import (
    CLOCK_SKEW_S,
    ID_BYTES,
    Counted,
    Message,
    Reader,
    Session,
    b,
    check_timestamp,
    counted,
    digest,
    flag,
    opt,
)
from ._common import t as text_field
from ._common import u as uint
from .escalation import SignedEscalation, read_escalation

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "MAX_SESSION_TTL_S",
    "Finish",
    "Hello",
    "Reply",
    "SignedHandshakeInitiator",
    "SignedHandshakeResponder",
]

HANDSHAKE_TIMEOUT_S = 10.0
MAX_SESSION_TTL_S = 300


@dataclass(frozen=True, slots=True)
class Hello(Message):
    TYPE: ClassVar[str] = "hello"
    LEVEL: ClassVar[int] = 3
    SPEC: ClassVar[Mapping[str, Reader]] = {
        "binding_id": text_field(64),
        "sender": text_field(64),
        "recipient": text_field(64),
        "session_id": b(ID_BYTES),
        "nonce": b(ID_BYTES),
        "ephemeral": b(33),
        "ts_ms": uint(),
        "ttl_s": uint(1, MAX_SESSION_TTL_S),
        "single_use": flag,
        "escalation": opt(read_escalation),
    }

    binding_id: str
    sender: str
    recipient: str
    session_id: bytes
    nonce: bytes
    ephemeral: bytes
    ts_ms: int
    ttl_s: int
    single_use: bool
    escalation: SignedEscalation | None = None
    sig: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Reply(Message):
    TYPE: ClassVar[str] = "reply"
    LEVEL: ClassVar[int] = 3
    SPEC: ClassVar[Mapping[str, Reader]] = {
        "binding_id": text_field(64),
        "sender": text_field(64),
        "session_id": b(ID_BYTES),
        "hello_hash": b(32),
        "nonce": b(ID_BYTES),
        "ephemeral": b(33),
        "ts_ms": uint(),
    }

    binding_id: str
    sender: str
    session_id: bytes
    hello_hash: bytes
    nonce: bytes
    ephemeral: bytes
    ts_ms: int
    sig: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Finish(Message):
    TYPE: ClassVar[str] = "finish"
    LEVEL: ClassVar[int] = 3
    SPEC: ClassVar[Mapping[str, Reader]] = {
        "binding_id": text_field(64),
        "sender": text_field(64),
        "session_id": b(ID_BYTES),
        "transcript_hash": b(32),
    }

    binding_id: str
    sender: str
    session_id: bytes
    transcript_hash: bytes
    sig: bytes = field(default=b"", repr=False)


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
    ) -> None:
        super().__init__()
        self.binding_id = binding_id
        self.device_id = device_id
        self._key = binding_key
        self.partner_id = partner_id
        self._partner_key = partner_key
        self._rng = rng or SystemRandom()
        self.skew_s = skew_s

    def _sign(self, msg: Message) -> bytes:
        return msg.authenticated(self._key.sign(labels.SIG_HANDSHAKE, msg.signed_bytes())).encode()

    def _check_peer(self, msg: Hello | Reply | Finish) -> None:
        if msg.binding_id != self.binding_id:
            raise VerificationError(Reason.WRONG_SESSION, "handshake for another binding")
        if msg.sender != self.partner_id:
            raise VerificationError(Reason.WRONG_PEER, f"handshake from {msg.sender}, bound to {self.partner_id}")
        self._partner_key.verify(labels.SIG_HANDSHAKE, msg.signed_bytes(), msg.sig)


class SignedHandshakeInitiator(_Party):
    """Starts the handshake; :attr:`session` is set once the reply verified."""

    session: Session | None = None

    def start(
        self, now: float, *, ttl_s: int = 60, single_use: bool = False, escalation: SignedEscalation | None = None
    ) -> bytes:
        self._eph = PrivateKey.generate(self._rng)
        hello = Hello(
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
        reply = Reply.decode(data)
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
        return self._sign(Finish(self.binding_id, self.device_id, reply.session_id, digest(transcript)))


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
        hello = Hello.decode(data)
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
        eph = PrivateKey.generate(self._rng)
        reply = self._sign(
            Reply(
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
        fin = Finish.decode(data)
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
