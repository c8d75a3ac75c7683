"""Spec figures: the trust graph, security overhead per tier, certificates, validation and escalation.

The latency model's figures are in :mod:`modbatt.workbench.latency_figures`.

Every function returns a matplotlib ``Figure`` built from package data only, so a notebook is a
call and a :func:`~modbatt.workbench.results.save_figure`. Without a display matplotlib picks
its Agg backend by itself, so figures render headless.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
from matplotlib.figure import Figure

from ..can.overhead import message_cost
from ..can.wiretime import CLASSIC, FD, BusProfile
from ..encoding import strict_loads
from ..model.tier import Tier

__all__ = [
    "certificate_anatomy_figure",
    "escalation_timeline_figure",
    "module_label",
    "tier_overhead_figure",
    "trust_graph",
    "trust_graph_figure",
    "trust_graph_legend",
    "validation_levels_figure",
    "whole_pack_trust_graph",
]

_TIER_COLOURS = {"none": "#9e9e9e", "exchange": "#4c9be8", "pairing": "#f28e2b", "binding": "#59a14f"}


def trust_graph(entries: Iterable[bytes | Mapping[str, Any]]) -> nx.MultiGraph:
    """Entities and their relationships from ledger entries (bytes as stored, or decoded maps).

    Edges: ``binding`` (one per binding; ``revoked`` when a revocation follows, ``rebound`` when it
    supersedes a revoked binding), ``pairing`` (``completed`` after a completion statement,
    ``revoked`` after a pairing revocation or with its binding, and ``renewed`` too when a renewal
    replaced it: docs/lifecycle.md §6; ``mode`` and ``profile`` from the issue statement),
    ``witness`` (level-2 statements)
    and ``validation`` (with the ``level`` reached) where validation statements exist.
    """
    g = nx.MultiGraph()
    bindings: dict[str, tuple[str, str]] = {}
    pairings: dict[str, tuple[str, str, str]] = {}
    renewed: set[Any] = set()
    for raw in entries:
        e = strict_loads(raw) if isinstance(raw, (bytes, bytearray)) else dict(raw)
        kind = e.get("kind")
        if kind == "binding":
            a = e["entity_a"]["access_data"]["device_id"]
            b = e["entity_b"]["access_data"]["device_id"]
            for side, dev in (("entity_a", a), ("entity_b", b)):
                g.add_node(dev, protocol=e[side]["access_data"]["protocol"])
            bindings[e["binding_id"]] = (a, b)
            g.add_edge(a, b, key=e["binding_id"], relation="binding", revoked=False,
                       rebound=bool(e.get("supersedes")))  # fmt: skip
        elif kind == "revocation" and e.get("binding_id") in bindings:
            a, b = bindings[e["binding_id"]]
            g.edges[a, b, e["binding_id"]]["revoked"] = True
            for pa, pb, key in pairings.values():  # pairings relying on a revoked binding are void
                if g.edges[pa, pb, key].get("binding_id") == e["binding_id"]:
                    g.edges[pa, pb, key]["revoked"] = True
        elif kind == "pairing_issued" and e.get("binding_id") in bindings:
            a, b = bindings[e["binding_id"]]
            pairings[e["pairing_id"]] = (a, b, e["pairing_id"])
            g.add_edge(a, b, key=e["pairing_id"], relation="pairing", completed=False, revoked=False,
                       mode=e.get("controller_mode"), profile=e.get("profile"),
                       binding_id=e["binding_id"])  # fmt: skip
        elif kind in ("pairing_completed", "pairing_revoked") and e.get("pairing_id") in pairings:
            a, b, key = pairings[e["pairing_id"]]
            g.edges[a, b, key]["completed" if kind == "pairing_completed" else "revoked"] = True
            if kind == "pairing_revoked" and key in renewed:
                g.edges[a, b, key]["renewed"] = True  # retired because its renewal took over
        elif kind == "pairing_renewed":
            renewed.add(e.get("renews"))
        elif kind == "validation" and e.get("binding_id") in bindings:
            a, b = bindings[e["binding_id"]]
            relation = "witness" if e.get("level") == 2 else "validation"
            g.add_edge(a, b, key=f"L{e.get('level')}:{len(g.edges)}", relation=relation, level=e.get("level"))
    return g


# Edge kinds in drawing order: (legend label, colour, line style, width).
_EDGE_STYLES = {
    "binding": ("binding", "#2c3e50", "solid", 2.4),
    "rebound": ("re-bound (supersedes a revoked binding)", "#1f9e89", "solid", 2.4),
    "binding-revoked": ("revoked binding", "#d62728", "solid", 2.0),
    "pairing": ("pairing", "#f28e2b", (0, (5, 3)), 1.6),
    "pairing-renewed": ("renewed pairing (retired)", "#9e9e9e", (0, (5, 3)), 1.2),
    "pairing-revoked": ("void pairing (binding revoked)", "#d62728", (0, (5, 3)), 1.2),
    "witness": ("witness (level 2)", "#7b4fa0", (0, (6, 2, 1, 2)), 1.4),
    "validation": ("validation (highest level labelled)", "#59a14f", (0, (1, 2)), 1.6),
}


def _edge_kind(d: Mapping[str, Any]) -> str:
    relation = d["relation"]
    if relation == "binding":
        return "binding-revoked" if d.get("revoked") else "rebound" if d.get("rebound") else "binding"
    if relation == "pairing":
        return "pairing-renewed" if d.get("renewed") else "pairing-revoked" if d.get("revoked") else "pairing"
    return str(relation)


def _layout(g: nx.MultiGraph) -> dict[Any, tuple[float, float]]:
    """Hubs (pack controllers) in the middle, everything else on a circle around them."""
    import math

    hubs = sorted(n for n in g.nodes if str(n).startswith("pack"))
    rest = sorted(n for n in g.nodes if n not in hubs)
    pos: dict[Any, tuple[float, float]] = {}
    if len(rest) <= 4:  # a few entities: hubs on the left, the others in a column on the right
        for column, nodes in ((-0.8, hubs), (0.8, rest)):
            for i, node in enumerate(nodes):
                pos[node] = (column, 0.0 if len(nodes) == 1 else 0.8 - 1.6 * i / (len(nodes) - 1))
        return pos
    for i, hub in enumerate(hubs):
        pos[hub] = (0.35 * (i - (len(hubs) - 1) / 2), 0.0)
    for i, node in enumerate(rest):
        angle = math.pi / 2 - 2 * math.pi * i / max(len(rest), 1)
        pos[node] = (math.cos(angle), math.sin(angle))
    return pos


def trust_graph_figure(
    g: nx.MultiGraph,
    *,
    title: str = "Trust graph",
    label: Any = None,
    size: tuple[float, float] | None = None,
    ax: Any = None,
    legend: bool = True,
) -> Figure:
    """Draw a trust graph: one line per relationship, parallel ones bent apart, labels inside the nodes.

    ``label(node) -> str`` shortens node names (default: the device id). The legend lists only
    the edge kinds that are drawn (``legend=False``: none; :func:`trust_graph_legend` makes one
    for several panels). With ``ax`` it draws into that axes (one panel of a larger figure) and
    returns the figure it belongs to.
    """
    from matplotlib.patches import FancyArrowPatch

    n = len(g)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=size or ((8, 4.6) if n <= 3 else (8, 6) if n <= 8 else (11, 10.5)))
    else:
        fig = ax.figure
    pos = _layout(g)
    font = 9 if n <= 8 else 7
    step = 0.15 if n <= 8 else 0.07  # bend of parallel lines, relative to their length
    drawn: set[str] = set()
    by_pair: dict[frozenset[Any], list[tuple[Any, Any, dict[str, Any]]]] = {}
    for u, v, d in g.edges(data=True):
        by_pair.setdefault(frozenset((u, v)), []).append((u, v, d))
    order = list(_EDGE_STYLES)
    for edges in by_pair.values():
        # Validation statements of one pair become one line, labelled with the highest level.
        levels = [int(d.get("level") or 0) for _, _, d in edges if _edge_kind(d) == "validation"]
        kept = [e for e in edges if _edge_kind(e[2]) != "validation"]
        if levels:
            u, v, _ = edges[0]
            kept.append((u, v, {"relation": "validation", "level": max(levels)}))
        kept.sort(key=lambda e: order.index(_edge_kind(e[2])))
        for i, (u, v, d) in enumerate(kept):
            kind = _edge_kind(d)
            a, b = sorted((u, v), key=str)
            rad = 0.0 if i == 0 else (step * ((i + 1) // 2)) * (1 if i % 2 else -1)
            _, colour, style, width = _EDGE_STYLES[kind]
            ax.add_patch(FancyArrowPatch(pos[a], pos[b], arrowstyle="-", connectionstyle=f"arc3,rad={rad}",
                                         color=colour, linestyle=style, linewidth=width, zorder=1,
                                         shrinkA=0, shrinkB=0))  # fmt: skip
            drawn.add(kind)
            if kind == "validation":
                # Midpoint of matplotlib's arc3 quadratic Bezier: chord midpoint + rad/2 x the rotated chord.
                (x1, y1), (x2, y2) = pos[a], pos[b]
                mx, my = (x1 + x2) / 2 + 0.5 * rad * (y2 - y1), (y1 + y2) / 2 - 0.5 * rad * (x2 - x1)
                ax.text(mx, my, f"L{d['level']}", fontsize=font, ha="center", va="center", color=colour, zorder=2,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": colour, "lw": 0.6})  # fmt: skip
    for node, (x, y) in pos.items():
        hub = str(node).startswith("pack")
        text = label(node) if label is not None else str(node)
        ax.text(x, y, text, ha="center", va="center", fontsize=font + (1 if hub else 0), zorder=3,
                fontweight="bold" if hub else "normal",
                bbox={"boxstyle": "round,pad=0.35", "fc": "#fde9c9" if hub else "#dfe9f5", "ec": "#34495e",
                      "lw": 1.0})  # fmt: skip
    handles = _legend_handles(drawn) if legend else []
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=min(3, len(handles)),
                  fontsize=8, frameon=False)  # fmt: skip
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.set_xlim(-1.25, 1.25)
    ax.set_ylim(-1.2, 1.2)
    ax.axis("off")
    if own:
        fig.tight_layout()
    return fig


def _legend_handles(kinds: set[str]) -> list[Any]:
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], color=_EDGE_STYLES[k][1], ls=_EDGE_STYLES[k][2], lw=_EDGE_STYLES[k][3], label=_EDGE_STYLES[k][0])
        for k in _EDGE_STYLES
        if k in kinds
    ]


def trust_graph_legend(graphs: Iterable[nx.MultiGraph]) -> list[Any]:
    """Legend handles for every edge kind in ``graphs`` (one legend for a figure of several panels)."""
    return _legend_handles({_edge_kind(d) for g in graphs for _, _, d in g.edges(data=True)})


def whole_pack_trust_graph(
    modules: int = 31,
    *,
    seed: int | None = None,
    revoked: Sequence[int] = (7, 19),
    rebound: Sequence[int] = (7,),
    witnessed: Sequence[int] | None = None,
) -> nx.MultiGraph:
    """The trust graph of a whole pack, from a real in-memory deployment's ledger.

    The pack controller is bound to and paired with every module; level-2 witness validation
    runs for the ``witnessed`` modules (default: every third); the ``revoked`` modules' bindings are
    revoked (their pairings become void) and the ``rebound`` ones bound again with a fresh grant.
    """
    from ..nodes.inmemory import InMemoryDeployment
    from ..nodes.paired import PairedDeployment
    from ..nodes.validation import run_level

    d = InMemoryDeployment(seed=seed, modules=modules)
    try:
        made = PairedDeployment(d)
        for node_id in d.modules:
            made.bind(node_id)  # one module at a time: each witness statement follows its own pairing
            if node_id in (witnessed if witnessed is not None else range(1, modules + 1, 3)):
                run_level(made.validation(node_id), 2)
        for node_id in revoked:
            d.controller.revoke(made.binding_id(node_id), "module replaced")
        d.clock.advance(60)
        for node_id in rebound:
            d.controller.rebind(made.binding_id(node_id), d.authorize(d.pack, d.modules[node_id]))
        return trust_graph(d.ledger.entries())
    finally:
        d.ledger.close()


def module_label(node: Any) -> str:
    """``module-07`` -> ``M07`` (short labels for a whole pack)."""
    text = str(node)
    return "M" + text.removeprefix("module-") if text.startswith("module-") else text


_TIER_MARKERS = {"none": "o", "exchange": "s", "pairing": "D", "binding": "^"}


def tier_overhead_figure(
    payloads: Sequence[int] = (1, 2, 3, 4, 8, 16, 32, 48, 64, 128, 256),
    profiles: Sequence[BusProfile] = (CLASSIC, FD),
) -> Figure:
    """Bus time per message and goodput per tier and profile (worst-case stuffing, 1 Mbit/s nominal).

    Exchange and pairing use the same frame format, so their curves coincide: pairing is drawn
    as a wide band and exchange as a thin line with hollow markers inside it, and the legend says so.
    """
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for profile, ls in zip(profiles, ("-", "--"), strict=False):
        for tier in Tier:
            costs = [message_cost(tier, profile, n) for n in payloads]
            colour = _TIER_COLOURS[tier.label]
            hollow = tier is Tier.EXCHANGE
            style = {
                "ls": ls, "marker": _TIER_MARKERS[tier.label], "ms": 7 if hollow else 4.5, "color": colour,
                "markerfacecolor": "white" if hollow else colour,
                "lw": 1.2 if hollow else 4.0 if tier is Tier.PAIRING else 2.0,
                "zorder": 3 if hollow else 2,
            }  # fmt: skip
            axes[0].plot(payloads, [c.wire_time_us_worst for c in costs], **style)
            axes[1].plot(payloads, [c.goodput_bytes_per_s / 1000 for c in costs], **style)
    axes[0].set(xscale="log", yscale="log", xlabel="payload bytes", ylabel="bus time per message (µs)",
                title="Wire time per message")  # fmt: skip
    axes[1].set(xscale="log", xlabel="payload bytes", ylabel="goodput (kB/s of bus time)", title="Goodput per tier")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    tiers = [
        Line2D([], [], color=_TIER_COLOURS[t.label], marker=_TIER_MARKERS[t.label],
               lw=4.0 if t is Tier.PAIRING else 1.5,
               markerfacecolor="white" if t is Tier.EXCHANGE else _TIER_COLOURS[t.label],
               label=t.label + (" (= pairing format)" if t is Tier.EXCHANGE else ""))
        for t in Tier
    ]  # fmt: skip
    profiles_legend = [
        Line2D([], [], color="#555555", ls=ls, lw=1.5, label=f"{p.name} ({'FD 1M/5M' if p.fd else 'classic 1M'})")
        for p, ls in zip(profiles, ("-", "--"), strict=False)
    ]
    fig.legend(handles=tiers + profiles_legend, loc="lower center", ncol=6, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))  # fmt: skip
    fig.suptitle("Security overhead per tier: classic CAN (solid) and CAN FD (dashed)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def certificate_anatomy_figure(certificates: Mapping[str, Any]) -> Figure:
    """Bytes per part of pairing certificates (``{label: PairingCertificate}``), stacked."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    parts = ("metadata", "entity_a", "entity_b", "handshake_validation", "signature + framing")
    colours = ("#bab0ac", "#4c9be8", "#76b7b2", "#f28e2b", "#59a14f")
    labels = list(certificates)
    left = [0.0] * len(labels)
    for part, colour in zip(parts, colours, strict=True):
        sizes = []
        for cert in certificates.values():
            total = len(cert.encode())
            known = len(cert.metadata_bytes) + sum(len(v) for v in cert.sections.values())
            sizes.append(
                len(cert.metadata_bytes) if part == "metadata"
                else total - known if part.startswith("signature")
                else len(cert.sections[part])
            )  # fmt: skip
        ax.barh(labels, sizes, left=left, color=colour, label=part)
        left = [a + b for a, b in zip(left, sizes, strict=True)]
    for y, total in enumerate(left):
        ax.text(total + 15, y, f"{int(total)} B", va="center", fontsize=8)
    ax.set_xlim(0, max(left) * 1.12)
    ax.set_xlabel("bytes")
    ax.set_title("Pairing certificate anatomy")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(parts), frameon=False)
    fig.tight_layout()
    return fig


