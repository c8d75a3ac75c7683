"""Level 5, Paired command/control: pairing-key encryption, binding-key authentication, authenticated ack.

A ``command`` carries a critical operation (``MessageClass`` of the pairing tier: charge,
discharge, safety limits, firmware, configuration). Its payload is AES-256-GCM under
``K_cmd = HKDF(pairing_secret, info = validation/command-key ‖ pairing_id ‖ direction ‖ epoch)``
with the sequence number as nonce and the header as associated data. The 16-byte ``epoch`` is
drawn fresh by every endpoint instance and sent in each header, so a restarted device (whose
sequence numbers start again at 0) works under a new key: a nonce never repeats under one key,
without persisting the sequence number; the whole message (ciphertext
included) is signed with the sender's binding key. The executor answers a ``command_ack``: status
and an encrypted result, signed with *its* binding key, so a forged ack cannot fake success.

Retries. An unacknowledged command is re-sent by :meth:`CommandSender.tick` every ``retry_s``
with a **new sequence number** and the same ``command_id`` (an exact re-send would be a replay);
after ``max_retries`` it is reported failed (``timeout``). The executor executes a command id at
most once and re-sends the cached ack for a retransmission, so a lost ack never repeats a charge
command.

Protocol profiles (docs/profiles.md). The above is ``seed``. Under ``efficient`` neither a command
nor an ack carries a signature (no ``sig`` field): the pairing secret ``K_cmd`` derives from is
bound to the session's binding MAC secret, so the AEAD tag, which covers every field as associated
data, already proves that one of the two binding-key holders of this pairing sent it. Only the
partner can check that (a MAC convinces no third party); the ledger records the outcome as before.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ...crypto import labels
from ...crypto.rng import RandomSource, SystemRandom
from ...crypto.suite import AEAD_NONCE_BYTES, PrivateKey, PublicKey, aead_decrypt, aead_encrypt, hkdf_sha256
from ...encoding import canonical_dumps
from ...errors import Reason, VerificationError
from ...model.policy import COMMAND_CLASSES, MessageClass
from ..pairing import PairingSecrets
from ._common import (
    CLOCK_SKEW_S,
    Counted,
    Message,
    SequenceGuard,
    auth_variant,
    authenticator,
    b,
    check_timestamp,
    counted,
    message,
    one_of,
    opt,
    wire,
)
from ._common import t as text_field
from ._common import u as uint
from .escalation import SignedEscalation, read_escalation

__all__ = ["Command", "CommandAck", "CommandExecutor", "CommandOutcome", "CommandSender"]

COMMAND_ID_BYTES = 8
#: Per-endpoint-instance key epoch (see the module docstring).
EPOCH_BYTES = 16
_RX_KEYS_KEPT = 8
#: The command + signed ack budget is < 20 ms (docs/simulation.md §3); a retry every 250 ms is generous.
DEFAULT_RETRY_S = 0.25
DEFAULT_MAX_RETRIES = 3
#: A command older than this is refused (``expired``): a delayed charge command is dangerous.
COMMAND_MAX_AGE_S = 2.0
#: Acks kept for retransmissions (command ids older than this are also older than COMMAND_MAX_AGE_S).
ACK_CACHE = 256
_COMMAND_CLASSES = tuple(sorted(c.value for c in COMMAND_CLASSES))


@message("command", 5, profiles=("seed",))  # efficient: the variant below
class Command(Message):
    pairing_id: str = wire(text_field(64))
    sender: str = wire(text_field(64))
    epoch: bytes = wire(b(EPOCH_BYTES))
    seq: int = wire(uint())
    command_id: bytes = wire(b(COMMAND_ID_BYTES))
    attempt: int = wire(uint(0, 255))
    message_class: str = wire(one_of(*_COMMAND_CLASSES))
    ts_ms: int = wire(uint())
    ct: bytes = wire(b(max_len=1024))
    escalation: SignedEscalation | None = wire(opt(read_escalation), default=None)
    sig: bytes = authenticator(64)


@message("command_ack", 5, profiles=("seed",))  # efficient: the variant below
class CommandAck(Message):
    pairing_id: str = wire(text_field(64))
    sender: str = wire(text_field(64))
    epoch: bytes = wire(b(EPOCH_BYTES))
    seq: int = wire(uint())
    command_id: bytes = wire(b(COMMAND_ID_BYTES))
    status: str = wire(one_of("ok", "refused"))
    ts_ms: int = wire(uint())
    ct: bytes = wire(b(max_len=1024))
    sig: bytes = authenticator(64)


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What became of one command: ``ok``/``refused`` (acknowledged) or ``failed`` (no ack)."""

    command_id: bytes
    message_class: str
    status: str
    attempts: int
    result: bytes = b""
    reason: Reason | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id.hex(),
            "message_class": self.message_class,
            "status": self.status,
            "attempts": self.attempts,
            "reason": self.reason.value if self.reason else None,
        }


