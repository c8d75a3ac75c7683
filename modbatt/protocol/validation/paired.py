"""Level 4, Paired handshake: challenge-response under the pairing secret; fresh session keys.

No signatures (the seed makes them optional here): every message carries an HMAC-SHA256 under
``K_auth = HKDF(pairing_secret, info = validation/paired-handshake-auth ‖ pairing_id)``, so only
the two paired entities can produce one — the controller never holds the pairing secret in
``blind`` mode. Three messages::

    I -> R  challenge {pairing_id, sender, seq, session_id, challenge_i, ts_ms, ttl_s}
    R -> I  response  {pairing_id, sender, session_id, challenge_hash, challenge_r, ts_ms}
    I -> R  confirm   {pairing_id, sender, session_id, transcript_hash}

``seq`` is the initiator's per-pairing sequence number (replay window at the responder). The
session secret is HKDF(pairing_secret, salt = challenge_i ‖ challenge_r, info = … ‖ session_id):
each re-establishment yields fresh keys although the pairing secret stays the same.
"""

from __future__ import annotations

from ...crypto import labels
from ...crypto.rng import RandomSource, SystemRandom
from ...crypto.suite import hkdf_sha256
from ...errors import Reason, VerificationError
from ..pairing import PairingSecrets
from ._common import (
    CLOCK_SKEW_S,
    ID_BYTES,
    MAC_BYTES,
    Counted,
    Message,
    SequenceGuard,
    Session,
    _check_mac,
    authenticator,
    b,
    check_timestamp,
    counted,
    digest,
    mac,
    message,
    opt,
    wire,
)
from ._common import t as text_field
from ._common import u as uint
from .escalation import SignedEscalation, read_escalation
from .handshake import HANDSHAKE_TIMEOUT_S, MAX_SESSION_TTL_S

__all__ = ["Challenge", "Confirm", "PairedHandshakeInitiator", "PairedHandshakeResponder", "Response", "mac"]

@message("challenge", 4)
class Challenge(Message):
    pairing_id: str = wire(text_field(64))
    sender: str = wire(text_field(64))
    seq: int = wire(uint())
    session_id: bytes = wire(b(ID_BYTES))
    challenge: bytes = wire(b(ID_BYTES))
    ts_ms: int = wire(uint())
    ttl_s: int = wire(uint(1, MAX_SESSION_TTL_S))
    escalation: SignedEscalation | None = wire(opt(read_escalation), default=None)
    mac: bytes = authenticator(MAC_BYTES)


@message("response", 4)
class Response(Message):
    pairing_id: str = wire(text_field(64))
    sender: str = wire(text_field(64))
    session_id: bytes = wire(b(ID_BYTES))
    challenge_hash: bytes = wire(b(32))
    challenge: bytes = wire(b(ID_BYTES))
    ts_ms: int = wire(uint())
    mac: bytes = authenticator(MAC_BYTES)


@message("confirm", 4)
class Confirm(Message):
    pairing_id: str = wire(text_field(64))
    sender: str = wire(text_field(64))
    session_id: bytes = wire(b(ID_BYTES))
    transcript_hash: bytes = wire(b(32))
    mac: bytes = authenticator(MAC_BYTES)


class _PairedParty(Counted):
    def __init__(
        self,
        *,
        secrets: PairingSecrets,
        device_id: str,
        partner_id: str,
        rng: RandomSource | None = None,
        skew_s: float = CLOCK_SKEW_S,
    ) -> None:
        super().__init__()
        self.pairing_id = secrets.pairing_id
        self.device_id = device_id
        self.partner_id = partner_id
        self._secret = secrets.pairing_secret
        pid = secrets.pairing_id.encode()
        self._auth = hkdf_sha256(secrets.pairing_secret, info=labels.PAIRED_HANDSHAKE_AUTH + pid)
        self._rng = rng or SystemRandom()
        self.skew_s = skew_s

    def _seal(self, msg: Message) -> bytes:
        # The message type is inside the MACed bytes, so one message cannot pass for another.
        return msg.authenticated(mac(self._auth, labels.PAIRED_HANDSHAKE_AUTH, msg.signed_bytes())).encode()

    def _check(self, msg: Challenge | Response | Confirm) -> None:
        if msg.pairing_id != self.pairing_id:
            raise VerificationError(Reason.WRONG_SESSION, "message for another pairing")
        _check_mac(self._auth, labels.PAIRED_HANDSHAKE_AUTH, msg.signed_bytes(), msg.mac)
        if msg.sender != self.partner_id:
            raise VerificationError(Reason.WRONG_PEER, f"message from {msg.sender}, paired with {self.partner_id}")

    def _session(self, c_i: bytes, c_r: bytes, session_id: bytes, initiator: bool, now: float, ttl: int) -> Session:
        secret = hkdf_sha256(
            self._secret, salt=c_i + c_r, info=labels.VALIDATION_SESSION_KEY + b"l4-secret" + session_id
        )
        return Session(
            level=4, session_id=session_id, secret=secret, initiator=initiator, created=now, ttl_s=ttl,
            single_use=False, peer=self.partner_id,
        )  # fmt: skip


