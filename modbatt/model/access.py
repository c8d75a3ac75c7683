"""Access data: how to reach an entity (seed 1.2), and the LCT it is bound to."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import Reason, VerificationError
from ._fields import expect_map, malformed, text

__all__ = ["AccessData", "LctRef", "TransportProtocol"]

_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_CAN_ENDPOINT = re.compile(r"can://([A-Za-z0-9._-]{1,32})/(0x[0-9a-fA-F]{2})")
_MQTT_TOPIC = re.compile(r"[^#+\x00]{1,200}")


class TransportProtocol(enum.StrEnum):
    """The protocol an entity's endpoint speaks (seed 1.2: CAN, HTTP, MQTT)."""

    CAN = "CAN"
    HTTP = "HTTP"
    MQTT = "MQTT"


@dataclass(frozen=True, slots=True)
class LctRef:
    """Bound LCT information (web4 Linked Context Token): id, chain or ledger id, endpoint."""

    lct_id: str
    chain_id: str
    endpoint: str | None = None

    def __post_init__(self) -> None:
        text(self.lct_id, "bound_lct.lct_id", max_len=128)
        if not self.lct_id.startswith("lct:"):
            raise malformed("bound_lct.lct_id must start with 'lct:'")
        text(self.chain_id, "bound_lct.chain_id", max_len=128)
        if self.endpoint is not None:
            text(self.endpoint, "bound_lct.endpoint", max_len=256)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lct_id": self.lct_id, "chain_id": self.chain_id}
        if self.endpoint is not None:
            out["endpoint"] = self.endpoint
        return out

    @classmethod
    def from_dict(cls, value: Any) -> LctRef:
        m = expect_map(value, "bound_lct", required={"lct_id", "chain_id"}, optional={"endpoint"})
        return cls(m["lct_id"], m["chain_id"], m.get("endpoint"))


@dataclass(frozen=True, slots=True)
class AccessData:
    """Everything a partner or the controller needs to reach an entity.

    ``endpoint`` depends on ``protocol``: an ``http(s)://`` URL, a CAN address
    ``can://CHANNEL/0xNN`` (node 0x01-0x1F a module, 0xFF unregistered, 0x00 reserved for
    broadcast and refused as an address), or an MQTT topic ``mqtt://HOST[:PORT]/TOPIC``.
    """

    endpoint: str
    protocol: TransportProtocol
    device_id: str
    bound_lct: LctRef | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.protocol, TransportProtocol):
            raise malformed("access_data.protocol must be CAN, HTTP or MQTT")
        text(self.device_id, "access_data.device_id", max_len=64)
        if not _DEVICE_ID.fullmatch(self.device_id):
            raise malformed("access_data.device_id may hold letters, digits and . _ : - only")
        text(self.endpoint, "access_data.endpoint", max_len=256)
        _check_endpoint(self.protocol, self.endpoint)
        if self.bound_lct is not None and not isinstance(self.bound_lct, LctRef):
            raise malformed("access_data.bound_lct must be an LCT reference")

    @property
    def can_node(self) -> int | None:
        """The CAN node id of a CAN endpoint, else None."""
        m = _CAN_ENDPOINT.fullmatch(self.endpoint)
        return int(m.group(2), 16) if m else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "protocol": self.protocol.value,
            "device_id": self.device_id,
        }
        if self.bound_lct is not None:
            out["bound_lct"] = self.bound_lct.to_dict()
        return out

    @classmethod
    def from_dict(cls, value: Any, what: str = "access_data") -> AccessData:
        m = expect_map(value, what, required={"endpoint", "protocol", "device_id"}, optional={"bound_lct"})
        try:
            protocol = TransportProtocol(m["protocol"])
        except ValueError:
            raise malformed(f"{what}.protocol must be CAN, HTTP or MQTT") from None
        lct = LctRef.from_dict(m["bound_lct"]) if m.get("bound_lct") is not None else None
        return cls(m["endpoint"], protocol, m["device_id"], lct)


def _check_endpoint(protocol: TransportProtocol, endpoint: str) -> None:
    if protocol is TransportProtocol.HTTP:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise malformed("an HTTP endpoint must be an http(s):// URL with a host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise malformed("an HTTP endpoint has an invalid port") from None
    elif protocol is TransportProtocol.CAN:
        m = _CAN_ENDPOINT.fullmatch(endpoint)
        if not m:
            raise malformed("a CAN endpoint is can://CHANNEL/0xNN")
        node = int(m.group(2), 16)
        if not (0x01 <= node <= 0x1F or node == 0xFF):
            raise VerificationError(Reason.MALFORMED, "a CAN node id is 0x01-0x1F (or 0xFF unregistered)")
    else:
        parts = urlsplit(endpoint)
        topic = parts.path.lstrip("/")
        # urlsplit would read "#" as a fragment and "?" as a query, hiding a wildcard topic.
        if "#" in endpoint or "?" in endpoint:
            raise malformed("an MQTT endpoint topic may not contain wildcards, '#' or '?'")
        if parts.scheme != "mqtt" or not parts.hostname or not _MQTT_TOPIC.fullmatch(topic or ""):
            raise malformed("an MQTT endpoint is mqtt://HOST[:PORT]/TOPIC without wildcards")
