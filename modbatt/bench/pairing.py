"""Pairing costs: certificate build and validate, a full pairing in process, seal/open per tier."""

from __future__ import annotations

from ..model.pairing import ControllerMode, PairingCertificate
from ..model.policy import MessageClass
from ..model.profile import ProtocolProfile
from ..nodes.inmemory import InMemoryDeployment
from ..nodes.pairing_flow import pair_entities
from ..protocol.pairing import issue_certificate
from . import time_per_call

NAME = "pairing"
DESCRIPTION = "pairing certificate build/validate, full pairing in process, seal+open per message per tier"

_CLASS_FOR_TIER = {
    "exchange": MessageClass.VOLTAGE_TELEMETRY,
    "pairing": MessageClass.CHARGE_COMMAND,
    "binding": MessageClass.IDENTITY,
}


def run(quick: bool, profiles: tuple[ProtocolProfile, ...] = tuple(ProtocolProfile)) -> list[dict]:
    """Per protocol profile: certificate and full pairing per controller mode, seal+open per tier."""
    return [{"profile": profile.value, **row} for profile in profiles for row in _rows(profile, quick)]


def _rows(profile: ProtocolProfile, quick: bool) -> list[dict]:
    budget = 0.3 if quick else 1.5
    rows: list[dict] = []
    d = InMemoryDeployment()
    module = d.modules[1]
    record = d.bind(d.pack, module).record
    for mode in ControllerMode:
        cert, _ = issue_certificate(
            controller_key=d.controller_key, binding=record, callback="x", now=d.clock(), mode=mode, rng=d.rng,
            profile=profile,
        )  # fmt: skip
        encoded = cert.encode()

        def build(mode=mode) -> None:
            issue_certificate(
                controller_key=d.controller_key, binding=record, callback="x", now=d.clock(), mode=mode, rng=d.rng,
                profile=profile,
            )  # fmt: skip

        def validate(encoded=encoded) -> None:
            PairingCertificate.decode(encoded).verify(d.controller_key.public_key)

        def full(mode=mode) -> None:
            pair_entities(d.controller, d.pack, module, record.binding_id, mode=mode, profile=profile)

        rows.append(
            {
                "benchmark": "certificate",
                "mode": mode.value,
                "certificate_bytes": len(encoded),
                "build_us": round(time_per_call(build, min_seconds=budget) * 1e6, 1),
                "decode_verify_us": round(time_per_call(validate, min_seconds=budget) * 1e6, 1),
                "full_pairing_ms": round(time_per_call(full, min_seconds=budget, repeats=3) * 1e3, 2),
            }
        )
    outcome = pair_entities(d.controller, d.pack, module, record.binding_id, profile=profile)
    pid = outcome.certificate.metadata.pairing_id
    # The entities' own channels (the in-memory deployment's freshness is ephemeral by choice).
    sender, receiver = d.pack.channel(pid), module.channel(pid)
    for tier, cls in _CLASS_FOR_TIER.items():
        payload = b"\x01\x02\x03"

        def seal_open(cls=cls, payload=payload) -> None:
            pdu = sender.send(cls, payload)
            receiver.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)

        rows.append(
            {
                "benchmark": "seal_open",
                "tier": tier,
                "message_class": cls.value,
                "payload_bytes": len(payload),
                "us_per_message": round(time_per_call(seal_open, min_seconds=budget) * 1e6, 2),
            }
        )
    d.ledger.close()
    return rows
