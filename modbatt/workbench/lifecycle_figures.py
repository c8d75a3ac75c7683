"""Life-cycle figures: the pack security state diagram, drawn from the transition table.

The graph is built from :data:`modbatt.protocol.pack_state.TRANSITIONS` and nothing else, so the
figure cannot drift from the machine. Only the placement of the states is chosen here (the
upstream chain on one row, the exits around it); no graphviz is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import matplotlib.pyplot as plt
import networkx as nx
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from ..protocol.pack_state import ENERGISABLE, TRANSITIONS, Action, PackEvent, PackState, Transition

__all__ = ["STATE_POSITIONS", "lifecycle_trust_graphs_figure", "state_diagram", "state_diagram_figure"]

#: Where each state is drawn: the upstream chain 0-4 left to right, the exits above and below.
STATE_POSITIONS: Final[Mapping[PackState, tuple[float, float]]] = {
    PackState.FACTORY: (0.0, 0.0),
    PackState.BOUND: (2.2, 0.0),
    PackState.PAIRED: (4.6, 0.0),
    PackState.ACTIVE: (6.8, 0.0),
    PackState.VALIDATED: (9.0, 0.0),
    PackState.ESCALATED: (7.9, 2.2),
    PackState.EXPIRED: (5.7, -2.2),
    PackState.KEY_LOST: (2.2, -3.0),
    PackState.REVOKED: (0.0, -2.0),
}
_REGION = (3.7, -3.0, 6.2, 6.0)  # x, y, width, height of the box around the energisable states
_ENERGISED_COLOUR = "#f28e2b"
_SAFE_COLOUR = "#9ecae9"
_ISOLATE_COLOUR = "#c0392b"
_NODE_SIZE = 2600


def state_diagram(transitions: Mapping[tuple[PackState, PackEvent], Transition] = TRANSITIONS) -> nx.MultiDiGraph:
    """States as nodes (``energisable``, upstream ``number``), one edge per transition (``event``, ``actions``)."""
    g = nx.MultiDiGraph()
    for state in PackState:
        g.add_node(state.value, energisable=state in ENERGISABLE, number=state.number)
    for (source, event), t in transitions.items():
        g.add_edge(source.value, t.target.value, key=event.value, event=event.value,
                   actions=tuple(a.value for a in t.actions))  # fmt: skip
    return g


def _shared_exits(g: nx.MultiDiGraph) -> dict[tuple[str, str], tuple[str, ...]]:
    """(event, target) -> actions, for events that take *every* energisable state to one target alike."""
    energisable = {n for n in g.nodes if g.nodes[n]["energisable"]}
    seen: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}
    for u, v, d in g.edges(data=True):
        if u in energisable and v not in energisable:
            seen.setdefault((d["event"], v), {})[u] = d["actions"]
    return {k: next(iter(m.values())) for k, m in seen.items() if set(m) == energisable and len(set(m.values())) == 1}


def state_diagram_figure(g: nx.MultiDiGraph | None = None, *, title: str = "Pack security states") -> Figure:
    """Draw :func:`state_diagram`.

    Energisable states are orange inside one box; an exit that every energisable state takes alike
    is drawn once, from the box. Edges are grouped per state pair and labelled with their events;
    red edges carry ``isolate`` (the pack opens its contactors). Self-loops are listed under
    their state.
    """
    g = state_diagram() if g is None else g
    pos = {s.value: STATE_POSITIONS[PackState(s.value)] for s in PackState}
    fig, ax = plt.subplots(figsize=(13, 7.5))
    x0, y0, w, h = _REGION
    ax.add_patch(FancyBboxPatch((x0, y0), w, h, boxstyle="round,pad=0.1", fc="#fff4e6", ec=_ENERGISED_COLOUR))
    ax.text(x0 + 0.1, y0 + h - 0.1, "energisable: accepts an authenticated emergency shutdown", fontsize=8,
            va="top", color="#a65e00")  # fmt: skip
    colours = [_ENERGISED_COLOUR if g.nodes[n]["energisable"] else _SAFE_COLOUR for n in g.nodes]
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, node_size=_NODE_SIZE, edgecolors="#333333")
    labels = {n: (f"{g.nodes[n]['number']}\n{n}" if g.nodes[n]["number"] is not None else n) for n in g.nodes}
    nx.draw_networkx_labels(g, pos, labels=labels, ax=ax, font_size=9)
    shared = _shared_exits(g)
    grouped: dict[tuple[str, str], tuple[list[str], set[str]]] = {}
    for u, v, d in g.edges(data=True):
        if g.nodes[u]["energisable"] and (d["event"], v) in shared:
            continue
        events, actions = grouped.setdefault((u, v), ([], set()))
        events.append(d["event"])
        actions.update(d["actions"])
    loops: dict[str, list[str]] = {}
    for (u, v), (events, actions) in sorted(grouped.items()):
        if u == v:
            loops.setdefault(u, []).extend(events)
            continue
        isolate = Action.ISOLATE.value in actions
        rad = 0.2 if (v, u) in grouped else 0.06
        nx.draw_networkx_edges(g, pos, edgelist=[(u, v)], ax=ax, node_size=_NODE_SIZE, arrowsize=14, width=1.2,
                               edge_color=_ISOLATE_COLOUR if isolate else "#444444",
                               connectionstyle=f"arc3,rad={rad}")  # fmt: skip
        (x1, y1), (x2, y2) = pos[u], pos[v]
        mx, my = (x1 + x2) / 2 + rad * (y2 - y1) * 0.5, (y1 + y2) / 2 - rad * (x2 - x1) * 0.5
        _label(ax, mx, my, "\n".join(sorted(events)), isolate)
    for (event, target), actions in sorted(shared.items()):
        tx, ty = pos[target]
        start = (x0, min(ty + 0.6, y0 + h))  # leave the box level with the target: no crossings
        isolate = Action.ISOLATE.value in actions
        ax.add_patch(FancyArrowPatch(start, (tx, ty), arrowstyle="-|>", mutation_scale=14, shrinkB=24, lw=1.6,
                                     color=_ISOLATE_COLOUR if isolate else "#444444"))  # fmt: skip
        lx, ly = start[0] + 0.4 * (tx - start[0]), start[1] + 0.4 * (ty - start[1])
        _label(ax, lx, ly + 0.18, f"{event}\n(from every energisable state)", isolate)
    for state, events in loops.items():
        x, y = pos[state]
        ax.text(x, y - 0.5, "↺ " + ", ".join(sorted(events)), fontsize=6.5, ha="center", va="top", color="#555555")
    ax.set_title(f"{title}: generated from the transition table (red: the transition isolates the pack)")
    ax.set_axis_off()
    ax.margins(0.06)
    fig.tight_layout()
    return fig


def _label(ax: Any, x: float, y: float, text: str, isolate: bool) -> None:
    ax.text(x, y, text + (" [isolate]" if isolate else ""), fontsize=6.5, ha="center", va="center",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})  # fmt: skip


def lifecycle_trust_graphs_figure(graphs: Sequence[tuple[str, nx.MultiGraph]], *, columns: int = 3) -> Figure:
    """The trust graph after each step of a life (``(step name, graph)`` pairs), one panel per step."""
    from .figures import trust_graph_figure, trust_graph_legend

    rows = -(-len(graphs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows + 0.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(graphs):
            name, g = graphs[i]
            trust_graph_figure(g, title=f"{i + 1}. {name}", ax=ax, legend=False)
        else:
            ax.set_axis_off()
    handles = trust_graph_legend(g for _, g in graphs)
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
