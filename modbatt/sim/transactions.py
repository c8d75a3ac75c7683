"""Transaction models: each validation level as a list of steps (compute, transfer) run against the bus.

A transfer that fits one frame is one frame; otherwise ISO-TP: first frame, flow control from the
receiver (on the reverse identifier, competing in arbitration), then the consecutive frames.
Identifiers are the seed-layout identifiers the link computes, so arbitration order is the real
one. Step lists and message sizes: docs/simulation.md §3.
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
from .cpu import CBOR, CCM, ECDH, ECDSA_SIGN, ECDSA_VERIFY, GCM, HKDF, KEYGEN, SHA256, Platform
from .eventloop import EventLoop
from .schedule import ACK_BYTES, LEGACY_TELEMETRY_BYTES, frames_for_unit

__all__ = ["BUDGETS", "LEVELS", "Compute", "Step", "Transfer"]


@dataclass(frozen=True, slots=True)
class Compute:
    """CPU work by ``actor`` (``pack`` or ``module``)."""

    actor: str
    op: str
    nbytes: int = 0


@dataclass(frozen=True, slots=True)
class Transfer:
    """One secured unit from ``sender`` to the other end: ``payload`` bytes at ``tier`` as ``message_class``."""

    sender: str
    message_class: MessageClass
    tier: Tier
    payload: int


Step = Compute | Transfer

#: Budgets from the spec addendum (reference facts §f), in seconds; the pairing exchange has no
#: latency target, only SA's partial-pairing timeout of 30 s.
BUDGETS: Final = MappingProxyType(
    {
        "L3 signed handshake": 0.050,
        "L5 telemetry frame": 0.005,
        "L5 command + ack": 0.020,
        "L6 pairing validation": 0.100,
        "pairing exchange": 30.0,
    }
)
_BUDGET_SOURCE: Final = MappingProxyType(
    {
        "L3 signed handshake": "SA: L3 pairing handshake < 50 ms (incl. AES-GCM init)",
        "L5 telemetry frame": "SA: L5 encrypted telemetry < 5 ms/frame",
        "L5 command + ack": "SA: L5 command ACK with signature < 20 ms",
        "L6 pairing validation": "SA: full L6 validation < 100 ms",
        "pairing exchange": "SA: partial pairing timeout 30 s (a timeout, not a latency target)",
    }
)


def _aead(profile: BusProfile) -> str:
    return GCM if profile.fd else CCM


def _l3(profile: BusProfile) -> list[Step]:
    hello = 16 + 33  # nonce + compressed ephemeral point; the frame signature is the handshake signature
    v = MessageClass.VALIDATION
    a = _aead(profile)
    return [
        Compute("pack", KEYGEN),
        Compute("pack", ECDSA_SIGN),
        Transfer("pack", v, Tier.BINDING, hello),
        Compute("module", ECDSA_VERIFY),
        Compute("module", KEYGEN),
        Compute("module", ECDH),
        Compute("module", HKDF),  # session key ("incl. AES-GCM init")
        Compute("module", ECDSA_SIGN),
        Transfer("module", v, Tier.BINDING, hello),
        Compute("pack", ECDSA_VERIFY),
        Compute("pack", ECDH),
        Compute("pack", HKDF),
        Compute("pack", a, 0),
        Transfer("pack", MessageClass.STATUS, Tier.EXCHANGE, 0),  # key confirmation: a tag-only frame
        Compute("module", a, 0),
    ]


def _l5_telemetry(profile: BusProfile) -> list[Step]:
    a = _aead(profile)
    n = LEGACY_TELEMETRY_BYTES
    return [
        Compute("module", a, n),
        Transfer("module", MessageClass.CURRENT_TELEMETRY, Tier.EXCHANGE, n),
        Compute("pack", a, n),
    ]


def _l5_command(profile: BusProfile) -> list[Step]:
    a = _aead(profile)
    cmd = 2 + 4 + 64  # sequence + MODULE_STATE_CHANGE + binding-key signature
    ack = ACK_BYTES + 64
    c = MessageClass.CHARGE_COMMAND
    return [
        Compute("pack", ECDSA_SIGN),
        Compute("pack", a, cmd),
        Transfer("pack", c, Tier.PAIRING, cmd),
        Compute("module", a, cmd),
        Compute("module", ECDSA_VERIFY),
        Compute("module", ECDSA_SIGN),
        Compute("module", a, ack),
        Transfer("module", c, Tier.PAIRING, ack),
        Compute("pack", a, ack),
        Compute("pack", ECDSA_VERIFY),
    ]


def _l6(profile: BusProfile) -> list[Step]:
    body = 100  # CBOR {pairing_id, validation_nonce, type, timestamp, certificate hash}
    sealed = body + 12 + 16  # pairing-key AES-GCM: nonce + tag
    v = MessageClass.VALIDATION
    return [
        Compute("pack", CBOR, body),
        Compute("pack", GCM, body),
        Compute("pack", ECDSA_SIGN),
        Transfer("pack", v, Tier.BINDING, sealed),
        Compute("module", ECDSA_VERIFY),
        Compute("module", GCM, body),
        Compute("module", CBOR, body),
        Compute("module", CBOR, body),
        Compute("module", GCM, body),
        Compute("module", ECDSA_SIGN),
        Transfer("module", v, Tier.BINDING, sealed),
        Compute("pack", ECDSA_VERIFY),
        Compute("pack", GCM, body),
        Compute("pack", CBOR, body),
    ]


def _pairing(profile: BusProfile) -> list[Step]:
    cert, metadata, section, handshake = 1700, 1100, 142, 214  # docs/pairing.md sizes
    offer_a, offer_b = 261 - 64, 326 - 64  # the frame signature is the offer's signature
    v = MessageClass.VALIDATION
    return [
        Compute("pack", ECDSA_SIGN),
        Transfer("pack", MessageClass.CERTIFICATE, Tier.BINDING, cert),
        Compute("module", ECDSA_VERIFY),  # frame
        Compute("module", ECDSA_VERIFY),  # controller signature on the certificate
        Compute("module", SHA256, metadata),
        Compute("module", ECDH),  # ECIES open of its section
        Compute("module", HKDF),
        Compute("module", GCM, section),
        Compute("pack", HKDF),
        Compute("pack", GCM, 32),
        Compute("pack", ECDSA_SIGN),
        Transfer("pack", v, Tier.BINDING, offer_a),
        Compute("module", ECDSA_VERIFY),
        Compute("module", HKDF),
        Compute("module", GCM, 32),
        Compute("module", HKDF),
        Compute("module", GCM, handshake),
        Compute("module", HKDF),
        Compute("module", HKDF),
        Compute("module", ECDSA_SIGN),  # completion signature
        Compute("module", HKDF),
        Compute("module", GCM, 32),
        Compute("module", ECDSA_SIGN),  # offer
        Transfer("module", v, Tier.BINDING, offer_b),
        Compute("pack", ECDSA_VERIFY),
        Compute("pack", HKDF),
        Compute("pack", GCM, 32),
        Compute("pack", HKDF),
        Compute("pack", GCM, handshake),
        Compute("pack", HKDF),
        Compute("pack", HKDF),
        Compute("pack", ECDSA_VERIFY),  # module's completion signature
        Compute("pack", ECDSA_SIGN),  # own completion signature (sent to the controller off the bus)
    ]


#: Transaction models per level: a function of the bus profile returning the step sequence.
LEVELS: Final = MappingProxyType(
    {
        "L3 signed handshake": _l3,
        "L5 telemetry frame": _l5_telemetry,
        "L5 command + ack": _l5_command,
        "L6 pairing validation": _l6,
        "pairing exchange": _pairing,
    }
)


def _can_id(layout: IdLayout, message_class: MessageClass, tier: Tier, node: int, direction: int) -> int:
    fields = function_for(message_class).id_fields(node, direction, tier)
    return layout.encode(fields)


def _unit_bytes(profile: BusProfile, tier: Tier, payload: int) -> int:
    return payload + frame_format(tier, profile).overhead


def _transfer_frames(profile: BusProfile, tier: Tier, payload: int) -> list[int]:
    unit = _unit_bytes(profile, tier, payload)
    fits = tier is not Tier.BINDING and unit <= profile.data_field
    return frames_for_unit(unit, profile, isotp=not fits)


_Request = tuple[str, Any]


def _send_unit(tx_id: int, rx_id: int, frames: Sequence[int], tag: Any = None) -> Generator[_Request, Any, None]:
    """Put one unit's frames on the bus: single frame, or ISO-TP FF → FC (receiver) → CFs."""
    if len(frames) == 1:
        yield ("frames", [(tx_id, frames[0], tag)])
        return
    yield ("frames", [(tx_id, frames[0], tag)])  # first frame
    yield ("frames", [(rx_id, frames[1], tag)])  # flow control from the receiver, block size 0
    yield ("frames", [(tx_id, n, tag) for n in frames[2:]])  # consecutive frames, STmin 0


class _Process:
    """Runs a generator of requests against the loop and the bus; accumulates the split of its time."""

    def __init__(
        self, loop: EventLoop, bus: CanBusModel, gen: Generator[_Request, Any, None], done: Callable[[], None]
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
            for can_id, nbytes, tag in arg:
                self.bus.submit(can_id, nbytes, self._frame_done, tag)
        else:  # pragma: no cover - internal
            raise ValueError(kind)

    def _frame_done(self, record: FrameRecord) -> None:
        self.wire += record.wire
        self.frames += 1
        self._left -= 1
        if self._left == 0:
            self._step(record)


def _transaction(
    steps: Iterable[Step], platform: Platform, profile: BusProfile, node: int, layout: IdLayout
) -> Generator[_Request, Any, None]:
    for step in steps:
        if isinstance(step, Compute):
            yield ("compute", platform.cpu(step.actor).cost(step.op, step.nbytes))
        else:
            direction = 0 if step.sender == "pack" else 1
            tx = _can_id(layout, step.message_class, step.tier, node, direction)
            rx = _can_id(layout, step.message_class, step.tier, node, 1 - direction)
            yield from _send_unit(tx, rx, _transfer_frames(profile, step.tier, step.payload))
