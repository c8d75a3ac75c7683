"""The binding API carried over CAN (ISO-TP) for modules without an IP stack.

The controller's gateway and a module's node exchange one request and one answer per call over an
ISO-TP link (ISO 15765-2, ``can-isotp``) whose two identifiers come from the seed layout:
function ``BINDING_API`` (0x005), the module's node id from its ``can://CHANNEL/0xNN`` endpoint,
direction 0 (controller to node) for requests and 1 (node to controller) for answers, binding tier
signalled (flag 1, level 11: the content is a signed envelope), and the priority the function
table gives ``BINDING_API`` (below charge, discharge and safety traffic). With priority 4 that
is request ID ``0x100E0501`` and answer ID ``0x101E0501`` for node 0x01.

Framing: each ISO-TP message is one canonical CBOR array. Why CBOR, not JSON: the signatures
already cover canonical CBOR, byte strings travel raw instead of base64 (measured: a
distribute-key request is 1,016-1,075 B as this PDU against 1,302-1,372 B as JSON, 146-154
against 187-197 classic ISO-TP frames, ~22 % less bus time), and a module MCU parses CBOR more
cheaply than JSON plus base64::

    request = [1, seq, op, ControllerRequest.to_cbor()]          ; seq: uint 0-65535, op: text
    answer  = [1, seq, status, EntityResponse.to_cbor() / CBOR {"error", "detail"}]

Ops outside the binding API (e.g. ``validate``, the discovery's level-7 challenge served by
:class:`~modbatt.transport.serving.OpRouter`) travel generically: the body is the canonical CBOR of
the JSON payload, and the answer the canonical CBOR of the JSON answer.

``seq`` plays the role of MQTT's correlation data: an answer whose ``seq`` is not the outstanding
one is ignored and counted. ``status`` uses the HTTP numbers (200, 4xx classified rejection, 5xx
entity unavailable) so all transports share one meaning. The server remembers the last answers
by request bytes, so a retried request (same ``seq``, same bytes) gets the first answer again and
is never processed twice; anything else reaches the entity and its own replay protection.

This module only converts views (JSON to CBOR and back) and moves bytes; the entity node decides.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import can

from ..can.functions import function_named
from ..can.ids import SEED_LAYOUT, CanIdFields, IdLayout
from ..encoding import canonical_dumps, strict_loads
from ..errors import ConfigError, EncodingError, ModbattError, Reason, TransportError, VerificationError
from ..model.access import is_can_address
from ..model.tier import Tier
from ..protocol.delivery import RetryPolicy
from ..protocol.messages import OPERATIONS, ControllerRequest, EntityResponse
from .http import _raise_rejection
from .isotp_link import IsoTpLink
from .serving import EntityHandler

__all__ = [
    "BINDING_API_FUNCTION",
    "PDU_VERSION",
    "PRIORITY",
    "CanEntityClient",
    "CanEntityServer",
    "binding_api_ids",
    "can_endpoint",
    "decode_pdu",
    "encode_pdu",
]

log = logging.getLogger(__name__)

_FUNCTION = function_named("BINDING_API")
BINDING_API_FUNCTION = _FUNCTION.code
PDU_VERSION = 1
#: The function table's priority (one place decides arbitration for every sender); 6, J1939's
#: transport-protocol priority, if the table carries none.
PRIORITY: int = getattr(_FUNCTION, "priority", 6)
_SEQ_MOD = 1 << 16
#: Wait between attempts after a send failure: the delivery policy's 0.1 s, doubling, at most 1 s.
SEND_BACKOFF = RetryPolicy()
_CAN_ENDPOINT = re.compile(r"can://([A-Za-z0-9._-]{1,32})/0x([0-9a-fA-F]{2})")


def can_endpoint(endpoint: str) -> tuple[str, int]:
    """``(channel, node)`` of a ``can://CHANNEL/0xNN`` endpoint (ConfigError otherwise)."""
    m = _CAN_ENDPOINT.fullmatch(endpoint)
    if not m:
        raise ConfigError(f"{endpoint!r} is not a can://CHANNEL/0xNN endpoint")
    node = int(m.group(2), 16)
    if not is_can_address(node):
        raise ConfigError(f"{endpoint!r}: a node id is 0x01-0x1F (or 0xFF unregistered)")
    return m.group(1), node


