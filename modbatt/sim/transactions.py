"""Transaction models: each level as a list of steps (compute, transfer), per protocol profile.

A protocol profile (:data:`PROTOCOLS`) decides which operations each level costs and how units
are authenticated on the bus; the CPU profiles (:mod:`modbatt.sim.cpu`) decide how long each
operation takes. A transfer that fits one frame is one frame; otherwise ISO-TP: first frame,
flow control from the receiver (on the reverse identifier, competing in arbitration), then the
consecutive frames. Identifiers are the seed-layout identifiers the link computes, so arbitration
order is the real one. Every step list, with its sizes, is written out in docs/simulation.md §3.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from ..can.functions import function_for
from ..can.ids import IdLayout
from ..can.secured import frame_format
from ..can.wiretime import BusProfile
from ..model.policy import MessageClass
from ..model.tier import Tier
from .busmodel import CanBusModel, FrameRecord
from .cpu import (
    CBOR,
    CCM,
    ECDH,
    ECDSA_SIGN,
    ECDSA_VERIFY,
    ED25519_SIGN,
    ED25519_VERIFY,
    GCM,
    HKDF,
    KEYGEN,
    SHA256,
    X25519,
    X25519_KEYGEN,
    Platform,
)
from .eventloop import EventLoop
from .schedule import ACK_BYTES, LEGACY_TELEMETRY_BYTES, SEQ_BYTES, STATE_CHANGE_BYTES, frames_for_unit

__all__ = [
    "BUDGETS",
    "BUDGET_LEVELS",
    "BUDGET_SOURCE",
    "LEVELS",
    "PROTOCOLS",
    "Compute",
    "ProfileModel",
    "Step",
    "Transfer",
    "level_steps",
    "offline_steps",
    "protocol_named",
    "transfer_frames",
    "unit_bytes",
]

SIGNATURE_BYTES: Final = 64  # raw r‖s (P-256) or R‖S (Ed25519)


@dataclass(frozen=True, slots=True)
class ProfileModel:
    """What a protocol profile costs: its signature scheme and where it signs, MACs or precomputes.

    The cost model of one :class:`~modbatt.model.profile.ProtocolProfile` (the implemented ones,
    of the same name) or of a modelled-only profile (``ed25519``).

    ``binding_frames``: ``"signature"`` (a binding-tier unit carries a 64-byte frame signature,
    always multi-frame, docs/can-frames.md §2) or ``"aead"`` (the symmetric frame format of the
    pairing tier under a binding MAC key). ``signed_commands``: L5 commands and acks carry a
    binding-key signature. ``precomputed_ephemeral``: L3's ephemeral keys are generated at idle time.
    """

    name: str
    description: str
    sign: str
    verify: str
    dh: str
    keygen: str
    point_bytes: int
    binding_frames: str
    signed_commands: bool
    precomputed_ephemeral: bool

    @property
    def ops(self) -> frozenset[str]:
        """Every operation this profile's transactions use (a CPU profile must cost all of them)."""
        return frozenset({self.sign, self.verify, self.dh, self.keygen, HKDF, SHA256, CCM, GCM, CBOR})

    @property
    def command_signature_bytes(self) -> int:
        """Bytes a signature adds to every L5 command and ack (and so to the pack's routine commands)."""
        return SIGNATURE_BYTES if self.signed_commands else 0


#: The modelled protocol profiles: the implemented ones by their names (docs/profiles.md) and ``ed25519``,
#: modelled only. docs/simulation.md §3.
PROTOCOLS: Final = MappingProxyType(
    {
        p.name: p
        for p in (
            ProfileModel("seed", "the seed as written: signatures per handshake, command, ack and binding-tier "
                            "frame; fresh ephemeral keys in L3", ECDSA_SIGN, ECDSA_VERIFY, ECDH, KEYGEN, 33,
                            "signature", True, False),
            ProfileModel("efficient", "binding authenticity by a MAC key derived once per pairing from static "
                            "ECDH of the binding keys; L3 ephemerals precomputed; signatures only where a third "
                            "party verifies", ECDSA_SIGN, ECDSA_VERIFY, ECDH, KEYGEN, 33, "aead", False, True),
            ProfileModel("ed25519", "the seed's structure with Ed25519 signatures and X25519 key agreement",
                            ED25519_SIGN, ED25519_VERIFY, X25519, X25519_KEYGEN, 32, "signature", True, False),
        )
    }
)  # fmt: skip


