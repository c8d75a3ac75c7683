"""Identifier-layout and freshness vectors (docs/can-frames.md §1 and §3)."""

from __future__ import annotations

from typing import Any

from ...can.ids import LAYOUTS, CanIdFields, IdLayout
from ...crypto.freshness import ReplayWindow, reconstruct
from ...errors import Reason, VerificationError
from ...model.tier import Tier
from ._format import VectorFile

__all__ = ["check_case", "generate", "generate_freshness"]


def _fields_json(f: CanIdFields, layout: IdLayout) -> dict[str, Any]:
    names = {bf.name for bf in layout.fields}
    out = {n: getattr(f, n) for n in ("priority", "direction", "function", "node") if n in names}
    out["tier"] = None if f.tier is None else f.tier.label
    return out


_EXAMPLES: dict[str, list[tuple[str, CanIdFields]]] = {
    "seed": [
        ("all zero: clear broadcast", CanIdFields(tier=Tier.NONE)),
        ("docs example: function 0x42, node 3, priority 6, dir 1, exchange",
         CanIdFields(function=0x42, node=3, priority=6, direction=1, tier=Tier.EXCHANGE)),
        ("pairing tier", CanIdFields(function=0x1FF, node=0x1F, priority=0, direction=0, tier=Tier.PAIRING)),
        ("binding tier, every field at its maximum", CanIdFields(function=0x1FF, node=0xFF, priority=7, direction=1,
                                                                 tier=Tier.BINDING)),
    ],
    "legacy-app": [
        ("pack 0, message 0x10", CanIdFields(function=0x10, node=0)),
        ("pack 3, message 0xff", CanIdFields(function=0xFF, node=3)),
    ],
    "legacy-module": [
        ("MODULE_HARDWARE of module 1", CanIdFields(function=0x501, node=1)),
        ("base 0x7ff, module 0xff", CanIdFields(function=0x7FF, node=0xFF)),
    ],
    "j1939": [
        ("clear, PGN 0xFF10 without bits 17-19", CanIdFields(function=0x1FF, node=0x10, priority=6, tier=Tier.NONE)),
        ("exchange tier", CanIdFields(function=0x7FFF, node=0x01, priority=3, tier=Tier.EXCHANGE)),
        ("binding tier", CanIdFields(function=0x100, node=0xFE, priority=0, tier=Tier.BINDING)),
    ],
}  # fmt: skip
_BAD: dict[str, list[tuple[str, int, str]]] = {
    "seed": [
        ("reserved bit 21 set", 1 << 21, "ReservedBits"),
        ("reserved bit 25 set", 1 << 25, "ReservedBits"),
        ("flag 1 with level 00", 1 << 17, "FlagLevelMismatch"),
        ("flag 0 with level 01", 1 << 18, "FlagLevelMismatch"),
        ("flag 0 with level 11", 3 << 18, "FlagLevelMismatch"),
        ("30 bits", 1 << 29, "OutOfRange"),
    ],
    "legacy-app": [
        ("diag frame 0x220: pack field below its range", 0x220, "OutOfRange"),
        ("12 bits", 1 << 11, "OutOfRange"),
    ],
    "legacy-module": [("bit 8 set (must be zero)", (0x501 << 18) | (1 << 8), "ReservedBits")],
    "j1939": [
        ("level 111: the addendum's own 0x18FF1000", 0x18FF1000, "ReservedLevel"),
        ("level 100", 4 << 17, "ReservedLevel"),
    ],
}


def generate() -> VectorFile:
    vf = VectorFile(
        "modbatt-can-id-layouts",
        [
            "CAN identifier layouts (docs/spec/ids): fields -> identifier (encode) and identifier -> fields",
            "(decode). Each layout lists its bit fields as (lsb, width) segments, least significant segment first,",
            "and an offset added on decoding. Invalid identifiers decode to the reason given.",
        ],
        {
            "ReservedBits": "bits the layout requires to be zero are set",
            "FlagLevelMismatch": "the encryption flag disagrees with the level",
            "ReservedLevel": "a level value the layout reserves",
            "OutOfRange": "the identifier or a field is outside its range",
        },
    )
    for name, layout in LAYOUTS.items():
        g = vf.group(
            "IdLayoutTest",
            layout=name,
            idBits=layout.id_bits,
            tierSignal=layout.tier_signal.value,
            fields=[
                {"name": f.name, "segments": [list(s) for s in f.segments], "offset": f.offset} for f in layout.fields
            ],
            reservedMask=layout.reserved_mask,
        )
        for comment, fields in _EXAMPLES[name]:
            g.add(comment, fields=_fields_json(fields, layout), canId=layout.encode(fields))
        for comment, can_id, flag in _BAD[name]:
            g.add(comment, "invalid", reason=Reason.MALFORMED, flags=(flag,), canId=can_id)
    return vf