def binding_api_ids(node: int, layout: IdLayout = SEED_LAYOUT, priority: int = PRIORITY) -> tuple[int, int]:
    """``(request ID, answer ID)`` of the binding-API ISO-TP link with ``node``."""
    request = layout.encode(
        CanIdFields(function=BINDING_API_FUNCTION, node=node, direction=0, priority=priority, tier=Tier.BINDING)
    )
    answer = layout.encode(
        CanIdFields(function=BINDING_API_FUNCTION, node=node, direction=1, priority=priority, tier=Tier.BINDING)
    )
    return request, answer


def encode_pdu(seq: int, head: int | str, body: bytes) -> bytes:
    """``[1, seq, op-or-status, body]`` as canonical CBOR."""
    return canonical_dumps([PDU_VERSION, seq % _SEQ_MOD, head, bytes(body)])


def decode_pdu(data: bytes, *, max_bytes: int = 4095) -> tuple[int, int | str, bytes]:
    """``(seq, op-or-status, body)``; VerificationError(MALFORMED/OVERSIZED) for anything else."""
    try:
        value = strict_loads(data, max_bytes=max_bytes)
    except EncodingError as exc:
        raise VerificationError(exc.reason, str(exc)) from None
    if not (isinstance(value, list) and len(value) == 4 and value[0] == PDU_VERSION):
        raise VerificationError(Reason.MALFORMED, "not a version-1 binding-API PDU")
    _, seq, head, body = value
    if not (isinstance(seq, int) and 0 <= seq < _SEQ_MOD):
        raise VerificationError(Reason.MALFORMED, "PDU sequence number out of range")
    if not (isinstance(head, int) and 100 <= head <= 599) and not (isinstance(head, str) and 0 < len(head) <= 32):
        raise VerificationError(Reason.MALFORMED, "PDU head is neither an op nor a status")
    if not isinstance(body, bytes):
        raise VerificationError(Reason.MALFORMED, "PDU body must be a byte string")
    return seq, head, body


def _rejection_bytes(reason: Reason, detail: str) -> bytes:
    return canonical_dumps({"error": reason.value, "detail": detail[:200]})


# ---------------------------------------------------------------------------------------------
# Controller side
# ---------------------------------------------------------------------------------------------


