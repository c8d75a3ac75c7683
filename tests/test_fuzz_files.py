"""File fuzzing: every ``modbatt`` command that reads a file, run as a user runs it, on hostile files.

Inputs are genuine files the package wrote (tests/filefuzz_corpus.py: a ledger, a certificate,
key stores, a secured capture in every log format, DBCs, sweep and CPU-profile files, vectors,
notebooks) mutated with awareness of their structure (tests/filefuzz_mutations.py,
tests/filefuzz_formats.py), plus random bytes. Each case runs ``modbatt`` in a child process
forked from one that imported it (tests/filefuzz_driver.py) under an address-space budget of
``MODBATT_FUZZ_BUDGET_MIB`` (768 MiB) above the imports and a wall-clock limit, and passes only when
it ends with exit 0, 1 or 2; a failure prints exactly one line on stderr; no traceback, no memory
error, no unescaped control character on stdout or stderr; and a command that only reads left its
input files byte-identical with nothing created beside them (no ``-wal``/``-shm``).

Examples per command: ``MODBATT_FUZZ_EXAMPLES`` (default 12, derandomised so the suite is
repeatable; set it, e.g. to 500, for a long randomised run whose failures hypothesis keeps in
``.hypothesis/``). docs/threat-model.md, "File fuzzing".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from filefuzz_corpus import PASSPHRASE, Corpus, build
from filefuzz_formats import canlog_db_edits, keystore_edits, ledger_edits, passphrase_store_edits
from filefuzz_harness import CliRunner, assert_clean, problems, snapshot
from filefuzz_mutations import HOSTILE_TEXT, INTERESTING_NUMBERS, cbor_edits, file_bytes, json_edits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the memory budget reads /proc")

_LONG = os.environ.get("MODBATT_FUZZ_EXAMPLES")
EXAMPLES = int(_LONG) if _LONG else 12


def fuzz(weight: float = 1.0) -> settings:
    """``EXAMPLES`` × ``weight`` examples; derandomised unless a long run was asked for."""
    return settings(
        max_examples=max(1, round(EXAMPLES * weight)),
        deadline=None,
        derandomize=not _LONG,
        database=None if not _LONG else settings.default.database,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build(tmp_path_factory.mktemp("filefuzz-corpus"))


@pytest.fixture(scope="module")
def cli() -> Iterator[CliRunner]:
    runner = CliRunner()
    yield runner
    runner.close()
    report = os.environ.get("MODBATT_FUZZ_REPORT")  # a JSON file: runs, exit codes, time and memory per command
    if report:
        import json

        Path(report).write_text(json.dumps({"base_vm_mib": runner.base_vm_mib, "commands": runner.stats}, indent=2))


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="modbatt-fuzz-") as tmp:
        yield Path(tmp)


def put(directory: Path, name: str, data: bytes, mode: int = 0o600) -> Path:
    path = directory / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def run_read_only(cli: CliRunner, argv: Sequence[str], watched: Path, **kwargs: object) -> None:
    """Run a command that only reads, and check that ``watched`` (a folder) is unchanged after it."""
    before = snapshot(watched)
    run = cli.run(argv, **kwargs)  # type: ignore[arg-type]
    assert_clean(run)
    after = snapshot(watched)
    assert after == before, (
        f"the command changed its input folder: {sorted(set(after) ^ set(before))}\n{run.describe()}"
    )


def _seeds(*paths: Path) -> list[bytes]:
    return [p.read_bytes() for p in paths]


# --------------------------------------------------------------------------- captures


TEXT_LOGS = (".log", ".asc", ".trc", ".csv")


def _capture_inputs(corpus: Corpus, suffix: str) -> st.SearchStrategy[bytes]:
    seed = _seeds(corpus.captures[suffix])
    if suffix == ".db":
        return canlog_db_edits(seed)
    return file_bytes(seed, text=suffix in TEXT_LOGS)


_monitor_options = st.sampled_from(
    ([], ["--per-id"], ["--no-reassembly"], ["--count", "5"], ["--duration", "0.05"], ["--no-builtin-dbc"])
)


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf", ".trc", ".csv", ".db", ".mf4"])
def test_capture_in_every_log_format(cli: CliRunner, corpus: Corpus, suffix: str) -> None:
    """``monitor --log`` and ``decode`` with the key store that decrypts the capture, on a mutated capture."""
    if suffix not in corpus.captures:
        pytest.skip(f"{suffix} needs an optional package that is not installed")

    @fuzz()
    @given(
        data=_capture_inputs(corpus, suffix), command=st.sampled_from(("monitor", "decode")), options=_monitor_options
    )
    def check(data: bytes, command: str, options: list[str]) -> None:
        with workdir() as tmp:
            log = put(tmp, f"capture{suffix}", data)
            if command == "monitor":
                argv = ["monitor", "--log", log, "--keystore", corpus.keystore, *options]
            else:
                argv = ["decode", log, "--keystore", corpus.keystore]
            run_read_only(cli, argv, tmp)

    check()


# --------------------------------------------------------------------------- DBC


@fuzz()
@given(data=st.data())
def test_dbc_given_to_the_monitor(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    dbc = data.draw(file_bytes(_seeds(*corpus.dbcs), text=True), label="dbc")
    options = data.draw(st.sampled_from(([], ["--no-builtin-dbc"], ["--per-id"])), label="options")
    with workdir() as tmp:
        path = put(tmp, "extra.dbc", dbc)
        run_read_only(cli, ["monitor", "--log", corpus.captures[".log"], "--dbc", path, *options], tmp)


# --------------------------------------------------------------------------- key stores


@fuzz(1.5)
@given(data=st.data())
def test_keystore_file(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    """A key store with its genuine key file: damaged headers, and authentic stores with hostile contents."""
    genuine = corpus.keystore.read_bytes()
    key_file = corpus.keystore.with_suffix(".kek").read_bytes()
    store = data.draw(keystore_edits(genuine, key_file), label="store")
    command = data.draw(st.sampled_from(("monitor", "decode", "entity show")), label="command")
    with workdir() as tmp:
        if command == "entity show":
            put(tmp, "entity.keystore", store)
            put(tmp, "entity.kek", key_file)
            argv: list[object] = ["entity", "show", "--state", tmp]
        else:
            path = put(tmp, "pack.keystore", store)
            put(tmp, "pack.kek", key_file)
            argv = (
                [command, "--log", corpus.captures[".blf"]]
                if command == "monitor"
                else [command, corpus.captures[".blf"]]
            )
            argv += ["--keystore", path]
        run_read_only(cli, argv, tmp)


@fuzz()
@given(
    key_file=file_bytes([b"\0" * 32]) | st.binary(min_size=28, max_size=40) | st.binary(min_size=4090, max_size=4100)
)
def test_key_file(cli: CliRunner, corpus: Corpus, key_file: bytes) -> None:
    with workdir() as tmp:
        path = put(tmp, "pack.keystore", corpus.keystore.read_bytes())
        put(tmp, "pack.kek", key_file)
        run_read_only(cli, ["decode", corpus.captures[".log"], "--keystore", path], tmp)


@fuzz()
@given(data=st.data())
def test_passphrase_store(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    """A passphrase store (KeyStore.open with a passphrase): header and KDF bounds, any passphrase."""
    store = data.draw(passphrase_store_edits(corpus.passphrase_store.read_bytes()) | st.just(
        corpus.passphrase_store.read_bytes()), label="store")  # fmt: skip
    passphrase = data.draw(
        st.just(PASSPHRASE)
        | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1)
        | st.sampled_from([t for t in HOSTILE_TEXT if "\0" not in t]),
        label="passphrase",
    )  # fmt: skip
    with workdir() as tmp:
        path = put(tmp, "pack.keystore", store)
        run_read_only(cli, ["decode", corpus.captures[".log"], "--keystore", path], tmp,
                      env={"MODBATT_PASSPHRASE": passphrase})  # fmt: skip


# --------------------------------------------------------------------------- certificates and keys


@fuzz(1.5)
@given(data=st.data())
def test_cert_inspect(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    genuine = corpus.certificate.read_bytes()
    cert = data.draw(
        st.one_of(
            file_bytes([genuine]),
            cbor_edits([genuine]),
            cbor_edits([genuine]).map(lambda c: __import__("base64").b64encode(c) + b"\n"),
            file_bytes([corpus.certificate_b64.read_bytes()], text=True),
        ),
        label="certificate",
    )
    key = ["--controller-key", str(corpus.controller_der)]
    options = data.draw(st.sampled_from(([], ["--json"], key, [*key, "--json"])), label="options")
    with workdir() as tmp:
        path = put(tmp, "pairing.cert", cert)
        run_read_only(cli, ["cert", "inspect", path, *options], tmp)


@fuzz()
@given(data=st.data())
def test_controller_public_key_file(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    """The controller key (DER or PEM SubjectPublicKeyInfo) given to cert, ledger, audit and entity."""
    key = data.draw(
        file_bytes(_seeds(corpus.controller_der)) | file_bytes(_seeds(corpus.controller_pem), text=True), label="key"
    )
    command = data.draw(st.sampled_from(("cert", "verify", "proof", "audit", "entity")), label="command")
    with workdir() as tmp:
        path = put(tmp, "controller.der", key)
        if command == "entity":  # first-run provisioning: the key is read, a store created, then it would serve
            run = cli.run(["entity", "serve", "--port", "0", "--state", tmp / "state", "--device-id", "fuzz",
                           "--controller-key", path], stubs=["http-server"])  # fmt: skip
            assert_clean(run)
            return
        argv: list[object] = {
            "cert": ["cert", "inspect", corpus.certificate, "--controller-key", path],
            "verify": ["ledger", "verify", corpus.ledger, "--public-key", path],
            "proof": ["ledger", "proof", corpus.ledger, "0", "--public-key", path],
            "audit": ["audit", corpus.ledger, "--public-key", path],
        }[command]
        run_read_only(cli, argv, tmp)


# --------------------------------------------------------------------------- ledgers


@fuzz(2.0)
@given(data=st.data())
def test_ledger_file(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    """verify, proof, export and audit on a mutated ledger: the file stays byte-identical, nothing beside it."""
    ledger = data.draw(ledger_edits(_seeds(corpus.ledger)), label="ledger")
    argv_tail = data.draw(
        st.sampled_from((["ledger", "verify"], ["ledger", "export", "--json"], ["audit"], ["audit", "--json"]))
        | st.integers(-1, 12).map(lambda i: ["ledger", "proof", "@", str(i)]),
        label="command",
    )
    with workdir() as tmp:
        path = put(tmp, "ledger.sqlite", ledger, 0o644)
        argv = [str(path) if a == "@" else a for a in argv_tail]
        if "@" not in argv_tail:
            argv.append(str(path))
        run_read_only(cli, argv, tmp)


@fuzz()
@given(data=st.data())
def test_kept_tree_head(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    """``ledger verify --sth FILE`` and ``ledger export --sth-out FILE`` with a kept head that is hostile."""
    genuine = corpus.sth.read_bytes()
    sth = data.draw(st.one_of(json_edits([genuine]), file_bytes([genuine], text=True)), label="sth")
    command = data.draw(st.sampled_from(("verify", "export")), label="command")
    with workdir() as tmp:
        path = put(tmp, "kept.json", sth, 0o644)
        if command == "verify":
            run_read_only(cli, ["ledger", "verify", corpus.ledger, "--sth", path], tmp)
        else:
            assert_clean(cli.run(["ledger", "export", corpus.ledger, "--sth-out", path]))


@fuzz()
@given(data=st.data())
def test_event_log(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    events = data.draw(file_bytes(_seeds(corpus.events), text=True), label="events")
    options = data.draw(st.sampled_from(([], ["--json"])), label="options")
    with workdir() as tmp:
        path = put(tmp, "events.jsonl", events, 0o644)
        run_read_only(cli, ["audit", corpus.ledger, "--events", path, *options], tmp)


@fuzz(0.5)
@given(data=st.data())
def test_demo_state_directory(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    """``demo --state DIR`` reopens a deployment: one of its files (a key store, the ledger, the event
    log, a freshness counter) is hostile."""
    files = sorted(
        p.relative_to(corpus.state) for p in corpus.state.rglob("*")
        if p.is_file() and p.suffix not in (".kek", ".lock") and p.stat().st_size
    )  # fmt: skip
    target = data.draw(st.sampled_from(files), label="file")
    genuine = (corpus.state / target).read_bytes()
    if target.suffix == ".keystore":
        kek = (corpus.state / target).with_suffix(".kek").read_bytes()
        hostile = data.draw(keystore_edits(genuine, kek), label="store")
    elif target.suffix == ".sqlite":
        hostile = data.draw(ledger_edits([genuine]), label="ledger")
    else:
        hostile = data.draw(file_bytes([genuine], text=target.suffix == ".jsonl"), label="contents")
    with workdir() as tmp:
        state = tmp / "state"
        shutil.copytree(corpus.state, state)
        put(state, str(target), hostile)
        assert_clean(cli.run(["demo", "--state", state, "--in-process"]))


# --------------------------------------------------------------------------- sweeps, CPU profiles


@fuzz(1.5)
@given(data=st.data())
def test_sweep_files(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    """One to three sweep files (any mix of mutated and genuine ones) in one ``modbatt sweep``."""
    seeds = _seeds(*corpus.sweeps)
    files = data.draw(
        st.lists(file_bytes(seeds, text=True) | st.sampled_from(seeds), min_size=1, max_size=3), label="files"
    )
    with workdir() as tmp:
        paths = [put(tmp, f"sweep{i}.yaml", f, 0o644) for i, f in enumerate(files)]
        out = tmp / "out"
        assert_clean(cli.run(["sweep", *paths, "--output", out, "--workers", "1", "--preview", "2"]))


@fuzz()
@given(data=st.data())
def test_cpu_profile_file(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    assert corpus.cpu_profile is not None
    profile = data.draw(file_bytes(_seeds(corpus.cpu_profile), text=True), label="profile")
    with workdir() as tmp:
        cpu = put(tmp, "cpu.yaml", profile, 0o644)
        sweep = put(
            tmp,
            "design.yaml",
            corpus.sweeps[-1].read_bytes().replace(str(corpus.cpu_profile).encode(), str(cpu).encode()),
        )
        assert_clean(cli.run(["sweep", sweep, "--output", tmp / "out.csv", "--workers", "1"]))


# --------------------------------------------------------------------------- vectors, notebooks, parameters


@fuzz()
@given(data=st.data())
def test_vectors_directory(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    assert corpus.vectors is not None
    names = sorted(p.name for p in corpus.vectors.glob("*.json") if "schema" not in p.name)
    name = data.draw(st.sampled_from(names), label="file")
    genuine = (corpus.vectors / name).read_bytes()
    mutated = data.draw(st.one_of(json_edits([genuine]), file_bytes([genuine], text=True)), label="vectors")
    with workdir() as tmp:
        folder = tmp / "vectors"
        shutil.copytree(corpus.vectors, folder)
        put(folder, name, mutated, 0o644)
        run_read_only(cli, ["vectors", "check", folder], tmp)


@fuzz()
@given(data=st.data())
def test_notebook_parameters_cells(cli: CliRunner, corpus: Corpus, data: st.DataObject) -> None:
    """``run --list-params`` and ``run -p`` read every notebook's parameters cell."""
    assert corpus.notebooks is not None
    names = sorted(p.name for p in corpus.notebooks.glob("*.ipynb"))
    name = data.draw(st.sampled_from(names), label="notebook")
    genuine = (corpus.notebooks / name).read_bytes()
    notebook = data.draw(st.one_of(json_edits([genuine]), file_bytes([genuine], text=True)), label="ipynb")
    listing = data.draw(st.booleans(), label="list")
    with workdir() as tmp:
        folder = tmp / "notebooks"
        shutil.copytree(corpus.notebooks, folder)
        put(folder, name, notebook, 0o644)
        if listing:
            run_read_only(cli, ["run", "--notebooks", folder, "--list-params"], tmp)
        else:
            assert_clean(cli.run(["run", "--notebooks", folder, "-p", "seed=3", "--output", tmp / "out"],
                                 stubs=["papermill"]))  # fmt: skip


