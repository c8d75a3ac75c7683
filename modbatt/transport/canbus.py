"""python-can buses from configuration: the one bus rule (docs/buses.md §2).

:func:`resolve_bus` is the only place a bus is chosen; every command, notebook and API call goes
through it (``BusConfig.resolve`` is the same function). It reads python-can's own configuration
in python-can's order, first source wins per key, exactly as :func:`can.util.load_config` merges
them: explicit arguments, ``can.rc``, the ``CAN_INTERFACE`` / ``CAN_CHANNEL`` / ``CAN_BITRATE`` /
``CAN_CONFIG`` environment variables (``_<CONTEXT>`` suffix first), then the config files
(``~/can.conf``, ``/etc/can.conf``, ``~/.can``, ``~/.canrc`` or ``config_file``), section
``[<context>]`` before ``[default]``. Then:

* nothing anywhere names a bus: the embedded ``virtual`` bus on a channel private to this call
  (one process only), or a :class:`~modbatt.errors.ConfigError` where the caller says a private
  bus is useless (``embedded=False``: a monitor, an entity served to other processes);
* a choice that is incomplete is a one-line ConfigError naming what is missing: a channel, a
  bitrate, ``fd`` without an interface; every interface but ``virtual`` needs its channel;
* ``run_id`` isolates one run's ``udp_multicast`` traffic: a group and port derived from it
  (:func:`run_udp_address`), or a virtual channel named after it.

The :class:`BusConfig` it returns says where the interface came from (:attr:`BusConfig.source`)
and describes itself (:meth:`BusConfig.describe`, :meth:`BusConfig.to_json`), so every output can
name the bus in use. Nothing is substituted silently: no default group, no fallback interface.

:func:`open_bus` hands the result to python-can unchanged, with local adjustments:

* ``udp_multicast`` opens an :class:`EchoFilteringUdpMulticastBus`, because python-can delivers a
  sender's own datagrams back to it (multicast loopback) and cannot filter them.
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

import configparser
import copy
import hashlib
import ipaddress
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
    "EMBEDDED_SOURCE",
    "BusConfig",
    "EchoFilteringUdpMulticastBus",
    "TolerantSlcanBus",
    "open_bus",
    "resolve_bus",
    "run_udp_address",
]

log = logging.getLogger(__name__)

#: The embedded bus: used only when nothing at all names a bus.
DEFAULT_INTERFACE = "virtual"
#: python-can's IPv4 fallback group, suggested in messages (a group is never filled in silently).
DEFAULT_UDP_GROUP = "239.74.163.2"
#: :attr:`BusConfig.source` of the embedded default.
EMBEDDED_SOURCE = "nothing configured"
#: Ports :func:`run_udp_address` derives: below Linux's ephemeral range (32768-60999), so a
#: run's group port never collides with a client socket the kernel picked.
RUN_PORTS = (20000, 32767)
#: python-can's ``UdpMulticastBus`` port when none is configured.
_UDP_DEFAULT_PORT = 43113

# Keys that BusConfig keeps as attributes; every other configuration key goes to ``kwargs``.
_OWN_KEYS = ("interface", "channel", "bitrate", "fd", "data_bitrate", "faults")
# Keys that describe *which* bus; a source naming any of them without an interface is incomplete.
_CHOICE_KEYS = ("channel", "bitrate", "fd", "data_bitrate")
# What a channel is for each interface, for the one-line error (python-can's documentation).
_CHANNEL_HINT = {
    "udp_multicast": f"a multicast group such as {DEFAULT_UDP_GROUP} (or a run id: --run-id)",
    "socketcan": "a network interface such as can0 or vcan0",
    "slcan": "the serial port, e.g. /dev/ttyACM0 or an emulator's pty",
    "pcan": "a PCAN channel such as PCAN_USBBUS1",
    "kvaser": "a Kvaser channel number such as 0",
    "vector": "a Vector channel number such as 0",
    "gs_usb": "a gs_usb channel such as 0",
}


def run_udp_address(run_id: str) -> tuple[str, int]:
    """The ``udp_multicast`` group and port of one run: ``239.x.y.z`` (RFC 2365 administratively
    scoped, TTL 1) and a port in :data:`RUN_PORTS`, from SHA-256 of the run id.

    Two runs with different ids land on different groups and ports (a collision needs both 24
    bits of group and the port to match); the same id always gives the same address, so a
    monitor started with the sim's run id hears that run and no other.
    """
    if not run_id or not str(run_id).strip():
        raise ConfigError("a run id must be a non-empty string")
    digest = hashlib.sha256(f"modbatt-run/{run_id}".encode()).digest()
    group = f"239.{1 + digest[0] % 254}.{digest[1]}.{1 + digest[2] % 254}"
    lo, hi = RUN_PORTS
    return group, lo + int.from_bytes(digest[3:5], "big") % (hi - lo + 1)


def _sources(path: str | os.PathLike[str] | None, context: str | None) -> list[tuple[str, Mapping[str, Any]]]:
    """python-can's configuration sources, in :func:`can.util.load_config`'s order, with a label each."""
    out: list[tuple[str, Mapping[str, Any]]] = [("can.rc", dict(can.rc))]
    try:
        if context:
            out.append((f"CAN_*_{context} environment", can.util.load_environment_config(context)))
        out.append(("CAN_* environment", can.util.load_environment_config()))
    except ValueError as exc:  # CAN_CONFIG that is not JSON
        raise ConfigError(f"CAN_CONFIG is not JSON: {exc}") from None
    for section in ([context] if context else []) + ["default"]:
        out.extend(_file_sources(path, section))
    return out


def _file_sources(path: str | os.PathLike[str] | None, section: str) -> list[tuple[str, Mapping[str, Any]]]:
    """One config section per file; later files win, as ConfigParser.read() of them all does."""
    files = [os.fspath(path)] if path is not None else [os.path.expanduser(f) for f in can.util.CONFIG_FILES]
    out = []
    for name in reversed(files):
        parser = configparser.ConfigParser()
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case, as python-can
        try:
            parser.read(name)
        except configparser.Error as exc:
            raise ConfigError(f"python-can config file {name}: {exc}") from None
        if parser.has_section(section):
            out.append((f"{name} [{section}]", dict(parser.items(section))))
    return out


def _first(sources: list[tuple[str, Mapping[str, Any]]], key: str) -> tuple[str, Any] | None:
    for label, values in sources:
        value = values.get(key)
        if key == "interface" and not value:
            value = values.get("bustype")
        if value not in (None, ""):
            return label, value
    return None


def resolve_bus(
    interface: str | None = None,
    channel: Any = None,
    bitrate: int | None = None,
    *,
    fd: bool | None = None,
    data_bitrate: int | None = None,
    faults: str | FaultSpec | None = None,
    options: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    context: str | None = None,
    ignore_config: bool = False,
    embedded: bool = True,
    purpose: str = "this",
    **kwargs: Any,
) -> BusConfig:
    """The bus to use: python-can's configuration merged with explicit arguments, checked complete.

    ``interface``, ``channel``, ``bitrate``, ``fd``, ``data_bitrate`` and ``options`` (any other
    backend keyword, e.g. ``{"port": 43113}``; ``**kwargs`` likewise) win over ``can.rc``, the
    ``CAN_*`` environment and the config files (``config_file``, section ``context`` before
    ``default``); ``ignore_config=True`` uses the arguments alone. ``run_id`` fills a
    ``udp_multicast`` group and port (:func:`run_udp_address`) or a ``virtual`` channel that the
    configuration leaves open. When nothing names a bus at all, the embedded ``virtual`` bus on a
    private channel is used, unless ``embedded=False`` (then a ConfigError that says ``purpose``
    needs a bus). Raises :class:`~modbatt.errors.ConfigError`, one line naming what is missing or
    wrong, for an incomplete or unusable choice; never substitutes another bus.
    """
    given: dict[str, Any] = {k: v for k, v in {**dict(options or {}), **kwargs}.items() if v is not None}
    for key, value in {
        "interface": interface, "channel": channel, "bitrate": bitrate, "fd": fd, "data_bitrate": data_bitrate,
        "faults": faults,
    }.items():  # fmt: skip
        if value is not None:
            given[key] = value
    if config_file is not None and not ignore_config and not os.path.isfile(config_file):
        raise ConfigError(f"no such python-can config file: {os.fspath(config_file)!r}")
    sources = [("arguments", given)] + ([] if ignore_config else _sources(config_file, context))
    named = _first(sources, "interface")
    if named is None:
        stray = [(key, hit) for key in _CHOICE_KEYS if (hit := _first(sources, key)) is not None]
        if stray:
            key, (label, value) = stray[0]
            raise ConfigError(
                f"incomplete bus choice: {key}={value!r} (from {label}) but no interface; name one "
                f"(--interface, CAN_INTERFACE or interface= in a python-can config file)"
            )
        if not embedded:
            raise ConfigError(
                f"no bus chosen, and {purpose} needs one that other processes share (the embedded virtual bus "
                f"is private to one process): pass --interface and --channel (e.g. -i udp_multicast -c "
                f"{DEFAULT_UDP_GROUP}), set CAN_INTERFACE and CAN_CHANNEL, or write a python-can config file"
            )
        name = f"modbatt-run-{run_id}" if run_id else f"modbatt-private-{secrets.token_hex(6)}"
        return BusConfig.from_mapping(
            {**given, "interface": DEFAULT_INTERFACE, "channel": name}, source=EMBEDDED_SOURCE
        )
    source = named[0]
    if ignore_config:
        merged = dict(given)
    else:
        try:
            merged = dict(can.util.load_config(path=config_file, config=given, context=context))
        except can.CanInterfaceNotImplementedError as exc:
            raise ConfigError(
                f"unknown CAN interface {named[1]!r} (from {source}); python-can knows: "
                f"{', '.join(sorted(VALID_INTERFACES))}"
            ) from exc
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"unusable python-can configuration: {exc}") from exc
    merged = {k: v for k, v in merged.items() if v is not None}
    iface = str(merged.get("interface"))
    if run_id is not None:
        _apply_run_id(merged, iface, run_id)
    if merged.get("channel") in (None, ""):
        if iface != DEFAULT_INTERFACE:
            hint = _CHANNEL_HINT.get(iface, "the backend's channel name")
            raise ConfigError(
                f"incomplete bus choice: interface {iface} (from {source}) needs a channel, {hint}: "
                f"pass --channel, set CAN_CHANNEL, or add channel= to the python-can config file"
            )
        # virtual chosen without a channel: this call's own channel, named in every description.
        merged["channel"] = f"modbatt-private-{secrets.token_hex(6)}"
    return BusConfig.from_mapping(merged, source=source)


def _apply_run_id(merged: dict[str, Any], interface: str, run_id: str) -> None:
    """Fill what the configuration left open from ``run_id`` (explicit values win)."""
    if interface == "udp_multicast":
        group, port = run_udp_address(run_id)
        merged.setdefault("channel", group)
        merged.setdefault("port", port)
    elif interface == DEFAULT_INTERFACE:
        merged.setdefault("channel", f"modbatt-run-{run_id}")
    else:
        raise ConfigError(
            f"a run id isolates udp_multicast and virtual buses; {interface} is a bus of its own: "
            f"give each run its own channel instead (e.g. one vcan interface per run)"
        )


def _check_multicast_group(channel: Any) -> None:
    """A udp_multicast channel is a multicast group address; anything else fails before any work."""
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
    behind a fault-injecting wrapper. ``source`` says where the interface came from. Build one
    with :func:`resolve_bus` (the bus rule); constructing one directly is taking it as given.
    """

    interface: str = DEFAULT_INTERFACE
    channel: Any = None
    bitrate: int | None = None
    fd: bool = False
    data_bitrate: int | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    faults: FaultSpec | None = None
    source: str = field(default="arguments", compare=False)

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
        port = self.kwargs.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise ConfigError(f"port must be an integer 1-65535, got {port!r}")
        clash = set(self.kwargs) & set(_OWN_KEYS)
        if clash:
            raise ConfigError(f"pass {', '.join(sorted(clash))} as BusConfig fields, not in kwargs")

    @classmethod
    def resolve(cls, *args: Any, **kwargs: Any) -> BusConfig:
        """:func:`resolve_bus` (the bus rule), as a constructor."""
        return resolve_bus(*args, **kwargs)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any], *, source: str = "arguments") -> BusConfig:
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
            if isinstance(rest.get("port"), str):
                rest["port"] = int(rest["port"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bitrate values and port must be integers: {exc}") from exc
        return cls(
            interface=str(interface),
            channel=channel,
            bitrate=bitrate,
            fd=fd not in (0, False, None, "0", "false", "False"),
            data_bitrate=data_bitrate,
            kwargs=rest,
            faults=faults,
            source=source,
        )

    @property
    def embedded(self) -> bool:
        """True for the embedded default: a virtual bus nothing outside this process can reach."""
        return self.source == EMBEDDED_SOURCE

    def options(self) -> dict[str, Any]:
        """Everything but interface and channel, as :func:`resolve_bus` takes it in ``options``.

        ``resolve_bus(c.interface, c.channel, options=c.options())`` is this bus again: how
        ``modbatt run`` hands a resolved bus to a notebook's ``bus_options`` parameter, and a
        process started here (``modbatt sim``) its ``--bus-option`` flags.
        """
        out = dict(self.kwargs)
        if self.bitrate is not None:
            out["bitrate"] = self.bitrate
        if self.fd:
            out["fd"] = True
        if self.data_bitrate is not None:
            out["data_bitrate"] = self.data_bitrate
        if self.faults is not None:
            out["faults"] = str(self.faults)
        return out

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

    def describe(self, *, source: bool = False) -> str:
        """One line for people: ``udp_multicast 239.74.163.2 port 43113``, ``slcan /dev/pts/3 500000 bit/s``;
        ``source=True`` adds where the choice came from."""
        parts = [self.interface]
        if self.channel is not None:
            parts.append(str(self.channel))
        if self.interface == "udp_multicast":
            parts.append(f"port {self.kwargs.get('port', _UDP_DEFAULT_PORT)}")
        if self.bitrate is not None:
            parts.append(f"{self.bitrate} bit/s")
        if self.fd:
            parts.append("FD" + (f" data {self.data_bitrate} bit/s" if self.data_bitrate else ""))
        if self.faults is not None:
            parts.append(f"with faults ({self.faults})")
        if self.embedded:
            parts.append("(the embedded default, nothing configured: this process only)")
        elif source:
            parts.append(f"(from {self.source})")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The bus for JSON outputs: what was opened and where the choice came from."""
        out: dict[str, Any] = {
            "interface": self.interface,
            "channel": None if self.channel is None else str(self.channel),
            "bitrate": self.bitrate,
            "fd": self.fd,
            "data_bitrate": self.data_bitrate,
            "source": self.source,
            "description": self.describe(),
        }
        if self.interface == "udp_multicast":
            out["port"] = self.kwargs.get("port", _UDP_DEFAULT_PORT)
        if self.faults is not None:
            out["faults"] = str(self.faults)
        return out


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
        port: int = _UDP_DEFAULT_PORT,
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
    if config.channel is None:
        raise ConfigError(f"udp_multicast needs a channel: {_CHANNEL_HINT['udp_multicast']}")
    return EchoFilteringUdpMulticastBus(channel=str(config.channel), **kw)


def _open_slcan(config: BusConfig) -> can.BusABC:
    kw = config.bus_kwargs()
    kw.setdefault("sleep_after_open", 0)  # python-can sleeps 2 s per open otherwise
    kw.pop("fd", None)
    data_bitrate = kw.pop("data_bitrate", None)
    if config.channel is None:
        raise ConfigError(f"slcan needs a channel: {_CHANNEL_HINT['slcan']}")
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
    """Open the bus that ``config`` describes (:func:`resolve_bus` when ``None``).

    Raises :class:`~modbatt.errors.ConfigError` for arguments the backend rejects and
    :class:`~modbatt.errors.TransportError` when the bus cannot be opened (no device, no
    multicast route, missing driver library …). The caller owns the bus: ``shutdown()`` it,
    or use it as a context manager. With ``config.faults`` the bus returned is a
    :class:`~modbatt.transport.faultbus.FaultBus` that owns the interface it wraps.
    """
    if config is None:
        config = resolve_bus()
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
