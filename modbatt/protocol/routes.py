"""Gateway routing rules as data: loading and checking ``modbatt/data/gateway-routes.yaml``.

The rules say which app-bus (CAN 1, legacy 11-bit, clear) messages become which module-bus
(CAN 2, secured) commands at which tier, which app-bus messages the pack answers itself, and which
module telemetry is bridged back to the app bus in clear (docs/gateway.md). Every name is
resolved against the legacy catalog (:mod:`modbatt.can.catalog`) and the message classes of
:mod:`modbatt.model.policy` when the table is loaded; any problem is a :class:`RouteError` naming
the rule and field, and no table is returned. :class:`~modbatt.protocol.gateway.Gateway` only
looks rules up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml
from cantools.database.can import Message

from ..can.catalog import LegacyBus, LegacyMessage, build_legacy_database, load_catalog
from ..errors import ConfigError
from ..model.policy import DEFAULT_POLICY, MessageClass
from ..model.tier import Tier

__all__ = [
    "NODE",
    "ROUTES_RESOURCE",
    "AppToModule",
    "Body",
    "ModuleToApp",
    "RouteError",
    "RouteTable",
    "load_routes",
    "parse_routes",
]

#: Package-data file name (under ``modbatt/data``).
ROUTES_RESOURCE: Final = "gateway-routes.yaml"
#: The value naming the module a frame is for or from.
NODE: Final = "$node"
_VERSION: Final = 1
_MAX_BYTES: Final = 64 * 1024  # a routing file is a few KiB; refuse anything absurd before parsing
_BYTE_SIGNAL_BITS: Final = 8

#: A signal source: a source signal name, :data:`NODE`, or a constant.
Source = str | int | float


class RouteError(ConfigError):
    """A routing table that cannot be used; the message names the rule and the field."""


@dataclass(frozen=True, slots=True)
class Body:
    """How a module-bus command body is made: a catalog message's layout, or bytes of raw values."""

    module_message: str | None  # legacy module-bus message whose layout the body takes
    signals: Mapping[str, Source]  # target signal -> source (module_message bodies)
    byte_signals: tuple[str, ...] = ()  # app signals sent one raw byte each (``bytes`` bodies)


@dataclass(frozen=True, slots=True)
class AppToModule:
    """An app-bus message becoming a secured module-bus command."""

    name: str
    app_message: str
    to: str | None  # None: every module served; else the app signal naming the module
    message_class: MessageClass
    tier: Tier
    on_change: bool
    body: Body


@dataclass(frozen=True, slots=True)
class ModuleToApp:
    """Module telemetry bridged back to the app bus in clear."""

    name: str
    message_class: MessageClass
    module_message: str
    app_message: str
    signals: Mapping[str, Source]


@dataclass(frozen=True, slots=True)
class RouteTable:
    """A checked routing table (construct with :func:`parse_routes` or :func:`load_routes`)."""

    app_to_module: tuple[AppToModule, ...]
    app_local: frozenset[str]
    module_to_app: tuple[ModuleToApp, ...]

    def app_rules(self, app_message: str) -> tuple[AppToModule, ...]:
        """The rules an app-bus message triggers, in table order."""
        return tuple(r for r in self.app_to_module if r.app_message == app_message)

    def bridged(self, message_class: MessageClass) -> tuple[ModuleToApp, ...]:
        """The bridge rules for module messages of ``message_class``."""
        return tuple(r for r in self.module_to_app if r.message_class is message_class)

    @property
    def app_messages(self) -> frozenset[str]:
        """Every app-bus message the table knows (routed or answered locally)."""
        return frozenset(r.app_message for r in self.app_to_module) | self.app_local


def _fail(where: str, problem: str) -> RouteError:
    return RouteError(f"gateway routes: {where}: {problem}")


def _map(value: Any, where: str, required: set[str], optional: set[str] = frozenset()) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, "must be a mapping")
    keys = set(value)
    if keys - required - optional:
        raise _fail(where, f"unknown field(s) {sorted(map(str, keys - required - optional))}")
    if required - keys:
        raise _fail(where, f"missing field(s) {sorted(required - keys)}")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise _fail(where, "must be a list")
    return value


class _Resolver:
    """Names checked against one catalog and its cantools database."""

    def __init__(self, catalog: Sequence[LegacyMessage]) -> None:
        self.catalog = {m.name: m for m in catalog}
        self.db = build_legacy_database(catalog)

    def message(self, name: Any, bus: LegacyBus, where: str) -> Message:
        msg = self.catalog.get(name) if isinstance(name, str) else None
        if msg is None:
            raise _fail(where, f"{name!r} is not a message of the legacy catalog")
        if msg.bus is not bus:
            raise _fail(where, f"{name} travels on the {msg.bus.value} bus, not the {bus.value} bus")
        if bus is LegacyBus.APP and msg.is_extended:
            # The WEB4 key-push frames (0x407-0x40A): a clear key push is never routed.
            raise _fail(where, f"{name} is an extended app-bus frame; only 11-bit app messages route")
        return self.db.get_message_by_name(name)

    @staticmethod
    def signal(msg: Message, name: Any, where: str) -> None:
        if not isinstance(name, str) or name not in {s.name for s in msg.signals}:
            raise _fail(where, f"{name!r} is not a signal of {msg.name}")

    def mapping(self, value: Any, target: Message, source: Message, where: str) -> dict[str, Source]:
        if not isinstance(value, Mapping) or not value:
            raise _fail(where, "must map target signals to sources")
        out: dict[str, Source] = {}
        for key, src in value.items():
            self.signal(target, key, f"{where}.{key}")
            if isinstance(src, bool) or not isinstance(src, (str, int, float)):
                raise _fail(f"{where}.{key}", "must be a signal name, $node or a number")
            if isinstance(src, str) and src != NODE:
                self.signal(source, src, f"{where}.{key}")
            out[key] = src
        return out


