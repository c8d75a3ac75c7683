"""Genuine files written by the package: the seeds the file fuzzer mutates (tests/test_fuzz_files.py).

One demo deployment (binding, pairing, validation, escalation) and a secured capture recorded from
its paired link give: the ledger, its event log and a kept tree head, the controller's public key
(DER and PEM), the pairing certificate (CBOR and base64), the pack controller's key store with its
key file and a passphrase-protected copy, the capture in every log format python-can writes, the
DBC files of ``modbatt dbc export``, small sweep files for each experiment with a CPU profile file,
the known-answer vectors, and the parameters cells of two notebooks.
"""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from cryptography.hazmat.primitives import serialization
from helpers_capture import record_secured_capture

from modbatt.can import dbc
from modbatt.crypto.keystore import KdfParams, KeyStore
from modbatt.ledger import Ledger
from modbatt.transport.recording import LOG_FORMATS, OPTIONAL_FORMATS, write_log

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = "correct horse battery staple"


@dataclass
class Corpus:
    root: Path
    state: Path
    ledger: Path
    events: Path
    sth: Path
    controller_der: Path
    controller_pem: Path
    certificate: Path
    certificate_b64: Path
    keystore: Path  # key file beside it: keystore.with_suffix(".kek")
    passphrase_store: Path  # unlocked by PASSPHRASE through $MODBATT_PASSPHRASE
    captures: dict[str, Path] = field(default_factory=dict)  # suffix -> file
    dbcs: list[Path] = field(default_factory=list)
    sweeps: list[Path] = field(default_factory=list)
    cpu_profile: Path | None = None
    vectors: Path | None = None
    notebooks: Path | None = None

    def read(self, path: Path) -> bytes:
        return path.read_bytes()


def _sweep(root: Path, name: str, text: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(text)
    return path


def build(root: Path) -> Corpus:
    """Write every seed under ``root`` (about ten seconds: one demo and a recorded exchange)."""
    state = root / "state"
    recorded = record_secured_capture(state)
    demo = recorded.demo
    seeds = root / "seeds"
    seeds.mkdir()

    controller_der = seeds / "controller.der"
    controller_der.write_bytes(demo.controller_public_key)
    key = serialization.load_der_public_key(demo.controller_public_key)
    controller_pem = seeds / "controller.pem"
    controller_pem.write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    certificate = seeds / "pairing.cert"
    certificate.write_bytes(demo.pairing_certificate)
    certificate_b64 = seeds / "pairing.cert.b64"
    certificate_b64.write_bytes(base64.b64encode(demo.pairing_certificate) + b"\n")

    with Ledger(demo.ledger_path, read_only=True) as ledger:
        head = ledger.latest_tree_head()
    assert head is not None
    sth = seeds / "sth.json"
    sth.write_text(json.dumps(head.to_dict(), indent=2) + "\n")

    keystore = seeds / "pack.keystore"
    shutil.copy(recorded.keystore, keystore)
    shutil.copy(recorded.keystore.with_suffix(".kek"), keystore.with_suffix(".kek"))
    store = KeyStore.open(keystore, key_file=keystore.with_suffix(".kek"))
    backup = root / "pack.backup"
    store.export_backup(backup, passphrase="backup " + PASSPHRASE, kdf=KdfParams.cheap())
    store.close()
    passphrase_store = seeds / "pack-passphrase.keystore"
    KeyStore.restore_backup(
        backup, passphrase_store, backup_passphrase="backup " + PASSPHRASE, passphrase=PASSPHRASE,
        kdf=KdfParams.cheap(),
    ).close()  # fmt: skip

    captures = {}
    for suffix in LOG_FORMATS:
        needs = OPTIONAL_FORMATS.get(suffix)
        if needs is not None:
            try:
                __import__(needs[0])
            except ImportError:
                continue
        path = seeds / f"capture{suffix}"
        write_log(path, recorded.frames, channel="can0")
        captures[suffix] = path

    dbc_dir = root / "dbc"
    dbc.export_dbc_files(dbc_dir, module_id=1)
    dbcs = [dbc_dir / dbc.PLAIN_DBC_NAME, dbc_dir / dbc.LEGACY_DBC_NAME]

    cpu_profile = seeds / "cpu.yaml"
    shutil.copy(REPO / "sweeps" / "cpu-atmega64m1-16mhz.yaml", cpu_profile)
    sweeps = [
        _sweep(seeds, "frame-overhead", "experiment: frame_overhead\ngrid:\n  tier: [none, binding]\n"
               "  bus: [classic, fd]\n  payload_bytes: [8, 64]\nfixed:\n  nominal_bitrate: 500000\n"),
        _sweep(seeds, "pairing-cost", "experiment: pairing_cost\ngrid:\n  mode: [standard]\nfixed:\n  max_uses: 2\n"),
        _sweep(seeds, "level-latency", "experiment: level_latency\ngrid:\n"
               "  level: [\"L3 signed handshake\", \"L5 telemetry frame\"]\n"
               "  platform: [HOST, MCU]\nfixed:\n  bus: classic 500k\n  stuffing: worst\n"),
        _sweep(seeds, "pack-load", "experiment: pack_load\ngrid:\n  modules: [2]\n"
               "fixed:\n  bus: classic 250k\n  duration: 0.5\n"),
        _sweep(seeds, "design-space", "experiment: design_space\ngrid:\n  profile: [seed]\n  bus: [classic 500k]\n"
               "  modules: [2]\n  platform: [\"STM32WB55 / ATmega64M1@16MHz\"]\n"
               f"fixed:\n  cpu_file: {cpu_profile}\n"),
    ]  # fmt: skip

    vectors = root / "vectors"
    shutil.copytree(REPO / "vectors", vectors)

    notebooks = root / "notebooks"
    notebooks.mkdir()
    for name in ("01-binding.ipynb", "07-latency-and-scale.ipynb"):
        source = REPO / "notebooks" / name
        if not source.exists():  # notebooks are renamed now and then: any two will do
            continue
        nb = nbformat.read(source, as_version=4)
        # The parameters cell is what --list-params and -p read; outputs only make the seed large.
        nb.cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        nbformat.write(nb, notebooks / name)

    return Corpus(
        root=root, state=state, ledger=demo.ledger_path, events=state / "events.jsonl", sth=sth,
        controller_der=controller_der, controller_pem=controller_pem, certificate=certificate,
        certificate_b64=certificate_b64, keystore=keystore, passphrase_store=passphrase_store,
        captures=captures, dbcs=dbcs, sweeps=sweeps, cpu_profile=cpu_profile, vectors=vectors,
        notebooks=notebooks,
    )  # fmt: skip
