"""CPU cost profiles: time per cryptographic operation on one chip, each figure with its source.

``HOST`` is measured at run time (:func:`measure_host`). The MCU profiles are cycle counts from
outside sources at the chip's clock; every :class:`OpCost` names its source and says whether the
number is a published figure or our estimate (and how it was derived). A user supplies a profile
of their own as a YAML or JSON file (:func:`load_cpu_profile`). Figures, sources and the file
format: docs/simulation.md §4.
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import cbor2
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM

from ..crypto.suite import PrivateKey, hkdf_sha256
from ..errors import ConfigError

__all__ = [
    "ATMEGA64M1",
    "CBOR",
    "CCM",
    "CORE_OPS",
    "CURVE25519_OPS",
    "ECDH",
    "ECDSA_SIGN",
    "ECDSA_VERIFY",
    "ED25519_SIGN",
    "ED25519_VERIFY",
    "GCM",
    "HKDF",
    "HOST_NAME",
    "KEYGEN",
    "OPS",
    "SHA256",
    "STM32WB55",
    "STM32WB55_SW",
    "X25519",
    "X25519_KEYGEN",
    "CpuProfile",
    "OpCost",
    "Platform",
    "builtin_cpus",
    "load_cpu_profile",
    "measure_host",
    "platforms",
]

ECDSA_SIGN = "ecdsa_sign"  # P-256, over a 32-byte digest
ECDSA_VERIFY = "ecdsa_verify"
ECDH = "ecdh"  # P-256 shared secret (one variable-base scalar multiplication)
KEYGEN = "keygen"  # P-256 key pair (one fixed-base scalar multiplication)
ED25519_SIGN = "ed25519_sign"
ED25519_VERIFY = "ed25519_verify"
X25519 = "x25519"
X25519_KEYGEN = "x25519_keygen"
HKDF = "hkdf"  # HKDF-SHA256, extract + one expand block (two HMAC-SHA256 calls)
SHA256 = "sha256"
CCM = "aes_ccm"  # classic frames: AES-256-CCM, 4-byte tag
GCM = "aes_gcm"  # FD frames and protocol sealing: AES-256-GCM
CBOR = "cbor"  # encode or decode one ~100-byte protocol message
#: Operations every profile must cost (the P-256 suite v1 and the symmetric primitives).
CORE_OPS: Final = (ECDSA_SIGN, ECDSA_VERIFY, ECDH, KEYGEN, HKDF, SHA256, CCM, GCM, CBOR)
#: Operations only the ``ed25519`` protocol profile uses; a profile may leave them out.
CURVE25519_OPS: Final = (ED25519_SIGN, ED25519_VERIFY, X25519, X25519_KEYGEN)
OPS: Final = CORE_OPS + CURVE25519_OPS
HOST_NAME: Final = "HOST"


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

    @classmethod
    def from_cycles(
        cls, cycles: float, clock_hz: float, *, per_block: float = 0.0, block: int = 16, source: str,
        published: bool = False,
    ) -> OpCost:  # fmt: skip
        return cls(cycles / clock_hz, per_block / clock_hz, block, source, published)


@dataclass(frozen=True)
class CpuProfile:
    """Per-operation costs of one chip; ``ops`` maps names in :data:`OPS` to :class:`OpCost`."""

    name: str
    chip: str
    clock_hz: float | None
    ops: Mapping[str, OpCost]
    note: str = ""

    def __post_init__(self) -> None:
        missing = set(CORE_OPS) - set(self.ops)
        if missing:
            raise ValueError(f"profile {self.name} lacks {sorted(missing)}")
        unknown = set(self.ops) - set(OPS)
        if unknown:
            raise ValueError(f"profile {self.name} has unknown operations {sorted(unknown)}")
        object.__setattr__(self, "ops", MappingProxyType(dict(self.ops)))

    def cost(self, op: str, nbytes: int = 0) -> float:
        return self.ops[op].seconds(nbytes)

    def supports(self, ops: Iterable[str]) -> bool:
        return all(op in self.ops for op in ops)

    def table(self) -> list[dict[str, Any]]:
        """Rows: profile, op, fixed_us, per_block_us, block, published, source."""
        return [
            {"profile": self.name, "op": op, "fixed_us": c.fixed * 1e6, "per_block_us": c.per_block * 1e6,
             "block": c.block, "published": c.published, "source": c.source}
            for op, c in self.ops.items()
        ]  # fmt: skip

    def to_mapping(self) -> dict[str, Any]:
        """The profile as a profile file holds it (cycle counts at ``clock_hz``); see :func:`load_cpu_profile`."""
        if self.clock_hz is None:
            raise ConfigError(f"profile {self.name} has no clock, so it has no cycle counts to write")
        hz = self.clock_hz

        def cycles(seconds: float) -> int | float:
            value = round(seconds * hz, 3)
            return int(value) if value == int(value) else value

        ops = {}
        for op, c in self.ops.items():
            entry: dict[str, Any] = {"cycles": cycles(c.fixed)}
            if c.per_block:
                entry.update(per_block=cycles(c.per_block), block=c.block)
            entry.update(source=c.source, published=c.published)
            ops[op] = entry
        out: dict[str, Any] = {"name": self.name, "chip": self.chip, "clock_hz": hz}
        if self.note:
            out["note"] = self.note
        out["ops"] = ops
        return out


# --- STM32WB55: Cortex-M4 at 64 MHz with PKA and AES accelerator (the pack controller) --------

_WB_HZ = 64e6
_PKA = (
    "ST RM0453 (STM32WL) PKA computation time, 256-bit modulus, as tabulated in stm32-rs/stm32wlxx-hal "
    "hal/src/pka.rs; estimate: the WB55's PKA (RM0434) is the same IP (894 x 32-bit PKA RAM, same map)"
)
_DUE = ("rweather/arduinolibs doc/crypto.dox, Arduino Due (Cortex-M3 @84 MHz): {r}; "
        "estimate: the same cycle count on the WB55's Cortex-M4")  # fmt: skip
_M4_AES = "estimate: AES accelerator ~100 cycles per AES-256 block (key preparation is 82 cycles, RM0453 §23.4.5)"
_M4_SYMMETRIC = {
    HKDF: OpCost.from_cycles(59_845, _WB_HZ, published=True, source=_DUE.format(
        r="HMAC-SHA256 key setup 80.44 µs + 1.15 µs/B + finalize 238.98 µs; HKDF = 2 HMACs of ~32 B")),
    SHA256: OpCost.from_cycles(6_434, _WB_HZ, per_block=6_182, block=64, published=True, source=_DUE.format(
        r="SHA256 1.15 µs/byte, finalize 76.60 µs")),
    CCM: OpCost.from_cycles(840, _WB_HZ, per_block=200, source=_M4_AES + "; CCM 2 blocks per 16 B, +640 driver"),
    GCM: OpCost.from_cycles(840, _WB_HZ, per_block=100, source=_M4_AES + "; GCM 1 block per 16 B, +640 driver"),
    CBOR: OpCost.from_cycles(3_200, _WB_HZ, source="estimate: 50 µs per ~100-byte message"),
    ED25519_SIGN: OpCost.from_cycles(16_380_000, _WB_HZ, published=True, source=_DUE.format(
        r="Ed25519::sign() 195 ms")),
    ED25519_VERIFY: OpCost.from_cycles(25_704_000, _WB_HZ, published=True, source=_DUE.format(
        r="Ed25519::verify() 306 ms")),
    X25519: OpCost.from_cycles(8_652_000, _WB_HZ, published=True, source=_DUE.format(r="Curve25519::dh2() 103 ms")),
    X25519_KEYGEN: OpCost.from_cycles(8_652_000, _WB_HZ, published=True, source=_DUE.format(
        r="Curve25519::dh1() 103 ms")),
}  # fmt: skip

_PKA_MULT = "estimate: one scalar multiplication, taken as the PKA's ECDSA sign time (" + _PKA + ")"
#: Pack controller MCU, ECC on its PKA (ECDSA/ECDH in hardware).
STM32WB55: Final = CpuProfile(
    name="STM32WB55",
    chip="STM32WB55RG Cortex-M4 @64 MHz, P-256 on the PKA, AES accelerator",
    clock_hz=_WB_HZ,
    ops={
        ECDSA_SIGN: OpCost.from_cycles(5_249_000, _WB_HZ, source=_PKA + " (ECDSA sign)", published=True),
        ECDSA_VERIFY: OpCost.from_cycles(10_498_000, _WB_HZ, source=_PKA + " (ECDSA verify)", published=True),
        ECDH: OpCost.from_cycles(5_249_000, _WB_HZ, source="estimate: one scalar multiplication = the PKA's sign time"),
        KEYGEN: OpCost.from_cycles(
            5_249_000, _WB_HZ, source="estimate: one scalar multiplication = the PKA's sign time"
        ),
        **_M4_SYMMETRIC,
    },
    note="The stm32wlxx-hal on-target test log measured 108.6 ms sign / 219.1 ms verify at 48 MHz, matching the table.",
)

_P256_M4 = ("Emill/P256-Cortex-M4 README, nRF52840 Cortex-M4 @64 MHz, GCC -O2: {r}; "
            "estimate: the same cycles on the WB55's Cortex-M4 (flash wait states may add ~10-20 %)")  # fmt: skip
#: The same chip with P-256 in constant-time assembly on the Cortex-M4 instead of the PKA.
STM32WB55_SW: Final = CpuProfile(
    name="STM32WB55-sw",
    chip="STM32WB55RG Cortex-M4 @64 MHz, P-256 in software (P256-Cortex-M4), AES accelerator",
    clock_hz=_WB_HZ,
    ops={
        ECDSA_SIGN: OpCost.from_cycles(375_000, _WB_HZ, source=_P256_M4.format(r="sign 375k cycles"), published=True),
        ECDSA_VERIFY: OpCost.from_cycles(976_000, _WB_HZ, source=_P256_M4.format(r="verify 976k cycles"),
                                         published=True),
        ECDH: OpCost.from_cycles(906_000, _WB_HZ, source=_P256_M4.format(r="shared secret 906k cycles"),
                                 published=True),
        KEYGEN: OpCost.from_cycles(327_000, _WB_HZ, source=_P256_M4.format(r="key generation 327k cycles"),
                                   published=True),
        **_M4_SYMMETRIC,
    },
    note="stm32wlxx-hal's PKA docs call this library about 10x faster than the PKA; it runs on the CPU.",
)  # fmt: skip

# --- ATmega64M1: 8-bit AVR at 8 MHz, everything in software (the battery modules) -------------

_AVR_HZ = 8e6
_UECC = ("qqqlab/micro-ecc README, micro-ecc secp256r1 uECC_OPTIMIZATION_LEVEL 3 on ATmega328P @16 MHz: "
         "make_key / shared_secret 2 570 ms = 41.12 M cycles; same AVR core and cycles on the ATmega64M1")  # fmt: skip
_UNO = "rweather/arduinolibs doc/crypto.dox, Arduino Uno (ATmega328P @16 MHz): {r}; same AVR cycles on the ATmega64M1"
_AES_AVR = 2_975  # cycles per AES-256 block encryption, rgrgrg/AVR-AES-faster (flash S-box, precomputed keys)
#: Module MCU: everything in software.
ATMEGA64M1: Final = CpuProfile(
    name="ATmega64M1",
    chip="ATmega64M1 AVR @8 MHz, software crypto",
    clock_hz=_AVR_HZ,
    ops={
        ECDSA_SIGN: OpCost.from_cycles(41_120_000, _AVR_HZ, source="estimate: one scalar multiplication; " + _UECC),
        ECDSA_VERIFY: OpCost.from_cycles(45_341_000, _AVR_HZ, source=(
            "estimate: 1.103 x sign, the micro-ecc secp256r1 verify/sign ratio on STM32F446 "
            "(thingsat/ecc_mcu_benchmarks: 52 012 / 47 170 µs); " + _UECC)),
        ECDH: OpCost.from_cycles(41_120_000, _AVR_HZ, source=_UECC, published=True),
        KEYGEN: OpCost.from_cycles(41_120_000, _AVR_HZ, source=_UECC, published=True),
        HKDF: OpCost.from_cycles(409_354, _AVR_HZ, published=True, source=_UNO.format(
            r="HMAC-SHA256 key setup 2 836.49 µs + 43.85 µs/B + finalize 8 552.61 µs; HKDF = 2 HMACs of ~32 B")),
        SHA256: OpCost.from_cycles(45_457, _AVR_HZ, per_block=44_902, block=64, published=True, source=_UNO.format(
            r="SHA256 43.85 µs/byte, finalize 2 841.04 µs")),
        CCM: OpCost.from_cycles(2 * _AES_AVR, _AVR_HZ, per_block=2 * _AES_AVR, published=True, source=(
            "rgrgrg/AVR-AES-faster README: AES-256 encryption 2 975 cycles/block (flash S-box, precomputed keys); "
            "estimate: CCM = 2 + 2·⌈n/16⌉ block encryptions")),
        GCM: OpCost.from_cycles(7_632, _AVR_HZ, per_block=7_632, published=True, source=(
            "Kim et al., PAGE: Practical AES-GCM Encryption for Low-End Microcontrollers, Appl. Sci. 10(9) 3131, "
            "2020: AES-256-GCM 477 cycles/byte on AVR; estimate: one block more for the tag and length block")),
        CBOR: OpCost.from_cycles(8_000, _AVR_HZ, source="estimate: 1 ms per ~100-byte message"),
        ED25519_SIGN: OpCost.from_cycles(91_008_000, _AVR_HZ, source=_UNO.format(r="Ed25519::sign() 5 688 ms"),
                                         published=True),
        ED25519_VERIFY: OpCost.from_cycles(144_480_000, _AVR_HZ, source=_UNO.format(r="Ed25519::verify() 9 030 ms"),
                                           published=True),
        X25519: OpCost.from_cycles(49_920_000, _AVR_HZ, source=_UNO.format(r="Curve25519::dh2() 3 120 ms"),
                                   published=True),
        X25519_KEYGEN: OpCost.from_cycles(49_936_000, _AVR_HZ, source=_UNO.format(r="Curve25519::dh1() 3 121 ms"),
                                          published=True),
    },
    note="Classic CAN only (its CAN controller is 2.0A/B): FD rows are hypothetical for it.",
)  # fmt: skip


# --- HOST: timed on this machine ---------------------------------------------------------------


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


def measure_host(*, refresh: bool = False) -> CpuProfile:
    """Time the real operations on this machine (once per process unless ``refresh``; ~0.5 s).

    ECDSA P-256 sign/verify, ECDH and key generation through modbatt's own ``crypto.suite``;
    Ed25519 and X25519 from ``cryptography``; AES-256-CCM (4-byte tag) and AES-256-GCM split into a
    per-call and a per-16-byte part (timed at 8 and 1024 bytes); HKDF-SHA256 (32 bytes out);
    SHA-256 per 64-byte block (``hashlib``); CBOR encode+decode of a 6-field map (``cbor2``).
    """
    global _HOST
    if _HOST is not None and not refresh:
        return _HOST
    key = PrivateKey.generate()
    peer = PrivateKey.generate().public_key
    msg = os.urandom(100)
    sig = key.sign(b"modbatt/v2/sim/bench", msg)
    pub = key.public_key
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_sig, ed_pub = ed.sign(msg), ed.public_key()
    xk, xpeer = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate().public_key()
    ccm = AESCCM(os.urandom(32), tag_length=4)
    gcm = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    small, big = os.urandom(8), os.urandom(1024)
    doc = {"pairing_id": os.urandom(16), "nonce": os.urandom(16), "type": "completion", "t": 1_800_000_000, "v": 1,
           "hash": os.urandom(32)}  # fmt: skip

    def split(fn_small: Callable[[], object], fn_big: Callable[[], object]) -> tuple[float, float]:
        a, b = _time_op(fn_small), _time_op(fn_big)
        per_block = max(b - a, 0.0) / (1024 // 16)
        return max(a - per_block, 0.0), per_block

    ccm_fixed, ccm_block = split(lambda: ccm.encrypt(nonce, small, None), lambda: ccm.encrypt(nonce, big, None))
    gcm_fixed, gcm_block = split(lambda: gcm.encrypt(nonce, small, None), lambda: gcm.encrypt(nonce, big, None))
    sha_small = _time_op(lambda: hashlib.sha256(small).digest())
    sha_big = _time_op(lambda: hashlib.sha256(big).digest())
    src = f"measured on this host (pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')})"

    def measured(fn: Callable[[], object]) -> OpCost:
        return OpCost(_time_op(fn), source=src, published=True)

    _HOST = CpuProfile(
        name=HOST_NAME,
        chip=f"this machine ({os.cpu_count()} CPUs), Python + cryptography",
        clock_hz=None,
        ops={
            ECDSA_SIGN: measured(lambda: key.sign(b"modbatt/v2/sim/bench", msg)),
            ECDSA_VERIFY: measured(lambda: pub.verify(b"modbatt/v2/sim/bench", msg, sig)),
            ECDH: measured(lambda: key.exchange(peer)),
            KEYGEN: measured(PrivateKey.generate),
            ED25519_SIGN: measured(lambda: ed.sign(msg)),
            ED25519_VERIFY: measured(lambda: ed_pub.verify(ed_sig, msg)),
            X25519: measured(lambda: xk.exchange(xpeer)),
            X25519_KEYGEN: measured(x25519.X25519PrivateKey.generate),
            HKDF: measured(lambda: hkdf_sha256(msg[:32], info=b"modbatt/v2/sim/bench")),
            SHA256: OpCost(sha_small, max(sha_big - sha_small, 0.0) / 16, 64, source=src, published=True),
            CCM: OpCost(ccm_fixed, ccm_block, 16, source=src, published=True),
            GCM: OpCost(gcm_fixed, gcm_block, 16, source=src, published=True),
            CBOR: measured(lambda: cbor2.loads(cbor2.dumps(doc))),
        },
        note="Timed at run time; a shared 2-core machine varies by ±20-30 %.",
    )
    return _HOST


def builtin_cpus(host: CpuProfile | None = None) -> dict[str, CpuProfile]:
    """The built-in profiles by name: ``HOST`` (``host`` or measured now), the two STM32WB55 variants, ATmega64M1."""
    return {p.name: p for p in (host or measure_host(), STM32WB55, STM32WB55_SW, ATMEGA64M1)}


# --- Profile files -----------------------------------------------------------------------------

_FILE_KEYS: Final = {"name", "chip", "clock_hz", "note", "ops"}
_OP_KEYS: Final = {"cycles", "per_block", "block", "source", "published"}


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a number, not {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{where} must be {'> 0' if positive else '>= 0'}, not {value!r}")
    return float(value)


def _text(value: Any, where: str, *, required: bool = True) -> str:
    if not isinstance(value, str) or "\n" in value or (required and not value.strip()):
        raise ConfigError(f"{where} must be a one-line {'non-empty ' if required else ''}string")
    return value


def cpu_profile_from_mapping(data: Any, origin: str = "profile") -> CpuProfile:
    """Build and validate a :class:`CpuProfile` from a profile file's content (see :func:`load_cpu_profile`)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: a profile is a mapping with name, chip, clock_hz and ops")
    extra = set(data) - _FILE_KEYS
    if extra:
        raise ConfigError(f"{origin}: unknown key {sorted(extra)[0]!r}; valid: {', '.join(sorted(_FILE_KEYS))}")
    for key in ("name", "clock_hz", "ops"):
        if key not in data:
            raise ConfigError(f"{origin}: missing {key!r}")
    name = _text(data["name"], f"{origin}: name")
    if len(name) > 40:
        raise ConfigError(f"{origin}: name is longer than 40 characters")
    hz = _number(data["clock_hz"], f"{origin}: clock_hz", positive=True)
    ops_in = data["ops"]
    if not isinstance(ops_in, Mapping):
        raise ConfigError(f"{origin}: ops must map operation names to costs")
    unknown = set(ops_in) - set(OPS)
    if unknown:
        raise ConfigError(f"{origin}: unknown operation {sorted(unknown, key=str)[0]!r}; valid: {', '.join(OPS)}")
    missing = [op for op in CORE_OPS if op not in ops_in]
    if missing:
        raise ConfigError(f"{origin}: ops lacks {', '.join(missing)}")
    ops: dict[str, OpCost] = {}
    for op, spec in ops_in.items():
        where = f"{origin}: ops.{op}"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where} must be a mapping with cycles and source")
        extra = set(spec) - _OP_KEYS
        if extra:
            raise ConfigError(
                f"{where}: unknown key {sorted(extra, key=str)[0]!r}; valid: {', '.join(sorted(_OP_KEYS))}"
            )
        if "cycles" not in spec or "source" not in spec:
            raise ConfigError(f"{where} needs cycles and source")
        block = spec.get("block", 16)
        if isinstance(block, bool) or not isinstance(block, int) or block <= 0:
            raise ConfigError(f"{where}.block must be a positive integer (bytes)")
        published = spec.get("published", False)
        if not isinstance(published, bool):
            raise ConfigError(f"{where}.published must be true or false")
        ops[str(op)] = OpCost.from_cycles(
            _number(spec["cycles"], f"{where}.cycles"),
            hz,
            per_block=_number(spec.get("per_block", 0), f"{where}.per_block"),
            block=block,
            source=_text(spec["source"], f"{where}.source"),
            published=published,
        )
    return CpuProfile(name, _text(data.get("chip", name), f"{origin}: chip"), hz, ops,
                      _text(data.get("note", ""), f"{origin}: note", required=False))  # fmt: skip


