"""A simulated bus end and the connections over it (docs/simulation.md, framing).

An :class:`_Endpoint` is one python-can bus handle and the node(s) behind it; a :class:`_Conn`
is one module's pair of identifiers for one function at one tier: single secured frames, or
ISO-TP (can-isotp's ``TransportLayerLogic``, driven without threads by the scheduler).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import can
import isotp
from can.util import len2dlc

from ..can.fragment import isotp_address, isotp_params
from ..can.functions import FUNCTIONS, message_class_of
from ..can.ids import CanIdFields, IdLayout
from ..can.wiretime import BusProfile
from ..errors import VerificationError
from ..model.tier import Tier
from .stats import SimStats, _key

if TYPE_CHECKING:
    from .nodes import _Node  # a node owns its connections; the type is for the signatures only

# ---------------------------------------------------------------------------------------------
# Bus endpoints and connections
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Endpoint:
    """One python-can bus handle and the node(s) behind it.

    ``direction`` is the seed-layout direction this side *receives* (1 for the pack, 0 for
    modules); ``nodes`` maps module ids to handlers (the pack side maps every id to the pack).
    """

    bus: can.BusABC
    profile: BusProfile
    layout: IdLayout
    stats: SimStats
    direction: int
    nodes: dict[int, _Node]
    _fields: dict[int, CanIdFields | None] = field(default_factory=dict, init=False, repr=False)

    def fields(self, can_id: int) -> CanIdFields | None:
        """The decoded identifier, or None when the layout or the function table refuses it (cached)."""
        if can_id in self._fields:
            return self._fields[can_id]
        f: CanIdFields | None
        try:
            f = self.layout.decode(can_id)
            message_class_of(f.function)
        except VerificationError:
            f = None
        if len(self._fields) < 4096:  # bounded: an ID spray cannot grow it
            self._fields[can_id] = f
        return f

    def send(self, can_id: int, data: bytes) -> None:
        fd = self.profile.fd
        msg = can.Message(
            arbitration_id=can_id, data=data, is_extended_id=True, is_fd=fd, bitrate_switch=fd and self.profile.brs
        )
        self.bus.send(msg)
        f = self.fields(can_id)
        if f is not None and f.tier is not None:
            self.stats.frames_tx[_key(message_class_of(f.function), f.tier)] += 1

    def drain(self, timeout: float) -> int:
        """Handle every frame that arrives within ``timeout`` (0: only what is already there)."""
        n = 0
        msg = self.bus.recv(timeout)
        while msg is not None:
            if not msg.is_error_frame and msg.is_extended_id:
                self._dispatch(msg.arbitration_id, bytes(msg.data))
            n += 1
            msg = self.bus.recv(0.0)
        return n

    def _dispatch(self, can_id: int, data: bytes) -> None:
        f = self.fields(can_id)
        if f is None:
            self.stats.rejects["malformed"] += 1
            return
        if f.direction != self.direction:
            return  # travelling the other way: another node's frame (or a multicast copy)
        node = self.nodes.get(f.node)
        if node is None:
            return  # addressed to a module that lives elsewhere
        assert f.tier is not None
        self.stats.frames_rx[_key(message_class_of(f.function), f.tier)] += 1
        node.on_frame(f, can_id, data)


class _Conn:
    """One end of a connection: raw secured frames, or ISO-TP without threads."""

    def __init__(self, node: _Node, peer: int, function: int, tier: Tier, isotp_mode: bool) -> None:
        self.node = node
        self.peer = peer
        ep = node.endpoint
        out = 1 - ep.direction
        spec = FUNCTIONS[function]
        self.tx_id = ep.layout.encode(spec.id_fields(peer, out, tier))
        self.rx_id = ep.layout.encode(spec.id_fields(peer, ep.direction, tier))
        self.isotp = isotp_mode
        self._rx: collections.deque[isotp.CanMessage] = collections.deque()
        self._tp: isotp.TransportLayerLogic | None = None
        if isotp_mode:
            prof = ep.profile
            params = isotp_params(fd=prof.fd, blocking_send=False)
            params["bitrate_switch"] = prof.fd and prof.brs
            self._tp = isotp.TransportLayerLogic(
                rxfn=self._rxfn,
                txfn=self._txfn,
                address=isotp_address(self.tx_id, self.rx_id, extended=True),
                error_handler=self._error,
                params=params,
            )

    def _rxfn(self, _timeout: float) -> isotp.CanMessage | None:
        return self._rx.popleft() if self._rx else None

    def _txfn(self, msg: isotp.CanMessage) -> None:
        self.node.endpoint.send(msg.arbitration_id, bytes(msg.data))

    def _error(self, exc: Exception) -> None:
        self.node.endpoint.stats.transport_errors[type(exc).__name__] += 1

    def send(self, data: bytes, *, retry: bool = False, supersede: bool = False) -> int:
        """Send one unit; returns how many queued units it replaced (``supersede``: best-effort
        classes, where the newest value is the one that matters, docs/delivery.md §1)."""
        if self._tp is None:
            self.node.endpoint.send(self.tx_id, data)
            return 0
        dropped = 0
        if retry and self._tp.transmitting():
            # A retry supersedes a transfer stuck on a lost flow-control frame (docs/delivery.md §ISO-TP).
            self._tp.stop_sending()
        elif supersede:
            # Units queued behind a transfer waiting out a lost flow control (N_Bs, 1 s) would pile
            # up without bound on a lossy bus, each older than the next: keep only the newest.
            dropped = self._tp.tx_queue.qsize()
            self._tp.clear_tx_queue()
        self._tp.send(data)
        self._process()
        return dropped

    def feed(self, data: bytes) -> None:
        if self._tp is None:
            self.node.on_unit(self, data, reassembled=False)
            return
        fd = self.node.endpoint.profile.fd
        self._rx.append(isotp.CanMessage(self.rx_id, len2dlc(len(data)), data, extended_id=True, is_fd=fd))
        self._process()

    def _process(self) -> None:
        assert self._tp is not None
        self._tp.process()
        while self._tp.available():
            unit = self._tp.recv()
            if unit is not None:
                self.node.on_unit(self, bytes(unit), reassembled=True)
