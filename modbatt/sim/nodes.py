"""The simulated entities: a module (:class:`_Module`) and the pack controller (:class:`_Pack`).

Both are a :class:`_Node`: connections to their peers, their entity's
:class:`~modbatt.nodes.channel.PairedChannel` per pairing, and a :class:`~modbatt.sim.stats.SimStats`.
Modules send telemetry and heartbeats and apply commands exactly once (docs/delivery.md); the
pack sends keep-alives and the critical operations, and settles their acknowledgements.
"""

from __future__ import annotations

import collections
import itertools
import math
import zlib
from collections.abc import Callable
from typing import Any

from ..can.catalog import build_legacy_database
from ..can.functions import RESYNC_FUNCTIONS, function_for, message_class_of
from ..can.ids import CanIdFields
from ..can.secured import frame_format
from ..crypto.freshness import COUNTER_BYTES, RESYNC_CHALLENGE_BYTES
from ..crypto.keystore import KeyStore
from ..errors import ModbattError, VerificationError
from ..model.policy import MessageClass
from ..model.tier import Tier
from ..nodes.channel import PairedChannel
from ..nodes.killpoints import kill_point
from ..nodes.link import Received
from ..protocol.delivery import (
    SEQ_SPACE,
    Decision,
    DeliveryReceiver,
    DeliverySender,
    Outcome,
    RetryPolicy,
    Transmit,
    newer,
)
from .clock import Scheduler, SimClock
from .connection import _Conn, _Endpoint
from .schedule import (
    COMMAND_CLASSES,
    NACK_FLAG,
    SEQ_BYTES,
    SEQ_MASK,
    TELEMETRY,
    TrafficPlan,
    uses_isotp,
)
from .stats import SimStats, _key

_TELEMETRY_BY_CLASS = {t.message_class: t for t in TELEMETRY}
_ACK_CLASSES = frozenset(COMMAND_CLASSES)
_LEGACY_COMMAND = {
    MessageClass.CHARGE_COMMAND: "MODULE_STATE_CHANGE",
    MessageClass.DISCHARGE_COMMAND: "MODULE_STATE_CHANGE",
    MessageClass.SAFETY_LIMITS: "MODULE_LIMITS",
}


class _Node:
    """A node's application: its links per peer, its connections, what it does with units."""

    def __init__(self, endpoint: _Endpoint, plan: TrafficPlan, clock: SimClock) -> None:
        self.endpoint = endpoint
        self.plan = plan
        self.clock = clock
        self.links: dict[int, PairedChannel] = {}
        self._conns: dict[tuple[int, int, Tier], _Conn] = {}

    @property
    def stats(self) -> SimStats:
        return self.endpoint.stats

    def conn(self, peer: int, function: int, tier: Tier) -> _Conn:
        key = (peer, function, tier)
        c = self._conns.get(key)
        if c is None:
            profile = self.endpoint.profile
            link = self.links[peer]
            if function in RESYNC_FUNCTIONS:
                # Control frames: a challenge fits one frame; an answer is FV ‖ tag (or signature).
                fmt = frame_format(tier, profile, link.protocol)
                answer = COUNTER_BYTES + fmt.tag_bytes if tier is not Tier.NONE else 0
                isotp_mode = max(answer, RESYNC_CHALLENGE_BYTES) > profile.data_field
            else:
                isotp_mode = uses_isotp(self.plan, message_class_of(function), profile, tier)
            c = self._conns[key] = _Conn(self, peer, function, tier, isotp_mode)
        return c

    def flush(self, peer: int) -> None:
        """Send the control frames (resync) the channel with ``peer`` queued."""
        for pdu in self.links[peer].frames_to_send():
            fields = self.endpoint.layout.decode(pdu.can_id)
            self.conn(peer, fields.function, fields.tier if fields.tier is not None else Tier.NONE).send(pdu.data)

    def send(self, peer: int, message_class: MessageClass, payload: bytes, *, retry: bool = False) -> None:
        pdu = self.links[peer].send(message_class, payload)
        tier = self.links[peer].tier_for(message_class)
        c = self.conn(peer, function_for(message_class).code, tier)
        if pdu.can_id != c.tx_id:  # pragma: no cover - would mean the link and the sim disagree on IDs
            raise ModbattError(f"link chose id {pdu.can_id:#x}, connection expects {c.tx_id:#x}")
        if not c.isotp and not pdu.single_frame:  # pragma: no cover - the plan's sizes were exceeded
            raise ModbattError(f"{message_class} unit of {len(pdu.data)} B does not fit one frame")
        dropped = c.send(pdu.data, retry=retry, supersede=message_class not in _ACK_CLASSES)
        self.stats.units_tx[_key(message_class, tier)] += 1 - dropped  # units that went to the bus
        self.stats.superseded_units += dropped

    def on_frame(self, fields: CanIdFields, can_id: int, data: bytes) -> None:
        if fields.node not in self.links:
            return
        assert fields.tier is not None
        self.conn(fields.node, fields.function, fields.tier).feed(data)

    def on_unit(self, conn: _Conn, data: bytes, *, reassembled: bool) -> None:
        try:
            got = self.links[conn.peer].receive(conn.rx_id, data, reassembled=reassembled)
        except VerificationError as exc:
            self.stats.rejects[exc.reason.value] += 1
            self.flush(conn.peer)  # a streak of failures may have queued a resync challenge
            return
        if got is None:  # a resync frame: the channel may have answers or a challenge to send
            self.flush(conn.peer)
            return
        self.stats.units_rx[_key(got.message_class, got.tier)] += 1
        self.handle(conn.peer, got)

    def handle(self, peer: int, got: Received) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _stream_of(name: str) -> tuple[int, MessageClass]:
    node, cls = name.split("/", 1)
    return int(node), MessageClass(cls)


