"""``modbatt ledger``: audit a ledger file from the command line.

Forms other tools rely on (keep them stable)::

    modbatt ledger verify PATH [--public-key DERFILE] [--sth FILE]   exit 0 intact, 1 not, 2 usage
    modbatt ledger proof PATH INDEX [--tree-size N] [--json] [--public-key DERFILE]
    modbatt ledger export PATH [--json] [--sth-out FILE]

``proof`` checks the proof it prints (against the signed tree head of that size when
there is one), so a printed proof is always a valid one. ``export --json`` prints
``{"entries": [base64...], "sth": {...}}`` from which any RFC 9162 implementation
recomputes the signed root. ``export --sth-out FILE`` keeps the latest signed head for an
auditor, and ``verify --sth FILE`` later checks that the log still extends it: a rollback
(fewer entries) or a fork (rewritten history) exits 1 (docs/ledger.md, "Anti-rollback").

Every command opens the ledger read-only and checks its schema before reading a row
(docs/ledger.md, "Opening untrusted files"): an auditor's evidence file is never modified.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization

from ..crypto.suite import PublicKey
from ..encoding import strict_json_loads
from ..errors import ConfigError, EncodingError, LedgerError, VerificationError
from ..files import write_atomic
from ..ledger import Ledger, SignedTreeHead, merkle, tree_head
from . import EXIT_FAILED, EXIT_OK
from .files import expect_file_kind

__all__ = ["load_tree_head", "open_read_only", "register"]

#: A tree-head JSON file is a few hundred bytes; anything much larger is not one.
_MAX_STH_FILE_BYTES: Final = 16 * 1024


def register(subparsers: Any) -> None:
    """Add ``ledger`` and its sub-commands to the ``modbatt`` parser."""
    parser = subparsers.add_parser(
        "ledger",
        help="verify, prove from and export the append-only Merkle ledger",
        description="Audit a modbatt ledger file (RFC 9162 Merkle log signed by the auth controller).",
    )
    sub = parser.add_subparsers(dest="ledger_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("verify", help="recompute the whole log and check every signed tree head")
    p.add_argument("path", metavar="PATH", help="ledger file")
    p.add_argument("--public-key", metavar="DERFILE", help="pin the controller key (DER or PEM SPKI)")
    p.add_argument(
        "--sth",
        metavar="FILE",
        help="a signed tree head kept earlier (ledger export --sth-out): the log must extend it",
    )
    p.set_defaults(handler=_verify)

    p = sub.add_parser("proof", help="print a checked inclusion proof for one entry")
    p.add_argument("path", metavar="PATH", help="ledger file")
    p.add_argument("index", metavar="INDEX", type=int, help="entry index (0-based)")
    p.add_argument(
        "--tree-size",
        metavar="N",
        type=int,
        help="prove against the tree of N entries (default: the latest signed head, else the whole log)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--public-key", metavar="DERFILE", help="pin the controller key (DER or PEM SPKI)")
    p.set_defaults(handler=_proof)

    p = sub.add_parser("export", help="print entries and the latest signed tree head for an auditor")
    p.add_argument("path", metavar="PATH", help="ledger file")
    p.add_argument("--json", action="store_true", help="print entries and the signed head as JSON")
    p.add_argument(
        "--sth-out",
        metavar="FILE",
        help="write the latest signed tree head to FILE for a later `ledger verify --sth` "
        "(if FILE holds an earlier head, the log must extend it)",
    )
    p.set_defaults(handler=_export)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _load_public_key(path: str | None) -> PublicKey | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read public key {path}: {exc.strerror or exc}") from None
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            data = serialization.load_pem_public_key(data).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        except ValueError:
            raise ConfigError(f"{path} is not a PEM public key") from None
    try:
        return PublicKey.from_spki_der(data)
    except VerificationError:
        raise ConfigError(f"{path} is not a P-256 SubjectPublicKeyInfo (DER or PEM)") from None


def open_read_only(path: str | os.PathLike[str], public_key: PublicKey | None = None) -> Ledger:
    """Open a ledger file for auditing: read-only, schema checked (a missing file is a usage error)."""
    if not Path(path).exists():
        raise ConfigError(f"no such ledger file: {path}")
    return Ledger(path, public_key=public_key, read_only=True)


_open = open_read_only


def load_tree_head(path: str | os.PathLike[str]) -> SignedTreeHead:
    """A signed tree head from a JSON file (``SignedTreeHead.to_dict``); ConfigError for any other file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_STH_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read tree head {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_STH_FILE_BYTES:
        raise ConfigError(f"{path} is not a signed tree head (larger than {_MAX_STH_FILE_BYTES} bytes)")
    try:
        return SignedTreeHead.from_dict(strict_json_loads(data))
    except (EncodingError, VerificationError):
        raise ConfigError(f"{path} is not a signed tree head (`modbatt ledger export --sth-out` writes one)") from None


def _check_kept_head(ledger: Ledger, kept: SignedTreeHead, name: str, key: PublicKey | None) -> None:
    """The kept head must be this controller's, and the log must extend it (LedgerError otherwise)."""
    if key is None:
        raise LedgerError(f"the log was never signed, so it cannot extend the kept tree head {name}")
    try:
        kept.verify(key)
    except VerificationError as exc:
        raise LedgerError(f"the kept tree head {name} is not this ledger's: {exc}") from None
    ledger.check_extends(kept.tree_size, kept.root_hash, head=f"the kept tree head {name}")


def _failed(exc: LedgerError) -> int:
    # A file that is not an intact ledger, or one that was rolled back, is a failed check (1).
    print(f"modbatt ledger: error: {exc}", file=sys.stderr)
    return EXIT_FAILED


def _verify(args: argparse.Namespace) -> int:
    pinned = _load_public_key(args.public_key)
    kept = load_tree_head(args.sth) if args.sth is not None else None
    if not Path(args.path).exists():
        raise ConfigError(f"no such ledger file: {args.path}")
    expect_file_kind(args.path, "SQLite database")  # another kind of file is a user mistake (2), not a failed check
    try:
        with _open(args.path, pinned) as ledger:
            report = ledger.verify()
            if kept is not None:
                # After verify(): the node cache that serves the proof matches the entries.
                _check_kept_head(ledger, kept, args.sth, pinned or report.public_key)
    except LedgerError as exc:
        return _failed(exc)
    key = report.public_key.key_id().hex() if report.public_key else "none (never signed)"
    extends = f", extends the kept head of {kept.tree_size} entries" if kept is not None else ""
    print(
        f"OK: {report.tree_size} entries, root {report.root_hash.hex()}, "
        f"{report.tree_heads} signed tree heads, controller key {key}{extends}"
    )
    return EXIT_OK


def _proof(args: argparse.Namespace) -> int:
    pinned = _load_public_key(args.public_key)
    with _open(args.path, pinned) as ledger:
        if args.tree_size is None:
            sth = ledger.latest_tree_head()
            size = sth.tree_size if sth is not None else ledger.size
        else:
            size = args.tree_size
            sth = ledger.tree_head_at(size) if 0 <= size <= ledger.size else None
        if not 0 <= args.index < size:
            where = "the latest signed tree head" if args.tree_size is None and sth else "the tree"
            raise LedgerError(f"entry {args.index} is not covered by {where} (size {size})")
        entry = ledger.entry(args.index)
        proof = ledger.inclusion_proof(args.index, size)
        root = ledger.root_hash(size)
        key = pinned or ledger.public_key
    # Never print a proof that does not check out.
    if sth is not None and key is not None:
        tree_head.verify_inclusion(entry, args.index, proof, sth, key)
    else:
        merkle.verify_inclusion(merkle.leaf_hash(entry), args.index, size, proof, root)
    if args.json:
        out = {
            "index": args.index,
            "tree_size": size,
            "entry": _b64(entry),
            "leaf_hash": _b64(merkle.leaf_hash(entry)),
            "audit_path": [_b64(h) for h in proof],
            "root_hash": _b64(root),
            "sth": sth.to_dict() if sth is not None else None,
        }
        print(json.dumps(out, indent=2))
    else:
        print(f"entry {args.index} of {size}: leaf {merkle.leaf_hash(entry).hex()}")
        print(f"root {root.hex()} ({'signed at ' + str(sth.timestamp) + ' ms' if sth else 'not signed'})")
        print(f"audit path ({len(proof)} hashes, {32 * len(proof)} bytes):")
        for h in proof:
            print(f"  {h.hex()}")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    if not args.json and args.sth_out is None:
        raise ConfigError("choose what to export: --json (entries and head) and/or --sth-out FILE (the head)")
    out = Path(args.sth_out) if args.sth_out is not None else None
    kept = load_tree_head(out) if out is not None and out.exists() else None
    with _open(args.path) as ledger:
        data = ledger.export() if args.json else None
        if out is not None:
            try:
                sth = _head_to_keep(ledger, kept, str(out))
            except LedgerError as exc:
                return _failed(exc)
            _write_atomically(out, json.dumps(sth.to_dict(), indent=2).encode() + b"\n")
            note = f"kept the signed tree head of {sth.tree_size} entries in {out}"
            print(note, file=sys.stderr if data is not None else sys.stdout)
    if data is not None:
        json.dump(data, sys.stdout)
        sys.stdout.write("\n")
    return EXIT_OK


def _head_to_keep(ledger: Ledger, kept: SignedTreeHead | None, name: str) -> SignedTreeHead:
    """The latest signed head, from a log that verifies and extends the head already kept."""
    report = ledger.verify()
    if kept is not None:  # never overwrite evidence of a rollback with the rolled-back head
        _check_kept_head(ledger, kept, name, report.public_key)
    sth = ledger.latest_tree_head()
    if sth is None:
        raise ConfigError("nothing to export: no tree head has been signed yet")
    return sth


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half a file."""
    try:
        write_atomic(path, data, mode=0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
