"""The message schema: each field of a signed CBOR structure declared once (docs/architecture.md, Message schema).

A record is a frozen dataclass whose fields carry a :class:`Kind` in their metadata
(:func:`wire`), and at most one authenticator (:func:`authenticator`). From that one declaration
:class:`Schema` derives every view:

* the CBOR map (:meth:`Schema.write` with ``json=False``), encoded canonically by the caller;
* the JSON view used over HTTP (byte strings in standard base64);
* strict decoding of untrusted maps: exactly the declared keys (an unknown key is
  ``unknown_field``, checked before a missing one, ``malformed``), then every field in declaration
  order through its kind's reader (``malformed``/``oversized``), the authenticator last;
* the signed bytes: every field but the authenticator.

A :class:`Kind` is also a field reader (``kind(value, what)``), and describes itself for the
specification tables (:meth:`Kind.describe`) and for property tests (:attr:`Kind.tag`,
:attr:`Kind.args`). Nothing here knows a particular message; :data:`REGISTRY` lists every record
class declared with :func:`record`, so tests can enumerate them.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from ._fields import b64, b64_bytes, expect_map, integer, malformed, raw_bytes, text, uuid_text

__all__ = [
    "REGISTRY",
    "U63",
    "Kind",
    "Record",
    "Schema",
    "authenticator",
    "bytes_",
    "enum_of",
    "flag",
    "list_of",
    "nested",
    "one_of",
    "optional",
    "per_role",
    "record",
    "small_map",
    "text_",
    "uint",
    "uuid_",
    "variant",
    "wire",
]

U63 = (1 << 63) - 1


def _same(value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Kind:
    """How one field is read from untrusted CBOR or JSON and written back (one declaration, four views)."""

    #: What kind of field (``bytes``, ``uint``, ``text``, ``one_of``, ``flag``, ``optional``,
    #: ``map``, ``list``, ``record``, ``variant``, ``uuid``) and its parameters.
    tag: str
    args: Mapping[str, Any]
    read: Callable[[Any, str], Any]
    #: (type, size, encoding) for the specification tables (docs/spec/messages.md).
    description: tuple[str, str, str]
    to_cbor: Callable[[Any], Any] = _same
    to_json: Callable[[Any], Any] = _same
    read_json: Callable[[Any, str], Any] | None = None

    def __call__(self, value: Any, what: str) -> Any:
        return self.read(value, what)

    def from_json(self, value: Any, what: str) -> Any:
        return (self.read_json or self.read)(value, what)

    def describe(self) -> tuple[str, str, str]:
        return self.description


def bytes_(size: int | None = None, max_len: int = 4096, *, encoding: str = "CBOR byte string (major type 2)") -> Kind:
    """A byte string: exactly ``size`` bytes, or at most ``max_len`` (``oversized`` beyond)."""
    return Kind(
        "bytes", {"size": size, "max_len": max_len},
        lambda v, w: raw_bytes(v, w, size=size, max_len=max_len),
        ("bytes", f"{size}" if size is not None else f"≤ {max_len}", encoding),
        to_cbor=bytes, to_json=b64, read_json=lambda v, w: _json_bytes(v, w, size, max_len),
    )  # fmt: skip


def _json_bytes(v: Any, w: str, size: int | None, max_len: int) -> bytes:
    # "" is the empty byte string, as b"" is in CBOR, where the field allows it (no fixed size).
    return b"" if v == "" and size is None else b64_bytes(v, w, size=size, max_len=max_len)


def uint(
    lo: int = 0, hi: int = U63, *, size: str | None = None, encoding: str = "CBOR unsigned integer (major type 0)"
) -> Kind:
    """An integer in ``[lo, hi]`` (never a bool)."""
    shown = size if size is not None else f"{lo} … {hi:_}".replace("_", " ")
    return Kind("uint", {"lo": lo, "hi": hi}, lambda v, w: integer(v, w, lo=lo, hi=hi), ("uint", shown, encoding))


def text_(max_len: int = 64) -> Kind:
    """Text of 1 to ``max_len`` characters, no control characters."""
    return Kind(
        "text", {"max_len": max_len}, lambda v, w: text(v, w, max_len=max_len),
        ("text", f"1 … {max_len} chars", "CBOR text string (UTF-8), no control characters"),
    )  # fmt: skip


def one_of(*values: str) -> Kind:
    """Text restricted to ``values``."""

    def read(v: Any, w: str) -> str:
        if v not in values:
            raise malformed(f"{w} must be one of {', '.join(values)}")
        return str(v)

    return Kind("one_of", {"values": values}, read,
                ("text", "one of " + ", ".join(f"`{v}`" for v in values), "CBOR text string"))  # fmt: skip


E = TypeVar("E", bound=enum.Enum)


def enum_of(cls: type[E]) -> Kind:
    """Text naming a member of the string enum ``cls`` (read as the member)."""
    values = tuple(str(m.value) for m in cls)  # type: ignore[attr-defined]
    base = one_of(*values)
    return dataclasses.replace(
        base, tag="enum", args={"enum": cls, "values": values}, read=lambda v, w: cls(base.read(v, w)),
        to_cbor=lambda m: m.value, to_json=lambda m: m.value,
    )  # fmt: skip


def _read_flag(v: Any, w: str) -> bool:
    if not isinstance(v, bool):
        raise malformed(f"{w} must be true or false")
    return v


#: A boolean.
flag = Kind("flag", {}, _read_flag, ("bool", "1", "CBOR true/false"))


def optional(kind: Kind) -> Kind:
    """``kind`` or null."""
    t, s, e = kind.describe()
    return Kind(
        "optional", {"kind": kind}, lambda v, w: None if v is None else kind.read(v, w),
        (f"{t} or null", s, f"{e}, or CBOR null"),
        to_cbor=lambda v: None if v is None else kind.to_cbor(v),
        to_json=lambda v: None if v is None else kind.to_json(v),
        read_json=lambda v, w: None if v is None else kind.from_json(v, w),
    )  # fmt: skip


def _read_small_map(v: Any, w: str) -> dict[str, Any]:
    if not isinstance(v, dict) or len(v) > 16:
        raise malformed(f"{w} must be a map of at most 16 entries")
    for key, item in v.items():
        text(key, f"{w} key", max_len=64)
        if not isinstance(item, (str, int, bytes, bool)) or (isinstance(item, (str, bytes)) and len(item) > 256):
            raise malformed(f"{w}.{key} must be a short text, integer, bool or byte string")
    return dict(v)


#: A map of at most 16 short text keys to short scalars or byte strings (event details, changes).
small_map = Kind(
    "map", {"max_items": 16}, _read_small_map,
    ("map", "≤ 16 entries", "CBOR map of text keys to short text, integers, bools or bytes"), to_cbor=dict,
)  # fmt: skip


def list_of(kind: Kind, max_items: int, *, size: str | None = None, encoding: str | None = None) -> Kind:
    """An array of at most ``max_items`` values of ``kind``."""
    t, s, _ = kind.describe()

    def read(v: Any, w: str) -> list[Any]:
        if not isinstance(v, list) or len(v) > max_items:
            raise malformed(f"{w} must be a list of at most {max_items} {t} values")
        return [kind.read(item, w) for item in v]

    return Kind(
        "list", {"kind": kind, "max_items": max_items}, read,
        ("array", size or f"≤ {max_items} × {s}", encoding or f"CBOR array of {t}"),
        to_cbor=lambda v: [kind.to_cbor(x) for x in v], to_json=lambda v: [kind.to_json(x) for x in v],
        read_json=lambda v, w: _list_json(kind, max_items, v, w, t),
    )  # fmt: skip


def _list_json(kind: Kind, max_items: int, v: Any, w: str, t: str) -> list[Any]:
    if not isinstance(v, list) or len(v) > max_items:
        raise malformed(f"{w} must be a list of at most {max_items} {t} values")
    return [kind.from_json(item, w) for item in v]


def per_role(kind: Kind, roles: tuple[str, ...] = ("a", "b"), key: str = "entity_{}") -> Kind:
    """A map with one ``kind`` value per role, keyed ``entity_a``, ``entity_b`` on the wire and read
    as ``{role: value}``."""
    keys = {role: key.format(role) for role in roles}

    def reader(json: bool) -> Callable[[Any, str], dict[str, Any]]:
        def read(v: Any, w: str) -> dict[str, Any]:
            m = expect_map(v, w, required=set(keys.values()))
            return {r: (kind.from_json if json else kind.read)(m[k], f"{w}.{k}") for r, k in keys.items()}

        return read

    t, s, _ = kind.describe()
    return Kind(
        "per_role", {"kind": kind, "roles": roles}, reader(False),
        ("map", f"{len(roles)} × {t} {s}", "CBOR map " + ", ".join(f"`{k}`" for k in keys.values())),
        to_cbor=lambda m: {k: kind.to_cbor(m[r]) for r, k in keys.items()},
        to_json=lambda m: {k: kind.to_json(m[r]) for r, k in keys.items()}, read_json=reader(True),
    )  # fmt: skip


#: A lower-case hyphenated UUID as text.
uuid_ = Kind("uuid", {}, uuid_text, ("text", "36 chars", "lower-case hyphenated UUID"))


def nested(
    cls: type[Any],
    description: tuple[str, str, str] | None = None,
    *,
    to_cbor: Callable[[Any], Any] | None = None,
    read: Callable[[Any, str], Any] | None = None,
) -> Kind:
    """A map holding a record: a :func:`record` class by default, or any type given its codec."""
    if read is None:
        schema = Schema.of(cls)
        return Kind(
            "record", {"cls": cls}, lambda v, w: cls(**schema.read(v, w, prefix=f"{w}.")),
            description or ("map", cls.__name__, "CBOR map"),
            to_cbor=lambda r: schema.write(r), to_json=lambda r: schema.write(r, json=True),
            read_json=lambda v, w: cls(**schema.read(v, w, json=True, prefix=f"{w}.")),
        )  # fmt: skip
    assert to_cbor is not None and description is not None
    return Kind("record", {"cls": cls}, read, description, to_cbor=to_cbor, to_json=to_cbor)


def variant(on: str, choices: Mapping[str, Schema], description: str = "body") -> Kind:
    """A map whose schema is chosen by the already-read field ``on`` (the body of each operation).

    The value is a plain dict of the chosen schema's fields.
    """

    def pick(values: Mapping[str, Any]) -> Schema:
        return choices[values[on]]

    return Kind("variant", {"on": on, "choices": choices, "pick": pick}, _never, ("map", description, "CBOR map"))


def _never(v: Any, w: str) -> Any:
    raise AssertionError("a variant is read through its schema")


# --------------------------------------------------------------------------- fields and schemas


def wire(kind: Kind, *, name: str | None = None, default: Any = dataclasses.MISSING) -> Any:
    """Declare a record field of ``kind`` (``name``: its key on the wire when not the attribute name)."""
    meta = {"kind": kind, "wire": name}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def authenticator(*sizes: int, kind: Kind | None = None, name: str | None = None) -> Any:
    """Declare the authenticator (signature or MAC): one of ``sizes`` bytes (or ``kind``), empty
    until signed, left out of the signed bytes (``name``: its key on the wire, as for :func:`wire`)."""
    meta = {"kind": kind or auth_kind(sizes), "wire": name, "auth": True}
    return dataclasses.field(default=b"", repr=False, metadata=meta)


def auth_kind(sizes: tuple[int, ...], max_len: int = 64) -> Kind:
    """A signature or MAC of one of ``sizes`` bytes (``oversized`` beyond ``max_len``)."""

    def read(v: Any, w: str) -> bytes:
        sig = raw_bytes(v, w, max_len=max_len)
        if len(sig) not in sizes:
            raise malformed(f"{w} has the wrong length")
        return sig

    def read_json(v: Any, w: str) -> bytes:
        return read(b64_bytes(v, w, max_len=max_len), w)

    return Kind(
        "bytes", {"sizes": sizes, "max_len": max_len}, read,
        ("bytes", " or ".join(map(str, sizes)), "CBOR byte string: signature r‖s or MAC (authenticator)"),
        to_cbor=bytes, to_json=b64, read_json=read_json,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One declared field: attribute name, wire name, kind; ``auth`` marks the authenticator."""

    attr: str
    name: str
    kind: Kind
    auth: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Schema:
    """An ordered field list and the views derived from it."""

    what: str
    fields: tuple[Field, ...]

    @classmethod
    def of(cls, record_cls: type[Any]) -> Schema:
        """The schema of a dataclass declared with :func:`wire` fields."""
        found = getattr(record_cls, "__schema__", None)
        if found is not None and found.fields and getattr(record_cls, "__schema_owner__", None) is record_cls:
            return found  # type: ignore[no-any-return]
        fields = tuple(
            Field(f.name, f.metadata["wire"] or f.name, f.metadata["kind"], bool(f.metadata.get("auth")))
            for f in dataclasses.fields(record_cls)
            if "kind" in f.metadata
        )
        return cls(getattr(record_cls, "WHAT", record_cls.__name__), fields)

    @classmethod
    def build(cls, what: str, **kinds: Kind) -> Schema:
        """A schema for a plain dict of fields (each field's attribute is its wire name)."""
        return cls(what, tuple(Field(name, name, kind) for name, kind in kinds.items()))

    @property
    def auth(self) -> Field | None:
        return next((f for f in self.fields if f.auth), None)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields)

    def write(self, obj: Any, *, json: bool = False, auth: bool = True) -> dict[str, Any]:
        """The map of ``obj`` (a record, or a mapping of attribute names), every field; ``auth=False``
        leaves the authenticator out (the signed view)."""
        get = obj.get if isinstance(obj, Mapping) else (lambda a: getattr(obj, a))
        out: dict[str, Any] = {}
        for f in self.fields:
            if f.auth and not auth:
                continue
            value = get(f.attr)
            if f.kind.tag == "variant":
                sub: Schema = f.kind.args["pick"]({g.attr: get(g.attr) for g in self.fields if g.kind.tag != "variant"})
                out[f.name] = sub.write(value, json=json)
            else:
                out[f.name] = (f.kind.to_json if json else f.kind.to_cbor)(value)
        return out

    def read(
        self,
        value: Any,
        what: str | None = None,
        *,
        json: bool = False,
        extra: frozenset[str] = frozenset(),
        expect: Mapping[str, Callable[[Any], None]] | None = None,
        prefix: str = "",
    ) -> dict[str, Any]:
        """Constructor arguments from an untrusted map: exactly the declared keys (plus ``extra``,
        checked by the caller), each field read in order; ``expect[attr]`` runs right after that
        field is read (a routing check, e.g. the operation an endpoint takes)."""
        m = expect_map(value, what or self.what, required=set(self.names) | set(extra))
        args: dict[str, Any] = {}
        for f in self.fields:
            label = f"{prefix}{f.name}"
            if f.kind.tag == "variant":
                sub: Schema = f.kind.args["pick"](args)
                args[f.attr] = sub.read(m[f.name], f.name, json=json, prefix=f"{f.name}.")
            else:
                args[f.attr] = (f.kind.from_json if json else f.kind.read)(m[f.name], label)
            if expect is not None and f.attr in expect:
                expect[f.attr](args[f.attr])
        return args