def _db() -> Any:
    return build_legacy_database()


#: Where a module keeps its idempotence record for one pairing (in its entity's key store).
DELIVERY_RECORD = "delivery/{pairing_id}"


class _Module(_Node):
    """A module: telemetry + heartbeat out, commands in (checked, applied exactly once, acknowledged).

    ``keystore``: where the idempotence record is persisted (the module's own key store; its
    writes are atomic), restored from there when the module starts (docs/delivery.md).
    """

    def __init__(
        self,
        node_id: int,
        endpoint: _Endpoint,
        plan: TrafficPlan,
        clock: SimClock,
        db: Any,
        *,
        keystore: KeyStore | None = None,
        pairing_id: str = "",
    ) -> None:
        super().__init__(endpoint, plan, clock)
        self.node_id = node_id
        self.db = db
        self._store = keystore
        self._record_name = DELIVERY_RECORD.format(pairing_id=pairing_id)
        record = None
        if keystore is not None and self._record_name in keystore.record_names():
            record = keystore.record(self._record_name)
        self.delivery = DeliveryReceiver(record)
        #: A file each applied command is appended to once its record is persisted (a module
        #: killed later still counts what it applied: the soak and kill tests read it).
        self.journal: str | None = None
        self._beat = 0

    def start(self, scheduler: Scheduler, t0: float, share: float) -> None:
        """Schedule this module's periodic traffic, phase-shifted by ``share`` of each period."""
        for spec in TELEMETRY:
            scheduler.at(t0 + share * spec.period, self._telemetry_task(spec.message_class, spec.legacy, spec.period))
        period = self.plan.heartbeat_period
        scheduler.at(t0 + share * period, self._heartbeat_task(period))

    def _telemetry_task(self, cls: MessageClass, legacy: str, period: float) -> Callable[[], float]:
        msg = self.db.get_message_by_name(legacy)

        def task() -> float:
            self.send(self.node_id, cls, msg.encode(self._values(legacy)))
            return period

        return task

    def _heartbeat_task(self, period: float) -> Callable[[], float]:
        def task() -> float:
            self._beat = (self._beat + 1) & 0xFF
            self.send(self.node_id, MessageClass.HEARTBEAT, bytes([self._beat]))
            return period

        return task

    def _values(self, legacy: str) -> dict[str, float]:
        # A plausible 14-cell module: slow sine on current and temperature, SOC drifting down.
        t = self.clock.now()
        wave = math.sin(t / 7.0 + self.node_id)
        if legacy == "MODULE_STATUS_1":
            soc = 80.0 - (t % 600) / 20.0
            return {
                "moduleState": 3,
                "moduleStatus": 0,
                "moduleSoc": round(soc * 2) / 2,
                "moduleSoh": 98.0,
                "cellCount": 14,
                "moduleMmc": round(20.0 * wave, 2),
                "moduleMmv": round(51.8 + 0.5 * wave, 3),
            }
        if legacy == "MODULE_STATUS_2":
            return {"cellLoVolt": 3.65, "cellHiVolt": 3.72, "cellAvgVolt": 3.69}
        return {"cellLoTemp": 24.5 + wave, "cellHiTemp": 27.1 + wave, "cellAvgTemp": 25.8 + wave}

    def handle(self, peer: int, got: Received) -> None:
        cls = got.message_class
        if cls is MessageClass.HEARTBEAT:
            return
        if cls not in _ACK_CLASSES or len(got.payload) < SEQ_BYTES:
            self.stats.decode_errors += 1
            return
        self.command(cls, got.payload, self._check)

    def command(self, cls: MessageClass, payload: bytes, apply: Callable[[MessageClass, bytes], bool]) -> None:
        """One copy of a critical command: applied once (``apply`` checks and applies it), its
        record persisted, then acknowledged; a repeat is acknowledged again, never re-applied."""
        kill_point("module.command.received")
        self.stats.commands_received += 1
        seq = int.from_bytes(payload[:SEQ_BYTES], "big") & SEQ_MASK
        stream = MessageClass(cls).value
        decision = self.delivery.decide(stream, seq)
        if decision is Decision.STALE:
            self.stats.stale += 1
            return
        if decision is Decision.REPEAT:
            self.stats.repeats += 1
            ok = self.delivery.status(stream)
        else:
            ok = apply(cls, payload[SEQ_BYTES:])
            record = self.delivery.commit(stream, seq, ok, self.effect(cls, payload[SEQ_BYTES:]) if ok else None)
            if self._store is not None:
                self._store.put_record(self._record_name, record)  # before the ack: it survives a restart
            if ok:
                self.stats.applied[f"{self.node_id}/{stream}/{seq}"] += 1
                if self.journal is not None:
                    with open(self.journal, "a", encoding="utf-8") as f:
                        f.write(f"{self.node_id}/{stream}/{seq}\n")
            kill_point("module.command.committed")
        ack = seq | (0 if ok else NACK_FLAG)
        self.send(self.node_id, cls, ack.to_bytes(2, "big"))
        kill_point("module.command.acked")

    def effect(self, cls: MessageClass, body: bytes) -> Any:
        """What applying the command changed, recorded with it (here: the body's CRC-32)."""
        return zlib.crc32(body)

    def _check(self, cls: MessageClass, body: bytes) -> bool:
        try:
            if cls is MessageClass.FIRMWARE_UPDATE:
                block, crc = body[4:-4], body[-4:]
                return zlib.crc32(block).to_bytes(4, "big") == crc
            decoded = self.db.get_message_by_name(_LEGACY_COMMAND[cls]).decode(body)
            key = "moduleId" if "moduleId" in decoded else "module_id"
            return int(decoded[key]) == self.node_id
        except Exception:
            self.stats.decode_errors += 1
            return False


