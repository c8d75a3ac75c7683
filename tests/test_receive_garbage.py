"""No receive path dies on bad bytes: garbage first, then a genuine frame or request still gets through.

Each test sends input that is not a frame or not a valid message to a real receive path (the
udp_multicast adapter under a can.Notifier, the slcan adapter as open_bus opens it, the slcan
emulator's command parser and bridge thread, ISO-TP links, the binding API over CAN and over MQTT,
the monitor), checks the drop was counted, then checks the next genuine input is received.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Iterator

import can
import pytest
import serial
from can.interfaces.udp_multicast import UdpMulticastBus

from modbatt.attacks.garbage import garbage_datagrams, send_datagrams, udp_pack
from modbatt.encoding import canonical_dumps
from modbatt.errors import TransportError
from modbatt.transport.can_entity import binding_api_ids, encode_pdu
from modbatt.transport.canbus import BusConfig, EchoFilteringUdpMulticastBus, TolerantSlcanBus, open_bus
from modbatt.transport.isotp_link import IsoTpLink
from modbatt.transport.monitor import Monitor, run_monitor
from modbatt.transport.slcan_emulator import SlcanEmulator
from modbatt.workbench.monitor_view import TraceView

WAIT = 5.0  # bound for every single wait, seconds


def _group_port() -> tuple[str, int]:
    rng = random.SystemRandom()
    return f"239.{rng.randrange(1, 255)}.{rng.randrange(0, 256)}.{rng.randrange(1, 255)}", rng.randrange(20000, 60000)


@pytest.fixture
def udp() -> Iterator[tuple[str, int, list[can.BusABC]]]:
    group, port = _group_port()
    opened: list[can.BusABC] = []
    try:
        open_bus(BusConfig(interface="udp_multicast", channel=group, kwargs={"port": port})).shutdown()
    except TransportError as exc:
        pytest.skip(f"this host cannot create IPv4 multicast sockets: {exc}")
    yield group, port, opened
    for bus in opened:
        bus.shutdown()


def _udp_bus(udp: tuple[str, int, list[can.BusABC]]) -> EchoFilteringUdpMulticastBus:
    group, port, opened = udp
    bus = open_bus(BusConfig(interface="udp_multicast", channel=group, kwargs={"port": port}))
    assert isinstance(bus, EchoFilteringUdpMulticastBus)
    opened.append(bus)
    return bus


def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --------------------------------------------------------------------------- udp_multicast


def test_garbage_datagrams_leave_a_notifier_receiving(udp: tuple[str, int, list[can.BusABC]]) -> None:
    rx, tx = _udp_bus(udp), _udp_bus(udp)
    got: list[can.Message] = []
    notifier = can.Notifier(rx, [got.append], timeout=0.05)
    try:
        datagrams = garbage_datagrams(random.Random(3), 20)
        send_datagrams(udp[0], udp[1], datagrams)
        _until(lambda: rx.malformed >= len(datagrams), "the garbage to be counted")
        tx.send(can.Message(arbitration_id=0x18FF50E5, data=b"\x01\x02"))
        _until(lambda: got, "the genuine frame")
    finally:
        notifier.stop()
    assert notifier.exception is None
    assert [m.data for m in got] == [bytearray(b"\x01\x02")]
    assert rx.malformed == len(datagrams)


def test_monitor_counts_garbage_and_keeps_decoding(udp: tuple[str, int, list[can.BusABC]]) -> None:
    rx, tx = _udp_bus(udp), _udp_bus(udp)
    send_datagrams(udp[0], udp[1], [b"\x00 garbage", b"\xc1"])
    lines: list[str] = []
    sender = threading.Timer(0.3, lambda: tx.send(can.Message(arbitration_id=0x18FF50E5, data=b"\x07")))
    sender.start()
    summary = run_monitor(Monitor(), rx, TraceView(lines.append), count=1, duration=WAIT)
    sender.join()
    assert summary.frames == 1 and summary.input_dropped == 2
    assert "undecodable input dropped: 2" in lines[-1]


# --------------------------------------------------------------------------- slcan


class _Pty:
    """The adapter's end of a pseudo-terminal: the test writes what an adapter would send."""

    def __init__(self) -> None:
        import tty

        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            os.close(fd)


def test_slcan_adapter_drops_garbled_lines_and_keeps_reading() -> None:
    pty = _Pty()
    bus = open_bus(BusConfig(interface="slcan", channel=pty.path, bitrate=500000))
    try:
        assert isinstance(bus, TolerantSlcanBus)
        garbled = [b"Tzzzzzzzz8\r", b"t1\r", b"d123F00\r", b"TFFFFFFFFX\r", b"\xff\xfe\xfd\r", b"t12Q\r"]
        for line in garbled:
            pty.write(line)
        pty.write(b"t1232ABCD\r")
        deadline = time.monotonic() + WAIT
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = bus.recv(timeout=0.1)
        assert msg is not None and msg.arbitration_id == 0x123 and bytes(msg.data) == b"\xab\xcd"
        assert bus.malformed == len(garbled)
    finally:
        bus.shutdown()
        pty.close()


