"""The scenario registry: one name per attack, runnable from Python, the CLI and notebooks.

Each attacker family module registers its scenarios with :func:`scenario`; importing
:mod:`modbatt.attacks` imports every family, so :data:`SCENARIOS` is complete. A scenario is a
function ``run(seed: int | None = None) -> Outcome``. ``expected`` is what the design promises
(outcome and reason); the tests and the matrix compare what happened against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError
from ..transport.canbus import BusConfig
from .outcome import Outcome, OutcomeKind

__all__ = ["FAMILIES", "SCENARIOS", "Scenario", "get", "matrix", "names", "run", "run_all", "run_parameter", "scenario"]


@dataclass(frozen=True)
class Scenario:
    """One registered attack: its function, family, one-line summary and the promised result."""

    name: str
    family: str
    summary: str
    expected_outcome: OutcomeKind
    expected_reason: str
    fn: Callable[[int | None], Outcome]

    def __call__(self, seed: int | None = None) -> Outcome:
        return self.fn(seed)


#: Every scenario by name, in registration order (family modules are imported by the package).
SCENARIOS: dict[str, Scenario] = {}
#: The order families are listed and run in (the threat model's order of attackers).
FAMILIES = ("replay", "mitm", "spoofing", "downgrade", "bus", "extraction", "insider")


def scenario(
    name: str, *, family: str, expected: tuple[OutcomeKind, str], summary: str = ""
) -> Callable[[Callable[[int | None], Outcome]], Callable[[int | None], Outcome]]:
    """Register ``fn`` as scenario ``name`` (the first docstring line is the default summary)."""

    def register(fn: Callable[[int | None], Outcome]) -> Callable[[int | None], Outcome]:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        text = summary or (fn.__doc__ or "").strip().splitlines()[0]
        SCENARIOS[name] = Scenario(name, family, text, expected[0], expected[1], fn)
        return fn

    return register


def names() -> list[str]:
    """Scenario names, family by family (:data:`FAMILIES`), in registration order within a family."""
    rank = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(SCENARIOS, key=lambda n: rank.get(SCENARIOS[n].family, len(rank)))


def get(name: str) -> Scenario:
    """The scenario called ``name``; :class:`ConfigError` listing the names if there is none."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ConfigError(f"no attack scenario {name!r}; `modbatt attack --list` shows them") from None


def run(name: str, seed: int | None = None) -> Outcome:
    """Run one scenario by name."""
    return get(name)(seed)


def run_all(seed: int | None = None, *, only: list[str] | None = None) -> dict[str, Outcome]:
    """Run every scenario (or those in ``only``) in registration order: ``{name: Outcome}``."""
    return {name: run(name, seed) for name in (only or names())}


def run_parameter(
    scenario: str = "all", seed: int | None = None, *, bus: BusConfig | None = None
) -> dict[str, Outcome]:
    """What a notebook's ``scenario`` parameter selects: ``"all"``, one name, or names joined by commas.

    ``bus`` runs the CAN scenarios with the attacker as a node on that bus
    (:func:`~modbatt.attacks.onbus.attack_bus`); each of their outcomes then counts the frames
    the bus carried (``bus_frames``). ``None`` runs everything in process.
    """
    if scenario.strip() == "all":
        chosen = names()
    else:
        chosen = [name.strip() for name in scenario.split(",") if name.strip()]
        for name in chosen:
            get(name)  # a ConfigError naming the problem before anything runs
    if bus is None:
        return run_all(seed, only=chosen)
    from .onbus import attack_bus

    out: dict[str, Outcome] = {}
    with attack_bus(bus) as wire:
        assert wire is not None
        for name in chosen:
            wire.tap.settle()
            mark = wire.tap.mark()
            outcome = run(name, seed)
            wire.tap.settle()
            frames = len(wire.tap.since(mark))
            if frames:
                outcome = dataclasses.replace(outcome, counters={**outcome.counters, "bus_frames": frames})
            out[name] = outcome
    return out


def matrix(results: dict[str, Outcome]) -> dict[str, dict[str, object]]:
    """The JSON outcome matrix ``{name: {"outcome", "reason", "counters"}}`` (what ``--all --json`` prints)."""
    return {name: outcome.to_json() for name, outcome in results.items()}
