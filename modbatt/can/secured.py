"""Secured frame formats for every tier on every bus profile (docs/can-frames.md §2).

Layer 3 and stateless with respect to the protocol: keys come in as :class:`TrafficKeys`, the
freshness stream as a :class:`~modbatt.crypto.freshness.FreshnessCounter` (sender) or
:class:`~modbatt.crypto.freshness.ReplayWindow` (receiver). One :class:`SecuredSender` /
:class:`SecuredReceiver` pair is one freshness stream under one tier key in one direction
(SecOC keeps one per message ID; several IDs may share one if each receiver sees at least one
of every 191 values on classic CAN).

Formats (``FV`` = freshness value, full = 56 bits; ``n`` = payload bytes):

======================  ===========================================  ==============  ========
tier / bus profile      data field                                   room / frame    forgery
======================  ===========================================  ==============  ========
NONE, classic           payload                                      8 B             —
NONE, FD                payload ‖ 00-padding to a valid FD length    64 B            —
EXCHANGE/PAIRING clas.  ct(n) ‖ FV low 8 bits ‖ tag 4 B              3 B             2^-32
EXCHANGE/PAIRING FD     FV 7 B ‖ pad count 1 B ‖ ct(n) ‖ tag 16 B    40 B            2^-128
                        ‖ 00 × pad
BINDING, ``seed``       FV 7 B ‖ payload(n) ‖ ECDSA P-256 r‖s 64 B   0 (multi-frame) 2^-128
BINDING, ``efficient``  as EXCHANGE/PAIRING (classic or FD)          3 B / 40 B      2^-32 /
                                                                                     2^-128
======================  ===========================================  ==============  ========

The binding tier's format depends on the pairing's protocol profile (docs/profiles.md): under
``seed`` the sender signs with its binding key; under ``efficient`` the binding tier is a
symmetric tier like the others, its keys derived from the session's binding MAC secret (the
partners' static ECDH), so its frames cost one AEAD operation instead of a signature and a
verification. Which one a channel uses is decided by its :class:`TrafficKeys`.

A protected unit whose bytes exceed one frame (any signed BINDING message, a classic symmetric
payload over 3 bytes, an FD payload over 40) is the same byte string handed to the multi-frame transport
(``modbatt.can.fragment`` for broadcast, ISO-TP point to point): :attr:`SecuredPdu.single_frame`
says which, and :meth:`SecuredReceiver.open` takes the reassembled bytes with ``reassembled=True``.

Cipher choice. On FD, AES-256-GCM with the full 16-byte tag (suite v1). Classic frames need a
4-byte tag, and there we use **AES-256-CCM with a 32-bit tag** (NIST SP 800-38C, which allows
32-bit tags "with care"; what BLE and IEEE 802.15.4 use for 4-byte MICs) instead of truncated GCM.
The classic format is one format: a classic unit that goes multi-frame keeps CCM-32 too.
Why CCM:

* SP 800-38D allows 32-bit GCM tags only under tight per-key limits, because a successful forgery
  against a short GCM tag reveals information about the GHASH key H and makes the next forgery
  cheaper (Ferguson 2005); CCM's CBC-MAC tag has no such amplification, each try succeeds with
  probability 2^-32 on its own;
* ``cryptography``'s AESCCM verifies a truncated tag in one call; AESGCM only takes 16-byte tags
  (the low-level GCM API is ~10× slower per frame);
* on the ATmega64M1 module MCU, CCM needs only the AES block encryption, no GF(2^128) multiply.

Classic and FD keys are derived separately (HKDF info names the mode), so CCM and GCM never share
a key. Nonce (12 bytes, both modes) = direction (1) ‖ CAN ID with bit 31 = extended (4) ‖ full FV
(7): unique per key because the sender's counter never repeats (reservation window across
restarts) and the direction and ID are in it. The nonce is an input to the tag, so the
identifier, and with it the tier signalled in the ID, is authenticated without being sent twice.

Forgery odds per try are 2^-tag_bits. On classic CAN at 7 634 frames/s an attacker trying every
frame slot needs on average 2^31 / 7 634 s ≈ 3.3 days for one forged 4-byte-tag frame; receivers
count ``BAD_MAC`` in :class:`RejectCounters` so the node can alarm and re-key long before that.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM

from ..crypto import labels
from ..crypto.freshness import (
    COUNTER_BYTES,
    MAX_COUNTER,
    RESYNC_CHALLENGE_BYTES,
    FreshnessCounter,
    ReplayWindow,
)
from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import AEAD_KEY_BYTES, AEAD_TAG_BYTES, SIGNATURE_BYTES, PrivateKey, PublicKey, hkdf_sha256
from ..errors import Reason, VerificationError
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..model.tier import Tier
from .ids import CanIdFields, IdLayout
from .wiretime import CLASSIC, FD, FD_PADDED_LENGTH, PROFILES, BusProfile, frame_length

__all__ = [
    "CLASSIC",
    "FD",
    "MAX_PDU",
    "PROFILES",
    "BusProfile",
    "Direction",
    "FrameFormat",
    "Opened",
    "RejectCounters",
    "SecuredPdu",
    "SecuredReceiver",
    "SecuredSender",
    "TrafficKeys",
    "derive_traffic_keys",
    "frame_format",
]

#: Largest reassembled unit accepted (ISO 15765-2 classic FF_DL limit, can-isotp's default).
MAX_PDU: Final = 4095
CLASSIC_TAG_BYTES: Final = 4
CLASSIC_FV_BITS: Final = 8
_EXT_FLAG = 1 << 31
_FD_PAD_BYTES = 1
_RESYNC_AAD = b"\xffresync"  # longer than any data-frame AAD (0 or 1 byte): never confused
_FV_BYTE = tuple(bytes((i,)) for i in range(256))  # one-byte strings, prebuilt for the hot path
_ZEROS = tuple(bytes(i) for i in range(16))  # FD padding runs (at most 15 bytes)


class Direction(enum.IntEnum):
    """Which way a key and a freshness stream go (keys are split by direction, docs/can-frames.md §2)."""

    INITIATOR_TO_RESPONDER = 0  # controller → node on the seed layout's dir bit
    RESPONDER_TO_INITIATOR = 1


class RejectCounters(collections.Counter[Reason]):
    """Rejected frames counted by :class:`~modbatt.errors.Reason` (docs/architecture.md, Errors)."""


@dataclasses.dataclass(frozen=True, slots=True)
class FrameFormat:
    """Byte layout of one tier on one profile. ``fv_bits`` = freshness bits on the wire."""

    tier: Tier
    fd: bool
    fv_bits: int
    tag_bytes: int  # AEAD tag, or signature bytes of a signed BINDING frame
    header_bytes: int  # bytes before the payload (FV, pad count)
    trailer_bytes: int  # bytes after the payload (truncated FV, tag/signature)
    data_field: int
    signed: bool = False  # a signature authenticates the frame (BINDING under ``seed``)

    @property
    def overhead(self) -> int:
        return self.header_bytes + self.trailer_bytes

    @property
    def room(self) -> int:
        """Payload bytes that still fit one frame (0 for the binding tier: always multi-frame)."""
        if self.tier is Tier.BINDING:
            return 0
        return max(self.data_field - self.overhead, 0)

    @property
    def forgery_odds_log2(self) -> int | None:
        """log2 of one forgery try's success probability (None for clear frames).

        For a signed BINDING frame this is the ECDSA P-256 security level (~2^-128), not a tag size.
        """
        if self.tier is Tier.NONE:
            return None
        return -128 if self.signed else -8 * self.tag_bytes


_FV_FULL_BITS: Final = 8 * COUNTER_BYTES


def _formats() -> dict[tuple[Tier, bool, bool], FrameFormat]:
    """Formats by (tier, FD, signed); ``signed`` only ever true for BINDING."""
    out = {}
    for fd, field in ((False, CLASSIC.data_field), (True, FD.data_field)):
        out[(Tier.NONE, fd, False)] = FrameFormat(Tier.NONE, fd, 0, 0, 0, 0, field)
        for tier in (Tier.EXCHANGE, Tier.PAIRING, Tier.BINDING):
            if fd:
                fmt = FrameFormat(
                    tier, fd, _FV_FULL_BITS, AEAD_TAG_BYTES, COUNTER_BYTES + _FD_PAD_BYTES, AEAD_TAG_BYTES, field
                )
            else:
                fmt = FrameFormat(
                    tier, fd, CLASSIC_FV_BITS, CLASSIC_TAG_BYTES, 0, CLASSIC_FV_BITS // 8 + CLASSIC_TAG_BYTES, field
                )
            out[(tier, fd, False)] = fmt
        out[(Tier.BINDING, fd, True)] = FrameFormat(
            Tier.BINDING, fd, _FV_FULL_BITS, SIGNATURE_BYTES, COUNTER_BYTES, SIGNATURE_BYTES, field, signed=True
        )
    return out


_FORMATS: Final = _formats()


def frame_format(tier: Tier, profile: BusProfile, protocol: ProtocolProfile = DEFAULT_PROFILE) -> FrameFormat:
    """The format of ``tier`` on bus ``profile`` under the pairing's ``protocol`` profile.

    Classic formats assume an 8-byte field. Only the binding tier depends on ``protocol``: signed
    under ``seed``, the symmetric format of the other tiers under ``efficient``.
    """
    tier = Tier(tier)
    signed = tier is Tier.BINDING and not ProtocolProfile(protocol).binding_mac
    return _FORMATS[(tier, profile.fd, signed)]


class TrafficKeys:
    """Keys of one tier in one direction. Secrets never appear in ``repr``.

    Symmetric tiers hold prepared AEAD objects (reused per frame: creating one costs about as
    much as the encryption). A signed BINDING tier (``seed``) holds the sender's private key and/or
    the receiver's copy of the peer's public key; a symmetric BINDING tier (``efficient``) holds
    AEAD keys like the others (:func:`derive_traffic_keys` from the binding MAC secret).
    """

    __slots__ = ("_ccm", "_gcm", "context", "direction", "signer", "tier", "verifier")

    def __init__(
        self,
        tier: Tier,
        direction: Direction,
        *,
        classic_key: bytes | None = None,
        fd_key: bytes | None = None,
        signer: PrivateKey | None = None,
        verifier: PublicKey | None = None,
        context: bytes = b"",
    ) -> None:
        self.tier = Tier(tier)
        if context and not 2 <= len(context) <= 255:
            raise ValueError("a BINDING context is 2-255 bytes")
        # BINDING keys are per binding, not per pairing: the context (the link's pairing id) goes
        # into every signature so frames signed on one pairing's link never verify on another's.
        self.context = bytes([len(context)]) + bytes(context) if context else b""
        self.direction = Direction(direction)
        self._ccm = AESCCM(classic_key, tag_length=CLASSIC_TAG_BYTES) if classic_key is not None else None
        self._gcm = AESGCM(fd_key) if fd_key is not None else None
        self.signer = signer
        self.verifier = verifier
        symmetric = self._ccm is not None and self._gcm is not None
        if self.tier in (Tier.EXCHANGE, Tier.PAIRING) and not symmetric:
            raise ValueError("symmetric tiers need classic_key and fd_key (use derive_traffic_keys)")
        if self.tier is Tier.BINDING and symmetric == (signer is not None or verifier is not None):
            raise ValueError("BINDING needs a signer and/or verifier (seed) or AEAD keys (efficient), not both")

    @property
    def signed(self) -> bool:
        """True for a signed BINDING tier (``seed``): frames carry a signature instead of a tag."""
        return self.tier is Tier.BINDING and self._ccm is None

    @classmethod
    def clear(cls, direction: Direction = Direction.INITIATOR_TO_RESPONDER) -> TrafficKeys:
        """No keys: tier NONE."""
        return cls(Tier.NONE, direction)

    @classmethod
    def binding(
        cls,
        direction: Direction,
        *,
        signer: PrivateKey | None = None,
        verifier: PublicKey | None = None,
        context: bytes = b"",
    ) -> TrafficKeys:
        """BINDING tier: sign with the sender's binding key, verify with the peer's.

        ``context`` (2-255 bytes, e.g. the pairing id) is signed as ``len ‖ context`` before the
        nonce; its first byte (≥ 2) can never equal a nonce's first byte (the direction, 0 or 1).
        """
        return cls(Tier.BINDING, direction, signer=signer, verifier=verifier, context=context)

    def __repr__(self) -> str:
        return f"TrafficKeys(tier={self.tier.name}, direction={self.direction.name})"


def derive_traffic_keys(tier_secret: bytes, tier: Tier, direction: Direction) -> TrafficKeys:
    """Per-direction CAN keys of a symmetric tier from that tier's secret.

    The tier secret is the session's exchange secret, pairing secret or (``efficient`` profile)
    binding MAC secret. HKDF-SHA256, info = CAN_TRAFFIC_KEY ‖ tier ‖ direction ‖ mode; one key
    for classic (CCM) and one for FD (GCM) so the two modes never share a key, and the tier byte
    keeps the three tiers' keys apart. The raw secret is never used as a key.
    """
    tier = Tier(tier)
    if tier is Tier.NONE:
        raise ValueError("the clear tier has no traffic keys")
    if len(tier_secret) < AEAD_KEY_BYTES:
        raise ValueError("tier secret must be at least 32 bytes")
    info = labels.CAN_TRAFFIC_KEY + bytes([int(tier), int(direction)])
    return TrafficKeys(
        tier,
        direction,
        classic_key=hkdf_sha256(tier_secret, info=info + b"aes-256-ccm-32"),
        fd_key=hkdf_sha256(tier_secret, info=info + b"aes-256-gcm-128"),
    )


class SecuredPdu(NamedTuple):
    """What to put on the bus: one frame's data, or a multi-frame unit for the transport."""

    can_id: int
    data: bytes
    single_frame: bool
    freshness: int | None  # full FV used (None for clear frames)


