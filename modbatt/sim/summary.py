"""The delivery figures of a run as JSON, one shape for ``modbatt sim`` and the soak (docs/delivery.md §4)."""

from __future__ import annotations

from typing import Any

from .pack import SimStats

__all__ = ["command_summary"]


def command_summary(stats: SimStats) -> dict[str, Any]:
    """Critical commands sent, acknowledged, applied, given up, with the two counts that must be 0.

    ``acknowledged`` counts distinct commands acknowledged as applied or refused in order
    (``acks_received``); ``applied`` distinct commands some module applied (0 when the run kept no
    applied record); ``unsettled`` commands neither acknowledged nor given up when the run ended.
    """
    return {
        "sent": stats.commands_sent,
        "acknowledged": stats.acks_received,
        "refused": stats.refused,
        "applied": len(stats.applied),
        "acknowledged_not_applied": stats.acknowledged_not_applied,
        "applied_twice": stats.applied_twice,
        "given_up": dict(sorted(stats.gave_up.items())),
        "superseded": dict(sorted(stats.superseded.items())),
        "unsettled": stats.lost_acknowledged,
        "out_of_order": stats.misordered_acknowledged,
        "retransmissions": stats.retransmissions,
        "repeats_not_applied": stats.repeats,
        "latency_ms": stats.latency_percentiles(),
    }
