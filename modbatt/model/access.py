"""Access data: how to reach a party (docs/seed.md §1.2), what kind of party it is, and the LCT it is bound to.

A party is a ``device`` (the default), another ``entity`` (a service, an organisation) or an
``lct`` (a web4 Linked Context Token), as in the upstream binding request's
``partner_access_data.type`` (docs/binding.md, Access data). An LCT is
reached at its RPC endpoint and named by its ``lct:`` id (``device_id``), the chain it lives on
(``chain_id``) and its token id there (``token_id``); docs/binding.md §LCT binding.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import Reason, VerificationError
from ._fields import expect_map, malformed, text
from .schema import nested

__all__ = [
    "ACCESS_DATA",
    "MODULE_NODES",
    "NODE_BROADCAST",
    "NODE_UNREGISTERED",
    "AccessData",
    "LctRef",
    "PartyType",
    "TransportProtocol",
    "is_can_address",
]

#: CAN node ids (docs/can-frames.md): 0x00 broadcast, 0x01-0x1F the modules of a pack, 0xFF a
#: module not yet registered. The identifier layouts (``modbatt.can.ids``) carry them in ``node``.
NODE_BROADCAST = 0x00
MODULE_NODES = range(0x01, 0x20)
NODE_UNREGISTERED = 0xFF

_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_TOKEN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_LCT_PREFIX = "lct:"
_CAN_ENDPOINT = re.compile(r"can://([A-Za-z0-9._-]{1,32})/(0x[0-9a-fA-F]{2})")
_MQTT_TOPIC = re.compile(r"[^#+\x00]{1,200}")


def is_can_address(node: int) -> bool:
    """Whether ``node`` can be a party's CAN address: a module, or unregistered (never broadcast)."""
    return node in MODULE_NODES or node == NODE_UNREGISTERED


class TransportProtocol(enum.StrEnum):
    """The protocol an entity's endpoint speaks (docs/seed.md §1.2: CAN, HTTP, MQTT)."""

    CAN = "CAN"
    HTTP = "HTTP"
    MQTT = "MQTT"


class PartyType(enum.StrEnum):
    """What a party of a binding is (upstream ``partner_access_data.type``)."""

    DEVICE = "device"
    LCT = "lct"
    ENTITY = "entity"


def _token_id(value: Any, what: str) -> str:
    text(value, what, max_len=128)
    if not _TOKEN_ID.fullmatch(value):
        raise malformed(f"{what} may hold letters, digits and . _ : - only")
    return value


@dataclass(frozen=True, slots=True)
class LctRef:
    """Bound LCT information (web4 Linked Context Token): id, chain or ledger id, endpoint, token id.

    ``lct_id`` names the LCT (``lct:…``); ``token_id`` is its token's id on ``chain_id`` when known.
    """

    lct_id: str
    chain_id: str
    endpoint: str | None = None
    token_id: str | None = None

    def __post_init__(self) -> None:
        text(self.lct_id, "bound_lct.lct_id", max_len=128)
        if not self.lct_id.startswith(_LCT_PREFIX):
            raise malformed("bound_lct.lct_id must start with 'lct:'")
        text(self.chain_id, "bound_lct.chain_id", max_len=128)
        if self.endpoint is not None:
            text(self.endpoint, "bound_lct.endpoint", max_len=256)
        if self.token_id is not None:
            _token_id(self.token_id, "bound_lct.token_id")

    def same_lct(self, other: LctRef) -> bool:
        """True when both name one LCT (id and chain); endpoint and token id may be missing from one."""
        return (self.lct_id, self.chain_id) == (other.lct_id, other.chain_id)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lct_id": self.lct_id, "chain_id": self.chain_id}
        if self.endpoint is not None:
            out["endpoint"] = self.endpoint
        if self.token_id is not None:
            out["token_id"] = self.token_id
        return out

    @classmethod
    def from_dict(cls, value: Any) -> LctRef:
        m = expect_map(value, "bound_lct", required={"lct_id", "chain_id"}, optional={"endpoint", "token_id"})
        return cls(m["lct_id"], m["chain_id"], m.get("endpoint"), m.get("token_id"))


