"""The paired channel: one owner per pairing, keys per session, persisted freshness, resync."""

from __future__ import annotations

import shutil

import pytest
from helpers_binding import World

from modbatt.can.functions import function_named
from modbatt.can.ids import SEED_LAYOUT
from modbatt.can.secured import Direction
from modbatt.can.wiretime import CLASSIC, FD
from modbatt.crypto.keystore import KeyStore
from modbatt.errors import ConfigError, Reason, VerificationError
from modbatt.model.pairing import ControllerMode
from modbatt.model.policy import DEFAULT_POLICY, MessageClass
from modbatt.model.tier import Tier
from modbatt.nodes.channel import RESYNC_AFTER_BAD_MACS, pump
from modbatt.nodes.channel_store import EphemeralFreshness, FileFreshness
from modbatt.nodes.entity import EntityNode
from modbatt.nodes.link import SelectiveLink
from modbatt.nodes.paired import persist_entity
from modbatt.nodes.pairing_flow import pair_entities

CHARGE = MessageClass.CHARGE_COMMAND


def _paired(mode=ControllerMode.STANDARD, max_uses=5, **world):
    w = World(**world)
    record = w.bind().record
    cert = w.controller.issue_pairing(record.binding_id, max_uses=max_uses, mode=mode)
    pair_entities(w.controller, w.pack, w.module, certificate=cert)
    return w, cert, cert.metadata.pairing_id


def _refused(channel, pdu):
    with pytest.raises(VerificationError) as exc:
        channel.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)
    return exc.value.reason


def test_the_entity_hands_out_one_channel_per_pairing():
    w, _, pid = _paired()
    channel = w.pack.channel(pid)
    assert w.pack.channel(pid) is channel  # every caller shares the freshness streams
    with pytest.raises(ConfigError, match="close it first"):
        w.pack.channel(pid, profile=FD)
    assert channel.node == w.module.channel(pid).node == 0x01
    channel.close()
    assert w.pack.channel(pid) is not channel and channel.closed


def test_a_link_has_no_default_freshness_and_an_in_memory_store_needs_an_explicit_choice():
    w, _, pid = _paired()
    state = w.pack.binding(w.pack.pairings_held()[0][1])
    with pytest.raises(TypeError, match="counter_stores"):
        SelectiveLink(secrets=w.pack.pairing_secrets(pid), policy=DEFAULT_POLICY, node=1,  # type: ignore[call-arg]
                      binding_key=state.private_key, partner_key=state.partner_key)  # fmt: skip
    bare = EntityNode(w.pack.keystore, clock=w.clock, rng=w.rng)  # in-memory key store, no freshness given
    with pytest.raises(ConfigError, match="EphemeralFreshness"):
        bare.channel(pid)


@pytest.mark.parametrize("mode", list(ControllerMode))
@pytest.mark.parametrize("profile", [CLASSIC, FD], ids=["classic", "fd"])
def test_each_session_has_its_own_keys_and_old_frames_are_stale(mode, profile):
    w, cert, pid = _paired(mode)
    pack, module = w.pack.channel(pid, profile=profile), w.module.channel(pid, profile=profile)
    old = [pack.send(CHARGE, b"\x01\x00\x64") for _ in range(3)]
    old.append(pack.send(MessageClass.IDENTITY, b"announce"))
    for pdu in old:
        module.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)
    first = pack.session_id
    pair_entities(w.controller, w.pack, w.module, certificate=cert)  # session 2 of the certificate
    assert pack.session_id == module.session_id != first
    new = pack.send(CHARGE, b"\x01\x00\x64")
    assert new.freshness == 0  # a new session starts its counters again, under new keys
    assert new.data != old[0].data
    assert [_refused(module, pdu) for pdu in old] == [Reason.STALE] * 4
    assert module.receive(new.can_id, new.data).payload == b"\x01\x00\x64"
    assert module.counters() == {"stale": 4}


def test_frames_from_more_than_the_retired_sessions_back_are_still_refused():
    w, cert, pid = _paired()
    pack, module = w.pack.channel(pid), w.module.channel(pid)
    ancient = pack.send(CHARGE, b"\x01")
    for _ in range(3):
        pair_entities(w.controller, w.pack, w.module, certificate=cert)
    assert _refused(module, ancient) is Reason.BAD_MAC  # beyond the two kept sessions: unclassified


def test_receiver_restart_accepts_nothing_until_resync():
    w, _, pid = _paired()
    pack, module = w.pack.channel(pid), w.module.channel(pid)
    recorded = [pack.send(CHARGE, bytes([i])) for i in range(3)]
    for pdu in recorded:
        module.receive(pdu.can_id, pdu.data)
    module = w.restart(w.module).channel(pid)
    assert not module.synced
    assert [_refused(module, p) for p in recorded] == [Reason.STALE] * 3
    assert pump(pack, module) == 8  # restart notice, 3 answers + a challenge back, 3 answers
    assert module.synced and pack.synced
    assert {_refused(module, p) for p in recorded} <= {Reason.REPLAY, Reason.STALE}
    fresh = pack.send(CHARGE, b"\x09")
    assert module.receive(fresh.can_id, fresh.data).payload == b"\x09"