class Opened(NamedTuple):
    """A verified message: decoded identifier, plaintext payload, full freshness value."""

    fields: CanIdFields
    payload: bytes
    freshness: int | None


class _Channel:
    """What sender and receiver share: layout, profile, keys, format (precomputed per frame)."""

    __slots__ = (
        "_ccm",
        "_fd",
        "_field",
        "_fmt",
        "_gcm",
        "_nonce_base",
        "_overhead",
        "_signed",
        "_single",
        "_tier",
        "direction",
        "keys",
        "layout",
        "profile",
    )

    def __init__(self, layout: IdLayout, profile: BusProfile, keys: TrafficKeys) -> None:
        self.layout = layout
        self.profile = profile
        self.keys = keys
        self.direction = keys.direction
        self._signed = keys.signed
        self._fmt = _FORMATS[(keys.tier, profile.fd, self._signed)]
        self._tier = keys.tier
        self._fd = profile.fd
        self._field = profile.data_field
        # Binding-tier units always travel over the multi-frame transport, whatever their size and
        # profile, so the framing follows from the identifier alone (docs/can-frames.md §2).
        self._single = 0 if keys.tier is Tier.BINDING else profile.data_field
        self._overhead = self._fmt.overhead
        self._ccm = keys._ccm
        self._gcm = keys._gcm
        # Nonce = direction (1) ‖ CAN ID with bit 31 = extended (4) ‖ full FV (7), as one integer.
        id_flag = _EXT_FLAG if layout.id_bits == 29 else 0
        self._nonce_base = (int(keys.direction) << 88) | (id_flag << 56)

    @property
    def format(self) -> FrameFormat:
        return self._fmt

    def _nonce(self, can_id: int, fv: int) -> bytes:
        return (self._nonce_base | (can_id << 56) | fv).to_bytes(12, "big")