#: The ``efficient`` profile's variants: no signature, the AEAD tag authenticates every field.
_SEALED: dict[type[Message], type[Message]] = {cls: auth_variant(cls, None) for cls in (Command, CommandAck)}


def _aad(body: Mapping[str, Any]) -> bytes:
    # Everything but the ciphertext (and the signature, which is not in the body).
    return canonical_dumps({k: v for k, v in body.items() if k != "ct"})


class _Endpoint(Counted):
    def __init__(
        self,
        *,
        secrets: PairingSecrets,
        device_id: str,
        partner_id: str,
        binding_key: PrivateKey,
        partner_key: PublicKey,
        expires_at: float | None = None,
        skew_s: float = CLOCK_SKEW_S,
        rng: RandomSource | None = None,
    ) -> None:
        super().__init__()
        self._rng = rng or SystemRandom()
        self.pairing_id = secrets.pairing_id
        self.device_id = device_id
        self.partner_id = partner_id
        self._key = binding_key
        self._partner_key = partner_key
        self.expires_at = expires_at
        self.skew_s = skew_s
        #: Sign commands and acks (``seed``), or let the AEAD under the binding-bound key do it (``efficient``).
        self.signed = not secrets.profile.binding_mac
        self._command_cls = Command if self.signed else _SEALED[Command]
        self._ack_cls = CommandAck if self.signed else _SEALED[CommandAck]
        pid = secrets.pairing_id.encode()
        out_dir, in_dir = (b"a>b", b"b>a") if secrets.role == "a" else (b"b>a", b"a>b")
        self._secret = secrets.pairing_secret
        self._info_out = labels.COMMAND_KEY + pid + out_dir
        self._info_in = labels.COMMAND_KEY + pid + in_dir
        # A fresh epoch per instance gives a fresh sending key, so sequence numbers (the nonces
        # under that key) may start at 0 after every restart without ever repeating a nonce.
        self.epoch = self._rng.token_bytes(EPOCH_BYTES)
        self._tx = hkdf_sha256(self._secret, info=self._info_out + self.epoch)
        self._rx_keys: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self.next_seq = 0
        self._seen = SequenceGuard()

    def _live(self, now: float) -> None:
        if self.expires_at is not None and now > self.expires_at:
            raise VerificationError(Reason.EXPIRED, "the pairing behind these commands has expired")

    def _seal(self, msg: Any, plaintext: bytes, label: bytes) -> bytes:
        """Encrypt into ``msg.ct`` (header as associated data), then (``seed``) sign everything."""
        ct = aead_encrypt(self._tx, msg.seq.to_bytes(AEAD_NONCE_BYTES, "big"), plaintext, _aad(msg.body()))
        msg = dataclasses.replace(msg, ct=ct)
        if not self.signed:
            return msg.encode()
        return msg.authenticated(self._key.sign(label, msg.signed_bytes())).encode()

    def _check_in(self, msg: Any) -> None:
        if msg.pairing_id != self.pairing_id:
            raise VerificationError(Reason.WRONG_SESSION, "message for another pairing")
        if msg.sender != self.partner_id:
            raise VerificationError(Reason.WRONG_PEER, f"message from {msg.sender}, paired with {self.partner_id}")

    def _decrypt(self, msg: Any, label: bytes) -> bytes:
        if self.signed:
            self._partner_key.verify(label, msg.signed_bytes(), msg.sig)
        return aead_decrypt(self._rx_key(msg.epoch), msg.seq.to_bytes(AEAD_NONCE_BYTES, "big"), msg.ct,
                            _aad(msg.body()))  # fmt: skip

    def _rx_key(self, epoch: bytes) -> bytes:
        key = self._rx_keys.get(epoch)
        if key is None:  # a partner instance we have not heard from yet (bounded cache)
            key = self._rx_keys[epoch] = hkdf_sha256(self._secret, info=self._info_in + epoch)
            while len(self._rx_keys) > _RX_KEYS_KEPT:
                self._rx_keys.popitem(last=False)
        return key


