"""Renewal before expiry: the new pairing takes over with no frame lost, no replay window and no nonce reuse.

Through the paths a deployment uses: the controller renews (``renew_entities`` runs the real pairing
flow), each entity's :meth:`EntityNode.handover` is the link during the overlap, and the frames are
those each end's channel builds. Nonces are watched where they are used: every AEAD object the CAN
codec builds is replaced by the recording one of ``tests/test_channel_invariant.py``.
"""

from __future__ import annotations

import dataclasses

import hypothesis.strategies as st
import pytest
import test_channel_invariant as invariant
from cryptography.hazmat.primitives.ciphers import aead
from helpers_binding import World
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from hypothesis.stateful import invariant as check

import modbatt.can.secured as secured
from modbatt.can.secured import SecuredPdu
from modbatt.can.wiretime import CLASSIC, FD
from modbatt.errors import Reason, VerificationError
from modbatt.model.policy import MessageClass
from modbatt.model.profile import ProtocolProfile
from modbatt.nodes.pairing_flow import pair_entities, renew_entities
from modbatt.nodes.renewal import HandoverPhase
from modbatt.protocol.pack_state import PackEvent, PackSecurity, PackState

CHARGE = MessageClass.CHARGE_COMMAND
_DONE = HandoverPhase.DONE
VOLTS = MessageClass.VOLTAGE_TELEMETRY
IDENTITY = MessageClass.IDENTITY  # binding tier: a multi-frame unit on classic CAN


@pytest.fixture
def nonces():
    recorder = invariant._Recorder()
    real = (secured.AESCCM, secured.AESGCM)
    secured.AESCCM = recorder.wrap("ccm", aead.AESCCM)
    secured.AESGCM = recorder.wrap("gcm", aead.AESGCM)
    try:
        yield recorder
    finally:
        secured.AESCCM, secured.AESGCM = real


def _paired(valid_for_s: int = 3600, protocol: str = "seed"):
    w = World()
    record = w.bind().record
    cert = w.controller.issue_pairing(record.binding_id, valid_for_s=valid_for_s, profile=protocol)
    pair_entities(w.controller, w.pack, w.module, certificate=cert)
    return w, cert


def _deliver(end, pdu: SecuredPdu):
    return end.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)


def _refused(end, pdu: SecuredPdu) -> Reason:
    with pytest.raises(VerificationError) as exc:
        _deliver(end, pdu)
    return exc.value.reason


