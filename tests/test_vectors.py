"""Known-answer vectors (docs/vectors.md): the committed files agree with the package, regenerate
byte for byte, follow the schema, and cover every tier, profile and rejection reason."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from modbatt.cli import main
from modbatt.crypto.rng import ScriptedRandom
from modbatt.errors import Reason, ReproducibleModeError
from modbatt.model.tier import Tier
from modbatt.workbench import vectors

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "vectors"


def _load(name: str) -> dict:
    return json.loads((COMMITTED / name).read_bytes())


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """One export per run, through the real command in a fresh process without the test env."""
    out = tmp_path_factory.mktemp("vectors")
    env = {k: v for k, v in os.environ.items() if k != "MODBATT_REPRODUCIBLE"}
    done = subprocess.run(
        [sys.executable, "-m", "modbatt.cli", "vectors", "export", str(out)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "MODBATT_REPRODUCIBLE" not in env
    return out


def test_regenerating_gives_the_committed_files_byte_for_byte(regenerated):
    names = sorted(p.name for p in regenerated.iterdir())
    assert names == sorted(p.name for p in COMMITTED.iterdir()), "vectors/ and the export differ in files"
    changed = [n for n in names if (regenerated / n).read_bytes() != (COMMITTED / n).read_bytes()]
    assert not changed, f"wire format or key schedule changed: run `modbatt vectors export vectors` ({changed})"


def test_the_committed_vectors_agree_with_the_package(capsys):
    assert main(["vectors", "check", str(COMMITTED)]) == 0
    out = capsys.readouterr().out
    assert "can_frames.json" in out and "cases agree" in out


def test_a_changed_vector_fails_the_check(tmp_path, capsys):
    for p in COMMITTED.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    data = _load("can_frames.json")
    case = next(c for g in data["testGroups"] if g["tier"] == "exchange" for c in g["tests"] if c["result"] == "valid")
    case["frame"] = case["frame"][:-2] + f"{int(case['frame'][-2:], 16) ^ 1:02x}"
    (tmp_path / "can_frames.json").write_text(json.dumps(data))
    assert main(["vectors", "check", str(tmp_path)]) == 1
    assert f"can_frames.json tcId {case['tcId']}" in capsys.readouterr().err


def test_every_file_follows_the_schema():
    schema = json.loads((COMMITTED / "modbatt-vectors.schema.json").read_bytes())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["$defs"]["reason"]["enum"]) == {r.value for r in Reason}
    for name in vectors.FILES:
        data = _load(name)
        jsonschema.validate(data, schema)
        ids = [c["tcId"] for g in data["testGroups"] for c in g["tests"]]
        assert ids == list(range(1, len(ids) + 1)) and data["numberOfTests"] == len(ids)
        assert {f for g in data["testGroups"] for c in g["tests"] for f in c["flags"]} <= set(data["notes"])


def test_frames_cover_every_tier_profile_and_rejection():
    data = _load("can_frames.json")
    seen: dict[tuple[str, str], set[str]] = {}
    for g in data["testGroups"]:
        seen.setdefault((g["tier"], g["profile"]), set()).update(c["result"] for c in g["tests"])
    for tier in Tier:
        for profile in ("classic", "fd"):
            assert {"valid", "invalid"} <= seen[(tier.label, profile)], (tier, profile)
    reasons = {c.get("reason") for g in data["testGroups"] for c in g["tests"]}
    wanted = {"bad_mac", "bad_signature", "replay", "stale", "malformed", "oversized", "tier_too_low", "wrong_level"}
    assert wanted <= reasons
    flags = {f for g in data["testGroups"] for c in g["tests"] if c["result"] == "invalid" for f in c["flags"]}
    assert {"ModifiedTag", "Replay", "Stale", "FlagLevelMismatch", "WrongLength", "ReservedBits"} <= flags


def test_key_schedule_covers_every_label_and_every_hkdf_label():
    data = _load("key_schedule.json")
    groups = data["testGroups"]
    labels = {c["constant"]: c["use"] for c in groups[0]["tests"]}
    assert set(labels) == set(vectors.keyschedule.all_labels())
    hkdf_groups = {g["label"] for g in groups if g["type"] == "HkdfLabelTest"}
    assert {n for n, use in labels.items() if use == "hkdf-info"} == hkdf_groups
    # Every label a derivation in the source names has vectors (the recorded run reached it).
    named = set()
    for path in (ROOT / "modbatt").rglob("*.py"):
        text = path.read_text()
        for call in re.finditer(r"hkdf_sha256\((.{0,200}[A-Z_]*)", text, re.S):  # a label cut off: whole
            named.update(re.findall(r"labels\.([A-Z_]+)", call.group(1).split("\n\n")[0]))
    assert named and named <= hkdf_groups, named - hkdf_groups
    traffic = [c for g in groups if g["type"] == "TrafficKeyTest" for c in g["tests"]]
    assert len(traffic) == 6  # exchange, pairing and (efficient profile) binding, two directions each
    bindmac = [c for g in groups if g["type"] == "BindingMacSecretTest" for c in g["tests"]]
    assert {c["role"] for c in bindmac} == {"a", "b"}  # both ends of a pairing derive the same secret


def test_validation_messages_cover_levels_1_to_7():
    data = _load("validation_messages.json")
    levels = {g["level"] for g in data["testGroups"] if any(c["result"] == "valid" for c in g["tests"])}
    assert levels == set(range(1, 8))
    recorded = {
        (g["level"], c["messageType"], c["authField"] or "none") for g in data["testGroups"] for c in g["tests"]
    }
    known = set(vectors.validation.message_classes())
    missing = known - recorded
    assert not missing, f"validation messages without vectors: {sorted(missing)}"


def test_scripted_randomness_is_reproducible_mode_only(monkeypatch):
    monkeypatch.delenv("MODBATT_REPRODUCIBLE", raising=False)
    with pytest.raises(ReproducibleModeError):
        ScriptedRandom([bytes(32)])
    monkeypatch.setenv("MODBATT_REPRODUCIBLE", "1")
    rng = ScriptedRandom([b"\x01" * 32])
    with pytest.raises(ReproducibleModeError):
        rng.token_bytes(16)  # a script is for one use of one size


def test_export_into_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["vectors", "export", str(target)]) == 2
    assert "not a directory" in capsys.readouterr().err
