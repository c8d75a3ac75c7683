"""Live bus inspection for notebooks: a listen-only session that decodes, decrypts and checks for loss.

:class:`LiveSession` opens the bus its parameters name through a :class:`ListenOnlyBus`: python-can's
``receive_own_messages`` is off and ``send`` raises (and is counted), so the session cannot put a
frame on the bus. Each frame is decoded as it arrives by a :class:`~modbatt.transport.monitor.Monitor`
(identifier fields, signals, ISO-TP and fragment units reassembled) and, given an entity's key
store, decrypted (:class:`~modbatt.nodes.monitor_keys.KeyStoreDecryptor`); every decrypted unit
with a cleartext view lands in a :class:`~modbatt.workbench.capture.DecodedCapture`, whose
:meth:`~modbatt.workbench.capture.DecodedCapture.rows` become a pandas DataFrame of physical
signal values over time (:meth:`LiveSession.signals`).

:meth:`LiveSession.run` calls ``on_update`` every ``every`` seconds while it listens;
:func:`display_live` is such a callback for Jupyter: one display handle updated in place.

Loss is detected two ways (:meth:`LiveSession.verdict`): heartbeats carry a rolling 8-bit counter
(each module its own, the pack one for all its keep-alives), so a counter step other than +1
between two decrypted heartbeats of one stream is a lost one; and the sender reports what it sent
(:class:`BackgroundPack`, the pack on a thread here, or :class:`SimProcess`, ``modbatt sim --json``
in another process), compared frame for frame with what was heard. A run that lost frames is
``ok=False``, and :meth:`LiveVerdict.raise_for_loss` raises :class:`~modbatt.errors.TransportError`
naming the loss.

:func:`decrypted_demo_trace` shows the other half of ``modbatt monitor --keystore``: the demo's
frames read back through an entity's key store.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can

from ..can.functions import FUNCTIONS
from ..crypto.keystore import KeyStore
from ..errors import ConfigError, TransportError
from ..nodes.monitor_keys import KeyStoreDecryptor
from ..transport.canbus import BusConfig, open_bus
from ..transport.monitor import Monitor
from .capture import DecodedCapture, DecodedUnit
from .demo import PACK_ID, run_demo
from .monitor_view import format_frame

__all__ = [
    "BackgroundPack",
    "ListenOnlyBus",
    "LiveSession",
    "LiveVerdict",
    "SimProcess",
    "decrypted_demo_trace",
    "display_live",
    "listen",
    "open_keystore",
]

_HEARTBEAT = "HEARTBEAT"


class ListenOnlyBus(can.BusABC):
    """A python-can bus that only receives: :meth:`send` raises and counts the attempt."""

    def __init__(self, inner: can.BusABC) -> None:
        self._inner = inner
        #: Attempts to transmit through this bus (each refused); stays 0 for a listen-only session.
        self.send_attempts = 0
        super().__init__(channel=getattr(inner, "channel_info", None))
        self.channel_info = f"listen-only {getattr(inner, 'channel_info', '')}".strip()

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        return self._inner.recv(timeout), False

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        self.send_attempts += 1
        raise TransportError("this session is listen-only: it never transmits")

    def shutdown(self) -> None:
        self._inner.shutdown()
        super().shutdown()


def open_keystore(path: str | Path) -> KeyStore:
    """An entity's encrypted key store, its key file beside it (``.kek``), read-only use."""
    store = Path(path)
    if not store.exists():
        raise ConfigError(f"no key store at {store}")
    return KeyStore.open(store, key_file=store.with_suffix(".kek"))


@dataclass
class LiveVerdict:
    """What a listen-only run concluded about loss."""

    frames_heard: int
    frames_sent: int | None  # what the sender reported, if it did
    heartbeats: int
    heartbeat_gaps: int  # heartbeats missing between decrypted ones
    lost: int  # frames_sent - frames_heard when the sender reported, plus heartbeat gaps
    send_attempts: int  # must be 0: the session never transmits

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.send_attempts == 0 and self.frames_heard > 0

    def describe(self) -> str:
        sent = f" of {self.frames_sent} sent" if self.frames_sent is not None else ""
        return (
            f"{self.frames_heard} frames heard{sent}; {self.heartbeats} heartbeats decrypted, "
            f"{self.heartbeat_gaps} missing; {'no loss' if self.lost == 0 else f'{self.lost} lost'}"
        )

    def raise_for_loss(self) -> None:
        """Raise :class:`TransportError` unless the run heard everything (a lossy run never passes)."""
        if self.send_attempts:
            raise TransportError(f"the listen-only session tried to transmit {self.send_attempts} times")
        if self.frames_heard == 0:
            raise TransportError("no frame was heard: is anything sending on this bus?")
        if self.lost:
            raise TransportError(f"frames were lost: {self.describe()}")