class SecuredSender(_Channel):
    """Protects outgoing messages of one tier with one freshness stream."""

    __slots__ = ("_sec_mask", "_tier_bits", "counter")

    def __init__(
        self, layout: IdLayout, profile: BusProfile, keys: TrafficKeys, counter: FreshnessCounter | None = None
    ) -> None:
        super().__init__(layout, profile, keys)
        if keys.tier is not Tier.NONE and counter is None:
            raise ValueError("a protected tier needs a FreshnessCounter")
        if keys.signed and keys.signer is None:
            raise ValueError("sending signed BINDING frames needs the sender's private key")
        self.counter = counter
        self._sec_mask = layout.security_mask
        self._tier_bits = layout.tier_bits(keys.tier)

    def _id(self, fields: CanIdFields) -> int:
        # Stamp the channel's tier with bit operations (dataclasses.replace costs ~3 µs a frame).
        if self._sec_mask:
            return (self.layout.encode(fields) & ~self._sec_mask) | self._tier_bits
        return self.layout.encode(fields)

    def protect(self, fields: CanIdFields, payload: bytes) -> SecuredPdu:
        """Identifier + protected bytes for ``payload`` (the channel's tier stamped into the ID)."""
        can_id = self._id(fields)
        n = len(payload)
        field = self._single
        if n + self._overhead > MAX_PDU:
            raise VerificationError(Reason.OVERSIZED, f"{n}-byte payload exceeds the {MAX_PDU}-byte unit limit")
        tier = self._tier
        if tier is Tier.NONE:
            if self._fd and n <= field:
                payload = payload + bytes(frame_length(n, fd=True) - n)
            return SecuredPdu(can_id, bytes(payload), n <= field, None)
        assert self.counter is not None
        fv = self.counter.next()
        nonce = (self._nonce_base | (can_id << 56) | fv).to_bytes(12, "big")
        if self._signed:
            assert self.keys.signer is not None
            sig = self.keys.signer.sign(labels.SIG_CAN_FRAME, self.keys.context + nonce + payload)
            data = fv.to_bytes(COUNTER_BYTES, "big") + payload + sig
            return SecuredPdu(can_id, data, len(data) <= field, fv)
        if not self._fd:
            sealed = self._ccm.encrypt(nonce, payload, None)  # type: ignore[union-attr]
            # CCM output = ct ‖ tag; the truncated FV goes between them.
            data = sealed[:n] + _FV_BYTE[fv & 0xFF] + sealed[n:]
            return SecuredPdu(can_id, data, n + 5 <= field, fv)
        total = n + self._overhead
        pad = FD_PADDED_LENGTH[total] - total if total <= field else 0
        pad_byte = _FV_BYTE[pad]  # the pad count is authenticated as associated data
        sealed = self._gcm.encrypt(nonce, payload, pad_byte)  # type: ignore[union-attr]
        data = fv.to_bytes(COUNTER_BYTES, "big") + pad_byte + sealed + _ZEROS[pad]
        return SecuredPdu(can_id, data, total <= field, fv)

    def protect_resync(self, fields: CanIdFields, challenge: bytes) -> SecuredPdu:
        """Answer a resync challenge: next full FV ‖ tag (or signature) over the challenge."""
        if self.keys.tier is Tier.NONE or self.counter is None:
            raise ValueError("clear channels have no freshness to resync")
        if len(challenge) != RESYNC_CHALLENGE_BYTES:
            raise VerificationError(Reason.MALFORMED, "resync challenge has the wrong size")
        can_id = self._id(fields)
        fv = self.counter.next()
        nonce = self._nonce(can_id, fv)
        head = fv.to_bytes(COUNTER_BYTES, "big")
        if self._signed:
            assert self.keys.signer is not None
            auth = self.keys.signer.sign(labels.SIG_CAN_RESYNC, self.keys.context + nonce + challenge)
        else:
            aead = self._gcm if self._fd else self._ccm
            assert aead is not None
            auth = aead.encrypt(nonce, b"", _RESYNC_AAD + challenge)
        data = head + auth
        single = len(data) <= self.profile.data_field
        if self._fd and single:  # a valid FD length (23 -> 24): zero padding, checked by the receiver
            data += bytes(frame_length(len(data), fd=True) - len(data))
        return SecuredPdu(can_id, data, single, fv)