_keys = st.sampled_from(("seed", "module_count", "bus_interface", "bus_channel", "reproducible", "01-binding.seed",
                         "07.seed", "nope", "0.seed", "a.b.c", "", "=", "\x1b[2J"))  # fmt: skip
_values = st.sampled_from(
    INTERESTING_NUMBERS + HOSTILE_TEXT[:16] + ("null", "true", "[1, 2]", '{"a": 1}', "[" * 5000)
) | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)


@fuzz()
@given(items=st.lists(st.tuples(_keys, _values), min_size=1, max_size=3))
def test_run_parameter_values(cli: CliRunner, corpus: Corpus, items: list[tuple[str, str]]) -> None:
    """``run -p KEY=VALUE`` is checked against the notebooks' declared types before anything runs."""
    argv: list[object] = ["run", "--notebooks", corpus.notebooks]
    for key, value in items:
        argv += ["-p", f"{key}={value}"]
    with workdir() as tmp:
        assert_clean(cli.run([*argv, "--output", tmp / "out"], stubs=["papermill"]))


# --------------------------------------------------------------------------- the harness itself


def test_seeds_are_genuine(cli: CliRunner, corpus: Corpus) -> None:
    """Every seed passes its command: mutations start from files the package accepts."""
    runs = [
        cli.run(["decode", corpus.captures[s], "--keystore", corpus.keystore]) for s in corpus.captures
    ] + [
        cli.run(["cert", "inspect", corpus.certificate, "--controller-key", corpus.controller_der]),
        cli.run(["ledger", "verify", corpus.ledger, "--public-key", corpus.controller_pem, "--sth", corpus.sth]),
        cli.run(["audit", corpus.ledger, "--events", corpus.events]),
        cli.run(["vectors", "check", corpus.vectors]),
        cli.run(["run", "--notebooks", corpus.notebooks, "--list-params"]),
        cli.run(["decode", corpus.captures[".log"], "--keystore", corpus.passphrase_store],
                env={"MODBATT_PASSPHRASE": PASSPHRASE}),
        *(cli.run(["sweep", s, "--output", corpus.root / f"{s.stem}.csv", "--workers", "1"]) for s in corpus.sweeps),
    ]  # fmt: skip
    for run in runs:
        assert run.exit == 0, run.describe()
    decoded = [r for r in runs if r.argv[0] == "decode"]
    assert all("readable" in r.stderr and " 0 readable" not in r.stderr for r in decoded), decoded[0].describe()


