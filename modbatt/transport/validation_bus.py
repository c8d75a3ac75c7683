"""Validation levels 1-7 and escalation as real frames on a python-can bus (docs/validation.md §on the bus).

:class:`ValidationBus` is the on-bus carrier of :mod:`modbatt.nodes.validation`: each level's
machines run where they always run, and every message between the pack side and the module side
crosses the bus between two bus handles (one per end) on the same channel, as a third handle, the
tap (:class:`~modbatt.transport.tap.BusTap`), records every frame for measurement.

How each message travels (:func:`modbatt.can.payloads.transport_for` decides per function and tier):

* ``broadcast``: the level-1 announce (function ``ANNOUNCE``) and the level-2 witness request and
  acknowledgement (``WITNESS``) go out as broadcast fragments (:mod:`modbatt.can.fragment`), the
  receiver reassembling them under the usual limits;
* ``isotp``: the point-to-point messages of levels 3, 6 and 7 ride ISO-TP on the ``VALIDATION``
  function at the binding tier (the messages are signed envelopes, as on ``BINDING_API``), one
  connection per module: controller-to-node from the pack, node-to-controller from the module;
* ``channel``: the paired levels (4, 5) go through each end's
  :class:`~modbatt.nodes.channel.PairedChannel`: the sender's channel protects the message as a
  ``VALIDATION`` unit of the current session (freshness, the binding-tier signature over the
  pairing and session), the unit crosses the bus on ISO-TP, and the receiver's channel verifies
  it before the level's machine sees a byte. Before and after each such message the driver pumps
  the channels' control frames (resync challenges and answers) over the bus.

The auth controller sits behind the pack (its gateway): messages between the controller and the
pack do not cross this bus (``off_bus``); messages between the controller and the module cross it
from the pack's handle.

Frames and times are measured from the tap: per level, the frames heard, their data bytes and the
span from first to last frame. The computed model for the same units (ISO-TP and fragment frame
lengths from :mod:`modbatt.can.wiretime` and :mod:`modbatt.can.fragment`, wire time at the bus's
bit rate, worst-case stuffing) is reported beside it. A message that does not arrive within
``timeout`` raises :class:`~modbatt.errors.TransportError` naming the level and the message: a
run that lost frames fails, it never reports success.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

import can

from ..can.fragment import CLASSIC_MTU, Fragmenter, Reassembler, fragment_count
from ..can.functions import function_named
from ..can.ids import MODULE_NODES, SEED_LAYOUT, IdLayout
from ..can.payloads import BROADCAST_FUNCTIONS, Transport, transport_for
from ..can.secured import SecuredPdu
from ..can.wiretime import CLASSIC, BusProfile, isotp_frame_lengths, message_time
from ..errors import ConfigError, ModbattError, TransportError, VerificationError
from ..model.policy import MessageClass
from ..model.tier import Tier
from .canbus import BusConfig, open_bus
from .isotp_link import IsoTpLink
from .tap import BusTap, WireSpan

__all__ = ["HOST_FIGURES", "PARTIES", "ChannelEnd", "ValidationBus", "without_host_figures"]

#: The two ends on the bus; the auth controller is reached through the pack (its gateway).
PARTIES = ("pack", "module")
_DIRECTION = {"pack": 0, "module": 1}  # seed layout dir bit: 0 controller->node, 1 node->controller
_VALIDATION = function_named("VALIDATION")
#: Figures of :meth:`ValidationBus.end` that depend on this host and run (times, the bus's name):
#: shown in notebooks, kept out of tracked results.
HOST_FIGURES = ("bus", "span_ms", "elapsed_ms")


def without_host_figures(value: Any) -> Any:
    """``value`` (levels, events) with every ``wire`` figure that varies between runs removed."""
    if isinstance(value, Mapping):
        return {
            k: ({kk: vv for kk, vv in v.items() if kk not in HOST_FIGURES} if k == "wire" and isinstance(v, Mapping)
                else without_host_figures(v))
            for k, v in value.items()
        }  # fmt: skip
    if isinstance(value, list):
        return [without_host_figures(v) for v in value]
    return value


class ChannelEnd(Protocol):
    """What the driver needs of a paired channel (:class:`~modbatt.nodes.channel.PairedChannel`)."""

    def send(self, message_class: MessageClass, payload: bytes, *, tier: Tier | None = None) -> SecuredPdu: ...

    def receive(self, can_id: int, data: bytes, *, reassembled: bool = False) -> Any: ...

    def frames_to_send(self) -> list[SecuredPdu]: ...


class _End(can.Listener):
    """One party's bus handle: its Notifier, ISO-TP links, broadcast reassembly and single-frame intake."""

    def __init__(self, name: str, bus: can.BusABC, layout: IdLayout, node: int) -> None:
        self.name = name
        self.bus = bus
        self.layout = layout
        self.node = node
        self.links: dict[tuple[int, int], IsoTpLink] = {}
        self.reassembler = Reassembler()
        self.broadcasts: dict[int, queue.Queue[bytes]] = {}
        self.singles: queue.Queue[can.Message] = queue.Queue()
        self._watch_single: set[int] = set()
        self._lock = threading.Lock()
        self.notifier = can.Notifier(bus, [self], timeout=0.02)

    def watch_single(self, can_id: int) -> None:
        with self._lock:
            self._watch_single.add(can_id)

    def broadcast_queue(self, can_id: int) -> queue.Queue[bytes]:
        with self._lock:
            return self.broadcasts.setdefault(can_id, queue.Queue())

    def on_message_received(self, msg: can.Message) -> None:
        can_id = msg.arbitration_id
        with self._lock:
            single = can_id in self._watch_single
            wanted = self.broadcasts.get(can_id)
        if single:
            self.singles.put(msg)
            return
        if wanted is None:
            return
        for done in self.reassembler.feed(can_id, bytes(msg.data), time.monotonic()):
            wanted.put(done.payload)

    def link(self, txid: int, rxid: int, fd: bool, params: Mapping[str, Any]) -> IsoTpLink:
        key = (txid, rxid)
        if key not in self.links:
            self.links[key] = IsoTpLink(self.bus, txid, rxid, fd, params=params, notifier=self.notifier)
        return self.links[key]

    def close(self) -> None:
        for link in self.links.values():
            with contextlib.suppress(Exception):
                link.close()
        self.notifier.stop()
        self.bus.shutdown()


