"""The paired channel: the one owner of a pairing's CAN link (docs/can-frames.md §3, §6).

A :class:`PairedChannel` is one entity's end of the link of one pairing. It is the only way to
obtain a link: :meth:`EntityNode.channel <modbatt.nodes.entity.EntityNode.channel>` builds it
from what the entity persisted and hands out the same live object to every caller. It owns

* **the session**: traffic keys derive from the *current* session's secrets (a new session of
  a multi-use certificate gets new keys); frames of the :data:`RETIRED_SESSIONS` sessions before
  it are recognised and refused as ``stale``, everything else that fails is ``bad_mac``;
* **freshness**: one counter per (pairing, session, tier, direction) in the entity's
  :class:`~modbatt.nodes.channel_store.ChannelFreshness` (reservation windows on disk, or an
  explicitly ephemeral store), and the receive windows;
* **resync**: after a restart the windows start unsynced and the channel queues a
  ``RESYNC_RESTART`` challenge; a partner that receives one answers it at every tier, stops
  accepting until it has heard from the restarted end, and challenges it back (its counters
  jumped past a reservation, which an 8-bit classic FV cannot follow).

Sans-I/O: :meth:`receive` consumes control frames (returning None) and notes what is due;
:meth:`frames_to_send` builds it (answers for the latest challenge, then the latest challenge
wanted), and a driver sends those on its bus, or :func:`pump` carries them between two ends in
one process. A driver also calls :meth:`resync` again when a channel stays
unsynced for longer than it is willing to wait (a lost challenge): the channel has no clock.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..can.functions import RESYNC_FUNCTIONS, Function, function_named
from ..can.ids import SEED_LAYOUT, CanIdFields, IdLayout
from ..can.secured import Direction, SecuredPdu, SecuredReceiver
from ..can.wiretime import CLASSIC, BusProfile
from ..crypto.freshness import RESYNC_CHALLENGE_BYTES, ReplayWindow
from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import PrivateKey, PublicKey
from ..errors import ConfigError, Reason, VerificationError
from ..model.policy import EncryptionPolicy, MessageClass
from ..model.profile import ProtocolProfile
from ..model.tier import Tier
from ..protocol.pairing import PairingSecrets
from ..protocol.restrictions import RestrictionGate
from .channel_store import ChannelFreshness, Lease
from .link import Received, SelectiveLink, session_traffic_keys

__all__ = [
    "CLASSIFY_WRAPS",
    "NONCE_TRACE_ENV",
    "RETIRED_SESSIONS",
    "ChannelKeys",
    "ChannelObserver",
    "PairedChannel",
    "pump",
]

#: Earlier sessions whose receive keys a channel keeps, only to classify their frames as stale.
#: Trade-off: a stolen key store then also opens the last two sessions' recorded traffic.
RETIRED_SESSIONS = 2
#: Classic CAN carries 8 FV bits: how many 256-value wraps behind the window (or from an earlier
#: session's start) a failed frame is tried under, to tell an old authentic frame from a forgery.
#: Costs at most this many CCM tries per failed frame and session; older frames stay ``bad_mac``.
CLASSIFY_WRAPS = 4
#: Consecutive unexplained ``bad_mac`` on classic CAN before the channel challenges its partner
#: (its sender may have jumped past a reservation without the restart notice reaching us).
RESYNC_AFTER_BAD_MACS = 8
_WINDOW = 32
#: ``MODBATT_NONCE_TRACE=FILE``: every AEAD seal of every channel appends ``FINGERPRINT NONCE`` (hex)
#: to FILE, so a test checks that no (key, nonce) pair repeats across processes and restarts
#: (docs/delivery.md §5). Never the key: its fingerprint is :data:`_TRACE_LABEL`-labelled SHA-256
#: of what derives it (tier secret, tier, direction, classic or FD), cut to 8 bytes.
NONCE_TRACE_ENV = "MODBATT_NONCE_TRACE"
_TRACE_LABEL = b"modbatt nonce-trace key fingerprint"
_FRESH_TIERS = (Tier.EXCHANGE, Tier.PAIRING, Tier.BINDING)
_REQUEST = function_named("RESYNC_REQUEST")
_RESTART = function_named("RESYNC_RESTART")
_ANSWER = function_named("RESYNC_ANSWER")


@dataclass(frozen=True)
class ChannelKeys:
    """What a channel needs from its entity: the current session, the retired ones, the policy."""

    secrets: PairingSecrets
    policy: EncryptionPolicy
    node: int
    binding_key: PrivateKey = field(repr=False)
    partner_key: PublicKey
    #: Earlier sessions, newest first (at most :data:`RETIRED_SESSIONS` are used).
    retired: tuple[PairingSecrets, ...] = ()


def _directions(role: str) -> tuple[Direction, Direction]:
    out_dir = Direction.INITIATOR_TO_RESPONDER if role == "a" else Direction.RESPONDER_TO_INITIATOR
    return out_dir, Direction(1 - out_dir)


class _Retired:
    """Receive side of an earlier session: only ever asked whether a frame authenticates."""

    def __init__(
        self,
        secrets: PairingSecrets,
        keys: ChannelKeys,
        layout: IdLayout,
        profile: BusProfile,
        anchors: dict[Tier, int],
    ) -> None:
        self.session_id = secrets.session_id
        _, in_dir = _directions(secrets.role)
        self.receivers: dict[Tier, SecuredReceiver] = {}
        for tier in _FRESH_TIERS:
            rx = session_traffic_keys(secrets, tier, in_dir, verifier=keys.partner_key)
            self.receivers[tier] = SecuredReceiver(layout, profile, rx, ReplayWindow(1))
        #: Highest FV accepted per tier when this session was retired in this process (-1: unknown).
        self.anchors = anchors

    def authenticates(self, tier: Tier, can_id: int, data: bytes, reassembled: bool) -> bool:
        anchor = self.anchors.get(tier, -1)
        span = 256 * CLASSIFY_WRAPS
        within = range(max(anchor - span, 0), anchor + 257) if anchor >= 0 else range(span)
        return self.receivers[tier].authenticates(can_id, data, within=within, reassembled=reassembled) is not None


class PairedChannel:
    """One entity's end of one pairing's link, across sessions and restarts.

    Get it from :meth:`EntityNode.channel <modbatt.nodes.entity.EntityNode.channel>`; the
    constructor is the entity's. ``fresh`` says whether the session was never opened before
    (windows start at zero) or this is a restart (windows unsynced, a resync challenge queued).
    """

    def __init__(
        self,
        keys: ChannelKeys,
        *,
        freshness: ChannelFreshness,
        fresh: bool,
        profile: BusProfile = CLASSIC,
        layout: IdLayout = SEED_LAYOUT,
        rng: RandomSource | None = None,
        on_close: Callable[[PairedChannel], None] | None = None,
        restrictions: RestrictionGate | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.pairing_id = keys.secrets.pairing_id
        #: The certificate's restrictions, checked on every verified message (docs/lifecycle.md §9);
        #: ``clock`` only dates messages for its rate limit.
        self.restrictions = restrictions if restrictions is not None else RestrictionGate()
        if clock is None and self.restrictions.restrictions.max_messages_per_s:
            raise ConfigError("a rate-limited pairing's channel needs a clock")
        self._clock = clock
        self.role = keys.secrets.role
        self.profile = profile
        self.layout = layout
        #: Everything this end refused, by reason (control frames included): failure counters.
        self.rejects: collections.Counter[Reason] = collections.Counter()
        self._freshness = freshness
        self._rng = rng or SystemRandom()
        self._on_close = on_close
        self._out_dir, _ = _directions(self.role)
        # Control work is done when the driver asks for it (frames_to_send): only the latest
        # challenge to answer and the latest one to send matter, so a flood of requests between
        # two drains costs one set of answers (one signature), not one per request.
        self._answer_for: bytes | None = None
        self._want_challenge: Function | None = None
        self._bad_streak = 0
        self._streaks_waiting = 0
        self._revoked = False
        self._lease: Lease | None = freshness.acquire(self.pairing_id)
        try:
            self._retired = [_Retired(s, keys, layout, profile, {}) for s in keys.retired[:RETIRED_SESSIONS]]
            self._open(keys, fresh)
        except BaseException:
            self._lease.release()
            self._lease = None
            raise

    # -- state -------------------------------------------------------------------------------

    @property
    def session_id(self) -> bytes:
        """The current session: the only one this channel sends or accepts under."""
        return self._link.session_id

    @property
    def policy(self) -> EncryptionPolicy:
        return self._link.policy

    @property
    def protocol(self) -> ProtocolProfile:
        """The pairing's protocol profile (from its certificate): how the binding tier is authenticated."""
        return self._link.protocol

    @property
    def node(self) -> int:
        """The CAN node id of the pairing's module (what every identifier of this link carries)."""
        return self._link.node

    @property
    def floor(self) -> Tier:
        return self._link.floor

    @property
    def sending_direction(self) -> int:
        return int(self._out_dir)

    @property
    def synced(self) -> bool:
        """True when every receive window is synchronised (False after a restart until resync)."""
        return all(self._link.receiver(t).window.synced for t in _FRESH_TIERS)

    @property
    def closed(self) -> bool:
        return self._lease is None

    @property
    def revoked(self) -> bool:
        return self._revoked

    def window_state(self) -> dict[Tier, tuple[int, bool]]:
        """Per protected tier: the highest accepted freshness value and whether the window is synced."""
        return {t: (self._link.receiver(t).window.highest, self._link.receiver(t).window.synced) for t in _FRESH_TIERS}

    def counters(self) -> dict[str, int]:
        """Rejections by reason, for monitors and the attack matrix."""
        return {reason.value: n for reason, n in self.rejects.items()}

    # -- traffic -----------------------------------------------------------------------------

    def escalate(self, floor: Tier) -> None:
        """Raise (or with ``Tier.NONE`` reset) the minimum tier of everything sent but emergency shutdown."""
        self._link.escalate(floor)

    def tier_for(self, message_class: MessageClass) -> Tier:
        """The tier :meth:`send` picks for ``message_class`` now (policy minimum, escalation floor)."""
        return self._link.tier_for(message_class)

    def authenticates(self, can_id: int, data: bytes, *, reassembled: bool = False) -> bool:
        """Whether a protected unit verifies under this session's keys near the receive window.

        Classification only (a renewal overlap asks which pairing a frame belongs to): never
        accepts, never moves a window, never counts. Clear and control frames are False.
        """
        if self._lease is None:
            return False
        try:
            fields = self.layout.decode(can_id)
        except VerificationError:
            return False
        if fields.tier in (None, Tier.NONE) or fields.function in RESYNC_FUNCTIONS:
            return False
        rx = self._link.receiver(fields.tier)
        low = max(rx.window.highest + 1 - rx.behind, 0)  # the values the receiver reconstructs to
        within = range(low, low + 256)
        return rx.authenticates(can_id, data, within=within, reassembled=reassembled) is not None

    def send(self, message_class: MessageClass, payload: bytes, *, tier: Tier | None = None) -> SecuredPdu:
        """Protect one message under the current session (tier from the policy, see SelectiveLink)."""
        self._check_live()
        pdu = self._link.send(message_class, payload, tier=tier)
        self._trace(pdu)
        return pdu

    def receive(self, can_id: int, data: bytes, *, reassembled: bool = False) -> Received | None:
        """Verify one unit from the partner; None for a resync frame (see :meth:`frames_to_send`).

        Raises ``VerificationError`` with the classified reason, counted in :attr:`rejects`.
        """
        try:
            self._check_live()
            fields = self.layout.decode(can_id)
            if fields.function in RESYNC_FUNCTIONS:
                self._on_resync(fields, can_id, data, reassembled)
                return None
            got = self._link.receive(can_id, data, reassembled=reassembled)
            if not self.restrictions.unrestricted:
                self.restrictions.check(got.message_class, self._clock() if self._clock is not None else 0.0)
        except VerificationError as exc:
            self.rejects[exc.reason] += 1
            self._after_reject(exc.reason)
            raise
        self._bad_streak = 0
        return got

    def frames_to_send(self) -> list[SecuredPdu]:
        """The control frames (resync) due to the partner now: answers first, then a challenge.

        Built when asked, for the latest challenge received and the latest one wanted; asking
        again returns nothing until something new happened.
        """
        out: list[SecuredPdu] = []
        if self._lease is None:
            return out
        if self._answer_for is not None:
            answer = _ANSWER.id_fields(self.node, int(self._out_dir))
            out += [self._link.sender(tier).protect_resync(answer, self._answer_for) for tier in _FRESH_TIERS]
            for pdu in out:
                self._trace(pdu)
            self._answer_for = None
        if self._want_challenge is not None:
            challenge = self._rng.token_bytes(RESYNC_CHALLENGE_BYTES)
            for tier in _FRESH_TIERS:
                self._link.receiver(tier).resync_challenge(challenge=challenge)
            fields = self._want_challenge.id_fields(self.node, int(self._out_dir))
            out.append(self._link.sender(Tier.NONE).protect(fields, challenge))
            self._want_challenge = None
        return out

    def resync(self) -> None:
        """Challenge the partner at every tier (queued); its answers resynchronise the windows."""
        self._check_live()
        self._challenge(_REQUEST)

    # -- lifecycle (the entity's side) -------------------------------------------------------

    def close(self) -> None:
        """Let go of the streams. Nothing is written: all that must survive is already durable,
        so a crash and a close restore the same way (windows unsynced, counters past the bound)."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None
            if self._on_close is not None:
                self._on_close(self)

    def revoke(self) -> None:
        """The pairing was revoked: refuse everything from now on (``revoked``)."""
        self._revoked = True
        self.close()

    def rekey(self, keys: ChannelKeys, *, fresh: bool) -> None:
        """Move to a new session of this pairing (its secrets were just derived and persisted)."""
        self._check_live()
        if keys.secrets.session_id == self.session_id:
            return
        old = self._link
        anchors = {t: old.receiver(t).window.highest for t in _FRESH_TIERS}
        self._retired.insert(0, _Retired(self._keys.secrets, self._keys, self.layout, self.profile, anchors))
        del self._retired[RETIRED_SESSIONS:]
        self._answer_for = self._want_challenge = None  # control work of the old session is void
        self._open(keys, fresh)
        self._link.escalate(old.floor)

    # -- internals ---------------------------------------------------------------------------

    def _open(self, keys: ChannelKeys, fresh: bool) -> None:
        secrets = keys.secrets
        if secrets.pairing_id != self.pairing_id or secrets.role != self.role:
            raise ConfigError("session keys of another pairing or role")
        windows = {t: ReplayWindow(_WINDOW) if fresh else ReplayWindow.unsynced(_WINDOW) for t in _FRESH_TIERS}
        sid, out_dir = secrets.session_id, self._out_dir
        link = SelectiveLink(
            secrets=secrets, policy=keys.policy, node=keys.node, binding_key=keys.binding_key,
            partner_key=keys.partner_key, layout=self.layout, profile=self.profile, windows=windows,
            counter_stores=lambda tier: self._freshness.counter_store(self.pairing_id, sid, tier, out_dir),
            classify=self._classify, reservation=self._freshness.reservation,
        )  # fmt: skip
        self._keys = keys
        self._link = link
        if not fresh:
            # Our counters resumed past a reservation and our windows are empty: the partner must
            # answer us, and (classic CAN) learn where our counters are now.
            self._challenge(_RESTART)

    def _trace(self, pdu: SecuredPdu) -> None:
        """Append the (key fingerprint, nonce) of an AEAD-sealed unit to the nonce trace, if enabled."""
        path = os.environ.get(NONCE_TRACE_ENV)
        if not path or pdu.freshness is None:
            return
        tier = self.layout.decode(pdu.can_id).tier
        sender = self._link.sender(tier)
        secrets = self._keys.secrets
        secret = {Tier.EXCHANGE: secrets.exchange_secret, Tier.PAIRING: secrets.pairing_secret}.get(
            tier, secrets.binding_secret
        )
        if secret is None or sender.keys.signed:
            return  # a signed binding tier (seed): a signature, no AEAD nonce
        what = bytes([int(tier), int(sender.keys.direction), int(self.profile.fd)])
        fingerprint = hashlib.sha256(_TRACE_LABEL + secret + what).hexdigest()[:16]
        line = f"{fingerprint} {sender._nonce(pdu.can_id, pdu.freshness).hex()}\n".encode("ascii")
        # O_APPEND and one write per line: concurrent processes interleave whole lines.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def _check_live(self) -> None:
        if self._revoked:
            raise VerificationError(Reason.REVOKED, f"pairing {self.pairing_id} was revoked")
        if self._lease is None:
            raise ConfigError("this channel is closed; ask the entity for the pairing's channel again")

    def _challenge(self, function: Function) -> None:
        """Want a challenge sent (a restart notice is never downgraded to a plain request)."""
        if self._want_challenge is not _RESTART:
            self._want_challenge = function
        self._streaks_waiting = 0

    def _on_resync(self, fields: CanIdFields, can_id: int, data: bytes, reassembled: bool) -> None:
        if fields.direction == int(self._out_dir) or fields.node != self.node:
            raise VerificationError(Reason.WRONG_PEER, "resync frame of this end's own direction or another node")
        if fields.function == _ANSWER.code:
            tier = fields.tier if fields.tier is not None else Tier.NONE
            if tier not in _FRESH_TIERS:
                raise VerificationError(Reason.WRONG_LEVEL, "a resync answer is sent at a protected tier")
            self._link.receiver(tier).accept_resync(can_id, data)
            return
        challenge = self._link.receiver(Tier.NONE).open(can_id, data, reassembled=reassembled).payload
        if len(challenge) != RESYNC_CHALLENGE_BYTES:
            raise VerificationError(Reason.MALFORMED, f"a resync challenge is {RESYNC_CHALLENGE_BYTES} bytes")
        self._answer_for = challenge  # answered at the next frames_to_send (the latest one only)
        if fields.function == _RESTART.code:
            # The partner restarted: whatever it sent before may still be in flight, and its
            # counters jumped. Accept nothing more from it until it answered a fresh challenge
            # (one outstanding from before may have gone to its previous life, unanswerable).
            # An unauthenticated restart notice costs one resync round trip, nothing more.
            for tier in _FRESH_TIERS:
                self._link.receiver(tier).window.synced = False
            self._challenge(_REQUEST)

    def _after_reject(self, reason: Reason) -> None:
        if reason is not Reason.BAD_MAC or self.profile.fd or self._revoked:
            return
        self._bad_streak += 1
        if self._bad_streak < RESYNC_AFTER_BAD_MACS:
            return
        self._bad_streak = 0
        self._streaks_waiting += 1
        # While a challenge is out, challenge again only after 8 more streaks (64 failures): a
        # flood of forgeries then costs the partner one answer per 64 frames, not one per 8.
        waiting = any(self._link.receiver(t).awaiting_resync for t in _FRESH_TIERS)
        if not waiting or self._streaks_waiting >= RESYNC_AFTER_BAD_MACS:
            self._challenge(_REQUEST)

    def _classify(self, tier: Tier, can_id: int, data: bytes, reassembled: bool) -> VerificationError | None:
        """An authentication failure explained: an authentic frame far behind the window, or of an
        earlier session, is ``stale``; anything else keeps its ``bad_mac``/``bad_signature``."""
        rx = self._link.receiver(tier)
        if not rx.keys.signed and not self.profile.fd and rx.window.synced:
            top = rx.window.highest + 1 - rx.behind  # below the values the 8 bits reconstruct to
            within = range(max(top - 256 * CLASSIFY_WRAPS, 0), max(top, 0))
            fv = rx.authenticates(can_id, data, within=within, reassembled=reassembled)
            if fv is not None:
                return VerificationError(Reason.STALE, f"freshness {fv} is far behind the window")
        for old in self._retired:
            if old.authenticates(tier, can_id, data, reassembled):
                return VerificationError(Reason.STALE, "a frame of an earlier session of this pairing")
        return None


class _NoSending:
    """Counter store of an observer: it never sends, so reserving a value is a bug."""

    def load(self) -> int | None:
        return None

    def save(self, reserved_until: int) -> None:
        raise ConfigError("an observer never sends")


class ChannelObserver:
    """Receive-only view of both directions of a pairing's current session (the bus monitor).

    It never sends, never touches the entity's freshness state and never acts on what it reads;
    its windows start at zero when it starts watching, so it shows a frame it did not see before
    as verified even if the link itself refused it as a replay (the link's own counters say so).
    """

    def __init__(self, keys: ChannelKeys, *, layout: IdLayout = SEED_LAYOUT, profile: BusProfile = CLASSIC) -> None:
        secrets = keys.secrets
        mirror_secrets = dataclasses.replace(secrets, role="b" if secrets.role == "a" else "a")
        own_public = keys.binding_key.public_key

        def link(s: PairingSecrets, partner: PublicKey) -> SelectiveLink:
            return SelectiveLink(
                secrets=s, policy=keys.policy, node=keys.node, binding_key=keys.binding_key, partner_key=partner,
                layout=layout, profile=profile, counter_stores=lambda _t: _NoSending(),
                windows={t: ReplayWindow(_WINDOW) for t in _FRESH_TIERS},
            )  # fmt: skip

        self.node = keys.node
        self.session_id = secrets.session_id
        self._own = link(secrets, keys.partner_key)
        self._mirror = link(mirror_secrets, own_public)
        self._own_dir = self._own.sending_direction

    def _link_for(self, direction: int) -> SelectiveLink:
        return self._mirror if direction == self._own_dir else self._own

    def receive(self, can_id: int, data: bytes, *, reassembled: bool = False) -> Received | None:
        """Verify a frame of either direction (the entity's own through the mirror end).

        Resync frames return None: the observer follows the exchange as a receiver would. A
        challenge travels in clear, so it arms the receivers of the opposite direction with it;
        the answer to it (full freshness value under the tier key) then moves that window to
        where the sender really is, so a capture that spans a restart stays readable.
        """
        fields = self._own.layout.decode(can_id)
        if fields.function in RESYNC_FUNCTIONS:
            if fields.function == _ANSWER.code:
                tier = fields.tier if fields.tier is not None else Tier.NONE
                if tier not in _FRESH_TIERS:
                    raise VerificationError(Reason.WRONG_LEVEL, "a resync answer travels at a keyed tier")
                self._link_for(fields.direction).receiver(tier).accept_resync(can_id, data)
            else:
                if len(data) != RESYNC_CHALLENGE_BYTES:
                    raise VerificationError(Reason.MALFORMED, f"a resync challenge is {RESYNC_CHALLENGE_BYTES} bytes")
                answering = self._link_for(1 - fields.direction)
                for tier in _FRESH_TIERS:
                    answering.receiver(tier).resync_challenge(challenge=bytes(data))
            return None
        return self._link_for(fields.direction).receive(can_id, data, reassembled=reassembled)


def pump(a: PairedChannel, b: PairedChannel, *, rounds: int = 8) -> int:
    """Carry queued control frames between two ends in one process until both are quiet.

    The in-process driver (tests, simulations, notebooks); on a bus the driver sends
    :meth:`PairedChannel.frames_to_send` instead. Refusals are counted by the receiving end and
    not raised. Returns the number of frames carried.
    """
    carried = 0
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for pdu in src.frames_to_send():
                moved = True
                carried += 1
                with contextlib.suppress(VerificationError):  # counted by dst
                    dst.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)
        if not moved:
            break
    return carried
