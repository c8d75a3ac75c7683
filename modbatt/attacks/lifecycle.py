"""Attacks on the life-cycle paths: renewal overlap, the gateway's app bus, restrictions, shutdown, key loss.

Each scenario drives the component a deployment uses (docs/threat-model.md, "Life cycle"):

* the renewal overlap through each entity's :class:`~modbatt.nodes.renewal.Handover`, after a real
  renewal (:func:`~modbatt.nodes.pairing_flow.renew_entities`);
* the app bus and emergency shutdown through :class:`~modbatt.sim.gateway.GatewaySimulation`:
  frames put on its python-can buses by a third handle, judged by the pack's gateway core and the
  module's own channel;
* restrictions through the receiving module's channel of a pairing whose certificate carries them;

The renewal and restriction rows run under both protocol profiles (docs/profiles.md): the frames
they carry authenticate differently, and the defence must not depend on it.
* key loss through the controller's :class:`~modbatt.nodes.recovery.KeyLossIntake`.
"""

from __future__ import annotations

from collections.abc import Mapping

import can

from ..can.functions import function_for
from ..can.ids import SEED_LAYOUT
from ..can.secured import Direction, SecuredPdu, TrafficKeys, derive_traffic_keys
from ..can.secured import SecuredSender as _Sender
from ..crypto.freshness import FreshnessCounter, MemoryCounterStore
from ..crypto.rng import SeededRandom, SystemRandom
from ..crypto.suite import PrivateKey
from ..errors import Reason
from ..model.pairing import Restrictions
from ..model.policy import MessageClass
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..model.tier import Tier
from ..nodes.pairing_flow import pair_entities, renew_entities
from ..nodes.recovery import KeyLossIntake
from ..protocol.gateway import AppFrame
from ..protocol.validation.key_loss import KeyLossAnnouncer
from ..sim.gateway import GatewaySimulation
from ._world import Pack, forged_sender, paired_pack
from .outcome import Outcome, attempt, counted, judge
from .registry import scenario

_ON = 3
#: Rows whose path depends on how the partners authenticate each other (docs/profiles.md).
_BOTH = ("seed", "efficient")
_SHUTDOWN = MessageClass.EMERGENCY_SHUTDOWN


def _unit(end, pdu: SecuredPdu) -> Reason | None:  # type: ignore[no-untyped-def]
    return attempt(lambda: end.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame))


def _refusals(before: Mapping[str, int], after: Mapping[str, int]) -> list[Reason | None]:
    """One entry per refusal a component counted between two snapshots of its counter."""
    return [Reason(k) for k in after for _ in range(after[k] - before.get(k, 0))]


# ------------------------------------------------------------------ replay during a renewal overlap


@scenario("renewal_overlap_replay", family="replay", expected=("blocked", "replay"), profiles=_BOTH)
def renewal_overlap_replay(seed: int | None = None, *, profile: ProtocolProfile = DEFAULT_PROFILE) -> Outcome:
    """Replay every frame of the old and the new pairing while both are accepted, and after the overlap."""
    pack = paired_pack(seed, profile=profile)
    dep, module = pack.dep, pack.module(1)
    old = pack.pairing_id(1)
    tx, rx = dep.pack.channel(old), module.channel(old)
    recorded = [tx.send(MessageClass.CHARGE_COMMAND, bytes([1, 0, i])) for i in range(4)]
    recorded.append(tx.send(MessageClass.IDENTITY, b"binding tier, old"))
    for pdu in recorded:
        rx.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)
    new = renew_entities(dep.controller, dep.pack, module, pack.pairings[1].certificate).certificate.metadata.pairing_id
    hp, hm = dep.pack.handover(old, new), module.handover(old, new)
    late_old = tx.send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x09")  # sent on the old pairing by the channel itself
    fresh = [hp.send(MessageClass.CHARGE_COMMAND, bytes([2, 0, i])) for i in range(3)]
    accepted = sum(_unit(hm, pdu) is None for pdu in [late_old, *fresh])  # the genuine ones: all four in
    during = [_unit(hm, pdu) for pdu in [*recorded, late_old, *fresh]]  # every one again, inside the overlap
    hm.finish()
    after = [_unit(hm, pdu) for pdu in [*recorded, late_old]]  # the old pairing's, after it was erased
    counters = {
        **counted("module_handover.rejects", hm.rejects),
        "genuine_accepted_in_overlap": accepted,
        "old_pairing_erased": int(module.pairing_secrets(old) is None),
    }
    pack.close()
    if accepted != 4:
        return Outcome("succeeded", "frame_lost", counters, "a genuine frame was refused across the switch")
    detail = "each pairing's own window judges its frames in the overlap; after it the keys are gone"
    return judge(during + after, Reason.REPLAY, counters, detail=detail)