def protocol_named(name: str) -> ProfileModel:
    try:
        return PROTOCOLS[name]
    except KeyError:
        from ..errors import ConfigError

        raise ConfigError(f"unknown protocol profile {name!r}; known: {', '.join(PROTOCOLS)}") from None


@dataclass(frozen=True, slots=True)
class Compute:
    """CPU work by ``actor`` (``pack`` or ``module``) on ``nbytes``; ``label`` says what it is for."""

    actor: str
    op: str
    nbytes: int = 0
    label: str = ""


@dataclass(frozen=True, slots=True)
class Transfer:
    """One secured unit from ``sender`` to the other end: ``payload`` bytes at ``tier`` as ``message_class``.

    ``signed``: the unit's authenticator is a 64-byte frame signature (the seed's binding-tier
    format); otherwise the symmetric AEAD format of its tier (the pairing tier's for binding units).
    """

    sender: str
    message_class: MessageClass
    tier: Tier
    payload: int
    signed: bool = False
    label: str = ""


Step = Compute | Transfer


def unit_bytes(bus: BusProfile, transfer: Transfer) -> int:
    """Bytes of the unit on the bus: payload plus its tier's freshness and tag (or signature) overhead."""
    if transfer.signed:
        return transfer.payload + frame_format(Tier.BINDING, bus).overhead
    tier = Tier.PAIRING if transfer.tier is Tier.BINDING else transfer.tier
    return transfer.payload + frame_format(tier, bus).overhead


def transfer_frames(bus: BusProfile, transfer: Transfer) -> list[int]:
    """Data lengths of the unit's frames: one frame if it fits, else ISO-TP (flow control at index 1)."""
    n = unit_bytes(bus, transfer)
    return frames_for_unit(n, bus, isotp=transfer.signed or n > bus.data_field)


#: Budgets of the ModBatt spec addendum (docs/simulation.md §3 lists them and names the source), in
#: seconds; the pairing exchange has no latency target, only the partial-pairing timeout of 30 s.
BUDGETS: Final = MappingProxyType(
    {
        "L3 signed handshake": 0.050,
        "L5 telemetry frame": 0.005,
        "L5 command + ack": 0.020,
        "L6 pairing validation": 0.100,
        "pairing exchange": 30.0,
    }
)
#: The four latency budgets the design space checks.
BUDGET_LEVELS: Final = ("L3 signed handshake", "L5 telemetry frame", "L5 command + ack", "L6 pairing validation")
BUDGET_SOURCE: Final = MappingProxyType(
    {
        "L3 signed handshake": "spec addendum: L3 pairing handshake < 50 ms (incl. AES-GCM init)",
        "L5 telemetry frame": "spec addendum: L5 encrypted telemetry < 5 ms/frame",
        "L5 command + ack": "spec addendum: L5 command ACK with signature < 20 ms",
        "L6 pairing validation": "spec addendum: full L6 validation < 100 ms",
        "pairing exchange": "spec addendum: partial pairing timeout 30 s (a timeout, not a latency target)",
    }
)

_V = MessageClass.VALIDATION


def _aead(bus: BusProfile) -> str:
    return GCM if bus.fd else CCM


def _authenticated(p: ProfileModel, bus: BusProfile, sender: str, receiver: str, payload: int, label: str,
                   message_class: MessageClass = _V) -> list[Step]:  # fmt: skip
    """A binding-tier unit: signed and verified (signature frames) or sealed and opened under the binding MAC key."""
    if p.binding_frames == "signature":
        return [Compute(sender, p.sign, label=f"sign {label}"),
                Transfer(sender, message_class, Tier.BINDING, payload, signed=True, label=label),
                Compute(receiver, p.verify, label=f"verify {label}")]  # fmt: skip
    a = _aead(bus)
    return [Compute(sender, a, payload, f"seal {label} (binding MAC key)"),
            Transfer(sender, message_class, Tier.BINDING, payload, label=label),
            Compute(receiver, a, payload, f"open {label} (binding MAC key)")]  # fmt: skip