@pytest.mark.parametrize("protocol", ["seed", "efficient"])
@pytest.mark.parametrize("profile", [CLASSIC, FD], ids=["classic", "fd"])
def test_the_new_pairing_takes_over_without_a_gap_or_a_replay_window(nonces, profile, protocol):
    w, cert = _paired(protocol=protocol)
    old = cert.metadata.pairing_id
    pack, module = w.pack.channel(old, profile=profile), w.module.channel(old, profile=profile)
    old_session = pack.session_id
    before = [pack.send(CHARGE, b"\x01\x00\x03"), module.send(VOLTS, b"\x0c\x80")]
    _deliver(module, before[0]), _deliver(pack, before[1])

    outcome = renew_entities(w.controller, w.pack, w.module, cert)
    new = outcome.certificate.metadata.pairing_id
    assert new != old and outcome.certificate.metadata.binding_id == cert.metadata.binding_id
    assert outcome.certificate.metadata.profile.value == protocol  # the renewal keeps the terms
    hp, hm = w.pack.handover(old, new, profile=profile), w.module.handover(old, new, profile=profile)
    assert w.pack.handover(old, new, profile=profile) is hp  # one live object per renewal
    # The pack knows the module holds the new keys (the controller recorded both completions).
    assert (hp.phase, hm.phase) == (HandoverPhase.SENDING_NEW, HandoverPhase.OVERLAP)

    # In flight across the switch: the module still sends on the old pairing, the pack on the new.
    up_old = [hm.send(VOLTS, bytes([0x0c, i])) for i in range(3)] + [hm.send(IDENTITY, b"still old")]
    down_new = [hp.send(CHARGE, bytes([2, 0, i])) for i in range(3)]
    assert hm.session_id != hp.session_id
    got = [_deliver(hm, pdu) for pdu in down_new]
    assert [g.payload for g in got] == [bytes([2, 0, i]) for i in range(3)]
    assert hm.partner_confirmed and hm.phase is HandoverPhase.SENDING_NEW  # heard the pack on the new keys
    up_new = [hm.send(VOLTS, bytes([0x0d, i])) for i in range(2)]
    # Late old frames still arrive after the module's first new frame: nothing is lost.
    got = [_deliver(hp, pdu) for pdu in up_new[:1] + up_old + up_new[1:]]
    assert [g.payload for g in got] == [b"\x0d\x00", b"\x0c\x00", b"\x0c\x01", b"\x0c\x02", b"still old", b"\x0d\x01"]
    assert hp.accepted == {"old": 4, "new": 2} and hm.accepted == {"new": 3}

    # During the overlap a replay is refused by the window of the pairing it belongs to.
    assert {_refused(hp, pdu) for pdu in up_old + up_new} == {Reason.REPLAY}
    assert {_refused(hm, pdu) for pdu in down_new} == {Reason.REPLAY}
    assert _refused(hm, before[0]) is Reason.REPLAY

    # The grace runs from the first tick after both directions moved; then the old pairing is erased.
    now = w.clock()
    assert not hp.tick(now) and not hm.tick(now)
    assert hp.tick(now + hp.overlap_s) and hm.tick(now + hm.overlap_s)
    assert hp.phase is hm.phase is HandoverPhase.DONE
    for node in (w.pack, w.module):
        assert old not in dict(node.pairings_held()) and node.pairing_secrets(old) is None
        assert not node.freshness.opened(old, old_session)  # its freshness state is erased too
        with pytest.raises(VerificationError) as exc:
            node.channel(old)
        assert exc.value.reason is Reason.REVOKED
        with pytest.raises(VerificationError) as exc:
            node.accept_certificate(cert)  # the old certificate can never start a session again
        assert exc.value.reason is Reason.REVOKED
    # No old-key frame is accepted after the overlap: the keys that opened it are gone, so it fails
    # the MAC (or the window first, when its freshness value was already seen on the new pairing).
    late = {_refused(hp, pdu) for pdu in up_old} | {_refused(hm, pdu) for pdu in before[:1]}
    assert late <= {Reason.BAD_MAC, Reason.BAD_SIGNATURE, Reason.STALE, Reason.REPLAY}
    # The new pairing carries on, both ways.
    assert _deliver(hm, hp.send(CHARGE, b"\x03\x00\x00")).payload == b"\x03\x00\x00"
    assert _deliver(hp, hm.send(VOLTS, b"\x0e\x00")).payload == b"\x0e\x00"
    assert nonces.calls > 0  # the recorder saw every encryption; a reused nonce would have failed it


def test_an_efficient_renewal_derives_its_own_binding_mac_secret_and_hands_over_through_the_channels():
    w, cert = _paired(protocol="efficient")
    old = cert.metadata.pairing_id
    pack, module = w.pack.channel(old), w.module.channel(old)
    assert pack.protocol is module.protocol is ProtocolProfile.EFFICIENT
    assert _deliver(pack, module.send(IDENTITY, b"old pairing")).payload == b"old pairing"

    new = renew_entities(w.controller, w.pack, w.module, cert).certificate.metadata.pairing_id
    old_secrets, new_secrets = w.pack.pairing_secrets(old), w.pack.pairing_secrets(new)
    assert old_secrets is not None and new_secrets is not None
    # The binding MAC secret is per session: the renewal's session derives its own, on both ends.
    assert new_secrets.profile is ProtocolProfile.EFFICIENT
    assert new_secrets.binding_secret not in (None, old_secrets.binding_secret)
    assert w.module.pairing_secrets(new).binding_secret == new_secrets.binding_secret
    hp, hm = w.pack.handover(old, new), w.module.handover(old, new)
    assert hp.channel is w.pack.channel(new) and hm.channel is w.module.channel(new)  # the entities' own channels
    assert hp.protocol is ProtocolProfile.EFFICIENT

    # Binding-tier units (AEAD under each session's binding MAC secret) on both pairings in the overlap.
    late = hm.send(IDENTITY, b"late, old")  # the module still sends on the old pairing
    assert _deliver(hm, hp.send(IDENTITY, b"pack, new")).payload == b"pack, new"
    assert _deliver(hp, late).payload == b"late, old"
    assert _deliver(hp, hm.send(IDENTITY, b"module, new")).payload == b"module, new"
    assert _deliver(hp, hm.send(VOLTS, b"\x0c\x01")).payload == b"\x0c\x01"  # and the exchange tier
    assert hp.accepted == {"old": 1, "new": 2} and hm.accepted == {"new": 1}
    # An old-session unit does not authenticate under the new pairing's keys; its own window refuses it again.
    assert not hp.channel.authenticates(late.can_id, late.data, reassembled=not late.single_frame)
    assert _refused(hp, late) is Reason.REPLAY
    hp.finish(), hm.finish()
    assert _refused(hp, late) in {Reason.BAD_MAC, Reason.STALE, Reason.REPLAY}  # the old keys are gone
    assert w.pack.pairing_secrets(old) is None and w.module.pairing_secrets(old) is None
    assert _deliver(hm, hp.send(IDENTITY, b"after")).payload == b"after"


