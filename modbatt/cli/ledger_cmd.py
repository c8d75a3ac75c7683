"""``modbatt ledger``: audit a ledger file from the command line.

Forms other tools rely on (keep them stable)::

    modbatt ledger verify PATH [--public-key DERFILE]        exit 0 intact, 1 not, 2 usage
    modbatt ledger proof PATH INDEX [--tree-size N] [--json] [--public-key DERFILE]
    modbatt ledger export PATH --json

``proof`` checks the proof it prints (against the signed tree head of that size when
there is one), so a printed proof is always a valid one. ``export --json`` prints
``{"entries": [base64...], "sth": {...}}`` from which any RFC 9162 implementation
recomputes the signed root.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from ..crypto.suite import PublicKey
from ..errors import ConfigError, LedgerError, VerificationError
from ..ledger import Ledger, merkle, tree_head
from . import EXIT_FAILED, EXIT_OK
from .files import expect_file_kind

__all__ = ["register"]


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
    p.add_argument("--json", action="store_true", required=True, help="JSON output (the only format)")
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


def _open(path: str, public_key: PublicKey | None = None) -> Ledger:
    if not Path(path).exists():
        raise ConfigError(f"no such ledger file: {path}")
    return Ledger(path, public_key=public_key, create=False)


def _verify(args: argparse.Namespace) -> int:
    pinned = _load_public_key(args.public_key)
    if not Path(args.path).exists():
        raise ConfigError(f"no such ledger file: {args.path}")
    expect_file_kind(args.path, "SQLite database")  # another kind of file is a user mistake (2), not a failed check
    try:
        with _open(args.path, pinned) as ledger:
            report = ledger.verify()
    except LedgerError as exc:
        # A file that is not an intact ledger is a failed check (1), not a usage error (2).
        print(f"modbatt ledger: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    key = report.public_key.key_id().hex() if report.public_key else "none (never signed)"
    print(
        f"OK: {report.tree_size} entries, root {report.root_hash.hex()}, "
        f"{report.tree_heads} signed tree heads, controller key {key}"
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
    with _open(args.path) as ledger:
        data = ledger.export()
    json.dump(data, sys.stdout)
    sys.stdout.write("\n")
    return EXIT_OK