def _l3(p: ProfileModel, bus: BusProfile) -> list[Step]:
    hello = 16 + p.point_bytes  # nonce + ephemeral public key
    a = _aead(bus)
    steps: list[Step] = []
    if not p.precomputed_ephemeral:
        steps.append(Compute("pack", p.keygen, label="ephemeral key"))
    steps += _authenticated(p, bus, "pack", "module", hello, "hello")
    if not p.precomputed_ephemeral:
        steps.append(Compute("module", p.keygen, label="ephemeral key"))
    steps += [Compute("module", p.dh, label="ephemeral key agreement"), Compute("module", HKDF, label="session key")]
    steps += _authenticated(p, bus, "module", "pack", hello, "reply")
    return [
        *steps,
        Compute("pack", p.dh, label="ephemeral key agreement"),
        Compute("pack", HKDF, label="session key"),
        Compute("pack", a, 0, "seal key confirmation"),
        Transfer("pack", MessageClass.STATUS, Tier.EXCHANGE, 0, label="key confirmation"),
        Compute("module", a, 0, "open key confirmation"),
    ]


def _l5_telemetry(p: ProfileModel, bus: BusProfile) -> list[Step]:
    a, n = _aead(bus), LEGACY_TELEMETRY_BYTES
    return [
        Compute("module", a, n, "seal telemetry"),
        Transfer("module", MessageClass.CURRENT_TELEMETRY, Tier.EXCHANGE, n, label="MODULE_STATUS_1"),
        Compute("pack", a, n, "open telemetry"),
    ]


def _l5_command(p: ProfileModel, bus: BusProfile) -> list[Step]:
    a, c = _aead(bus), MessageClass.CHARGE_COMMAND
    cmd = SEQ_BYTES + STATE_CHANGE_BYTES + p.command_signature_bytes
    ack = ACK_BYTES + p.command_signature_bytes
    if not p.signed_commands:  # one AEAD under a key from the pairing key and the binding MAC key
        return [
            Compute("pack", a, cmd, "seal command (pairing + binding MAC key)"),
            Transfer("pack", c, Tier.PAIRING, cmd, label="command"),
            Compute("module", a, cmd, "open command"),
            Compute("module", a, ack, "seal ack"),
            Transfer("module", c, Tier.PAIRING, ack, label="ack"),
            Compute("pack", a, ack, "open ack"),
        ]
    return [
        Compute("pack", p.sign, label="sign command"),
        Compute("pack", a, cmd, "seal command (pairing key)"),
        Transfer("pack", c, Tier.PAIRING, cmd, label="command"),
        Compute("module", a, cmd, "open command"),
        Compute("module", p.verify, label="verify command"),
        Compute("module", p.sign, label="sign ack"),
        Compute("module", a, ack, "seal ack"),
        Transfer("module", c, Tier.PAIRING, ack, label="ack"),
        Compute("pack", a, ack, "open ack"),
        Compute("pack", p.verify, label="verify ack"),
    ]


def _l6(p: ProfileModel, bus: BusProfile) -> list[Step]:
    body = 100  # CBOR {pairing_id, validation_nonce, type, timestamp, certificate hash}
    sealed = body + 12 + 16  # pairing-key AES-GCM: nonce + tag
    if p.binding_frames == "signature":  # the frame signature is the message's signature
        return [
            Compute("pack", CBOR, body, "encode"),
            Compute("pack", GCM, body, "seal (pairing key)"),
            *_authenticated(p, bus, "pack", "module", sealed, "validation"),
            Compute("module", GCM, body, "open (pairing key)"),
            Compute("module", CBOR, body, "decode"),
            Compute("module", CBOR, body, "encode"),
            Compute("module", GCM, body, "seal (pairing key)"),
            *_authenticated(p, bus, "module", "pack", sealed, "countersignature"),
            Compute("pack", GCM, body, "open (pairing key)"),
            Compute("pack", CBOR, body, "decode"),
        ]
    # The signatures are for the controller, which checks them off the bus; the partners check
    # each other with the binding MAC key.
    signed = sealed + SIGNATURE_BYTES
    return [
        Compute("pack", CBOR, body, "encode"),
        Compute("pack", GCM, body, "seal (pairing key)"),
        Compute("pack", p.sign, label="sign for the controller"),
        *_authenticated(p, bus, "pack", "module", signed, "validation"),
        Compute("module", GCM, body, "open (pairing key)"),
        Compute("module", CBOR, body, "decode"),
        Compute("module", CBOR, body, "encode"),
        Compute("module", GCM, body, "seal (pairing key)"),
        Compute("module", p.sign, label="countersign for the controller"),
        *_authenticated(p, bus, "module", "pack", signed, "countersignature"),
        Compute("pack", GCM, body, "open (pairing key)"),
        Compute("pack", CBOR, body, "decode"),
    ]


