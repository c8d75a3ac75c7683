"""Renewal before expiry: a new pairing takes over a link with no gap and no replay window.

A renewal is a new pairing certificate for the same binding (and context), issued by the
controller before the old one expires (:meth:`AuthController.renew_pairing
<modbatt.nodes.controller.AuthController.renew_pairing>`) and run through the normal pairing
flow, so each entity then holds both pairings. :class:`Handover` is one entity's end of the
switch (docs/lifecycle.md §6 has the flow):

1. **Overlap** — it receives under both pairings' keys. Each frame goes to the channel under
   whose keys it authenticates (:meth:`PairedChannel.authenticates
   <modbatt.nodes.channel.PairedChannel.authenticates>`, no side effects), and that channel's own
   replay window judges it, so a replayed old frame is still ``replay``. It sends on the old
   pairing until the partner confirmed the new one: the initiator (entity ``a``, the pack) learns
   it from the completed pairing (the controller recorded both entities' signed completion) and
   :meth:`switch`\\ es; the other end on the first frame that verifies under the new keys.
2. **Grace** — once it sends on the new pairing and heard the partner on it, the old receive side
   stays open ``overlap_s`` more seconds for frames already in flight (an ISO-TP unit begun
   before the switch can finish after a single frame sent after it), never past ``deadline``
   (the old certificate's expiry).
3. **Done** — the entity erases the old pairing (:meth:`EntityNode.retire_pairing
   <modbatt.nodes.entity.EntityNode.retire_pairing>`): its secrets, its freshness files, and it
   marks it so the old certificate can never be accepted again. From then on an old-key frame is
   indistinguishable from a forgery (``bad_mac``): the keys that could recognise it are gone.

Nonces: the two pairings have unrelated keys (each pairing's secrets come from its own
certificate), so their counters never share a key, and each channel keeps its own counters.

Sans-I/O like the channel: :meth:`tick` takes ``now``. Control frames (resync) travel on the
new pairing only; a restart notice from the partner ends the overlap at once (the restarted end
no longer keeps it: its windows are gone, and :meth:`EntityNode.handover
<modbatt.nodes.entity.EntityNode.handover>` retires the old pairing when it starts).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable

from ..can.functions import RESYNC_FUNCTIONS, function_named
from ..can.ids import IdLayout
from ..can.secured import SecuredPdu
from ..can.wiretime import BusProfile
from ..errors import Reason, VerificationError
from ..model.policy import EncryptionPolicy, MessageClass
from ..model.profile import ProtocolProfile
from ..model.tier import Tier
from ..protocol.restrictions import RestrictionGate
from .channel import PairedChannel
from .link import Received

__all__ = ["DEFAULT_OVERLAP_S", "Handover", "HandoverPhase"]

#: How long the old receive side stays open after both ends moved to the new pairing. A frame
#: in flight on CAN takes milliseconds; a multi-frame ISO-TP unit at most its N_Bs/N_Cr timeouts
#: (1 s each, ISO 15765-2), so two seconds cover any unit begun before the switch.
DEFAULT_OVERLAP_S = 2.0
_RESTART = function_named("RESYNC_RESTART").code


class HandoverPhase(enum.Enum):
    OVERLAP = "overlap"  # receiving under both pairings, sending on the old one
    SENDING_NEW = "sending_new"  # receiving under both, sending on the new one
    DONE = "done"  # the old pairing erased: the new one alone


class Handover:
    """One entity's end of a renewal: the old and the new pairing's channels during the overlap.

    Speaks the channel's verbs (``send``, ``receive``, ``frames_to_send``, ``resync``,
    ``escalate``), so a driver uses it where it used the old pairing's channel. Get it from
    :meth:`EntityNode.handover <modbatt.nodes.entity.EntityNode.handover>`.
    """

    def __init__(
        self,
        old: PairedChannel | None,
        new: PairedChannel,
        *,
        retire: Callable[[], None],
        overlap_s: float = DEFAULT_OVERLAP_S,
        deadline: float | None = None,
        sending_new: bool = False,
        old_pairing_id: str | None = None,
    ) -> None:
        if old is not None and (
            old.node != new.node or old.role != new.role or old.layout is not new.layout or old.profile != new.profile
        ):
            raise VerificationError(Reason.WRONG_SESSION, "a renewal keeps the node, role, bus profile and layout")
        if old is None and old_pairing_id is None:
            raise ValueError("a handover without the old channel still names the old pairing")
        self.old_pairing_id = old.pairing_id if old is not None else old_pairing_id
        self.pairing_id = new.pairing_id
        self.overlap_s = overlap_s
        self.deadline = deadline
        self._old: PairedChannel | None = old
        self._new = new
        self._retire_cb = retire
        self._sending_new = sending_new
        self._partner_on_new = False
        self._grace_from: float | None = None
        self._old_rejects: collections.Counter[Reason] = collections.Counter()
        #: Frames accepted under each pairing while both were open: ``old``, ``new``.
        self.accepted: collections.Counter[str] = collections.Counter()
        if old is not None:
            new.escalate(old.floor)

    # -- state -------------------------------------------------------------------------------

    @property
    def phase(self) -> HandoverPhase:
        if self._old is None:
            return HandoverPhase.DONE
        return HandoverPhase.SENDING_NEW if self._sending_new else HandoverPhase.OVERLAP

    @property
    def partner_confirmed(self) -> bool:
        """True once a frame from the partner verified under the new pairing's keys."""
        return self._partner_on_new

    @property
    def channel(self) -> PairedChannel:
        """The new pairing's channel (what the driver keeps once the handover is done)."""
        return self._new

    @property
    def _sender(self) -> PairedChannel:
        return self._new if self._sending_new or self._old is None else self._old

    @property
    def node(self) -> int:
        return self._new.node

    @property
    def role(self) -> str:
        return self._new.role

    @property
    def profile(self) -> BusProfile:
        return self._new.profile

    @property
    def layout(self) -> IdLayout:
        return self._new.layout

    @property
    def protocol(self) -> ProtocolProfile:
        """The new pairing's protocol profile (control frames travel on it). A renewal may change
        it (``renew_over(..., profile=...)``): each pairing's frames are judged under its own."""
        return self._new.protocol

    @property
    def policy(self) -> EncryptionPolicy:
        return self._sender.policy

    @property
    def floor(self) -> Tier:
        return self._new.floor

    @property
    def session_id(self) -> bytes:
        """The session frames are sent under now."""
        return self._sender.session_id

    @property
    def sending_direction(self) -> int:
        return self._new.sending_direction

    @property
    def synced(self) -> bool:
        return self._new.synced

    @property
    def restrictions(self) -> RestrictionGate:
        return self._new.restrictions

    @property
    def rejects(self) -> collections.Counter[Reason]:
        """Refusals of both pairings' channels during the handover, by reason."""
        old = self._old.rejects if self._old is not None else collections.Counter()
        return self._new.rejects + self._old_rejects + old

    def counters(self) -> dict[str, int]:
        return {reason.value: n for reason, n in self.rejects.items()}

    # -- traffic -----------------------------------------------------------------------------

    def tier_for(self, message_class: MessageClass) -> Tier:
        return self._sender.tier_for(message_class)

    def send(self, message_class: MessageClass, payload: bytes, *, tier: Tier | None = None) -> SecuredPdu:
        """Protect one message on the pairing this end sends on now (old until the partner confirmed)."""
        return self._sender.send(message_class, payload, tier=tier)

    def receive(self, can_id: int, data: bytes, *, reassembled: bool = False) -> Received | None:
        """Verify one unit under whichever pairing's keys it authenticates (see the module doc).

        Raises ``VerificationError`` with the classified reason, counted by the channel that judged it.
        """
        old = self._old
        if old is None:
            return self._new.receive(can_id, data, reassembled=reassembled)
        try:
            fields = self._new.layout.decode(can_id)
        except VerificationError:
            return self._new.receive(can_id, data, reassembled=reassembled)  # classified and counted there
        if fields.function in RESYNC_FUNCTIONS:
            if fields.function == _RESTART and fields.direction != self._new.sending_direction:
                self._retire()  # the partner restarted: it keeps no overlap, and no old frame of its is due
            return self._new.receive(can_id, data, reassembled=reassembled)
        if self._new.authenticates(can_id, data, reassembled=reassembled):
            # Whatever the window says, the partner holds the new keys: send on them too.
            self._partner_on_new = self._sending_new = True
            got = self._new.receive(can_id, data, reassembled=reassembled)
            self.accepted["new"] += 1
            return got
        if old.authenticates(can_id, data, reassembled=reassembled):
            got = old.receive(can_id, data, reassembled=reassembled)  # its own window: a replay is refused
            self.accepted["old"] += 1
            return got
        return self._new.receive(can_id, data, reassembled=reassembled)  # neither: classified by the new one

    def frames_to_send(self) -> list[SecuredPdu]:
        """Control frames due (the new pairing's only: only it resynchronises)."""
        return self._new.frames_to_send()

    def resync(self) -> None:
        self._new.resync()

    def escalate(self, floor: Tier) -> None:
        self._new.escalate(floor)
        if self._old is not None:
            self._old.escalate(floor)

    # -- the switch --------------------------------------------------------------------------

    def switch(self) -> None:
        """Send on the new pairing from now on (the initiator, once the pairing completed)."""
        self._sending_new = True

    def tick(self, now: float) -> bool:
        """End the overlap when its grace or the deadline is over; True when this call ended it."""
        if self._old is None:
            return False
        if self.deadline is not None and now >= self.deadline:
            self._sending_new = True
            self._retire()
            return True
        if not (self._sending_new and self._partner_on_new):
            return False
        if self._grace_from is None:
            self._grace_from = now
        if now - self._grace_from >= self.overlap_s:
            self._retire()
            return True
        return False

    def finish(self) -> None:
        """End the overlap now (erase the old pairing) and send on the new one."""
        self._sending_new = True
        self._retire()

    def _retire(self) -> None:
        old = self._old
        if old is None:
            return
        self._old_rejects += old.rejects
        self._old = None
        self._sending_new = True
        self._retire_cb()
