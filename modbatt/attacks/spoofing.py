"""Node-ID and direction spoofing on CAN, and downgrade (clear, lower tier, stripped flag bits).

A bus node can put any identifier on the bus. The identifier is authenticated as part of every
nonce (and of every binding-tier signature), keys are per pairing and per direction, and the
receiver checks the signalled tier against the policy for the claimed function *before any key
is used*.
"""

from __future__ import annotations

import dataclasses

from ..can.functions import function_for
from ..can.ids import SEED_LAYOUT
from ..can.secured import Direction
from ..errors import Reason
from ..model.policy import MessageClass
from ..model.tier import Tier
from ._world import forged_sender, paired_pack
from .outcome import Outcome, attempt, counted, judge
from .registry import scenario

SPOOF = "spoofing"
DOWNGRADE = "downgrade"
_DIR_BIT = SEED_LAYOUT.field_mask("direction")
_FLAG_BIT = SEED_LAYOUT.field_mask("flag")
_LEVEL_BITS = SEED_LAYOUT.field_mask("level")


def _set_node(can_id: int, node: int) -> int:
    return SEED_LAYOUT.with_field(can_id, "node", node)


@scenario("can_node_spoof", family=SPOOF, expected=("blocked", "bad_mac"))
def can_node_spoof(seed: int | None = None) -> Outcome:
    """Module 2 sends as module 1: rewritten node ids, and frames made with its own keys for node 1."""
    pack = paired_pack(seed, modules=2)
    pack_link1 = pack.link(1, "pack")
    m2 = pack.link(2, "module")
    reasons = []
    for cls in (MessageClass.VOLTAGE_TELEMETRY, MessageClass.CRITICAL_TELEMETRY):
        pdu = m2.send(cls, b"\x0c\x80")
        reasons.append(attempt(lambda p=pdu: pack_link1.receive(_set_node(p.can_id, 1), p.data)))
    # Frames made with module 2's own keys that stamp node 1 (a cloned firmware lying about its id).
    state = pack.module(2).binding(pack.records[2].binding_id)
    secrets = pack.module(2).pairing_secrets(pack.pairing_id(2))
    assert state is not None and secrets is not None
    up = Direction.RESPONDER_TO_INITIATOR
    for cls in (MessageClass.VOLTAGE_TELEMETRY, MessageClass.CRITICAL_TELEMETRY, MessageClass.IDENTITY):
        tier = pack.pairings[2].certificate.metadata.encryption_policy.tier_for(cls)
        liar = forged_sender(secrets, tier, direction=up, signer=state.private_key)
        pdu = liar.protect(function_for(cls).id_fields(1, int(up)), b"\x0c\x80")
        reasons.append(attempt(lambda p=pdu: pack_link1.receive(p.can_id, p.data, reassembled=not p.single_frame)))
    genuine = pack.link(1, "module").send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80")
    pack_link1.receive(genuine.can_id, genuine.data)  # module 1 itself is still heard
    counters = counted("pack_link_1.rejects", pack_link1.rejects)
    pack.close()
    return judge(reasons, Reason.BAD_MAC, counters, detail="per-pairing keys; the CAN id is in every nonce")


@scenario("can_direction_reflection", family=SPOOF, expected=("blocked", "wrong_peer"))
def can_direction_reflection(seed: int | None = None) -> Outcome:
    """Reflect the pack's own command back to the pack, as captured and with the direction bit flipped."""
    pack = paired_pack(seed)
    pack_link = pack.link(1, "pack")
    module_link = pack.link(1, "module")
    pdu = pack_link.send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x64")
    reasons = [attempt(lambda: pack_link.receive(pdu.can_id, pdu.data))]
    reasons.append(attempt(lambda: pack_link.receive(pdu.can_id ^ _DIR_BIT, pdu.data)))
    # The module's own frame reflected to the module.
    up = module_link.send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80")
    reasons.append(attempt(lambda: module_link.receive(up.can_id, up.data)))
    reasons.append(attempt(lambda: module_link.receive(up.can_id ^ _DIR_BIT, up.data)))
    counters = {
        **counted("pack_link.rejects", pack_link.rejects),
        **counted("module_link.rejects", module_link.rejects),
    }
    pack.close()
    return judge(reasons, Reason.WRONG_PEER, counters, detail="direction-split keys; own direction refused")


