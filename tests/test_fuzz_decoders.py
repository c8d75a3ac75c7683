"""Fuzzing the decoders of untrusted bytes above the CAN codec: CBOR, certificates, pairing offers,
completion proofs, binding envelopes, HTTP bodies, ledger proofs and tree heads, statements.
Only typed ``ModbattError``s (classified where they are verification failures); nothing stored."""

from __future__ import annotations

import contextlib
import json

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modbatt.attacks._world import paired_pack
from modbatt.encoding import MAX_MESSAGE_BYTES, canonical_dumps, strict_json_loads, strict_loads
from modbatt.errors import EncodingError, ModbattError, VerificationError
from modbatt.ledger import merkle
from modbatt.ledger.tree_head import SignedTreeHead
from modbatt.model.pairing import PairingCertificate
from modbatt.model.statements import read_statement
from modbatt.nodes.entity_api import MAX_BODY_BYTES, create_entity_app
from modbatt.protocol.messages import ControllerRequest, EntityResponse
from modbatt.protocol.pairing import CompletionProof, PairingState

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=6),
    max_leaves=25,
)


@pytest.fixture(scope="module")
def world():
    pack = paired_pack(31, pair=False)
    dep, module = pack.dep, pack.module(1)
    cert = dep.controller.issue_pairing(pack.records[1].binding_id, max_uses=1000)
    pid = cert.metadata.pairing_id
    dep.pack.accept_certificate(cert.encode())
    participant = module.accept_certificate(cert.encode())
    offer = dep.pack.pairing_start(pid)
    yield {"pack": pack, "cert": cert.encode(), "participant": participant, "offer": offer, "module": module}
    pack.close()


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6)


@FAST
@given(data=st.binary(max_size=2000))
def test_strict_loads_random_bytes(data):
    with contextlib.suppress(EncodingError):
        strict_loads(data)


@FAST
@given(value=json_values)
def test_strict_loads_refuses_non_canonical_encodings(value):
    loose = cbor2.dumps(value)  # not necessarily canonical
    try:
        got = strict_loads(loose)
    except EncodingError:
        return
    assert canonical_dumps(got) == loose  # accepted only if it was already the one canonical form


def test_strict_loads_size_cap():
    with pytest.raises(EncodingError) as exc:
        strict_loads(b"\x40" * (MAX_MESSAGE_BYTES + 1))
    assert exc.value.reason.value == "oversized"


@FAST
@given(data=st.binary(max_size=3000), cut=edits)
def test_certificate_decode_random_and_mutated(world, data, cut):
    for blob in (data, _mutate(world["cert"], cut)):
        with contextlib.suppress(ModbattError):
            PairingCertificate.decode(blob)


@FAST
@given(cut=edits)
def test_mutated_certificate_never_opens(world, cut):
    blob = _mutate(world["cert"], cut)
    if blob == world["cert"]:
        return
    with pytest.raises(ModbattError):
        world["module"].accept_certificate(blob)


@FAST
@given(data=st.binary(max_size=1200), cut=edits)
def test_pairing_offer_random_and_mutated(world, data, cut):
    p = world["participant"]
    for blob in (data, _mutate(world["offer"], cut)):
        if blob == world["offer"]:
            continue
        with pytest.raises(ModbattError):  # VerificationError, or EncodingError (malformed) for bad CBOR
            p.on_offer(blob, world["pack"].dep.clock())
        assert p.state is PairingState.AWAITING_PARTNER and p.secrets is None


def test_regression_undecodable_offers_and_certificates_are_counted(world):
    """Fixed: EncodingError escaped the node's failure counters (garbage offers went uncounted)."""
    module, pid = world["module"], world["participant"].pairing_id
    before = module.rejections["malformed"]
    for fn in (lambda: module.pairing_offer(pid, b"\xff"), lambda: module.accept_certificate(b"\x00\x00"),
               lambda: module.apply_pairing_revocation(b"\x01\x02")):  # fmt: skip
        with pytest.raises(ModbattError):
            fn()
    assert module.rejections["malformed"] == before + 3


@FAST
@given(value=json_values)
def test_completion_proof_from_json(value):
    with contextlib.suppress(VerificationError):
        CompletionProof.from_json(value)


