"""Normative tables of the specification, written as Markdown from the package itself
(docs/spec/index.md): message fields, error reasons, labels and derivations, frame formats, ID
layouts and protocol states. ``modbatt spec build`` writes them before Sphinx runs, so the built
document always describes the code it was built from.

Field tables come from the message schema the decoders use (modbatt.model.schema: each kind
describes itself); a reader that is not a schema kind is an error, so a new kind of field cannot
reach the specification undocumented.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import cbor2

from .._version import __version__
from ..can.ids import LAYOUTS, IdLayout
from ..can.secured import CLASSIC, FD, frame_format
from ..crypto import labels
from ..errors import Reason
from ..model.profile import ProtocolProfile
from ..model.schema import Kind
from ..model.tier import Tier
from ..nodes.errors_http import http_status
from ..protocol import messages as envelopes
from ..protocol.binding import BindingPhase
from ..protocol.pairing import PairingState
from ..protocol.validation._common import Message
from .vectors import keyschedule
from .vectors.trace import Record
from .vectors.validation import message_classes

__all__ = ["REASONS", "STATE_MACHINES", "describe_reader", "pages"]

#: What each reason means on the wire (docs/spec/errors.md). Every Reason must be here.
REASONS: dict[Reason, str] = {
    Reason.MALFORMED: "bytes that do not parse as the structure, or a value outside its defined range",
    Reason.OVERSIZED: "longer than the limit of the structure or the frame",
    Reason.UNKNOWN_FIELD: "a map carries a key the structure does not define",
    Reason.INVALID_POINT: "a public key that is not a valid P-256 point",
    Reason.BAD_SIGNATURE: "an ECDSA signature that does not verify under the expected key and label",
    Reason.BAD_MAC: "an AEAD tag or MAC that does not verify",
    Reason.BAD_PROOF: "a Merkle inclusion or consistency proof that does not verify",
    Reason.STALE: "a freshness value or timestamp too old, or a receiver not yet resynchronised",
    Reason.REPLAY: "a freshness value or sequence number already accepted",
    Reason.EXPIRED: "past the end of its validity",
    Reason.NOT_YET_VALID: "before the start of its validity",
    Reason.WRONG_PEER: "names or comes from another party than the expected one",
    Reason.WRONG_SESSION: "belongs to another session, binding or pairing",
    Reason.WRONG_LEVEL: "a validation level or CAN tier other than the one expected",
    Reason.UNAUTHORIZED: "the sender is not entitled to this request",
    Reason.DUPLICATE: "already done (an idempotency key seen before)",
    Reason.REVOKED: "the binding or pairing has been revoked",
    Reason.EXHAUSTED: "uses or counter values used up",
    Reason.TIER_TOO_LOW: "a CAN identifier signals a lower tier than the channel's (downgrade)",
    Reason.RATE_LIMITED: "over the allowed rate",
    Reason.TIMEOUT: "the exchange did not finish in time",
    Reason.UNKNOWN_BINDING: "refers to a binding or key the receiver does not hold",
    Reason.HASH_MISMATCH: "a hash or commitment does not match the data it covers",
    Reason.KEY_MISMATCH: "a key differs from the one committed or expected",
    Reason.WRONG_STATE: "not accepted in the pack's current security state (docs/lifecycle.md)",
    Reason.UNROUTABLE: "a gateway has no route for the frame (docs/gateway.md)",
}
#: The protocol state machines whose states the specification must name (docs/spec/state-machines.md).
STATE_MACHINES: dict[str, type[enum.Enum]] = {
    "binding transaction (controller)": BindingPhase,
    "pairing participant (entity)": PairingState,
}


# --------------------------------------------------------------------------- field readers


def describe_reader(reader: Any) -> tuple[str, str, str]:
    """(type, size, encoding) of one field kind; ``ValueError`` for a reader that is not a schema kind."""
    if isinstance(reader, Kind):
        return reader.describe()
    name = getattr(reader, "__qualname__", repr(reader))
    raise ValueError(f"the specification cannot describe field reader {name}; declare it as a schema kind")


def _table(head: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = list(head)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- pages


def _version() -> str:
    return (
        f"Specification version **{labels.SPEC_VERSION}** (protocol version {labels.PROTOCOL_VERSION}, "
        f"cipher suite v{labels.SUITE_VERSION}), built from modbatt {__version__}.\n"
    )


def _messages() -> str:
    out = [
        "Every validation message is the deterministic CBOR map `{v, type, level, fields…, auth}`. `v` = "
        "protocol version, `type` and `level` as below; the authenticator covers the map without it.\n"
    ]
    by_level: dict[int, list[type[Message]]] = {}
    for (level, _, _), cls in message_classes().items():
        by_level.setdefault(level, []).append(cls)
    for level, classes in by_level.items():
        out.append(f"\n### Level {level}\n")
        for cls in classes:
            rows = [
                ("v", "uint", "1", f"CBOR unsigned integer, = {labels.PROTOCOL_VERSION}"),
                ("type", "text", str(len(cls.TYPE)), f"`{cls.TYPE}`"),
                ("level", "uint", "1", f"{level}"),
            ]
            rows += [(name, *describe_reader(reader)) for name, reader in cls.SPEC.items()]
            if cls.AUTH is not None:
                sizes = " or ".join(str(s) for s in cls.AUTH_SIZES)
                rows.append((cls.AUTH, "bytes", sizes, "CBOR byte string: signature r‖s or MAC (authenticator)"))
            profiles = " and ".join(f"`{p}`" for p in cls.PROFILES)
            used = "" if len(cls.PROFILES) > 1 else f" ({profiles} profile)"
            out.append(f"\n#### `{cls.TYPE}`{used}\n\n" + _table(("field", "type", "size", "encoding"), rows))
    return "".join(out)


def _envelope_table(cls: Any, op: str) -> str:
    rows = []
    for f in cls.__schema__.fields:
        if f.kind.tag == "variant":
            rows += [(f"{f.name}.{g.name}", *describe_reader(g.kind)) for g in f.kind.args["choices"][op].fields]
        else:
            rows.append((f.name, *describe_reader(f.kind)))
    return _table(("field", "type", "size", "encoding"), rows)


def _binding_messages() -> str:
    out = [
        "Requests from the controller and responses from an entity: a CBOR map (CAN, MQTT) or the JSON view "
        "of the same fields (HTTP, byte strings in base64). The signature covers the canonical CBOR of every "
        "field but `signature`.\n"
    ]
    for op in envelopes.OPERATIONS:
        out.append(f"\n### `{op}` request\n\n")
        out.append(_envelope_table(envelopes.ControllerRequest, op))
        out.append(f"\n### `{op}` response\n\n")
        out.append(_envelope_table(envelopes.EntityResponse, op))
    return "".join(out)


def _cbor_type(value: Any) -> str:
    for t, name in ((bool, "bool"), (int, "uint"), (bytes, "bytes"), (str, "text"), (list, "array"), (dict, "map")):
        if isinstance(value, t):
            return name
    return "null" if value is None else type(value).__name__


def _walk(value: Any, path: str = "") -> Iterable[tuple[str, str, str]]:
    if isinstance(value, dict):
        if path:
            yield path, "map", f"{len(value)} keys"
        for k in sorted(value, key=lambda k: (len(k), k)):
            yield from _walk(value[k], f"{path}.{k}" if path else k)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        yield path, "array", f"{len(value)} maps"
        yield from _walk(value[0], f"{path}[]")
    elif isinstance(value, list) and not path:  # a top-level array: its items by position
        for i, item in enumerate(value):
            yield from _walk(item, f"[{i}]")
    else:
        size = (
            f"{len(value)} B" if isinstance(value, bytes) else f"{len(value)}" if isinstance(value, (str, list)) else ""
        )
        yield path, _cbor_type(value), size


def _signed(rec: Record, label: bytes) -> Any:
    return cbor2.loads(next(s.message for s in rec.signatures if s.label == label))


def _observed(rec: Record) -> str:
    cert = rec.facts["certificate"]
    parts = [
        ("Pairing certificate", cbor2.loads(cert.encode())),
        ("Pairing certificate metadata (the `metadata` byte string)", cbor2.loads(cert.metadata_bytes)),
        ("Pairing offer (signed body; on the wire it also carries `signature`, 64 B)",
         _signed(rec, labels.SIG_PAIRING_OFFER)),
        ("Pairing completion (what each entity signs for the controller)", _signed(rec, labels.SIG_PAIRING_COMPLETION)),
        ("Ledger entry: binding record", cbor2.loads(rec.facts["ledger_entries"][0])),
        ("Ledger statement (signed body; the entry adds `authority`, 64 B)", _signed(rec, labels.SIG_LEDGER_STATEMENT)),
        ("Signed tree head (signed bytes: an array, not a map)", _signed(rec, labels.SIG_TREE_HEAD)),
    ]  # fmt: skip
    out = [
        "These structures are deterministic CBOR maps (RFC 8949 §4.2.1: map keys sorted by length, then "
        "bytewise). The tables list every field of one real instance from the vectors' seeded run, with its "
        "CBOR type and size there; `v` is the protocol version.\n"
    ]
    for title, value in parts:
        out.append(f"\n### {title}\n\n" + _table(("field", "type", "size in the example"), _walk(value)))
    return "".join(out)


def _reasons() -> str:
    missing = set(Reason) - set(REASONS)
    if missing:
        raise ValueError(f"reasons without a description in spec_tables.REASONS: {sorted(missing)}")
    rows = [(f"`{r.value}`", REASONS[r], http_status(r)) for r in Reason]
    return _table(("reason", "meaning", "HTTP status"), rows)


def _labels(rec: Record) -> str:
    uses = keyschedule._uses(rec)
    # A key-hiding signature label puts the signer's compressed key into the signed bytes (docs/crypto.md §3.1).
    rows = [
        (n, f"`{v.decode()}`", len(v), f"{uses[n]}, key-hiding" if v in labels.KEY_HIDING else uses[n])
        for n, v in keyschedule.all_labels().items()
    ]
    return _table(("constant", "label (ASCII)", "bytes", "use"), rows)


def _derivations(rec: Record) -> str:
    seen: dict[str, dict[str, set[str]]] = {}
    for call in rec.hkdf:
        name = keyschedule.label_of(call.info)
        d = seen.setdefault(name, {"by": set(), "ikm": set(), "salt": set(), "info": set(), "L": set()})
        d["by"].add(call.caller.removeprefix("modbatt."))
        d["ikm"].add(str(len(call.ikm)))
        d["salt"].add("absent" if call.salt is None else f"{len(call.salt)} B")
        d["info"].add(str(len(call.info) - len(keyschedule.all_labels()[name])))
        d["L"].add(str(call.length))
    rows = [
        (name, "<br>".join(sorted(d["by"])), "/".join(sorted(d["ikm"], key=int)), "/".join(sorted(d["salt"])),
         "/".join(sorted(d["info"], key=int)), "/".join(sorted(d["L"])))
        for name, d in seen.items()
    ]  # fmt: skip
    return _table(("label", "derived by", "IKM bytes", "salt", "info after label, bytes", "L"), rows)


def _frames() -> str:
    rows = []
    for profile in (CLASSIC, FD):
        for tier in Tier:
            for protocol in ProtocolProfile if tier is Tier.BINDING else (None,):
                f = frame_format(tier, profile, protocol or ProtocolProfile.SEED)
                odds = "—" if f.forgery_odds_log2 is None else f"2^{f.forgery_odds_log2}"
                rows.append((tier.label, int(tier), protocol.value if protocol else "any", profile.name,
                             profile.data_field, f.fv_bits, f.header_bytes, f.trailer_bytes, f.tag_bytes, f.room,
                             odds))  # fmt: skip
    head = ("tier", "level", "protocol profile", "bus profile", "data field", "FV bits on wire", "header B",
            "trailer B", "tag/signature B", "payload room per frame", "forgery per try")  # fmt: skip
    return _table(head, rows)


def _bits(bits: Iterable[int]) -> str:
    bits = sorted(bits)
    runs: list[list[int]] = []
    for b in bits:
        if runs and runs[-1][1] == b - 1:
            runs[-1][1] = b
        else:
            runs.append([b, b])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in runs) or "—"


def _layout(layout: IdLayout) -> str:
    rows = [(f.name, _bits(f.bits), f.width, " + ".join(f"bits {lsb}–{lsb + w - 1}" for lsb, w in f.segments),
             f.offset) for f in layout.fields]  # fmt: skip
    reserved = [b for b in range(layout.id_bits) if (layout.reserved_mask >> b) & 1]
    rows.append(("reserved (must be 0)", _bits(reserved), len(reserved), "—", "—"))
    return (
        f"\n## `{layout.name}` ({layout.id_bits}-bit)\n\n{layout.description}. Tier signal: "
        f"`{layout.tier_signal.value}`.\n\n"
        + _table(("field", "bits", "width", "segments (least significant first)", "offset"), rows)
    )


def _states() -> str:
    out = []
    for title, machine in STATE_MACHINES.items():
        out.append(f"\n**{title}** (`{machine.__name__}`): " + ", ".join(f"`{s.value}`" for s in machine) + ".\n")
    return "".join(out)


def pages(rec: Record) -> dict[str, str]:
    """File name → Markdown of every generated fragment (included by docs/spec/*.md)."""
    return {
        "version.md": _version(),
        "messages-validation.md": _messages(),
        "messages-binding.md": _binding_messages(),
        "messages-observed.md": _observed(rec),
        "reasons.md": _reasons(),
        "labels.md": _labels(rec),
        "derivations.md": _derivations(rec),
        "frame-formats.md": _frames(),
        "id-layouts.md": "".join(_layout(layout) for layout in LAYOUTS.values()),
        "states.md": _states(),
    }
