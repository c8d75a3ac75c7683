"""The scenario registry: one name per attack, runnable from Python, the CLI and notebooks.

Each attacker family module registers its scenarios with :func:`scenario`; importing
:mod:`modbatt.attacks` imports every family, so :data:`SCENARIOS` is complete. A scenario is a
function ``run(seed: int | None = None) -> Outcome``. ``expected`` is what the design promises
(outcome and reason); the tests and the matrix compare what happened against it.

Protocol profiles (docs/profiles.md). A scenario where the profile matters declares the profiles
it runs under (``profiles=("seed", "efficient")``) and takes ``profile`` as a keyword; its
``expected`` may then differ per profile (a mapping). Each (scenario, profile) is one *case* of
the matrix: keyed by the scenario's name under its first profile and ``name@profile`` under the
others. Scenarios that declare no profiles run their deployments under ``seed`` and are one case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile, profile_named
from ..transport.canbus import BusConfig
from .outcome import Outcome, OutcomeKind

__all__ = [
    "FAMILIES",
    "SCENARIOS",
    "Scenario",
    "cases",
    "get",
    "matrix",
    "names",
    "run",
    "run_all",
    "run_parameter",
    "scenario",
]

Expected = tuple[OutcomeKind, str]


@dataclass(frozen=True)
class Scenario:
    """One registered attack: its function, family, one-line summary, profiles and the promised results."""

    name: str
    family: str
    summary: str
    expected_by_profile: Mapping[ProtocolProfile, Expected]
    fn: Callable[..., Outcome]
    profiles: tuple[ProtocolProfile, ...] = (DEFAULT_PROFILE,)

    @property
    def expected_outcome(self) -> OutcomeKind:
        """The promised outcome under the scenario's first profile."""
        return self.expected(self.profiles[0])[0]

    @property
    def expected_reason(self) -> str:
        return self.expected(self.profiles[0])[1]

    @property
    def profile_aware(self) -> bool:
        return len(self.profiles) > 1 or self.profiles != (DEFAULT_PROFILE,)

    def expected(self, profile: ProtocolProfile | str) -> Expected:
        return self.expected_by_profile[self._profile(profile)]

    def case(self, profile: ProtocolProfile | str) -> str:
        """The matrix key of this scenario under ``profile``."""
        profile = self._profile(profile)
        return self.name if profile is self.profiles[0] else f"{self.name}@{profile.value}"

    def _profile(self, profile: ProtocolProfile | str) -> ProtocolProfile:
        chosen = profile_named(profile)
        if chosen not in self.profiles:
            known = ", ".join(p.value for p in self.profiles)
            raise ConfigError(f"scenario {self.name} runs under {known}, not {chosen.value}")
        return chosen

    def __call__(self, seed: int | None = None, profile: ProtocolProfile | str | None = None) -> Outcome:
        chosen = self._profile(profile if profile is not None else self.profiles[0])
        return self.fn(seed, profile=chosen) if self.profile_aware else self.fn(seed)


#: Every scenario by name, in registration order (family modules are imported by the package).
SCENARIOS: dict[str, Scenario] = {}
#: The order families are listed and run in (the threat model's order of attackers).
FAMILIES = ("replay", "mitm", "spoofing", "downgrade", "bus", "extraction", "insider")


def scenario(
    name: str,
    *,
    family: str,
    expected: Expected | Mapping[str, Expected],
    summary: str = "",
    profiles: tuple[str, ...] = (DEFAULT_PROFILE.value,),
) -> Callable[[Callable[..., Outcome]], Callable[..., Outcome]]:
    """Register ``fn`` as scenario ``name`` (the first docstring line is the default summary).

    ``profiles``: the protocol profiles the scenario runs under (``fn`` then takes ``profile``);
    ``expected``: one (outcome, reason) for all of them, or a mapping profile -> (outcome, reason).
    """
    chosen = tuple(ProtocolProfile(p) for p in profiles)
    if isinstance(expected, Mapping):
        by_profile = {ProtocolProfile(p): tuple(e) for p, e in expected.items()}
        if set(by_profile) != set(chosen):
            raise ValueError(f"scenario {name!r}: expected outcomes for {sorted(by_profile)}, runs under {chosen}")
    else:
        by_profile = {p: tuple(expected) for p in chosen}

    def register(fn: Callable[..., Outcome]) -> Callable[..., Outcome]:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        text = summary or (fn.__doc__ or "").strip().splitlines()[0]
        SCENARIOS[name] = Scenario(name, family, text, by_profile, fn, chosen)  # type: ignore[arg-type]
        return fn

    return register


