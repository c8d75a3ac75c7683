"""The Pairing transaction: certificate, half exchange, completion, both controller modes,
the zero-knowledge controller, and every bad-input class with its classified rejection."""

from __future__ import annotations

import dataclasses

import pytest
from helpers_binding import World

from modbatt.crypto.suite import PrivateKey
from modbatt.encoding import canonical_dumps
from modbatt.errors import Reason, VerificationError
from modbatt.model import AccessData, TransportProtocol
from modbatt.model.pairing import SECTION_NAMES, ControllerMode, PairingCertificate
from modbatt.model.statements import read_statement
from modbatt.nodes.pairing_flow import pair_entities
from modbatt.protocol.pairing import PairingState
from modbatt.workbench.controller_modes import compromised_controller_reads


def _bound_world(**kw):
    w = World(**kw)
    record = w.bind().record
    return w, record


@pytest.mark.parametrize("mode", list(ControllerMode))
def test_pairing_flow_gives_both_entities_the_same_secrets_and_records_completion(mode):
    w, record = _bound_world()
    out = pair_entities(w.controller, w.pack, w.module, record.binding_id, mode=mode)
    a, b = out.secrets["pack-01"], out.secrets["module-01"]
    assert a.pairing_secret == b.pairing_secret and a.exchange_secret == b.exchange_secret
    assert a.pairing_secret != a.exchange_secret
    assert (a.role, b.role) == ("a", "b")
    kinds = [read_statement(w.ledger.entry(i), w.controller_key.public_key)["kind"] for i in (1, 2)]
    assert kinds == ["pairing_issued", "pairing_completed"]
    completed = read_statement(w.ledger.entry(out.ledger_index), w.controller_key.public_key)
    assert completed["pairing_id"] == out.certificate.metadata.pairing_id and completed["use"] == 1


def test_certificate_layout_three_sections_and_metadata():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id)
    decoded = PairingCertificate.decode(cert.encode())
    decoded.verify(w.controller_key.public_key)
    assert tuple(decoded.sections) == SECTION_NAMES
    meta = decoded.metadata
    assert meta.entity_a == w.pack.access_data and meta.entity_b == w.module.access_data
    assert meta.encryption_policy.minimum  # the tier policy travels in the clear metadata
    view = decoded.describe()
    assert [s["name"] for s in view["sections"]] == list(SECTION_NAMES)
    assert view["size"] == len(cert.encode())


def _secret_bytes_seen_by_entities(w, pairing_id):
    """Every secret an entity holds for the pairing: halves, exchange key, derived secrets."""
    out = []
    for node in (w.pack, w.module):
        p = node.pairings[pairing_id]
        out += [p._half, p._exchange_key, p.secrets.pairing_secret, p.secrets.exchange_secret]
    return out


def _everything_the_controller_stores(w):
    blobs = [w.ledger.entry(i) for i in range(w.ledger.size)]
    store = w.controller_store
    for name in store.names():
        if name in store.key_names():
            blobs.append(store.private_key(name).scalar_bytes())
        else:
            blobs.append(canonical_dumps(store.record(name)))
    return b"".join(blobs)


def test_controller_stores_hold_no_pairing_secret():
    w, record = _bound_world()
    out = pair_entities(w.controller, w.pack, w.module, record.binding_id)
    stored = _everything_the_controller_stores(w)
    secrets = _secret_bytes_seen_by_entities(w, out.certificate.metadata.pairing_id)
    assert len(secrets) == 8 and all(len(s) == 32 for s in secrets)
    for secret in secrets:
        assert secret not in stored


@pytest.mark.parametrize(("mode", "controller_reads_traffic"), [("standard", True), ("blind", False)])
def test_compromised_controller_reads_traffic_only_in_standard_mode(mode, controller_reads_traffic):
    exposure = compromised_controller_reads(ControllerMode(mode), seed=11)
    assert exposure.reads_pairing_tier is controller_reads_traffic
    assert exposure.reads_exchange_tier is controller_reads_traffic


# ---------------------------------------------------------------- bad input


def _resigned(cert, w, *, metadata=None, sections=None):
    return PairingCertificate(metadata or cert.metadata_bytes, sections or dict(cert.sections)).sign(w.controller_key)


def _accept_error(node, cert):
    with pytest.raises(VerificationError) as exc:
        node.accept_certificate(cert if isinstance(cert, bytes) else cert.encode())
    return exc.value.reason


