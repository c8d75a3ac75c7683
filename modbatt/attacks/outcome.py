"""The classified result of one attack scenario, and helpers to reach it honestly.

An attack "failed for the right reason" only when the real component refused it with the
expected :class:`~modbatt.errors.Reason` *and* counted that refusal in its own counters
(``rejections``, ``rejects``, ``drops``). :func:`attempt` runs one try and reports the reason the
component raised; :func:`counted` reads the counters the scenario cites, so the matrix shows the
component's own evidence rather than the scenario's opinion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import Reason, VerificationError

__all__ = ["OUTCOMES", "Outcome", "OutcomeKind", "attempt", "counted", "judge"]

OutcomeKind = Literal["blocked", "detected", "succeeded", "limit"]
#: Every outcome, from best to worst for the defender ("limit" = a documented, intended limit).
OUTCOMES: tuple[OutcomeKind, ...] = ("blocked", "detected", "limit", "succeeded")


@dataclass(frozen=True)
class Outcome:
    """How one scenario ended.

    * ``blocked`` — refused by a check before it had any effect (no state changed);
    * ``detected`` — it reached the component, had at most a bounded effect (a dropped transfer,
      a slot held until timeout) and was classified and counted;
    * ``limit`` — it worked as far as the design documents it may (``reason`` names the limit);
    * ``succeeded`` — it worked where the design says it must not: a vulnerability.

    ``reason`` is the classified :class:`~modbatt.errors.Reason` value that stopped the attack
    (or, for ``limit``, the documented limit); ``counters`` are the real components' counters.
    ``detail`` is prose for people and is not part of the JSON matrix.
    """

    outcome: OutcomeKind
    reason: str
    counters: Mapping[str, Any] = field(default_factory=dict)
    detail: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")

    @property
    def defended(self) -> bool:
        """True unless the attack succeeded where the design says it must not."""
        return self.outcome != "succeeded"

    def to_json(self) -> dict[str, Any]:
        """The matrix row: exactly ``{"outcome", "reason", "counters"}``."""
        return {"outcome": self.outcome, "reason": self.reason, "counters": dict(self.counters)}


def attempt(fn: Callable[[], Any]) -> Reason | None:
    """Run one attack step; the :class:`Reason` it was refused with, or None if it was accepted.

    Only a classified ``VerificationError`` counts as a refusal. Anything else (a ``KeyError``, an
    ``AssertionError``) propagates: a crash is not a defence and must fail the scenario loudly.
    """
    try:
        fn()
    except VerificationError as exc:
        return exc.reason
    return None


def counted(prefix: str, counter: Mapping[Any, int]) -> dict[str, int]:
    """A component's counter as ``{"prefix.reason": n}`` (reasons as their string values)."""
    return {f"{prefix}.{getattr(k, 'value', k)}": int(v) for k, v in sorted(counter.items(), key=lambda kv: str(kv[0]))}


def judge(
    reasons: list[Reason | None],
    expected: Reason,
    counters: Mapping[str, Any],
    *,
    detail: str = "",
    kind: OutcomeKind = "blocked",
) -> Outcome:
    """``kind`` with ``expected`` when every try was refused and at least one for ``expected``.

    A try that was accepted makes the outcome ``succeeded``; tries refused for other reasons are
    still refusals (they show in ``counters``), but the headline reason is the one expected.
    """
    if any(r is None for r in reasons):
        return Outcome("succeeded", "accepted", counters, detail or "an attack step was accepted")
    seen = {r for r in reasons if r is not None}
    reason = expected if expected in seen else sorted(r.value for r in seen)[0] if seen else "none"
    return Outcome(kind, str(getattr(reason, "value", reason)), counters, detail)
