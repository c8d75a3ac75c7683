"""CPU cost profiles: seconds per cryptographic operation on one chip, with the source of each figure.

``HOST`` is measured at run time (:func:`measure_host`); the MCU profiles come from published
figures, each :class:`OpCost` saying where its number comes from and whether it is a published
figure or our estimate. Figures and sources: docs/simulation.md §4.
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import cbor2
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM

from ..crypto.suite import PrivateKey, hkdf_sha256

__all__ = [
    "ATMEGA64M1",
    "HOST_NAME",
    "OPS",
    "STM32WB55",
    "CpuProfile",
    "OpCost",
    "Platform",
    "measure_host",
    "platforms",
]

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
