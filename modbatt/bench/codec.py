"""Codec benchmark: secured vs cleartext cost of one 8-byte message per protocol profile, bus profile and tier.

Per row (``profile`` = the protocol profile of docs/profiles.md, ``bus`` = classic or fd):

* ``secured_us_per_message``: the codec's work for one message, all its frames: identifier encode
  + protect (sender) + verify + identifier decode (receiver). Multi-frame units are timed as the
  one AEAD/signature operation they need; the transport's split/join is not included.
* ``cleartext_us_per_message``: cantools ``Message.encode`` + ``decode`` of the same 8-byte
  payload (two 32-bit signals), measured in the same run.
* ``secured_with_signals_us``: both together, i.e. what a node that packs signals *and* secures
  them spends.
* ``bus_messages_per_s``: how many such messages a saturated 1 Mbit/s bus of the profile carries
  (no stuffing, i.e. the most it can ever carry; ``bus_messages_per_s_worst`` with worst-case
  stuffing). Multi-frame units are counted as ISO-TP frames including flow control.

Targets (on one core): ``messages_per_s >= 10 * bus_messages_per_s`` everywhere, and for NONE,
EXCHANGE and PAIRING also ``ratio <= 2.5`` and ``messages_per_s >= 76_340``. The binding tier
reaches the first only under ``efficient`` (one AEAD operation per message instead of an ECDSA
signature and verification); the ``seed`` rows stay beside it. ``bus_ratio`` is
``messages_per_s / bus_messages_per_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import cantools.database as cdb

from ..can.ids import SEED_LAYOUT, CanIdFields
from ..can.secured import Direction, SecuredReceiver, SecuredSender, TrafficKeys, derive_traffic_keys
from ..can.wiretime import PROFILES, BusProfile, isotp_frame_lengths, message_time
from ..crypto.freshness import FreshnessCounter, MemoryCounterStore, ReplayWindow
from ..crypto.suite import PrivateKey
from ..model.profile import ProtocolProfile
from ..model.tier import Tier
from . import time_per_call

NAME = "codec"
DESCRIPTION = "CAN codec: secured (ID + protect + verify) vs cantools cleartext, per bus profile and tier"

_FIELDS = CanIdFields(function=0x42, node=0x03, priority=6, direction=1)
_SIGNALS = {"a": 0x1234_5678, "b": 0x9ABC_DEF0}
_SECRET = bytes(range(32))  # a fixed tier secret: benchmarks measure cost, not secrecy


def _cantools_message(frame_id: int) -> cdb.Message:
    signals = [cdb.Signal("a", 0, 32), cdb.Signal("b", 32, 32)]
    return cdb.Message(frame_id=frame_id, name="BenchMsg", length=8, signals=signals, is_extended_frame=True)


def _channels(tier: Tier, profile: BusProfile, protocol: ProtocolProfile) -> tuple[SecuredSender, SecuredReceiver]:
    direction = Direction.RESPONDER_TO_INITIATOR
    if tier is Tier.NONE:
        tx_keys = rx_keys = TrafficKeys.clear(direction)
    elif tier is Tier.BINDING and not protocol.binding_mac:
        key = PrivateKey.generate()
        tx_keys = TrafficKeys.binding(direction, signer=key)
        rx_keys = TrafficKeys.binding(direction, verifier=key.public_key)
    else:
        tx_keys = rx_keys = derive_traffic_keys(_SECRET, tier, direction)
    counter = FreshnessCounter(MemoryCounterStore(), window=1 << 20)
    return (
        SecuredSender(SEED_LAYOUT, profile, tx_keys, counter),
        SecuredReceiver(SEED_LAYOUT, profile, rx_keys, ReplayWindow(64)),
    )


def _interleaved(fns: tuple[Callable[[], object], ...], min_seconds: float, rounds: int = 7) -> list[float]:
    """Seconds per call of each function: best of ``rounds`` interleaved batches.

    The cores are shared, so secured and cleartext are measured turn about in the same time
    slices, and the minimum (the run least disturbed by other processes) is kept, as timeit advises.
    """
    sizes = [max(1, int(min_seconds / rounds / time_per_call(fn, min_seconds=0.01, repeats=1))) for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, (fn, n) in enumerate(zip(fns, sizes, strict=True)):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / n)
    return best


def _row(protocol: ProtocolProfile, profile: BusProfile, tier: Tier, min_seconds: float) -> dict[str, Any]:
    tx, rx = _channels(tier, profile, protocol)
    probe = tx.protect(_FIELDS, bytes(8))
    msg = _cantools_message(probe.can_id)
    payload = msg.encode(_SIGNALS)

    def secured() -> None:
        pdu = tx.protect(_FIELDS, payload)
        rx.open(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)

    def cleartext() -> None:
        msg.decode(msg.encode(_SIGNALS))

    def with_signals() -> None:
        pdu = tx.protect(_FIELDS, msg.encode(_SIGNALS))
        msg.decode(rx.open(pdu.can_id, pdu.data, reassembled=not pdu.single_frame).payload)

    secured_s, clear_s, both_s = _interleaved((secured, cleartext, with_signals), min_seconds)
    frames = [len(probe.data)] if probe.single_frame else isotp_frame_lengths(len(probe.data), profile)
    bus_best = 1.0 / message_time(profile, frames, worst=False)
    bus_worst = 1.0 / message_time(profile, frames, worst=True)
    assert not rx.rejects, rx.rejects  # a benchmark that rejects its own frames measures nothing
    return {
        "profile": protocol.value,
        "bus": profile.name,
        "tier": tier.name.lower(),
        "secured_us_per_message": round(secured_s * 1e6, 2),
        "cleartext_us_per_message": round(clear_s * 1e6, 2),
        "ratio": round(secured_s / clear_s, 2),
        "messages_per_s": round(1.0 / secured_s),
        "bus_messages_per_s": round(bus_best),
        "bus_messages_per_s_worst": round(bus_worst),
        "bus_ratio": round(1.0 / secured_s / bus_best, 1),
        "secured_with_signals_us": round(both_s * 1e6, 2),
        "unit_bytes": len(probe.data),
        "frames_per_message": len(frames),
    }


def run(quick: bool = False, profiles: tuple[ProtocolProfile, ...] = tuple(ProtocolProfile)) -> list[dict[str, Any]]:
    """One row per protocol profile, bus profile and tier (see the module docstring for the columns)."""
    min_seconds = 0.05 if quick else 0.3
    return [
        _row(protocol, profile, tier, min_seconds)
        for protocol in profiles
        for profile in PROFILES.values()
        for tier in Tier
    ]
