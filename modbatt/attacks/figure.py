"""The outcome matrix as a figure: scenarios × outcome, coloured (for notebooks and the threat model)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matplotlib.figure import Figure

from .outcome import OUTCOMES, Outcome

__all__ = ["OUTCOME_COLOURS", "attack_matrix_figure"]

#: Colour per outcome: green blocked, blue detected, amber documented limit, red succeeded.
OUTCOME_COLOURS: Mapping[str, str] = {
    "blocked": "#2e7d32",
    "detected": "#1565c0",
    "limit": "#f9a825",
    "succeeded": "#c62828",
}


def _outcome_of(value: Any) -> tuple[str, str]:
    if isinstance(value, Outcome):
        return value.outcome, value.reason
    return str(value["outcome"]), str(value["reason"])


def attack_matrix_figure(results: Mapping[str, Outcome | Mapping[str, Any]], *, title: str = "") -> Figure:
    """One row per scenario, one column per outcome; the cell of the outcome that happened is filled
    and labelled with its reason. ``results`` is ``run_all()`` or the ``--all --json`` matrix."""
    names = list(results)
    fig = Figure(figsize=(9.5, 0.32 * len(names) + 1.4))
    ax = fig.add_subplot()
    for row, name in enumerate(names):
        outcome, reason = _outcome_of(results[name])
        col = OUTCOMES.index(outcome)  # type: ignore[arg-type]
        ax.add_patch(_cell(col, row, OUTCOME_COLOURS[outcome]))
        ink = "black" if outcome == "limit" else "white"  # amber needs dark text
        ax.text(col + 0.5, row + 0.5, reason, ha="center", va="center", fontsize=6.5, color=ink, clip_on=True)
    ax.set_xlim(0, len(OUTCOMES))
    ax.set_ylim(len(names), 0)
    ax.set_xticks([i + 0.5 for i in range(len(OUTCOMES))], OUTCOMES)
    ax.xaxis.tick_top()
    ax.set_yticks([i + 0.5 for i in range(len(names))], names, fontsize=7.5)
    ax.set_xticks(range(len(OUTCOMES) + 1), minor=True)
    ax.set_yticks(range(len(names) + 1), minor=True)
    ax.grid(which="minor", color="#dddddd", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_title(title or f"Attack outcome matrix ({len(names)} scenarios)", fontsize=10, pad=24)
    fig.tight_layout()
    return fig


def _cell(col: int, row: int, colour: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((col + 0.04, row + 0.08), 0.92, 0.84, color=colour)