#: Firmware blocks may arrive late without harm, and a multi-frame ISO-TP unit is lost more often
#: than one frame (docs/delivery.md §3): they get more tries than the state commands.
FIRMWARE_RETRY = RetryPolicy(max_tries=30)
#: How often the pack looks for retries due (well under RetryPolicy.first_s).
RETRY_TICK_S = 0.01
#: The pack reserves sequence numbers in blocks and persists only the block's end, as the channel
#: reserves freshness (docs/delivery.md §Persistence): a restart skips ahead, never back.
SEQ_RESERVE = 256
#: Where the pack keeps its streams' reserved sequence numbers (in its own key store).
SENDER_RECORD = "delivery-sender"


class _Pack(_Node):
    """The pack controller: keep-alives and critical commands out (acknowledged, retried), telemetry and acks in."""

    def __init__(
        self,
        endpoint: _Endpoint,
        plan: TrafficPlan,
        clock: SimClock,
        db: Any,
        retry: RetryPolicy | None = None,
        keystore: KeyStore | None = None,
    ) -> None:
        super().__init__(endpoint, plan, clock)
        self.db = db
        self._store = keystore
        self._reserved: dict[str, int] = {}
        if keystore is not None and SENDER_RECORD in keystore.record_names():
            self._reserved = {k: int(v) for k, v in keystore.record(SENDER_RECORD).items()}
        start = {_stream_of(k): v for k, v in self._reserved.items()}
        self.retry = retry or RetryPolicy(supersede=True)
        self.delivery = DeliverySender(self.retry, next_seq=start, policy_for=self._policy_for)
        self._submitted: collections.Counter[tuple[int, MessageClass]] = collections.Counter()
        self._beat = 0
        self._fw_offset = 0
        self.sending = True

    def start(self, scheduler: Scheduler, t0: float, nodes: list[int], total: int) -> None:
        p = self.plan
        for node in nodes:
            share = (node - 1) / total
            scheduler.at(t0 + share * p.keepalive_period, self._every(p.keepalive_period, self._keepalive, node))
            scheduler.at(t0 + share * p.command_period, self._every(p.command_period, self._command, node))
            scheduler.at(t0 + share * p.limits_period, self._every(p.limits_period, self._limits, node))
        order = itertools.count()  # firmware blocks go round robin over the modules
        scheduler.at(t0, self._every(p.firmware_period, lambda: self._firmware(nodes[next(order) % len(nodes)])))
        scheduler.at(t0, self._retries)

    def _policy_for(self, stream: Any) -> RetryPolicy:
        return FIRMWARE_RETRY if stream[1] is MessageClass.FIRMWARE_UPDATE else self.retry

    def _retries(self) -> float:
        """Retries due and give-ups (runs during the drain too: it is how late commands settle)."""
        sends, gave_up = self.delivery.tick(self.clock.now())
        for settled in gave_up:
            _node, cls = settled.stream  # type: ignore[misc]
            self.stats.gave_up[MessageClass(cls).value] += 1
        for t in sends:
            self._transmit(t)
        return RETRY_TICK_S

    def _every(self, period: float, fn: Callable[..., None], *args: Any) -> Callable[[], float | None]:
        def task() -> float | None:
            if not self.sending:
                return None
            fn(*args)
            return period

        return task

    def _keepalive(self, node: int) -> None:
        self._beat = (self._beat + 1) & 0xFF
        self.send(node, MessageClass.HEARTBEAT, bytes([self._beat]))

    def _command(self, node: int) -> None:
        sub = self._submitted
        n = sub[(node, MessageClass.CHARGE_COMMAND)] + sub[(node, MessageClass.DISCHARGE_COMMAND)]
        cls = MessageClass.CHARGE_COMMAND if n % 2 == 0 else MessageClass.DISCHARGE_COMMAND
        body = self.db.get_message_by_name("MODULE_STATE_CHANGE").encode(
            {"moduleId": node, "state": 3, "hvBusVoltage": 400.0}
        )
        self._critical(node, cls, body)

    def _limits(self, node: int) -> None:
        body = self.db.get_message_by_name("MODULE_LIMITS").encode(
            {
                "module_id": node,
                "module_dischage_limit": 100.0,
                "module_charge_limit": 50.0,
                "module_charge_end_voltage_limit": 58.8,
            }
        )
        self._critical(node, MessageClass.SAFETY_LIMITS, body)

    def _firmware(self, node: int) -> None:
        size = self.plan.firmware_block
        block = bytes((self._fw_offset + i) & 0xFF for i in range(size))
        body = self._fw_offset.to_bytes(4, "big") + block + zlib.crc32(block).to_bytes(4, "big")
        self._fw_offset += size
        self._critical(node, MessageClass.FIRMWARE_UPDATE, body)

    def _critical(self, node: int, cls: MessageClass, body: bytes) -> None:
        self._submitted[(node, cls)] += 1
        self.stats.commands_sent += 1
        self._reserve(node, cls)
        kill_point("pack.command.reserved")
        for t in self.delivery.submit((node, cls), body, self.clock.now()):
            self._transmit(t)
        for settled in self.delivery.superseded:
            self.stats.superseded[MessageClass(settled.stream[1]).value] += 1  # type: ignore[index]
        self.delivery.superseded.clear()

    def _reserve(self, node: int, cls: MessageClass) -> None:
        if self._store is None:
            return
        name = f"{node}/{cls.value}"
        nxt = self.delivery.next_seqs().get((node, cls), 0)
        reserved = self._reserved.get(name)
        if reserved is None or not newer(reserved, nxt):
            self._reserved[name] = (nxt + SEQ_RESERVE) % SEQ_SPACE
            self._store.put_record(SENDER_RECORD, dict(self._reserved))

    def _transmit(self, t: Transmit) -> None:
        # Every try is a new secured unit: the channel gives it new freshness (docs/delivery.md).
        node, cls = t.stream  # type: ignore[misc]
        if t.attempt > 1:
            self.stats.retransmissions += 1
        self.send(node, cls, t.seq.to_bytes(SEQ_BYTES, "big") + t.body, retry=t.attempt > 1)
        kill_point("pack.command.sent")

    def handle(self, peer: int, got: Received) -> None:
        cls = got.message_class
        spec = _TELEMETRY_BY_CLASS.get(cls)
        if spec is not None:
            try:
                self.db.get_message_by_name(spec.legacy).decode(got.payload)
                self.stats.telemetry_decoded += 1
            except Exception:
                self.stats.decode_errors += 1
            return
        if cls is MessageClass.HEARTBEAT:
            return
        if cls not in _ACK_CLASSES or len(got.payload) != 2:
            self.stats.decode_errors += 1
            return
        word = int.from_bytes(got.payload, "big")
        seq = word & SEQ_MASK
        settled, following = self.delivery.on_ack((peer, cls), seq, bool(word & NACK_FLAG), self.clock.now())
        if settled is None:
            self.stats.stray_acks += 1  # a duplicate or a late copy: the command is settled already
            return
        self.stats.acks_received += 1
        if settled.outcome is Outcome.REFUSED:
            self.stats.refused += 1
        else:
            self.stats.acknowledged[f"{peer}/{cls.value}/{seq}"] += 1
        self.stats.ack_latency_sum += settled.latency
        self.stats.ack_latency_max = max(self.stats.ack_latency_max, settled.latency)
        self.stats.latencies[cls.value].append(settled.latency)
        kill_point("pack.command.acked")
        for t in following:
            self._transmit(t)

    def outstanding(self) -> int:
        """Commands neither acknowledged nor given up (in flight or queued)."""
        return self.delivery.pending()