def test_tampered_metadata_fails_the_signature():
    w, record = _bound_world()
    data = w.controller.issue_pairing(record.binding_id).encode()
    # Still well-formed metadata (another device id), so only the signature can catch it.
    tampered = data.replace(b"pack-01", b"pack-02", 1)
    before = dict(w.module.rejections)
    reason = _accept_error(w.module, tampered)
    assert reason is Reason.BAD_SIGNATURE
    assert w.module.rejections[Reason.BAD_SIGNATURE] == before.get(Reason.BAD_SIGNATURE, 0) + 1
    assert w.module.pairings == {}


def test_tampered_section_fails_its_authentication_even_if_resigned():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id)
    box = bytearray(cert.sections["entity_b"])
    box[-1] ^= 0x01
    forged = _resigned(cert, w, sections={**cert.sections, "entity_b": bytes(box)})
    assert _accept_error(w.module, forged) is Reason.BAD_MAC


def test_metadata_swapped_under_a_valid_signature_is_a_hash_mismatch():
    w, record = _bound_world()
    first = w.controller.issue_pairing(record.binding_id)
    second = w.controller.issue_pairing(record.binding_id, max_uses=5)
    # Sections from the first certificate, metadata of the second, signed by the controller.
    forged = _resigned(first, w, metadata=second.metadata_bytes)
    with pytest.raises(VerificationError) as exc:
        w.module.accept_certificate(forged.encode())
    # Each section is sealed under its own pairing id, so opening it under another fails.
    assert exc.value.reason is Reason.BAD_MAC
    # Same pairing id, other clear metadata (more uses): the sealed metadata hash catches it.
    altered = dataclasses.replace(first.metadata, max_uses=7).encode()
    assert _accept_error(w.module, _resigned(first, w, metadata=altered)) is Reason.HASH_MISMATCH


def test_wrong_recipient_is_refused():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id)
    stranger_store = type(w.stores["pack"]).in_memory(reproducible=True)
    from modbatt.nodes.entity import EntityNode

    stranger = EntityNode.provision(
        stranger_store,
        access_data=AccessData("can://can0/0x05", TransportProtocol.CAN, "module-05"),
        controller_key=w.controller_key.public_key,
        clock=w.clock,
        rng=w.rng,
    )
    assert _accept_error(stranger, cert) is Reason.UNKNOWN_BINDING


@pytest.mark.parametrize(("shift", "reason"), [(-10, Reason.NOT_YET_VALID), (2 * 24 * 3600, Reason.EXPIRED)])
def test_certificate_outside_its_time_window_is_refused(shift, reason):
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id)
    w.clock.now += shift
    assert _accept_error(w.module, cert) is reason


def test_use_past_max_uses_is_refused_by_entity_and_controller():
    w, record = _bound_world()
    out = pair_entities(w.controller, w.pack, w.module, record.binding_id, max_uses=1)
    assert _accept_error(w.module, out.certificate) is Reason.EXHAUSTED
    assert w.ledger.size == 3  # issued + completed only


def _session(w, pid):
    """One session of an already accepted certificate, in process; entity a's participant."""
    reply = w.module.pairing_offer(pid, w.pack.pairing_start(pid))
    w.pack.pairing_offer(pid, reply)
    return w.pack.pairings[pid]


def test_second_use_within_max_uses_gets_a_new_session_with_new_secrets():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id, max_uses=2)
    pid = cert.metadata.pairing_id
    sessions = []
    for use in (1, 2):
        w.pack.accept_certificate(cert.encode())
        w.module.accept_certificate(cert.encode())
        a = _session(w, pid)
        w.controller.complete_pairing(a.completion)
        assert w.controller.pending_pairing(pid).sessions[-1] == a.session_nonce
        assert len(w.controller.pending_pairing(pid).sessions) == use
        mine, theirs = w.pack.pairing_secrets(pid), w.module.pairing_secrets(pid)
        assert (mine.session_id, mine.pairing_secret) == (theirs.session_id, theirs.pairing_secret)
        sessions.append(mine)
    first, second = sessions
    # Same certificate, same pairing and exchange keys: the session transcript keeps the secrets apart.
    assert first.session_id != second.session_id
    assert first.pairing_secret != second.pairing_secret and first.exchange_secret != second.exchange_secret