def test_a_renewal_may_move_a_pairing_from_seed_to_efficient():
    w, cert = _paired()
    old = cert.metadata.pairing_id
    w.pack.channel(old), w.module.channel(old)
    renewal = renew_entities(w.controller, w.pack, w.module, cert, profile="efficient").certificate
    new = renewal.metadata.pairing_id
    assert renewal.metadata.profile is ProtocolProfile.EFFICIENT
    hp, hm = w.pack.handover(old, new), w.module.handover(old, new)
    assert (hp.channel.protocol, w.pack.channel(old).protocol) == (ProtocolProfile.EFFICIENT, ProtocolProfile.SEED)
    signed = hm.send(IDENTITY, b"signed, old")  # seed: signed with the module's binding key
    assert _deliver(hm, hp.send(IDENTITY, b"sealed, new")).payload == b"sealed, new"
    assert _deliver(hp, signed).payload == b"signed, old"
    assert _deliver(hp, hm.send(IDENTITY, b"sealed, up")).payload == b"sealed, up"
    assert hp.accepted == {"old": 1, "new": 1}
    hp.finish(), hm.finish()
    assert _refused(hp, signed) in {Reason.BAD_MAC, Reason.BAD_SIGNATURE, Reason.STALE}


def test_the_ledger_links_the_renewal_and_the_trust_graph_shows_the_old_pairing_retired():
    from modbatt.workbench.figures import trust_graph

    w, cert = _paired()
    old = cert.metadata.pairing_id
    outcome = renew_entities(w.controller, w.pack, w.module, cert)
    new = outcome.certificate.metadata.pairing_id
    hp, hm = w.pack.handover(old, new), w.module.handover(old, new)
    hp.finish(), hm.finish()
    w.controller.revoke_pairing(old, "renewed")
    kinds = [e.get("kind") for e in map(_decode, w.ledger.entries())]
    assert kinds[-4:] == ["pairing_issued", "pairing_renewed", "pairing_completed", "pairing_revoked"]
    renewed = [e for e in map(_decode, w.ledger.entries()) if e.get("kind") == "pairing_renewed"]
    assert renewed[0]["renews"] == old and renewed[0]["pairing_id"] == new
    g = trust_graph(w.ledger.entries())
    edges = {k: d for _, _, k, d in g.edges(keys=True, data=True)}
    assert edges[old]["revoked"] and edges[new]["completed"] and not edges[new]["revoked"]


def _decode(entry: bytes) -> dict:
    from modbatt.encoding import strict_loads

    return strict_loads(entry)


def test_a_restart_during_the_overlap_ends_it_on_both_ends():
    w, cert = _paired()
    old = cert.metadata.pairing_id
    outcome = renew_entities(w.controller, w.pack, w.module, cert)
    new = outcome.certificate.metadata.pairing_id
    hp = w.pack.handover(old, new)
    hm = w.module.handover(old, new)
    stale = hm.send(VOLTS, b"\x0c\x01")  # sent on the old pairing before the module dies
    module = w.restart(w.module)
    reborn = module.handover(old, new)  # a handover begun in an earlier life ends at start-up
    assert reborn.phase is HandoverPhase.DONE and module.pairing_secrets(old) is None
    for pdu in reborn.frames_to_send():  # the restart notice reaches the pack
        assert _deliver(hp, pdu) is None
    assert hp.phase is HandoverPhase.DONE  # the pack ends its overlap too: nothing old is due from a restarted end
    assert _refused(hp, stale) in {Reason.BAD_MAC, Reason.STALE}
    for pdu in hp.frames_to_send():
        _deliver(reborn, pdu)
    for pdu in reborn.frames_to_send():
        _deliver(hp, pdu)
    assert _deliver(hp, reborn.send(VOLTS, b"\x0c\x02")).payload == b"\x0c\x02"