@pytest.mark.parametrize(
    ("stub", "finding"),
    [
        ("selftest-traceback", "ValueError escaped main()"),
        ("selftest-allocate", "MemoryError escaped main()"),
        ("selftest-hang", "still running"),
        ("selftest-escape", "control character '\\x1b' on stderr"),
        ("selftest-two-lines", "2 lines on stderr"),
    ],
)
def test_the_harness_catches_what_it_must(cli: CliRunner, stub: str, finding: str) -> None:
    """The verdicts are real: a traceback, a memory blow-up, a hang, an escape, two lines each fail a run."""
    run = cli.run(["selftest"], stubs=[stub], timeout=3.0)
    found = problems(run)
    assert any(finding in f for f in found), (found, run.describe())
    clean = cli.run(["ledger", "verify", "missing.sqlite"])
    assert problems(clean) == [] and clean.exit == 2, clean.describe()


def test_forked_children_behave_like_the_installed_command(cli: CliRunner, corpus: Corpus, tmp_path: Path) -> None:
    """The fork server is a shortcut: on genuine and broken files, ``python -m modbatt.cli`` in a
    fresh interpreter gives the same exit code and stderr (an exception at interpreter exit included)."""
    import subprocess
    import sys

    broken_mf4 = tmp_path / "broken.mf4"
    data = bytearray(corpus.captures.get(".mf4", corpus.captures[".blf"]).read_bytes())
    data[0x40:0x42] = b"\0\0"
    broken_mf4.write_bytes(bytes(data))
    broken_yaml = put(tmp_path, "broken.yaml", b"\x80experiment: x\n")
    cases = [
        ["decode", str(corpus.captures[".log"]), "--keystore", str(corpus.keystore)],
        ["monitor", "--log", str(broken_mf4)],
        ["sweep", str(broken_yaml)],
        ["ledger", "verify", str(corpus.ledger)],
        ["cert", "inspect", str(corpus.certificate_b64)],
    ]
    for argv in cases:
        forked = cli.run(argv, cwd=tmp_path)
        real = subprocess.run(
            [sys.executable, "-m", "modbatt.cli", *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert (forked.exit, forked.stderr) == (real.returncode, real.stderr), (argv, forked.describe(), real.stderr)