@dataclass
class LiveSession:
    """A listen-only session on ``config`` (see the module doc); close it, or use ``with``."""

    config: BusConfig
    keystore: KeyStore | None = None
    bitrate: int | None = None
    bus: ListenOnlyBus = field(init=False)
    monitor: Monitor = field(init=False)
    capture: DecodedCapture = field(init=False)

    def __post_init__(self) -> None:
        kwargs = dict(self.config.kwargs)
        if kwargs.get("receive_own_messages"):
            raise ConfigError("a listen-only session takes no receive_own_messages=True")
        kwargs["receive_own_messages"] = False
        self.config = dataclasses.replace(self.config, kwargs=kwargs)
        decryptor = KeyStoreDecryptor(self.keystore) if self.keystore is not None else None
        self.monitor = Monitor(decryptor=decryptor, builtin_databases=True, bitrate=self.bitrate)
        self.capture = DecodedCapture()
        self._last_beat: dict[tuple[int, int], int] = {}
        self._beats = 0
        self._gaps = 0
        self.bus = ListenOnlyBus(open_bus(self.config))
        # A reader thread empties the socket as frames arrive and decoding happens in poll(): a
        # listener that decodes (and decrypts) between reads lets a UDP socket overflow in a burst.
        self._inbox = can.BufferedReader()
        self._notifier = can.Notifier(self.bus, [self._inbox], timeout=0.02)

    @property
    def frames(self) -> int:
        return self.capture.frames

    def poll(self, seconds: float) -> int:
        """Read and decode every frame that arrives within ``seconds``; how many arrived."""
        end = time.monotonic() + seconds
        n = 0
        while (left := end - time.monotonic()) > 0:
            msg = self._inbox.get_message(timeout=min(left, 0.05))
            if msg is None:
                continue
            self.observe(msg)
            n += 1
        return n

    def observe(self, msg: can.Message) -> None:
        """Decode one frame into the statistics and the capture (and the heartbeat check)."""
        report = self.monitor.observe(msg)
        self.capture.frames += 1
        for unit in report.units:
            self.capture.units.append(DecodedUnit(float(msg.timestamp), msg.channel, unit))
            if unit.decrypt_note:
                self.capture.problems[unit.decrypt_note.split(":")[0]] += 1
            fn = FUNCTIONS.get(unit.fields.function)
            if fn is not None and fn.name == _HEARTBEAT and unit.plain_signals and "Counter" in unit.plain_signals:
                # A module counts its own heartbeats; the pack's keep-alives share one counter across nodes.
                stream = (unit.fields.node if unit.fields.direction == 1 else -1, unit.fields.direction)
                self._beat(stream, int(unit.plain_signals["Counter"]))

    def _beat(self, stream: tuple[int, int], counter: int) -> None:
        """One heartbeat of (node, direction): a counter step other than +1 means heartbeats were lost."""
        self._beats += 1
        last = self._last_beat.get(stream)
        if last is not None:
            self._gaps += (counter - last - 1) % 256
        self._last_beat[stream] = counter

    def run(
        self, duration: float, *, on_update: Callable[[LiveSession], None] | None = None, every: float = 0.5
    ) -> LiveSession:
        """Listen for ``duration`` seconds, calling ``on_update(self)`` every ``every`` seconds and at the end."""
        if duration <= 0 or every <= 0:
            raise ConfigError("duration and every must be positive")
        end = time.monotonic() + duration
        while (left := end - time.monotonic()) > 0:
            self.poll(min(every, left))
            if on_update is not None:
                on_update(self)
        return self

    def verdict(self, frames_sent: int | None = None) -> LiveVerdict:
        """Loss so far: heartbeat counter gaps, and ``frames_sent`` (the sender's report) against frames heard."""
        short = max(frames_sent - self.frames, 0) if frames_sent is not None else 0
        return LiveVerdict(self.frames, frames_sent, self._beats, self._gaps, short + self._gaps,
                           self.bus.send_attempts)  # fmt: skip

    def latest(self) -> list[dict[str, Any]]:
        """The latest decrypted value of every (node, message, signal): the live table."""
        latest: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in self.capture.rows():
            latest[(row["node"], row["message"], row["signal"])] = row
        return [latest[k] for k in sorted(latest, key=str)]

    def signals(self) -> Any:
        """The capture as a pandas DataFrame: one row per physical value (time, node, message, signal, value, unit)."""
        import pandas as pd

        columns = ["timestamp", "node", "function", "direction", "tier", "message", "signal", "value", "unit"]
        table = pd.DataFrame(self.capture.rows(), columns=columns)
        if not table.empty:
            table["t_s"] = table["timestamp"] - table["timestamp"].min()
        return table

    def counts(self) -> dict[str, int]:
        """Frames, units, decrypted units and why others stayed unreadable."""
        out = {"frames": self.frames, "units": len(self.capture.units), "decrypted": len(self.capture.decrypted)}
        out.update(collections.Counter(self.capture.problems))
        return out

    def close(self) -> None:
        self._notifier.stop()
        self.bus.shutdown()

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _frames_sent(stats: dict[str, Any]) -> int:
    """Every frame a pack simulation reported putting on the bus (all its nodes, every class and tier)."""
    return int(sum(stats.values()))