def test_the_overlap_never_outlives_the_old_certificate():
    w, cert = _paired(valid_for_s=600)
    old = cert.metadata.pairing_id
    new = renew_entities(w.controller, w.pack, w.module, cert).certificate.metadata.pairing_id
    hm = w.module.handover(old, new)
    assert hm.phase is HandoverPhase.OVERLAP and hm.deadline == cert.metadata.expires_at_ms / 1000
    assert not hm.tick(hm.deadline - 1)
    assert hm.tick(hm.deadline) and hm.phase is HandoverPhase.DONE  # the partner never showed up on the new keys


def test_a_handover_needs_a_renewal_of_the_same_binding_role_and_context():
    w, cert = _paired()
    old = cert.metadata.pairing_id
    other = w.controller.issue_pairing(cert.metadata.binding_id, context="diagnostics")
    pair_entities(w.controller, w.pack, w.module, certificate=other)
    with pytest.raises(VerificationError) as exc:
        w.pack.handover(old, other.metadata.pairing_id)
    assert exc.value.reason is Reason.WRONG_SESSION
    with pytest.raises(VerificationError) as exc:
        w.pack.handover(old, "00000000-0000-4000-8000-000000000000")
    assert exc.value.reason is Reason.UNKNOWN_BINDING


def test_a_revoked_pairing_is_not_renewed():
    w, cert = _paired()
    w.controller.revoke_pairing(cert.metadata.pairing_id)
    size = w.ledger.size
    with pytest.raises(VerificationError) as exc:
        renew_entities(w.controller, w.pack, w.module, cert)
    assert exc.value.reason is Reason.REVOKED and w.ledger.size == size  # nothing issued


def test_the_pack_state_machine_asks_for_the_renewal_before_expiry_and_keeps_its_state():
    w, cert = _paired(valid_for_s=3600)
    meta = cert.metadata
    m = PackSecurity(state=PackState.ACTIVE, binding_id=meta.binding_id, pairing_id=meta.pairing_id,
                     expires_at=meta.expires_at_ms / 1000)  # fmt: skip
    now = w.clock()
    assert not m.renewal_due(now, lead_s=600)
    assert m.renewal_due(m.expires_at - 600, lead_s=600)
    now = w.clock.advance(m.expires_at - 600 - now)
    outcome = renew_entities(w.controller, w.pack, w.module, cert)
    new = outcome.certificate.metadata
    step = m.handle(PackEvent.RENEWED, now, pairing_id=new.pairing_id, policy=new.encryption_policy,
                    expires_at=new.expires_at_ms / 1000)  # fmt: skip
    assert step.target is PackState.ACTIVE and m.pairing_id == new.pairing_id and not m.renewal_due(now, 600)
    assert m.tick(meta.expires_at_ms / 1000 + 1) is None  # the old expiry no longer applies


# ------------------------------------------------------------------ a stateful search for the promise


@dataclasses.dataclass
class Sent:
    sender: str
    pdu: SecuredPdu
    pairing: str
    accepted: int = 0


