"""Shared fixtures for the validation tests: a bound and paired World and each party's keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from helpers_binding import World

from modbatt.nodes.paired import PairedDeployment
from modbatt.nodes.validation import ValidationContext


@dataclass
class Paired:
    world: World
    ctx: ValidationContext
    pack: dict[str, Any]
    module: dict[str, Any]

    @property
    def now(self) -> float:
        return self.world.clock()

    def advance(self, seconds: float) -> None:
        self.world.clock.now += seconds


def paired_world(seed: int = 7) -> Paired:
    w = World(seed=seed)
    ctx = PairedDeployment.of(w).validation(1)
    return Paired(w, ctx, ctx.side(w.pack), ctx.side(w.module))
