"""Protocol profiles (docs/profiles.md): seed and efficient, from the certificate to every level and tier.

Everything here runs the paths a deployment uses: a pairing issued by the controller under a
profile, the entities' own channels, the validation wiring, the demo, the CLI.
"""

from __future__ import annotations

import json

import cbor2
import pytest

from modbatt.attacks import run as run_attack
from modbatt.can.wiretime import CLASSIC, FD
from modbatt.cli import main
from modbatt.crypto import labels
from modbatt.crypto.suite import PrivateKey
from modbatt.errors import ConfigError, Reason, VerificationError
from modbatt.model.pairing import PairingCertificate, PairingMetadata
from modbatt.model.policy import MessageClass
from modbatt.model.profile import ProtocolProfile, profile_named
from modbatt.model.tier import Tier
from modbatt.nodes.channel import pump
from modbatt.nodes.inmemory import InMemoryDeployment
from modbatt.nodes.pairing_flow import pair_entities
from modbatt.nodes.validation import ValidationContext, run_all_levels
from modbatt.protocol.pairing import PairingSecrets, derive_binding_mac_secret
from modbatt.protocol.validation import EphemeralPool

SEED = 5
PROFILES = [p.value for p in ProtocolProfile]


def _paired(profile: str, modules: int = 1):
    dep = InMemoryDeployment(seed=SEED, modules=modules)
    record = dep.bind(dep.pack, dep.modules[1]).record
    out = pair_entities(dep.controller, dep.pack, dep.modules[1], record.binding_id, profile=profile)
    return dep, record, out


# --- the certificate carries the profile ------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_the_profile_is_in_the_signed_metadata_and_both_ends_hold_it(profile):
    dep, _, out = _paired(profile)
    meta = out.certificate.metadata
    assert meta.profile is ProtocolProfile(profile)
    assert cbor2.loads(out.certificate.metadata_bytes)["profile"] == profile
    for node in (dep.pack, dep.modules[1]):
        secrets = node.pairing_secrets(meta.pairing_id)
        assert secrets is not None and secrets.profile is ProtocolProfile(profile)
        assert (secrets.binding_secret is not None) == (profile == "efficient")
        assert node.channel(meta.pairing_id).protocol is ProtocolProfile(profile)
    # The issue statement in the ledger names it too (auditors see every pairing's profile).
    issued = [cbor2.loads(e) for e in dep.ledger.entries() if cbor2.loads(e).get("kind") == "pairing_issued"]
    assert issued[-1]["profile"] == profile


def test_profile_tamper_in_the_certificate_breaks_the_controller_signature():
    dep, record, _ = _paired("seed")
    cert = dep.controller.issue_pairing(record.binding_id, profile="seed")
    meta = cbor2.loads(cert.metadata_bytes)
    meta["profile"] = "efficient"
    tampered = PairingCertificate(cbor2.dumps(meta, canonical=True), dict(cert.sections), cert.signature)
    assert PairingMetadata.decode(tampered.metadata_bytes).profile is ProtocolProfile.EFFICIENT  # well formed
    with pytest.raises(VerificationError) as exc:
        tampered.verify(dep.controller.public_key)
    assert exc.value.reason is Reason.BAD_SIGNATURE
    module = dep.modules[1]
    before = module.rejections[Reason.BAD_SIGNATURE]
    with pytest.raises(VerificationError) as exc:
        module.accept_certificate(tampered.encode())  # the path a deployment uses
    assert exc.value.reason is Reason.BAD_SIGNATURE and module.rejections[Reason.BAD_SIGNATURE] == before + 1
    # An unknown profile name never decodes: one classified refusal.
    meta["profile"] = "ed25519"
    with pytest.raises(VerificationError) as exc:
        PairingMetadata.decode(cbor2.dumps(meta, canonical=True))
    assert exc.value.reason is Reason.MALFORMED


def test_unknown_profiles_are_one_config_error():
    with pytest.raises(ConfigError, match="modelled only"):
        profile_named("ed25519")
    dep, record, _ = _paired("seed")
    with pytest.raises(ConfigError, match="unknown protocol profile 'fast'"):
        dep.controller.issue_pairing(record.binding_id, profile="fast")


# --- the binding MAC secret ------------------------------------------------------------------