def _reverse(layout: IdLayout, can_id: int) -> int:
    """The identifier of the same connection in the other direction (flow control travels there)."""
    fields = layout.decode(can_id)
    return layout.encode(dataclasses.replace(fields, direction=1 - fields.direction))


class ValidationBus:
    """Carries validation messages between the pack end and the module end over one bus.

    ``config`` names the bus (every handle opens it the same way); ``node`` is the module's node id
    (what every identifier of the connection carries); ``channels`` maps ``"pack"``/``"module"`` to
    their paired channels, needed for the paired levels. Use as a context manager, or
    :meth:`close` it: it owns its three bus handles.
    """

    def __init__(
        self,
        config: BusConfig,
        node: int,
        *,
        channels: Mapping[str, ChannelEnd] | None = None,
        profile: BusProfile = CLASSIC,
        layout: IdLayout = SEED_LAYOUT,
        timeout: float = 5.0,
        isotp_params: Mapping[str, Any] | None = None,
        settle: float = 0.05,
    ) -> None:
        if node not in MODULE_NODES:
            raise ConfigError(f"node id {node} is outside 0x01-0x1F")
        if timeout <= 0:
            raise ConfigError("timeout must be positive")
        self.config = config
        self.node = node
        self.layout = layout
        self.profile = dataclasses.replace(profile, nominal_bitrate=config.bitrate) if config.bitrate else profile
        self.timeout = timeout
        self.channels = dict(channels or {})
        self._params = dict(isotp_params or {})
        self._settle = settle
        self._fragmenters: dict[int, Fragmenter] = {}
        self._ends: dict[str, _End] = {}
        self.tap: BusTap | None = None
        self._level: int | None = None
        self._mark = 0
        self._units: list[tuple[str, int]] = []  # (transport, unit bytes) carried in the current level
        self._t0 = 0.0
        #: Per level (or step name): the measured and modelled figures of :meth:`end`.
        self.measured: dict[str, dict[str, Any]] = {}
        try:
            self.tap = BusTap(open_bus(config))  # opened first: it hears every frame that follows
            for name in PARTIES:
                self._ends[name] = _End(name, open_bus(config), layout, node)
        except BaseException:
            self.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every link and Notifier and shut the bus handles down; idempotent."""
        ends, self._ends = list(self._ends.values()), {}
        for end in ends:
            end.close()
        if self.tap is not None:
            self.tap.close()
            self.tap = None

    def __enter__(self) -> ValidationBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return self.config.describe()

    # -- measurement -------------------------------------------------------------------------

    def begin(self, step: int | str) -> None:
        """Start measuring one level (or named step): what the tap hears from now on is its."""
        assert self.tap is not None
        self.tap.settle(self._settle)
        self._level = step  # type: ignore[assignment]
        self._mark = self.tap.mark()
        self._units = []
        self._t0 = time.monotonic()

    def end(self) -> dict[str, Any]:
        """Stop measuring: frames heard on the wire beside the model for the units carried."""
        assert self.tap is not None
        elapsed = time.monotonic() - self._t0
        self.tap.settle(self._settle)
        heard = WireSpan.of(self.tap.since(self._mark))
        lengths: list[int] = []
        for transport, size in self._units:
            lengths += self.model_frame_lengths(transport, size)
        out = {
            "bus": self.describe(),
            "frames": heard.frames,
            "data_bytes": heard.data_bytes,
            "span_ms": round(heard.span_s * 1e3, 3),
            "elapsed_ms": round(elapsed * 1e3, 3),
            "model_frames": len(lengths),
            "model_data_bytes": sum(lengths),
            "model_wire_ms": round(message_time(self.profile, lengths) * 1e3, 3),
            "model_bitrate": self.profile.nominal_bitrate,
            "units": [{"transport": t, "bytes": n} for t, n in self._units],
        }
        self.measured[str(self._level)] = out
        self._level = None
        return out

    def model_frame_lengths(self, transport: str, size: int) -> list[int]:
        """Data lengths of the frames the model counts for one unit of ``size`` bytes."""
        if transport == Transport.BROADCAST_FRAGMENTS:
            return [CLASSIC_MTU] * fragment_count(size, CLASSIC_MTU)
        if transport == Transport.SINGLE_FRAME:
            return [max(size, CLASSIC_MTU)] if not self.profile.fd else [size]
        return isotp_frame_lengths(size, self.profile)

    # -- carrying ----------------------------------------------------------------------------

    def carry(self, src: str, dst: str, data: bytes, *, via: str, what: str = "message") -> bytes:
        """Move ``data`` from ``src`` to ``dst`` (``"pack"`` / ``"module"``) and return what arrived.

        ``via`` is ``"broadcast:ANNOUNCE"``, ``"broadcast:WITNESS"``, ``"isotp"`` or ``"channel"``.
        """
        if src not in self._ends or dst not in self._ends or src == dst:
            raise ConfigError(f"cannot carry from {src!r} to {dst!r}: the ends are {PARTIES}")
        if via.startswith("broadcast:"):
            return self._broadcast(src, dst, data, via.split(":", 1)[1], what)
        if via == "isotp":
            txid = self._validation_id(src)
            return self._isotp(src, dst, txid, data, what)
        if via == "channel":
            return self._through_channels(src, dst, data, what)
        raise ConfigError(f"unknown carrier {via!r}")

    def deliver_unit(self, src: str, dst: str, pdu: SecuredPdu, *, what: str = "unit") -> Any:
        """Send one secured unit ``src``'s channel produced and have ``dst``'s channel verify it.

        Returns what the receiving channel returns; its classified refusal is raised.
        """
        self.pump()
        got = self._unit(src, dst, pdu, what)
        self.pump()
        return got

    def pump(self, rounds: int = 8) -> int:
        """Carry queued control frames (resync) between the two channels until both are quiet."""
        if not all(p in self.channels for p in PARTIES):
            return 0
        carried = 0
        for _ in range(rounds):
            moved = False
            for src, dst in (("pack", "module"), ("module", "pack")):
                for pdu in self.channels[src].frames_to_send():
                    moved = True
                    carried += 1
                    with contextlib.suppress(VerificationError):  # counted by the receiving channel
                        self._unit(src, dst, pdu, "resync control frame")
            if not moved:
                break
        return carried

    # -- internals ---------------------------------------------------------------------------

    def _validation_id(self, src: str) -> int:
        fields = _VALIDATION.id_fields(self.node, _DIRECTION[src], Tier.BINDING)
        return self.layout.encode(fields)

    def _broadcast(self, src: str, dst: str, data: bytes, function: str, what: str) -> bytes:
        if function not in BROADCAST_FUNCTIONS:
            raise ConfigError(f"{function} is not broadcast (ISO-TP carries it)")
        fn = function_named(function)
        assert transport_for(fn, Tier.BINDING, self.profile) is Transport.BROADCAST_FRAGMENTS
        can_id = self.layout.encode(fn.id_fields(self.node, _DIRECTION[src], Tier.BINDING))
        inbox = self._ends[dst].broadcast_queue(can_id)
        fragmenter = self._fragmenters.setdefault(can_id, Fragmenter(mtu=CLASSIC_MTU))
        try:
            for frame in fragmenter.fragment(data):
                self._ends[src].bus.send(can.Message(arbitration_id=can_id, is_extended_id=True, data=frame),
                                         timeout=self.timeout)  # fmt: skip
        except can.CanError as exc:
            raise TransportError(f"{self._where()}: {src} could not broadcast the {what}: {exc}") from None
        self._units.append((Transport.BROADCAST_FRAGMENTS.value, len(data)))
        try:
            return inbox.get(timeout=self.timeout)
        except queue.Empty:
            raise TransportError(
                f"{self._where()}: the {dst} did not receive the {what} ({len(data)} B, broadcast fragments) "
                f"within {self.timeout:g} s on {self.describe()}: frames lost"
            ) from None

    def _isotp(self, src: str, dst: str, txid: int, data: bytes, what: str) -> bytes:
        rxid = _reverse(self.layout, txid)
        fd = self.profile.fd
        sender = self._ends[src].link(txid, rxid, fd, self._params)
        receiver = self._ends[dst].link(rxid, txid, fd, self._params)
        try:
            sender.send(data, timeout=self.timeout)
        except (TransportError, ConfigError) as exc:
            raise TransportError(f"{self._where()}: {src} could not send the {what} over ISO-TP: {exc}") from None
        self._units.append((Transport.ISOTP.value, len(data)))
        got = receiver.recv(timeout=self.timeout)
        if got is None:
            raise TransportError(
                f"{self._where()}: the {dst} did not receive the {what} ({len(data)} B, ISO-TP) within "
                f"{self.timeout:g} s on {self.describe()}: frames lost"
            )
        return got

    def _unit(self, src: str, dst: str, pdu: SecuredPdu, what: str) -> Any:
        if pdu.single_frame:
            self._ends[dst].watch_single(pdu.can_id)
            try:
                self._ends[src].bus.send(
                    can.Message(arbitration_id=pdu.can_id, is_extended_id=True, data=pdu.data, is_fd=self.profile.fd),
                    timeout=self.timeout,
                )
            except can.CanError as exc:
                raise TransportError(f"{self._where()}: {src} could not send the {what}: {exc}") from None
            self._units.append((Transport.SINGLE_FRAME.value, len(pdu.data)))
            deadline = time.monotonic() + self.timeout
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = self._ends[dst].singles.get(timeout=left)
                except queue.Empty:
                    break
                if msg.arbitration_id == pdu.can_id:
                    return self.channels[dst].receive(msg.arbitration_id, bytes(msg.data))
            raise TransportError(
                f"{self._where()}: the {dst} did not receive the {what} (one frame) within {self.timeout:g} s "
                f"on {self.describe()}: frame lost"
            )
        data = self._isotp(src, dst, pdu.can_id, pdu.data, what)
        return self.channels[dst].receive(pdu.can_id, data, reassembled=True)

    def _through_channels(self, src: str, dst: str, data: bytes, what: str) -> bytes:
        if not all(p in self.channels for p in PARTIES):
            raise ConfigError("the paired levels need both ends' channels (channels={'pack': …, 'module': …})")
        self.pump()
        pdu = self.channels[src].send(MessageClass.VALIDATION, data)
        got = self._unit(src, dst, pdu, what)
        self.pump()
        if got is None:
            raise ModbattError(f"{self._where()}: the {dst}'s channel took the {what} for a control frame")
        return bytes(got.payload)

    def _where(self) -> str:
        return f"level {self._level}" if isinstance(self._level, int) else str(self._level or "validation bus")
