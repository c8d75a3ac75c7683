"""The binding API over ISO-TP on python-can's virtual bus: framing, end to end, bad and hostile input."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import can
import pytest

from modbatt.can.functions import function_named
from modbatt.can.ids import SEED_LAYOUT
from modbatt.crypto.suite import PrivateKey
from modbatt.encoding import canonical_dumps, strict_loads
from modbatt.errors import Reason, TransportError, VerificationError
from modbatt.model.access import AccessData, TransportProtocol
from modbatt.model.tier import Tier
from modbatt.protocol.messages import ControllerRequest, EntityResponse
from modbatt.transport.can_entity import (
    PRIORITY,
    CanEntityClient,
    binding_api_ids,
    can_endpoint,
    decode_pdu,
    encode_pdu,
)
from modbatt.transport.http import RemoteRejection
from modbatt.transport.isotp_link import IsoTpLink
from modbatt.workbench.mixed import MixedBench

MODULE = "module-01"


@pytest.fixture
def bench() -> Iterator[MixedBench]:
    with MixedBench(("can",), seed=21, timeout=1.0, retries=0) as b:
        yield b


def _request(bench: MixedBench, key: PrivateKey, target: str = MODULE) -> ControllerRequest:
    return ControllerRequest(
        "generate-keys",
        str(uuid.uuid4()),
        os.urandom(16),
        int(time.time() * 1000),
        target,
        {"partner_access_data": bench.pack.access_data},
    ).sign(key)


def _raw_link(bench: MixedBench, node: int = 0x01) -> IsoTpLink:
    """A second controller-side link on the gateway's Notifier (a test peer speaking raw PDUs)."""
    request_id, answer_id = binding_api_ids(node)
    return IsoTpLink(bench.gateway_bus, request_id, answer_id, notifier=bench.can_client.notifier())


# -- framing --------------------------------------------------------------------------------------


def test_ids_follow_the_seed_layout() -> None:
    request_id, answer_id = binding_api_ids(0x01)
    # Priority comes from the function table; everything else is fixed by the seed layout.
    assert request_id & ~(0x7 << 26) == 0x000E0501 and answer_id & ~(0x7 << 26) == 0x001E0501
    fields = SEED_LAYOUT.decode(answer_id)
    assert (fields.function, fields.node, fields.direction, fields.tier) == (0x005, 0x01, 1, Tier.BINDING)
    assert fields.priority == PRIORITY == getattr(function_named("BINDING_API"), "priority", 6)
    assert can_endpoint("can://can0/0x1f") == ("can0", 0x1F)


def test_pdu_and_cbor_envelopes_round_trip() -> None:
    key = PrivateKey.generate()
    access = AccessData("http://pack.invalid", TransportProtocol.HTTP, "pack-01")
    request = ControllerRequest(
        "generate-keys", str(uuid.uuid4()), os.urandom(16), 1, "m", {"partner_access_data": access}
    ).sign(key)
    again = ControllerRequest.from_cbor(request.to_cbor())
    assert again == request
    again.verify(key.public_key)  # the signature covers the CBOR view: no re-signing needed
    assert ControllerRequest.from_json(request.to_json()).to_cbor() == request.to_cbor()
    assert len(request.to_cbor()) < len(str(request.to_json()))
    response = EntityResponse("revoke", request.binding_id, request.request_id, "m", {"revoked": True}).sign(key)
    assert EntityResponse.from_cbor(response.to_cbor()) == response
    seq, head, body = decode_pdu(encode_pdu(7, "generate-keys", request.to_cbor()))
    assert (seq, head, body) == (7, "generate-keys", request.to_cbor())
    for bad in (b"", b"\xff", canonical_dumps([2, 1, "x", b""]), canonical_dumps([1, -1, "x", b""]),
                canonical_dumps([1, 1, 42, b""]), canonical_dumps({"v": 1})):  # fmt: skip
        with pytest.raises(VerificationError) as info:
            decode_pdu(bad)
        assert info.value.reason is Reason.MALFORMED
    with pytest.raises(VerificationError) as info:
        ControllerRequest.from_cbor(canonical_dumps({"op": "revoke"}))
    assert info.value.reason is Reason.MALFORMED


# -- end to end -------------------------------------------------------------------------------------


def test_bind_and_pair_over_can(bench: MixedBench) -> None:
    module = bench.entities[MODULE]
    outcome = bench.bind(module)
    bench.pair(module)
    assert module.node.binding(outcome.record.binding_id) is not None
    # generate-keys, distribute-key, then the pairing's certificate and offer: all over CAN
    assert bench.router.calls["CAN"] == 4 and bench.can_client.counters["answers"] == 4
    assert module.server.counters["handled"] == 4 and not module.server.rejections
    assert bench.ledger.size == 3  # binding, pairing issued, pairing completed


