"""Record what the package really derives, signs and decodes while a reproducible deployment
binds, pairs (standard, blind, and under the efficient profile) and runs validation levels 1-7
under both profiles (docs/vectors.md §Key schedule).

The key-schedule and validation-message vectors are taken from this record rather than from a
second description of the protocol, so a new derivation or message shows up in the vectors (and
in review) the day the code starts using it. Recording wraps three package functions for the
duration of one run and restores them afterwards:

* ``hkdf_sha256`` in every ``modbatt`` module that imported it (inputs, output, caller);
* ``PrivateKey.sign`` (label, message, signature, public key);
* ``Message.decode`` of the validation machines (each message a verifier accepted).

To add a derivation to the vectors, add a step to :data:`STEPS`; its HKDF calls are picked up.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ...crypto import keystore_format, labels, suite
from ...crypto.suite import PrivateKey, PublicKey
from ...model.pairing import ControllerMode
from ...model.profile import ProtocolProfile
from ...nodes.events import EventIntake, EventOutbox
from ...nodes.inmemory import InMemoryDeployment
from ...nodes.paired import PairedDeployment
from ...nodes.pairing_flow import pair_entities
from ...nodes.recovery import KeyLossIntake
from ...nodes.validation import run_all_levels
from ...protocol.validation._common import Message
from ...protocol.validation.key_loss import KeyLossAnnouncer, KeyLossVerifier

__all__ = ["STEPS", "HkdfCall", "Record", "SignCall", "record_scenario"]

SEED = 18


@dataclass(frozen=True)
class HkdfCall:
    ikm: bytes
    salt: bytes | None
    info: bytes
    length: int
    okm: bytes
    caller: str


@dataclass(frozen=True)
class SignCall:
    private_key: bytes  # the scalar: every key here is a seeded (reproducible) one
    public_key: PublicKey
    label: bytes
    message: bytes
    signature: bytes


@dataclass
class Record:
    hkdf: list[HkdfCall] = field(default_factory=list)
    signatures: list[SignCall] = field(default_factory=list)
    messages: list[tuple[type[Message], bytes]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _recording(rec: Record) -> Iterator[None]:
    original_hkdf = suite.hkdf_sha256
    original_sign = PrivateKey.sign
    original_decode = Message.__dict__["decode"]

    def hkdf(ikm: bytes, *, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
        okm = original_hkdf(ikm, info=info, length=length, salt=salt)
        frame = sys._getframe(1)
        caller = f"{frame.f_globals.get('__name__')}.{frame.f_code.co_qualname}"
        rec.hkdf.append(HkdfCall(bytes(ikm), None if salt is None else bytes(salt), bytes(info), length, okm, caller))
        return okm

    def sign(self: PrivateKey, label: bytes, message: bytes) -> bytes:
        sig = original_sign(self, label, message)
        rec.signatures.append(SignCall(self.scalar_bytes(), self.public_key, bytes(label), bytes(message), sig))
        return sig

    def decode(cls: type[Message], data: bytes) -> Message:
        msg = original_decode.__func__(cls, data)
        rec.messages.append((cls, bytes(data)))
        return msg

    patched = [
        m
        for name, m in list(sys.modules.items())
        if name.startswith("modbatt") and getattr(m, "hkdf_sha256", None) is original_hkdf
    ]
    for m in patched:
        m.hkdf_sha256 = hkdf  # type: ignore[attr-defined]
    PrivateKey.sign = sign  # type: ignore[method-assign]
    Message.decode = classmethod(decode)  # type: ignore[assignment, method-assign]
    try:
        yield
    finally:
        for m in patched:
            m.hkdf_sha256 = original_hkdf  # type: ignore[attr-defined]
        PrivateKey.sign = original_sign  # type: ignore[method-assign]
        Message.decode = original_decode  # type: ignore[method-assign]


# --------------------------------------------------------------------------- the scenario


def _bind_and_pair(dep: InMemoryDeployment, rec: Record) -> None:
    module = dep.modules[1]
    made = PairedDeployment.of(dep)
    binding_id, std = made.binding_id(1), made.pairings[1]
    # Two more pairings of the same binding: a blind one and one under the efficient profile.
    blind = pair_entities(dep.controller, dep.pack, module, binding_id, mode=ControllerMode.BLIND)
    efficient = pair_entities(dep.controller, dep.pack, module, binding_id, profile=ProtocolProfile.EFFICIENT)
    eff_pid = efficient.certificate.metadata.pairing_id
    rec.facts.update(
        binding_id=binding_id,
        pairing_id=std.certificate.metadata.pairing_id,
        certificate=std.certificate,
        blind_certificate=blind.certificate,
        controller_key=dep.controller_key,
        secrets=module.pairing_secrets(std.certificate.metadata.pairing_id),
        efficient_pairing_id=eff_pid,
        efficient_certificate=efficient.certificate,
        efficient_secrets=module.pairing_secrets(eff_pid),
        # Seeded (reproducible) binding keys: the BindingMacSecretTest inputs.
        binding_keys={"a": _binding_key(dep.pack, binding_id), "b": _binding_key(module, binding_id)},
    )


def _binding_key(node: Any, binding_id: str) -> PrivateKey:
    state = node.binding(binding_id)
    assert state is not None
    return state.private_key


def _validation_levels(dep: InMemoryDeployment, rec: Record) -> None:
    # Under both protocol profiles: the efficient pairing's levels 3, 5 and 6 use their MAC variants.
    for pid in (rec.facts["pairing_id"], rec.facts["efficient_pairing_id"]):
        out = run_all_levels(dep.controller, dep.pack, dep.modules[1], rec.facts["binding_id"], pid)
        failed = {level: r for level, r in out.items() if r.get("outcome") != "ok"}
        if failed:
            raise RuntimeError(f"validation levels failed while recording vectors: {failed}")


def _can_traffic_keys(dep: InMemoryDeployment, rec: Record) -> None:
    # As a deployment derives them: each end opens its channel of the pairing (the one owner of
    # the link), which derives both directions of each symmetric tier from the current session.
    for node in (dep.pack, dep.modules[1]):
        node.channel(rec.facts["pairing_id"])
        node.channel(rec.facts["efficient_pairing_id"])  # and the binding tier's keys under efficient


def _key_store_keys(dep: InMemoryDeployment, rec: Record) -> None:
    # A key-file store (no stretching KDF): the KEK/KCV derivation of docs/crypto.md §7.2.
    secret = bytes(range(32))
    salt = bytes(range(0x40, 0x50))
    for label in (labels.KEYSTORE_KEK, labels.KEYSTORE_BACKUP):
        keystore_format._derive(secret, keystore_format._KDF_KEY_FILE, (0, 0, 0), salt, label)


def _ledger(dep: InMemoryDeployment, rec: Record) -> None:
    rec.facts["ledger_entries"] = list(dep.ledger.entries())


def _key_loss(dep: InMemoryDeployment, rec: Record) -> None:
    # The recovery messages (docs/lifecycle.md §7): the identity-signed announce, the level-7 bundle.
    module = dep.modules[1]
    announcer = KeyLossAnnouncer(identity_key=module.machine.identity, access_data=module.access_data)
    intake = KeyLossIntake(dep.controller)
    if intake.offer(announcer.announce(dep.clock(), rec.facts["binding_id"])) is not None:
        raise RuntimeError(f"the key-loss announce was refused while recording vectors: {dict(intake.rejections)}")
    claim = intake.take()
    assert claim is not None
    KeyLossVerifier(controller_key=dep.controller_key.public_key).verify(intake.validate(claim), dep.clock())


def _entity_event(dep: InMemoryDeployment, rec: Record) -> None:
    # An event the pack queued while partitioned (docs/lifecycle.md §8), signed with its identity key.
    outbox = EventOutbox(dep.pack, controller_key=dep.controller_key.public_key)
    outbox.record("anomaly", {"pairing_id": rec.facts["pairing_id"]})
    outbox.flush(EventIntake(dep.controller).submit)


#: The recorded run, in order. Each step takes the deployment and the record (for facts).
STEPS: tuple[Callable[[InMemoryDeployment, Record], None], ...] = (
    _bind_and_pair,
    _validation_levels,
    _can_traffic_keys,
    _key_store_keys,
    _ledger,
    _key_loss,
    _entity_event,
)


def record_scenario() -> Record:
    """Run :data:`STEPS` on a seeded in-memory deployment and return what was recorded.

    Needs reproducible mode (the caller holds :func:`~._format.reproducible`).
    """
    rec = Record()
    dep = InMemoryDeployment(seed=SEED, modules=1)
    with _recording(rec):
        for step in STEPS:
            step(dep, rec)
    return rec