def test_both_partners_derive_one_binding_mac_secret_per_session_and_nobody_else_can():
    dep, record, out = _paired("efficient")
    pid = out.certificate.metadata.pairing_id
    pack, module = dep.pack.pairing_secrets(pid), dep.modules[1].pairing_secrets(pid)
    assert pack is not None and module is not None
    assert pack.binding_secret == module.binding_secret and pack.pairing_secret == module.pairing_secret
    # A key that is not one of the two binding keys (the controller has neither) derives another secret.
    stranger = PrivateKey.generate(dep.rng)
    guess = derive_binding_mac_secret(
        stranger, record.entity_b.semi_public_key, role="a", pairing_id=pid, session_id=pack.session_id
    )
    assert guess != pack.binding_secret
    # The next session of a multi-use certificate: a new binding MAC secret (it names the session).
    multi = pair_entities(dep.controller, dep.pack, dep.modules[1], record.binding_id, profile="efficient",
                          max_uses=2)  # fmt: skip
    first = dep.pack.pairing_secrets(multi.certificate.metadata.pairing_id)
    pair_entities(dep.controller, dep.pack, dep.modules[1], certificate=multi.certificate)
    second = dep.pack.pairing_secrets(multi.certificate.metadata.pairing_id)
    assert first is not None and second is not None and first.binding_secret != second.binding_secret


def test_session_records_keep_the_profile_and_old_records_are_seed():
    _, _, out = _paired("efficient")
    secrets = next(iter(out.secrets.values()))
    assert PairingSecrets.from_record(secrets.to_record()) == secrets
    old = {k: v for k, v in secrets.to_record().items() if k not in ("profile", "binding_secret")}
    assert PairingSecrets.from_record(old).profile is ProtocolProfile.SEED  # stored before profiles existed
    with pytest.raises(ValueError, match="needs"):
        PairingSecrets(secrets.pairing_id, "a", secrets.session_id, bytes(32), bytes(32),
                       profile=ProtocolProfile.EFFICIENT)  # fmt: skip


# --- the binding tier under both profiles ----------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("bus", [CLASSIC, FD], ids=["classic", "fd"])
def test_binding_tier_frames_between_the_entities_own_channels(profile, bus):
    dep, _, out = _paired(profile)
    pid = out.certificate.metadata.pairing_id
    tx, rx = dep.modules[1].channel(pid, profile=bus), dep.pack.channel(pid, profile=bus)
    pdu = tx.send(MessageClass.VALIDATION, b"module-01 status: ok")
    assert not pdu.single_frame  # binding-tier units are multi-frame in every profile
    got = rx.receive(pdu.can_id, pdu.data, reassembled=True)
    assert got is not None and got.tier is Tier.BINDING and got.payload == b"module-01 status: ok"
    overhead = len(pdu.data) - len(b"module-01 status: ok")
    if profile == "seed":
        assert overhead == 7 + 64 and b"module-01 status: ok" in pdu.data  # signed, in clear
    else:
        assert overhead == (5 if bus is CLASSIC else 24) and b"module-01 status: ok" not in pdu.data  # sealed
    # Replayed: refused by the window, whatever the profile.
    with pytest.raises(VerificationError) as exc:
        rx.receive(pdu.can_id, pdu.data, reassembled=True)
    assert exc.value.reason is Reason.REPLAY
    # A whole unit offered as one frame is refused before any key is used.
    with pytest.raises(VerificationError) as exc:
        rx.receive(pdu.can_id, pdu.data[:8])
    assert exc.value.reason is Reason.OVERSIZED


@pytest.mark.parametrize("bus", [CLASSIC, FD], ids=["classic", "fd"])
def test_a_frame_of_one_profile_is_refused_by_a_channel_of_the_other(bus):
    """One binding, a seed and an efficient pairing: each channel refuses the other's binding-tier units."""
    dep, record, seed_out = _paired("seed")
    eff_out = pair_entities(dep.controller, dep.pack, dep.modules[1], record.binding_id, profile="efficient")
    module, pack = dep.modules[1], dep.pack
    seed_pid, eff_pid = seed_out.certificate.metadata.pairing_id, eff_out.certificate.metadata.pairing_id
    seed_tx, eff_tx = module.channel(seed_pid, profile=bus), module.channel(eff_pid, profile=bus)
    seed_rx, eff_rx = pack.channel(seed_pid, profile=bus), pack.channel(eff_pid, profile=bus)
    signed = seed_tx.send(MessageClass.VALIDATION, b"status")  # signed by the genuine binding key
    sealed = eff_tx.send(MessageClass.VALIDATION, b"status")
    with pytest.raises(VerificationError) as exc:
        eff_rx.receive(signed.can_id, signed.data, reassembled=True)
    # Classic: the tag does not verify; FD: the signed unit's payload byte reads as a bad pad count.
    assert exc.value.reason is (Reason.BAD_MAC if bus is CLASSIC else Reason.MALFORMED)
    with pytest.raises(VerificationError) as exc:
        seed_rx.receive(sealed.can_id, sealed.data, reassembled=True)
    assert exc.value.reason is Reason.MALFORMED  # shorter than FV + signature
    assert eff_rx.rejects[exc.value.reason] + seed_rx.rejects[Reason.MALFORMED] >= 1
    # Each channel's own frames still verify afterwards: nothing moved a window.
    assert eff_rx.receive(sealed.can_id, sealed.data, reassembled=True) is not None
    assert seed_rx.receive(signed.can_id, signed.data, reassembled=True) is not None
    out = run_attack("profile_confusion", SEED)
    assert (out.outcome, out.reason) == ("blocked", "bad_mac")


