"""The pack controller as a two-bus gateway, sans-I/O (docs/gateway.md).

The app bus (CAN 1) carries the VCU's legacy 11-bit frames in clear and stays unchanged for it;
the module bus (CAN 2) is secured. :class:`Gateway` takes one app-bus frame and returns the
module-bus sends it causes (node, message class, tier, payload) under the rules of a
:class:`~modbatt.protocol.routes.RouteTable`; it takes one verified module-bus message and returns
the app-bus frames bridged from it. Before anything crosses, it asks the target module's
:class:`~modbatt.protocol.pack_state.PackSecurity` whether that class at that tier is accepted in
the current state, so nothing crosses before ``paired`` except what the state table allows.

It never raises for bad input: a frame that is not forwarded is counted in :attr:`rejections`
by reason (``unroutable`` for an identifier with no rule, ``malformed`` for an undecodable frame
or a value the target signal cannot carry, ``wrong_peer`` for a module it does not serve,
``wrong_state`` / ``tier_too_low`` from the state gate, ``unauthorized`` / ``rate_limited`` from
the pairing's restrictions) and logged in :attr:`dropped`. Payloads
carry no sequence number or tag: protecting and acknowledging them is the link's and the
simulator's job.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cantools.database.can import Message, Signal

from ..can.catalog import DBC_PACK_ID, LegacyMessage, build_legacy_database, load_catalog
from ..errors import ConfigError, Reason, VerificationError
from ..model.policy import MessageClass
from ..model.tier import Tier
from .pack_state import PackSecurity
from .restrictions import RestrictionGate
from .routes import NODE, AppToModule, ModuleToApp, RouteTable, Source, load_routes

__all__ = ["AppFrame", "Drop", "Gateway", "ModuleMessage", "ModuleSend"]

_DROP_LOG: Final = 256  # recent drops kept for monitors and the attack matrix


@dataclass(frozen=True, slots=True)
class AppFrame:
    """A frame on the app bus (CAN 1)."""

    arbitration_id: int
    data: bytes
    is_extended: bool = False


@dataclass(frozen=True, slots=True)
class ModuleSend:
    """What the gateway asks the pack's link to send on the module bus."""

    node: int
    message_class: MessageClass
    tier: Tier
    payload: bytes
    route: str


@dataclass(frozen=True, slots=True)
class ModuleMessage:
    """A message the pack's link verified on the module bus (``nodes.link.Received`` plus its node)."""

    node: int
    message_class: MessageClass
    tier: Tier
    payload: bytes


@dataclass(frozen=True, slots=True)
class Drop:
    """A frame (or one module's share of it) that was not forwarded, and why."""

    source: str  # "app" or "module"
    ident: int  # app arbitration id, or module node
    route: str | None
    reason: Reason
    detail: str


def _to_raw(sig: Signal, value: float) -> int:
    """The raw field value for physical ``value``; ``malformed`` if the field cannot carry it."""
    raw = round((value - sig.conversion.offset) / sig.conversion.scale)
    lo, hi = (-(1 << (sig.length - 1)), (1 << (sig.length - 1)) - 1) if sig.is_signed else (0, (1 << sig.length) - 1)
    if not lo <= raw <= hi:
        raise VerificationError(Reason.MALFORMED, f"{value} does not fit {sig.name} ({sig.length} bits)")
    return raw


def _encode(msg: Message, values: Mapping[str, float]) -> bytes:
    """``msg``'s layout with the given physical values; signals not given are raw 0."""
    raw = {s.name: 0 for s in msg.signals}
    for name, value in values.items():
        raw[name] = _to_raw(msg.get_signal_by_name(name), value)
    return bytes(msg.encode(raw, scaling=False, strict=False, padding=False)).ljust(msg.length, b"\x00")


def _decode(msg: Message, data: bytes) -> dict[str, float]:
    if len(data) != msg.length:
        raise VerificationError(Reason.MALFORMED, f"{msg.name} is {msg.length} bytes, got {len(data)}")
    try:
        return {k: float(v) for k, v in msg.decode(data, decode_choices=False, scaling=True).items()}
    except Exception as exc:  # cantools raises its own DecodeError and ValueError
        raise VerificationError(Reason.MALFORMED, f"{msg.name} does not decode ({exc.__class__.__name__})") from None


def _value(src: Source, node: int, values: Mapping[str, float]) -> float:
    if src == NODE:
        return float(node)
    if isinstance(src, str):
        return values[src]
    return float(src)