@pytest.mark.parametrize("profile", [CLASSIC, FD], ids=["classic", "fd"])
def test_sender_restart_jumps_its_counters_and_the_partner_follows_through_resync(profile):
    w, _, pid = _paired()
    w.freshness["pack-01"].reservation = 16
    pack, module = w.pack.channel(pid, profile=profile), w.module.channel(pid, profile=profile)
    before = [pack.send(CHARGE, bytes([i])) for i in range(3)]
    module.receive(before[0].can_id, before[0].data)
    in_flight = before[1:]  # sent, not yet delivered when the pack restarts
    pack = w.restart(w.pack).channel(pid, profile=profile)
    pump(pack, module)
    after = pack.send(CHARGE, b"\x07")
    assert after.freshness > max(p.freshness for p in before) + 1  # resumed past the reservation
    assert module.receive(after.can_id, after.data).payload == b"\x07"
    # What the pack sent before its restart is refused once the module heard of the restart.
    assert {_refused(module, p) for p in in_flight} <= {Reason.REPLAY, Reason.STALE}


def test_a_lost_restart_notice_is_recovered_after_a_streak_of_bad_macs():
    w, _, pid = _paired()
    w.freshness["pack-01"].reservation = 600
    pack, module = w.pack.channel(pid), w.module.channel(pid)
    first = pack.send(CHARGE, b"\x01")
    module.receive(first.can_id, first.data)
    pack = w.restart(w.pack).channel(pid)
    pack.frames_to_send()  # the restart notice is lost on the bus
    jumped = [pack.send(CHARGE, bytes([i])) for i in range(RESYNC_AFTER_BAD_MACS)]
    # Classic CAN: 8 FV bits cannot reach 600 values ahead; the MAC fails under the wrong guess.
    assert [_refused(module, p) for p in jumped] == [Reason.BAD_MAC] * RESYNC_AFTER_BAD_MACS
    assert pump(pack, module) > 0  # the module challenged the pack after the streak
    again = pack.send(CHARGE, b"\x02")
    assert module.receive(again.can_id, again.data).payload == b"\x02"


def test_a_kill_between_reserving_and_using_a_value_never_reuses_it():
    w, _, pid = _paired()
    w.freshness["pack-01"].reservation = 4
    pack = w.pack.channel(pid)
    store = w.freshness["pack-01"].counter_store(pid, pack.session_id, Tier.PAIRING, Direction.INITIATOR_TO_RESPONDER)
    sent = [pack.send(CHARGE, b"\x01").freshness for _ in range(4)]  # values 0-3: the first reservation
    real = store.save

    def save_then_die(bound):
        real(bound)  # the new bound is durable...
        raise KeyboardInterrupt("killed")  # ...and the process dies before the value is used

    store.save = save_then_die
    with pytest.raises(KeyboardInterrupt):
        pack.send(CHARGE, b"\x01")  # reserves 4-7, uses nothing
    store.save = real
    pack = w.restart(w.pack).channel(pid)
    nxt = pack.send(CHARGE, b"\x01").freshness
    assert sent == [0, 1, 2, 3] and nxt == 8  # 4-7 were reserved before the kill: skipped, never reused


def test_unsolicited_resync_answers_and_forged_restart_notices():
    w, _, pid = _paired()
    pack, module = w.pack.channel(pid), w.module.channel(pid)
    module.resync()
    (request,) = module.frames_to_send()
    pack.receive(request.can_id, request.data)
    answers = pack.frames_to_send()
    assert len(answers) == 3 and all(SEED_LAYOUT.decode(a.can_id).tier is not Tier.NONE for a in answers)
    # Answers nobody asked for (the module's challenge answered once already) are refused.
    for a in answers:
        module.receive(a.can_id, a.data, reassembled=not a.single_frame)
    assert {_refused(module, a) for a in answers} == {Reason.UNAUTHORIZED}
    # An unauthenticated restart notice costs one resync round trip and nothing else.
    forged_id = SEED_LAYOUT.encode(function_named("RESYNC_RESTART").id_fields(0x01, 1))
    assert pack.receive(forged_id, b"\x00" * 8) is None
    assert not pack.synced
    pump(pack, module)
    assert pack.synced and module.synced
    up = module.send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80")
    assert pack.receive(up.can_id, up.data).payload == b"\x0c\x80"