class BackgroundPack:
    """A pack simulation on a thread of this process (python-can's ``virtual`` bus never leaves a process).

    The pack's key store is written to ``state/pack.keystore`` (key file beside it) for the session.
    """

    def __init__(
        self, config: BusConfig, modules: int, duration: float, *, seed: int | None, state: Path, protocol: str = "seed"
    ) -> None:
        from ..sim.pack import PackSimulation, RealClock, _persist_entity

        self.duration = duration
        self.sim = PackSimulation(modules, bus=config, seed=seed, clock=RealClock(), protocol=protocol)
        self.keystore_path = Path(state) / "pack.keystore"
        _persist_entity(self.sim.setup.pack, self.keystore_path)
        self.stats: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="modbatt-background-pack", daemon=True)

    def _run(self) -> None:
        try:
            self.stats = self.sim.run(self.duration).to_dict()
        except BaseException as exc:  # reported by frames_sent, in the caller's thread
            self.error = exc
        finally:
            self.sim.close()

    def start(self) -> None:
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def close(self) -> None:
        """Stop the traffic if it still runs (a notebook interrupted mid-run) and wait for the thread."""
        if self._thread.is_alive():
            self.sim.stop()
            self._thread.join(timeout=30)

    def frames_sent(self) -> int | None:
        self._thread.join(timeout=30)
        if self.error is not None:
            raise TransportError(f"the background pack failed: {self.error}")
        return _frames_sent(self.stats["frames_tx"]) if self.stats is not None else None