class Gateway:
    """The routing core of a pack controller serving the modules in ``security`` (node -> machine)."""

    def __init__(
        self,
        security: Mapping[int, PackSecurity],
        *,
        routes: RouteTable | None = None,
        pack_id: int = DBC_PACK_ID,
        catalog: Sequence[LegacyMessage] | None = None,
        restrictions: Mapping[int, RestrictionGate] | None = None,
    ) -> None:
        self.routes = routes if routes is not None else load_routes()
        self.security = security
        #: The pack's copy of each module pairing's restrictions (docs/gateway.md §5): what the
        #: module would refuse is not forwarded. Checked when :meth:`from_app` is given ``now``.
        self.restrictions: Mapping[int, RestrictionGate] = restrictions if restrictions is not None else {}
        self.pack_id = pack_id
        catalog = catalog if catalog is not None else load_catalog()
        by_name = {m.name: m for m in catalog}
        self._db = build_legacy_database(catalog, pack_id=pack_id)
        self._app_by_id: dict[int, Message] = {}
        for name in self.routes.app_messages:
            try:
                fid = by_name[name].frame_id(pack_id=pack_id)
            except KeyError:
                raise ConfigError(f"routing table names {name}, which this catalog lacks") from None
            self._app_by_id[fid] = self._db.get_message_by_name(name)
        self._last: dict[tuple[str, int], tuple[bytes, str | None]] = {}
        #: Frames and module shares not forwarded, by reason.
        self.rejections: collections.Counter[Reason] = collections.Counter()
        #: The most recent drops, newest last.
        self.dropped: collections.deque[Drop] = collections.deque(maxlen=_DROP_LOG)
        #: Frames handled without a drop: forwarded, answered locally, unchanged, not bridged.
        self.counts: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------ app bus -> module bus

    def from_app(self, frame: AppFrame, now: float | None = None) -> list[ModuleSend]:
        """The module-bus sends one app-bus frame causes (possibly none).

        With ``now``, each send also passes the target pairing's restrictions (:attr:`restrictions`).
        """
        msg = None if frame.is_extended else self._app_by_id.get(frame.arbitration_id)
        if msg is None:
            kind = "extended" if frame.is_extended else "11-bit"
            detail = f"no route for {kind} 0x{frame.arbitration_id:x}"
            self._drop("app", frame.arbitration_id, None, Reason.UNROUTABLE, detail)
            return []
        if msg.name in self.routes.app_local:
            self.counts["local"] += 1
            return []
        try:
            values = _decode(msg, bytes(frame.data))
        except VerificationError as exc:
            self._drop("app", frame.arbitration_id, msg.name, exc.reason, exc.detail)
            return []
        sends: list[ModuleSend] = []
        for rule in self.routes.app_rules(msg.name):
            for node in self._targets(rule, values, frame.arbitration_id):
                send = self._route(rule, node, values, frame.arbitration_id, now)
                if send is not None:
                    sends.append(send)
        return sends

    def _targets(self, rule: AppToModule, values: Mapping[str, float], ident: int) -> list[int]:
        if rule.to is None:
            return sorted(self.security)
        node = int(values[rule.to])
        if node not in self.security:
            self._drop("app", ident, rule.name, Reason.WRONG_PEER, f"module 0x{node:02x} is not served by this pack")
            return []
        return [node]

    def _route(
        self, rule: AppToModule, node: int, values: Mapping[str, float], ident: int, now: float | None
    ) -> ModuleSend | None:
        machine = self.security[node]
        gate = self.restrictions.get(node)
        try:
            machine.allows(rule.message_class, rule.tier)
            if gate is not None and not gate.allows_class(rule.message_class):
                raise VerificationError(Reason.UNAUTHORIZED, f"{rule.message_class.value}: not in the pairing")
            payload = self._body(rule, node, values)
        except VerificationError as exc:
            self._drop("app", ident, rule.name, exc.reason, f"module 0x{node:02x}: {exc.detail}")
            return None
        if rule.on_change:
            # Resend after a new pairing: the module may have been isolated and lost the state.
            key, current = (rule.name, node), (payload, machine.pairing_id)
            if self._last.get(key) == current:
                self.counts["unchanged"] += 1
                return None
        if gate is not None and now is not None:
            try:
                gate.check(rule.message_class, now)  # the rate: only what would be sent spends it
            except VerificationError as exc:
                self._drop("app", ident, rule.name, exc.reason, f"module 0x{node:02x}: {exc.detail}")
                return None
        if rule.on_change:
            self._last[(rule.name, node)] = (payload, machine.pairing_id)
        self.counts["forwarded"] += 1
        return ModuleSend(node, rule.message_class, rule.tier, payload, rule.name)

    def _body(self, rule: AppToModule, node: int, values: Mapping[str, float]) -> bytes:
        body = rule.body
        if body.module_message is None:
            return bytes(int(values[name]) for name in body.byte_signals)
        target = self._db.get_message_by_name(body.module_message)
        return _encode(target, {k: _value(src, node, values) for k, src in body.signals.items()})

    # ------------------------------------------------------------------ module bus -> app bus

    def from_module(self, message: ModuleMessage) -> list[AppFrame]:
        """The app-bus frames bridged from one verified module message (possibly none)."""
        rules = self.routes.bridged(MessageClass(message.message_class))
        if not rules:
            self.counts["not_bridged"] += 1  # acknowledgements, heartbeats: they stay on the module bus
            return []
        machine = self.security.get(message.node)
        if machine is None:
            self._drop("module", message.node, None, Reason.WRONG_PEER, "not a module this pack serves")
            return []
        try:
            machine.allows(message.message_class, message.tier)
        except VerificationError as exc:
            self._drop("module", message.node, None, exc.reason, exc.detail)
            return []
        frames: list[AppFrame] = []
        for rule in rules:
            frame = self._bridge(rule, message)
            if frame is not None:
                frames.append(frame)
        return frames

    def _bridge(self, rule: ModuleToApp, message: ModuleMessage) -> AppFrame | None:
        source = self._db.get_message_by_name(rule.module_message)
        target = self._db.get_message_by_name(rule.app_message)
        try:
            values = _decode(source, bytes(message.payload))
            data = _encode(target, {k: _value(src, message.node, values) for k, src in rule.signals.items()})
        except VerificationError as exc:
            self._drop("module", message.node, rule.name, exc.reason, exc.detail)
            return None
        self.counts["bridged"] += 1
        return AppFrame(target.frame_id, data)

    # ------------------------------------------------------------------ counters

    def _drop(self, source: str, ident: int, route: str | None, reason: Reason, detail: str) -> None:
        self.rejections[reason] += 1
        self.dropped.append(Drop(source, ident, route, reason, detail))

    def summary(self) -> dict[str, Any]:
        """Counters for monitors and notebooks."""
        return {
            "counts": dict(self.counts),
            "rejections": {r.value: n for r, n in self.rejections.items()},
        }