class RenewalMachine(RuleBasedStateMachine):
    """Any interleaving of sends, deliveries (replays, reordering), renewals and ticks.

    Safety: no frame is accepted twice, none after its pairing was retired at the receiver, no
    (key, nonce) pair is used twice. Liveness: delivered in order, nothing sent is refused.
    """

    def __init__(self) -> None:
        super().__init__()
        self.recorder = invariant._Recorder()
        self._real = (secured.AESCCM, secured.AESGCM)
        secured.AESCCM = self.recorder.wrap("ccm", aead.AESCCM)  # type: ignore[misc]
        secured.AESGCM = self.recorder.wrap("gcm", aead.AESGCM)  # type: ignore[misc]
        self.sent: list[Sent] = []
        self.retired: dict[str, set[str]] = {"pack": set(), "module": set()}

    def teardown(self) -> None:
        secured.AESCCM, secured.AESGCM = self._real  # type: ignore[misc]
        if hasattr(self, "w"):
            self.w.ledger.close()

    @initialize(fd=st.booleans())
    def setup(self, fd: bool) -> None:
        self.profile = FD if fd else CLASSIC
        self.w, self.cert = _paired()
        pid = self.cert.metadata.pairing_id
        self.ends = {"pack": self.w.pack.channel(pid, profile=self.profile),
                     "module": self.w.module.channel(pid, profile=self.profile)}  # fmt: skip
        self.pairing_of_end = {"pack": pid, "module": pid}
        self.in_order: dict[str, list[Sent]] = {"pack": [], "module": []}  # not yet delivered, per receiver
        self.reordered = False  # a replay delivered a frame ahead of its turn: windows may have moved on

    def _node(self, side: str):
        return self.w.pack if side == "pack" else self.w.module

    def _sending_pairing(self, side: str) -> str:
        end = self.ends[side]
        sid = end.session_id
        for pid in (getattr(end, "pairing_id", None), getattr(end, "old_pairing_id", None)):
            secrets = self._node(side).pairing_secrets(pid) if pid else None
            if secrets is not None and secrets.session_id == sid:
                return pid
        raise AssertionError("no held pairing sends under this session")

    @rule(side=st.sampled_from(["pack", "module"]), cls=st.sampled_from([CHARGE, VOLTS, IDENTITY]))
    def send(self, side: str, cls: MessageClass) -> None:
        pairing = self._sending_pairing(side)
        frame = Sent(side, self.ends[side].send(cls, b"\x05\x06"), pairing)
        self.sent.append(frame)
        self.in_order["module" if side == "pack" else "pack"].append(frame)

    def _deliver(self, frame: Sent) -> None:
        receiver = "module" if frame.sender == "pack" else "pack"
        try:
            got = _deliver(self.ends[receiver], frame.pdu)
        except VerificationError:
            return
        assert got is not None and got.payload == b"\x05\x06"
        assert frame.accepted == 0, "a frame was accepted twice"
        assert frame.pairing not in self.retired[receiver], "a frame of a retired pairing was accepted"
        frame.accepted += 1
        if self.retired[receiver]:
            event("a frame accepted after a retirement")

    @precondition(lambda self: any(self.in_order.values()))
    @rule(side=st.sampled_from(["pack", "module"]))
    def deliver_next(self, side: str) -> None:
        """In order: the bus as it normally is. Everything sent and still open must be accepted."""
        if not self.in_order[side]:
            return
        frame = self.in_order[side].pop(0)
        before = frame.accepted
        self._deliver(frame)
        if not before and not self.reordered and frame.pairing not in self.retired[side]:
            assert frame.accepted == 1, "a frame delivered in order was lost across the switch"

    @precondition(lambda self: self.sent)
    @rule(pick=st.integers(0, 1000))
    def replay(self, pick: int) -> None:
        frame = self.sent[pick % len(self.sent)]
        self._deliver(frame)
        waiting = self.in_order["module" if frame.sender == "pack" else "pack"]
        self.reordered |= frame.accepted == 1 and frame in waiting

    @precondition(lambda self: all(getattr(e, "phase", _DONE) is _DONE for e in self.ends.values()))
    @rule()
    def renew(self) -> None:
        old = self.pairing_of_end["pack"]
        cert = self.cert
        outcome = renew_entities(self.w.controller, self.w.pack, self.w.module, cert)
        self.cert = outcome.certificate
        new = outcome.certificate.metadata.pairing_id
        for side in ("pack", "module"):
            self.ends[side] = self._node(side).handover(old, new, profile=self.profile)
            self.pairing_of_end[side] = new

    @rule(seconds=st.sampled_from([0.5, 3.0]))
    def tick(self, seconds: float) -> None:
        now = self.w.clock.advance(seconds)
        for side, end in self.ends.items():
            if hasattr(end, "tick") and end.tick(now):
                self.retired[side].add(end.old_pairing_id)
                event("an overlap ended")

    @check()
    def no_nonce_reused(self) -> None:
        assert self.recorder.calls >= 0  # the recorder asserts at each encryption


TestRenewalMachine = RenewalMachine.TestCase
TestRenewalMachine.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