class SimProcess:
    """``modbatt sim`` in another process, on ``config``, as the session's traffic source.

    The pack is created under ``state`` first (:func:`~modbatt.sim.state.pack_on_disk`: bound and
    paired, keys on disk), so the session holds the pack controller's key store before the first
    frame; :meth:`start` then runs ``modbatt sim --state DIR --json`` with the bus flags that
    choose ``config`` (:func:`~modbatt.cli.bus_options.bus_arguments`). What it sent comes from its
    JSON summary. A ``virtual`` bus never leaves its process, so it is refused.
    """

    def __init__(
        self,
        config: BusConfig,
        modules: int,
        duration: float,
        *,
        state: Path,
        timeout: float = 120.0,
        protocol: str = "seed",
    ) -> None:
        from ..cli.bus_options import bus_arguments
        from ..sim.state import PACK_DEVICE, pack_on_disk

        if config.interface == "virtual":
            raise ConfigError(
                "a pack in another process needs a bus shared between processes (udp_multicast, socketcan …); "
                "python-can's virtual bus stays inside one process"
            )
        if not duration > 0:
            raise ConfigError("duration must be positive")
        pack_on_disk(state, modules, protocol).close()
        self.keystore_path = Path(state) / "entities" / f"{PACK_DEVICE}.keystore"
        self.timeout = timeout
        #: The command line, for the notebook to show.
        self.argv = [
            sys.executable, "-m", "modbatt.cli", "sim", "--state", str(state), "--modules", str(modules),
            "--duration", repr(float(duration)), "--profile", str(protocol), "--json", *bus_arguments(config),
        ]  # fmt: skip
        self.summary: dict[str, Any] | None = None
        self._proc: subprocess.Popen[str] | None = None

    @property
    def command(self) -> str:
        """The command line as a person would type it."""
        return "modbatt " + shlex.join(self.argv[3:])

    def start(self) -> None:
        self._proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def done(self) -> bool:
        return self._proc is None or self._proc.poll() is not None

    def frames_sent(self) -> int | None:
        """The frames ``modbatt sim`` reports it sent; TransportError if it failed or reported a problem."""
        if self._proc is None:
            return None
        try:
            out, err = self._proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise TransportError(f"modbatt sim did not finish within {self.timeout:g} s") from None
        try:
            self.summary = json.loads(out)
        except json.JSONDecodeError:
            last = (err.strip().splitlines() or ["no output"])[-1]
            raise TransportError(f"modbatt sim failed (exit {self._proc.returncode}): {last}") from None
        if self._proc.returncode != 0:
            raise TransportError(f"modbatt sim reported a failed run: {'; '.join(self.summary['problems'])}")
        return _frames_sent(self.summary["frames_sent"])

    def close(self) -> None:
        """Stop the process if it still runs (a notebook interrupted mid-run)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()


def listen(
    session: LiveSession,
    source: BackgroundPack | SimProcess,
    duration: float,
    *,
    on_update: Callable[[LiveSession], None] | None = None,
    every: float = 0.5,
    grace: float = 30.0,
) -> LiveVerdict:
    """Start ``source``, listen while it sends (at most ``duration + grace`` seconds), then judge the loss.

    ``grace`` covers what is not traffic: a process starting its interpreter, the drain after the
    traffic. The loop ends as soon as the source is done, so a generous bound costs nothing.
    """
    source.start()
    try:
        end = time.monotonic() + duration + grace
        while not source.done() and time.monotonic() < end:
            session.run(every, on_update=on_update, every=every)
        session.poll(0.3)  # frames still on their way when the source reported
        if on_update is not None:
            on_update(session)
        return session.verdict(source.frames_sent())
    finally:
        source.close()


def display_live(title: str = "live bus") -> Callable[[LiveSession], None]:
    """An ``on_update`` for Jupyter: one output area, updated in place while the session runs."""
    import pandas as pd
    from IPython.display import display

    handle = display(pd.DataFrame(), display_id=True)

    def update(session: LiveSession) -> None:
        summary = session.monitor.summary()
        rate = f"{summary.frames_per_s:.0f} frames/s" if summary.frames_per_s else "- frames/s"
        table = pd.DataFrame(session.latest())
        if not table.empty:
            table = table[["node", "message", "signal", "value", "unit"]]
        table.attrs["title"] = title
        caption = f"{title}: {session.frames} frames, {rate}, {len(session.capture.decrypted)} units decrypted"
        shown = table.style.set_caption(caption) if not table.empty else pd.DataFrame({"status": [caption]})
        if handle is not None:
            handle.update(shown)

    return update


def decrypted_demo_trace(state_dir: Path | None = None) -> list[str]:
    """Run the demo in process and return its CAN frames as the monitor shows them with the pack's key store."""
    state = Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="modbatt-live-"))
    result = run_demo(state, transport="in-process")
    store_path = result.state_dir / "entities" / f"{PACK_ID}.keystore"
    store = KeyStore.open(store_path, key_file=store_path.with_suffix(".kek"))
    # The demo sends short illustrative payloads as single frames, not the catalog's framing.
    monitor = Monitor(decryptor=KeyStoreDecryptor(store), reassemble=False)
    lines = []
    for i, frame in enumerate(result.frames):
        msg = can.Message(timestamp=float(i), arbitration_id=int(frame["can_id"], 16),
                          data=bytes.fromhex(frame["data"]), is_extended_id=True)  # fmt: skip
        lines.append(format_frame(monitor, monitor.observe(msg)))
    return lines