def generate_freshness() -> VectorFile:
    vf = VectorFile(
        "modbatt-freshness",
        [
            "Freshness (docs/spec/frames): ReconstructTest rebuilds a full freshness value from its low `bits`",
            "given the highest accepted value `latest` (-1 before the first) and how far back a value may lie",
            "(`behind`). ReplayWindowTest feeds values to a window of `windowSize` one by one: each step says",
            "whether the value is accepted (then marked seen) or rejected with a reason (nothing changes).",
        ],
        {"Wrap": "the truncated counter wrapped", "Behind": "the value lies behind the latest"},
    )
    g = vf.group("ReconstructTest")
    for comment, args, flags in (
        ("first frame", (0, 8, -1, 64), ()),
        ("next value", (6, 8, 5, 64), ()),
        ("wraps past 255", (4, 8, 255, 64), ("Wrap",)),
        ("300 from 299", (44, 8, 299, 64), ("Wrap",)),
        ("behind but reconstructable", (35, 8, 40, 64), ("Behind",)),
        ("63 behind: lowest candidate", (169, 8, 1000, 64), ("Behind",)),
        ("192 ahead: highest candidate", (168, 8, 1000, 64), ("Wrap",)),
        ("SecOC rule (behind 0): strictly newer", (10, 8, 10, 0), ("Wrap",)),
        ("4-bit counter", (3, 4, 30, 4), ("Wrap",)),
    ):
        truncated, bits, latest, behind = args
        g.add(comment, flags=flags, truncated=truncated, bits=bits, latest=latest, behind=behind,
              value=reconstruct(truncated, bits, latest, behind=behind))  # fmt: skip
    for size, values in (
        (32, [0, 1, 1, 5, 3, 3, 40, 8, 9, 39, 72, 41, 100]),
        (64, [10, 9, 10, 74, 10, 11, 73, 200, 137, 136]),
    ):
        g = vf.group("ReplayWindowTest", windowSize=size)
        window = ReplayWindow(size)
        steps = []
        for v in values:
            try:
                window.accept(v)
                steps.append({"value": v, "outcome": "accepted"})
            except VerificationError as exc:
                steps.append({"value": v, "outcome": exc.reason.value})
        g.add(f"sequence in a window of {size}", steps=steps)
    g = vf.group("ReplayWindowTest", windowSize=32, synced=False)
    g.add("restarted receiver refuses everything", steps=[{"value": v, "outcome": "stale"} for v in (0, 1, 1000)])
    return vf


def check_case(group: dict[str, Any], case: dict[str, Any]) -> None:
    kind = group["type"]
    if kind == "IdLayoutTest":
        layout = LAYOUTS[group["layout"]]
        try:
            fields = layout.decode(case["canId"])
        except VerificationError as exc:
            assert case["result"] == "invalid" and exc.reason.value == case["reason"], case["tcId"]
            return
        assert case["result"] == "valid", case["tcId"]
        assert _fields_json(fields, layout) == case["fields"], case["tcId"]
        tier = case["fields"]["tier"]
        named = {k: v for k, v in case["fields"].items() if k != "tier"}
        assert layout.encode(CanIdFields(**named, tier=None if tier is None else Tier[tier.upper()])) == case["canId"]
        return
    if kind == "ReconstructTest":
        got = reconstruct(case["truncated"], case["bits"], case["latest"], behind=case["behind"])
        assert got == case["value"], case["tcId"]
        return
    if kind == "ReplayWindowTest":
        window = (
            ReplayWindow(group["windowSize"])
            if group.get("synced", True)
            else ReplayWindow.unsynced(group["windowSize"])
        )
        for step in case["steps"]:
            try:
                window.accept(step["value"])
                outcome = "accepted"
            except VerificationError as exc:
                outcome = exc.reason.value
            assert outcome == step["outcome"], (case["tcId"], step)
        return
    raise AssertionError(f"unknown group type {kind}")