def test_unreachable_node_is_a_clear_error_and_records_nothing(bench: MixedBench) -> None:
    ghost = bench.add_entity("can", "module-07", node_id=0x07)
    ghost.server.stop()  # nobody answers flow control at node 0x07
    with pytest.raises(TransportError, match=r"cannot reach can://can0/0x07: node 0x07 did not take the request"):
        bench.bind(ghost)
    assert bench.ledger.size == 0 and bench.controller.records.names() == []
    assert bench.pack.machine.bindings == {}  # the pack's key was aborted over HTTP


# -- bad and hostile input -------------------------------------------------------------------------


def test_malformed_pdus_are_dropped_or_rejected(bench: MixedBench) -> None:
    server = bench.entities[MODULE].server
    with _raw_link(bench) as link:
        link.send(b"\x00garbage that is no CBOR at all")  # no seq to answer: dropped
        link.send(encode_pdu(5, "generate-keys", b"\xa0 not an envelope"))
        status_pdu = link.recv(timeout=2)
        link.send(encode_pdu(6, 200, b""))  # a status where an op belongs
        second = link.recv(timeout=2)
    assert status_pdu is not None and second is not None
    seq, status, body = decode_pdu(status_pdu)
    assert (seq, status) == (5, 400) and strict_loads(body)["error"] == "malformed"
    assert decode_pdu(second)[:2] == (6, 400)
    assert server.counters["malformed_pdu"] == 1 and server.rejections[Reason.MALFORMED] == 2
    assert server.counters["errors"] == 0
    bench.bind(bench.entities[MODULE])  # still serving
    assert bench.ledger.size == 1


def test_forged_request_is_rejected_and_changes_nothing(bench: MixedBench) -> None:
    module = bench.entities[MODULE]
    forged = _request(bench, PrivateKey.generate())
    with pytest.raises(RemoteRejection) as info:
        bench.can_client.call(module.access_data.endpoint, "generate-keys", forged.to_json())
    assert info.value.reason is Reason.UNAUTHORIZED
    assert module.node.machine.bindings == {} and module.server.rejections[Reason.UNAUTHORIZED] == 1


def test_retried_pdu_is_answered_from_the_cache(bench: MixedBench) -> None:
    module = bench.entities[MODULE]
    pdu = encode_pdu(9, "generate-keys", _request(bench, bench.controller_key).to_cbor())
    with _raw_link(bench) as link:
        link.send(pdu)
        first = link.recv(timeout=2)
        link.send(pdu)
        second = link.recv(timeout=2)
    assert first is not None and first == second and decode_pdu(first)[1] == 200
    assert module.server.counters["cached_answers"] == 1 and len(module.node.machine.bindings) == 1


def test_answer_with_a_stale_seq_is_ignored_and_counted() -> None:
    """A fake node answers first with a wrong seq, then with the right one: only the second counts."""
    channel = f"stale-{os.urandom(3).hex()}"
    gateway = can.Bus(interface="virtual", channel=channel)
    field = can.Bus(interface="virtual", channel=channel)
    request_id, answer_id = binding_api_ids(0x02)
    node_link = IsoTpLink(field, answer_id, request_id)
    stop = threading.Event()

    def fake_node() -> None:
        while not stop.is_set():
            data = node_link.recv(timeout=0.1)
            if data is None:
                continue
            seq, _op, _body = decode_pdu(data)
            node_link.send(encode_pdu(seq + 100, 200, b"from an earlier, abandoned request"))
            node_link.send(encode_pdu(seq, 403, canonical_dumps({"error": "wrong_peer", "detail": "not me"})))

    thread = threading.Thread(target=fake_node, daemon=True)
    thread.start()
    client = CanEntityClient(gateway, timeout=2.0, retries=0)
    key = PrivateKey.generate()
    access = AccessData("http://pack.invalid", TransportProtocol.HTTP, "pack-01")
    request = ControllerRequest(
        "generate-keys", str(uuid.uuid4()), os.urandom(16), 1, "m", {"partner_access_data": access}
    ).sign(key)
    try:
        with pytest.raises(RemoteRejection) as info:
            client.call("can://can0/0x02", "generate-keys", request.to_json())
    finally:
        stop.set()
        thread.join(timeout=2)
        client.close()
        node_link.close()
        gateway.shutdown()
        field.shutdown()
    assert info.value.reason is Reason.WRONG_PEER
    assert client.counters["unknown_correlation"] == 1 and client.counters["answers"] == 1


def test_client_refuses_what_it_cannot_carry(bench: MixedBench) -> None:
    with pytest.raises(TransportError, match="cannot carry"):
        bench.can_client.call("can://can0/0x01", "generate-keys", {"not": "a request"})
    with pytest.raises(TransportError, match="cannot carry"):
        bench.can_client.call("can://can0/0x00", "revoke", {})
    only_can1 = CanEntityClient({"can1": bench.gateway_bus})
    request = _request(bench, bench.controller_key)
    with pytest.raises(TransportError, match="no CAN bus for channel 'can0'"):
        only_can1.call("can://can0/0x01", "generate-keys", request.to_json())
    only_can1.close()