@dataclass(frozen=True, slots=True)
class AccessData:
    """Everything a partner or the controller needs to reach a party.

    ``endpoint`` depends on ``protocol``: an ``http(s)://`` URL, a CAN address
    ``can://CHANNEL/0xNN`` (node 0x01-0x1F a module, 0xFF unregistered, 0x00 reserved for
    broadcast and refused as an address), or an MQTT topic ``mqtt://HOST[:PORT]/TOPIC``.

    ``type`` is what the party is. An ``lct`` party is named by its ``lct:`` id in ``device_id``,
    carries ``chain_id`` and ``token_id`` (required), is reached at an RPC endpoint over HTTP or
    MQTT (never CAN), and has no ``bound_lct`` of its own. Devices and entities carry neither
    ``chain_id`` nor ``token_id``. The JSON/CBOR form omits ``type`` for a device.
    """

    endpoint: str
    protocol: TransportProtocol
    device_id: str
    bound_lct: LctRef | None = None
    type: PartyType = PartyType.DEVICE
    chain_id: str | None = None
    token_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.protocol, TransportProtocol):
            raise malformed("access_data.protocol must be CAN, HTTP or MQTT")
        if not isinstance(self.type, PartyType):
            raise malformed("access_data.type must be device, lct or entity")
        text(self.device_id, "access_data.device_id", max_len=64)
        if not _DEVICE_ID.fullmatch(self.device_id):
            raise malformed("access_data.device_id may hold letters, digits and . _ : - only")
        text(self.endpoint, "access_data.endpoint", max_len=256)
        _check_endpoint(self.protocol, self.endpoint)
        if self.bound_lct is not None and not isinstance(self.bound_lct, LctRef):
            raise malformed("access_data.bound_lct must be an LCT reference")
        if self.type is PartyType.LCT:
            if not self.device_id.startswith(_LCT_PREFIX):
                raise malformed("an LCT's access_data.device_id is its lct: id")
            if self.chain_id is None or self.token_id is None:
                raise malformed("an LCT's access data needs chain_id and token_id")
            text(self.chain_id, "access_data.chain_id", max_len=128)
            _token_id(self.token_id, "access_data.token_id")
            if self.protocol is TransportProtocol.CAN:
                raise malformed("an LCT is reached at an RPC endpoint (HTTP or MQTT), not on CAN")
            if self.bound_lct is not None:
                raise malformed("an LCT has no bound_lct of its own")
        elif self.chain_id is not None or self.token_id is not None:
            raise malformed("chain_id and token_id belong to an LCT's access data only")

    @property
    def lct_ref(self) -> LctRef | None:
        """For an LCT party, the reference a partner records as its bound LCT; else None."""
        if self.type is not PartyType.LCT:
            return None
        return LctRef(self.device_id, str(self.chain_id), self.endpoint, self.token_id)

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
        # One encoding per value: a device (the default) leaves type out; signatures cover this form.
        if self.type is not PartyType.DEVICE:
            out["type"] = self.type.value
        if self.chain_id is not None:
            out["chain_id"] = self.chain_id
        if self.token_id is not None:
            out["token_id"] = self.token_id
        return out

    @classmethod
    def from_dict(cls, value: Any, what: str = "access_data") -> AccessData:
        m = expect_map(
            value,
            what,
            required={"endpoint", "protocol", "device_id"},
            optional={"bound_lct", "type", "chain_id", "token_id"},
        )
        try:
            protocol = TransportProtocol(m["protocol"])
        except ValueError:
            raise malformed(f"{what}.protocol must be CAN, HTTP or MQTT") from None
        try:
            party = PartyType(m.get("type", PartyType.DEVICE.value))
        except ValueError:
            raise malformed(f"{what}.type must be device, lct or entity") from None
        lct = LctRef.from_dict(m["bound_lct"]) if m.get("bound_lct") is not None else None
        return cls(m["endpoint"], protocol, m["device_id"], lct, party, m.get("chain_id"), m.get("token_id"))


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
        if not is_can_address(node):
            raise VerificationError(Reason.MALFORMED, "a CAN node id is 0x01-0x1F (or 0xFF unregistered)")
    else:
        parts = urlsplit(endpoint)
        topic = parts.path.lstrip("/")
        # urlsplit would read "#" as a fragment and "?" as a query, hiding a wildcard topic.
        if "#" in endpoint or "?" in endpoint:
            raise malformed("an MQTT endpoint topic may not contain wildcards, '#' or '?'")
        if parts.scheme != "mqtt" or not parts.hostname or not _MQTT_TOPIC.fullmatch(topic or ""):
            raise malformed("an MQTT endpoint is mqtt://HOST[:PORT]/TOPIC without wildcards")


#: The schema kind of an access-data field (docs/architecture.md, Message schema).
ACCESS_DATA = nested(
    AccessData,
    ("map", "AccessData", "CBOR map (docs/binding.md, access data)"),
    to_cbor=lambda a: a.to_dict(),
    read=AccessData.from_dict,
)
