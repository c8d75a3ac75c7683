"""python-can buses from configuration (DESIGN §6).

:class:`BusConfig` follows python-can's own configuration conventions: explicit arguments win over
``can.rc``, the ``CAN_INTERFACE`` / ``CAN_CHANNEL`` / ``CAN_BITRATE`` / ``CAN_CONFIG`` environment
variables and the config files (``~/can.conf``, ``~/.canrc`` …), exactly as
:func:`can.util.load_config` merges them. Where nothing names an interface, modbatt picks
``virtual`` (python-can itself would refuse), so tests and notebooks run anywhere.

:func:`open_bus` hands the result to python-can unchanged, with three local adjustments:

* ``udp_multicast`` opens an :class:`EchoFilteringUdpMulticastBus`, because python-can delivers a
  sender's own datagrams back to it (multicast loopback) and cannot filter them;
  with no channel it uses python-can's IPv4 group, since the IPv6 default group silently delivers
  nothing on loopback-only hosts and in containers.
* ``slcan`` opens a :class:`TolerantSlcanBus`, gets ``sleep_after_open=0`` unless set (python-can's
  default sleeps 2 s per open), and a ``data_bitrate`` is applied after opening (python-can's
  slcan has no such argument).
* everything else (socketcan, pcan, kvaser, vector, …) is passed through as configured.
* a ``faults`` spec (:class:`~modbatt.transport.faultbus.FaultSpec`, e.g.
  ``"loss=0.1,dup=0.02,seed=7"``) wraps whatever was opened in a
  :class:`~modbatt.transport.faultbus.FaultBus`.

Malformed input never ends a receive loop: python-can raises from ``recv()`` for a datagram that
is not a frame (udp_multicast) or a garbled adapter line (slcan), which would end a
``can.Notifier`` thread for good. Both adapters here drop such input and count it in
``malformed`` (docs/buses.md, "Malformed input"); real I/O failures still raise.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import can
import can.util
from can.interfaces import VALID_INTERFACES
from can.interfaces.slcan import slcanBus
from can.interfaces.udp_multicast import UdpMulticastBus

from ..errors import ConfigError, TransportError
from .faultbus import FaultBus, FaultSpec

__all__ = [
    "DEFAULT_INTERFACE",
    "DEFAULT_UDP_GROUP",
    "BusConfig",
    "EchoFilteringUdpMulticastBus",
    "TolerantSlcanBus",
    "open_bus",
]

log = logging.getLogger(__name__)

#: The interface used when neither arguments nor python-can configuration name one.
DEFAULT_INTERFACE = "virtual"
#: python-can's IPv4 fallback group; modbatt's default for ``udp_multicast`` (see module doc).
DEFAULT_UDP_GROUP = "239.74.163.2"
_PYTHON_CAN_IPV6_GROUP = "ff15:7079:7468:6f6e:6465:6d6f:6d63:6173"

# Keys that BusConfig keeps as attributes; every other configuration key goes to ``kwargs``.
_OWN_KEYS = ("interface", "channel", "bitrate", "fd", "data_bitrate", "faults")


def _configured_interface(path: str | os.PathLike[str] | None, context: str | None) -> Any:
    """The interface that python-can's configuration sources name, or ``None``.

    Mirrors the source order of :func:`can.util.load_config` so that modbatt's default only
    applies where python-can would have found nothing at all.
    """
    sources: list[Mapping[str, Any]] = [
        can.rc,
        can.util.load_environment_config(context),
        can.util.load_environment_config(),
    ]
    if context:
        sources.append(can.util.load_file_config(path, context))
    sources.append(can.util.load_file_config(path))
    for source in sources:
        value = source.get("interface") or source.get("bustype")
        if value:
            return value
    return None


def _check_multicast_group(channel: Any) -> None:
    """A udp_multicast channel is a multicast group address; anything else fails before any work."""
    import ipaddress

    try:
        group = ipaddress.ip_address(str(channel).strip("[]"))
    except ValueError:
        group = None
    if group is None or not group.is_multicast:
        raise ConfigError(
            f"udp_multicast channel {str(channel)!r} is not a multicast group address "
            f"(IPv4 224.0.0.0/4, e.g. {DEFAULT_UDP_GROUP}, or IPv6 ff00::/8)"
        )


@dataclass(frozen=True)
class BusConfig:
    """Everything needed to open one CAN bus through python-can.

    ``interface`` and ``channel`` use python-can's names (``virtual``, ``udp_multicast``,
    ``slcan``, ``socketcan``, ``pcan`` …). ``fd`` asks for CAN FD where the backend knows the
    ``fd`` argument; ``data_bitrate`` is the FD data-phase rate. ``kwargs`` carries any other
    backend argument (``port``, ``receive_own_messages``, ``timing``, ``tty_baudrate`` …).
    ``faults`` (a :class:`~modbatt.transport.faultbus.FaultSpec` or its text) opens the bus
    behind a fault-injecting wrapper. Build one with :meth:`resolve` to honour python-can's
    config files and environment.
    """

    interface: str = DEFAULT_INTERFACE
    channel: Any = None
    bitrate: int | None = None
    fd: bool = False
    data_bitrate: int | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    faults: FaultSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "faults", FaultSpec.parse(self.faults))
        if self.interface not in VALID_INTERFACES:
            known = ", ".join(sorted(VALID_INTERFACES))
            raise ConfigError(f"unknown CAN interface {self.interface!r}; python-can knows: {known}")
        for name in ("bitrate", "data_bitrate"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer in bit/s, got {value!r}")
        if self.data_bitrate is not None and not self.fd:
            raise ConfigError("data_bitrate needs fd=True (it is the CAN FD data-phase rate)")
        if self.interface == "udp_multicast" and self.channel is not None:
            _check_multicast_group(self.channel)
        clash = set(self.kwargs) & set(_OWN_KEYS)
        if clash:
            raise ConfigError(f"pass {', '.join(sorted(clash))} as BusConfig fields, not in kwargs")

    @classmethod
    def resolve(
        cls,
        interface: str | None = None,
        channel: Any = None,
        bitrate: int | None = None,
        *,
        fd: bool | None = None,
        data_bitrate: int | None = None,
        faults: str | FaultSpec | None = None,
        config_file: str | os.PathLike[str] | None = None,
        context: str | None = None,
        ignore_config: bool = False,
        **kwargs: Any,
    ) -> BusConfig:
        """Merge explicit arguments with python-can's configuration sources.

        Arguments left ``None`` are looked up like :func:`can.Bus` does (``can.rc``, environment
        variables, then ``config_file`` or python-can's default files, section ``context`` before
        ``default``). ``ignore_config=True`` uses the arguments alone. Raises
        :class:`~modbatt.errors.ConfigError` for an unknown interface or unusable value.
        """
        given: dict[str, Any] = {
            key: value
            for key, value in {
                "interface": interface,
                "channel": channel,
                "bitrate": bitrate,
                "fd": fd,
                "data_bitrate": data_bitrate,
                "faults": faults,
                **kwargs,
            }.items()
            if value is not None
        }
        if "interface" not in given and (ignore_config or _configured_interface(config_file, context) is None):
            given["interface"] = DEFAULT_INTERFACE
        if ignore_config:
            merged = dict(given)
        else:
            try:
                merged = dict(can.util.load_config(path=config_file, config=given, context=context))
            except can.CanInterfaceNotImplementedError as exc:
                raise ConfigError(f"{exc}; python-can knows: {', '.join(sorted(VALID_INTERFACES))}") from exc
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"unusable python-can configuration: {exc}") from exc
        return cls.from_mapping(merged)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> BusConfig:
        """Build from a python-can style dict (``interface``, ``channel``, ``bitrate`` … ``**extra``)."""
        rest = dict(config)
        interface = rest.pop("interface", None) or rest.pop("bustype", None) or DEFAULT_INTERFACE
        rest.pop("bustype", None)
        channel = rest.pop("channel", None)
        bitrate = rest.pop("bitrate", None)
        fd = rest.pop("fd", False)
        data_bitrate = rest.pop("data_bitrate", None)
        faults = rest.pop("faults", None)
        try:
            bitrate = None if bitrate is None else int(bitrate)
            data_bitrate = None if data_bitrate is None else int(data_bitrate)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bitrate values must be integers in bit/s: {exc}") from exc
        return cls(
            interface=str(interface),
            channel=channel,
            bitrate=bitrate,
            fd=fd not in (0, False, None, "0", "false", "False"),
            data_bitrate=data_bitrate,
            kwargs=rest,
            faults=faults,
        )

    def bus_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the python-can bus class (without interface and channel)."""
        kw = dict(self.kwargs)
        if self.bitrate is not None:
            kw["bitrate"] = self.bitrate
        if self.fd:
            # python-can's conventional key; backends without FD swallow it via **kwargs.
            kw["fd"] = True
        if self.data_bitrate is not None:
            kw["data_bitrate"] = self.data_bitrate
        return kw

    def describe(self) -> str:
        """One line for people: ``slcan /dev/pts/3 500000 bit/s``."""
        parts = [self.interface]
        if self.channel is not None:
            parts.append(str(self.channel))
        if self.bitrate is not None:
            parts.append(f"{self.bitrate} bit/s")
        if self.fd:
            parts.append("FD" + (f" data {self.data_bitrate} bit/s" if self.data_bitrate else ""))
        if self.faults is not None:
            parts.append(f"with faults ({self.faults})")
        return " ".join(parts)


