"""The key-free binding witness broadcast: produced after a binding, verified, and free of key material."""

from __future__ import annotations

import pytest

from modbatt.crypto.suite import PrivateKey
from modbatt.encoding import canonical_dumps, strict_loads
from modbatt.errors import EncodingError, Reason, VerificationError
from modbatt.model import AccessData, TransportProtocol
from modbatt.model.binding import key_commitment
from modbatt.model.witness import BindingWitness, access_hash
from modbatt.nodes.inmemory import InMemoryDeployment


@pytest.fixture(scope="module")
def bound():
    dep = InMemoryDeployment(seed=21, modules=1)
    return dep, dep.bind(dep.pack, dep.modules[1])


def test_controller_broadcasts_a_signed_witness_after_a_binding(bound):
    dep, outcome = bound
    witness = BindingWitness.decode(outcome.witness)
    witness.verify(dep.controller_key.public_key)
    witness.matches(outcome.record)
    assert witness.binding_id == outcome.record.binding_id and witness.timestamp == outcome.record.timestamp
    assert witness.entity_a_hash == access_hash(dep.pack.access_data)
    assert set(strict_loads(outcome.witness)) == {"v", "kind", "binding_id", "entity_a_hash", "entity_b_hash",
                                                  "timestamp", "sig"}  # fmt: skip
    assert len(outcome.witness) == 276  # fixed-size fields: the documented size


def test_the_witness_carries_no_key_material(bound):
    _, outcome = bound
    record = outcome.record
    for side in (record.entity_a, record.entity_b):
        key = side.semi_public_key
        for material in (key.to_bytes(), key.to_spki_der()[-64:], key_commitment(record.binding_id, key)):
            assert material not in outcome.witness


def test_a_forged_or_altered_witness_is_refused(bound):
    dep, outcome = bound
    other = PrivateKey.generate(dep.rng)
    forged = BindingWitness.of(outcome.record).sign(other)
    with pytest.raises(VerificationError) as err:
        BindingWitness.decode(forged.encode()).verify(dep.controller_key.public_key)
    assert err.value.reason is Reason.BAD_SIGNATURE
    value = strict_loads(outcome.witness)
    value["entity_b_hash"] = bytes(32)
    altered = BindingWitness.decode(canonical_dumps(value))
    with pytest.raises(VerificationError, match="bad_signature"):
        altered.verify(dep.controller_key.public_key)
    with pytest.raises(VerificationError) as err:
        altered.matches(outcome.record)
    assert err.value.reason is Reason.HASH_MISMATCH


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"kind": "binding"}, Reason.MALFORMED),
        ({"v": 1}, Reason.MALFORMED),  # another protocol version
        ({"entity_a_hash": bytes(31)}, Reason.MALFORMED),
        ({"binding_id": "not-a-uuid"}, Reason.MALFORMED),
        ({"timestamp": "yesterday"}, Reason.MALFORMED),
        ({"semi_public_key": b"\x02" * 33}, Reason.UNKNOWN_FIELD),
        ({"sig": b"\x00" * 63}, Reason.MALFORMED),
    ],
)
def test_untrusted_witness_bytes_are_parsed_strictly(bound, change, reason):
    _, outcome = bound
    with pytest.raises(VerificationError) as err:
        BindingWitness.decode(canonical_dumps({**strict_loads(outcome.witness), **change}))
    assert err.value.reason is reason


def test_oversized_or_garbage_witness_is_refused():
    with pytest.raises((VerificationError, EncodingError)):
        BindingWitness.decode(b"\xff" * 10)
    with pytest.raises((VerificationError, EncodingError)) as err:
        BindingWitness.decode(canonical_dumps({"pad": bytes(600)}))
    assert err.value.reason is Reason.OVERSIZED


def test_linkability_anyone_who_guesses_the_access_data_can_confirm_the_parties(bound):
    # The documented caveat, shown: the hashes hide nothing from someone who can guess access data.
    dep, outcome = bound
    witness = BindingWitness.decode(outcome.witness)
    guesses = [AccessData(f"can://can0/0x{n:02x}", TransportProtocol.CAN, f"module-{n:02d}") for n in range(1, 32)]
    found = [g for g in guesses if witness.names(dep.pack.access_data, g)]
    assert found == [dep.modules[1].access_data]