@dataclass
class _Outstanding:
    message_class: str
    payload: bytes
    attempts: int
    next_retry: float
    escalation: SignedEscalation | None


class CommandSender(_Endpoint):
    """Sends commands, checks acks, retries, reports failures (:attr:`outcomes`, :attr:`failed`)."""

    def __init__(
        self,
        *,
        retry_s: float = DEFAULT_RETRY_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.retry_s = retry_s
        self.max_retries = max_retries
        self._outstanding: dict[bytes, _Outstanding] = {}
        self.outcomes: dict[bytes, CommandOutcome] = {}
        self.failed: list[CommandOutcome] = []

    def _build(self, command_id: bytes, out: _Outstanding, now: float) -> bytes:
        header = {
            "pairing_id": self.pairing_id, "sender": self.device_id, "epoch": self.epoch, "seq": self.next_seq,
            "command_id": command_id,
            "attempt": out.attempts, "message_class": out.message_class, "ts_ms": int(now * 1000),
            "escalation": out.escalation,
        }  # fmt: skip
        self.next_seq += 1
        return self._seal(self._command_cls(**header, ct=b""), out.payload, labels.SIG_COMMAND)

    @counted
    def send(
        self, message_class: MessageClass, payload: bytes, now: float, *, escalation: SignedEscalation | None = None
    ) -> tuple[bytes, bytes]:
        """A new command; returns ``(command_id, message bytes)``."""
        self._live(now)
        cls = MessageClass(message_class).value
        if cls not in _COMMAND_CLASSES:
            raise VerificationError(Reason.WRONG_LEVEL, f"{cls} is not a level-5 command")
        command_id = self._rng.token_bytes(COMMAND_ID_BYTES)
        out = _Outstanding(cls, bytes(payload), 0, now + self.retry_s, escalation)
        self._outstanding[command_id] = out
        return command_id, self._build(command_id, out, now)

    def tick(self, now: float) -> list[bytes]:
        """Retransmissions due now; commands past ``max_retries`` become failed outcomes."""
        resend = []
        for command_id, out in list(self._outstanding.items()):
            if now < out.next_retry:
                continue
            if out.attempts >= self.max_retries:
                del self._outstanding[command_id]
                outcome = CommandOutcome(command_id, out.message_class, "failed", out.attempts + 1, b"", Reason.TIMEOUT)
                self.outcomes[command_id] = outcome
                self.failed.append(outcome)
                self.rejections[Reason.TIMEOUT] += 1
                continue
            out.attempts += 1
            out.next_retry = now + self.retry_s
            resend.append(self._build(command_id, out, now))
        return resend

    @counted
    def on_ack(self, data: bytes, now: float) -> CommandOutcome:
        ack: Any = self._ack_cls.decode(data)
        self._check_in(ack)
        if ack.command_id in self.outcomes:
            raise VerificationError(Reason.REPLAY, "command already settled")
        out = self._outstanding.get(ack.command_id)
        if out is None:
            raise VerificationError(Reason.WRONG_SESSION, "ack for a command this entity did not send")
        self._seen.check(f"{ack.sender}/{ack.epoch.hex()}", ack.seq)
        result = self._decrypt(ack, labels.SIG_COMMAND_ACK)
        self._seen.commit(f"{ack.sender}/{ack.epoch.hex()}", ack.seq)
        del self._outstanding[ack.command_id]
        outcome = CommandOutcome(ack.command_id, out.message_class, ack.status, out.attempts + 1, result)
        self.outcomes[ack.command_id] = outcome
        return outcome

    @property
    def pending(self) -> int:
        return len(self._outstanding)


Handler = Callable[[MessageClass, bytes], tuple[bool, bytes]]


class CommandExecutor(_Endpoint):
    """Executes commands from the paired partner at most once each and acknowledges them.

    ``handler(message_class, payload) -> (accepted, result)``; by default every command is
    accepted with an empty result. :attr:`executed` lists what ran (for tests and the audit).
    """

    def __init__(
        self,
        *,
        handler: Handler | None = None,
        max_age_s: float = COMMAND_MAX_AGE_S,
        applied: Mapping[str, Mapping[str, str]] | None = None,
        persist: Callable[[dict[str, dict[str, str]]], None] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self._handler = handler or (lambda _cls, _payload: (True, b""))
        self.max_age_s = max_age_s
        # Idempotence record (docs/delivery.md): command id -> status and result of the command
        # applied under it. Bounded: a retransmission comes within the sender's give-up time
        # (< COMMAND_MAX_AGE_S), long before ACK_CACHE newer commands have been executed.
        # ``persist`` writes it (atomically) before the ack leaves, so it survives a restart;
        # ``applied`` is what was persisted last.
        self._acks: collections.OrderedDict[bytes, tuple[str, bytes]] = collections.OrderedDict(
            (bytes.fromhex(k), (v["status"], bytes.fromhex(v["result"]))) for k, v in (applied or {}).items()
        )
        self._persist = persist
        self.executed: list[tuple[MessageClass, bytes]] = []
        self.last_command: Command | None = None

    @counted
    def on_command(self, data: bytes, now: float) -> bytes:
        cmd: Any = self._command_cls.decode(data)
        self._check_in(cmd)
        self._live(now)
        check_timestamp(cmd.ts_ms, now, skew_s=self.skew_s, max_age_s=self.max_age_s)
        self._seen.check(f"{cmd.sender}/{cmd.epoch.hex()}", cmd.seq)
        payload = self._decrypt(cmd, labels.SIG_COMMAND)
        self._seen.commit(f"{cmd.sender}/{cmd.epoch.hex()}", cmd.seq)
        self.last_command = cmd
        settled = self._acks.get(cmd.command_id)
        if settled is None:
            cls = MessageClass(cmd.message_class)
            accepted, result = self._handler(cls, payload)
            if accepted:
                self.executed.append((cls, payload))
            settled = self._acks[cmd.command_id] = ("ok" if accepted else "refused", result)
            while len(self._acks) > ACK_CACHE:
                self._acks.popitem(last=False)
            if self._persist is not None:
                self._persist(self.applied_record())
        # A retransmission is answered again from the record, never executed twice; every ack is a
        # new protected message (this instance's epoch and next sequence number).
        status, result = settled
        header = {
            "pairing_id": self.pairing_id, "sender": self.device_id, "epoch": self.epoch, "seq": self.next_seq,
            "command_id": cmd.command_id, "status": status, "ts_ms": int(now * 1000),
        }  # fmt: skip
        self.next_seq += 1
        return self._seal(self._ack_cls(**header, ct=b""), result, labels.SIG_COMMAND_ACK)

    def applied_record(self) -> dict[str, dict[str, str]]:
        """The idempotence record to persist: ``{command id hex: {"status", "result" hex}}``."""
        return {k.hex(): {"status": st, "result": res.hex()} for k, (st, res) in self._acks.items()}