class EchoFilteringUdpMulticastBus(UdpMulticastBus):
    """``udp_multicast`` without the sender's own frames coming back.

    Multicast loopback hands every datagram to every socket on the host that joined the group,
    the sender's included, and python-can cannot tell them apart. This bus marks each frame it
    sends with a random per-instance tag carried in the message's ``channel`` field (python-can
    packs that field into the datagram and restores it on the receiving side). A received frame
    carrying this instance's tag is its own echo: dropped, or with ``receive_own_messages=True``
    delivered with ``is_rx=False`` as other backends do. Other modbatt senders' tags are
    replaced by ``None`` so peers see what plain python-can senders produce.

    Limits: the filter is exact (no guessing by ID or data, so two nodes sending identical frames
    are both seen), but peers that are plain python-can ``udp_multicast`` buses see the tag
    string as ``msg.channel``; frames are still UDP (unordered, may be lost under load) and an
    unread socket overflows after a few hundred datagrams, so read continuously.
    """

    TAG_PREFIX = "modbatt-udp/"

    def __init__(
        self,
        channel: str = DEFAULT_UDP_GROUP,
        port: int = 43113,
        hop_limit: int = 1,
        receive_own_messages: bool = False,
        fd: bool = True,
        **kwargs: Any,
    ) -> None:
        # pid + 64 random bits: unique among buses of one process and across processes.
        self._tag = f"{self.TAG_PREFIX}{os.getpid()}/{secrets.token_hex(8)}"
        self._receive_own = bool(receive_own_messages)
        #: Own echoes dropped so far (a health figure: it should track frames sent).
        self.echoes_dropped = 0
        #: Datagrams that are not a python-can frame (not msgpack, bad fields), dropped.
        self.malformed = 0
        self.group = channel
        self.port = port
        # python-can rejects receive_own_messages=True for this interface; we implement it.
        super().__init__(channel=channel, port=port, hop_limit=hop_limit, fd=fd, **kwargs)
        self.channel_info = f"udp_multicast {channel} port {port} (own echoes filtered)"

    @property
    def tag(self) -> str:
        """The marker this instance puts in ``msg.channel`` of every frame it sends."""
        return self._tag

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        # Copy so the caller's Message (possibly shared with other threads) is not mutated.
        tagged = copy.copy(msg)
        tagged.channel = self._tag
        super().send(tagged, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        try:
            msg, already_filtered = super()._recv_internal(timeout)
        except can.CanOperationError as exc:
            # python-can chains the socket's OSError for real I/O failures; anything else is a
            # datagram it could not unpack, which any local process can send without a key.
            if isinstance(exc.__cause__, OSError):
                raise
            self.malformed += 1
            log.debug("udp_multicast: dropped a datagram that is not a CAN frame (%s)", exc.__cause__)
            return None, False
        if msg is None:
            return None, already_filtered
        if msg.channel == self._tag:
            if not self._receive_own:
                self.echoes_dropped += 1
                # BusABC.recv() keeps waiting for the rest of the timeout after a None.
                return None, False
            msg.is_rx = False
            msg.channel = None
        elif isinstance(msg.channel, str) and msg.channel.startswith(self.TAG_PREFIX):
            msg.channel = None
        return msg, already_filtered


class TolerantSlcanBus(slcanBus):
    """python-can's ``slcan`` adapter, dropping garbled lines instead of raising from ``recv()``.

    A line from the adapter whose ID, DLC or data do not parse makes python-can's parser raise
    ``ValueError`` or ``IndexError`` (or build a frame with fewer data bytes than its DLC); a byte
    that is not ASCII makes its reader raise
    ``CanOperationError`` and keep the bad bytes in its line buffer, so every later read fails
    too. Here both are dropped, the buffer is cleared, and :attr:`malformed` counts them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Lines from the adapter that are not a frame (bad hex, bad DLC, not ASCII), dropped.
        self.malformed = 0
        super().__init__(*args, **kwargs)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        try:
            msg, filtered = super()._recv_internal(timeout)
            if msg is not None and not msg.is_remote_frame and len(msg.data) != msg.dlc:
                # python-can takes fewer data digits than the DLC announces; an adapter never sends that.
                self.malformed += 1
                return None, False
            return msg, filtered
        except (ValueError, IndexError):  # int(), bytearray.fromhex(), CAN_FD_DLC[] on a garbled line
            self.malformed += 1
            return None, False
        except can.CanOperationError as exc:
            if not isinstance(exc.__cause__, UnicodeDecodeError):
                raise
            self._buffer.clear()  # python-can's line buffer (can/interfaces/slcan.py) still holds them
            self.malformed += 1
            return None, False


def _open_udp_multicast(config: BusConfig) -> can.BusABC:
    kw = config.bus_kwargs()
    kw.pop("bitrate", None)  # a UDP group has no bit rate; python-can would only ignore it
    kw.pop("data_bitrate", None)
    channel = config.channel if config.channel is not None else DEFAULT_UDP_GROUP
    try:
        return EchoFilteringUdpMulticastBus(channel=str(channel), **kw)
    except can.CanInitializationError as exc:
        if channel != _PYTHON_CAN_IPV6_GROUP:
            raise
        # python-can's IPv6 default fails where the host has no IPv6 multicast: use its IPv4 group.
        log.warning("udp_multicast: IPv6 group failed (%s); using IPv4 group %s", exc, DEFAULT_UDP_GROUP)
        return EchoFilteringUdpMulticastBus(channel=DEFAULT_UDP_GROUP, **kw)


def _open_slcan(config: BusConfig) -> can.BusABC:
    kw = config.bus_kwargs()
    kw.setdefault("sleep_after_open", 0)  # python-can sleeps 2 s per open otherwise
    kw.pop("fd", None)
    data_bitrate = kw.pop("data_bitrate", None)
    if config.channel is None:
        raise ConfigError("slcan needs a channel: the serial port, e.g. /dev/ttyACM0 or an emulator's pty")
    bus = TolerantSlcanBus(channel=config.channel, **kw)
    if data_bitrate is not None:
        if config.bitrate is None:
            bus.shutdown()
            raise ConfigError("slcan: a data_bitrate needs a nominal bitrate as well")
        try:
            bus.set_bitrate(config.bitrate, data_bitrate)  # type: ignore[attr-defined]
        except ValueError as exc:
            bus.shutdown()
            raise ConfigError(f"slcan: {exc}") from exc
    return bus


def open_bus(config: BusConfig | None = None) -> can.BusABC:
    """Open the bus that ``config`` describes (``BusConfig.resolve()`` when ``None``).

    Raises :class:`~modbatt.errors.ConfigError` for arguments the backend rejects and
    :class:`~modbatt.errors.TransportError` when the bus cannot be opened (no device, no
    multicast route, missing driver library …). The caller owns the bus: ``shutdown()`` it,
    or use it as a context manager. With ``config.faults`` the bus returned is a
    :class:`~modbatt.transport.faultbus.FaultBus` that owns the interface it wraps.
    """
    if config is None:
        config = BusConfig.resolve()
    bus = _open_inner(config)
    return bus if config.faults is None else FaultBus(bus, config.faults)


def _open_inner(config: BusConfig) -> can.BusABC:
    try:
        if config.interface == "udp_multicast":
            return _open_udp_multicast(config)
        if config.interface == "slcan":
            return _open_slcan(config)
        kw = config.bus_kwargs()
        if config.channel is not None:
            kw["channel"] = config.channel
        return can.Bus(interface=config.interface, ignore_config=True, **kw)
    except ConfigError:
        raise
    except can.CanInterfaceNotImplementedError as exc:
        raise TransportError(f"cannot open {config.describe()}: backend unavailable: {exc}") from exc
    except (can.CanError, OSError) as exc:
        # python-can often wraps the OS error: name it once, whichever layer holds it.
        cause = str(exc.__cause__) if exc.__cause__ is not None else ""
        detail = f"{exc} ({cause})" if cause and cause not in str(exc) else str(exc)
        raise TransportError(f"cannot open {config.describe()}: {detail}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot open {config.describe()}: {exc}") from exc
