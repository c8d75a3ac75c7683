"""Key extraction: search everything an insider or a thief can read for key material.

Targets: key stores and the ledger at rest (an on-disk deployment, bound and paired), log output
at DEBUG level, exception texts and reprs, and the notebooks' stored outputs (``notebooks/*.ipynb``,
``build/``, ``data/results/``). Looked for: every private scalar, pairing and exchange secret (in
raw, hex and base64 form), and in the ledger also every semi-public key (it must hold commitments
only). A notebook in reproducible mode uses seed 7, so its keys are re-derived here and searched.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..crypto.rng import SeededRandom
from ..errors import ModbattError
from ..model.access import AccessData, LctRef, TransportProtocol
from ..nodes.entity import EntityNode
from ..nodes.inmemory import InMemoryDeployment, ManualClock, module_access
from ..nodes.pairing_flow import pair_entities
from ..transport.http import InProcessEntityClient
from ..workbench.deployment import Deployment
from .outcome import Outcome
from .registry import scenario

FAMILY = "extraction"
#: Where notebook outputs live, relative to the repository root.
NOTEBOOK_GLOBS = ("notebooks/*.ipynb", "build/**/*", "data/results/*.json")
#: The seed the notebooks use in reproducible mode (their ``parameters`` cell).
NOTEBOOK_SEED = 7


def forms(secret: bytes) -> list[bytes]:
    """The ways a secret can appear in a file or text: raw, hex (both cases), base64 (both alphabets)."""
    b64 = base64.b64encode(secret)
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), b64, base64.urlsafe_b64encode(secret),
            b64.rstrip(b"=")]  # fmt: skip


def find(blob: bytes, secrets: dict[str, bytes]) -> list[str]:
    """Names of the secrets found in ``blob`` in any of their :func:`forms`."""
    return [name for name, s in secrets.items() if any(f in blob for f in forms(s))]


def entity_secrets(node: EntityNode, prefix: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``(private, semi_public)``: an entity's private scalars and secrets, and its binding public keys."""
    private: dict[str, bytes] = {f"{prefix}.identity": node.machine.identity.scalar_bytes()}
    public: dict[str, bytes] = {}
    for binding_id, state in node.machine.bindings.items():
        private[f"{prefix}.binding/{binding_id[:8]}"] = state.private_key.scalar_bytes()
        public[f"{prefix}.semi_public/{binding_id[:8]}"] = state.private_key.public_key.to_bytes()
    for pairing_id, _ in node.pairings_held():
        s = node.pairing_secrets(pairing_id)
        if s is not None:
            private[f"{prefix}.pairing_secret/{pairing_id[:8]}"] = s.pairing_secret
            private[f"{prefix}.exchange_secret/{pairing_id[:8]}"] = s.exchange_secret
    return private, public


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _repo_root() -> Path:
    """The checkout this package runs from (editable install), else the working directory."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "notebooks").is_dir() else Path.cwd()


@contextlib.contextmanager
def _reproducible() -> Iterator[None]:
    old = os.environ.get("MODBATT_REPRODUCIBLE")
    os.environ["MODBATT_REPRODUCIBLE"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["MODBATT_REPRODUCIBLE"]
        else:
            os.environ["MODBATT_REPRODUCIBLE"] = old


def _walk(root: Path, patterns: Iterable[str]) -> Iterator[Path]:
    for pattern in patterns:
        yield from (p for p in sorted(root.glob(pattern)) if p.is_file())


@scenario("key_extraction_at_rest", family=FAMILY, expected=("blocked", "encrypted_at_rest"))
def key_extraction_at_rest(seed: int | None = None) -> Outcome:
    """Steal the state directory (key stores, ledger): search it for private keys, secrets, semi-public keys."""
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        with tempfile.TemporaryDirectory(prefix="modbatt-extraction-") as tmp:
            rng = SeededRandom(seed) if seed is not None else None
            clock = ManualClock()
            dep = Deployment(Path(tmp), clock=clock, **({"rng": rng} if rng else {}))
            lct = LctRef("lct:web4:pack-01", "modbatt-ledger")
            pack = dep.entity(AccessData("can://can0/0xff", TransportProtocol.CAN, "pack-01", lct))
            module = dep.entity(module_access(1))
            client = InProcessEntityClient({pack.access_data.endpoint: pack, module.access_data.endpoint: module})
            controller = dep.controller(client)
            record = controller.bind(pack.access_data, module.access_data, dep.authorize(pack, module)).record
            pair_entities(controller, pack, module, record.binding_id)
            # Failures with these keys in play: their texts are searched too.
            texts = [repr(x) for x in (dep.controller_key, pack.machine.identity, pack, module, dep.ledger)]
            texts += [repr(module.binding(record.binding_id))]
            for bad in (lambda: module.accept_certificate(b"\xa0"), lambda: controller.revoke("nope")):
                try:
                    bad()
                except ModbattError as exc:
                    texts.append(f"{exc!s} {exc!r}")
            p_priv, p_pub = entity_secrets(pack, "pack")
            m_priv, m_pub = entity_secrets(module, "module")
            private = {**p_priv, **m_priv, "controller": dep.controller_key.scalar_bytes(),
                       "authority": dep.authority_key.scalar_bytes()}  # fmt: skip
            semi_public = {**p_pub, **m_pub}
            dep.close()
            files = sorted(p for p in Path(tmp).rglob("*") if p.is_file() and p.suffix != ".kek")
            found: dict[str, list[str]] = {}
            for path in files:
                blob = path.read_bytes()
                hits = find(blob, private)
                if "ledger" in path.name:
                    hits += find(blob, semi_public)
                if hits:
                    found[path.name] = hits
            logs = "\n".join(capture.lines).encode()
            log_hits = find(logs, {**private, **semi_public})
            text_hits = find("\n".join(texts).encode(), {**private, **semi_public})
            # Control: the search does find a key when it is there (the scan is not blind).
            assert find(b"x" + base64.b64encode(private["controller"]), private) == ["controller"]
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    counters = {
        "files_searched": len(files),
        "secrets_searched": len(private),
        "semi_public_keys_searched": len(semi_public),
        "hits_in_files": sum(len(v) for v in found.values()),
        "log_lines": len(capture.lines),
        "hits_in_logs": len(log_hits),
        "hits_in_exceptions_and_reprs": len(text_hits),
    }
    if found or log_hits or text_hits:
        return Outcome("succeeded", "secret_found", counters, f"found: {found} {log_hits} {text_hits}")
    return Outcome("blocked", "encrypted_at_rest", counters, "stores are AES-256-GCM sealed; ledger holds commitments")


@scenario("key_extraction_notebooks", family=FAMILY, expected=("blocked", "no_secret_in_outputs"))
def key_extraction_notebooks(seed: int | None = None, root: Path | None = None) -> Outcome:
    """Search stored notebook outputs and results for the keys of the notebooks' own seeded run."""
    del seed  # the notebooks fix their own seed; it is re-derived here
    root = root or _repo_root()
    with _reproducible():  # the notebooks opt in explicitly; so does this re-derivation of their test keys
        dep = InMemoryDeployment(seed=NOTEBOOK_SEED, modules=2)
    pack, module = dep.pack, dep.modules[1]
    record = dep.bind(pack, module).record
    pair_entities(dep.controller, pack, module, record.binding_id)
    p_priv, p_pub = entity_secrets(pack, "pack")
    m_priv, m_pub = entity_secrets(module, "module")
    private = {**p_priv, **m_priv, "controller": dep.controller_key.scalar_bytes()}
    dep.ledger.close()
    files = list(_walk(root, NOTEBOOK_GLOBS))
    private_hits: dict[str, list[str]] = {}
    public_hits: dict[str, list[str]] = {}
    for path in files:
        blob = path.read_bytes()
        if hits := find(blob, private):
            private_hits[str(path.relative_to(root))] = hits
        if hits := find(blob, {**p_pub, **m_pub}):
            public_hits[str(path.relative_to(root))] = hits
    counters = {
        "files_searched": len(files),
        "secrets_searched": len(private),
        "hits_private": sum(len(v) for v in private_hits.values()),
        # Reported, not failed: reproducible-mode test keys in the binding record the notebook shows.
        "hits_semi_public": sum(len(v) for v in public_hits.values()),
    }
    if private_hits:
        return Outcome("succeeded", "secret_found", counters, f"found: {private_hits}")
    return Outcome("blocked", "no_secret_in_outputs", counters, f"semi-public keys shown in: {sorted(public_hits)}")
