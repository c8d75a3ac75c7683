"""Tables for the spec notebooks and docs: ID layouts, collisions, frame formats, costs.

Each function returns plain rows (a list of dicts) so notebooks show them with pandas and the
runner can save them as JSON.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..can.catalog import catalog_id_rows
from ..can.ids import LAYOUTS, MODULE_NODES, IdLayout, find_collisions
from ..can.overhead import message_cost
from ..can.secured import frame_format
from ..can.wiretime import CLASSIC, FD, BusProfile
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..model.tier import Tier

__all__ = [
    "collision_rows",
    "collision_summary",
    "cost_rows",
    "cpu_cost_rows",
    "frame_format_rows",
    "layout_rows",
    "outcome_rows",
]


def _bits(segments: Iterable[tuple[int, int]]) -> str:
    parts = []
    for lsb, width in sorted(segments, reverse=True):
        parts.append(f"{lsb + width - 1}..{lsb}" if width > 1 else f"{lsb}")
    return ", ".join(parts)


def layout_rows(layouts: Sequence[IdLayout] | None = None) -> list[dict[str, Any]]:
    """One row per field of each ID layout: name, bit positions, width."""
    rows = []
    for layout in layouts or LAYOUTS.values():
        for field in sorted(layout.fields, key=lambda f: -max(lsb for lsb, _ in f.segments)):
            rows.append({"layout": layout.name, "id_bits": layout.id_bits, "field": field.name,
                         "bits": _bits(field.segments), "width": field.width})  # fmt: skip
    return rows


def collision_rows(layout: IdLayout, *, module_ids: Iterable[int] = MODULE_NODES) -> list[dict[str, Any]]:
    """Every conflict between ``layout`` and the legacy catalog (modules 0x01-0x1F, pack 0)."""
    rows = catalog_id_rows(module_ids=module_ids)
    return [
        {
            "kind": c.kind,
            "message": c.message,
            "frame_id": f"0x{c.frame_id:X}",
            "bits": list(c.bits),
            "other": c.other,
            "detail": c.detail,
        }
        for c in find_collisions(layout, rows)
    ]


def collision_summary(layouts: Sequence[IdLayout] | None = None, *, module_ids: Iterable[int] = (1,)) -> list[dict]:
    """Collisions per layout and kind against the legacy catalog."""
    out = []
    ids = list(module_ids)
    for layout in layouts or LAYOUTS.values():
        counts = collections.Counter(c["kind"] for c in collision_rows(layout, module_ids=ids))
        out.append(
            {"layout": layout.name, **{k: counts.get(k, 0) for k in ("security-bits", "reserved-bits", "alias")}}
        )
    return out


def _tier_profiles() -> list[tuple[Tier, ProtocolProfile]]:
    """Every tier once, the binding tier once per protocol profile (the only tier that differs)."""
    return [(t, p) for t in Tier for p in (ProtocolProfile if t is Tier.BINDING else (DEFAULT_PROFILE,))]


def frame_format_rows(profiles: Sequence[BusProfile] = (CLASSIC, FD)) -> list[dict[str, Any]]:
    """Header, trailer, payload room and forgery odds per bus profile and tier (binding: per protocol profile)."""
    rows = []
    for profile in profiles:
        for tier, protocol in _tier_profiles():
            fmt = frame_format(tier, profile, protocol)
            odds = fmt.forgery_odds_log2
            rows.append({"bus": profile.name, "tier": tier.label,
                         "profile": protocol.value if tier is Tier.BINDING else "any",
                         "header_bytes": fmt.header_bytes,
                         "trailer_bytes": fmt.trailer_bytes, "room_per_frame": fmt.room,
                         "freshness_bits_on_wire": fmt.fv_bits,
                         "forgery_odds_per_try": "-" if odds is None else f"2^{odds}"})  # fmt: skip
    return rows


def cost_rows(payload_bytes: int = 8, profiles: Sequence[BusProfile] = (CLASSIC, FD)) -> list[dict[str, Any]]:
    """Wire cost of one ``payload_bytes`` message per bus profile and tier (binding: per protocol profile)."""
    return [message_cost(t, p, payload_bytes, protocol).as_row() for p in profiles for t, protocol in _tier_profiles()]


def cpu_cost_rows(*, include_host: bool = True) -> list[dict[str, Any]]:
    """Per-operation CPU costs of each platform of the latency model, with their sources."""
    from ..sim.cpu import platforms

    rows = []
    for name, platform in platforms().items():
        if name == "HOST" and not include_host:
            continue
        for side, profile in (("pack", platform.pack), ("module", platform.module)):
            for op, cost in sorted(profile.ops.items()):
                rows.append({"platform": name, "side": side, "chip": profile.chip, "operation": op,
                             "fixed_ms": round(cost.fixed * 1e3, 4), "per_block_us": round(cost.per_block * 1e6, 3),
                             "published": cost.published, "source": cost.source})  # fmt: skip
    return rows


def outcome_rows(results: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Each attack scenario's outcome and reason, without its counters.

    What a tracked results file keeps: the counters behind a verdict can depend on the machine
    and the checkout (the stored-output search counts the files present), while the verdict does
    not. ``modbatt attack --all --json`` and the executed notebook show the counters.
    """
    return {name: {"outcome": str(o.outcome), "reason": str(o.reason)} for name, o in sorted(results.items())}
