"""ISO-TP (ISO 15765-2) links over python-can buses: can-isotp's threads, our parameters.

The codec side (addressing and parameters) is :func:`modbatt.can.fragment.isotp_address` and
:func:`modbatt.can.fragment.isotp_params`; this module runs them: :class:`IsoTpLink` wraps
``isotp.NotifierBasedCanStack`` and counts what can-isotp reports. can-isotp itself never
raises on received bytes: a frame that is not valid ISO-TP here (bad PCI, a consecutive frame
out of sequence or without a first frame, a first frame longer than the limit) is reported to
the error handler and dropped, and the link keeps receiving (docs/buses.md, "Malformed input").
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import can
import isotp

from ..can.fragment import isotp_address, isotp_params
from ..errors import ConfigError, Reason, TransportError

__all__ = ["MALFORMED_ERRORS", "IsoTpLink"]

#: can-isotp reports meaning received frames were not valid ISO-TP for this link (dropped);
#: the others are timeouts and the peer's flow-control verdicts.
MALFORMED_ERRORS: frozenset[str] = frozenset(
    {
        "InvalidCanDataError",
        "UnexpectedConsecutiveFrameError",
        "UnexpectedFlowControlError",
        "WrongSequenceNumberError",
        "ReceptionInterruptedWithSingleFrameError",
        "ReceptionInterruptedWithFirstFrameError",
        "FrameTooLongError",
        "ChangingInvalidRXDLError",
        "MissingEscapeSequenceError",
        "InvalidCanFdFirstFrameRXDL",
        "UnsupportedWaitFrameError",
    }
)

#: python-can's report of a transmit the bus refused (counted in :attr:`IsoTpLink.reports` by name).
_REFUSALS: frozenset[str] = frozenset({"CanError", "CanOperationError", "CanTimeoutError"})


class _Stack(isotp.NotifierBasedCanStack):
    """can-isotp's stack whose transmit survives a frame the bus refuses.

    python-can reports a refused transmit (a controller in bus-off, a full queue) by raising
    ``can.CanError`` from ``bus.send``; can-isotp 2.x calls it from its worker thread, which the
    exception would end, leaving a link that never sends again. Here the refusal is reported and
    the transfer in progress fails at once (its blocking send raises), so the caller can retry
    once the bus is back (docs/delivery.md §3).
    """

    def __init__(self, *args: Any, on_refused: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        send = self.txfn

        def txfn(msg: Any) -> None:
            try:
                send(msg)
            except can.CanError as exc:
                on_refused(exc)
                self._stop_sending(success=False)  # runs on the worker thread, which owns the tx state

        self.txfn = txfn


class IsoTpLink:
    """One ISO-TP connection over a python-can bus: ``send(bytes)`` / ``recv(timeout)``.

    Runs can-isotp's own threads. Pass a shared ``notifier`` to run several links on one bus:
    python-can allows one Notifier per bus. :attr:`reports` counts can-isotp's error reports by
    kind; :attr:`malformed` the ones that mean received frames were dropped as invalid.
    """

    def __init__(
        self,
        bus: can.BusABC,
        txid: int,
        rxid: int,
        fd: bool = False,
        *,
        extended: bool | None = None,
        params: Mapping[str, Any] | None = None,
        notifier: can.Notifier | None = None,
        max_errors_kept: int = 32,
    ) -> None:
        self.address = isotp_address(txid, rxid, extended=extended)
        self.params = isotp_params(fd=fd, **dict(params or {}))
        self._owns_notifier = notifier is None
        self._notifier = notifier if notifier is not None else can.Notifier(bus, [], timeout=0.05)
        #: Recent transport errors reported by can-isotp (bounded, newest last).
        self.errors: collections.deque[Exception] = collections.deque(maxlen=max_errors_kept)
        #: Every report by kind (can-isotp's error class name), kept for the link's whole life.
        self.reports: collections.Counter[str] = collections.Counter()
        try:
            self._stack = _Stack(
                bus, self._notifier, address=self.address, params=self.params, error_handler=self._report,
                on_refused=self._report,
            )  # fmt: skip
            self._stack.start()
        except Exception as exc:
            if self._owns_notifier:  # do not leave a Notifier thread behind a failed constructor
                self._notifier.stop()
            if isinstance(exc, ValueError):  # can-isotp's verdict on a parameter
                raise ConfigError(f"ISO-TP parameters rejected: {exc}") from exc
            raise
        self._closed = False

    def _report(self, error: Exception) -> None:
        # Called from can-isotp's thread; one report per event.
        self.reports[type(error).__name__] += 1
        self.errors.append(error)

    @property
    def malformed(self) -> int:
        """Received frames dropped as invalid ISO-TP for this link."""
        return sum(n for kind, n in self.reports.items() if kind in MALFORMED_ERRORS)

    @property
    def refused(self) -> int:
        """Frames the bus refused to send (python-can's ``CanError`` from ``send``, e.g. bus-off)."""
        return sum(n for kind, n in self.reports.items() if kind in _REFUSALS)

    @property
    def max_payload(self) -> int:
        """Largest message this link accepts in either direction."""
        return int(self.params["max_frame_size"])

    def send(self, payload: bytes, timeout: float = 5.0) -> None:
        """Send one message; blocks until the last frame left or raises :class:`TransportError`."""
        if len(payload) > self.max_payload:
            raise ConfigError(f"{len(payload)}-byte message exceeds the ISO-TP limit {self.max_payload}")
        refused = self.refused
        try:
            self._stack.send(bytes(payload), send_timeout=timeout)
        except isotp.BlockingSendFailure as exc:
            why = "the bus refused a frame (bus-off?)" if self.refused > refused else str(exc)
            raise TransportError(f"ISO-TP send failed: {why}", Reason.TIMEOUT) from exc

    def recv(self, timeout: float | None = None) -> bytes | None:
        """The next complete message, or ``None`` if none arrived within ``timeout`` seconds."""
        data = self._stack.recv(block=True, timeout=timeout)
        return bytes(data) if data is not None else None

    def close(self) -> None:
        """Stop can-isotp's threads (and the Notifier if this link created it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stack.stop()
        if self._owns_notifier:
            self._notifier.stop()

    def __enter__(self) -> IsoTpLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