@pytest.mark.parametrize("profile", PROFILES)
def test_a_monitor_with_the_key_store_reads_both_directions_of_the_binding_tier(profile):
    dep, _, out = _paired(profile)
    pid = out.certificate.metadata.pairing_id
    observer = dep.pack.observer(pid)  # what `modbatt monitor --keystore` builds from the pack's store
    up = dep.modules[1].channel(pid).send(MessageClass.VALIDATION, b"up")
    down = dep.pack.channel(pid).send(MessageClass.VALIDATION, b"down")
    assert observer.receive(up.can_id, up.data, reassembled=True).payload == b"up"
    assert observer.receive(down.can_id, down.data, reassembled=True).payload == b"down"


def test_a_restarted_efficient_channel_resynchronises_at_the_binding_tier():
    dep, _, out = _paired("efficient")
    pid = out.certificate.metadata.pairing_id
    pack = dep.pack.channel(pid)
    module = dep.modules[1].channel(pid)
    reborn = dep.restart(dep.modules[1]).channel(pid)
    assert pump(pack, reborn) >= 4 and reborn.synced and pack.synced
    pdu = reborn.send(MessageClass.VALIDATION, b"after restart")
    assert pack.receive(pdu.can_id, pdu.data, reassembled=True).payload == b"after restart"
    assert module.closed


# --- every validation level under both profiles ----------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_every_validation_level_under_both_profiles(profile):
    dep, record, out = _paired(profile)
    pid = out.certificate.metadata.pairing_id
    levels = run_all_levels(dep.controller, dep.pack, dep.modules[1], record.binding_id, pid)
    assert {k: v["outcome"] for k, v in levels.items()} == {str(n): "ok" for n in range(1, 8)}
    efficient = profile == "efficient"
    assert levels["3"]["authenticator"] == ("mac" if efficient else "sig")
    assert levels["3"]["ephemeral_keys"] == ("precomputed" if efficient else "per handshake")
    assert levels["3"]["pool_misses"] == 0
    assert levels["5"]["signed"] is (not efficient)
    assert levels["6"]["partner_check"] == ("MAC" if efficient else "signature and MAC")
    # No signature rides on the L3 or L5 messages under efficient (a MAC, or the AEAD alone).
    assert max(levels["5"]["bytes"]) < 260 if efficient else min(levels["5"]["bytes"]) > 250


def test_efficient_l3_takes_precomputed_ephemeral_keys_once_each():
    pool = EphemeralPool(size=2)
    assert len(pool) == 0 and pool.refill() == 2 and len(pool) == 2 and pool.refill() == 0
    keys = [pool.take(), pool.take()]
    assert keys[0].public_key != keys[1].public_key and pool.misses == 0
    pool.take()  # empty: made on the spot, counted
    assert pool.misses == 1
    with pytest.raises(ValueError):
        EphemeralPool(size=0)


