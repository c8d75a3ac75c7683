"""Figures of the latency model: budgets per level and platform, the design space, one transaction's steps.

Every function returns a matplotlib ``Figure`` built from the tables of :mod:`modbatt.sim`
(:func:`~modbatt.sim.latency_table`, :func:`~modbatt.sim.design.design_space`,
:func:`~modbatt.sim.design.breakdown`), so a notebook is a call and a
:func:`~modbatt.workbench.results.save_figure`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..sim.design import SHORT

__all__ = ["budget_heatmap_figure", "bus_load_figure", "latency_breakdown_figure", "latency_figure"]

_WIRE, _QUEUE, _COMPUTE, _PACK, _MODULE, _BUDGET = "#4c9be8", "#b0b7bf", "#f28e2b", "#f28e2b", "#b6671c", "#d62728"


def _log_floor(values: Sequence[float]) -> float:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    return 10 ** math.floor(math.log10(min(positive) / 3)) if positive else 1e-3


def latency_figure(table: Any) -> Figure:
    """Latency per level and bus, one panel per level × platform: wire (incl. queueing) and compute side by side.

    ``table`` is :func:`modbatt.sim.latency_table` (a DataFrame). Bars stand next to each other,
    not stacked, on a log axis that reaches down to the smallest value, so seconds of compute on
    one platform never hide a tenth of a millisecond on the wire; each panel's legend names its
    own budget, and a black tick marks the total.
    """
    levels = list(dict.fromkeys(table["level"]))
    platforms = list(dict.fromkeys(table["platform"]))
    buses = list(dict.fromkeys(table["bus"]))
    fig, grid = plt.subplots(len(levels), len(platforms), figsize=(5.4 * len(platforms), 2.7 * len(levels)),
                             squeeze=False, sharex=True)  # fmt: skip
    xs = range(len(buses))
    for r, level in enumerate(levels):
        rows = table[table["level"] == level]
        budget = float(rows["budget_ms"].iloc[0])
        values = list(rows["wire_ms"] + rows["queue_ms"]) + list(rows["compute_ms"]) + [budget]
        bottom, top = _log_floor(values), max(values) * 40  # headroom for the legend
        for c, platform in enumerate(platforms):
            ax = grid[r][c]
            sub = rows[rows["platform"] == platform].set_index("bus").reindex(buses)
            wire, compute = sub["wire_ms"] + sub["queue_ms"], sub["compute_ms"].clip(lower=bottom * 1.01)
            ax.bar([x - 0.2 for x in xs], wire, 0.4, color=_WIRE)
            ax.bar([x + 0.2 for x in xs], compute, 0.4, color=_COMPUTE)
            ax.scatter(list(xs), sub["latency_ms"], marker="_", s=260, color="black", zorder=3)
            ax.axhline(budget, color=_BUDGET, ls="--", lw=1.2, label=f"budget {budget:g} ms")
            ax.set_yscale("log")
            ax.set_ylim(bottom, top)
            ax.grid(True, axis="y", which="major", alpha=0.3)
            cpus = f"{sub['pack_cpu'].iloc[0]} / {sub['module_cpu'].iloc[0]}"
            ax.set_title(f"{level} · {platform}" + (f" ({cpus})" if platform != sub["pack_cpu"].iloc[0] else ""),
                         fontsize=9)  # fmt: skip
            ax.legend(fontsize=7, loc="upper right", framealpha=0.9)
            if c == 0:
                ax.set_ylabel("ms (log)")
            ax.set_xticks(list(xs), buses, rotation=30, ha="right", fontsize=7)
    fig.suptitle("Latency per level on an idle bus: wire time and compute side by side, against each level's budget",
                 fontsize=10, y=0.995)  # fmt: skip
    fig.legend(handles=[Patch(color=_WIRE, label="wire (incl. queueing)"),
                        Patch(color=_COMPUTE, label="compute (pack + module)"),
                        Line2D([], [], color="black", marker="_", ls="", markersize=12, label="total latency")],
               loc="upper center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 0.978))  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.955))
    return fig


def budget_heatmap_figure(table: Any, *, modules: int | None = None, stuffing: str | None = None) -> Figure:
    """Budgets met (0-4) per protocol × platform (rows) and bus (columns) at one pack size.

    ``table`` is :func:`modbatt.sim.design.design_space`; ``modules`` (default: the largest in the
    table) and ``stuffing`` (default: the first) pick the slice. Each cell names the budgets whose
    latency is over; "overload" marks a point whose bus or CPUs cannot carry the routine traffic
    (no budget counts as met there).
    """
    modules = int(table["modules"].max()) if modules is None else modules
    stuffing = str(table["stuffing"].iloc[0]) if stuffing is None else stuffing
    t = table[(table["modules"] == modules) & (table["stuffing"] == stuffing)]
    rows = list(dict.fromkeys(zip(t["protocol"], t["platform"], strict=True)))
    buses = list(dict.fromkeys(t["bus"]))
    grid = [[math.nan] * len(buses) for _ in rows]
    notes = [[""] * len(buses) for _ in rows]
    for (proto, plat, bus), g in t.groupby(["protocol", "platform", "bus"], sort=False):
        i, j = rows.index((proto, plat)), buses.index(bus)
        grid[i][j] = int(g["met"].sum())
        missed = [SHORT[lv] for lv in g["level"][~g["latency_ok"]]]
        overload = "overload" if not bool(g["sustainable"].all()) else ""
        notes[i][j] = "\n".join(x for x in (", ".join(missed).replace("L5 telemetry", "L5 tel"), overload) if x)
    fig, ax = plt.subplots(figsize=(1.55 * len(buses) + 3.2, 0.62 * len(rows) + 1.8))
    cmap = ListedColormap(["#d73027", "#fc8d59", "#fee08b", "#91cf60", "#1a9850"])
    im = ax.imshow(grid, cmap=cmap, norm=BoundaryNorm([-0.5, 0.5, 1.5, 2.5, 3.5, 4.5], cmap.N), aspect="auto")
    for i in range(len(rows)):
        for j in range(len(buses)):
            if not math.isnan(grid[i][j]):
                ax.text(j, i, f"{grid[i][j]}/4\n{notes[i][j]}", ha="center", va="center", fontsize=6.2,
                        color="white" if grid[i][j] == 0 else "black")  # fmt: skip
    ax.set_xticks(range(len(buses)), buses, fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{p} · {pl}" for p, pl in rows], fontsize=8)
    ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
    for i in range(1, len(rows)):
        if rows[i][0] != rows[i - 1][0]:
            ax.axhline(i - 0.5, color="black", lw=1.5)
    bar = fig.colorbar(im, ax=ax, ticks=range(5), fraction=0.03, pad=0.02)
    bar.set_label("budgets met (of L3, L5 telemetry, L5 ack, L6)", fontsize=8)
    ax.set_title(f"Budgets met per protocol profile and platform (pack / module CPU), {modules} modules, "
                 f"{stuffing}-case bit stuffing; cells name the budgets over latency", fontsize=9)  # fmt: skip
    fig.tight_layout()
    return fig


def latency_breakdown_figure(steps: Mapping[str, Sequence[Mapping[str, Any]]], budgets_ms: Mapping[str, float], *,
                             title: str) -> Figure:  # fmt: skip
    """One panel per level: its steps in order on a time axis (compute per side, wire, queueing) and its budget.

    ``steps`` maps a level to the rows of :func:`modbatt.sim.design.breakdown`; ``budgets_ms`` maps
    it to its budget.
    """
    levels = list(steps)
    heights = [max(len(steps[lv]), 2) for lv in levels]
    fig, axes = plt.subplots(len(levels), 1, figsize=(11.5, 0.24 * sum(heights) + 1.2 * len(levels)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)  # fmt: skip
    for ax, level in zip((a for row in axes for a in row), levels, strict=True):
        rows, t = list(steps[level]), 0.0
        for y, r in enumerate(rows):
            if r["kind"] == "compute":
                ax.barh(y, r["compute_ms"], left=t, color=_PACK if r["actor"] == "pack" else _MODULE, height=0.7)
                t += r["compute_ms"]
            else:
                ax.barh(y, r["queue_ms"], left=t, color=_QUEUE, height=0.7)
                ax.barh(y, r["wire_ms"], left=t + r["queue_ms"], color=_WIRE, height=0.7)
                t += r["queue_ms"] + r["wire_ms"]
        labels = [f"{r['actor']}: {r['what']}" + (f" ({r['frames']} fr.)" if r["frames"] else "") for r in rows]
        ax.set_yticks(range(len(rows)), labels, fontsize=6.5)
        ax.invert_yaxis()
        budget = budgets_ms[level]
        ax.axvline(budget, color=_BUDGET, ls="--", lw=1.2)
        ax.set_xlim(0, max(t, budget) * 1.08)
        ax.set_title(f"{level}: {t:.2f} ms of {budget:g} ms", fontsize=9, loc="left")
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(handles=[Patch(color=_PACK, label="compute, pack"), Patch(color=_MODULE, label="compute, module"),
                           Patch(color=_QUEUE, label="queueing"), Patch(color=_WIRE, label="wire"),
                           Line2D([], [], color=_BUDGET, ls="--", label=f"budget {budget:g} ms")],
                  fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # fmt: skip
    axes[-1][0].set_xlabel("ms from the first step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def bus_load_figure(summaries: Sequence[Mapping[str, Any]]) -> Figure:
    """Offered bus load and worst queueing delay of a pack per bus (``PackLoadResult.summary`` rows), side by side."""
    names = [s["bus"] for s in summaries]
    first = summaries[0]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    loads = [100 * s["analytic_load"] for s in summaries]
    colours = ["#d62728" if v > 100 else "#f28e2b" if v > 70 else "#59a14f" for v in loads]
    ax.bar(names, loads, color=colours)
    ax.axhline(100, color="#2c3e50", ls="--", lw=1, label="bus capacity")
    for x, v in enumerate(loads):
        ax.text(x, v + max(loads) * 0.02, f"{v:.0f} %", ha="center", fontsize=8)
    ax.set_ylim(0, max(max(loads), 100) * 1.15)
    ax.set_ylabel(f"offered load (% of the bus, {first['stuffing']}-case stuffing)", fontsize=8)
    ax.set_title("Offered load", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax2.bar(names, [s["worst_queue_ms"] for s in summaries], color=colours)
    ax2.set_yscale("log")
    ax2.set_ylabel("worst queueing delay of one frame (ms, log)", fontsize=8)
    ax2.set_title("Worst queueing delay", fontsize=9)
    for a in (ax, ax2):
        a.tick_params(axis="x", labelrotation=30, labelsize=8)
        a.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"{first['modules']}-module pack at the documented rates, {first.get('protocol', 'seed')} profile, "
                 f"{first['duration_s']:g} s simulated (red: above the bus capacity, queues grow without bound)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    return fig
