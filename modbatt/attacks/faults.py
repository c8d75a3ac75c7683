"""Fault injection between two channel ends: loss, duplication, reordering and corruption on the
paired link and on the fragment transport.

:class:`FaultyChannel` perturbs a stream of frames at stated rates; :func:`acknowledged_commands`
drives critical commands over two real channel ends through it in both directions with the
product's own delivery machines (:mod:`modbatt.protocol.delivery`: no window or retransmission of
its own here); :func:`fragment_transfers` repeats broadcast fragments through a real
:class:`Reassembler`. Corrupted frames are refused by the MAC or the CRC and counted. The pack
simulator's path through the fault bus is measured in :mod:`modbatt.sim.soak` and
tests/test_delivery.py (docs/delivery.md).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..can.fragment import Reassembler, fragment_message
from ..can.payloads import SEQ_BYTES
from ..errors import VerificationError
from ..model.policy import MessageClass
from ..nodes.channel import PairedChannel
from ..protocol.delivery import Decision, DeliveryReceiver, DeliverySender, RetryPolicy
from .outcome import counted

__all__ = ["FaultRates", "FaultReport", "FaultyChannel", "acknowledged_commands", "fragment_transfers"]

_STREAM = "charge_command"
_ROUND_S = 0.1


@dataclass(frozen=True)
class FaultRates:
    """Per-frame probabilities (the defaults are the issue's stated test rates)."""

    loss: float = 0.05
    duplication: float = 0.02
    reordering: float = 0.02
    corruption: float = 0.01


@dataclass
class FaultyChannel:
    """Perturbs frames ``(can_id, data)`` at :class:`FaultRates`; counts what it did."""

    rates: FaultRates
    rng: random.Random
    injected: dict[str, int] = field(
        default_factory=lambda: {"lost": 0, "duplicated": 0, "reordered": 0, "corrupted": 0}
    )

    def carry(self, frames: Iterable[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for can_id, data in frames:
            r = self.rates
            if self.rng.random() < r.loss:
                self.injected["lost"] += 1
                continue
            if data and self.rng.random() < r.corruption:
                i = self.rng.randrange(len(data))
                data = data[:i] + bytes([data[i] ^ (1 << self.rng.randrange(8))]) + data[i + 1 :]
                self.injected["corrupted"] += 1
            out.append((can_id, data))
            if self.rng.random() < r.duplication:
                out.append((can_id, data))
                self.injected["duplicated"] += 1
            if len(out) >= 2 and self.rng.random() < r.reordering:
                out[-1], out[-2] = out[-2], out[-1]
                self.injected["reordered"] += 1
        return out


@dataclass
class FaultReport:
    """What crossed the faulty link: delivered in order, acknowledged, lost, and the counters."""

    sent: int
    delivered: list[int]
    acknowledged: set[int]
    rounds: int
    transmissions: int
    counters: dict[str, Any]

    @property
    def nothing_acknowledged_lost(self) -> bool:
        """Every acknowledged command was delivered, exactly once and in order."""
        return self.acknowledged <= set(self.delivered) and self.delivered == list(range(len(self.delivered)))


def acknowledged_commands(
    pack: PairedChannel, module: PairedChannel, count: int, rates: FaultRates, *, seed: int = 0,
    max_rounds: int = 20_000,
) -> FaultReport:  # fmt: skip
    """Send ``count`` charge commands from ``pack`` to ``module`` over a faulty channel in both
    directions, with the product's delivery rules (:mod:`modbatt.protocol.delivery`, docs/delivery.md):
    the pack's :class:`DeliverySender` retries each command as a new secured unit until acknowledged;
    the module's :class:`DeliveryReceiver` applies each once and acknowledges every copy. One round
    is one retry interval (0.1 s of the injected clock)."""
    rng = random.Random(seed)
    down, up = FaultyChannel(rates, rng), FaultyChannel(rates, rng)
    sender = DeliverySender(RetryPolicy(first_s=_ROUND_S, backoff=1.0, max_s=_ROUND_S, max_tries=1_000))
    receiver = DeliveryReceiver()
    delivered: list[int] = []  # sequence numbers as applied (one stream from 0: the command's index)
    acked: set[int] = set()
    transmissions = rounds = 0
    now = 0.0
    sends = []
    for _ in range(count):
        sends += sender.submit(_STREAM, b"", now)  # the command is its sequence number (one classic frame)
    while sender.pending() and rounds < max_rounds:
        rounds += 1
        now += _ROUND_S
        frames = []
        for t in sends:
            pdu = pack.send(MessageClass.CHARGE_COMMAND, t.seq.to_bytes(SEQ_BYTES, "big") + t.body)
            frames.append((pdu.can_id, pdu.data))
            transmissions += 1
        acks = []
        for can_id, data in down.carry(frames):
            try:
                got = module.receive(can_id, data)
            except VerificationError:
                continue  # corrupted, replayed or stale: counted in module.rejects
            if got is None:
                continue  # a control frame (resync), not a command
            seq = int.from_bytes(got.payload[:SEQ_BYTES], "big")
            decision = receiver.decide(_STREAM, seq)
            if decision is Decision.STALE:
                continue
            if decision is Decision.APPLY:
                receiver.commit(_STREAM, seq, True)
                delivered.append(seq)
            ack = module.send(MessageClass.CHARGE_COMMAND, seq.to_bytes(SEQ_BYTES, "big"))
            acks.append((ack.can_id, ack.data))
        sends = []
        for can_id, data in up.carry(acks):
            try:
                got = pack.receive(can_id, data)
            except VerificationError:
                continue
            if got is None:
                continue
            settled, following = sender.on_ack(_STREAM, int.from_bytes(got.payload, "big"), False, now)
            if settled is not None:
                acked.add(settled.seq)
            sends += following
        retries, _gave_up = sender.tick(now)
        sends += retries
    counters = {**counted("module.rejects", module.rejects), **counted("pack.rejects", pack.rejects)}
    counters.update({f"down.{k}": v for k, v in down.injected.items()})
    counters.update({f"up.{k}": v for k, v in up.injected.items()})
    counters.update({"retransmissions": sender.retransmissions, "repeats": receiver.repeats})
    return FaultReport(count, delivered, acked, rounds, transmissions, counters)


def fragment_transfers(
    messages: list[bytes], rates: FaultRates, *, seed: int = 0, mtu: int = 8, max_rounds: int = 50
) -> tuple[dict[int, bytes], dict[str, Any]]:
    """Broadcast ``messages`` as fragments over a faulty channel into one :class:`Reassembler`,
    repeating a message under a new transfer id until it is delivered (a receiver's
    acknowledgement is assumed out of band). Returns ``{index: payload}`` and the counters."""
    if len(messages) > 0x1F:
        raise ValueError("one carrier id per message: at most 31 messages")
    rng = random.Random(seed)
    channel = FaultyChannel(rates, rng)
    asm = Reassembler()
    delivered: dict[int, bytes] = {}
    now, rounds = 0.0, 0
    while len(delivered) < len(messages) and rounds < max_rounds:
        # A repeat under the same transfer id fills the gaps of the transfer in progress (the first
        # copy of each fragment is kept); every third round a new id starts over, in case a corrupted
        # fragment was kept and the CRC abandoned the transfer.
        tid = (rounds // 3) % 16
        rounds += 1
        for i, msg in enumerate(messages):
            if i in delivered:
                continue
            can_id = 0x100 | (i + 1)
            for cid, data in channel.carry((can_id, f) for f in fragment_message(msg, tid, mtu=mtu)):
                for done in asm.feed(cid, data, now):
                    idx = (done.can_id & 0xFF) - 1
                    if done.payload == messages[idx]:
                        delivered.setdefault(idx, done.payload)
        now += 0.3  # inside the gap timeout: a repeat extends the transfer it completes
        asm.expire(now)
    counters = {**asm.counters(), **{f"channel.{k}": v for k, v in channel.injected.items()}, "rounds": rounds}
    return delivered, counters
