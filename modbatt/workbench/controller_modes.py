"""What a compromised auth controller can read, in each controller mode (docs/pairing.md).

The scenario: the controller's randomness is recorded (it "failed to erase" the pairing key and
exchange key). From that record alone, does it derive the entities' traffic secrets? In standard
mode yes (the seed's design trusts the controller to erase); in blind mode no (the secrets also
depend on an ECDH exchange between the entities, signed with binding keys it never holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..crypto.rng import RandomSource
from ..model.pairing import ControllerMode
from ..nodes.inmemory import InMemoryDeployment
from ..nodes.pairing_flow import pair_entities
from ..protocol.pairing import EXCHANGE_KEY_BYTES, PAIRING_KEY_BYTES, derive_session_secrets

__all__ = ["RecordingRandom", "compromised_controller_reads"]


class RecordingRandom:
    """Wraps a random source and keeps everything it hands out (the attacker's view)."""

    def __init__(self, inner: RandomSource) -> None:
        self.inner = inner
        self.reproducible = inner.reproducible
        self.seen: list[bytes] = []

    def token_bytes(self, n: int) -> bytes:
        out = self.inner.token_bytes(n)
        self.seen.append(out)
        return out


@dataclass(frozen=True)
class Exposure:
    mode: str
    reads_pairing_tier: bool
    reads_exchange_tier: bool

    def as_row(self) -> dict[str, Any]:
        return {"mode": self.mode, "reads_pairing_tier": self.reads_pairing_tier,
                "reads_exchange_tier": self.reads_exchange_tier}  # fmt: skip


def compromised_controller_reads(mode: ControllerMode, seed: int | None = None) -> Exposure:
    """Pair a pack and a module under a controller whose randomness leaks; try to derive their secrets."""
    d = InMemoryDeployment(seed=seed)
    module = d.modules[1]
    record = d.bind(d.pack, module).record
    spy = RecordingRandom(d.rng)
    d.controller._rng = spy  # the controller's memory, as an attacker who compromised it sees it
    out = pair_entities(d.controller, d.pack, module, record.binding_id, mode=ControllerMode(mode))
    d.ledger.close()
    pairing_key = next(v for v in spy.seen if len(v) == PAIRING_KEY_BYTES)
    exchange_key = spy.seen[spy.seen.index(pairing_key) + 1]
    assert len(exchange_key) == EXCHANGE_KEY_BYTES
    real = out.secrets[module.access_data.device_id]
    # The session transcript is public (the controller relayed both offers); blind mode also
    # needs the entities' ECDH secret, which no recording of the controller holds.
    pairing_secret, exchange_secret = derive_session_secrets(
        pairing_key, exchange_key, pairing_id=out.certificate.metadata.pairing_id, transcript=out.transcript
    )
    return Exposure(
        ControllerMode(mode).value, pairing_secret == real.pairing_secret, exchange_secret == real.exchange_secret
    )