def _signed(p: ProfileModel, sender: str, receiver: str, payload: int, label: str,
            message_class: MessageClass = _V) -> list[Step]:  # fmt: skip
    """A unit signed with the sender's binding key in every profile (a signed binding-tier unit)."""
    return [Compute(sender, p.sign, label=f"sign {label}"),
            Transfer(sender, message_class, Tier.BINDING, payload, signed=True, label=label),
            Compute(receiver, p.verify, label=f"verify {label}")]  # fmt: skip


def _open_offer(actor: str, half: str, handshake: int) -> list[Step]:
    """What an entity computes on its partner's offer: the half it carries, the pairing key, the
    handshake section under it, and both traffic secrets."""
    return [
        Compute(actor, HKDF, label="exchange key"),
        Compute(actor, GCM, 32, f"open half {half}"),
        Compute(actor, HKDF, label="pairing key"),
        Compute(actor, GCM, handshake, "open handshake section"),
        Compute(actor, HKDF, label="traffic secrets"),
        Compute(actor, HKDF, label="traffic secrets"),
    ]


def _pairing(p: ProfileModel, bus: BusProfile) -> list[Step]:
    # The certificate and both offers are signed in every profile: the binding MAC key is per
    # session and derives from the session id, which the offers themselves establish, so it
    # cannot authenticate them (docs/profiles.md). It is derived at the end, once per session.
    cert, metadata, section, handshake = 1700, 1100, 142, 214  # docs/pairing.md sizes
    offer_a, offer_b = 261 - 64, 326 - 64  # without the offer signature (the frame's)
    steps: list[Step] = []
    steps += _signed(p, "pack", "module", cert, "certificate", MessageClass.CERTIFICATE)
    steps += [
        Compute("module", p.verify, label="controller signature on the certificate"),
        Compute("module", SHA256, metadata, "metadata hash"),
        Compute("module", p.dh, label="ECIES open of its section"),
        Compute("module", HKDF, label="ECIES key"),
        Compute("module", GCM, section, "open its section"),
        Compute("pack", HKDF, label="exchange key"),
        Compute("pack", GCM, 32, "seal its half"),
    ]
    steps += _signed(p, "pack", "module", offer_a, "offer A")
    steps += _open_offer("module", "A", handshake)
    steps += [
        Compute("module", p.sign, label="completion signature"),
        Compute("module", HKDF, label="exchange key"),
        Compute("module", GCM, 32, "seal half B"),
    ]
    steps += _signed(p, "module", "pack", offer_b, "offer B")
    steps += _open_offer("pack", "B", handshake)
    steps += [
        Compute("pack", p.verify, label="module's completion signature"),
        Compute("pack", p.sign, label="own completion signature (to the controller, off the bus)"),
    ]
    if p.binding_frames == "aead":  # the session's binding MAC key, and the pairing secret bound to it
        for actor in ("module", "pack"):
            steps += [Compute(actor, p.dh, label="static key agreement (binding keys)"),
                      Compute(actor, HKDF, label="binding MAC key"),
                      Compute(actor, HKDF, label="pairing secret bound to the binding")]  # fmt: skip
    return steps