class CanEntityClient:
    """:class:`~modbatt.transport.http.EntityClient` over ISO-TP on the controller's gateway bus.

    ``bus`` is one python-can bus (any channel name in endpoints is accepted unless ``channel`` is
    given) or a mapping from channel name to bus. One ISO-TP link per node is opened on first use
    and shares the bus's single Notifier. ``timeout`` bounds the wait for an answer per attempt;
    ``retries`` re-sends the same PDU after a send failure or a timeout (the node answers a repeat
    from its cache, never processing it twice). After a send failure (the bus refused the frames,
    e.g. bus-off, or flow control never came) the next attempt waits ``backoff.delay(attempt)``.
    A call that runs out of attempts raises :class:`TransportError` with ``Reason.TIMEOUT``
    (docs/delivery.md §3).
    """

    def __init__(
        self,
        bus: can.BusABC | Mapping[str, can.BusABC],
        *,
        channel: str | None = None,
        timeout: float = 5.0,
        retries: int = 1,
        fd: bool = False,
        layout: IdLayout = SEED_LAYOUT,
        isotp_params: Mapping[str, Any] | None = None,
        backoff: RetryPolicy = SEND_BACKOFF,
    ) -> None:
        if retries < 0 or timeout <= 0:
            raise ConfigError("timeout must be positive and retries not negative")
        self._buses: dict[str | None, can.BusABC] = (
            {channel: bus} if isinstance(bus, can.BusABC) else {str(k): v for k, v in bus.items()}
        )
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.fd = fd
        self.layout = layout
        self._params = dict(isotp_params or {})
        self._notifiers: dict[str | None, can.Notifier] = {}
        self._links: dict[tuple[str | None, int], IsoTpLink] = {}
        self._locks: dict[tuple[str | None, int], threading.Lock] = {}
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = False
        #: Transport events: ``unknown_correlation`` (answers with a stale seq), ``malformed_answer``,
        #: ``retries``, ``send_failed``, ``answers``.
        self.counters: collections.Counter[str] = collections.Counter()

    def notifier(self, channel: str | None = None) -> can.Notifier:
        """The one Notifier on ``channel``'s bus (others, e.g. discovery, may add listeners)."""
        key = self._bus_key(channel)
        with self._lock:
            if key not in self._notifiers:
                self._notifiers[key] = can.Notifier(self._buses[key], [], timeout=0.05)
            return self._notifiers[key]

    def _bus_key(self, channel: str | None) -> str | None:
        if None in self._buses:
            return None
        if channel not in self._buses:
            raise TransportError(f"no CAN bus for channel {channel!r} (have {sorted(map(str, self._buses))})")
        return channel

    def _link(self, channel: str, node: int) -> tuple[IsoTpLink, threading.Lock]:
        key = (self._bus_key(channel), node)
        notifier = self.notifier(channel)
        with self._lock:
            if self._closed:
                raise TransportError("this CAN client is closed")
            if key not in self._links:
                txid, rxid = binding_api_ids(node, self.layout)
                self._links[key] = IsoTpLink(
                    self._buses[key[0]], txid, rxid, self.fd, params=self._params, notifier=notifier
                )
                self._locks[key] = threading.Lock()
            return self._links[key], self._locks[key]

    def call(self, endpoint: str, op: str, payload: dict[str, Any]) -> Any:
        """Send one binding-API request to the node at ``endpoint`` and return its JSON answer."""
        try:
            channel, node = can_endpoint(endpoint)
            if op in OPERATIONS:
                body = ControllerRequest.from_json(payload, expected_op=op).to_cbor()
            else:
                body = canonical_dumps(payload)  # another service behind the node: carried as is
        except (ConfigError, VerificationError, EncodingError) as exc:
            raise TransportError(f"cannot carry this request to {endpoint} over CAN: {exc}") from None
        link, link_lock = self._link(channel, node)
        with self._lock:
            self._seq = (self._seq + 1) % _SEQ_MOD
            seq = self._seq
        pdu = encode_pdu(seq, op, body)
        if len(pdu) > link.max_payload:
            raise TransportError(f"{len(pdu)}-byte request exceeds the ISO-TP limit {link.max_payload}")
        last = "no attempt made"
        with link_lock:  # one outstanding request per node: ISO-TP links are half duplex here
            for attempt in range(self.retries + 1):
                if attempt:
                    self.counters["retries"] += 1
                try:
                    link.send(pdu, timeout=self.timeout)
                except (TransportError, ConfigError) as exc:
                    self.counters["send_failed"] += 1
                    last = f"node 0x{node:02x} did not take the request ({exc})"
                    if attempt < self.retries:
                        time.sleep(self.backoff.delay(attempt + 1))  # a bus in bus-off recovers meanwhile
                    continue
                answer = self._await(link, seq, time.monotonic() + self.timeout)
                if answer is not None:
                    return self._result(endpoint, op, *answer)
                last = f"no answer from node 0x{node:02x} within {self.timeout:g} s"
        raise TransportError(f"cannot reach {endpoint}: {last} (after {self.retries + 1} attempts)", Reason.TIMEOUT)

    def _await(self, link: IsoTpLink, seq: int, deadline: float) -> tuple[int, bytes] | None:
        while (remaining := deadline - time.monotonic()) > 0:
            data = link.recv(timeout=remaining)
            if data is None:
                return None
            try:
                got, status, body = decode_pdu(data)
            except VerificationError:
                self.counters["malformed_answer"] += 1
                continue
            if got != seq or not isinstance(status, int):
                self.counters["unknown_correlation"] += 1
                continue
            self.counters["answers"] += 1
            return status, body
        return None

    def _result(self, endpoint: str, op: str, status: int, body: bytes) -> Any:
        if status >= 500:
            raise TransportError(f"{endpoint} is unavailable (status {status})")
        try:
            if status == 200:
                return EntityResponse.from_cbor(body).to_json() if op in OPERATIONS else strict_loads(body)
            answer = strict_loads(body, max_bytes=1024)
        except (VerificationError, EncodingError):
            # The node answered our seq with bytes we cannot read: a broken or hostile node.
            self.counters["malformed_answer"] += 1
            raise TransportError(f"{endpoint} answered with an unreadable body (status {status})") from None
        _raise_rejection(status, answer)

    def close(self) -> None:
        """Stop every ISO-TP link and Notifier this client started (the buses stay open); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            links, notifiers = list(self._links.values()), list(self._notifiers.values())
        for link in links:
            link.close()
        for notifier in notifiers:
            notifier.stop()

    def __enter__(self) -> CanEntityClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Entity side
# ---------------------------------------------------------------------------------------------

_OWN_REJECTION_STATUS = {Reason.OVERSIZED: 413}


class CanEntityServer:
    """Serves one module's binding API on its ISO-TP link, answering through ``node.handle``.

    A PDU that does not even parse (no ``seq`` to answer) is dropped and counted; a parsed PDU
    always gets an answer, a classified rejection for a malformed or forged request. One thread,
    stopped by :meth:`stop`.
    """

    def __init__(
        self,
        node: EntityHandler,
        bus: can.BusABC,
        *,
        node_id: int | None = None,
        fd: bool = False,
        layout: IdLayout = SEED_LAYOUT,
        notifier: can.Notifier | None = None,
        isotp_params: Mapping[str, Any] | None = None,
        cache_size: int = 16,
        send_timeout: float = 5.0,
    ) -> None:
        self.node = node
        self.node_id = node_id if node_id is not None else can_endpoint(node.access_data.endpoint)[1]
        request_id, answer_id = binding_api_ids(self.node_id, layout)
        self._link = IsoTpLink(bus, answer_id, request_id, fd, params=isotp_params, notifier=notifier)
        self._cache: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._cache_size = cache_size
        self._send_timeout = send_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Transport events: ``handled``, ``malformed_pdu`` (dropped), ``cached_answers``, ``send_failed``, ``errors``.
        self.counters: collections.Counter[str] = collections.Counter()
        #: Classified rejections answered, by reason.
        self.rejections: collections.Counter[Reason] = collections.Counter()

    def start(self) -> CanEntityServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"can-entity-0x{self.node_id:02x}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and the ISO-TP link; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._link.close()

    close = stop

    def __enter__(self) -> CanEntityServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            data = self._link.recv(timeout=0.1)
            if data is None:
                continue
            try:
                self._serve(data)
            except Exception:  # the module's only server thread must survive any one request
                self.counters["errors"] += 1
                log.exception("CAN entity 0x%02x failed on one request", self.node_id)

    def _serve(self, data: bytes) -> None:
        try:
            seq, op, body = decode_pdu(data)
        except VerificationError:
            self.counters["malformed_pdu"] += 1
            return
        key = hashlib.sha256(data).digest()
        cached = self._cache.get(key)
        if cached is not None:
            self.counters["cached_answers"] += 1
            self._send(cached)
            return
        status, answer = self._decide(op, body)
        self.counters["handled"] += 1
        pdu = encode_pdu(seq, status, answer)
        if status < 500:  # a storage failure may succeed on retry: do not pin it
            self._cache[key] = pdu
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._send(pdu)

    def _decide(self, op: int | str, body: bytes) -> tuple[int, bytes]:
        if not isinstance(op, str):
            return self._reject(VerificationError(Reason.MALFORMED, "a request PDU carries an op, not a status"))
        try:
            if op in OPERATIONS:
                payload: Any = ControllerRequest.from_cbor(body, expected_op=op).to_json()
            else:
                payload = strict_loads(body, max_bytes=4095)  # another service: its handler judges it
        except VerificationError as exc:
            return self._reject(exc)
        except EncodingError as exc:
            return self._reject(VerificationError(exc.reason, str(exc)))
        status, answer = self.node.handle(op, payload)
        if status == 200 and op not in OPERATIONS:
            try:
                return 200, canonical_dumps(answer)
            except EncodingError:
                return 500, _rejection_bytes(Reason.MALFORMED, "the entity produced an answer CAN cannot carry")
        if status != 200:
            with contextlib.suppress(ValueError):  # "not_found", "unavailable" are not verification reasons
                self.rejections[Reason(answer.get("error"))] += 1
            return status, canonical_dumps({"error": str(answer.get("error")), "detail": str(answer.get("detail"))})
        try:
            return 200, EntityResponse.from_json(answer).to_cbor()
        except ModbattError:
            return 500, _rejection_bytes(Reason.MALFORMED, "the entity produced an answer CAN cannot carry")

    def _reject(self, exc: VerificationError) -> tuple[int, bytes]:
        self.rejections[exc.reason] += 1
        return _OWN_REJECTION_STATUS.get(exc.reason, 400), _rejection_bytes(exc.reason, exc.detail)

    def _send(self, pdu: bytes) -> None:
        try:
            self._link.send(pdu, timeout=self._send_timeout)
        except (TransportError, ConfigError):
            self.counters["send_failed"] += 1