class PairedHandshakeInitiator(_PairedParty):
    """Re-establishes a session with the paired partner; ``seq`` must never repeat (persist it)."""

    session: Session | None = None

    def __init__(self, *, seq: int = 0, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._seq = seq

    def start(self, now: float, *, ttl_s: int = 300, escalation: SignedEscalation | None = None) -> bytes:
        msg = Challenge(
            self.pairing_id, self.device_id, self._seq, self._rng.token_bytes(ID_BYTES),
            self._rng.token_bytes(ID_BYTES), int(now * 1000), ttl_s, escalation,
        )  # fmt: skip
        self._seq += 1
        self._challenge = msg
        self._challenge_bytes = self._seal(msg)
        self._deadline = now + HANDSHAKE_TIMEOUT_S
        self.session = None
        return self._challenge_bytes

    @counted
    def on_response(self, data: bytes, now: float) -> bytes:
        if not hasattr(self, "_challenge"):
            # Untrusted input, not a local mistake: nothing was started, so it answers no session of ours.
            raise VerificationError(Reason.WRONG_SESSION, "no handshake in progress")
        resp = Response.decode(data)
        if resp.session_id != self._challenge.session_id:
            raise VerificationError(Reason.WRONG_SESSION, "response to another session")
        self._check(resp)
        if self.session is not None:
            raise VerificationError(Reason.REPLAY, "this session is already established")
        if resp.challenge_hash != digest(self._challenge_bytes):
            raise VerificationError(Reason.HASH_MISMATCH, "response answers another challenge")
        if now > self._deadline:
            raise VerificationError(Reason.TIMEOUT, "response came after the handshake timeout")
        check_timestamp(resp.ts_ms, now, skew_s=self.skew_s)
        c = self._challenge
        self.session = self._session(c.challenge, resp.challenge, c.session_id, True, now, c.ttl_s)
        transcript = digest(self._challenge_bytes) + digest(data)
        return self._seal(Confirm(self.pairing_id, self.device_id, c.session_id, digest(transcript)))


class PairedHandshakeResponder(_PairedParty):
    """Answers challenges from the paired partner; :meth:`on_confirm` returns the session."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._seq = SequenceGuard()
        self._pending: dict[bytes, tuple[Challenge, bytes, bytes, float]] = {}
        self.sessions: dict[bytes, Session] = {}
        self.last_challenge: Challenge | None = None

    @counted
    def on_challenge(self, data: bytes, now: float) -> bytes:
        ch = Challenge.decode(data)
        self._check(ch)
        check_timestamp(ch.ts_ms, now, skew_s=self.skew_s)
        self._pending = {sid: p for sid, p in self._pending.items() if p[3] >= now}  # drop abandoned ones
        self._seq.check(ch.sender, ch.seq)
        self._seq.commit(ch.sender, ch.seq)
        c_r = self._rng.token_bytes(ID_BYTES)
        reply = self._seal(Response(self.pairing_id, self.device_id, ch.session_id, digest(data), c_r, int(now * 1000)))
        self._pending[ch.session_id] = (ch, c_r, digest(data) + digest(reply), now + HANDSHAKE_TIMEOUT_S)
        self.last_challenge = ch
        return reply

    @counted
    def on_confirm(self, data: bytes, now: float) -> Session:
        conf = Confirm.decode(data)
        if conf.session_id in self.sessions:
            raise VerificationError(Reason.REPLAY, "session already established")
        pending = self._pending.get(conf.session_id)
        if pending is None:
            raise VerificationError(Reason.WRONG_SESSION, "confirm for a handshake this entity is not running")
        self._check(conf)
        ch, c_r, transcript, deadline = pending
        if conf.transcript_hash != digest(transcript):
            raise VerificationError(Reason.HASH_MISMATCH, "confirm covers another transcript")
        del self._pending[conf.session_id]
        if now > deadline:
            raise VerificationError(Reason.TIMEOUT, "confirm came after the handshake timeout")
        session = self._session(ch.challenge, c_r, ch.session_id, False, now, ch.ttl_s)
        self.sessions[ch.session_id] = session
        return session