class Record:
    """Base of records declared with :func:`record`: the derived views as methods."""

    __slots__ = ()
    __schema__: ClassVar[Schema]

    def to_cbor(self) -> dict[str, Any]:
        """The CBOR map (every field, authenticator included)."""
        return self.__schema__.write(self)

    def to_json(self) -> dict[str, Any]:
        """The JSON view (byte strings in base64)."""
        return self.__schema__.write(self, json=True)

    def signed_map(self) -> dict[str, Any]:
        """Every field but the authenticator."""
        return self.__schema__.write(self, auth=False)

    @classmethod
    def from_cbor(cls, value: Any, what: str | None = None) -> Any:
        return cls(**cls.__schema__.read(value, what, prefix=f"{what}." if what else ""))

    @classmethod
    def from_json(cls, value: Any, what: str | None = None) -> Any:
        return cls(**cls.__schema__.read(value, what, json=True, prefix=f"{what}." if what else ""))


#: Every record class declared with :func:`record`, in declaration order.
REGISTRY: list[type[Any]] = []

T = TypeVar("T")


def record(cls: type[T] | None = None, *, what: str | None = None) -> Any:
    """Make ``cls`` a frozen, slotted dataclass, derive its :class:`Schema` and register it."""

    def wrap(c: type[T]) -> type[T]:
        out = dataclasses.dataclass(frozen=True, slots=True)(c)
        schema = Schema.of(out)
        out.__schema__ = dataclasses.replace(schema, what=what or schema.what)  # type: ignore[attr-defined]
        out.__schema_owner__ = out  # type: ignore[attr-defined]
        REGISTRY.append(out)
        return out

    return wrap if cls is None else wrap(cls)

