"""Large payloads on CAN: ISO-TP point to point, and a broadcast fragmentation where ISO-TP cannot serve.

Certificates, signatures and signed announces (100 B to ``MAX_PAYLOAD`` = 4095 B) do not fit a CAN frame.

* **Point to point** (one sender, one receiver): ISO 15765-2 (ISO-TP) through ``can-isotp``, with
  flow control. Here: its addressing (:func:`isotp_address`) and parameters (:func:`isotp_params`);
  the I/O (``IsoTpLink``, can-isotp's threads over a python-can bus) is in
  :mod:`modbatt.transport.isotp_link`.
* **Broadcast** (one sender, many receivers, e.g. a level-1 announce with its signature): ISO-TP
  cannot serve, because its flow control expects exactly one receiver to answer. :class:`Fragmenter`
  cuts a message into frames with the header below and :class:`Reassembler` puts them together
  again under hard limits on size, concurrency, memory and time.

Broadcast fragment format (every multi-byte field big-endian)::

    byte 0   bits 7-4  transfer id (0-15, per carrier CAN ID, advanced by the sender per message)
    byte 0   bits 3-0  fragment index bits 11-8
    byte 1   bits 7-0  fragment index bits 7-0   (index 0-4095)
    bytes 2-3          only in fragment 0: total message length in bytes (u16)
    rest               data: the next bytes of  stream = message || CRC-32(message)

Fragment 0 carries ``mtu - 4`` data bytes, every other fragment ``mtu - 2``; the last fragment is
padded with 0xCC to 8 bytes (classic; optional) or to the next valid CAN FD length, and the
receiver, knowing the total, drops the padding. The CRC-32 (IEEE 802.3, as ``zlib.crc32``) catches
mixed-up or injected fragments; it is *not* authentication: the reassembled message must still
pass its own signature or MAC check in the protocol layer.

The reassembler is sans-I/O: :meth:`Reassembler.feed` takes ``(can_id, data, now)`` and returns the
messages it completed; time only moves when the caller passes ``now``. It never raises on bad
input: every refused frame or abandoned transfer is counted in :attr:`Reassembler.drops`, keyed by
:class:`~modbatt.errors.Reason`. See ``docs/can-fragmentation-and-dbc.md`` for the policy table.
"""

from __future__ import annotations

import collections
import enum
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import isotp
from can.util import dlc2len, len2dlc

from ..errors import ConfigError, Reason, VerificationError
from .ids import EXTENDED_ID_MAX, STANDARD_ID_MAX
from .secured import MAX_PDU

__all__ = [
    "CHECK_LEN",
    "CLASSIC_MTU",
    "FD_LENGTHS",
    "FIRST_HEADER_LEN",
    "HEADER_LEN",
    "MAX_FRAGMENTS",
    "MAX_PAYLOAD",
    "PAD_BYTE",
    "TRANSFER_IDS",
    "Fragmenter",
    "ReassembledMessage",
    "Reassembler",
    "ReassemblyLimits",
    "fragment_count",
    "fragment_message",
    "isotp_address",
    "isotp_params",
]

# ---------------------------------------------------------------------------------------------
# Limits and the broadcast frame format: defined here once, used by both directions and the docs.
# ---------------------------------------------------------------------------------------------

#: Largest unit either transport carries: certificates and signature bundles. One limit for the
#: whole codec: the secured-unit limit (ISO 15765-2's classic 12-bit first-frame length), so a
#: reassembled unit is never bigger than what ``SecuredReceiver.open`` accepts.
MAX_PAYLOAD = MAX_PDU

HEADER_LEN = 2  # transfer id + fragment index
FIRST_HEADER_LEN = 4  # fragment 0 adds the u16 total length
CHECK_LEN = 4  # CRC-32 trailer over the message
_TID_SHIFT = 12
_INDEX_MASK = 0x0FFF
TRANSFER_IDS = 16  # 4-bit transfer id
MAX_FRAGMENTS = _INDEX_MASK + 1  # 12-bit index
_MAX_TOTAL_FIELD = 0xFFFF  # u16 total-length field
PAD_BYTE = 0xCC  # same filler ISO-TP stacks commonly use, so traces look familiar
CLASSIC_MTU = 8
#: Valid CAN FD payload lengths above 8 bytes (DLC 9-15, from python-can's table); 0-8 are all valid.
FD_LENGTHS = tuple(dlc2len(dlc) for dlc in range(9, 16))
_VALID_MTUS = (CLASSIC_MTU, *FD_LENGTHS)


