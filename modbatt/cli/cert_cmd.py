"""``modbatt cert inspect``: show a pairing certificate and, given the controller key, verify it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..crypto.suite import PublicKey
from ..errors import ConfigError, VerificationError
from ..model.pairing import PairingCertificate
from ..workbench.terminal import escape


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cert", help="pairing certificates")
    actions = p.add_subparsers(dest="cert_command", metavar="ACTION")
    actions.required = True
    inspect = actions.add_parser("inspect", help="print clear metadata and sections; verify with --controller-key")
    inspect.add_argument("file", type=Path, help="certificate file (its CBOR encoding, or base64 of it)")
    inspect.add_argument("--controller-key", type=Path, help="controller public key (DER SubjectPublicKeyInfo)")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=_inspect)


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if data[:1] in (b"{", b"[") or not data:
        raise ConfigError(f"{path} is not a pairing certificate")
    if data[:1] != b"\xa4":  # a CBOR map of 4 entries starts with 0xa4; otherwise try base64
        import base64
        import binascii

        try:
            data = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{path} is neither a CBOR certificate nor base64 of one") from None
    return data


def _inspect(args: argparse.Namespace) -> int:
    cert = PairingCertificate.decode(_read(args.file))
    view = cert.describe()
    verified = False
    problem = None
    if args.controller_key is not None:
        try:
            key = PublicKey.from_spki_der(args.controller_key.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read {args.controller_key}: {exc.strerror}") from None
        try:
            cert.verify(key)
            verified = True
        except VerificationError as exc:
            problem = exc
    if args.json:
        print(json.dumps({"metadata": view["metadata"], "sections": view["sections"], "verified": verified}, indent=2))
    else:
        meta = view["metadata"]
        print(
            f"pairing {meta['pairing_id']} for binding {meta['binding_id']} ({meta['context']}, {view['size']} bytes)"
        )
        print(f"  entity a: {meta['entities']['a']['device_id']}  entity b: {meta['entities']['b']['device_id']}")
        timing = meta["timing"]
        print(f"  valid {timing['valid_from']} .. {timing['expires_at']} (ms), max uses {timing['max_uses']}")
        print(f"  controller mode: {meta['controller_mode']}, handshake timeout {meta['handshake_timeout_s']} s")
        print("  sections: " + ", ".join(f"{s['name']} ({s['size']} B)" for s in view["sections"]))
        if args.controller_key is None:
            print("  signature: not checked (pass --controller-key)")
        else:
            print("  signature: " + ("verified" if verified else f"DOES NOT VERIFY ({problem})"))
    if verified:
        return 0
    # A check that did not pass says why on stderr, in one line, like every failing command.
    why = "not checked: pass --controller-key DER" if problem is None else str(problem)
    print(f"modbatt cert: error: not verified: {escape(why)}", file=sys.stderr)
    return 1
