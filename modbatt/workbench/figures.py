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
from matplotlib.figure import Figure

from ..can.overhead import message_cost
from ..can.wiretime import CLASSIC, FD, BusProfile
from ..encoding import strict_loads
from ..model.tier import Tier

__all__ = [
    "certificate_anatomy_figure",
    "escalation_timeline_figure",
    "tier_overhead_figure",
    "trust_graph",
    "trust_graph_figure",
    "validation_levels_figure",
]

_TIER_COLOURS = {"none": "#9e9e9e", "exchange": "#4c9be8", "pairing": "#f28e2b", "binding": "#59a14f"}


def trust_graph(entries: Iterable[bytes | Mapping[str, Any]]) -> nx.MultiGraph:
    """Entities and their relationships from ledger entries (bytes as stored, or decoded maps).

    Edges: ``binding`` (one per binding, ``revoked`` when a revocation follows), ``pairing``
    (``completed`` after a completion statement, ``revoked`` after a pairing revocation),
    ``witness`` and ``validation`` (with the ``level`` reached) where validation statements exist.
    """
    g = nx.MultiGraph()
    bindings: dict[str, tuple[str, str]] = {}
    pairings: dict[str, tuple[str, str, str]] = {}
    for raw in entries:
        e = strict_loads(raw) if isinstance(raw, (bytes, bytearray)) else dict(raw)
        kind = e.get("kind")
        if kind == "binding":
            a = e["entity_a"]["access_data"]["device_id"]
            b = e["entity_b"]["access_data"]["device_id"]
            for side, dev in (("entity_a", a), ("entity_b", b)):
                g.add_node(dev, protocol=e[side]["access_data"]["protocol"])
            bindings[e["binding_id"]] = (a, b)
            g.add_edge(a, b, key=e["binding_id"], relation="binding", revoked=False)
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
                       mode=e.get("controller_mode"), binding_id=e["binding_id"])  # fmt: skip
        elif kind in ("pairing_completed", "pairing_revoked") and e.get("pairing_id") in pairings:
            a, b, key = pairings[e["pairing_id"]]
            g.edges[a, b, key]["completed" if kind == "pairing_completed" else "revoked"] = True
        elif kind == "validation" and e.get("binding_id") in bindings:
            a, b = bindings[e["binding_id"]]
            relation = "witness" if e.get("level") == 2 else "validation"
            g.add_edge(a, b, key=f"L{e.get('level')}:{len(g.edges)}", relation=relation, level=e.get("level"))
    return g


def trust_graph_figure(g: nx.MultiGraph, *, title: str = "Trust graph") -> Figure:
    """Draw a trust graph: bindings solid, pairings dashed, revoked red, validations labelled by level."""
    fig, ax = plt.subplots(figsize=(8, 6))
    pos = nx.circular_layout(sorted(g.nodes)) if len(g) > 2 else nx.spring_layout(g, seed=1)
    if len(g) > 2:
        hubs = [n for n in g.nodes if n.startswith("pack")]
        if hubs:  # pack in the middle, modules around it
            pos = nx.shell_layout(g, nlist=[hubs, sorted(n for n in g.nodes if n not in hubs)])
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color="#dfe9f5", edgecolors="#34495e", node_size=900)
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=7)
    styles = {
        "binding": ("solid", 2.5),
        "pairing": ("dashed", 1.5),
        "validation": ("dotted", 1.0),
        "witness": ("dashdot", 1.0),
    }
    for rel, (style, width) in styles.items():
        for revoked in (False, True):
            edges = [
                (u, v) for u, v, d in g.edges(data=True) if d["relation"] == rel and bool(d.get("revoked")) == revoked
            ]
            if edges:
                colour = "#d62728" if revoked else {"binding": "#2c3e50", "pairing": "#f28e2b"}.get(rel, "#59a14f")
                nx.draw_networkx_edges(g, pos, edgelist=edges, ax=ax, style=style, width=width, edge_color=colour,
                                       connectionstyle="arc3,rad=0.08" if rel != "binding" else "arc3")  # fmt: skip
    levels: dict[tuple[str, str], int] = {}
    for u, v, d in g.edges(data=True):
        if d.get("level"):
            levels[(u, v)] = max(levels.get((u, v), 0), int(d["level"]))
    if levels:
        nx.draw_networkx_edge_labels(g, pos, {k: f"L{v}" for k, v in levels.items()}, ax=ax, font_size=7)
    from matplotlib.lines import Line2D

    ax.legend(
        handles=[
            Line2D([], [], color="#2c3e50", lw=2.5, label="binding"),
            Line2D([], [], color="#f28e2b", lw=1.5, ls="--", label="pairing"),
            Line2D([], [], color="#59a14f", lw=1, ls=":", label="validation / witness"),
            Line2D([], [], color="#d62728", lw=2, label="revoked"),
        ],
        loc="lower right",
        fontsize=8,
    )
    ax.set_title(title)
    ax.axis("off")
    return fig


