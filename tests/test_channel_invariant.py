"""The channel's central promise as a stateful property: no (traffic key, nonce) pair ever reaches
an AEAD encryption twice, and no frame is accepted that was sent in an earlier session, under an
earlier pairing, before a restart of either end, or that was accepted before.

Random interleavings of sending and delivering (any recorded frame, in any order, any number of
times), sessions of a multi-use certificate (also half-done ones), restarts of either end
(including a kill between reserving a counter value and using it), resyncs, re-pairings and
revocations, in both controller modes and on both bus profiles. Every AEAD object the CAN codec
builds is replaced by a recording one, so the key and nonce of each encryption are seen where
they are used.

A restarted end's resync frames are delivered at once or left queued for a later pump. Until its
partner has processed the restart notice, the partner may still take a frame the restarted end
sent before it died and that never arrived (a first delivery, not a replay); everything else
sent before a restart of either end must be refused.
"""

from __future__ import annotations

import dataclasses

import hypothesis.strategies as st
from cryptography.hazmat.primitives.ciphers import aead
from helpers_binding import World
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import modbatt.can.secured as secured
from modbatt.can.secured import Direction, SecuredPdu
from modbatt.can.wiretime import CLASSIC, FD
from modbatt.errors import VerificationError
from modbatt.model.pairing import ControllerMode
from modbatt.model.policy import MessageClass
from modbatt.model.tier import Tier
from modbatt.nodes.channel import PairedChannel, pump
from modbatt.nodes.pairing_flow import pair_entities

SIDES = ("pack", "module")
CLASSES = (MessageClass.CHARGE_COMMAND, MessageClass.VOLTAGE_TELEMETRY, MessageClass.IDENTITY)
TIER_OF = {MessageClass.CHARGE_COMMAND: Tier.PAIRING, MessageClass.VOLTAGE_TELEMETRY: Tier.EXCHANGE}


class Killed(BaseException):
    """The process died (raised from inside a counter store's write)."""


