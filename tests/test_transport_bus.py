"""BusConfig follows python-can's configuration conventions; open_bus opens what it describes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import can
import pytest

from modbatt.errors import ConfigError, TransportError
from modbatt.transport import canbus
from modbatt.transport.canbus import (
    DEFAULT_INTERFACE,
    EMBEDDED_SOURCE,
    BusConfig,
    open_bus,
    resolve_bus,
    run_udp_address,
)


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


def test_nothing_configured_is_the_embedded_virtual_bus_named_as_such(clean_can_env: Path) -> None:
    config = BusConfig.resolve(config_file=clean_can_env)
    assert config.interface == DEFAULT_INTERFACE == "virtual" and config.embedded
    assert str(config.channel).startswith("modbatt-private-") and config.bitrate is None and not config.fd
    assert config.source == EMBEDDED_SOURCE
    note = "(the embedded default, nothing configured: this process only)"
    assert config.describe() == f"virtual {config.channel} {note}"
    assert config.to_json()["source"] == EMBEDDED_SOURCE and config.to_json()["interface"] == "virtual"
    # a private channel per call: two unrelated runs in one process never hear each other
    assert resolve_bus(config_file=clean_can_env).channel != config.channel


def test_environment_then_explicit_override(clean_can_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAN_INTERFACE", "udp_multicast")
    monkeypatch.setenv("CAN_CHANNEL", "239.1.2.4")
    monkeypatch.setenv("CAN_BITRATE", "250000")
    monkeypatch.setenv("CAN_CONFIG", '{"port": 45000, "hop_limit": 1}')
    from_env = BusConfig.resolve(config_file=clean_can_env)
    assert from_env.interface == "udp_multicast"
    assert from_env.bitrate == 250000
    assert from_env.kwargs == {"port": 45000, "hop_limit": 1}
    assert from_env.source == "CAN_* environment"
    explicit = BusConfig.resolve("virtual", "bench", 500000, config_file=clean_can_env)
    assert (explicit.interface, explicit.channel, explicit.bitrate) == ("virtual", "bench", 500000)
    assert explicit.source == "arguments"
    # ignore_config uses the arguments alone, like can.Bus(ignore_config=True)
    alone = BusConfig.resolve("virtual", "x", ignore_config=True)
    assert (alone.interface, alone.bitrate, dict(alone.kwargs)) == ("virtual", None, {})


def test_config_file_sections(clean_can_env: Path, tmp_path: Path) -> None:
    conf = tmp_path / "can.conf"
    conf.write_text(
        "[default]\ninterface = virtual\nchannel = fromfile\nbitrate = 125000\n"
        "[bench]\nchannel = benchchan\nfd = True\ndata_bitrate = 2000000\n"
    )
    default = BusConfig.resolve(config_file=conf)
    assert (default.interface, default.channel, default.bitrate) == ("virtual", "fromfile", 125000)
    assert default.source == f"{conf} [default]" and not default.embedded
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
    config = BusConfig.resolve("virtual", channel, config_file=clean_can_env)
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
    # This machine has no SocketCAN (docs/buses.md §1); where it has, any missing netdev fails the same way.
    with pytest.raises(TransportError, match="cannot open socketcan"):
        open_bus(BusConfig(interface="socketcan", channel="modbatt-no-such-if"))


def test_udp_multicast_without_a_group_is_refused_not_defaulted() -> None:
    with pytest.raises(ConfigError, match="udp_multicast needs a channel"):
        open_bus(BusConfig(interface="udp_multicast"))


# --------------------------------------------------------------------------- the bus rule


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        ({"interface": "udp_multicast"}, "interface udp_multicast (from arguments) needs a channel, a multicast group"),
        ({"interface": "socketcan"}, "interface socketcan (from arguments) needs a channel, a network interface"),
        ({"interface": "pcan", "bitrate": 500000}, "interface pcan (from arguments) needs a channel"),
        ({"channel": "vcan0"}, "channel='vcan0' (from arguments) but no interface"),
        ({"bitrate": 500000}, "bitrate=500000 (from arguments) but no interface"),
    ],
)
def test_an_incomplete_choice_is_one_line_naming_what_is_missing(
    clean_can_env: Path, args: dict[str, Any], missing: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_bus(config_file=clean_can_env, **args)
    text = str(caught.value)
    assert missing in text and "\n" not in text and text.startswith("incomplete bus choice")


def test_an_incomplete_choice_from_the_environment_names_its_source(
    clean_can_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAN_INTERFACE", "socketcan")
    with pytest.raises(ConfigError, match=r"interface socketcan \(from CAN_\* environment\) needs a channel"):
        resolve_bus(config_file=clean_can_env)
    monkeypatch.setenv("CAN_CHANNEL", "vcan0")
    config = resolve_bus(config_file=clean_can_env)
    assert (config.interface, config.channel, config.source) == ("socketcan", "vcan0", "CAN_* environment")
    # explicit arguments win key by key, as in can.Bus()
    assert resolve_bus("socketcan", "vcan1", config_file=clean_can_env).channel == "vcan1"


def test_a_config_context_picks_its_section_and_environment(clean_can_env: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    conf = tmp_path / "lab.conf"
    conf.write_text("[default]\ninterface = socketcan\nchannel = can0\n[rig]\ninterface = udp_multicast\n"
                    "channel = 239.1.2.3\nport = 45001\n")  # fmt: skip
    rig = resolve_bus(config_file=conf, context="rig")
    assert (rig.interface, rig.channel, rig.kwargs["port"], rig.source) == ("udp_multicast", "239.1.2.3", 45001,
                                                                            f"{conf} [rig]")  # fmt: skip
    assert rig.describe() == "udp_multicast 239.1.2.3 port 45001"
    monkeypatch.setenv("CAN_INTERFACE_rig", "virtual")  # python-can appends the context as given
    monkeypatch.setenv("CAN_CHANNEL_rig", "rigchan")
    env = resolve_bus(config_file=conf, context="rig")
    assert (env.interface, env.channel, env.source) == ("virtual", "rigchan", "CAN_*_rig environment")


def test_embedded_false_refuses_a_private_bus(clean_can_env: Path) -> None:
    with pytest.raises(ConfigError, match="no bus chosen, and the monitor needs one that other processes share"):
        resolve_bus(config_file=clean_can_env, embedded=False, purpose="the monitor")
    # an explicit choice is always honoured
    assert resolve_bus("virtual", "x", config_file=clean_can_env, embedded=False).channel == "x"


def test_a_run_id_isolates_udp_multicast_runs(clean_can_env: Path) -> None:
    a = resolve_bus("udp_multicast", run_id="run-a", config_file=clean_can_env)
    b = resolve_bus("udp_multicast", run_id="run-b", config_file=clean_can_env)
    assert (a.channel, a.kwargs["port"]) == run_udp_address("run-a")
    assert (a.channel, a.kwargs["port"]) != (b.channel, b.kwargs["port"])
    assert resolve_bus("udp_multicast", run_id="run-a", config_file=clean_can_env) == a  # the same id, the same bus
    group, port = run_udp_address("run-a")
    assert group.startswith("239.") and 20000 <= port <= 32767
    # explicit values win over the derived ones
    mine = resolve_bus("udp_multicast", "239.9.9.9", port=40000, run_id="run-a", config_file=clean_can_env)
    assert (mine.channel, mine.kwargs["port"]) == ("239.9.9.9", 40000)
    assert resolve_bus("virtual", run_id="r1", config_file=clean_can_env).channel == "modbatt-run-r1"
    with pytest.raises(ConfigError, match="socketcan is a bus of its own"):
        resolve_bus("socketcan", "vcan0", run_id="r1", config_file=clean_can_env)
    with pytest.raises(ConfigError, match="run id must be a non-empty"):
        run_udp_address(" ")


def test_options_and_bad_ports(clean_can_env: Path) -> None:
    config = resolve_bus("udp_multicast", "239.1.1.1", options={"port": "45002"}, config_file=clean_can_env)
    assert config.kwargs["port"] == 45002 and config.to_json()["port"] == 45002
    with pytest.raises(ConfigError, match=r"(?i)port"):
        resolve_bus("udp_multicast", "239.1.1.1", options={"port": 70000}, config_file=clean_can_env)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(ConfigError, match="CAN_CONFIG is not JSON"):
        mp.setenv("CAN_CONFIG", "{not json")
        resolve_bus(config_file=clean_can_env)
