"""The nonce trace (``MODBATT_NONCE_TRACE``, docs/delivery.md §5): every AEAD seal of a channel is one
line ``FINGERPRINT NONCE``, matching the key and nonce the AES-CCM/GCM object really gets, never
the key itself; and the check the kill tests run on it fails when a (key, nonce) pair repeats."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import aead
from helpers_binding import World
from helpers_entities import assert_no_nonce_reuse

import modbatt.can.secured as secured
from modbatt.can.wiretime import CLASSIC, FD
from modbatt.model.policy import MessageClass
from modbatt.nodes.channel import NONCE_TRACE_ENV, PairedChannel
from modbatt.nodes.channel_store import EphemeralFreshness
from modbatt.nodes.pairing_flow import pair_entities


def _paired() -> tuple[World, str]:
    w = World()
    cert = w.controller.issue_pairing(w.bind().record.binding_id)
    pair_entities(w.controller, w.pack, w.module, certificate=cert)
    return w, cert.metadata.pairing_id


@pytest.mark.parametrize("profile", [CLASSIC, FD], ids=["classic", "fd"])
def test_each_seal_is_one_line_with_the_nonce_the_aead_gets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile
) -> None:
    sealed: list[tuple[bytes, bytes]] = []

    def recording(real: type) -> type:
        class Recording:
            def __init__(self, key: bytes, *args: object, **kwargs: object) -> None:
                self._inner = real(key, *args, **kwargs)
                self._key = bytes(key)

            def encrypt(self, nonce: bytes, data: bytes, associated: bytes | None) -> bytes:
                sealed.append((self._key, bytes(nonce)))
                return self._inner.encrypt(nonce, data, associated)

            def decrypt(self, nonce: bytes, data: bytes, associated: bytes | None) -> bytes:
                return self._inner.decrypt(nonce, data, associated)

        return Recording

    monkeypatch.setattr(secured, "AESCCM", recording(aead.AESCCM))
    monkeypatch.setattr(secured, "AESGCM", recording(aead.AESGCM))
    trace = tmp_path / "trace"
    monkeypatch.setenv(NONCE_TRACE_ENV, str(trace))
    w, pid = _paired()
    pack, module = w.pack.channel(pid, profile=profile), w.module.channel(pid, profile=profile)
    for _ in range(3):
        pack.send(MessageClass.CHARGE_COMMAND, b"\x00\x01")  # pairing tier
        pack.send(MessageClass.VOLTAGE_TELEMETRY, b"\x02")  # exchange tier
        module.send(MessageClass.CHARGE_COMMAND, b"\x00\x01")
    pack.resync()  # the module answers the challenge at every tier: more seals
    for pdu in pack.frames_to_send():
        module.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)
    module.frames_to_send()

    lines = [line.split(" ") for line in trace.read_text(encoding="ascii").splitlines()]
    assert [bytes.fromhex(nonce) for _, nonce in lines] == [nonce for _, nonce in sealed]
    # One fingerprint per key (tier and direction), never the key's bytes.
    keys = {fp: key for (fp, _), (key, _) in zip(lines, sealed, strict=True)}
    assert len(set(keys.values())) == len(keys) >= 4
    assert not any(key.hex()[:16] in trace.read_text() for key in keys.values())
    assert assert_no_nonce_reuse(trace) == len(sealed)


def test_a_reused_nonce_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two ends of one session and direction whose counters both start at zero (what a lost
    # freshness store would do, and what EntityNode refuses): the trace shows the reuse.
    trace = tmp_path / "trace"
    monkeypatch.setenv(NONCE_TRACE_ENV, str(trace))
    w, pid = _paired()
    keys = w.pack._channel_keys(pid)
    for _ in range(2):
        twin = PairedChannel(keys, freshness=EphemeralFreshness(), fresh=True)
        twin.send(MessageClass.CHARGE_COMMAND, b"\x00\x01")
        twin.close()
    with pytest.raises(AssertionError, match="sealed twice"):
        assert_no_nonce_reuse(trace)