class _Recorder:
    """Every (key, nonce) that reaches an AES-CCM/GCM encryption in the CAN codec."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, bytes, bytes]] = set()
        self.calls = 0

    def wrap(self, kind: str, real: type) -> type:
        recorder = self

        class Recording:
            def __init__(self, key: bytes, *args: object, **kwargs: object) -> None:
                self._key = bytes(key)
                self._inner = real(key, *args, **kwargs)

            def encrypt(self, nonce: bytes, data: bytes, associated: bytes | None) -> bytes:
                entry = (kind, self._key, bytes(nonce))
                assert entry not in recorder.seen, f"{kind} nonce {bytes(nonce).hex()} reused under one key"
                recorder.seen.add(entry)
                recorder.calls += 1
                return self._inner.encrypt(nonce, data, associated)

            def decrypt(self, nonce: bytes, data: bytes, associated: bytes | None) -> bytes:
                return self._inner.decrypt(nonce, data, associated)

        return Recording


@dataclasses.dataclass
class Frame:
    sender: str
    pdu: SecuredPdu
    pairing_id: str
    session_id: bytes
    epochs: tuple[int, int]  # (sender's, receiver's) restart count when it was sent
    accepted: int = 0


def _other(side: str) -> str:
    return "module" if side == "pack" else "pack"


class ChannelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.recorder = _Recorder()
        self._real = (secured.AESCCM, secured.AESGCM)
        secured.AESCCM = self.recorder.wrap("ccm", aead.AESCCM)  # type: ignore[misc]
        secured.AESGCM = self.recorder.wrap("gcm", aead.AESGCM)  # type: ignore[misc]
        self.frames: list[Frame] = []
        self.epoch = {side: 0 for side in SIDES}
        #: Per receiver: the partner's restart count as of the last delivery of control frames.
        self.heard = {side: 0 for side in SIDES}
        self.accepted = 0

    def teardown(self) -> None:
        secured.AESCCM, secured.AESGCM = self._real  # type: ignore[misc]
        if hasattr(self, "w"):
            self.w.ledger.close()

    # -- setup -----------------------------------------------------------------------------

    @initialize(mode=st.sampled_from(list(ControllerMode)), fd=st.booleans(), seed=st.integers(0, 3))
    def setup(self, mode: ControllerMode, fd: bool, seed: int) -> None:
        self.w = World(seed=seed)
        for store in self.w.freshness.values():
            store.reservation = 8  # reservations run out often, so kills land between reserve and use
        self.mode, self.profile = mode, (FD if fd else CLASSIC)
        self.binding_id = self.w.bind().record.binding_id
        self._new_pairing()

    def _node(self, side: str):
        return self.w.pack if side == "pack" else self.w.module

    def _new_pairing(self) -> None:
        self.cert = self.w.controller.issue_pairing(self.binding_id, max_uses=1000, mode=self.mode)
        self.pid = self.cert.metadata.pairing_id
        pair_entities(self.w.controller, self.w.pack, self.w.module, certificate=self.cert)
        self.ch: dict[str, PairedChannel] = {s: self._node(s).channel(self.pid, profile=self.profile) for s in SIDES}
        self._pump()

    def _pump(self) -> None:
        pump(self.ch["pack"], self.ch["module"])
        self.heard = {side: self.epoch[_other(side)] for side in SIDES}

    # -- traffic ---------------------------------------------------------------------------

    def _send(self, side: str, cls: MessageClass) -> Frame:
        pdu = self.ch[side].send(cls, b"\x01\x02\x03")
        frame = Frame(side, pdu, self.pid, self.ch[side].session_id, (self.epoch[side], self.epoch[_other(side)]))
        self.frames.append(frame)
        return frame

    def _deliver(self, frame: Frame) -> bool:
        receiver = _other(frame.sender)
        channel = self.ch[receiver]
        try:
            got = channel.receive(frame.pdu.can_id, frame.pdu.data, reassembled=not frame.pdu.single_frame)
        except VerificationError:
            return False
        assert got is not None and got.payload == b"\x01\x02\x03"
        # Accepted: it must be a first delivery of a frame of this pairing's current session,
        # sent since the last restart of both ends.
        assert frame.accepted == 0, "a frame was accepted twice"
        assert frame.pairing_id == self.pid, "a frame of an earlier pairing was accepted"
        assert frame.session_id == channel.session_id, "a frame of another session was accepted"
        assert frame.epochs[1] == self.epoch[receiver], "a frame sent before the receiver restarted"
        assert frame.epochs[0] >= self.heard[receiver], "a frame sent before a restart the receiver knew of"
        frame.accepted += 1
        self.accepted += 1
        return True

    def _replay_all(self) -> None:
        """The attacker plays every frame ever recorded, oldest first, to the end it was meant for."""
        for frame in list(self.frames):
            self._deliver(frame)

    @rule()
    def replay_everything(self) -> None:
        self._replay_all()

    @rule(side=st.sampled_from(SIDES), cls=st.sampled_from(CLASSES))
    def send(self, side: str, cls: MessageClass) -> None:
        self._send(side, cls)

    @precondition(lambda self: self.frames)
    @rule(pick=st.integers(0, 10_000), recent=st.booleans())
    def deliver(self, pick: int, recent: bool) -> None:
        """Any recorded frame (a replay, a late or a first delivery), often one of the last few."""
        span = min(len(self.frames), 6) if recent else len(self.frames)
        self._deliver(self.frames[-1 - pick % span])

    @precondition(
        lambda self: (
            self.ch["pack"].session_id == self.ch["module"].session_id
            and self.ch["pack"].synced
            and self.ch["module"].synced
            and self.heard == {side: self.epoch[_other(side)] for side in SIDES}
        )
    )
    @rule(side=st.sampled_from(SIDES), cls=st.sampled_from(CLASSES))
    def fresh_frame_gets_through(self, side: str, cls: MessageClass) -> None:
        """Liveness: refusing everything would keep the safety invariant trivially."""
        assert self._deliver(self._send(side, cls)), "a fresh frame of the current session was refused"

    # -- sessions, restarts, resync, re-pairing, revocation --------------------------------

    @rule()
    def new_session(self) -> None:
        pair_entities(self.w.controller, self.w.pack, self.w.module, certificate=self.cert)
        self._replay_all()

    @rule()
    def half_session(self) -> None:
        """The module derives the next session; the pack never hears back (its reply is lost)."""
        for side in SIDES:
            self._node(side).accept_certificate(self.cert)
        self.w.module.pairing_offer(self.pid, self.w.pack.pairing_start(self.pid))
        self.w.clock.advance(self.cert.metadata.handshake_timeout_s + 1)
        assert self.w.pack.pairing_tick() == [self.pid]
        self._replay_all()

    @rule(side=st.sampled_from(SIDES), kill=st.booleans(), notice=st.booleans(), cls=st.sampled_from(CLASSES[:2]))
    def restart(self, side: str, kill: bool, notice: bool, cls: MessageClass) -> None:
        if kill:  # die right after a reservation became durable, before its first value is used
            channel = self.ch[side]
            out_dir = Direction(channel.sending_direction)
            store = self.w.freshness[self._node(side).access_data.device_id].counter_store(
                self.pid, channel.session_id, TIER_OF[cls], out_dir
            )
            real = store.save

            def save_then_die(bound: int) -> None:
                real(bound)
                raise Killed

            store.save = save_then_die  # type: ignore[method-assign]
            try:
                for _ in range(self.w.freshness[self._node(side).access_data.device_id].reservation + 1):
                    self._send(side, cls)
            except Killed:
                pass
            finally:
                store.save = real  # type: ignore[method-assign]
        reborn = self.w.restart(self._node(side))
        self.epoch[side] += 1
        self.ch[side] = reborn.channel(self.pid, profile=self.profile)
        self._replay_all()  # before the restart notice is out: the restarted end must refuse all
        if notice:
            self._pump()  # the driver's start-up: the restart notice and the resync go out at once
            self._replay_all()

    @rule(side=st.sampled_from(SIDES))
    def resync(self, side: str) -> None:
        self.ch[side].resync()
        self._pump()

    @rule()
    def re_pair(self) -> None:
        self._new_pairing()
        self._replay_all()

    @rule()
    def revoke_and_re_pair(self) -> None:
        notice = self.w.controller.revoke_pairing(self.pid)
        for side in SIDES:
            self._node(side).apply_pairing_revocation(notice)
            assert self.ch[side].revoked
        self._replay_all()  # into the revoked channels: refused as revoked
        self._new_pairing()
        self._replay_all()

    @invariant()
    def nonces_never_repeat(self) -> None:
        # The recorder asserts at the encryption itself; here only that it is really recording.
        if hasattr(self, "w") and self.frames:
            assert self.recorder.calls > 0 or all(f.pdu.freshness is None or f.pdu.single_frame is False
                                                  for f in self.frames)  # fmt: skip


TestChannelInvariant = ChannelMachine.TestCase
TestChannelInvariant.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