def tier_overhead_figure(
    payloads: Sequence[int] = (1, 2, 3, 4, 8, 16, 32, 48, 64, 128, 256),
    profiles: Sequence[BusProfile] = (CLASSIC, FD),
) -> Figure:
    """Bus time per message and goodput per tier and profile (worst-case stuffing, 1 Mbit/s nominal)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for profile, ls in zip(profiles, ("-", "--"), strict=False):
        for tier in Tier:
            costs = [message_cost(tier, profile, n) for n in payloads]
            colour = _TIER_COLOURS[tier.label]
            axes[0].plot(payloads, [c.wire_time_us_worst for c in costs], ls, marker="o", ms=3, color=colour,
                         label=f"{tier.label} ({profile.name})")  # fmt: skip
            axes[1].plot(payloads, [c.goodput_bytes_per_s / 1000 for c in costs], ls, marker="o", ms=3, color=colour)
    axes[0].set(xscale="log", yscale="log", xlabel="payload bytes", ylabel="bus time per message (µs)",
                title="Wire time per message")  # fmt: skip
    axes[1].set(xscale="log", xlabel="payload bytes", ylabel="goodput (kB/s of bus time)", title="Goodput per tier")
    axes[0].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Security overhead per tier: classic CAN (solid) and CAN FD 1M/5M (dashed)")
    fig.tight_layout()
    return fig


def certificate_anatomy_figure(certificates: Mapping[str, Any]) -> Figure:
    """Bytes per part of pairing certificates (``{label: PairingCertificate}``), stacked."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
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
        ax.text(total + 10, y, f"{int(total)} B", va="center", fontsize=8)
    ax.set_xlabel("bytes")
    ax.set_title("Pairing certificate anatomy")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def validation_levels_figure(levels: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Messages, bytes and classic-CAN frames per validation level (from ``run_all_levels``)."""
    keys = sorted(levels, key=int)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    total_bytes = [sum(levels[k]["bytes"]) for k in keys]
    axes[0].bar([f"L{k}" for k in keys], total_bytes, color="#4c9be8")
    axes[0].set(ylabel="bytes on the wire (all messages)", title="Message volume per level")
    axes[1].bar([f"L{k}" for k in keys], [levels[k]["can_frames"] for k in keys], color="#f28e2b")
    axes[1].set(ylabel="classic CAN frames (ISO-TP)", title="Frames per level")
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
    for i, (t, why) in enumerate(refused):
        ax.scatter([t], [0.6], marker="x", color="#d62728", zorder=3)
        ax.annotate(why, (t, 0.6), textcoords="offset points", xytext=(4, 6 + 10 * i), fontsize=7, color="#d62728")
    ax.set(xscale="symlog", xlabel="seconds since the first escalation", ylabel="validation level",
           ylim=(0, 7.8), yticks=range(1, 8))  # fmt: skip
    ax.set_title("Escalation: raised on request, refused on abuse, decays after its hold")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