def test_efficient_l3_and_l5_refuse_a_forged_mac_and_a_seed_message():
    dep, record, out = _paired("efficient")
    pid = out.certificate.metadata.pairing_id
    ctx = ValidationContext.from_nodes(dep.controller, dep.pack, dep.modules[1], record.binding_id, pid)
    from modbatt.protocol.validation import SignedHandshakeInitiator, SignedHandshakeResponder

    p, m = ctx.side(dep.pack), ctx.side(dep.modules[1])
    ini = SignedHandshakeInitiator(
        binding_id=record.binding_id, device_id=p["device_id"], binding_key=p["binding_key"],
        partner_id=m["device_id"], partner_key=p["partner_key"], secrets=p["secrets"], rng=ctx.rng,
    )  # fmt: skip
    res = SignedHandshakeResponder(
        binding_id=record.binding_id, device_id=m["device_id"], binding_key=m["binding_key"],
        partner_id=p["device_id"], partner_key=m["partner_key"], secrets=m["secrets"], rng=ctx.rng,
    )  # fmt: skip
    hello = cbor2.loads(ini.start(dep.clock()))
    assert "mac" in hello and "sig" not in hello and len(hello["mac"]) == 32
    forged = dict(hello, mac=bytes(32))
    with pytest.raises(VerificationError) as exc:
        res.on_hello(cbor2.dumps(forged, canonical=True), dep.clock())
    assert exc.value.reason is Reason.BAD_MAC and res.rejections[Reason.BAD_MAC] == 1
    # A seed-profile (signed) hello is not a message of this pairing's profile.
    seed_ini = SignedHandshakeInitiator(
        binding_id=record.binding_id, device_id=p["device_id"], binding_key=p["binding_key"],
        partner_id=m["device_id"], partner_key=p["partner_key"], rng=ctx.rng,
    )  # fmt: skip
    with pytest.raises(VerificationError) as exc:
        res.on_hello(seed_ini.start(dep.clock()), dep.clock())
    assert exc.value.reason is Reason.UNKNOWN_FIELD
    # Level 5: no signature on the wire; a changed byte fails the AEAD, a signed command is not this profile's.
    from modbatt.protocol.validation import CommandExecutor, CommandSender

    common = {"expires_at": dep.clock() + 3600, "rng": ctx.rng}
    sender = CommandSender(secrets=p["secrets"], device_id=p["device_id"], partner_id=m["device_id"],
                           binding_key=p["binding_key"], partner_key=p["partner_key"], **common)  # fmt: skip
    executor = CommandExecutor(secrets=m["secrets"], device_id=m["device_id"], partner_id=p["device_id"],
                               binding_key=m["binding_key"], partner_key=m["partner_key"], **common)  # fmt: skip
    _, command = sender.send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x64", dep.clock())
    body = cbor2.loads(command)
    assert "sig" not in body and not sender.signed
    flipped = dict(body, ct=bytes([body["ct"][0] ^ 1]) + body["ct"][1:])
    with pytest.raises(VerificationError) as exc:
        executor.on_command(cbor2.dumps(flipped, canonical=True), dep.clock())
    assert exc.value.reason is Reason.BAD_MAC
    with pytest.raises(VerificationError) as exc:
        executor.on_command(cbor2.dumps(dict(body, sig=bytes(64)), canonical=True), dep.clock())
    assert exc.value.reason is Reason.UNKNOWN_FIELD
    assert executor.executed == []  # nothing ran
    ack = executor.on_command(command, dep.clock())
    assert sender.on_ack(ack, dep.clock()).status == "ok" and len(executor.executed) == 1


def test_the_efficient_pairing_tier_is_bound_to_the_binding():
    """A standard-mode controller that kept its keys reads the exchange tier, never the pairing tier."""
    seed = run_attack("compromised_controller_standard", SEED)
    eff = run_attack("compromised_controller_standard@efficient", SEED)
    assert seed.counters["reads_pairing"] == seed.counters["forges_pairing"] == 1
    assert eff.counters["reads_pairing"] == eff.counters["forges_pairing"] == 0
    assert eff.counters["reads_exchange"] == 1 and eff.outcome == "limit"


def test_no_binding_key_signature_travels_on_an_efficient_link():
    seed = run_attack("semi_public_key_recovery", SEED)
    eff = run_attack("semi_public_key_recovery@efficient", SEED)
    assert (seed.outcome, eff.outcome) == ("blocked", "blocked") and eff.reason == "key_hiding_signature"
    assert seed.counters["binding_frame_signatures"] == 1 and eff.counters["binding_frame_signatures"] == 0
    assert eff.counters["keys_recovered"] == 0
    forge = run_attack("binding_frame_forgery@efficient", SEED)
    assert (forge.outcome, forge.reason) == ("blocked", "bad_mac")
    assert forge.counters["classic.pack_link.rejects.bad_mac"] >= 5 and forge.counters["fd.genuine_after"] == 1


def test_the_codec_format_follows_the_profile():
    from modbatt.can.secured import frame_format

    seed_fmt = frame_format(Tier.BINDING, CLASSIC, ProtocolProfile.SEED)
    eff_fmt = frame_format(Tier.BINDING, CLASSIC, ProtocolProfile.EFFICIENT)
    assert seed_fmt.signed and seed_fmt.overhead == 71 and seed_fmt.forgery_odds_log2 == -128
    assert not eff_fmt.signed and eff_fmt.overhead == frame_format(Tier.PAIRING, CLASSIC).overhead == 5
    assert eff_fmt.forgery_odds_log2 == -32 and frame_format(Tier.BINDING, FD, "efficient").forgery_odds_log2 == -128
    assert seed_fmt.room == eff_fmt.room == 0  # multi-frame only


