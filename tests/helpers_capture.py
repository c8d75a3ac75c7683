"""A real secured capture for tests that read one: `modbatt decode` and the file fuzzer."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import NamedTuple

import can
import cantools

from modbatt.can import dbc
from modbatt.can.secured import SecuredPdu
from modbatt.crypto.keystore import KeyStore
from modbatt.model.policy import MessageClass
from modbatt.nodes.channel import PairedChannel
from modbatt.nodes.entity import EntityNode
from modbatt.transport.isotp_link import IsoTpLink
from modbatt.workbench.demo import MODULE_ID, PACK_ID, DemoResult, run_demo

T0 = 1_800_000_000.0
VOLTS = [(3.601 + i * 0.01, 3.702 + i * 0.01, 3.650 + i * 0.01) for i in range(5)]


def _link(store: KeyStore) -> PairedChannel:
    """The module's end of its paired link, from nothing but its key store (through the channel owner)."""
    node = EntityNode(store)
    ((pairing_id, _binding_id),) = node.pairings_held()
    return node.channel(pairing_id)


class SecuredCapture(NamedTuple):
    frames: list[can.Message]  # timestamps from T0, 10 ms apart
    keystore: Path  # the pack controller's key store, which decrypts them (key file beside it, .kek)
    demo: DemoResult  # the deployment in the state directory (ledger, certificate, controller key)


def record_secured_capture(state: Path) -> SecuredCapture:
    """Run the demo in ``state``, then record a module's voltage telemetry (ISO-TP) and heartbeats
    (single frames) as a bus shows them."""
    demo = run_demo(state, transport="in-process")
    module_store = state / "entities" / f"{MODULE_ID}.keystore"
    pack_store = state / "entities" / f"{PACK_ID}.keystore"
    link = _link(KeyStore.open(module_store, key_file=module_store.with_suffix(".kek")))
    pack = _link(KeyStore.open(pack_store, key_file=pack_store.with_suffix(".kek")))
    legacy = cantools.database.load_string(dbc.build_legacy_database().as_dbc_string())
    channel = f"decode-{uuid.uuid4().hex}"
    buses = [can.Bus(interface="virtual", channel=channel) for _ in range(3)]

    def carry(pdu: SecuredPdu, to: PairedChannel) -> None:
        """One unit on the recorded bus (ISO-TP when it needs several frames), then to its receiver."""
        if pdu.single_frame:
            buses[0].send(can.Message(arbitration_id=pdu.can_id, data=pdu.data, is_extended_id=True))
        else:
            reverse = pdu.can_id ^ (1 << 20)
            with IsoTpLink(buses[0], pdu.can_id, reverse) as tx, IsoTpLink(buses[1], reverse, pdu.can_id) as rx:
                tx.send(pdu.data)
                assert rx.recv(timeout=2.0) == pdu.data
        to.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)

    try:
        # Both ends were restored from disk: their restart resync is on the wire too, and the
        # decoder must follow it (the module's counters resumed past a reservation bound).
        for _ in range(4):
            for src, dst in ((link, pack), (pack, link)):
                for pdu in src.frames_to_send():
                    carry(pdu, dst)
        assert link.synced and pack.synced
        for i, (lo, hi, avg) in enumerate(VOLTS):
            body = legacy.encode_message("MODULE_STATUS_2", {"cellLoVolt": lo, "cellHiVolt": hi, "cellAvgVolt": avg})
            pdu = link.send(MessageClass.VOLTAGE_TELEMETRY, body)
            reverse = pdu.can_id & ~(1 << 20)
            with (
                IsoTpLink(buses[0], pdu.can_id, reverse) as tx,
                IsoTpLink(buses[1], reverse, pdu.can_id) as rx,
            ):
                tx.send(pdu.data)
                assert rx.recv(timeout=2.0) == pdu.data
            beat = link.send(MessageClass.HEARTBEAT, bytes([i]))
            buses[0].send(can.Message(arbitration_id=beat.can_id, data=beat.data, is_extended_id=True))
        seen = []
        while (frame := buses[2].recv(timeout=0.05)) is not None:
            seen.append(frame)
    finally:
        for b in buses:
            b.shutdown()
        link.close()
        pack.close()
    for i, frame in enumerate(seen):
        frame.timestamp = T0 + i * 0.01
    return SecuredCapture(seen, pack_store, demo)
