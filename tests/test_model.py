"""Model records: access data, LCT references and strict parsing of untrusted input."""

from __future__ import annotations

import pytest

from modbatt.errors import Reason, VerificationError
from modbatt.model import AccessData, LctRef, TransportProtocol


@pytest.mark.parametrize(
    ("protocol", "endpoint"),
    [
        (TransportProtocol.HTTP, "http://127.0.0.1:8000"),
        (TransportProtocol.HTTP, "https://pack.example/api"),
        (TransportProtocol.CAN, "can://can0/0x01"),
        (TransportProtocol.CAN, "can://vcan1/0x1f"),
        (TransportProtocol.CAN, "can://can0/0xff"),
        (TransportProtocol.MQTT, "mqtt://broker:1883/modbatt/entity/sensor-01"),
    ],
)
def test_valid_endpoints_round_trip(protocol, endpoint):
    access = AccessData(endpoint, protocol, "dev-1", LctRef("lct:web4:x", "chain"))
    assert AccessData.from_dict(access.to_dict()) == access


@pytest.mark.parametrize(
    ("protocol", "endpoint"),
    [
        (TransportProtocol.HTTP, "ftp://x"),
        (TransportProtocol.HTTP, "http://"),
        (TransportProtocol.HTTP, "http://host:99999"),
        (TransportProtocol.CAN, "can://can0/0x00"),  # broadcast is not an address
        (TransportProtocol.CAN, "can://can0/0x20"),  # beyond the 31 module ids
        (TransportProtocol.CAN, "can0/1"),
        (TransportProtocol.MQTT, "mqtt://broker/a/#"),
        (TransportProtocol.MQTT, "mqtt://broker/a/+/b"),
        (TransportProtocol.MQTT, "mqtt://broker/a?x=1"),
        (TransportProtocol.MQTT, "http://broker/a"),
    ],
)
def test_bad_endpoints_are_malformed(protocol, endpoint):
    with pytest.raises(VerificationError) as exc:
        AccessData(endpoint, protocol, "dev-1")
    assert exc.value.reason is Reason.MALFORMED


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"endpoint": "http://h", "protocol": "HTTP"}, Reason.MALFORMED),
        ({"endpoint": "http://h", "protocol": "HTTP", "device_id": "d", "admin": 1}, Reason.UNKNOWN_FIELD),
        ({"endpoint": "http://h", "protocol": "SMTP", "device_id": "d"}, Reason.MALFORMED),
        ({"endpoint": "http://h", "protocol": "HTTP", "device_id": "bad id with spaces"}, Reason.MALFORMED),
        ({"endpoint": "http://h", "protocol": "HTTP", "device_id": "x" * 65}, Reason.OVERSIZED),
        ({"endpoint": "http://h", "protocol": "HTTP", "device_id": "d",
          "bound_lct": {"lct_id": "no-prefix", "chain_id": "c"}}, Reason.MALFORMED),
        ("not a map", Reason.MALFORMED),
    ],
)  # fmt: skip
def test_untrusted_access_data_is_classified(value, reason):
    with pytest.raises(VerificationError) as exc:
        AccessData.from_dict(value)
    assert exc.value.reason is reason


def test_can_node_of_an_endpoint():
    assert AccessData("can://can0/0x1f", TransportProtocol.CAN, "m").can_node == 0x1F
    assert AccessData("http://h", TransportProtocol.HTTP, "m").can_node is None
