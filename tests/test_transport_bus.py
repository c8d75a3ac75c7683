"""BusConfig follows python-can's configuration conventions; open_bus opens what it describes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import can
import pytest

from modbatt.errors import ConfigError, TransportError
from modbatt.transport import canbus
from modbatt.transport.canbus import DEFAULT_INTERFACE, BusConfig, open_bus


@pytest.fixture
def clean_can_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No python-can configuration from the developer's machine leaks into a test."""
    for var in ("CAN_INTERFACE", "CAN_CHANNEL", "CAN_BITRATE", "CAN_CONFIG"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(f"{var}_BENCH", raising=False)
    monkeypatch.setattr(can, "rc", {})
    empty = tmp_path / "none.conf"
    empty.write_text("")
    return empty


def test_default_is_virtual(clean_can_env: Path) -> None:
    config = BusConfig.resolve(config_file=clean_can_env)
    assert config.interface == DEFAULT_INTERFACE == "virtual"
    assert config.channel is None and config.bitrate is None and not config.fd


def test_environment_then_explicit_override(clean_can_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAN_INTERFACE", "udp_multicast")
    monkeypatch.setenv("CAN_BITRATE", "250000")
    monkeypatch.setenv("CAN_CONFIG", '{"port": 45000, "hop_limit": 1}')
    from_env = BusConfig.resolve(config_file=clean_can_env)
    assert from_env.interface == "udp_multicast"
    assert from_env.bitrate == 250000
    assert from_env.kwargs == {"port": 45000, "hop_limit": 1}
    explicit = BusConfig.resolve("virtual", "bench", 500000, config_file=clean_can_env)
    assert (explicit.interface, explicit.channel, explicit.bitrate) == ("virtual", "bench", 500000)
    # ignore_config uses the arguments alone, like can.Bus(ignore_config=True)
    alone = BusConfig.resolve(channel="x", ignore_config=True)
    assert (alone.interface, alone.bitrate, dict(alone.kwargs)) == ("virtual", None, {})


def test_config_file_sections(clean_can_env: Path, tmp_path: Path) -> None:
    conf = tmp_path / "can.conf"
    conf.write_text(
        "[default]\ninterface = virtual\nchannel = fromfile\nbitrate = 125000\n"
        "[bench]\nchannel = benchchan\nfd = True\ndata_bitrate = 2000000\n"
    )
    default = BusConfig.resolve(config_file=conf)
    assert (default.interface, default.channel, default.bitrate) == ("virtual", "fromfile", 125000)
    bench = BusConfig.resolve(config_file=conf, context="bench")
    assert (bench.channel, bench.bitrate, bench.fd, bench.data_bitrate) == ("benchchan", 125000, True, 2_000_000)
    assert bench.bus_kwargs() == {"bitrate": 125000, "fd": True, "data_bitrate": 2_000_000}
    assert bench.describe() == "virtual benchchan 125000 bit/s FD data 2000000 bit/s"


def test_bad_values_are_config_errors(clean_can_env: Path) -> None:
    with pytest.raises(ConfigError, match="unknown CAN interface"):
        BusConfig(interface="nosuchbus")
    with pytest.raises(ConfigError, match="nosuchbus"):
        BusConfig.resolve("nosuchbus", config_file=clean_can_env)
    with pytest.raises(ConfigError, match="bitrate"):
        BusConfig(bitrate=-5)
    with pytest.raises(ConfigError, match="fd=True"):
        BusConfig(data_bitrate=2_000_000)
    with pytest.raises(ConfigError, match="BusConfig fields"):
        BusConfig(kwargs={"bitrate": 1})


def test_virtual_bus_round_trip(clean_can_env: Path) -> None:
    channel = f"t-{uuid.uuid4().hex}"
    config = BusConfig.resolve(channel=channel, config_file=clean_can_env)
    with open_bus(config) as a, open_bus(config) as b:
        a.send(can.Message(arbitration_id=0x18FF50E5, data=b"\x01\x02\x03"))
        got = b.recv(timeout=1.0)
        assert got is not None and got.arbitration_id == 0x18FF50E5 and bytes(got.data) == b"\x01\x02\x03"
        assert a.recv(timeout=0.01) is None  # virtual: no own echo


def test_other_interfaces_pass_straight_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_bus(**kwargs: Any) -> str:
        seen.update(kwargs)
        return "bus"

    monkeypatch.setattr(canbus.can, "Bus", fake_bus)
    config = BusConfig(interface="pcan", channel="PCAN_USBBUS1", bitrate=500000, fd=True, kwargs={"f_clock_mhz": 80})
    assert open_bus(config) == "bus"
    assert seen == {
        "interface": "pcan",
        "channel": "PCAN_USBBUS1",
        "ignore_config": True,
        "bitrate": 500000,
        "fd": True,
        "f_clock_mhz": 80,
    }


def test_slcan_needs_a_port_and_reports_a_missing_one() -> None:
    with pytest.raises(ConfigError, match="slcan needs a channel"):
        open_bus(BusConfig(interface="slcan"))
    with pytest.raises(TransportError, match="cannot open slcan /dev/nonexistent-modbatt"):
        open_bus(BusConfig(interface="slcan", channel="/dev/nonexistent-modbatt", bitrate=500000))


def test_socketcan_failure_is_one_transport_error() -> None:
    # This machine has no SocketCAN (DESIGN §6); where it has, any missing netdev fails the same way.
    with pytest.raises(TransportError, match="cannot open socketcan"):
        open_bus(BusConfig(interface="socketcan", channel="modbatt-no-such-if"))


def test_udp_ipv6_default_group_falls_back_to_ipv4(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []

    class FakeUdp:
        def __init__(self, channel: str, **kwargs: Any) -> None:
            if ":" in channel:
                raise can.CanInitializationError("could not create or configure socket")
            opened.append(channel)
            self.kwargs = kwargs

    monkeypatch.setattr(canbus, "EchoFilteringUdpMulticastBus", FakeUdp)
    bus = open_bus(BusConfig(interface="udp_multicast", channel=canbus._PYTHON_CAN_IPV6_GROUP, bitrate=500000))
    assert opened == [canbus.DEFAULT_UDP_GROUP] and "bitrate" not in bus.kwargs  # type: ignore[attr-defined]
    # a group the user chose is not silently replaced
    with pytest.raises(TransportError, match="could not create"):
        open_bus(BusConfig(interface="udp_multicast", channel="ff15::1234"))