#: Transaction models per level: a function of the protocol and bus profiles returning the steps.
LEVELS: Final[MappingProxyType[str, Callable[[ProfileModel, BusProfile], list[Step]]]] = MappingProxyType(
    {
        "L3 signed handshake": _l3,
        "L5 telemetry frame": _l5_telemetry,
        "L5 command + ack": _l5_command,
        "L6 pairing validation": _l6,
        "pairing exchange": _pairing,
    }
)


def level_steps(level: str, protocol: ProfileModel | str, bus: BusProfile) -> list[Step]:
    """The steps of one transaction of ``level`` under ``protocol`` on ``bus``."""
    p = protocol if isinstance(protocol, ProfileModel) else protocol_named(protocol)
    return LEVELS[level](p, bus)


def offline_steps(protocol: ProfileModel | str) -> list[Compute]:
    """Work a profile moves off the critical path (idle time or once per pairing); not in any budget."""
    p = protocol if isinstance(protocol, ProfileModel) else protocol_named(protocol)
    steps = []
    if p.precomputed_ephemeral:
        steps += [Compute(a, p.keygen, label="L3 ephemeral key, at idle time") for a in ("pack", "module")]
    if p.binding_frames == "aead":
        for a in ("pack", "module"):
            steps += [Compute(a, p.dh, label="binding MAC key: static ECDH, once per pairing session"),
                      Compute(a, HKDF, label="binding MAC key: HKDF, once per pairing session")]  # fmt: skip
    return steps


# --- Running steps against the simulated bus ---------------------------------------------------

Request = tuple[str, Any]


def can_id(layout: IdLayout, message_class: MessageClass, tier: Tier, node: int, direction: int) -> int:
    """The identifier the link computes for a class at a tier, for one node and direction (0: pack→node)."""
    return layout.encode(function_for(message_class).id_fields(node, direction, tier))


def send_unit(tx_id: int, rx_id: int, frames: Sequence[int], tag: Any = None) -> Generator[Request, Any, None]:
    """Put one unit's frames on the bus: single frame, or ISO-TP FF → FC (receiver) → CFs."""
    yield ("frames", [(tx_id, frames[0], tag)])  # single frame, or the first frame
    if len(frames) == 1:
        return
    yield ("frames", [(rx_id, frames[1], tag)])  # flow control from the receiver, block size 0
    yield ("frames", [(tx_id, n, tag) for n in frames[2:]])  # consecutive frames, STmin 0


class Process:
    """Runs a generator of requests against the loop and the bus; accumulates the split of its time."""

    def __init__(
        self, loop: EventLoop, bus: CanBusModel, gen: Generator[Request, Any, None], done: Callable[[], None]
    ) -> None:
        self.loop, self.bus, self.gen, self.done = loop, bus, gen, done
        self.wire = 0.0
        self.compute = 0.0
        self.start = loop.now
        self.frames = 0
        self._left = 0
        self._step(None)

    def _step(self, value: Any) -> None:
        try:
            kind, arg = self.gen.send(value)
        except StopIteration:
            self.done()
            return
        if kind == "compute":
            self.compute += arg
            self.loop.call_later(arg, self._step, None)
        elif kind == "frames":
            self._left = len(arg)
            for cid, nbytes, tag in arg:
                self.bus.submit(cid, nbytes, self._frame_done, tag)
        else:  # pragma: no cover - internal
            raise ValueError(kind)

    def _frame_done(self, record: FrameRecord) -> None:
        self.wire += record.wire
        self.frames += 1
        self._left -= 1
        if self._left == 0:
            self._step(record)


def transaction(
    steps: Iterable[Step], platform: Platform, bus: BusProfile, node: int, layout: IdLayout
) -> Generator[Request, Any, None]:
    """The requests of one transaction: compute time from ``platform``, frames from the bus profile."""
    for step in steps:
        if isinstance(step, Compute):
            yield ("compute", platform.cpu(step.actor).cost(step.op, step.nbytes))
        else:
            direction = 0 if step.sender == "pack" else 1
            tx = can_id(layout, step.message_class, step.tier, node, direction)
            rx = can_id(layout, step.message_class, step.tier, node, 1 - direction)
            yield from send_unit(tx, rx, transfer_frames(bus, step), step)
