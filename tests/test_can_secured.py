"""Secured frame formats: round trips, every rejection class, resync, hostile input."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modbatt.can.ids import LAYOUTS, LEGACY_MODULE_LAYOUT, SEED_LAYOUT, CanIdFields, IdLayout
from modbatt.can.secured import (
    CLASSIC,
    FD,
    MAX_PDU,
    BusProfile,
    Direction,
    SecuredReceiver,
    SecuredSender,
    TrafficKeys,
    derive_traffic_keys,
    frame_format,
)
from modbatt.crypto.freshness import FileCounterStore, FreshnessCounter, MemoryCounterStore, ReplayWindow
from modbatt.crypto.suite import PrivateKey
from modbatt.errors import Reason, VerificationError
from modbatt.model.tier import Tier

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
DIR = Direction.INITIATOR_TO_RESPONDER
FIELDS = CanIdFields(function=0x42, node=0x03, priority=6, direction=1)
PROFILES = (CLASSIC, FD)
_BINDING_KEY = PrivateKey.generate()


def _keys(tier: Tier, secret: bytes = SECRET, direction: Direction = DIR) -> tuple[TrafficKeys, TrafficKeys]:
    if tier is Tier.NONE:
        k = TrafficKeys.clear(direction)
        return k, k
    if tier is Tier.BINDING:
        key = _BINDING_KEY if secret == SECRET else PrivateKey.generate()
        return (
            TrafficKeys.binding(direction, signer=key),
            TrafficKeys.binding(direction, verifier=_BINDING_KEY.public_key),
        )
    k = derive_traffic_keys(secret, tier, direction)
    return k, k


def _pair(
    tier: Tier,
    profile: BusProfile,
    layout: IdLayout = SEED_LAYOUT,
    *,
    window: ReplayWindow | None = None,
    counter: FreshnessCounter | None = None,
) -> tuple[SecuredSender, SecuredReceiver]:
    tx, rx = _keys(tier)
    counter = counter or FreshnessCounter(MemoryCounterStore(), window=64)
    return SecuredSender(layout, profile, tx, counter), SecuredReceiver(layout, profile, rx, window)


def _reason(rx: SecuredReceiver, can_id: int, data: bytes, *, reassembled: bool = False) -> Reason:
    with pytest.raises(VerificationError) as exc:
        rx.open(can_id, data, reassembled=reassembled)
    return exc.value.reason


def _sizes(tier: Tier, profile: BusProfile) -> list[int]:
    room = frame_format(tier, profile).room
    return sorted({0, 1, min(3, room), room, 8, room + 1, 100})


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("tier", list(Tier), ids=lambda t: t.name)
def test_round_trip_every_tier_and_profile(tier: Tier, profile: BusProfile) -> None:
    tx, rx = _pair(tier, profile)
    for n in _sizes(tier, profile):
        payload = bytes((i * 7 + n) & 0xFF for i in range(n))
        pdu = tx.protect(FIELDS, payload)
        assert pdu.single_frame is (len(pdu.data) <= profile.data_field)
        if pdu.single_frame and profile.fd:
            assert len(pdu.data) in (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)
        opened = rx.open(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)
        if tier is Tier.NONE and profile.fd:
            assert opened.payload[:n] == payload and not any(opened.payload[n:])
        else:
            assert opened.payload == payload
        assert opened.fields.tier is tier
        assert SEED_LAYOUT.decode(pdu.can_id).function == 0x42
        if tier is not Tier.NONE and tier is not Tier.BINDING:
            assert n < 8 or payload not in pdu.data  # encrypted
    assert not rx.rejects


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("layout", sorted(LAYOUTS), ids=str)
def test_round_trip_every_layout(layout: str, profile: BusProfile) -> None:
    lay = LAYOUTS[layout]
    fields = CanIdFields(function=0x11, node=1)
    tx, rx = _pair(Tier.PAIRING, profile, lay)
    pdu = tx.protect(fields, b"\x01\x02\x03")
    assert rx.open(pdu.can_id, pdu.data).payload == b"\x01\x02\x03"


def test_formats_room_and_odds() -> None:
    classic = frame_format(Tier.EXCHANGE, CLASSIC)
    assert (classic.room, classic.fv_bits, classic.tag_bytes, classic.forgery_odds_log2) == (3, 8, 4, -32)
    fd = frame_format(Tier.PAIRING, FD)
    assert (fd.room, fd.fv_bits, fd.tag_bytes, fd.forgery_odds_log2) == (40, 56, 16, -128)
    assert frame_format(Tier.BINDING, CLASSIC).room == 0
    assert frame_format(Tier.NONE, CLASSIC).forgery_odds_log2 is None


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("tier", [Tier.EXCHANGE, Tier.PAIRING, Tier.BINDING], ids=lambda t: t.name)
def test_every_tampered_byte_is_rejected(tier: Tier, profile: BusProfile) -> None:
    tx, rx = _pair(tier, profile)
    pdu = tx.protect(FIELDS, b"\x10\x20\x30")
    reassembled = not pdu.single_frame
    for i in range(len(pdu.data)):
        bad = bytearray(pdu.data)
        bad[i] ^= 0x01
        reason = _reason(rx, pdu.can_id, bytes(bad), reassembled=reassembled)
        assert reason in (Reason.BAD_MAC, Reason.BAD_SIGNATURE, Reason.MALFORMED, Reason.REPLAY, Reason.STALE)
    # the identifier is authenticated too (it is in the nonce)
    other = SEED_LAYOUT.encode(CanIdFields(function=0x43, node=0x03, priority=6, direction=1, tier=tier))
    assert _reason(rx, other, pdu.data, reassembled=reassembled) in (Reason.BAD_MAC, Reason.BAD_SIGNATURE)
    # nothing forged moved the window: the genuine frame still opens
    assert rx.open(pdu.can_id, pdu.data, reassembled=reassembled).payload == b"\x10\x20\x30"
    assert sum(rx.rejects.values()) == len(pdu.data) + 1


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("tier", [Tier.EXCHANGE, Tier.PAIRING, Tier.BINDING], ids=lambda t: t.name)
def test_wrong_key_is_bad_mac(tier: Tier, profile: BusProfile) -> None:
    tx_keys, _ = _keys(tier, OTHER_SECRET)
    _, rx = _pair(tier, profile)
    tx = SecuredSender(SEED_LAYOUT, profile, tx_keys, FreshnessCounter(MemoryCounterStore()))
    pdu = tx.protect(FIELDS, b"\x01")
    expected = Reason.BAD_SIGNATURE if tier is Tier.BINDING else Reason.BAD_MAC
    assert _reason(rx, pdu.can_id, pdu.data, reassembled=not pdu.single_frame) is expected
    assert rx.rejects[expected] == 1


def test_directions_use_different_keys() -> None:
    a = derive_traffic_keys(SECRET, Tier.EXCHANGE, Direction.INITIATOR_TO_RESPONDER)
    b = derive_traffic_keys(SECRET, Tier.EXCHANGE, Direction.RESPONDER_TO_INITIATOR)
    tx = SecuredSender(SEED_LAYOUT, CLASSIC, a, FreshnessCounter(MemoryCounterStore()))
    rx = SecuredReceiver(SEED_LAYOUT, CLASSIC, b)
    pdu = tx.protect(FIELDS, b"ab")
    assert _reason(rx, pdu.can_id, pdu.data) is Reason.BAD_MAC
    assert "SECRET" not in repr(a) and SECRET.hex() not in repr(a)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("tier", [Tier.EXCHANGE, Tier.PAIRING, Tier.BINDING], ids=lambda t: t.name)
def test_replay_stale_and_out_of_order(tier: Tier, profile: BusProfile) -> None:
    tx, rx = _pair(tier, profile, window=ReplayWindow(32))
    pdus = [tx.protect(FIELDS, bytes([i])) for i in range(50)]
    ra = not pdus[0].single_frame
    rx.open(pdus[1].can_id, pdus[1].data, reassembled=ra)
    rx.open(pdus[0].can_id, pdus[0].data, reassembled=ra)  # late but inside the window
    assert _reason(rx, pdus[1].can_id, pdus[1].data, reassembled=ra) is Reason.REPLAY
    rx.open(pdus[45].can_id, pdus[45].data, reassembled=ra)  # 44 frames lost: still reconstructs
    assert rx.open(pdus[20].can_id, pdus[20].data, reassembled=ra).payload == b"\x14"  # 25 back
    assert _reason(rx, pdus[5].can_id, pdus[5].data, reassembled=ra) is Reason.STALE  # 40 back
    assert rx.rejects[Reason.REPLAY] == 1 and rx.rejects[Reason.STALE] == 1


@pytest.mark.parametrize("tier", [Tier.EXCHANGE, Tier.PAIRING], ids=lambda t: t.name)
def test_wrong_dlc_and_oversize(tier: Tier) -> None:
    tx, rx = _pair(tier, CLASSIC)
    pdu = tx.protect(FIELDS, b"\x01\x02")
    assert _reason(rx, pdu.can_id, pdu.data[:4]) is Reason.MALFORMED  # shorter than FV + tag
    assert _reason(rx, pdu.can_id, bytes(9)) is Reason.OVERSIZED
    assert _reason(rx, pdu.can_id, bytes(MAX_PDU + 1), reassembled=True) is Reason.OVERSIZED
    assert _reason(rx, pdu.can_id, pdu.data[:-1]) is Reason.BAD_MAC  # truncated tag
    txf, rxf = _pair(tier, FD)
    fd_pdu = txf.protect(FIELDS, bytes(10))
    assert len(fd_pdu.data) == 48
    assert _reason(rxf, fd_pdu.can_id, fd_pdu.data[:47]) is Reason.MALFORMED  # 47 is no FD length
    padded = bytearray(fd_pdu.data)
    padded[-1] = 0xCC
    assert _reason(rxf, fd_pdu.can_id, bytes(padded)) is Reason.MALFORMED  # padding must be zero


def test_malformed_identifiers_and_tier_mismatch() -> None:
    tx, rx = _pair(Tier.EXCHANGE, CLASSIC)
    pdu = tx.protect(FIELDS, b"\x01")
    flag_only = (pdu.can_id & ~(0b110 << 17)) | (1 << 17)  # flag 1, level 00
    assert _reason(rx, flag_only, pdu.data) is Reason.MALFORMED
    level_only = pdu.can_id & ~(1 << 17)  # flag 0, level 01
    assert _reason(rx, level_only, pdu.data) is Reason.MALFORMED
    assert _reason(rx, 1 << 29, pdu.data) is Reason.MALFORMED
    clear_id = pdu.can_id & ~(0b111 << 17)  # a downgrade to "clear"
    assert _reason(rx, clear_id, pdu.data) is Reason.TIER_TOO_LOW
    binding_id = pdu.can_id | (0b111 << 17)
    assert _reason(rx, binding_id, pdu.data) is Reason.WRONG_LEVEL
    assert rx.rejects[Reason.MALFORMED] == 3


def test_legacy_layout_takes_tier_from_the_channel() -> None:
    tx, rx = _pair(Tier.PAIRING, CLASSIC, LEGACY_MODULE_LAYOUT)
    pdu = tx.protect(CanIdFields(function=0x502, node=1), b"\x07")
    assert pdu.can_id == (0x502 << 18) | 1
    opened = rx.open(pdu.can_id, pdu.data)
    assert opened.payload == b"\x07" and opened.fields.tier is None


def test_nonces_never_repeat_across_sender_restart(tmp_path: Path) -> None:
    path = tmp_path / "fv"
    tx_keys, _ = _keys(Tier.EXCHANGE)
    seen: set[int] = set()
    for _life in range(3):
        tx = SecuredSender(SEED_LAYOUT, FD, tx_keys, FreshnessCounter(FileCounterStore(path), window=8))
        for _ in range(5):
            fv = tx.protect(FIELDS, b"x").freshness
            assert fv is not None and fv not in seen
            seen.add(fv)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
@pytest.mark.parametrize("tier", [Tier.EXCHANGE, Tier.PAIRING, Tier.BINDING], ids=lambda t: t.name)
def test_resync_after_restarts(tier: Tier, profile: BusProfile) -> None:
    store = MemoryCounterStore()
    tx_keys, rx_keys = _keys(tier)
    tx = SecuredSender(SEED_LAYOUT, profile, tx_keys, FreshnessCounter(store, window=1000))
    rx = SecuredReceiver(SEED_LAYOUT, profile, rx_keys)
    pdu = tx.protect(FIELDS, b"a")
    rx.open(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)
    # Sender restarts: resumes at the reservation bound, 999 values ahead.
    tx = SecuredSender(SEED_LAYOUT, profile, tx_keys, FreshnessCounter(store, window=1000))
    jumped = tx.protect(FIELDS, b"b")
    ra = not jumped.single_frame
    if profile.fd or tier is Tier.BINDING:
        assert rx.open(jumped.can_id, jumped.data, reassembled=ra).payload == b"b"  # full FV on the wire
    else:
        assert _reason(rx, jumped.can_id, jumped.data) is Reason.BAD_MAC  # 8 low bits no longer suffice
    # Receiver restarts: it must not accept anything until an authenticated resync.
    rx = SecuredReceiver(SEED_LAYOUT, profile, rx_keys, ReplayWindow.unsynced(32))
    assert _reason(rx, jumped.can_id, jumped.data, reassembled=ra) is Reason.STALE
    with pytest.raises(VerificationError) as exc:
        rx.accept_resync(jumped.can_id, jumped.data)
    assert exc.value.reason is Reason.UNAUTHORIZED  # no challenge outstanding
    challenge = rx.resync_challenge()
    answer = tx.protect_resync(FIELDS, challenge)
    wrong = tx.protect_resync(FIELDS, bytes(8))
    with pytest.raises(VerificationError) as exc:
        rx.accept_resync(wrong.can_id, wrong.data)  # answer to another challenge
    assert exc.value.reason in (Reason.BAD_MAC, Reason.BAD_SIGNATURE)
    assert rx.accept_resync(answer.can_id, answer.data) == answer.freshness
    with pytest.raises(VerificationError):
        rx.accept_resync(answer.can_id, answer.data)  # one answer per challenge
    nxt = tx.protect(FIELDS, b"c")
    assert rx.open(nxt.can_id, nxt.data, reassembled=not nxt.single_frame).payload == b"c"
    assert _reason(rx, jumped.can_id, jumped.data, reassembled=ra) is Reason.REPLAY  # sent before the resync


_RECEIVERS = [(t, p) for t in Tier for p in PROFILES]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.sampled_from(range(len(_RECEIVERS))),
    can_id=st.one_of(st.integers(-5, (1 << 32) + 5), st.sampled_from([0x18064203, 0x180A4203, 0x180E4203])),
    data=st.binary(max_size=100),
    reassembled=st.booleans(),
)
def test_arbitrary_input_gives_only_typed_errors(which: int, can_id: int, data: bytes, reassembled: bool) -> None:
    tier, profile = _RECEIVERS[which]
    _, rx = _pair(tier, profile)
    try:
        rx.open(can_id, data, reassembled=reassembled)
    except VerificationError as exc:
        assert rx.rejects[exc.reason] == 1
    rx.resync_challenge()
    with contextlib.suppress(VerificationError):
        rx.accept_resync(can_id, data)


def test_hostile_types_are_malformed() -> None:
    _, rx = _pair(Tier.EXCHANGE, CLASSIC)
    assert _reason(rx, "0x123", b"") is Reason.MALFORMED  # type: ignore[arg-type]
    assert _reason(rx, 0x18064203, object()) is Reason.MALFORMED  # type: ignore[arg-type]
