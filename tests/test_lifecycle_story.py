"""Notebook 10's life cycle, as the package runs it: every step on the bus the caller names."""

from __future__ import annotations

import uuid

import can
import pytest

from modbatt.transport.canbus import BusConfig
from modbatt.workbench.figures import trust_graph_legend
from modbatt.workbench.lifecycle import STEPS, run_lifecycle
from modbatt.workbench.lifecycle_figures import lifecycle_trust_graphs_figure


def _edges(graph, relation):
    return sorted(d.get("renewed", False) or d.get("revoked", False) for *_, d in graph.edges(data=True)
                  if d["relation"] == relation)  # fmt: skip


@pytest.mark.parametrize("profile", ["seed", "efficient"])
def test_the_life_runs_on_the_named_bus_and_the_trust_graph_follows_each_step(profile):
    channel = f"lifecycle-{uuid.uuid4().hex}"
    watcher = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
    try:
        story = run_lifecycle(bus=BusConfig(interface="virtual", channel=channel), seed=7, profile=profile)
        seen = 0
        while watcher.recv(0.0) is not None:
            seen += 1
    finally:
        watcher.shutdown()
    assert [s.name for s in story.steps] == list(STEPS)
    assert seen == sum(s.frames for s in story.steps) > 60  # every frame really crossed that bus
    by = {s.name: s for s in story.steps}
    assert by["manufacture"].graph.number_of_edges() == 0 and by["manufacture"].graph.number_of_nodes() == 3
    assert _edges(by["binding"].graph, "binding") == [False, False]
    assert _edges(by["renewal"].graph, "pairing") == [False, False, True]  # one retired by its renewal
    # Every pairing of the life, renewal and recovery included, is issued under the profile.
    final = story.steps[-1].graph
    assert {d["profile"] for *_, d in final.edges(data=True) if d["relation"] == "pairing"} == {profile}
    assert by["renewal"].notes["accepted_during_overlap"] == {"old": 1, "new": 1}
    assert by["replacement"].states["module-02"] == "revoked" and by["replacement"].states["module-02-r"] == "active"
    assert by["key loss"].ledger_added == ["validation", "revocation", "binding", "pairing_issued",
                                           "pairing_completed"]  # fmt: skip
    assert ("module-01", "key_loss", "key_lost") in {(t["module"], t["event"], t["to"]) for t in story.transitions}
    assert all(state == "active" for d, state in by["key loss"].states.items() if d != "module-02")
    fig = lifecycle_trust_graphs_figure([(s.name, s.graph) for s in story.steps])
    labels = {h.get_label() for h in trust_graph_legend(s.graph for s in story.steps)}
    assert len(fig.axes) == 6 and "renewed pairing (retired)" in labels