# ------------------------------------------------------------------ the gateway's app bus


def _gateway(seed: int | None, modules: int = 2, **kw) -> GatewaySimulation:  # type: ignore[no-untyped-def]
    sim = GatewaySimulation(modules, seed=seed, **kw)
    sim.command(contactor=_ON)
    sim.run(0.6)
    return sim


@scenario("app_bus_injection", family="bus", expected=("blocked", "unroutable"))
def app_bus_injection(seed: int | None = None) -> Outcome:
    """From the app bus: frames no route names (unknown ids, the key-push frames, pack outputs, a
    would-be emergency stop), a module the pack does not serve, short frames; through the gateway."""
    with _gateway(seed) as sim:
        before = sim.stats.commands_received
        frames = [
            AppFrame(0x000, b"\x01"),  # the highest-priority 11-bit id: an "emergency stop" no route knows
            AppFrame(0x123, bytes(8)),
            AppFrame(0x407, bytes(8), is_extended=True),  # WEB4 key push (extended): never routed
            AppFrame(0x4A7, bytes([1, 0])),  # its acknowledgement
            AppFrame(0x410, bytes(8)),  # a pack output sent towards the pack
            AppFrame(0x51F, bytes(8)),  # the legacy ALL_ISOLATE base, on the wrong bus
            AppFrame(0x404, bytes([0x1F, 0, 0, 0, 0, 0, 0, 0])),  # module 0x1F: not in this pack
            AppFrame(0x400, b"\x00"),  # VCU_COMMAND, one byte
        ]
        dropped = {r.value: n for r, n in sim.gateway.rejections.items()}
        sim.inject(frames)
        sim.run(0.3)
        crossed = sim.stats.commands_received - before
        reasons = _refusals(dropped, {r.value: n for r, n in sim.gateway.rejections.items()}) + [None] * crossed
        counters = {**counted("gateway.rejections", sim.gateway.rejections), "module_commands_caused": crossed,
                    "modules_on": sum(s == _ON for s in sim.module_states().values())}  # fmt: skip
    return judge(reasons, Reason.UNROUTABLE, counters, detail="only frames a route names cross; the rest is counted")


@scenario("app_bus_spoofed_vcu_command", family="bus", expected=("limit", "clear_app_bus"))
def app_bus_spoofed_vcu_command(seed: int | None = None) -> Outcome:
    """A node on the app bus sends what the VCU sends (contactors off): the legacy app bus is clear."""
    with _gateway(seed) as sim:
        tap = sim.tap("app")
        msg = sim.db.get_message_by_name("VCU_COMMAND")
        data = msg.encode({s.name: 0 for s in msg.signals}, strict=False)
        tap.send(can.Message(arbitration_id=msg.frame_id, data=bytes(data).ljust(8, b"\x00"), is_extended_id=False))
        sim.scheduler.pump()
        states = sim.module_states()
        counters = {"modules_switched_off": sum(s == 0 for s in states.values()),
                    **counted("gateway.rejections", sim.gateway.rejections)}  # fmt: skip
    return Outcome("limit", "clear_app_bus", counters,
                   "the legacy app bus is unauthenticated by design (docs/gateway.md §1); the module bus "
                   "carries the command authenticated, but whoever is on CAN 1 speaks for the VCU")  # fmt: skip


# ------------------------------------------------------------------ restriction bypass by a paired partner


def _restricted(seed: int | None, restrictions: Restrictions, profile: ProtocolProfile) -> tuple[Pack, object, object]:
    pack = paired_pack(seed, pair=False, profile=profile)
    cert = pack.issue_pairing(1, restrictions=restrictions, profile=profile)
    pack.pairings[1] = pair_entities(pack.dep.controller, pack.dep.pack, pack.module(1), certificate=cert)
    return pack, pack.link(1, "pack"), pack.link(1, "module")