def test_slcan_emulator_refuses_garbage_commands_and_keeps_bridging() -> None:
    channel = f"slcan-{uuid.uuid4().hex}"
    side = can.Bus(interface="virtual", channel=channel, ignore_config=True)
    with SlcanEmulator(virtual_channel=channel) as emu:
        try:
            with serial.Serial(emu.tty_path, timeout=0.05) as port:
                port.write(b"O\r")
                garbage = [b"\xff\xfe\r", b"T" + b"9" * 300 + b"\r", b"t\r", b"D1234567FZZ\r", b"\x00\x01\x02\r"]
                for line in garbage:
                    port.write(line)
                port.write(b"t1232ABCD\r")
                got = side.recv(WAIT)
            assert got is not None and got.arbitration_id == 0x123 and bytes(got.data) == b"\xab\xcd"
            assert emu.stats.bells >= len(garbage) and emu.error is None
        finally:
            side.shutdown()


def test_slcan_emulator_bridge_survives_a_backend_that_raises(udp: tuple[str, int, list[can.BusABC]]) -> None:
    group, port, opened = udp
    plain = UdpMulticastBus(channel=group, port=port)  # python-can's own: raises on a foreign datagram
    opened.append(plain)
    sender = _udp_bus(udp)
    with SlcanEmulator(plain) as emu:
        host = open_bus(BusConfig(interface="slcan", channel=emu.tty_path, bitrate=500000))
        try:
            assert host.get_version(WAIT) == (10, 13)  # type: ignore[attr-defined]
            send_datagrams(group, port, [b"not a frame", b"\x93\x01\x02\x03"])
            _until(lambda: emu.stats.malformed >= 2, "the bridge to count the garbage")
            sender.send(can.Message(arbitration_id=0x18FF50E5, data=b"\x05"))
            got = host.recv(WAIT)
            while got is not None and got.arbitration_id != 0x18FF50E5:
                got = host.recv(WAIT)
            assert got is not None and bytes(got.data) == b"\x05"
        finally:
            host.shutdown()
        assert emu.error is None and emu.stats.malformed == 2


# --------------------------------------------------------------------------- ISO-TP


def test_isotp_link_drops_malformed_frames_and_receives_the_next_message() -> None:
    channel = f"isotp-garbage-{uuid.uuid4().hex}"
    buses = [can.Bus(interface="virtual", channel=channel) for _ in range(3)]
    tx_id, rx_id = 0x18FF_0A01, 0x18FF_0A02
    try:
        with IsoTpLink(buses[0], tx_id, rx_id) as sender, IsoTpLink(buses[1], rx_id, tx_id) as receiver:
            injector = buses[2]
            frames = [
                b"\xf0\x01\x02",  # PCI type 0xF: no such frame
                b"\x21\xaa\xbb",  # a consecutive frame with no first frame
                b"\x08\x01\x02\x03\x04\x05\x06\x07",  # single frame longer than a classic frame holds
                b"",  # no PCI at all
                b"\x30\x00\x00",  # flow control while this end sends nothing
            ]
            for data in frames:
                injector.send(can.Message(arbitration_id=tx_id, data=data))
            _until(lambda: receiver.malformed >= 3, "can-isotp to report the malformed frames")
            sender.send(bytes(range(40)))
            assert receiver.recv(timeout=WAIT) == bytes(range(40))
            assert receiver.reports["InvalidCanDataError"] >= 1
            assert receiver.reports["UnexpectedConsecutiveFrameError"] == 1
    finally:
        for bus in buses:
            bus.shutdown()


# --------------------------------------------------------------------------- binding API over CAN


def test_binding_over_can_survives_garbage_frames_pdus_and_datagrams() -> None:
    try:
        ctx = udp_pack(seed=5)
        pack = ctx.__enter__()
    except TransportError as exc:
        pytest.skip(f"this host cannot create IPv4 multicast sockets: {exc}")
    try:
        send_datagrams(pack.group, pack.port, garbage_datagrams(random.Random(5), 10))
        request_id, answer_id = binding_api_ids(0x01)
        # Raw ISO-TP junk on the module's request ID, then PDUs that are not CBOR / not a PDU.
        for data in (b"\xf0", b"\x22\x01", b"\x10\x00\x00\x00\x00\x00\x00\x00"):
            pack.gateway_bus.send(can.Message(arbitration_id=request_id, data=data))
        with IsoTpLink(pack.gateway_bus, request_id, answer_id, notifier=pack.client.notifier()) as raw:
            raw.send(b"\xff garbage that is no CBOR")
            raw.send(canonical_dumps({"not": "a pdu"}))
            raw.send(encode_pdu(9, "generate-keys", b"\xa1junk"))  # parses, body is no request
            raw.recv(timeout=WAIT)  # the classified rejection for the last one
        module_server = pack.servers[1]
        _until(lambda: module_server.counters["malformed_pdu"] >= 2, "the dropped PDUs to be counted")
        outcome = pack.dep.bind(pack.dep.pack, pack.dep.modules[1])
        assert pack.dep.modules[1].binding(outcome.record.binding_id) is not None
        assert pack.field_bus.malformed >= 10 and pack.gateway_bus.malformed >= 10  # type: ignore[attr-defined]
        assert pack.field_notifier.exception is None
        assert module_server.counters["errors"] == 0 and module_server.rejections
    finally:
        ctx.__exit__(None, None, None)