def load_cpu_profile(path: str | os.PathLike[str]) -> CpuProfile:
    """Read a CPU profile file: YAML (``.yaml``/``.yml``) or JSON (``.json``).

    Keys: ``name``, ``chip`` (optional), ``clock_hz``, ``note`` (optional) and ``ops``, mapping
    each operation of :data:`CORE_OPS` (and optionally :data:`CURVE25519_OPS`) to ``cycles``
    (per call), ``per_block`` (cycles per ``block`` bytes, optional), ``block`` (default 16),
    ``source`` (required: where the figure comes from) and ``published`` (default false). Any
    problem is a one-line :class:`~modbatt.errors.ConfigError` naming the file and the key.
    """
    from ..encoding import MAX_TEXT_FILE_BYTES, strict_json_loads, strict_yaml_loads
    from ..errors import EncodingError

    p = Path(path)
    if p.suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"{p}: a profile file ends in .yaml, .yml or .json")
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_TEXT_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}") from None
    if len(raw) > MAX_TEXT_FILE_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_TEXT_FILE_BYTES} bytes, not a profile")
    try:
        data = strict_json_loads(raw) if p.suffix == ".json" else strict_yaml_loads(raw)
    except EncodingError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return cpu_profile_from_mapping(data, str(p))


# --- Platforms: who computes what ---------------------------------------------------------------


@dataclass(frozen=True)
class Platform:
    """Who computes what: the pack controller's CPU and the module's CPU."""

    name: str
    pack: CpuProfile
    module: CpuProfile

    def cpu(self, actor: str) -> CpuProfile:
        return self.pack if actor == "pack" else self.module

    @classmethod
    def of(cls, pack: CpuProfile, module: CpuProfile) -> Platform:
        return cls(pack.name if pack is module else f"{pack.name} / {module.name}", pack, module)


def platforms(host: CpuProfile | None = None) -> dict[str, Platform]:
    """``HOST`` (both ends timed on this machine) and ``MCU`` (STM32WB55 pack, ATmega64M1 modules)."""
    host = host or measure_host()
    return {"HOST": Platform("HOST", host, host), "MCU": Platform("MCU", STM32WB55, ATMEGA64M1)}