def validation_levels_figure(levels: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Messages, bytes and classic-CAN frames per validation level (from ``run_all_levels``)."""
    keys = sorted(levels, key=int)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    total_bytes = [sum(levels[k]["bytes"]) for k in keys]
    axes[0].bar([f"L{k}" for k in keys], total_bytes, color="#4c9be8")
    axes[0].set(ylabel="bytes on the wire (all messages)", title="Message volume per level")
    names = [f"L{k}" for k in keys]
    if all("wire" in levels[k] for k in keys):
        # Measured on the bus (the tap) beside the model of every message sent over ISO-TP.
        x = np.arange(len(keys))
        bars = (
            ("can_frames", "model: every message over ISO-TP", "#f28e2b"),
            ("model_frames", "model: the units the bus carried", "#edc948"),
            ("frames", "measured on the bus", "#59a14f"),
        )
        for i, (key, label, color) in enumerate(bars):
            values = [levels[k]["can_frames"] if key == "can_frames" else levels[k]["wire"][key] for k in keys]
            axes[1].bar(x + (i - 1) * 0.27, values, 0.27, color=color, label=label)
        axes[1].set_xticks(x, names)
        axes[1].legend(fontsize=8)
    else:
        axes[1].bar(names, [levels[k]["can_frames"] for k in keys], color="#f28e2b")
    axes[1].set(ylabel="classic CAN frames", title="Frames per level")
    for ax in axes:
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def escalation_timeline_figure(events: Sequence[Mapping[str, Any]]) -> Figure:
    """Required validation level over time, with refused escalation attempts marked."""
    if not events:
        raise ValueError("no escalation events to draw")
    t0 = events[0]["t"]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    times, levels = [0.0], [1]
    for e in events:
        if "required_level" in e:
            times.append(e["t"] - t0)
            levels.append(int(e["required_level"]))
    times.append(max(times[-1] * 1.05, times[-1] + 60))
    levels.append(levels[-1])
    ax.step(times, levels, where="post", color="#2c3e50", lw=2, label="required level")
    refused = [(e["t"] - t0, e.get("rejection", "")) for e in events if e.get("event") == "rejected"]
    if refused:
        ax.scatter([t for t, _ in refused], [0.6] * len(refused), marker="x", color="#d62728", zorder=3,
                   label="refused escalation attempt")  # fmt: skip
        # One box lists the refusals in time order, clear of the step line: several happen at once.
        lines = [f"t = {t:.3g} s: {why}" for t, why in refused]
        ax.annotate("refused:\n" + "\n".join(lines), xy=(refused[0][0], 0.6), xytext=(0.22, 0.33),
                    textcoords="axes fraction", fontsize=7.5, color="#d62728", va="center",
                    bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "#d62728", "lw": 0.8},
                    arrowprops={"arrowstyle": "-", "color": "#d62728", "lw": 0.8})  # fmt: skip
    ax.set(xscale="symlog", xlabel="seconds since the first escalation", ylabel="validation level",
           ylim=(0, 7.8), yticks=range(1, 8))  # fmt: skip
    ax.set_title("Escalation: raised on request, refused on abuse, decays after its hold")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
