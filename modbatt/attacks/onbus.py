"""The attacker as a node on a real bus: every frame a CAN scenario plays crosses python-can.

Inside :func:`attack_bus`, the link ends scenarios get from :meth:`Pack.link
<modbatt.attacks._world.Pack.link>` are the entities' own channels behind an :class:`OnBusChannel`:
sending is unchanged (the channel protects the unit), but everything a scenario *delivers* to a
victim (a genuine frame, its replay, a forgery, a flood, resync control frames) is transmitted by
the attacker's own bus handle, heard by the victims' handle on the same channel (single frames
through its acceptance of that identifier, multi-frame units through an ISO-TP link of the
victim's that answers flow control), and only what the victim's handle heard reaches the
victim's channel (its real receive path: policy check, freshness window, MAC or signature).
Broadcast fragments (the fragment scenarios) reach the victim's reassembler the same way. A
listen-only tap counts the frames of each scenario.

A frame the victim's handle does not hear within ``timeout`` raises
:class:`~modbatt.errors.TransportError`: a lossy bus fails the scenario loudly instead of
counting a lost frame as refused. Outside :func:`attack_bus` everything stays in process.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import can

from ..can.ids import SEED_LAYOUT
from ..errors import ConfigError, TransportError
from ..transport.canbus import BusConfig, open_bus
from ..transport.isotp_link import IsoTpLink
from ..transport.tap import BusTap

__all__ = ["AttackBus", "OnBusChannel", "active", "attack_bus"]

#: can-isotp logs every frame its links refuse; the links count them (IsoTpLink.reports), and an
#: attacker's frames are refused by design, so that log stays quiet here.
_ISOTP_LOGGER = "modbatt.attacks.isotp"
_quiet = logging.getLogger(_ISOTP_LOGGER)
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False
_LINK_PARAMS = {"logger_name": _ISOTP_LOGGER}

_ACTIVE: contextvars.ContextVar[AttackBus | None] = contextvars.ContextVar("modbatt_attack_bus", default=None)


def active() -> AttackBus | None:
    """The bus scenarios run on in this context, or ``None`` (in process)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def attack_bus(config: BusConfig | None, *, timeout: float = 2.0) -> Iterator[AttackBus | None]:
    """Run the scenarios inside on ``config`` (``None``: in process, nothing opened)."""
    if config is None:
        yield None
        return
    with AttackBus(config, timeout=timeout) as bus:
        token = _ACTIVE.set(bus)
        try:
            yield bus
        finally:
            _ACTIVE.reset(token)


def _reverse(can_id: int) -> int:
    """The other direction of the same connection (ISO-TP flow control travels there)."""
    try:
        fields = SEED_LAYOUT.decode(can_id)
        return SEED_LAYOUT.encode(dataclasses.replace(fields, direction=1 - fields.direction))
    except Exception:  # an ID the layout refuses: any distinct ID carries the flow control
        return can_id ^ 1


class _Hearing(can.Listener):
    """The victims' handle: hands over the single frames it was told to expect."""

    def __init__(self) -> None:
        self._expected: dict[int, int] = {}
        self._lock = threading.Lock()
        self.heard: queue.Queue[can.Message] = queue.Queue()

    def expect(self, can_id: int) -> None:
        with self._lock:
            self._expected[can_id] = self._expected.get(can_id, 0) + 1

    def on_message_received(self, msg: can.Message) -> None:
        with self._lock:
            left = self._expected.get(msg.arbitration_id, 0)
            if not left:
                return  # not addressed to a victim of this scenario (ISO-TP frames go to the links)
            self._expected[msg.arbitration_id] = left - 1
        self.heard.put(msg)