def names() -> list[str]:
    """Scenario names, family by family (:data:`FAMILIES`), in registration order within a family."""
    rank = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(SCENARIOS, key=lambda n: rank.get(SCENARIOS[n].family, len(rank)))


def cases(profile: ProtocolProfile | str | None = None) -> list[tuple[str, Scenario, ProtocolProfile]]:
    """Every (case key, scenario, profile) in matrix order; with ``profile``, that profile's cases
    (and the scenarios that do not depend on a profile)."""
    chosen = profile_named(profile) if profile is not None else None
    out = []
    for name in names():
        spec = SCENARIOS[name]
        for p in spec.profiles:
            if chosen is None or p is chosen or not spec.profile_aware:
                out.append((spec.case(p), spec, p))
    return out


def get(name: str) -> Scenario:
    """The scenario called ``name`` (or of the case ``name@profile``); a :class:`ConfigError` listing
    the names if there is none."""
    base = name.partition("@")[0]
    try:
        return SCENARIOS[base]
    except KeyError:
        raise ConfigError(f"no attack scenario {name!r}; `modbatt attack --list` shows them") from None


def _profile_of(key: str) -> ProtocolProfile | None:
    _, at, profile = key.partition("@")
    return profile_named(profile) if at else None


def run(name: str, seed: int | None = None, profile: ProtocolProfile | str | None = None) -> Outcome:
    """Run one scenario by name or case key (``name@profile``), under ``profile`` if given."""
    return get(name)(seed, profile if profile is not None else _profile_of(name))


def run_all(
    seed: int | None = None, *, only: list[str] | None = None, profile: ProtocolProfile | str | None = None
) -> dict[str, Outcome]:
    """Run every case (or those in ``only``: scenario names or case keys): ``{case key: Outcome}``.

    Without ``profile`` a profile-aware scenario runs once per profile it declares; with one, under it.
    """
    return {key: spec(seed, p) for key, spec, p in _selected(only, profile)}


def _selected(
    only: list[str] | None, profile: ProtocolProfile | str | None
) -> list[tuple[str, Scenario, ProtocolProfile]]:
    every = cases(profile)
    if only is None:
        return every
    return [c for wanted in only for c in every if wanted in (c[0], c[1].name)]  # in the order given


def run_parameter(
    scenario: str = "all",
    seed: int | None = None,
    profile: str | None = None,
    *,
    bus: BusConfig | None = None,
) -> dict[str, Outcome]:
    """What a notebook's ``scenario`` (and ``profile``) parameters select: ``"all"``, one name, or
    names joined by commas; every profile, or one.

    ``bus`` runs the CAN scenarios with the attacker as a node on that bus
    (:func:`~modbatt.attacks.onbus.attack_bus`); each of their outcomes then counts the frames
    the bus carried (``bus_frames``). ``None`` runs everything in process.
    """
    chosen: list[str] | None = None
    if scenario.strip() != "all":
        chosen = [name.strip() for name in scenario.split(",") if name.strip()]
        for name in chosen:
            get(name)  # a ConfigError naming the problem before anything runs
    if bus is None:
        return run_all(seed, only=chosen, profile=profile)
    from .onbus import attack_bus

    out: dict[str, Outcome] = {}
    with attack_bus(bus) as wire:
        assert wire is not None
        for key, spec, p in _selected(chosen, profile):
            wire.tap.settle()
            mark = wire.tap.mark()
            outcome = spec(seed, p)
            wire.tap.settle()
            frames = len(wire.tap.since(mark))
            if frames:
                outcome = dataclasses.replace(outcome, counters={**outcome.counters, "bus_frames": frames})
            out[key] = outcome
    return out


def matrix(results: dict[str, Outcome]) -> dict[str, dict[str, object]]:
    """The JSON outcome matrix ``{case: {"outcome", "reason", "counters"}}`` (what ``--all --json`` prints)."""
    return {name: outcome.to_json() for name, outcome in results.items()}
