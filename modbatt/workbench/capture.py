"""Offline decoding of a recorded capture: ``modbatt decode``.

:func:`decode_capture` reads a log (any format of :mod:`modbatt.transport.recording`), runs every
frame through a :class:`~modbatt.transport.decoding.FrameDecoder` (reassembly, decryption with an
entity key store, the cleartext view) and returns the decrypted units. From them:

* :meth:`DecodedCapture.rows` is a tidy table, one row per physical value (time, node, function,
  direction, tier, message, signal, value, unit), for pandas, CSV or Parquet;
* :meth:`DecodedCapture.plain_frames` is the capture in clear: each decrypted unit as one frame
  on its cleartext-view identifier (the unit's identifier at tier NONE), which the cleartext-view
  DBC (``modbatt-plain.dbc``) describes, so ``cantools decode``/``cantools plot`` and SavvyCAN
  read it. A unit longer than 8 bytes goes out as a CAN FD frame; variable units that no fixed
  layout describes (signed CBOR, firmware blocks) are counted and left out.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can

from ..can.functions import FUNCTIONS, RESYNC_FUNCTIONS
from ..can.ids import SEED_LAYOUT
from ..can.payloads import payload_of
from ..can.wiretime import frame_length
from ..errors import ConfigError
from ..model.tier import Tier
from ..transport import recording
from ..transport.decoding import Decryptor, FrameDecoder, UnitReport

__all__ = ["TABLE_SUFFIXES", "DecodedCapture", "DecodedUnit", "decode_capture", "write_output"]

#: Output suffixes that get the table of physical values; every log suffix gets the plaintext log.
TABLE_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class DecodedUnit:
    """One unit of the capture with the time and channel of the frame that completed it."""

    timestamp: float
    channel: Any
    unit: UnitReport


@dataclass
class DecodedCapture:
    """Everything :func:`decode_capture` found."""

    frames: int = 0
    units: list[DecodedUnit] = field(default_factory=list)
    problems: Counter[str] = field(default_factory=Counter)  # why units stayed unreadable

    @property
    def decrypted(self) -> list[DecodedUnit]:
        return [u for u in self.units if u.unit.plaintext is not None]

    def rows(self) -> list[dict[str, Any]]:
        """One row per physical value of every unit the cleartext view describes."""
        out = []
        for item in self.decrypted:
            unit = item.unit
            if unit.plain_signals is None:
                continue
            fn = FUNCTIONS.get(unit.fields.function)
            base = {
                "timestamp": item.timestamp,
                "node": unit.fields.node,
                "function": fn.name if fn else f"0x{unit.fields.function:03x}",
                "direction": "C2N" if unit.fields.direction == 0 else "N2C",
                "tier": unit.fields.tier.label if unit.fields.tier is not None else None,
                "message": unit.plain_name,
            }
            for name, value in unit.plain_signals.items():
                numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                out.append(
                    base
                    | {
                        "signal": name,
                        "value": float(value) if numeric else str(value),
                        "unit": unit.plain_units.get(name, ""),
                    }
                )
        return out

    def plain_frames(self) -> list[can.Message]:
        """The decrypted units as frames on their cleartext-view identifiers, in capture order."""
        frames = []
        for item in self.decrypted:
            unit = item.unit
            if unit.fields.function in RESYNC_FUNCTIONS:
                continue  # link control, not application data: it has no cleartext view
            payload = payload_of(unit.fields.function, unit.fields.direction)
            assert unit.plaintext is not None
            if payload is None or payload.length is None or len(unit.plaintext) != payload.length:
                self.problems["variable or off-catalog unit, not in the plaintext log"] += 1
                continue
            fd = payload.length > 8
            data = unit.plaintext.ljust(frame_length(payload.length, fd=fd), b"\0")
            can_id = SEED_LAYOUT.encode(dataclasses.replace(unit.fields, tier=Tier.NONE))
            frames.append(
                can.Message(
                    timestamp=item.timestamp, arbitration_id=can_id, is_extended_id=True, data=data, is_fd=fd,
                    channel=item.channel,
                )
            )  # fmt: skip
        return frames


def decode_capture(
    log: str | os.PathLike[str], decryptor: Decryptor | None = None, *, frames: Iterable[can.Message] | None = None
) -> DecodedCapture:
    """Decode every frame of ``log`` (or of ``frames``) and keep each unit that completes."""
    decoder = FrameDecoder("seed", decryptor=decryptor)
    out = DecodedCapture()
    notes = recording.ReaderNotes()
    for msg in recording.read_log(log, notes=notes) if frames is None else frames:
        out.frames += 1
        for unit in decoder.decode(msg).units:
            out.units.append(DecodedUnit(float(msg.timestamp), msg.channel, unit))
            if unit.decrypt_note:
                out.problems[unit.decrypt_note.split(":")[0]] += 1
            elif unit.plain_error:
                out.problems["cleartext does not match the catalog"] += 1
    if notes.count:
        out.problems["problems the log reader reported"] += notes.count
    return out


def write_output(capture: DecodedCapture, path: str | os.PathLike[str]) -> tuple[Path, int]:
    """Write the table (.csv, .parquet) or the plaintext log (any log suffix); returns (path, rows or frames)."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        import pandas as pd

        from .sweep import write_table

        table = pd.DataFrame(
            capture.rows(),
            columns=["timestamp", "node", "function", "direction", "tier", "message", "signal", "value", "unit"],
        )
        write_table(table, target)
        return target, len(table)
    recording.log_format(target)
    frames = capture.plain_frames()
    if suffix == ".trc" and any(f.is_fd for f in frames):
        raise ConfigError(
            f"{os.fspath(target)!r}: .trc cannot hold the CAN FD frames of units over 8 bytes; use .log, .asc or .blf"
        )
    return target, recording.write_log(target, frames, channel="cleartext")