def _capacity(index: int, mtu: int) -> int:
    """Data bytes fragment ``index`` carries in a frame of ``mtu`` bytes."""
    return mtu - (FIRST_HEADER_LEN if index == 0 else HEADER_LEN)


def _offset(index: int, mtu: int) -> int:
    """Where fragment ``index``'s data starts in the stream."""
    if index == 0:
        return 0
    return _capacity(0, mtu) + (index - 1) * _capacity(1, mtu)


def fragment_count(message_len: int, mtu: int = CLASSIC_MTU) -> int:
    """How many frames a message of ``message_len`` bytes takes (CRC trailer included)."""
    stream = message_len + CHECK_LEN
    first = _capacity(0, mtu)
    if stream <= first:
        return 1
    return 1 + -(-(stream - first) // _capacity(1, mtu))


def _frame_length(n: int, mtu: int, pad_classic: bool) -> int:
    """Smallest valid frame length >= n (CAN FD only allows some lengths above 8)."""
    if n <= CLASSIC_MTU:
        return CLASSIC_MTU if pad_classic else n
    return dlc2len(len2dlc(n))


def _check_mtu(mtu: int) -> None:
    if mtu not in _VALID_MTUS:
        raise ConfigError(f"mtu {mtu} is not a CAN frame length (8 classic, or one of {FD_LENGTHS} for FD)")


def _max_message_for(mtu: int) -> int:
    """Largest message the header can describe at this mtu (12-bit index, u16 length)."""
    by_index = _offset(MAX_FRAGMENTS - 1, mtu) + _capacity(1, mtu) - CHECK_LEN
    return min(by_index, _MAX_TOTAL_FIELD)


def fragment_message(
    payload: bytes, transfer_id: int, *, mtu: int = CLASSIC_MTU, pad_classic: bool = True
) -> list[bytes]:
    """Cut ``payload`` into broadcast fragments (frame data fields, in index order).

    ``pad_classic`` (the default) pads a short last classic frame to 8 bytes: every frame then has
    the same wire time, and DBC tools that expect DLC 8 decode it. FD frames are always padded
    to the next valid FD length.
    """
    _check_mtu(mtu)
    if not 0 <= transfer_id < TRANSFER_IDS:
        raise ConfigError(f"transfer id {transfer_id} is outside 0-{TRANSFER_IDS - 1}")
    if len(payload) > _max_message_for(mtu):
        raise ConfigError(f"{len(payload)} bytes exceed what the fragment header can describe at mtu {mtu}")
    stream = bytes(payload) + zlib.crc32(payload).to_bytes(CHECK_LEN, "big")
    frames: list[bytes] = []
    for index in range(fragment_count(len(payload), mtu)):
        word = (transfer_id << _TID_SHIFT) | index
        header = word.to_bytes(2, "big")
        if index == 0:
            header += len(payload).to_bytes(2, "big")
        start = _offset(index, mtu)
        frame = header + stream[start : start + _capacity(index, mtu)]
        frames.append(frame.ljust(_frame_length(len(frame), mtu, pad_classic), bytes([PAD_BYTE])))
    return frames


class Fragmenter:
    """Sender side: cuts messages for one carrier CAN ID, advancing the transfer id per message."""

    def __init__(
        self,
        *,
        mtu: int = CLASSIC_MTU,
        max_message_size: int = MAX_PAYLOAD,
        first_transfer_id: int = 0,
        pad_classic: bool = True,
    ) -> None:
        _check_mtu(mtu)
        if not 0 <= max_message_size <= _max_message_for(mtu):
            raise ConfigError(f"max_message_size {max_message_size} is outside 0-{_max_message_for(mtu)}")
        self.mtu = mtu
        self.max_message_size = max_message_size
        self.pad_classic = pad_classic
        self._next_tid = first_transfer_id % TRANSFER_IDS

    @property
    def next_transfer_id(self) -> int:
        """The transfer id the next :meth:`fragment` call will use."""
        return self._next_tid

    def fragment(self, payload: bytes) -> list[bytes]:
        """Frames for ``payload`` under the next transfer id (raises :class:`ConfigError` if too big)."""
        if len(payload) > self.max_message_size:
            raise ConfigError(f"{len(payload)}-byte message exceeds max_message_size {self.max_message_size}")
        frames = fragment_message(payload, self._next_tid, mtu=self.mtu, pad_classic=self.pad_classic)
        self._next_tid = (self._next_tid + 1) % TRANSFER_IDS
        return frames


# ---------------------------------------------------------------------------------------------
# Receiver side
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReassemblyLimits:
    """Hard limits of a :class:`Reassembler` (all enforced before anything is stored).

    Defaults fit the announce/certificate traffic of one pack: up to 8 transfers in flight, 2 per
    sender, 16 KiB of fragment data (four full 4 KiB transfers). ``gap_timeout`` is the longest
    silence between two fragments of one transfer, ``transfer_timeout`` its longest life (a 4 KiB
    message is 684 classic frames: 0.35 s of a 250 kbit/s bus at full load, so 10 s leaves room
    for sharing the bus). A finished, expired or abandoned transfer leaves a tombstone for
    ``tombstone_ttl`` seconds so late copies of its fragments are classified, not re-buffered.
    """

    mtu: int = CLASSIC_MTU
    max_message_size: int = MAX_PAYLOAD
    max_transfers: int = 8
    max_transfers_per_sender: int = 2
    max_buffered_bytes: int = 16 * 1024
    gap_timeout: float = 1.0
    transfer_timeout: float = 10.0
    max_tombstones: int = 32
    tombstone_ttl: float = 10.0

    def __post_init__(self) -> None:
        _check_mtu(self.mtu)
        if not 0 <= self.max_message_size <= _max_message_for(self.mtu):
            raise ConfigError(f"max_message_size {self.max_message_size} is outside 0-{_max_message_for(self.mtu)}")
        for name in ("max_transfers", "max_transfers_per_sender", "max_buffered_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.max_tombstones < 0:
            raise ConfigError("max_tombstones must not be negative")
        for name in ("gap_timeout", "transfer_timeout", "tombstone_ttl"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds")

    @property
    def max_stream(self) -> int:
        """Largest stream (message + CRC) a transfer may grow to."""
        return self.max_message_size + CHECK_LEN


@dataclass(frozen=True, slots=True)
class ReassembledMessage:
    """A complete broadcast message whose CRC matched (authenticity is still the caller's job)."""

    can_id: int
    sender: int
    transfer_id: int
    payload: bytes
    started: float
    completed: float


class _Ending(enum.Enum):
    """Why a transfer left: decides how its late fragments are classified."""

    DONE = Reason.DUPLICATE  # a copy of something already delivered
    GONE = Reason.STALE  # belongs to a transfer that timed out or was abandoned


@dataclass(slots=True)
class _Tombstone:
    ending: _Ending
    until: float
    first_frame: bytes | None  # fragment 0 as received, to tell a late copy from a new transfer


@dataclass(slots=True)
class _Transfer:
    can_id: int
    sender: int
    transfer_id: int
    started: float
    last_progress: float
    total: int | None = None  # message length, known once fragment 0 arrived
    first_frame: bytes | None = None
    fragments: dict[int, bytes] = field(default_factory=dict)
    nbytes: int = 0


_Key = tuple[int, int]  # (carrier CAN ID, transfer id)


def _identity(can_id: int) -> int:
    return can_id


class Reassembler:
    """Receiver side of the broadcast fragmentation: sans-I/O, bounded, never raises on input.

    Policy (why, in short):

    * out of order: buffered within the limits (CAN keeps one sender's frames in order, but
      gateways and multi-buffer controllers may not);
    * duplicate index: the first copy is kept and the copy dropped as ``DUPLICATE`` (an attacker who
      sees a fragment cannot replace it afterwards; one who races ahead only breaks the CRC);
    * oversized (total length or index past ``max_message_size``): ``OVERSIZED``, nothing stored;
    * header or length inconsistent with the total: ``MALFORMED``, the transfer is abandoned;
    * CRC mismatch: ``HASH_MISMATCH``, abandoned;
    * no room (``max_transfers`` or ``max_buffered_bytes``): ``EXHAUSTED``; per-sender cap:
      ``RATE_LIMITED``. New work is refused rather than old work evicted, so a flood cannot push
      out a transfer that is nearly done;
    * silent too long or alive too long: ``TIMEOUT``; its later fragments: ``STALE``; fragments of a
      delivered message arriving again: ``DUPLICATE``.

    ``sender_of`` maps a CAN ID to the node the per-sender limit counts against; by default the
    whole ID, because on CAN only one node may transmit a given ID.
    """

    def __init__(
        self,
        limits: ReassemblyLimits | None = None,
        *,
        sender_of: Callable[[int], int] = _identity,
        on_drop: Callable[[int, VerificationError], None] | None = None,
    ) -> None:
        self.limits = limits or ReassemblyLimits()
        self._sender_of = sender_of
        self._on_drop = on_drop
        self._transfers: dict[_Key, _Transfer] = {}
        self._per_sender: collections.Counter[int] = collections.Counter()
        self._tombstones: collections.OrderedDict[_Key, _Tombstone] = collections.OrderedDict()
        self._buffered = 0
        self._now = -math.inf
        #: Refused frames and abandoned transfers, by reason.
        self.drops: collections.Counter[Reason] = collections.Counter()
        #: Messages delivered.
        self.completed = 0

    # -- observation -----------------------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        """Fragment data held right now (never above ``limits.max_buffered_bytes``)."""
        return self._buffered

    @property
    def active_transfers(self) -> int:
        """Transfers in progress (never above ``limits.max_transfers``)."""
        return len(self._transfers)

    @property
    def tombstones(self) -> int:
        """Remembered finished transfers (never above ``limits.max_tombstones``)."""
        return len(self._tombstones)

    def counters(self) -> dict[str, int]:
        """Drops by reason name plus delivery and occupancy figures, for monitors and reports."""
        out = {reason.value: n for reason, n in self.drops.items()}
        out.update(completed=self.completed, active=len(self._transfers), buffered_bytes=self._buffered)
        return out

    def transfers_of(self, sender: int) -> int:
        """Transfers in progress for one sender (never above ``limits.max_transfers_per_sender``)."""
        return self._per_sender.get(sender, 0)

    # -- input -----------------------------------------------------------------------------

    def feed(self, can_id: int, data: bytes | bytearray | memoryview, now: float) -> list[ReassembledMessage]:
        """Take one frame's data field at time ``now``; return the messages it completed (0 or 1).

        Expiry runs first, so a fragment arriving after its transfer's deadline finds it gone.
        """
        now = self._advance(now)
        self.expire(now)
        try:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise VerificationError(Reason.MALFORMED, f"frame data must be bytes, not {type(data).__name__}")
            if not isinstance(can_id, int) or not 0 <= can_id <= EXTENDED_ID_MAX:
                raise VerificationError(Reason.MALFORMED, f"{can_id!r} is not a CAN identifier")
            done = self._accept(can_id, bytes(data), now)
        except VerificationError as exc:
            self._count(can_id, exc)
            return []
        return [done] if done is not None else []

    def expire(self, now: float) -> int:
        """Abandon transfers past their deadlines (counted as ``TIMEOUT``); return how many."""
        now = self._advance(now)
        lim = self.limits
        late = [
            key
            for key, t in self._transfers.items()
            if now - t.last_progress > lim.gap_timeout or now - t.started > lim.transfer_timeout
        ]
        for key in late:
            t = self._transfers[key]
            self._finish(key, _Ending.GONE, now)
            self._count(t.can_id, VerificationError(Reason.TIMEOUT, f"transfer {t.transfer_id} timed out"))
        # Tombstones are kept in insertion order with one TTL, so the oldest expire first.
        while self._tombstones:
            key, tomb = next(iter(self._tombstones.items()))
            if tomb.until >= now:
                break
            del self._tombstones[key]
        return len(late)

    # -- internals -------------------------------------------------------------------------

    def _advance(self, now: float) -> float:
        # A clock that steps back must not extend deadlines or revive tombstones: hold the latest.
        if not math.isfinite(now):
            raise ConfigError(f"clock value {now!r} is not a finite number")
        self._now = max(self._now, float(now))
        return self._now

    def _count(self, can_id: int, exc: VerificationError) -> None:
        self.drops[exc.reason] += 1
        if self._on_drop is not None:
            self._on_drop(can_id, exc)

    def _accept(self, can_id: int, data: bytes, now: float) -> ReassembledMessage | None:
        lim = self.limits
        if len(data) > lim.mtu:
            raise VerificationError(Reason.MALFORMED, f"{len(data)}-byte frame exceeds the mtu {lim.mtu}")
        if len(data) < HEADER_LEN:
            raise VerificationError(Reason.MALFORMED, "frame shorter than the fragment header")
        word = int.from_bytes(data[:HEADER_LEN], "big")
        tid, index = word >> _TID_SHIFT, word & _INDEX_MASK
        total: int | None = None
        if index == 0:
            if len(data) < FIRST_HEADER_LEN:
                raise VerificationError(Reason.MALFORMED, "first fragment lacks the total length")
            total = int.from_bytes(data[HEADER_LEN:FIRST_HEADER_LEN], "big")
            if total > lim.max_message_size:
                raise VerificationError(Reason.OVERSIZED, f"announced {total} bytes > {lim.max_message_size}")
            body = data[FIRST_HEADER_LEN:]
        else:
            if _offset(index, lim.mtu) >= lim.max_stream:
                raise VerificationError(Reason.OVERSIZED, f"fragment index {index} lies past the size limit")
            body = data[HEADER_LEN:]
        if not body:
            raise VerificationError(Reason.MALFORMED, "fragment carries no data")

        key = (can_id, tid)
        tomb = self._tombstones.get(key)
        if tomb is not None:
            if index != 0 or data == tomb.first_frame:
                raise VerificationError(tomb.ending.value, f"late fragment {index} of transfer {tid}")
            del self._tombstones[key]  # a new fragment 0: the sender reuses the transfer id

        sender = self._sender_of(can_id)
        t = self._transfers.get(key)
        if t is None:
            if len(self._transfers) >= lim.max_transfers:
                raise VerificationError(Reason.EXHAUSTED, "too many transfers in progress")
            if self._per_sender[sender] >= lim.max_transfers_per_sender:
                raise VerificationError(Reason.RATE_LIMITED, f"sender {sender:#x} has too many transfers")
        elif index in t.fragments:
            raise VerificationError(Reason.DUPLICATE, f"fragment {index} of transfer {tid} again")
        if self._buffered + len(body) > lim.max_buffered_bytes:
            if t is not None:
                self._finish(key, _Ending.GONE, now)
            raise VerificationError(Reason.EXHAUSTED, "reassembly buffer full")

        if t is None:
            t = _Transfer(can_id=can_id, sender=sender, transfer_id=tid, started=now, last_progress=now)
            self._transfers[key] = t
            self._per_sender[sender] += 1
        t.fragments[index] = body
        t.nbytes += len(body)
        self._buffered += len(body)
        t.last_progress = now
        if total is not None:
            t.total, t.first_frame = total, data

        if t.total is None:
            return None
        problem = self._check_lengths(t, only=None if total is not None else index)
        if problem:
            self._finish(key, _Ending.GONE, now)
            raise VerificationError(Reason.MALFORMED, problem)
        if len(t.fragments) < fragment_count(t.total, lim.mtu):
            return None
        return self._complete(key, t, now)

    def _check_lengths(self, t: _Transfer, only: int | None) -> str:
        """Check buffered fragments against the known total; trim the last one's padding."""
        assert t.total is not None
        mtu = self.limits.mtu
        stream = t.total + CHECK_LEN
        count = fragment_count(t.total, mtu)
        for index in t.fragments if only is None else (only,):
            if index >= count:
                return f"fragment {index} beyond the {count} a {t.total}-byte message needs"
            want = min(_capacity(index, mtu), stream - _offset(index, mtu))
            got = len(t.fragments[index])
            if got < want or (got > want and index != count - 1):
                return f"fragment {index} carries {got} bytes, expected {want}"
            if got > want:  # padding of the last frame
                t.fragments[index] = t.fragments[index][:want]
                t.nbytes -= got - want
                self._buffered -= got - want
        return ""

    def _complete(self, key: _Key, t: _Transfer, now: float) -> ReassembledMessage:
        assert t.total is not None
        stream = b"".join(t.fragments[i] for i in range(len(t.fragments)))
        message, check = stream[: t.total], stream[t.total :]
        if zlib.crc32(message).to_bytes(CHECK_LEN, "big") != check:
            self._finish(key, _Ending.GONE, now)
            raise VerificationError(Reason.HASH_MISMATCH, f"CRC of transfer {t.transfer_id} does not match")
        self._finish(key, _Ending.DONE, now)
        self.completed += 1
        return ReassembledMessage(
            can_id=t.can_id,
            sender=t.sender,
            transfer_id=t.transfer_id,
            payload=message,
            started=t.started,
            completed=now,
        )

    def _finish(self, key: _Key, ending: _Ending, now: float) -> None:
        t = self._transfers.pop(key)
        self._buffered -= t.nbytes
        self._per_sender[t.sender] -= 1
        if self._per_sender[t.sender] <= 0:
            del self._per_sender[t.sender]
        if self.limits.max_tombstones == 0:
            return
        self._tombstones.pop(key, None)
        self._tombstones[key] = _Tombstone(ending, now + self.limits.tombstone_ttl, t.first_frame)
        while len(self._tombstones) > self.limits.max_tombstones:
            self._tombstones.popitem(last=False)


# ---------------------------------------------------------------------------------------------
# ISO-TP (point to point)
# ---------------------------------------------------------------------------------------------

def isotp_address(txid: int, rxid: int, *, extended: bool | None = None) -> isotp.Address:
    """Normal addressing with explicit IDs; 29-bit when ``extended`` or when an ID needs it.

    We use plain "normal" addressing with IDs taken from our own layouts rather than ISO-TP's
    normal-fixed 0x18DA<TA><SA> IDs: 0x18DA.... has bit 17 set and bits 18-19 = 10, which the seed
    layout would read as "encrypted, pairing tier".
    """
    if extended is None:
        extended = max(txid, rxid) > STANDARD_ID_MAX
    limit = EXTENDED_ID_MAX if extended else STANDARD_ID_MAX
    for name, value in (("txid", txid), ("rxid", rxid)):
        if not 0 <= value <= limit:
            raise ConfigError(f"{name} {value:#x} does not fit a {'29' if extended else '11'}-bit ID")
    if txid == rxid:
        raise ConfigError("txid and rxid must differ (each direction needs its own ID)")
    mode = isotp.AddressingMode.Normal_29bits if extended else isotp.AddressingMode.Normal_11bits
    return isotp.Address(mode, txid=txid, rxid=rxid)


def isotp_params(*, fd: bool = False, **overrides: Any) -> dict[str, Any]:
    """The ISO-TP parameters modbatt uses (see docs); ``overrides`` win.

    ``stmin`` and ``blocksize`` are what *this* end asks for in its flow-control frames: 0 and 0
    (send everything, no further flow control) suit the pack controller and match the one
    flow-control frame per message that ``wiretime.isotp_frame_lengths`` counts. A module MCU with
    small receive buffers asks for more in its own flow-control frames, and can-isotp obeys.
    Timeouts are ISO 15765-2's N_Bs / N_Cr defaults (1000 ms). Padding to full frames keeps wire
    time independent of content.
    """
    params: dict[str, Any] = {
        "stmin": 0,
        "blocksize": 0,
        "tx_padding": PAD_BYTE,
        "tx_data_length": 64 if fd else CLASSIC_MTU,
        # Pad short frames to 8 bytes (longer FD frames to the next valid length), as
        # wiretime.isotp_frame_lengths(padded=True) counts them.
        "tx_data_min_length": CLASSIC_MTU,
        "can_fd": fd,
        "bitrate_switch": fd,
        "max_frame_size": MAX_PAYLOAD,
        "rx_flowcontrol_timeout": 1000,
        "rx_consecutive_frame_timeout": 1000,
        "wftmax": 0,
        "blocking_send": True,
    }
    params.update(overrides)
    return params