def test_accepting_a_certificate_again_is_idempotent_and_counts_no_use():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id, max_uses=1)
    pid = cert.metadata.pairing_id
    for _ in range(5):  # anyone who saw the certificate can send it again: nothing is spent
        a = w.pack.accept_certificate(cert.encode())
        b = w.module.accept_certificate(cert.encode())
    assert w.pack.pairing_uses(pid) == [] and w.module.pairing_uses(pid) == []
    offer = w.pack.pairing_start(pid)
    # Mid-session: accepting again hands back the same participants, nothing is reset.
    assert w.pack.accept_certificate(cert.encode()) is a and w.module.accept_certificate(cert.encode()) is b
    assert a.session_nonce is not None and a.state is PairingState.AWAITING_PARTNER
    w.pack.pairing_offer(pid, w.module.pairing_offer(pid, offer))
    w.controller.complete_pairing(a.completion)
    # One use each, counted when the session derived its secrets.
    assert len(w.pack.pairing_uses(pid)) == 1 and len(w.module.pairing_uses(pid)) == 1
    # Done: a repeat start cannot reset or re-run a spent single-use certificate.
    assert _accept_error(w.module, cert) is Reason.EXHAUSTED
    with pytest.raises(VerificationError) as exc:
        w.pack.pairing_start(pid)
    assert exc.value.reason is Reason.EXHAUSTED
    assert w.pack.pairing_secrets(pid).session_id == w.module.pairing_secrets(pid).session_id


def test_start_during_a_session_in_progress_is_refused_without_reset():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id)
    pid = cert.metadata.pairing_id
    w.pack.accept_certificate(cert.encode())
    w.module.accept_certificate(cert.encode())
    offer = w.pack.pairing_start(pid)
    with pytest.raises(VerificationError) as exc:
        w.pack.pairing_start(pid)
    assert exc.value.reason is Reason.DUPLICATE
    with pytest.raises(VerificationError) as exc:
        w.module.pairing_start(pid)
    assert exc.value.reason is Reason.WRONG_PEER
    w.pack.pairing_offer(pid, w.module.pairing_offer(pid, offer))  # the original session still completes
    assert w.controller.complete_pairing(w.pack.pairings[pid].completion) > 0


def test_burned_uses_are_visible_to_the_controller():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id, max_uses=3)
    pid = cert.metadata.pairing_id
    assert pair_entities(w.controller, w.pack, w.module, certificate=cert).burned == {"pack-01": 0, "module-01": 0}
    w.module.pairing_offer(pid, w.pack.pairing_start(pid))  # B derived session 2; A never hears back
    assert w.controller.burned_uses(pid, w.module.pairing_uses(pid)) == 1
    assert w.controller.burned_uses(pid, w.pack.pairing_uses(pid)) == 0
    w.clock.now += 31  # A's half-done session times out; the next session reports what was burned
    w.pack.pairing_tick()
    out = pair_entities(w.controller, w.pack, w.module, certificate=cert)
    assert out.burned == {"pack-01": 0, "module-01": 1}
    assert len(w.module.pairing_uses(pid)) == 3 and len(w.controller.pending_pairing(pid).sessions) == 2


def test_a_crash_cannot_buy_an_extra_use():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id, max_uses=1)
    pid = cert.metadata.pairing_id
    w.pack.accept_certificate(cert.encode())
    w.module.accept_certificate(cert.encode())
    offer = w.pack.pairing_start(pid)
    # B fails while storing the session: nothing is stored, no use counted, no reply leaves.
    store = w.module.keystore
    real = store.put_record

    def failing(name, value):
        if name.startswith("pairing-uses/"):
            raise RuntimeError("power lost")
        return real(name, value)

    store.put_record = failing
    with pytest.raises(RuntimeError):
        w.module.pairing_offer(pid, offer)
    store.put_record = real
    assert w.module.pairing_secrets(pid) is None and w.module.pairing_uses(pid) == []
    # B stores the session and dies before its reply leaves: the use is spent for good.
    w.module.pairing_offer(pid, offer)
    module = w.restart(w.module)
    assert len(module.pairing_uses(pid)) == 1
    assert _accept_error(module, cert) is Reason.EXHAUSTED


def test_replayed_completion_is_refused():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id, max_uses=3)
    pid = cert.metadata.pairing_id
    a = w.pack.accept_certificate(cert.encode())
    w.module.accept_certificate(cert.encode())
    w.pack.pairing_offer(pid, w.module.pairing_offer(pid, w.pack.pairing_start(pid)))
    w.controller.complete_pairing(a.completion)
    size = w.ledger.size
    with pytest.raises(VerificationError) as exc:
        w.controller.complete_pairing(a.completion)
    assert exc.value.reason is Reason.REPLAY
    assert w.controller.rejections[Reason.REPLAY] == 1
    assert w.ledger.size == size