# --- the model agrees with the implementation ------------------------------------------------


def test_every_implemented_profile_has_a_cost_model_that_matches_it():
    from modbatt.sim.transactions import PROTOCOLS

    for profile in ProtocolProfile:
        model = PROTOCOLS[profile.value]
        assert (model.binding_frames == "aead") is profile.binding_mac
        assert model.signed_commands is (not profile.binding_mac)
        assert model.precomputed_ephemeral is profile.binding_mac
    assert set(PROTOCOLS) - {p.value for p in ProtocolProfile} == {"ed25519"}  # modelled only


# --- the faces: demo, simulator, bench, sweep, CLI -------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_demo_path_under_each_profile(tmp_path, profile):
    from modbatt.workbench.demo import run_demo

    result = run_demo(tmp_path / profile, transport="in-process", profile=ProtocolProfile(profile))
    assert result.pairing["profile"] == profile
    binding = [f for f in result.frames if f["tier"] == "binding"]
    assert len(binding) == 1 and bytes.fromhex(binding[0]["payload"]) == b"module-01 status: ok"
    assert len(bytes.fromhex(binding[0]["data"])) == (20 + 71 if profile == "seed" else 20 + 5)
    assert {k: v["outcome"] for k, v in result.validation.items()} == {str(n): "ok" for n in range(1, 8)}
    assert result.validation["5"]["signed"] is (profile == "seed")


def test_cli_demo_profile_and_its_errors(tmp_path, capsys):
    assert main(["demo", "--in-process", "--json", "--profile", "efficient", "--state", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairing"]["profile"] == "efficient"
    for bad in ("ed25519", "fast"):
        assert main(["demo", "--in-process", "--profile", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"unknown protocol profile {bad!r}" in err


@pytest.mark.parametrize("profile", PROFILES)
def test_pack_simulator_under_each_profile(profile):
    from modbatt.sim.pack import PackSimulation

    with PackSimulation(2, protocol=profile, seed=SEED) as sim:
        stats = sim.run(1.0)
        assert all(link.protocol is ProtocolProfile(profile) for link in sim.pack.links.values())
    assert stats.ok and stats.acks_received > 0


def test_bench_codec_rows_carry_the_profile():
    from modbatt.bench import codec

    rows = codec.run(quick=True, profiles=(ProtocolProfile.EFFICIENT,))
    assert {(r["profile"], r["bus"], r["tier"]) for r in rows} == {
        ("efficient", b, t.label) for b in ("classic", "fd") for t in Tier
    }
    binding = {r["bus"]: r for r in rows if r["tier"] == "binding"}
    assert binding["classic"]["unit_bytes"] == 8 + 5 and binding["fd"]["unit_bytes"] == 32
    assert all(r["bus_ratio"] > 0 for r in rows)


def test_cli_bench_attack_run_and_sweep_refuse_an_unknown_profile(tmp_path, capsys):
    assert main(["bench", "codec", "--profile", "fast"]) == 2
    assert main(["attack", "binding_frame_forgery", "--profile", "fast"]) == 2
    assert main(["run", "-p", "profile=fast", "--output", str(tmp_path / "run")]) == 2
    sweep = tmp_path / "s.yaml"
    sweep.write_text("experiment: frame_overhead\ngrid: {tier: [binding], bus: [classic], profile: [fast]}\n"
                     "fixed: {payload_bytes: 8}\n")  # fmt: skip
    assert main(["sweep", str(sweep), "--output", str(tmp_path / "s.csv"), "--workers", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 4 and all("'fast'" in line for line in errors), errors
    assert not (tmp_path / "run").exists() and not (tmp_path / "s.csv").exists()


def test_cli_attack_runs_a_scenario_under_a_profile(capsys):
    assert main(["attack", "binding_frame_forgery", "--profile", "efficient", "--json", "--seed", "3"]) == 0
    row = json.loads(capsys.readouterr().out)["binding_frame_forgery@efficient"]
    assert (row["outcome"], row["reason"]) == ("blocked", "bad_mac")


def test_labels_of_the_efficient_profile_are_derivation_labels():
    for label in (labels.PAIRING_BINDING_MAC_SECRET, labels.PAIRING_BOUND_TRAFFIC_SECRET,
                  labels.HANDSHAKE_BINDING_MAC):  # fmt: skip
        assert label.startswith(f"modbatt/v{labels.PROTOCOL_VERSION}/".encode()) and label not in labels.KEY_HIDING