class AttackBus:
    """The attacker's bus handle, the victims' handle and a tap, all on one channel."""

    def __init__(self, config: BusConfig, *, timeout: float = 2.0) -> None:
        if timeout <= 0:
            raise ConfigError("timeout must be positive")
        self.config = config
        self.timeout = timeout
        self._stack = contextlib.ExitStack()
        self._attacker_links: dict[int, IsoTpLink] = {}
        self._victim_links: dict[int, IsoTpLink] = {}
        self._wrapped: dict[int, OnBusChannel] = {}
        #: Frames the attacker node transmitted (single frames and ISO-TP units' frames are counted by the tap).
        self.sent_frames = 0
        self.sent_units = 0
        try:
            self.tap = BusTap(open_bus(config))
            self._stack.callback(self.tap.close)
            self.attacker = open_bus(config)
            self._stack.callback(self.attacker.shutdown)
            self._attacker_notifier = can.Notifier(self.attacker, [], timeout=0.02)
            self._stack.callback(self._attacker_notifier.stop)
            self.victims = open_bus(config)
            self._stack.callback(self.victims.shutdown)
            self._hearing = _Hearing()
            self._victim_notifier = can.Notifier(self.victims, [self._hearing], timeout=0.02)
            self._stack.callback(self._victim_notifier.stop)
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        for link in (*self._attacker_links.values(), *self._victim_links.values()):
            with contextlib.suppress(Exception):
                link.close()
        self._attacker_links.clear()
        self._victim_links.clear()
        self._stack.close()

    def __enter__(self) -> AttackBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wrap(self, channel: Any) -> OnBusChannel:
        """``channel`` with its receive path on this bus (one wrapper per channel object)."""
        key = id(channel)
        if key not in self._wrapped or self._wrapped[key].channel is not channel:
            self._wrapped[key] = OnBusChannel(self, channel)
        return self._wrapped[key]

    def hear(self, can_id: int, data: bytes, *, fd: bool = False) -> bytes:
        """The attacker node sends one frame; returns its data as the victims' handle heard it."""
        self._hearing.expect(can_id)
        msg = can.Message(arbitration_id=can_id, is_extended_id=True, data=bytes(data), is_fd=fd or len(data) > 8)
        try:
            self.attacker.send(msg, timeout=self.timeout)
        except can.CanError as exc:
            raise TransportError(f"the attacker node could not send 0x{can_id:08X}: {exc}") from None
        self.sent_frames += 1
        try:
            heard = self._hearing.heard.get(timeout=self.timeout)
        except queue.Empty:
            raise TransportError(
                f"the victims did not hear frame 0x{can_id:08X} within {self.timeout:g} s on "
                f"{self.config.describe()}: frame lost"
            ) from None
        return bytes(heard.data)

    def hear_many(self, frames: list[tuple[int, bytes]], *, batch: int = 256) -> list[can.Message]:
        """The attacker node sends many single frames; returns them as the victims' handle heard them.

        Sent ``batch`` at a time and collected before the next batch (a reader that keeps up with
        the sender: an unread UDP socket overflows). In arrival order; a frame not heard within
        ``timeout`` raises :class:`~modbatt.errors.TransportError`.
        """
        heard: list[can.Message] = []
        for start in range(0, len(frames), batch):
            chunk = frames[start : start + batch]
            for can_id, data in chunk:
                self._hearing.expect(can_id)
                msg = can.Message(arbitration_id=can_id, is_extended_id=True, data=bytes(data), is_fd=len(data) > 8)
                try:
                    self.attacker.send(msg, timeout=self.timeout)
                except can.CanError as exc:
                    raise TransportError(f"the attacker node could not send 0x{can_id:08X}: {exc}") from None
                self.sent_frames += 1
            for _ in chunk:
                try:
                    heard.append(self._hearing.heard.get(timeout=self.timeout))
                except queue.Empty:
                    raise TransportError(
                        f"the victims heard {len(heard)} of {start + len(chunk)} flood frames within "
                        f"{self.timeout:g} s on {self.config.describe()}: frames lost"
                    ) from None
        return heard

    def hear_unit(self, can_id: int, data: bytes, *, fd: bool = False) -> bytes:
        """The attacker node sends one multi-frame unit over ISO-TP; returns it as the victim reassembled it."""
        reverse = _reverse(can_id)
        if can_id not in self._victim_links:
            self._victim_links[can_id] = IsoTpLink(
                self.victims, reverse, can_id, fd, params=_LINK_PARAMS, notifier=self._victim_notifier
            )
        if can_id not in self._attacker_links:
            self._attacker_links[can_id] = IsoTpLink(
                self.attacker, can_id, reverse, fd, params=_LINK_PARAMS, notifier=self._attacker_notifier
            )
        try:
            self._attacker_links[can_id].send(data, timeout=self.timeout)
        except (TransportError, ConfigError) as exc:
            raise TransportError(f"the attacker node could not send a unit on 0x{can_id:08X}: {exc}") from None
        self.sent_units += 1
        got = self._victim_links[can_id].recv(timeout=self.timeout)
        if got is None:
            raise TransportError(
                f"the victim did not reassemble the unit on 0x{can_id:08X} within {self.timeout:g} s on "
                f"{self.config.describe()}: frames lost"
            )
        return got


class OnBusChannel:
    """A victim's :class:`~modbatt.nodes.channel.PairedChannel` whose receive path is the bus.

    ``receive`` puts the unit on the bus from the attacker's node and gives the channel what the
    victims' handle heard; everything else (``send``, ``rejects``, ``frames_to_send`` …) is the
    channel's own.
    """

    def __init__(self, bus: AttackBus, channel: Any) -> None:
        self.bus = bus
        self.channel = channel

    def receive(self, can_id: int, data: bytes, *, reassembled: bool = False) -> Any:
        fd = bool(getattr(self.channel, "profile", None) and self.channel.profile.fd)
        heard = self.bus.hear_unit(can_id, data, fd=fd) if reassembled else self.bus.hear(can_id, data, fd=fd)
        return self.channel.receive(can_id, heard, reassembled=reassembled)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)