def test_forged_completion_signature_is_refused():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id)
    pid = cert.metadata.pairing_id
    a = w.pack.accept_certificate(cert.encode())
    w.module.accept_certificate(cert.encode())
    w.pack.pairing_offer(pid, w.module.pairing_offer(pid, w.pack.pairing_start(pid)))
    proof = a.completion
    forged = type(proof)(proof.pairing_id, proof.validation_nonce, proof.session_nonce,
                         {"a": proof.entity_signatures["a"], "b": proof.entity_signatures["a"]})  # fmt: skip
    with pytest.raises(VerificationError) as exc:
        w.controller.complete_pairing(forged)
    assert exc.value.reason is Reason.BAD_SIGNATURE
    assert w.ledger.size == 2  # binding + issued: nothing recorded as paired


def test_mismatched_halves_are_a_key_mismatch_and_nothing_is_paired():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id)
    pid = cert.metadata.pairing_id
    w.pack.accept_certificate(cert.encode())
    b = w.module.accept_certificate(cert.encode())
    offer = w.pack.pairing_start(pid)
    b._half = bytes(32)  # module holds a wrong half; its offer is still properly signed
    with pytest.raises(VerificationError) as exc:
        w.module.pairing_offer(pid, offer)
    assert exc.value.reason is Reason.KEY_MISMATCH
    assert w.module.pairing_secrets(pid) is None
    assert w.module.rejections[Reason.KEY_MISMATCH] == 1


def test_offer_signed_by_someone_else_is_refused():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id)
    pid = cert.metadata.pairing_id
    a = w.pack.accept_certificate(cert.encode())
    w.module.accept_certificate(cert.encode())
    a._binding_key = PrivateKey.generate(w.rng)  # an impostor holding the pack's section
    with pytest.raises(VerificationError) as exc:
        w.module.pairing_offer(pid, w.pack.pairing_start(pid))
    assert exc.value.reason is Reason.BAD_SIGNATURE


def test_partial_pairing_times_out_cleanly_on_both_sides():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id, handshake_timeout_s=30)
    pid = cert.metadata.pairing_id
    a = w.pack.accept_certificate(cert.encode())
    b = w.module.accept_certificate(cert.encode())
    offer = w.pack.pairing_start(pid)
    w.clock.now += 31  # the module never answered in time
    assert w.pack.pairing_tick() == [pid] and w.module.pairing_tick() == [pid]
    assert a.state is PairingState.TIMED_OUT and b.state is PairingState.TIMED_OUT
    assert a._half == b"" and b._half == b""
    with pytest.raises(VerificationError) as exc:
        b.on_offer(offer, w.clock())
    assert exc.value.reason is Reason.TIMEOUT
    assert w.pack.pairing_secrets(pid) is None and w.module.pairing_secrets(pid) is None


def test_late_completion_is_refused_by_the_controller():
    w, record = _bound_world()
    cert = w.controller.issue_pairing(record.binding_id, handshake_timeout_s=30)
    pid = cert.metadata.pairing_id
    a = w.pack.accept_certificate(cert.encode())
    w.module.accept_certificate(cert.encode())
    w.pack.pairing_offer(pid, w.module.pairing_offer(pid, w.pack.pairing_start(pid)))
    w.clock.now += 60
    with pytest.raises(VerificationError) as exc:
        w.controller.complete_pairing(a.completion)
    assert exc.value.reason is Reason.TIMEOUT


def test_pairing_needs_a_live_binding():
    w, record = _bound_world()
    w.controller.revoke(record.binding_id)
    with pytest.raises(VerificationError) as exc:
        w.controller.issue_pairing(record.binding_id)
    assert exc.value.reason is Reason.REVOKED


@pytest.mark.parametrize(
    ("op", "payload", "reason"),
    [
        ("pairing-accept", {"certificate": "not base64!"}, Reason.MALFORMED),
        ("pairing-accept", {"certificate": "oWFhAQ=="}, Reason.UNKNOWN_FIELD),
        ("pairing-offer", {"pairing_id": "6f1c2f4e-8b1a-4c39-9a51-3d3b1f2c7a10"}, Reason.MALFORMED),
        ("pairing-start", {"pairing_id": "6f1c2f4e-8b1a-4c39-9a51-3d3b1f2c7a10"}, Reason.WRONG_SESSION),
        ("pairing-bogus", {}, Reason.MALFORMED),
        ("pairing-start", ["not", "a", "map"], Reason.MALFORMED),
    ],
)
def test_pairing_service_classifies_bad_requests(op, payload, reason):
    from modbatt.nodes.pairing_flow import PairingService

    w, _record = _bound_world()
    service = PairingService(w.module)
    status, answer = service.handle(op, payload)
    assert 400 <= status < 500 and answer["error"] == reason.value
    assert service.rejections[reason] == 1 and w.module.pairings == {}
