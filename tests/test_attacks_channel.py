"""The channel attack scenarios fail for the right reason, and their attack code really works
where the defence is absent (so a "blocked" is the defence's doing, not a broken attack)."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from modbatt import attacks
from modbatt.attacks.channel import _FdFrame, forge_from_nonce_reuse, h_from_nonce_reuse
from modbatt.can.functions import function_for
from modbatt.can.ids import SEED_LAYOUT
from modbatt.can.secured import Direction, SecuredReceiver, SecuredSender, derive_traffic_keys
from modbatt.can.wiretime import FD
from modbatt.crypto import labels
from modbatt.crypto.freshness import FreshnessCounter, MemoryCounterStore, ReplayWindow
from modbatt.crypto.suite import hkdf_sha256
from modbatt.model.policy import MessageClass
from modbatt.model.tier import Tier

SEED = 11


def test_the_forbidden_attack_forges_a_command_where_a_nonce_does_repeat():
    """The attack the channel owner prevents: one key across sessions with counters restarting at 0
    (docs/threat-model.md, F11 and F12)."""
    secret = bytes(range(32))
    keys = derive_traffic_keys(secret, Tier.PAIRING, Direction.INITIATOR_TO_RESPONDER)
    fields = function_for(MessageClass.CHARGE_COMMAND).id_fields(1, 0)
    session1 = SecuredSender(SEED_LAYOUT, FD, keys, FreshnessCounter(MemoryCounterStore()))
    session2 = SecuredSender(SEED_LAYOUT, FD, keys, FreshnessCounter(MemoryCounterStore()))
    plain1 = [bytes([1, 0, 0x40 + i]) for i in range(6)]
    heard1 = [_FdFrame.parse(session1.protect(fields, p), 3) for p in plain1]
    heard2 = [_FdFrame.parse(session2.protect(fields, bytes([1, 0, 0x10 + i])), 3) for i in range(3)]
    h = h_from_nonce_reuse(heard1[0], heard2[0])
    # The recovered H is GHASH's real key, AES_K(0^128) (SP 800-38D §6.4).
    fd_key = hkdf_sha256(secret, info=labels.CAN_TRAFFIC_KEY + bytes([int(Tier.PAIRING), 0]) + b"aes-256-gcm-128")
    encryptor = Cipher(algorithms.AES(fd_key), modes.ECB()).encryptor()  # one block, to check H
    assert h == int.from_bytes(encryptor.update(bytes(16)) + encryptor.finalize(), "big")
    assert h_from_nonce_reuse(heard1[1], heard2[1]) == h  # every equal-nonce pair agrees under one key
    receiver = SecuredReceiver(SEED_LAYOUT, FD, keys, ReplayWindow(32, highest=2))  # session 2 reached FV 2
    forged = forge_from_nonce_reuse(h, heard1[5], plain1[5], b"\x01\x00\xff")
    can_id = SEED_LAYOUT.encode(fields.__class__(fields.function, 1, fields.priority, 0, Tier.PAIRING))
    assert receiver.open(can_id, forged).payload == b"\x01\x00\xff"  # accepted: the attack is real


def test_channel_scenarios_show_the_specific_defences():
    cs = attacks.run("cross_session_replay_standard", SEED).counters
    assert cs["classic.equal_nonce_values_across_sessions"] > 0 and cs["fd.equal_nonce_values_across_sessions"] > 0
    assert cs["classic.keystream_reused"] == cs["fd.keystream_reused"] == 0
    g = attacks.run("gcm_nonce_reuse_forgery_fd", SEED).counters
    assert g["h_candidates"] >= 2 and g["h_consistent"] == 0
    assert g["module_channel.rejects.bad_mac"] == g["h_candidates"]
    r = attacks.run("restart_receiver_replay", SEED).counters
    assert r["classic.genuine_after_restart"] == r["fd.genuine_after_restart"] == 1
    assert r["fd.module_channel.rejects.stale"] >= 5  # before the resync, everything is stale
    s = attacks.run("restart_sender_replay", SEED).counters
    assert s["classic.freshness_reused"] == s["fd.freshness_reused"] == 0
    assert s["classic.freshness_jump"] > 1000 and s["classic.genuine_after_restart"] == 1
    a = attacks.run("pairing_accept_reset_in_progress", SEED).counters
    assert a["accepts_absorbed"] == 20 and a["session_reset"] == 0 and a["uses_pack"] == a["uses_module"] == 1
    e = attacks.run("pairing_accept_use_exhaustion", SEED).counters
    assert e["uses_spent_by_replays"] == 0 and e["sessions_completed"] == 2 and e["burned_seen_by_controller"] == 0
