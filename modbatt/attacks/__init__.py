"""Attack, fault and fuzz suite (layer 6, beside the workbench): every attacker family against the real components.

Scenarios are functions ``run(seed: int | None = None) -> Outcome`` registered by name; each ends
in a classified :class:`Outcome` ("blocked", "detected", "limit" or "succeeded") whose counters
come from the attacked components' own rejection counters. Run them from Python
(``modbatt.attacks.run("replay_can_pairing")``), the command line (``modbatt attack NAME``) or a
notebook (``scenario`` and ``profile`` papermill parameters: ``run_parameter(scenario, seed, profile)``, then
``matrix(...)`` and :func:`modbatt.attacks.figure.attack_matrix_figure`). See docs/threat-model.md.
"""

from __future__ import annotations

# isort: off
from . import bus, channel, extraction, insiders, ledger_tamper, malleability, mitm, recovery, replay, spoofing  # noqa: F401  (each family module registers its scenarios on import)
from . import profiles  # noqa: F401  (the binding tier under each protocol profile)
from . import escalations, garbage, grants, hostile_files  # noqa: F401  (hostile input; imported last so its rows follow each family's first ones)
from . import lifecycle  # noqa: F401  (renewal, gateway, restrictions, shutdown and key-loss rows)
# isort: on
from .outcome import OUTCOMES, Outcome, attempt
from .registry import FAMILIES, SCENARIOS, Scenario, cases, get, matrix, names, run, run_all, run_parameter

__all__ = [
    "FAMILIES",
    "OUTCOMES",
    "SCENARIOS",
    "Outcome",
    "Scenario",
    "attempt",
    "cases",
    "get",
    "matrix",
    "names",
    "run",
    "run_all",
    "run_parameter",
]
