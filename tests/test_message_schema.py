"""Every record of the message schema, enumerated from its registry: round trip and strictness.

The strategies are derived from each field's declared kind, so a new message class is covered
the moment it is declared (docs/architecture.md, Message schema).
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modbatt.protocol.messages as envelopes
import modbatt.protocol.pairing
import modbatt.protocol.validation  # noqa: F401  (registers every validation message)
from modbatt.encoding import canonical_dumps
from modbatt.errors import Reason, VerificationError
from modbatt.model.access import AccessData, LctRef, TransportProtocol
from modbatt.model.binding import format_timestamp
from modbatt.model.schema import REGISTRY, Kind, Schema
from modbatt.protocol.validation._common import MESSAGES, Message

ACCESS = (
    AccessData("can://can0/0x01", TransportProtocol.CAN, "module-01"),
    AccessData("http://127.0.0.1:8080", TransportProtocol.HTTP, "pack-01", LctRef("lct:web4:abc", "web4-test")),
)
SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def kind_strategy(kind: Kind) -> st.SearchStrategy[Any]:
    a = kind.args
    if kind.tag == "bytes":
        if "sizes" in a:
            return st.sampled_from(a["sizes"]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
        if a["size"] is not None:
            return st.binary(min_size=a["size"], max_size=a["size"])
        return st.binary(max_size=min(a["max_len"], 48))
    if kind.tag == "uint":
        return st.integers(a["lo"], a["hi"])
    if kind.tag == "text":
        printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
        return st.text(printable, min_size=1, max_size=min(a["max_len"], 12))
    if kind.tag == "one_of":
        return st.sampled_from(a["values"])
    if kind.tag == "enum":
        return st.sampled_from(list(a["enum"]))
    if kind.tag == "flag":
        return st.booleans()
    if kind.tag == "optional":
        return st.none() | kind_strategy(a["kind"])
    if kind.tag == "map":
        return st.dictionaries(st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=1, max_size=8),
                               st.integers(0, 1000) | st.booleans(), max_size=3)  # fmt: skip
    if kind.tag == "list":
        return st.lists(kind_strategy(a["kind"]), max_size=min(a["max_items"], 3))
    if kind.tag == "per_role":
        return st.fixed_dictionaries({r: kind_strategy(a["kind"]) for r in a["roles"]})
    if kind.tag == "uuid":
        return st.uuids().map(str)
    if kind.tag == "timestamp":
        return st.integers(0, 4_102_444_800_000).map(lambda ms: format_timestamp(ms / 1000))
    if kind.tag == "record":
        return st.sampled_from(ACCESS) if a["cls"] is AccessData else record_strategy(a["cls"])
    raise AssertionError(f"no strategy for kind {kind.tag}")


def fields_strategy(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def draw(d: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for f in schema.fields:
            if f.kind.tag == "variant":
                values[f.attr] = d(fields_strategy(f.kind.args["pick"](values)))
            else:
                values[f.attr] = d(kind_strategy(f.kind))
        return values

    return draw()


def record_strategy(cls: type) -> st.SearchStrategy[Any]:
    return fields_strategy(cls.__schema__).map(lambda v: cls(**v))


def cbor_map(rec: Any) -> dict[str, Any]:
    if isinstance(rec, Message):
        return cbor2.loads(rec.encode())
    return cbor2.loads(canonical_dumps(rec.__schema__.write(rec)))


def decode(cls: type, m: dict[str, Any]) -> Any:
    if issubclass(cls, Message):
        return cls.decode(canonical_dumps(m))
    if issubclass(cls, envelopes._Envelope):
        return cls.from_cbor(canonical_dumps(m))
    return cls.from_cbor(m)


def wrong_type(kind: Kind) -> Any:
    return "not a list" if kind.tag == "list" else []


CLASSES = sorted(REGISTRY, key=lambda c: (c.__module__, c.__name__))


def test_the_registry_holds_every_message_class():
    assert set(MESSAGES.values()) <= set(REGISTRY)
    assert {envelopes.ControllerRequest, envelopes.EntityResponse} <= set(REGISTRY)
    assert len(MESSAGES) >= 26  # levels 1-7, both profiles, session data at levels 3 and 4


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_encode_decode_is_the_identity(cls, data):
    rec = data.draw(record_strategy(cls))
    assert decode(cls, cbor_map(rec)) == rec
    if not issubclass(cls, Message):
        assert type(rec).from_json(rec.to_json()) == rec


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_an_unknown_a_missing_or_a_wrong_typed_field_is_refused(cls, data):
    m = cbor_map(data.draw(record_strategy(cls)))
    with pytest.raises(VerificationError) as unknown:
        decode(cls, {**m, "zz_unknown": 0})
    assert unknown.value.reason is Reason.UNKNOWN_FIELD
    field = data.draw(st.sampled_from(cls.__schema__.fields))
    with pytest.raises(VerificationError) as missing:
        decode(cls, {k: v for k, v in m.items() if k != field.name})
    assert missing.value.reason is Reason.MALFORMED
    with pytest.raises(VerificationError) as wrong:
        decode(cls, {**m, field.name: wrong_type(field.kind)})
    assert wrong.value.reason is Reason.MALFORMED


@pytest.mark.parametrize("cls", sorted(MESSAGES.values(), key=lambda c: c.__name__), ids=lambda c: c.__name__)
@settings(max_examples=2, deadline=None)
@given(data=st.data())
def test_the_signed_bytes_are_every_field_but_the_authenticator(cls, data):
    rec = data.draw(record_strategy(cls))
    signed = cbor2.loads(rec.signed_bytes())
    assert set(signed) == {f.name for f in cls.__schema__.fields if not f.auth} | {"v", "type", "level"}