def test_revocation_closes_the_live_channel_and_erases_its_freshness():
    w, _, pid = _paired()
    pack = w.pack.channel(pid)
    pack.send(CHARGE, b"\x01")
    notice = w.controller.revoke_pairing(pid)
    w.pack.apply_pairing_revocation(notice)
    assert pack.revoked
    with pytest.raises(VerificationError) as exc:
        pack.send(CHARGE, b"\x01")
    assert exc.value.reason is Reason.REVOKED
    with pytest.raises(VerificationError) as exc:
        w.pack.channel(pid)
    assert exc.value.reason is Reason.REVOKED
    assert not [k for k in w.freshness["pack-01"]._stores if k[0] == pid]


def _on_disk(w, tmp_path, role):
    """Move ``role``'s entity onto a key store on disk (freshness: files beside it)."""
    node = w.nodes[role]
    path = tmp_path / f"{role}.keystore"
    key_file = persist_entity(node, path)
    moved = EntityNode(KeyStore.open(path, key_file=key_file), clock=w.clock, rng=w.rng)
    w.nodes[role] = moved
    w.client.nodes[moved.access_data.endpoint] = moved
    return path, key_file


def test_freshness_on_disk_survives_a_restart_and_a_second_owner_is_refused(tmp_path):
    w, _, pid = _paired()
    path, key_file = _on_disk(w, tmp_path, "module")
    assert isinstance(w.module.freshness, FileFreshness)
    module, pack = w.module.channel(pid), w.pack.channel(pid)
    assert module.synced  # the first open of this session on this store: nothing was ever accepted
    up = [module.send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80").freshness for _ in range(3)]
    twin = EntityNode(KeyStore.open(path, key_file=key_file), clock=w.clock, rng=w.rng)
    with pytest.raises(ConfigError, match="live elsewhere"):
        twin.channel(pid)  # a second owner of the same streams would reuse nonces
    module.close()
    reborn = EntityNode(KeyStore.open(path, key_file=key_file), clock=w.clock, rng=w.rng).channel(pid)
    assert not reborn.synced
    pump(pack, reborn)
    again = reborn.send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x81")
    assert again.freshness >= 1024 > max(up)
    assert pack.receive(again.can_id, again.data).payload == b"\x0c\x81"


def test_lost_freshness_state_is_refused_rather_than_restarted_at_zero(tmp_path):
    w, _, pid = _paired()
    path, key_file = _on_disk(w, tmp_path, "pack")
    w.pack.channel(pid).send(CHARGE, b"\x01")
    w.pack.close_channels()
    shutil.rmtree(tmp_path / "pack.freshness")  # e.g. a key store restored from a backup without it
    reopened = EntityNode(KeyStore.open(path, key_file=key_file), clock=w.clock, rng=w.rng)
    with pytest.raises(ConfigError, match="re-pair"):
        reopened.channel(pid)


def test_explicit_ephemeral_store_is_what_the_in_memory_deployment_uses():
    w, _, _ = _paired()
    assert all(isinstance(f, EphemeralFreshness) for f in w.freshness.values())
    assert w.pack.freshness is w.freshness["pack-01"] and not w.pack.freshness.persistent


def test_fd_resync_answers_are_valid_fd_lengths_and_their_padding_is_checked():
    w, _, pid = _paired()
    pack, module = w.pack.channel(pid, profile=FD), w.module.channel(pid, profile=FD)
    module.resync()
    (request,) = module.frames_to_send()
    pack.receive(request.can_id, request.data)
    single = [a for a in pack.frames_to_send() if a.single_frame]
    assert [len(a.data) for a in single] == [24, 24]  # FV 7 + tag 16, padded to a valid FD length
    with pytest.raises(VerificationError) as exc:  # a padding byte that is not zero
        module.receive(single[0].can_id, single[0].data[:-1] + b"\x01")
    assert exc.value.reason is Reason.MALFORMED
    assert module.receive(single[1].can_id, single[1].data) is None  # accepted: the window is resynced


def test_floods_of_resync_requests_and_forgeries_cost_bounded_work():
    w, _, pid = _paired()
    pack, module = w.pack.channel(pid), w.module.channel(pid)
    request_id = SEED_LAYOUT.encode(function_named("RESYNC_REQUEST").id_fields(0x01, 1))
    for i in range(100):  # unauthenticated requests: anyone on the bus can send them
        assert pack.receive(request_id, i.to_bytes(8, "big")) is None
    assert len(pack.frames_to_send()) == 3  # one set of answers (one signature), for the latest
    assert pack.frames_to_send() == []
    genuine = pack.send(CHARGE, b"\x01")
    challenges = 0
    for i in range(640):  # forged frames with a valid identifier: unexplained bad_mac
        with pytest.raises(VerificationError):
            module.receive(genuine.can_id, bytes([i & 0xFF]) + genuine.data[1:3] + bytes(5))
        challenges += len(module.frames_to_send())
    assert 1 <= challenges <= 640 // 64 + 1
