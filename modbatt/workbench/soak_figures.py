"""The soak's figure (docs/delivery.md §6): delivery, latency per class and memory over time.

Built from :meth:`modbatt.sim.soak.SoakReport.to_dict`, so a notebook is a call and a
:func:`~modbatt.workbench.results.save_figure`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["save_soak_figure", "soak_figure"]


def soak_figure(summary: Mapping[str, Any]) -> Figure:
    """Three panels: commands sent / acknowledged / applied / given up (with the two counts that
    must be 0), acknowledgement latency percentiles per class (log axis), and resident memory of
    the pack and the median module over time with the fitted slopes."""
    c = summary["commands"]
    fig, (ax_c, ax_l, ax_m) = plt.subplots(1, 3, figsize=(15, 4.2))
    names = ["sent", "acknowledged", "applied", "given up", "ack'd not applied", "applied twice"]
    values = [c["sent"], c["acknowledged"], c["applied"], sum(c["given_up"].values()),
              c["acknowledged_not_applied"], c["applied_twice"]]  # fmt: skip
    colors = ["#4c9be8", "#59a14f", "#59a14f", "#f28e2b", "#d62728", "#d62728"]
    bars = ax_c.bar(range(len(names)), values, color=colors)
    ax_c.bar_label(bars, padding=2)
    ax_c.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax_c.set_title(f"{summary['modules']} modules, {summary['duration_s']:g} s, {summary['restarts']} restarts")
    ax_c.set_ylabel("critical commands")
    lat = summary["latency_ms"]
    classes = sorted(lat)
    for i, q in enumerate(("p50", "p90", "p99")):
        ax_l.bar([x + (i - 1) * 0.27 for x in range(len(classes))], [max(lat[k][q], 0.01) for k in classes], 0.27,
                 label=q)  # fmt: skip
    ax_l.set_yscale("log")
    ax_l.set_xticks(range(len(classes)), [k.replace("_", " ") for k in classes], rotation=20, ha="right")
    ax_l.set_ylabel("submission to acknowledgement (ms)")
    ax_l.set_title(f"latency at {summary['faults']}", fontsize=9)
    ax_l.legend()
    mem = summary["memory"]
    t = [s["t"] for s in mem["samples"]]
    ax_m.plot(t, [s["pack_kib"] / 1024 for s in mem["samples"]], label=f"pack ({mem['pack_kib_per_min']} KiB/min)")
    ax_m.plot(t, [s["module_kib"] / 1024 for s in mem["samples"]],
              label=f"module, median ({mem['module_kib_per_min']} KiB/min)")  # fmt: skip
    ax_m.set_xlabel("seconds")
    ax_m.set_ylabel("resident memory (MiB)")
    ax_m.set_title("memory over time (slope over the second half)")
    ax_m.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_soak_figure(
    fig: Figure, name: str = "soak", figures_dir: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Save a soak figure beside the run's figures, in its ``build/`` folder, never in ``figures/``.

    A soak is measured on this machine, now: its figure differs on every run, so it belongs with
    the executed notebooks (``build/``, ``$MODBATT_OUTPUT_DIR/build``, ``--output DIR/build``), not
    with the tracked figures a reproducible ``modbatt run`` rewrites byte for byte.
    """
    from .results import output_dir, save_figure

    build = output_dir("figures", figures_dir).parent / "build" / "figures"
    return save_figure(fig, name, build, caption=_CAPTION)


_CAPTION = (
    "The soak: critical commands sent, acknowledged, applied and given up with the two counts that must "
    "be 0; acknowledgement latency per class; resident memory of the pack and the median module over time."
)