@FAST
@given(value=json_values, data=st.binary(max_size=600))
def test_binding_envelopes(value, data):
    for fn in (lambda: ControllerRequest.from_json(value), lambda: EntityResponse.from_json(value),
               lambda: ControllerRequest.from_cbor(data), lambda: EntityResponse.from_cbor(data)):  # fmt: skip
        with contextlib.suppress(VerificationError):
            fn()


@FAST
@given(op=st.sampled_from(["generate-keys", "distribute-key", "revoke", "nope"]), value=json_values)
def test_entity_handle_arbitrary_json_changes_nothing(world, op, value):
    module = world["module"]
    names = module.keystore.names()
    status, body = module.handle(op, value)
    assert 400 <= status < 500 and set(body) == {"error", "detail"}
    assert module.keystore.names() == names


@FAST
@given(data=st.binary(max_size=600))
def test_strict_json_loads_random_bytes(data):
    with contextlib.suppress(EncodingError):
        strict_json_loads(data)


def test_regression_huge_json_integer_is_a_400_not_a_500(world):
    """Fixed: a 5000-digit integer (under the 16 KiB cap) raised ValueError past the parser (HTTP 500)."""
    from starlette.testclient import TestClient

    with pytest.raises(EncodingError):
        strict_json_loads(b"1" * 5000)
    body = b'{"op": "revoke", "n": ' + b"9" * 5000 + b"}"
    assert len(body) < MAX_BODY_BYTES
    with TestClient(create_entity_app(world["module"]), raise_server_exceptions=False) as client:
        answer = client.post("/api/binding/revoke", content=body)
    assert answer.status_code == 400 and answer.json()["error"] == "malformed"


hashes = st.lists(st.binary(min_size=0, max_size=40), max_size=70)


@FAST
@given(leaf=st.binary(max_size=40), index=st.integers(-5, 1 << 64), size=st.integers(-5, 1 << 64), proof=hashes,
       root=st.binary(max_size=40))  # fmt: skip
def test_merkle_verify_inclusion_random(leaf, index, size, proof, root):
    with pytest.raises(VerificationError) as exc:
        merkle.verify_inclusion(leaf, index, size, proof, root)
    assert exc.value.reason.value == "bad_proof"


@FAST
@given(old=st.integers(-5, 1 << 64), new=st.integers(-5, 1 << 64), proof=hashes, r1=st.binary(max_size=40),
       r2=st.binary(max_size=40))  # fmt: skip
def test_merkle_verify_consistency_random(old, new, proof, r1, r2):
    try:
        merkle.verify_consistency(old, new, r1, r2, proof)
    except VerificationError as exc:
        assert exc.reason.value == "bad_proof"


@FAST
@given(entries=st.lists(st.binary(max_size=8), min_size=1, max_size=40), data=st.data())
def test_merkle_tampered_real_proofs_fail(entries, data):
    index = data.draw(st.integers(0, len(entries) - 1))
    proof = merkle.inclusion_proof(index, entries)
    root = merkle.mth(entries)
    merkle.verify_inclusion(merkle.leaf_hash(entries[index]), index, len(entries), proof, root)
    if not proof:
        return
    k = data.draw(st.integers(0, len(proof) - 1))
    bad = list(proof)
    bad[k] = bytes(32) if bad[k] != bytes(32) else b"\x01" * 32
    with pytest.raises(VerificationError):
        merkle.verify_inclusion(merkle.leaf_hash(entries[index]), index, len(entries), bad, root)


@FAST
@given(data=st.binary(max_size=300), value=json_values)
def test_tree_head_and_statement_decoders(world, data, value):
    key = world["pack"].dep.controller_key.public_key
    for fn in (lambda: SignedTreeHead.from_bytes(data), lambda: SignedTreeHead.from_dict(value),
               lambda: read_statement(data, key)):  # fmt: skip
        with contextlib.suppress(ModbattError):
            fn()


def test_fuzz_json_values_roundtrip_sanity():
    # The HTTP face parses with strict_json_loads; a duplicate key is refused, not last-wins.
    with pytest.raises(EncodingError):
        strict_json_loads(json.dumps({"a": 1}).encode()[:-1] + b', "a": 2}')


@FAST
@given(data=st.binary(max_size=300), value=json_values)
def test_can_binding_api_pdu_decoder(data, value):
    can_entity = pytest.importorskip("modbatt.transport.can_entity")  # built by the transport owner
    for blob in (data, cbor2.dumps(value)):
        with contextlib.suppress(VerificationError):
            can_entity.decode_pdu(blob)