def _class_and_tier(rule: Mapping[str, Any], where: str, *, with_tier: bool) -> tuple[MessageClass, Tier]:
    try:
        cls = MessageClass(rule["message_class"])
    except ValueError:
        raise _fail(f"{where}.message_class", f"unknown message class {rule['message_class']!r}") from None
    if not with_tier:
        return cls, Tier.NONE
    try:
        tier = Tier[str(rule["tier"]).upper()]
    except KeyError:
        raise _fail(f"{where}.tier", "must be none, exchange, pairing or binding") from None
    if tier < DEFAULT_POLICY.minimum[cls]:
        raise _fail(f"{where}.tier", f"{cls.value} needs at least the {DEFAULT_POLICY.minimum[cls].label} tier")
    return cls, tier


def _app_rule(raw: Any, where: str, r: _Resolver) -> AppToModule:
    m = _map(raw, where, {"name", "app_message", "to", "message_class", "tier", "body"}, {"on_change"})
    app = r.message(m["app_message"], LegacyBus.APP, f"{where}.app_message")
    cls, tier = _class_and_tier(m, where, with_tier=True)
    to = m["to"]
    if to == "all":
        target = None
    else:
        target = _map(to, f"{where}.to", {"signal"})["signal"]
        r.signal(app, target, f"{where}.to.signal")
    on_change = m.get("on_change", False)
    if not isinstance(on_change, bool):
        raise _fail(f"{where}.on_change", "must be true or false")
    body = _map(m["body"], f"{where}.body", set(), {"module_message", "signals", "bytes"})
    if "bytes" in body:
        if set(body) != {"bytes"}:
            raise _fail(f"{where}.body", "takes either bytes or module_message with signals")
        names = tuple(_list(body["bytes"], f"{where}.body.bytes"))
        for name in names:
            r.signal(app, name, f"{where}.body.bytes")
            sig = app.get_signal_by_name(name)
            unscaled = (sig.conversion.scale, sig.conversion.offset) == (1, 0)
            if sig.length > _BYTE_SIGNAL_BITS or sig.is_signed or not unscaled:
                raise _fail(f"{where}.body.bytes", f"{name} is not an unsigned unscaled field of at most one byte")
        made = Body(None, {}, names)
    else:
        _map(body, f"{where}.body", {"module_message", "signals"})
        module = r.message(body["module_message"], LegacyBus.MODULE, f"{where}.body.module_message")
        made = Body(module.name, r.mapping(body["signals"], module, app, f"{where}.body.signals"))
    return AppToModule(_name(m, where), app.name, target, cls, tier, on_change, made)


def _bridge_rule(raw: Any, where: str, r: _Resolver) -> ModuleToApp:
    m = _map(raw, where, {"name", "message_class", "module_message", "app_message", "signals"})
    cls, _ = _class_and_tier(m, where, with_tier=False)
    module = r.message(m["module_message"], LegacyBus.MODULE, f"{where}.module_message")
    app = r.message(m["app_message"], LegacyBus.APP, f"{where}.app_message")
    signals = r.mapping(m["signals"], app, module, f"{where}.signals")
    return ModuleToApp(_name(m, where), cls, module.name, app.name, signals)


def _name(m: Mapping[str, Any], where: str) -> str:
    name = m["name"]
    if not isinstance(name, str) or not name or len(name) > 64:
        raise _fail(f"{where}.name", "must be a short non-empty string")
    return name


def parse_routes(data: Any, catalog: Sequence[LegacyMessage] | None = None) -> RouteTable:
    """Check a decoded routing document against ``catalog`` (default: the shipped one)."""
    r = _Resolver(catalog if catalog is not None else load_catalog())
    top = _map(data, "document", {"version", "app_to_module", "app_local", "module_to_app"})
    if top["version"] != _VERSION:
        raise _fail("version", f"must be {_VERSION}")
    app_rules = tuple(
        _app_rule(x, f"app_to_module[{i}]", r) for i, x in enumerate(_list(top["app_to_module"], "app_to_module"))
    )
    bridges = tuple(
        _bridge_rule(x, f"module_to_app[{i}]", r) for i, x in enumerate(_list(top["module_to_app"], "module_to_app"))
    )
    local = frozenset(
        r.message(x, LegacyBus.APP, f"app_local[{i}]").name for i, x in enumerate(_list(top["app_local"], "app_local"))
    )
    names = [x.name for x in (*app_rules, *bridges)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail("rules", f"duplicate rule name(s) {duplicates}")
    both = local & {x.app_message for x in app_rules}
    if both:
        raise _fail("app_local", f"{sorted(both)} are also routed; a message is either routed or local")
    return RouteTable(app_rules, local, bridges)


def load_routes(path: str | Path | None = None, catalog: Sequence[LegacyMessage] | None = None) -> RouteTable:
    """Load and check a routing file (default: the package's ``gateway-routes.yaml``)."""
    try:
        if path is None:
            text = resources.files("modbatt").joinpath("data", ROUTES_RESOURCE).read_text(encoding="utf-8")
        else:
            p = Path(path)
            if p.stat().st_size > _MAX_BYTES:
                raise _fail(str(p), f"larger than {_MAX_BYTES} bytes")
            text = p.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except OSError as exc:
        raise RouteError(f"gateway routes: cannot read {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = path or ROUTES_RESOURCE
        raise RouteError(f"gateway routes: {where} is not valid YAML ({exc.__class__.__name__})") from None
    return parse_routes(data, catalog)
