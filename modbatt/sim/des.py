"""Discrete-event simulation of latency on CAN: simulated clock, arbitrated bus, CPU cost profiles.

Nothing here touches a real bus or the wall clock (except :func:`measure_host`, which times the
real cryptographic operations on this machine once per process).

The model
---------

* :class:`EventLoop` — a simulated clock and an event queue (``heapq``; ties run in the order
  they were scheduled).
* :class:`CanBusModel` — one CAN bus. A frame is *pending* from the moment a node hands it to its
  controller. Whenever the bus goes idle, arbitration picks the pending frame with the **lowest
  identifier** (ties: first submitted), which then occupies the bus for its wire time from
  :func:`modbatt.can.wiretime.frame_time` — worst-case stuffing, no stuffing, or ``typical``
  (random data, see :data:`TYPICAL_STUFF_SHARE`). Transmission is never pre-empted. Not modelled:
  error frames, retransmissions, controllers whose FIFO transmit queue causes priority inversion.
* :class:`CpuProfile` — seconds per cryptographic operation for one chip. ``HOST`` is measured at
  run time; the MCU profiles come from published figures, each :class:`OpCost` saying where its
  number comes from and whether it is a published figure or our estimate.
* A transaction is a generator of steps (compute on the pack or the module, transfer a secured
  unit) run against the bus; its latency is split into wire time (own frames on the bus),
  queueing (waiting for the bus) and compute.

CPU figures (seconds per operation)
-----------------------------------

=====================  ==============================  ==============================================
profile / operation    figure                          source (P = published figure, E = estimate)
=====================  ==============================  ==============================================
HOST, every op         timed here at run time          ``cryptography`` / ``hashlib`` / ``cbor2``
STM32WB55 ECDSA sign   2 744 000 cycles → 42.9 ms      P: ST RM0456 Rev 6 (STM32U5 PKA) Table 523,
                       at 64 MHz                       P-256; E: that the WB55's earlier PKA
                                                       revision (RM0434) takes the same cycles
STM32WB55 ECDSA verif  2 938 000 cycles → 45.9 ms      P: RM0456 Table 524; E: same caveat
STM32WB55 ECDH/keygen  3 083 000 cycles → 48.2 ms      P: RM0456 Table 522 (ECC scalar mult.); E: same
STM32WB55 AES block    1 µs/16 B + 10 µs per call      E: hardware AES peripheral, driver overhead
STM32WB55 SHA-256      35 µs per 64-B block            E: ~35 cycles/byte software on Cortex-M4
STM32WB55 HKDF         0.3 ms                          E: ~8 SHA-256 compressions
STM32WB55 CBOR         50 µs per message               E
ATmega64M1 ECDSA s/v   3.0 s each                      P(project doc, not a measurement): facts §f
                                                       "AT": ATmega328p @16 MHz 1-2 s; E: midpoint
                                                       1.5 s, ×2 for the 64M1's 8 MHz clock
ATmega64M1 ECDH/keygen 3.0 s                           E: as sign. Published lower bound: X25519
                                                       13 900 397 AVR cycles = 1.74 s at 8 MHz
                                                       (Düll et al., Des. Codes Cryptogr. 77, 2015)
ATmega64M1 AES-256     2 975 cycles/block = 0.372 ms   P: rgrgrg/AVR-AES-faster README (flash S-box,
                                                       precomputed keys); CCM = 2 + 2·⌈n/16⌉ blocks
ATmega64M1 AES-GCM     15 ms + 15 ms per 16-B block    E from facts §f "AT": 64 B in 10-50 ms at
                                                       16 MHz (midpoint 30 ms, ×2 for 8 MHz)
ATmega64M1 HKDF        200 ms                          P(project doc): facts §f "AT" 100-500 ms at
                                                       16 MHz; E: low end ×2 (8 compressions of an
                                                       AVR SHA-256 would be nearer 25 ms)
ATmega64M1 SHA-256     3.1 ms per 64-B block           E: ~25 000 AVR cycles per compression
ATmega64M1 CBOR        1 ms per message                E
=====================  ==============================  ==============================================

Modelling choices worth knowing: every handshake or validation message that carries a signature
travels at the binding tier (one signature = the frame's; DESIGN §3), L5 commands and acks carry a
binding-key signature inside a pairing-tier unit (seed: "binding-key signature over command"),
and the module bus uses the same identifiers the link computes (seed layout), so arbitration
order in the simulation is the order a real bus would see.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import math
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import cbor2
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM

from ..can.functions import function_for
from ..can.ids import SEED_LAYOUT, IdLayout
from ..can.secured import frame_format
from ..can.wiretime import CLASSIC, FD, BusProfile, bus_load, frame_bits, frame_time
from ..crypto.suite import PrivateKey, hkdf_sha256
from ..model.policy import MessageClass
from ..model.tier import Tier
from .schedule import (
    ACK_BYTES,
    HEARTBEAT_BYTES,
    LEGACY_TELEMETRY_BYTES,
    TELEMETRY,
    TrafficPlan,
    frames_for_unit,
    uses_isotp,
)

__all__ = [
    "ATMEGA64M1",
    "BUDGETS",
    "BUSES",
    "HOST_NAME",
    "LEVELS",
    "STM32WB55",
    "SWEEP_EXPERIMENTS",
    "TYPICAL_STUFF_SHARE",
    "CanBusModel",
    "CpuProfile",
    "EventLoop",
    "FrameRecord",
    "OpCost",
    "PackLoadResult",
    "Platform",
    "latency_table",
    "measure_host",
    "platforms",
    "run_level",
    "simulate_pack_load",
    "wire_seconds",
]

#: Share of the worst-case stuff bits that random data produces: a Monte Carlo run over i.i.d.
#: random bits gives 0.0328 stuff bits per stuffable bit (1 in 30.5), against 1 in 4 in the worst
#: case, i.e. 0.131 of the worst-case count. Fixed fields (ID, CRC) are not random, so this is a
#: typical figure, not a bound.
TYPICAL_STUFF_SHARE: Final = 0.131
STUFFING = ("worst", "typical", "none")

# ---------------------------------------------------------------------------------------------
# Event loop and bus
# ---------------------------------------------------------------------------------------------


class EventLoop:
    """A simulated clock and an event queue. ``now`` only moves when events run."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.events = 0

    def schedule(self, at: float, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` at simulated time ``at`` (never earlier than now)."""
        heapq.heappush(self._queue, (max(at, self.now), next(self._seq), fn, args))

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.schedule(self.now + max(delay, 0.0), fn, *args)

    def run(self, until: float | None = None, *, max_events: int = 10_000_000) -> None:
        """Run events in time order up to ``until`` (inclusive) or until none are left."""
        while self._queue and self.events < max_events:
            at, _, fn, args = self._queue[0]
            if until is not None and at > until:
                break
            heapq.heappop(self._queue)
            self.now = at
            self.events += 1
            fn(*args)
        if until is not None and self.now < until:
            self.now = until


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One frame that crossed the simulated bus."""

    can_id: int
    nbytes: int
    submitted: float
    start: float
    end: float
    tag: Any = None

    @property
    def queued(self) -> float:
        return self.start - self.submitted

    @property
    def wire(self) -> float:
        return self.end - self.start


def wire_seconds(profile: BusProfile, nbytes: int, stuffing: str = "worst") -> float:
    """Wire time of one frame: :func:`~modbatt.can.wiretime.frame_time`, or the typical stuffing between."""
    if stuffing == "worst":
        return frame_time(profile, nbytes, worst=True)
    if stuffing == "none":
        return frame_time(profile, nbytes, worst=False)
    if stuffing != "typical":
        raise ValueError(f"stuffing is one of {STUFFING}")
    bits = frame_bits(profile, nbytes)
    data_rate = profile.data_bitrate if profile.brs and profile.data_bitrate else profile.nominal_bitrate
    nominal = bits.nominal_best + TYPICAL_STUFF_SHARE * (bits.nominal_worst - bits.nominal_best)
    data = bits.data_best + TYPICAL_STUFF_SHARE * (bits.data_worst - bits.data_best)
    return nominal / profile.nominal_bitrate + data / data_rate


class CanBusModel:
    """A CAN bus with arbitration by identifier and wire time from :mod:`modbatt.can.wiretime`."""

    def __init__(self, loop: EventLoop, profile: BusProfile, *, stuffing: str = "worst", keep_log: bool = True) -> None:
        if stuffing not in STUFFING:
            raise ValueError(f"stuffing is one of {STUFFING}")
        self.loop = loop
        self.profile = profile
        self.stuffing = stuffing
        self.keep_log = keep_log
        self._pending: list[tuple[int, int, int, float, Callable[[FrameRecord], None] | None, Any]] = []
        self._seq = itertools.count()
        self._busy_until: float | None = None
        self._times: dict[int, float] = {}
        self.busy_time = 0.0
        self.frames = 0
        self.log: list[FrameRecord] = []

    def frame_seconds(self, nbytes: int) -> float:
        t = self._times.get(nbytes)
        if t is None:
            t = self._times[nbytes] = wire_seconds(self.profile, nbytes, self.stuffing)
        return t

    @property
    def idle(self) -> bool:
        return self._busy_until is None

    def submit(
        self, can_id: int, nbytes: int, on_done: Callable[[FrameRecord], None] | None = None, tag: Any = None
    ) -> None:
        """Hand a frame to the bus now; ``on_done(record)`` runs when its last bit has passed."""
        heapq.heappush(self._pending, (can_id, next(self._seq), nbytes, self.loop.now, on_done, tag))
        if self._busy_until is None:
            # Arbitrate at the end of this instant, so frames submitted at the same time compete.
            self._busy_until = self.loop.now
            self.loop.schedule(self.loop.now, self._arbitrate)

    def _arbitrate(self) -> None:
        if not self._pending:
            self._busy_until = None
            return
        can_id, _, nbytes, submitted, on_done, tag = heapq.heappop(self._pending)
        start = self.loop.now
        end = start + self.frame_seconds(nbytes)
        self._busy_until = end
        self.busy_time += end - start
        self.frames += 1
        record = FrameRecord(can_id, nbytes, submitted, start, end, tag)
        if self.keep_log:
            self.log.append(record)
        self.loop.schedule(end, self._finish, record, on_done)

    def _finish(self, record: FrameRecord, on_done: Callable[[FrameRecord], None] | None) -> None:
        if on_done is not None:
            on_done(record)
        self._arbitrate()


# ---------------------------------------------------------------------------------------------
# CPU cost profiles
# ---------------------------------------------------------------------------------------------

ECDSA_SIGN = "ecdsa_sign"
ECDSA_VERIFY = "ecdsa_verify"
ECDH = "ecdh"
KEYGEN = "keygen"
HKDF = "hkdf"
SHA256 = "sha256"
CCM = "aes_ccm"  # classic frames: AES-256-CCM, 4-byte tag
GCM = "aes_gcm"  # FD frames and protocol sealing: AES-256-GCM
CBOR = "cbor"
OPS: Final = (ECDSA_SIGN, ECDSA_VERIFY, ECDH, KEYGEN, HKDF, SHA256, CCM, GCM, CBOR)


@dataclass(frozen=True, slots=True)
class OpCost:
    """Seconds for one operation on ``nbytes``: ``fixed + per_block · ⌈nbytes / block⌉``."""

    fixed: float
    per_block: float = 0.0
    block: int = 16
    source: str = ""
    published: bool = False

    def seconds(self, nbytes: int = 0) -> float:
        return self.fixed + self.per_block * math.ceil(max(nbytes, 0) / self.block)


@dataclass(frozen=True)
class CpuProfile:
    """Per-operation costs of one chip; ``ops`` maps the names in :data:`OPS` to :class:`OpCost`."""

    name: str
    chip: str
    clock_hz: float | None
    ops: Mapping[str, OpCost]
    note: str = ""

    def __post_init__(self) -> None:
        missing = set(OPS) - set(self.ops)
        if missing:
            raise ValueError(f"profile {self.name} lacks {sorted(missing)}")
        object.__setattr__(self, "ops", MappingProxyType(dict(self.ops)))

    def cost(self, op: str, nbytes: int = 0) -> float:
        return self.ops[op].seconds(nbytes)

    def table(self) -> list[dict[str, Any]]:
        """Rows: op, fixed_us, per_block_us, block, published, source."""
        return [
            {
                "profile": self.name,
                "op": op,
                "fixed_us": c.fixed * 1e6,
                "per_block_us": c.per_block * 1e6,
                "block": c.block,
                "published": c.published,
                "source": c.source,
            }
            for op, c in self.ops.items()
        ]


_WB_HZ = 64e6
_RM0456 = "ST RM0456 Rev 6 (STM32U5 PKA) Table {t}, {c} cycles; WB55 PKA (RM0434) assumed equal (estimate)"
#: Pack controller MCU: STM32WB55 (Cortex-M4 64 MHz, PKA, AES hardware).
STM32WB55: Final = CpuProfile(
    name="STM32WB55",
    chip="STM32WB55RG Cortex-M4 @64 MHz with PKA",
    clock_hz=_WB_HZ,
    ops={
        ECDSA_SIGN: OpCost(2_744_000 / _WB_HZ, source=_RM0456.format(t=523, c="2 744 000"), published=True),
        ECDSA_VERIFY: OpCost(2_938_000 / _WB_HZ, source=_RM0456.format(t=524, c="2 938 000"), published=True),
        ECDH: OpCost(3_083_000 / _WB_HZ, source=_RM0456.format(t=522, c="3 083 000"), published=True),
        KEYGEN: OpCost(3_083_000 / _WB_HZ, source=_RM0456.format(t=522, c="3 083 000") + "; k·G", published=True),
        HKDF: OpCost(300e-6, source="estimate: ~8 SHA-256 compressions in software"),
        SHA256: OpCost(5e-6, 35e-6, 64, source="estimate: ~35 cycles/byte software SHA-256 on Cortex-M4"),
        CCM: OpCost(10e-6, 2e-6, 16, source="estimate: AES hardware ~1 µs/block, 2 blocks per 16 B, call overhead"),
        GCM: OpCost(12e-6, 2e-6, 16, source="estimate: AES hardware CTR + GHASH, call overhead"),
        CBOR: OpCost(50e-6, source="estimate"),
    },
    note="ECC figures are ST's published PKA cycle counts (STM32U5 manual) at the WB55's 64 MHz.",
)

_AVR_HZ = 8e6
_AES_BLOCK_AVR = 2975 / _AVR_HZ
_AT = "facts §f 'AT' (project doc, ATmega328p @16 MHz: {r}); ×2 for 8 MHz (estimate)"
#: Module MCU: ATmega64M1 (8-bit AVR, 8 MHz, software crypto).
ATMEGA64M1: Final = CpuProfile(
    name="ATmega64M1",
    chip="ATmega64M1 AVR @8 MHz, software crypto",
    clock_hz=_AVR_HZ,
    ops={
        ECDSA_SIGN: OpCost(3.0, source=_AT.format(r="ECDSA sign 1-2 s, midpoint 1.5 s")),
        ECDSA_VERIFY: OpCost(3.0, source=_AT.format(r="ECDSA verify 1-2 s, midpoint 1.5 s")),
        ECDH: OpCost(
            3.0, source="estimate = sign; published lower bound X25519 13 900 397 cycles (Düll et al. 2015) = 1.74 s"
        ),
        KEYGEN: OpCost(3.0, source="estimate: one scalar multiplication (facts §f 'AT' says 4-8 s @16 MHz)"),
        HKDF: OpCost(0.200, source=_AT.format(r="HKDF 100-500 ms, low end")),
        SHA256: OpCost(0.0, 25_000 / _AVR_HZ, 64, source="estimate: ~25 000 AVR cycles per compression"),
        CCM: OpCost(
            2 * _AES_BLOCK_AVR,
            2 * _AES_BLOCK_AVR,
            16,
            source="published: AES-256 2 975 cycles/block (rgrgrg/AVR-AES-faster); CCM = 2 + 2·⌈n/16⌉ blocks",
            published=True,
        ),
        GCM: OpCost(0.015, 0.015, 16, source=_AT.format(r="AES-GCM 64 B 10-50 ms, midpoint; per 16-B block")),
        CBOR: OpCost(1e-3, source="estimate"),
    },
    note="Classic CAN only (ATmega64M1 has a CAN 2.0A/B controller): FD rows are hypothetical for it.",
)


def _time_op(fn: Callable[[], object], target: float = 0.01) -> float:
    """Median seconds per call of ``fn`` over 3 batches sized to take about ``target`` seconds."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    n = max(1, min(2000, int(target / once)))
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n)
    return statistics.median(runs)


_HOST: CpuProfile | None = None
HOST_NAME: Final = "HOST"


def measure_host(*, refresh: bool = False) -> CpuProfile:
    """Time the real operations on this machine (once per process unless ``refresh``; ~0.3 s).

    ECDSA P-256 sign/verify, ECDH and key generation through modbatt's own ``crypto.suite``;
    AES-256-CCM (4-byte tag) and AES-256-GCM from ``cryptography`` split into a per-call and a
    per-16-byte part (timed at 8 and 1024 bytes); HKDF-SHA256 (32 bytes out); SHA-256 per 64-byte
    block (``hashlib``); CBOR encode+decode of a 6-field map (``cbor2``).
    """
    global _HOST
    if _HOST is not None and not refresh:
        return _HOST
    key = PrivateKey.generate()
    peer = PrivateKey.generate().public_key
    msg = os.urandom(100)
    sig = key.sign(b"modbatt/v1/sim/bench", msg)
    pub = key.public_key
    ccm = AESCCM(os.urandom(32), tag_length=4)
    gcm = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    small, big = os.urandom(8), os.urandom(1024)
    doc = {"pairing_id": os.urandom(16), "nonce": os.urandom(16), "type": "completion", "t": 1_800_000_000, "v": 1}
    doc["hash"] = os.urandom(32)

    def split(fn_small: Callable[[], object], fn_big: Callable[[], object]) -> tuple[float, float]:
        a, b = _time_op(fn_small), _time_op(fn_big)
        per_block = max(b - a, 0.0) / (1024 // 16)
        return max(a - per_block, 0.0), per_block

    ccm_fixed, ccm_block = split(lambda: ccm.encrypt(nonce, small, None), lambda: ccm.encrypt(nonce, big, None))
    gcm_fixed, gcm_block = split(lambda: gcm.encrypt(nonce, small, None), lambda: gcm.encrypt(nonce, big, None))
    sha_small = _time_op(lambda: hashlib.sha256(small).digest())
    sha_big = _time_op(lambda: hashlib.sha256(big).digest())
    src = f"measured on this host (pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')})"
    _HOST = CpuProfile(
        name=HOST_NAME,
        chip=f"this machine ({os.cpu_count()} CPUs), Python + cryptography",
        clock_hz=None,
        ops={
            ECDSA_SIGN: OpCost(_time_op(lambda: key.sign(b"modbatt/v1/sim/bench", msg)), source=src, published=True),
            ECDSA_VERIFY: OpCost(
                _time_op(lambda: pub.verify(b"modbatt/v1/sim/bench", msg, sig)), source=src, published=True
            ),
            ECDH: OpCost(_time_op(lambda: key.exchange(peer)), source=src, published=True),
            KEYGEN: OpCost(_time_op(PrivateKey.generate), source=src, published=True),
            HKDF: OpCost(
                _time_op(lambda: hkdf_sha256(msg[:32], info=b"modbatt/v1/sim/bench")), source=src, published=True
            ),
            SHA256: OpCost(sha_small, max(sha_big - sha_small, 0.0) / 16, 64, source=src, published=True),
            CCM: OpCost(ccm_fixed, ccm_block, 16, source=src, published=True),
            GCM: OpCost(gcm_fixed, gcm_block, 16, source=src, published=True),
            CBOR: OpCost(_time_op(lambda: cbor2.loads(cbor2.dumps(doc))), source=src, published=True),
        },
        note="Timed at run time; a shared 2-core machine varies by ±20-30 %.",
    )
    return _HOST


@dataclass(frozen=True)
class Platform:
    """Who computes what: the pack controller's CPU and the module's CPU."""

    name: str
    pack: CpuProfile
    module: CpuProfile

    def cpu(self, actor: str) -> CpuProfile:
        return self.pack if actor == "pack" else self.module


def platforms(host: CpuProfile | None = None) -> dict[str, Platform]:
    """``HOST`` (both ends timed on this machine) and ``MCU`` (STM32WB55 pack, ATmega64M1 modules)."""
    host = host or measure_host()
    return {
        "HOST": Platform("HOST", host, host),
        "MCU": Platform("MCU", STM32WB55, ATMEGA64M1),
    }


def _bus(name: str, base: BusProfile, nominal: int, data: int | None = None) -> BusProfile:
    return dataclasses.replace(base, name=name, nominal_bitrate=nominal, data_bitrate=data)


#: The bus configurations of the latency table (classic 8-byte frames; FD 64-byte with BRS).
BUSES: Final = MappingProxyType(
    {
        "classic 125k": _bus("classic 125k", CLASSIC, 125_000),
        "classic 250k": _bus("classic 250k", CLASSIC, 250_000),
        "classic 500k": _bus("classic 500k", CLASSIC, 500_000),
        "classic 1M": _bus("classic 1M", CLASSIC, 1_000_000),
        "FD 500k/2M": _bus("FD 500k/2M", FD, 500_000, 2_000_000),
        "FD 1M/5M": _bus("FD 1M/5M", FD, 1_000_000, 5_000_000),
    }
)

# ---------------------------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------------------------


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


def run_level(
    level: str,
    platform: Platform,
    profile: BusProfile,
    *,
    stuffing: str = "worst",
    node: int = 0x01,
    layout: IdLayout = SEED_LAYOUT,
) -> dict[str, Any]:
    """Simulate one transaction of ``level`` alone on an idle bus; return one tidy row."""
    loop = EventLoop()
    bus = CanBusModel(loop, profile, stuffing=stuffing)
    steps = LEVELS[level](profile)
    finished: list[float] = []
    proc = _Process(loop, bus, _transaction(steps, platform, profile, node, layout), lambda: finished.append(loop.now))
    loop.run()
    total = finished[0] - proc.start
    budget = BUDGETS[level]
    units = [s for s in steps if isinstance(s, Transfer)]
    return {
        "level": level,
        "platform": platform.name,
        "pack_cpu": platform.pack.name,
        "module_cpu": platform.module.name,
        "bus": profile.name,
        "fd": profile.fd,
        "nominal_bitrate": profile.nominal_bitrate,
        "data_bitrate": profile.data_bitrate if profile.brs else profile.nominal_bitrate,
        "stuffing": stuffing,
        "units": len(units),
        "unit_bytes": sum(_unit_bytes(profile, s.tier, s.payload) for s in units),
        "frames": proc.frames,
        "wire_ms": proc.wire * 1e3,
        "queue_ms": max(total - proc.wire - proc.compute, 0.0) * 1e3,
        "compute_ms": proc.compute * 1e3,
        "pack_compute_ms": sum(
            platform.pack.cost(s.op, s.nbytes) for s in steps if isinstance(s, Compute) and s.actor == "pack"
        )
        * 1e3,
        "module_compute_ms": sum(
            platform.module.cost(s.op, s.nbytes) for s in steps if isinstance(s, Compute) and s.actor == "module"
        )
        * 1e3,
        "latency_ms": total * 1e3,
        "budget_ms": budget * 1e3,
        "met": total <= budget,
        "margin_ms": (budget - total) * 1e3,
        "budget_source": _BUDGET_SOURCE[level],
    }


def latency_table(
    levels: Iterable[str] | None = None,
    platform_names: Iterable[str] | None = None,
    buses: Iterable[str] | None = None,
    *,
    stuffing: str | Iterable[str] = "worst",
    host: CpuProfile | None = None,
    as_frame: bool = True,
) -> Any:
    """Latency per level × platform × bus (× stuffing): a pandas DataFrame (or list of dicts).

    Columns: level, platform, pack_cpu, module_cpu, bus, fd, nominal_bitrate, data_bitrate,
    stuffing, units, unit_bytes, frames, wire_ms, queue_ms, compute_ms, pack_compute_ms,
    module_compute_ms, latency_ms, budget_ms, met, margin_ms (budget − latency; negative = missed
    by that much), budget_source.
    """
    plats = platforms(host)
    stuffings = [stuffing] if isinstance(stuffing, str) else list(stuffing)
    rows = [
        run_level(level, plats[p], BUSES[b], stuffing=s)
        for level in (levels or LEVELS)
        for p in (platform_names or plats)
        for b in (buses or BUSES)
        for s in stuffings
    ]
    if not as_frame:
        return rows
    import pandas as pd  # deferred: pandas costs ~0.3 s to import

    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# A whole pack's load
# ---------------------------------------------------------------------------------------------


@dataclass
class PackLoadResult:
    """Bus load and queueing for one simulated pack; ``rows`` per message class and direction."""

    modules: int
    profile: BusProfile
    duration: float
    stuffing: str
    bus_load: float
    analytic_load: float
    frames: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, Any]:
        delays = [r["queue_max_ms"] for r in self.rows]
        return {
            "modules": self.modules,
            "bus": self.profile.name,
            "stuffing": self.stuffing,
            "duration_s": self.duration,
            "frames": self.frames,
            "frames_per_s": self.frames / self.duration,
            "bus_load": self.bus_load,
            "analytic_load": self.analytic_load,
            "worst_queue_ms": max(delays, default=0.0),
            "worst_latency_ms": max(
                (r["latency_max_ms"] for r in self.rows if not math.isnan(r["latency_max_ms"])), default=0.0
            ),
        }

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)


def simulate_pack_load(
    modules: int = 31,
    profile: BusProfile | str = "classic 250k",
    *,
    duration: float = 10.0,
    plan: TrafficPlan | None = None,
    stuffing: str = "worst",
    platform: Platform | None = None,
    layout: IdLayout = SEED_LAYOUT,
) -> PackLoadResult:
    """Put the pack simulator's traffic (:mod:`modbatt.sim.schedule`) for ``modules`` on one bus.

    Every module sends its telemetry and heartbeat, the pack its keep-alives, commands, limits and
    firmware blocks, each module acknowledging; phases are spread evenly so periodic messages do
    not all start together. With ``platform`` the sender's seal and receiver's open time are
    added per unit (CPUs never contend: one process per message). Returns bus load (simulated
    busy time / duration, and the analytic ``wiretime`` figure for the same frame mix) and per
    message class: messages, frames, mean and max queueing delay per frame, mean / p99 / max
    message latency (first frame handed to the controller → last frame on the wire, plus CPU).
    """
    if not 1 <= modules <= 31:
        raise ValueError("modules must be 1-31")
    prof = BUSES[profile] if isinstance(profile, str) else profile
    plan = plan or TrafficPlan()
    loop = EventLoop()
    bus = CanBusModel(loop, prof, stuffing=stuffing, keep_log=True)
    latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
    mix: dict[int, int] = defaultdict(int)

    def cost(actor: str, tier: Tier, nbytes: int) -> float:
        # Only symmetric tiers occur in the plan: one AEAD seal or open per unit.
        if platform is None or tier is Tier.NONE:
            return 0.0
        return platform.cpu(actor).cost(_aead(prof), nbytes)

    def message(cls: MessageClass, sender: str, node: int, payload: int) -> Generator[_Request, Any, None]:
        tier = plan.tier(cls)
        direction = 0 if sender == "pack" else 1
        receiver = "module" if sender == "pack" else "pack"
        tx = _can_id(layout, cls, tier, node, direction)
        rx = _can_id(layout, cls, tier, node, 1 - direction)
        iso = uses_isotp(plan, cls, prof, tier)
        frames = frames_for_unit(_unit_bytes(prof, tier, payload), prof, iso)
        for n in frames:
            mix[n] += 1
        yield ("compute", cost(sender, tier, payload))
        yield from _send_unit(tx, rx, frames, (cls.value, sender))
        yield ("compute", cost(receiver, tier, payload))
        if cls in COMMANDS and sender == "pack":
            ack_start = loop.now
            yield ("compute", cost("module", tier, ACK_BYTES))
            ack_frames = frames_for_unit(_unit_bytes(prof, tier, ACK_BYTES), prof, iso)
            for n in ack_frames:
                mix[n] += 1
            yield from _send_unit(rx, tx, ack_frames, (cls.value, "module (ack)"))
            yield ("compute", cost("pack", tier, ACK_BYTES))
            latencies[(cls.value, "module (ack)")].append(loop.now - ack_start)

    def start(cls: MessageClass, sender: str, node: int, payload: int) -> None:
        t0 = loop.now
        key = (cls.value, sender)
        _Process(loop, bus, message(cls, sender, node, payload), lambda: latencies[key].append(loop.now - t0))

    def periodic(period: float, phase: float, fn: Callable[[], None]) -> None:
        def tick() -> None:
            fn()
            loop.call_later(period, tick)

        loop.schedule(phase, tick)

    sizes = plan.payload_sizes
    for node in range(1, modules + 1):
        share = (node - 1) / modules
        for spec in TELEMETRY:
            periodic(
                spec.period,
                share * spec.period,
                _bind(start, spec.message_class, "module", node, sizes(spec.message_class)[1]),
            )
        periodic(
            plan.heartbeat_period,
            share * plan.heartbeat_period,
            _bind(start, MessageClass.HEARTBEAT, "module", node, HEARTBEAT_BYTES),
        )
        periodic(
            plan.keepalive_period,
            share * plan.keepalive_period,
            _bind(start, MessageClass.HEARTBEAT, "pack", node, HEARTBEAT_BYTES),
        )
        periodic(plan.command_period, share * plan.command_period, _alternating(start, node, sizes))
        periodic(
            plan.limits_period,
            share * plan.limits_period,
            _bind(start, MessageClass.SAFETY_LIMITS, "pack", node, sizes(MessageClass.SAFETY_LIMITS)[0]),
        )
    targets = itertools.cycle(range(1, modules + 1))
    periodic(
        plan.firmware_period,
        0.0,
        lambda: start(MessageClass.FIRMWARE_UPDATE, "pack", next(targets), sizes(MessageClass.FIRMWARE_UPDATE)[0]),
    )
    loop.run(until=duration)
    measured = [r for r in bus.log if r.start < duration]
    busy = sum(min(r.end, duration) - r.start for r in measured)
    per_tag: dict[tuple[str, str], list[FrameRecord]] = defaultdict(list)
    for r in measured:
        per_tag[r.tag].append(r)
    rows = []
    for (cls_name, who), recs in sorted(per_tag.items()):
        lat = sorted(latencies.get((cls_name, who), []))
        q = [r.queued for r in recs]
        rows.append(
            {
                "message_class": cls_name,
                "sender": who,
                "tier": plan.tier(MessageClass(cls_name)).label,
                "messages": len(lat),
                "frames": len(recs),
                "queue_mean_ms": statistics.fmean(q) * 1e3,
                "queue_max_ms": max(q) * 1e3,
                "latency_mean_ms": statistics.fmean(lat) * 1e3 if lat else math.nan,
                "latency_p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3 if lat else math.nan,
                "latency_max_ms": lat[-1] * 1e3 if lat else math.nan,
            }
        )
    # Analytic cross-check: the same frame mix through wiretime.bus_load (typical: our stuffing share).
    seconds = loop.now if loop.now > 0 else duration
    if stuffing == "typical":
        analytic = sum(c * wire_seconds(prof, n, stuffing) for n, c in mix.items()) / seconds
    else:
        analytic = bus_load(prof, [(n, c / seconds) for n, c in mix.items()], worst=stuffing == "worst")
    return PackLoadResult(modules, prof, duration, stuffing, busy / duration, analytic, len(measured), rows)


COMMANDS: Final = frozenset(
    {
        MessageClass.CHARGE_COMMAND,
        MessageClass.DISCHARGE_COMMAND,
        MessageClass.SAFETY_LIMITS,
        MessageClass.FIRMWARE_UPDATE,
    }
)


def _bind(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: fn(*args)


def _alternating(
    start: Callable[..., None], node: int, sizes: Callable[[MessageClass], tuple[int, int]]
) -> Callable[[], None]:
    flip = itertools.cycle((MessageClass.CHARGE_COMMAND, MessageClass.DISCHARGE_COMMAND))

    def go() -> None:
        cls = next(flip)
        start(cls, "pack", node, sizes(cls)[0])

    return go


# ---------------------------------------------------------------------------------------------
# Sweep experiments (picked up by ``modbatt sweep`` through ``SWEEP_EXPERIMENTS``)
# ---------------------------------------------------------------------------------------------


def _sweep_level_latency(
    level: str, platform: str = "HOST", bus: str = "classic 500k", stuffing: str = "worst"
) -> dict[str, Any]:
    """One transaction's latency row (see :func:`run_level`); ``bus`` is a name in :data:`BUSES`."""
    if level not in LEVELS or bus not in BUSES or platform not in ("HOST", "MCU"):
        raise ValueError(f"unknown level {level!r}, platform {platform!r} or bus {bus!r}")
    return run_level(level, platforms()[platform], BUSES[bus], stuffing=stuffing)


def _sweep_pack_load(
    modules: int = 31, bus: str = "classic 250k", duration: float = 10.0, stuffing: str = "worst"
) -> list[dict[str, Any]]:
    """Per-class rows of :func:`simulate_pack_load`, each with the run's bus load attached."""
    result = simulate_pack_load(int(modules), bus, duration=float(duration), stuffing=stuffing)
    summary = result.summary
    return [{**row, "bus_load": summary["bus_load"], "frames_per_s": summary["frames_per_s"]} for row in result.rows]


#: Experiments for ``modbatt sweep`` (module-level functions, so worker processes can pickle them).
SWEEP_EXPERIMENTS: Final = MappingProxyType({"level_latency": _sweep_level_latency, "pack_load": _sweep_pack_load})