@scenario("downgrade_clear", family=DOWNGRADE, expected=("blocked", "tier_too_low"))
def downgrade_clear(seed: int | None = None) -> Outcome:
    """Send a charge command (and safety limits) in clear, both from a rogue node and through the API."""
    pack = paired_pack(seed)
    pack_link, module_link = pack.link(1, "pack"), pack.link(1, "module")
    reasons = []
    for cls in (MessageClass.CHARGE_COMMAND, MessageClass.SAFETY_LIMITS, MessageClass.FIRMWARE_UPDATE):
        real = SEED_LAYOUT.decode(pack_link.send(cls, b"\x01").can_id)
        clear_id = SEED_LAYOUT.encode(dataclasses.replace(real, tier=Tier.NONE))
        reasons.append(attempt(lambda i=clear_id: module_link.receive(i, b"\x01\x00\x64")))
        reasons.append(attempt(lambda c=cls: pack_link.send(c, b"\x01", tier=Tier.NONE)))
    counters = {**counted("module_link.rejects", module_link.rejects), "refused_at_sender": 3}
    pack.close()
    return judge(reasons, Reason.TIER_TOO_LOW, counters, detail="tier checked against the class before any key")


@scenario("downgrade_lower_tier", family=DOWNGRADE, expected=("blocked", "tier_too_low"))
def downgrade_lower_tier(seed: int | None = None) -> Outcome:
    """Send a charge command at the exchange tier: relabelled, and validly sealed with the exchange key."""
    pack = paired_pack(seed)
    pack_link, module_link = pack.link(1, "pack"), pack.link(1, "module")
    pdu = pack_link.send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x64")
    relabel = SEED_LAYOUT.with_field(pdu.can_id, "level", int(Tier.EXCHANGE))
    reasons = [attempt(lambda: module_link.receive(relabel, pdu.data))]
    # Someone holding only the exchange secret (e.g. a logging tool) seals a command at that tier.
    secrets = pack.dep.pack.pairing_secrets(pack.pairing_id(1))
    assert secrets is not None
    sender = forged_sender(secrets, Tier.EXCHANGE, profile=pack_link.profile)
    real = SEED_LAYOUT.decode(pdu.can_id)
    forged = sender.protect(dataclasses.replace(real, tier=None), b"\x01\x00\x64")
    reasons.append(attempt(lambda: module_link.receive(forged.can_id, forged.data)))
    reasons.append(attempt(lambda: pack_link.send(MessageClass.CHARGE_COMMAND, b"\x01", tier=Tier.EXCHANGE)))
    counters = counted("module_link.rejects", module_link.rejects)
    pack.close()
    return judge(reasons, Reason.TIER_TOO_LOW, counters, detail="refused before any key is used")


@scenario("downgrade_flag_strip", family=DOWNGRADE, expected=("blocked", "malformed"))
def downgrade_flag_strip(seed: int | None = None) -> Outcome:
    """Strip the encryption flag (bit 17), and flag plus level (bits 17-19), from protected frames."""
    pack = paired_pack(seed)
    pack_link, module_link = pack.link(1, "pack"), pack.link(1, "module")
    reasons = []
    for cls in (MessageClass.CHARGE_COMMAND, MessageClass.HEARTBEAT):
        pdu = pack_link.send(cls, b"\x01")
        reasons.append(attempt(lambda p=pdu: module_link.receive(p.can_id & ~_FLAG_BIT, p.data)))
        reasons.append(attempt(lambda p=pdu: module_link.receive(p.can_id & ~(_FLAG_BIT | _LEVEL_BITS), p.data)))
    counters = counted("module_link.rejects", module_link.rejects)
    pack.close()
    return judge(
        reasons, Reason.MALFORMED, counters, detail="flag/level disagreement is malformed; no flag = tier_too_low"
    )