class SecuredReceiver(_Channel):
    """Verifies incoming messages of one tier; counts every rejection by reason.

    ``window`` is the freshness state (a new pairing starts at ``ReplayWindow()``; after a
    restart use ``ReplayWindow.unsynced()`` and resync). ``behind`` is how far back a truncated
    classic FV may reconstruct (default 64; the default window keeps 32, so 32-63 back is STALE).
    """

    __slots__ = ("_challenge", "behind", "rejects", "window")

    def __init__(
        self,
        layout: IdLayout,
        profile: BusProfile,
        keys: TrafficKeys,
        window: ReplayWindow | None = None,
        *,
        behind: int = 64,
    ) -> None:
        super().__init__(layout, profile, keys)
        if keys.signed and keys.verifier is None:
            raise ValueError("receiving signed BINDING frames needs the sender's public key")
        self.window = window if window is not None else ReplayWindow(32)
        self.behind = behind
        self.rejects = RejectCounters()
        self._challenge: bytes | None = None

    def open(self, can_id: int, data: bytes, *, reassembled: bool = False) -> Opened:
        """Verify and decrypt; raises ``VerificationError`` (and counts it) on any failure.

        ``reassembled=True`` for a unit that came through the multi-frame transport; otherwise
        ``data`` must fit one frame of the profile.
        """
        try:
            return self._open(can_id, data, reassembled)
        except VerificationError as exc:
            self.rejects[exc.reason] += 1
            raise
        except (TypeError, ValueError, OverflowError) as exc:  # hostile types or sizes: classify, never crash
            self.rejects[Reason.MALFORMED] += 1
            raise VerificationError(Reason.MALFORMED, type(exc).__name__) from None

    def _open(self, can_id: int, data: bytes, reassembled: bool) -> Opened:
        fields = self.layout.decode(can_id)
        mine = self._tier
        if fields.tier is not None and fields.tier is not mine:
            reason = Reason.TIER_TOO_LOW if fields.tier < mine else Reason.WRONG_LEVEL
            raise VerificationError(reason, f"frame at {fields.tier.name}, channel at {mine.name}")
        if type(data) is not bytes:
            data = bytes(data)
        n = len(data)
        limit = MAX_PDU if reassembled else self._single
        if n > limit:
            why = " (binding-tier units are multi-frame only)" if limit == 0 else ""
            raise VerificationError(Reason.OVERSIZED, f"{n} bytes, limit {limit}{why}")
        if self._fd and not reassembled and n > 8 and n != frame_length(n, fd=True):
            raise VerificationError(Reason.MALFORMED, f"{n} is not a valid CAN FD length")
        if mine is Tier.NONE:
            return Opened(fields, data, None)
        if n < self._overhead:
            raise VerificationError(Reason.MALFORMED, f"{n} bytes is shorter than the {self._overhead}-byte overhead")
        window = self.window
        if not self._fd and not self._signed:
            split = n - 5
            # SecOC reconstruction, inlined (see freshness.reconstruct): nearest value with these low bits.
            low = window.highest + 1 - self.behind
            if low < 0:
                low = 0
            fv = low + ((data[split] - low) & 0xFF)
            window.check(fv)
            try:
                payload = self._ccm.decrypt(  # type: ignore[union-attr]
                    (self._nonce_base | (can_id << 56) | fv).to_bytes(12, "big"),
                    data[:split] + data[split + 1 :],
                    None,
                )
            except InvalidTag:
                raise VerificationError(Reason.BAD_MAC, "tag does not verify") from None
            window.commit(fv)
            return Opened(fields, payload, fv)
        fv = int.from_bytes(data[:COUNTER_BYTES], "big")
        if self._signed:
            window.check(fv)
            body, sig = data[COUNTER_BYTES:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
            assert self.keys.verifier is not None
            self.keys.verifier.verify(labels.SIG_CAN_FRAME, self.keys.context + self._nonce(can_id, fv) + body, sig)
            window.commit(fv)
            return Opened(fields, body, fv)
        pad = data[COUNTER_BYTES]
        if pad and (pad > n - self._overhead or any(data[n - pad :])):
            raise VerificationError(Reason.MALFORMED, "bad padding")
        window.check(fv)
        try:
            payload = self._gcm.decrypt(  # type: ignore[union-attr]
                (self._nonce_base | (can_id << 56) | fv).to_bytes(12, "big"),
                data[COUNTER_BYTES + _FD_PAD_BYTES : n - pad],
                _FV_BYTE[pad],
            )
        except InvalidTag:
            raise VerificationError(Reason.BAD_MAC, "tag does not verify") from None
        window.commit(fv)
        return Opened(fields, payload, fv)

    def authenticates(
        self, can_id: int, data: bytes, *, within: range = range(0), reassembled: bool = False
    ) -> int | None:
        """The full FV under which ``data`` verifies on this channel's key, or None. Classification only.

        Never accepts anything, never moves the window, never counts, never raises: a caller that
        already refused a frame uses it to say *why* (an authentic frame of an earlier session, or
        one far behind the window, is stale rather than forged). Classic symmetric frames carry only
        8 FV bits, so the full values tried are those in ``within`` whose low byte matches (one try
        per 256 values); FD and signed binding-tier frames carry the full FV.
        """
        try:
            fields = self.layout.decode(can_id)
            tier = self._tier
            if tier is Tier.NONE or (fields.tier is not None and fields.tier is not tier):
                return None
            data = bytes(data)
            n = len(data)
            if n < self._overhead or n > (MAX_PDU if reassembled else self._single):
                return None
            if self._signed:
                fv = int.from_bytes(data[:COUNTER_BYTES], "big")
                assert self.keys.verifier is not None
                body, sig = data[COUNTER_BYTES:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:]
                self.keys.verifier.verify(labels.SIG_CAN_FRAME, self.keys.context + self._nonce(can_id, fv) + body, sig)
                return fv
            if self._fd:
                fv = int.from_bytes(data[:COUNTER_BYTES], "big")
                pad = data[COUNTER_BYTES]
                if pad > n - self._overhead:
                    return None
                self._gcm.decrypt(  # type: ignore[union-attr]
                    self._nonce(can_id, fv), data[COUNTER_BYTES + _FD_PAD_BYTES : n - pad], _FV_BYTE[pad]
                )
                return fv
            split = n - 5
            low = data[split]
            start = max(within.start, 0)
            for fv in range(start + ((low - start) & 0xFF), min(within.stop, MAX_COUNTER + 1), 256):
                try:
                    self._ccm.decrypt(self._nonce(can_id, fv), data[:split] + data[split + 1 :], None)  # type: ignore[union-attr]
                except InvalidTag:
                    continue
                return fv
        except (VerificationError, InvalidTag, TypeError, ValueError, OverflowError):
            return None
        return None

    def resync_challenge(self, rng: RandomSource | None = None, *, challenge: bytes | None = None) -> bytes:
        """A fresh challenge to send to the peer; only the latest one is accepted.

        ``challenge`` sets one drawn elsewhere (a channel asks every tier with one challenge).
        """
        if challenge is not None and len(challenge) != RESYNC_CHALLENGE_BYTES:
            raise ValueError(f"a resync challenge is {RESYNC_CHALLENGE_BYTES} bytes")
        self._challenge = (
            bytes(challenge) if challenge is not None else (rng or SystemRandom()).token_bytes(RESYNC_CHALLENGE_BYTES)
        )
        return self._challenge

    @property
    def awaiting_resync(self) -> bool:
        """True while a challenge is outstanding (no answer accepted for it yet)."""
        return self._challenge is not None

    def accept_resync(self, can_id: int, data: bytes) -> int:
        """Verify the peer's answer to our outstanding challenge and restart the window at its FV."""
        try:
            return self._accept_resync(can_id, bytes(data))
        except VerificationError as exc:
            self.rejects[exc.reason] += 1
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            self.rejects[Reason.MALFORMED] += 1
            raise VerificationError(Reason.MALFORMED, type(exc).__name__) from None

    def _accept_resync(self, can_id: int, data: bytes) -> int:
        challenge = self._challenge
        if challenge is None:
            raise VerificationError(Reason.UNAUTHORIZED, "no resync challenge outstanding")
        fields = self.layout.decode(can_id)
        if fields.tier is not None and fields.tier is not self.keys.tier:
            raise VerificationError(Reason.WRONG_LEVEL, "resync answer at another tier")
        tier = self.keys.tier
        if tier is Tier.NONE:
            raise VerificationError(Reason.WRONG_LEVEL, "clear channels have no freshness")
        auth_len = SIGNATURE_BYTES if self._signed else self._fmt.tag_bytes
        size = COUNTER_BYTES + auth_len
        if self._fd and size <= self._field and len(data) == frame_length(size, fd=True) and not any(data[size:]):
            data = data[:size]  # the zero padding up to a valid FD length
        if len(data) != size:
            raise VerificationError(Reason.MALFORMED, "resync answer has the wrong length")
        fv = int.from_bytes(data[:COUNTER_BYTES], "big")
        if fv > MAX_COUNTER:
            raise VerificationError(Reason.MALFORMED, "freshness value out of range")
        nonce = self._nonce(can_id, fv)
        if self._signed:
            assert self.keys.verifier is not None
            self.keys.verifier.verify(
                labels.SIG_CAN_RESYNC, self.keys.context + nonce + challenge, data[COUNTER_BYTES:]
            )
        else:
            aead = self._gcm if self._fd else self._ccm
            assert aead is not None
            try:
                aead.decrypt(nonce, data[COUNTER_BYTES:], _RESYNC_AAD + challenge)
            except InvalidTag:
                raise VerificationError(Reason.BAD_MAC, "resync tag does not verify") from None
        self._challenge = None  # one answer per challenge: replaying it later fails
        self.window.resync(fv)
        return fv