def _restriction_outcome(  # type: ignore[no-untyped-def]
    pack: Pack, receiver, reasons, expected: Reason, detail: str, *, side: str = "module"
) -> Outcome:
    counters = {**counted(f"{side}_channel.rejects", receiver.rejects),
                **{f"{side}_restrictions.{k}": v for k, v in receiver.restrictions.counters().items()}}  # fmt: skip
    pack.close()
    return judge(reasons, expected, counters, detail=detail)


@scenario("restriction_operation", family="insider", expected=("blocked", "unauthorized"), profiles=_BOTH)
def restriction_operation(seed: int | None = None, *, profile: ProtocolProfile = DEFAULT_PROFILE) -> Outcome:
    """The paired pack sends operations its certificate does not allow (only charge commands are)."""
    pack, tx, rx = _restricted(seed, Restrictions(("charge_command",), (), 0), profile)
    assert _unit(rx, tx.send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x03")) is None  # what it may do still works
    refused = (MessageClass.DISCHARGE_COMMAND, MessageClass.CONFIGURATION, MessageClass.SAFETY_LIMITS,
               MessageClass.CELL_BALANCING)  # fmt: skip
    tries = [tx.send(cls, b"\x01\x00\x03") for cls in refused]
    # Above its minimum too: the binding tier (signed under seed, sealed under efficient) does not lift it.
    tries.append(tx.send(MessageClass.DISCHARGE_COMMAND, b"\x01\x00\x03", tier=Tier.BINDING))
    return _restriction_outcome(pack, rx, [_unit(rx, pdu) for pdu in tries], Reason.UNAUTHORIZED,
                                "the receiving channel enforces allowed_operations")  # fmt: skip


@scenario("restriction_data_type", family="insider", expected=("blocked", "unauthorized"), profiles=_BOTH)
def restriction_data_type(seed: int | None = None, *, profile: ProtocolProfile = DEFAULT_PROFILE) -> Outcome:
    """The paired module reports data types its certificate does not allow (only voltage telemetry is)."""
    pack, tx, rx = _restricted(seed, Restrictions((), ("voltage_telemetry",), 0), profile)
    assert _unit(tx, rx.send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80")) is None
    tries = [rx.send(cls, b"\x0c\x80") for cls in (MessageClass.CURRENT_TELEMETRY, MessageClass.LOG,
                                                  MessageClass.CRITICAL_TELEMETRY)]  # fmt: skip
    return _restriction_outcome(pack, tx, [_unit(tx, pdu) for pdu in tries], Reason.UNAUTHORIZED,
                                "the receiving channel enforces data_types", side="pack")  # fmt: skip


@scenario("restriction_rate", family="insider", expected=("blocked", "rate_limited"), profiles=_BOTH)
def restriction_rate(seed: int | None = None, *, profile: ProtocolProfile = DEFAULT_PROFILE) -> Outcome:
    """The paired pack floods charge commands past the certificate's 10 messages/s."""
    pack, tx, rx = _restricted(seed, Restrictions((), (), 10), profile)
    burst = [_unit(rx, tx.send(MessageClass.CHARGE_COMMAND, bytes([1, 0, i & 0xFF]))) for i in range(100)]
    within, over = burst[:10], burst[10:]
    shutdown = _unit(rx, tx.send(_SHUTDOWN, b"\x01"))  # never rate-limited (docs/lifecycle.md §4)
    if any(r is not None for r in within) or shutdown is not None:
        pack.close()
        return Outcome("succeeded", "refused_genuine", {}, "traffic within the rate, or a shutdown, was refused")
    return _restriction_outcome(pack, rx, over, Reason.RATE_LIMITED, "a one-second bucket per receiving channel")


# ------------------------------------------------------------------ spoofed emergency shutdown


def _on_the_bus(sim: GatewaySimulation, pdus: list[SecuredPdu]) -> None:
    tap = sim.tap("module")
    for pdu in pdus:
        tap.send(can.Message(arbitration_id=pdu.can_id, data=pdu.data, is_extended_id=True))
    sim.scheduler.pump()


def _shutdown_counters(sim: GatewaySimulation) -> dict[str, int]:
    return {
        **counted("module_bus.rejects", sim.stats.rejects),
        "modules_shut_down": sum(m.shutdowns for m in sim.modules.values()),
        "modules_still_on": sum(s == _ON for s in sim.module_states().values()),
    }


@scenario("spoofed_shutdown_clear", family="downgrade", expected=("blocked", "tier_too_low"))
def spoofed_shutdown_clear(seed: int | None = None) -> Outcome:
    """An emergency shutdown for module 1 sent in clear (and at the exchange tier) on the module bus."""
    with _gateway(seed) as sim:
        clear = _Sender(SEED_LAYOUT, sim.profile, TrafficKeys.clear(Direction.INITIATOR_TO_RESPONDER), None)
        fields = function_for(_SHUTDOWN).id_fields(1, 0)
        pdus = [clear.protect(fields, b"\x00\x00\x01")]
        exchange = derive_traffic_keys(bytes(32), Tier.EXCHANGE, Direction.INITIATOR_TO_RESPONDER)
        cheap = _Sender(SEED_LAYOUT, sim.profile, exchange, FreshnessCounter(MemoryCounterStore(0)))
        pdus.append(cheap.protect(fields, b"\x00\x00\x01"))
        before = dict(sim.stats.rejects)
        _on_the_bus(sim, pdus)
        counters = _shutdown_counters(sim)
        reasons = _refusals(before, sim.stats.rejects) + [None] * counters["modules_shut_down"]
    return judge(reasons, Reason.TIER_TOO_LOW, counters,
                 detail="refused before any key is used: shutdown is a pairing-tier class in every state")  # fmt: skip


@scenario("spoofed_shutdown_foreign", family="spoofing", expected=("blocked", "bad_mac"))
def spoofed_shutdown_foreign(seed: int | None = None) -> Outcome:
    """Shutdowns for module 1 at the pairing tier from senders not paired with it: module 2 with its
    own pairing's keys, and a stranger with keys of its own."""
    with _gateway(seed) as sim:
        down = Direction.INITIATOR_TO_RESPONDER
        secrets2 = sim.dep.modules[2].pairing_secrets(sim.certificates[2].metadata.pairing_id)
        assert secrets2 is not None
        fields = function_for(_SHUTDOWN).id_fields(1, int(down))
        insider = forged_sender(secrets2, Tier.PAIRING, direction=down, profile=sim.profile, start=1000)
        rng = SeededRandom(seed) if seed is not None else SystemRandom()
        stranger = _Sender(SEED_LAYOUT, sim.profile, derive_traffic_keys(rng.token_bytes(32), Tier.PAIRING, down),
                           FreshnessCounter(MemoryCounterStore(0)))  # fmt: skip
        pdus = [s.protect(fields, b"\x00\x00\x01") for s in (insider, stranger) for _ in range(3)]
        before = dict(sim.stats.rejects)
        _on_the_bus(sim, pdus)
        counters = _shutdown_counters(sim)
        reasons = _refusals(before, sim.stats.rejects) + [None] * counters["modules_shut_down"]
        sim.emergency_shutdown(1)  # the pack's own shutdown still works
        counters["genuine_shutdown_obeyed"] = sim.modules[1].shutdowns
    return judge(reasons, Reason.BAD_MAC, counters, detail="the pairing key is per module; the CAN id is in the nonce")


# ------------------------------------------------------------------ spoofed key loss


@scenario("spoofed_key_loss", family="spoofing", expected=("blocked", "key_mismatch"))
def spoofed_key_loss(seed: int | None = None) -> Outcome:
    """Announce a key loss for module 1 to have it re-bound: with a stranger's key, and with the pack's."""
    pack = paired_pack(seed)
    dep, module = pack.dep, pack.module(1)
    intake = KeyLossIntake(dep.controller)
    rng = SeededRandom(seed + 1) if seed is not None else SystemRandom()
    now, binding_id = dep.clock(), pack.records[1].binding_id
    liars = [PrivateKey.generate(rng), dep.pack.machine.identity]
    reasons = [intake.offer(KeyLossAnnouncer(identity_key=k, access_data=module.access_data).announce(now, binding_id))
               for k in liars]  # fmt: skip
    counters = {**counted("intake.rejections", intake.rejections), "claims_queued": len(intake.pending),
                "binding_intact": int(not dep.controller.is_revoked(binding_id))}  # fmt: skip
    pack.close()
    detail = "only the identity key the binding authority named for the device can claim its loss"
    return judge(reasons, Reason.KEY_MISMATCH, counters, detail=detail)
