"""Attacks on the paired channel's freshness: sessions, restarts, nonce reuse, pairing-accept.

The channel promises that no (traffic key, nonce) pair is ever used twice and that nothing
recorded in an earlier session, or before a restart of either end, is accepted again
(docs/can-frames.md §3, §6). These scenarios attack that promise through the paths a deployment
uses: sessions of a multi-use certificate run by the pairing flow, each end's
:meth:`EntityNode.channel <modbatt.nodes.entity.EntityNode.channel>`, restarts of an entity
from its key store and freshness files on disk, and the unauthenticated ``pairing-accept`` /
``pairing-start`` ops of :class:`~modbatt.nodes.pairing_flow.PairingService`.

The passive GCM attack is the "forbidden attack" (Joux 2006; Böck et al., USENIX WOOT 2016):
two GCM tags under one key and one nonce give the GHASH key H, and with H and one known
plaintext anyone forges a tag. It is implemented here only as an attacker would, with the
GF(2^128) arithmetic of NIST SP 800-38D; :func:`forge_from_nonce_reuse` is tested against a
link that does reuse nonces, so its failure here means the nonces really never repeat.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..can.secured import SecuredPdu
from ..can.wiretime import CLASSIC, FD, BusProfile
from ..crypto.freshness import COUNTER_BYTES
from ..crypto.rng import SeededRandom, SystemRandom
from ..errors import Reason
from ..model._fields import b64
from ..model.access import AccessData, TransportProtocol
from ..model.pairing import ControllerMode
from ..model.policy import MessageClass
from ..nodes.channel import PairedChannel, pump
from ..nodes.entity import EntityNode
from ..nodes.inmemory import ManualClock
from ..nodes.pairing_flow import PairingService, pair_entities
from ..protocol.pairing import CompletionProof
from ..transport.http import InProcessEntityClient
from ..workbench.deployment import Deployment
from ._world import on_bus, paired_pack
from .outcome import Outcome, attempt, counted, judge
from .registry import scenario

FAMILY = "replay"
_GCM_TAG = 16
_CHARGE = MessageClass.CHARGE_COMMAND


def _unit(channel: PairedChannel, pdu: SecuredPdu) -> Reason | None:
    return attempt(lambda: channel.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame))


def _ciphertext(pdu: SecuredPdu, n: int, profile: BusProfile) -> bytes:
    """The n ciphertext bytes of a symmetric-tier frame (classic: ct ‖ FV8 ‖ tag; FD: FV ‖ pad ‖ ct ‖ tag)."""
    return pdu.data[:n] if not profile.fd else pdu.data[COUNTER_BYTES + 1 : COUNTER_BYTES + 1 + n]


# --------------------------------------------------------------------- cross-session replay


def _cross_session(seed: int | None, mode: ControllerMode) -> Outcome:
    reasons: list[Reason | None] = []
    counters: dict[str, int] = {}
    for profile in (CLASSIC, FD):
        pack = paired_pack(seed, pair=False)
        dep, module = pack.dep, pack.module(1)
        cert = pack.issue_pairing(1, mode=mode, max_uses=2)
        pid = cert.metadata.pairing_id
        pair_entities(dep.controller, dep.pack, module, certificate=cert)
        tx, rx = on_bus(dep.pack.channel(pid, profile=profile)), on_bus(module.channel(pid, profile=profile))
        commands = [bytes([1, 0, 0x60 + i]) for i in range(4)]
        first = [(tx.send(_CHARGE, p), p) for p in commands]
        announce = tx.send(MessageClass.IDENTITY, b"announce")
        up = rx.send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80")
        for pdu, _ in first:
            rx.receive(pdu.can_id, pdu.data)
        rx.receive(announce.can_id, announce.data, reassembled=True)
        tx.receive(up.can_id, up.data)
        pair_entities(dep.controller, dep.pack, module, certificate=cert)  # session 2, same certificate
        second = [(tx.send(_CHARGE, p[::-1]), p[::-1]) for p in commands]
        for pdu, _ in second:
            rx.receive(pdu.can_id, pdu.data)
        # Nonce values repeat across sessions (each session's counters start at 0); the keys do not.
        same_nonce = [
            (a, b) for a in first for b in second if (a[0].can_id, a[0].freshness) == (b[0].can_id, b[0].freshness)
        ]
        reused = 0
        for (pa, pla), (pb, plb) in same_nonce:
            ca, cb = _ciphertext(pa, len(pla), profile), _ciphertext(pb, len(plb), profile)
            reused += bytes(x ^ y for x, y in zip(ca, cb, strict=True)) == bytes(
                x ^ y for x, y in zip(pla, plb, strict=True)
            )
        reasons += [_unit(rx, pdu) for pdu, _ in first] + [_unit(rx, announce), _unit(tx, up)]
        counters.update(counted(f"{profile.name}.module_channel.rejects", rx.rejects))
        counters.update(counted(f"{profile.name}.pack_channel.rejects", tx.rejects))
        counters[f"{profile.name}.equal_nonce_values_across_sessions"] = len(same_nonce)
        counters[f"{profile.name}.keystream_reused"] = reused
        pack.close()
        if reused:
            return Outcome("succeeded", "keystream_reused", counters, "two sessions encrypted under one key and nonce")
    return judge(
        reasons, Reason.STALE, counters, detail="per-session keys; earlier sessions' frames recognised as stale"
    )


@scenario("cross_session_replay_standard", family=FAMILY, expected=("blocked", "stale"))
def cross_session_replay_standard(seed: int | None = None) -> Outcome:
    """Standard mode, multi-use certificate: replay session 1 into session 2 (classic and FD)."""
    return _cross_session(seed, ControllerMode.STANDARD)


@scenario("cross_session_replay_blind", family=FAMILY, expected=("blocked", "stale"))
def cross_session_replay_blind(seed: int | None = None) -> Outcome:
    """Blind mode, multi-use certificate: replay session 1 into session 2 (classic and FD)."""
    return _cross_session(seed, ControllerMode.BLIND)


# --------------------------------------------------------------------- passive GCM forgery

_R = 0xE1 << 120  # GCM's reduction polynomial, bit-reflected (SP 800-38D §6.3)


def gf_mul(x: int, y: int) -> int:
    """Multiplication in GCM's GF(2^128) (blocks as big-endian integers; SP 800-38D Algorithm 1)."""
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def _gf_pow(x: int, e: int) -> int:
    out, base = 1 << 127, x  # 1 << 127 is the field's one (x^0 is the most significant bit)
    while e:
        if e & 1:
            out = gf_mul(out, base)
        base = gf_mul(base, base)
        e >>= 1
    return out


def _block(data: bytes) -> int:
    return int.from_bytes(data.ljust(16, b"\x00"), "big")


def ghash(h: int, aad: bytes, ct: bytes) -> int:
    """GHASH_H over one AAD and one ciphertext of at most 16 bytes each (all a CAN FD frame needs here)."""
    y = 0
    for blk in (_block(aad), _block(ct), (len(aad) * 8) << 64 | len(ct) * 8):
        y = gf_mul(y ^ blk, h)
    return y


@dataclass(frozen=True)
class _FdFrame:
    can_id: int
    fv: int
    pad: int
    ct: bytes
    tag: int

    @classmethod
    def parse(cls, pdu: SecuredPdu, n: int) -> _FdFrame:
        d = pdu.data
        ct = d[COUNTER_BYTES + 1 : COUNTER_BYTES + 1 + n]
        tag = d[COUNTER_BYTES + 1 + n : COUNTER_BYTES + 1 + n + _GCM_TAG]
        return cls(
            pdu.can_id, int.from_bytes(d[:COUNTER_BYTES], "big"), d[COUNTER_BYTES], ct, int.from_bytes(tag, "big")
        )


def h_from_nonce_reuse(a: _FdFrame, b: _FdFrame) -> int | None:
    """H from two FD frames with one nonce, one AAD and one length, *assuming* one key.

    T_a ⊕ T_b = (C_a ⊕ C_b)·H² (the E_K(J0) term cancels), so H² = (T_a ⊕ T_b)/(C_a ⊕ C_b) and
    H is its square root (x ↦ x^(2^127) in GF(2^128)).
    """
    diff = _block(a.ct) ^ _block(b.ct)
    if not diff or len(a.ct) != len(b.ct) or a.pad != b.pad:
        return None
    h2 = gf_mul(a.tag ^ b.tag, _gf_pow(diff, (1 << 128) - 2))
    return _gf_pow(h2, 1 << 127)


def forge_from_nonce_reuse(h: int, known: _FdFrame, plaintext: bytes, wanted: bytes) -> bytes:
    """An FD frame with ``known``'s nonce carrying ``wanted``, given H and ``known``'s plaintext."""
    aad = bytes([known.pad])
    ek_j0 = known.tag ^ ghash(h, aad, known.ct)
    ct = bytes(c ^ p ^ w for c, p, w in zip(known.ct, plaintext, wanted, strict=True))
    tag = (ghash(h, aad, ct) ^ ek_j0).to_bytes(_GCM_TAG, "big")
    return known.fv.to_bytes(COUNTER_BYTES, "big") + aad + ct + tag + bytes(known.pad)


@scenario("gcm_nonce_reuse_forgery_fd", family=FAMILY, expected=("blocked", "bad_mac"))
def gcm_nonce_reuse_forgery_fd(seed: int | None = None) -> Outcome:
    """Listen to two sessions on FD, recover GHASH's H from equal nonces, forge a charge command."""
    pack = paired_pack(seed, pair=False)
    dep, module = pack.dep, pack.module(1)
    cert = pack.issue_pairing(1, max_uses=2)
    pid = cert.metadata.pairing_id
    pair_entities(dep.controller, dep.pack, module, certificate=cert)
    tx, rx = on_bus(dep.pack.channel(pid, profile=FD)), on_bus(module.channel(pid, profile=FD))
    plain = [bytes([1, 0, 0x40 + i]) for i in range(6)]
    heard1 = [tx.send(_CHARGE, p) for p in plain]
    for pdu in heard1:
        rx.receive(pdu.can_id, pdu.data)
    pair_entities(dep.controller, dep.pack, module, certificate=cert)
    plain2 = [bytes([1, 0, 0x10 + i]) for i in range(3)]
    heard2 = [tx.send(_CHARGE, p) for p in plain2]
    for pdu in heard2:
        rx.receive(pdu.can_id, pdu.data)
    n = len(plain[0])
    one = {(f.can_id, f.fv): f for f in (_FdFrame.parse(p, n) for p in heard1)}
    two = {(f.can_id, f.fv): f for f in (_FdFrame.parse(p, n) for p in heard2)}
    pairs = [(one[k], two[k]) for k in sorted(one.keys() & two.keys())]
    candidates = [h for h in (h_from_nonce_reuse(a, b) for a, b in pairs) if h is not None]
    reasons = []
    # Under one key every pair gives the same H; here each pair is under two keys: garbage.
    consistent = int(len(set(candidates)) == 1)
    target = max(one.values(), key=lambda f: f.fv)  # a nonce the module has not reached in session 2
    wanted = b"\x01\x00\xff"  # charge at full current
    for h in candidates:
        forged = forge_from_nonce_reuse(h, target, plain[target.fv], wanted)
        reasons.append(attempt(lambda f=forged: rx.receive(target.can_id, f)))
    counters = counted("module_channel.rejects", rx.rejects)
    counters.update(equal_nonce_pairs=len(pairs), h_candidates=len(candidates), h_consistent=consistent)
    pack.close()
    return judge(reasons, Reason.BAD_MAC, counters, detail="nonces repeat only under different session keys")


# --------------------------------------------------------------------- restarts (on disk)


@contextlib.contextmanager
def _on_disk(seed: int | None) -> Iterator[tuple[Deployment, EntityNode, EntityNode, str]]:
    """A pack and a module with key stores and freshness files on disk, bound and paired."""
    rng = SeededRandom(seed) if seed is not None else SystemRandom()
    with tempfile.TemporaryDirectory(prefix="modbatt-restart-") as tmp:
        deployment = Deployment(Path(tmp), clock=ManualClock(), rng=rng)
        pack = deployment.entity(AccessData("can://can0/0xff", TransportProtocol.CAN, "pack-01"))
        module = deployment.entity(AccessData("can://can0/0x01", TransportProtocol.CAN, "module-01"))
        controller = deployment.controller(InProcessEntityClient({n.access_data.endpoint: n for n in (pack, module)}))
        record = controller.bind(pack.access_data, module.access_data, deployment.authorize(pack, module)).record
        pid = pair_entities(controller, pack, module, record.binding_id).certificate.metadata.pairing_id
        try:
            yield deployment, pack, module, pid
        finally:
            deployment.close()


def _restart(deployment: Deployment, node: EntityNode) -> EntityNode:
    """The process dies (the OS drops its locks; nothing else is written) and starts again from disk."""
    node.close_channels()
    return deployment.entity(node.access_data)


@scenario("restart_receiver_replay", family=FAMILY, expected=("blocked", "stale"))
def restart_receiver_replay(seed: int | None = None) -> Outcome:
    """The module restarts from disk; replay what it accepted before, then again after its resync."""
    reasons: list[Reason | None] = []
    counters: dict[str, int] = {}
    for profile in (CLASSIC, FD):
        with _on_disk(seed) as (deployment, pack, module, pid):
            tx, rx = on_bus(pack.channel(pid, profile=profile)), on_bus(module.channel(pid, profile=profile))
            recorded = [tx.send(_CHARGE, bytes([1, 0, i])) for i in range(5)]
            for pdu in recorded:
                rx.receive(pdu.can_id, pdu.data)
            rx = on_bus(_restart(deployment, module).channel(pid, profile=profile))
            reasons += [_unit(rx, p) for p in recorded]  # before the resync: nothing is accepted
            pump(tx, rx)  # the driver's start-up resync
            reasons += [_unit(rx, p) for p in recorded]
            fresh = tx.send(_CHARGE, b"\x01\x00\x07")
            got = rx.receive(fresh.can_id, fresh.data)
            counters.update(counted(f"{profile.name}.module_channel.rejects", rx.rejects))
            counters[f"{profile.name}.genuine_after_restart"] = int(got is not None and got.payload == b"\x01\x00\x07")
    return judge(
        reasons, Reason.STALE, counters, detail="windows restored unsynced; resync marks everything older seen"
    )


@scenario("restart_sender_replay", family=FAMILY, expected=("blocked", "stale"))
def restart_sender_replay(seed: int | None = None) -> Outcome:
    """The pack restarts from disk with frames in flight; replay them all after it resumed."""
    reasons: list[Reason | None] = []
    counters: dict[str, int] = {}
    for profile in (CLASSIC, FD):
        with _on_disk(seed) as (deployment, pack, module, pid):
            tx, rx = on_bus(pack.channel(pid, profile=profile)), on_bus(module.channel(pid, profile=profile))
            before = [tx.send(_CHARGE, bytes([1, 0, i])) for i in range(5)]
            for pdu in before[:3]:
                rx.receive(pdu.can_id, pdu.data)  # the last two are held back by the attacker
            tx = on_bus(_restart(deployment, pack).channel(pid, profile=profile))
            pump(tx, rx)  # restart notice, answers both ways
            after = tx.send(_CHARGE, b"\x01\x00\x08")
            got = rx.receive(after.can_id, after.data)
            reasons += [_unit(rx, p) for p in before]
            counters.update(counted(f"{profile.name}.module_channel.rejects", rx.rejects))
            used = {p.freshness for p in before}
            counters[f"{profile.name}.freshness_reused"] = int(after.freshness in used)
            counters[f"{profile.name}.freshness_jump"] = int(after.freshness or 0) - max(int(f or 0) for f in used)
            counters[f"{profile.name}.genuine_after_restart"] = int(got is not None and got.payload == b"\x01\x00\x08")
            if after.freshness in used:
                return Outcome("succeeded", "nonce_reused", counters, "the restarted sender reused a freshness value")
    return judge(reasons, Reason.STALE, counters, detail="counters resume past the reservation; partner resyncs")


# --------------------------------------------------------------------- pairing-accept replays


def _service_world(seed: int | None, max_uses: int):  # type: ignore[no-untyped-def]
    pack = paired_pack(seed, pair=False)
    dep = pack.dep
    cert = pack.issue_pairing(1, max_uses=max_uses)
    # What a network attacker reaches: each entity's pairing ops, no controller signature needed.
    wire = InProcessEntityClient({n.access_data.endpoint: PairingService(n) for n in (dep.pack, pack.module(1))})
    return pack, cert, wire


@scenario("pairing_accept_reset_in_progress", family=FAMILY, expected=("blocked", "duplicate"))
def pairing_accept_reset_in_progress(seed: int | None = None) -> Outcome:
    """Mid-session, replay pairing-accept to both ends and pairing-start to A, then replay A's offer."""
    pack, cert, wire = _service_world(seed, max_uses=2)
    dep, module = pack.dep, pack.module(1)
    meta, pid, encoded = cert.metadata, cert.metadata.pairing_id, b64(cert.encode())
    for end in (meta.entity_a, meta.entity_b):  # the legitimate session begins
        wire.call(end.endpoint, "pairing-accept", {"certificate": encoded})
    offer = wire.call(meta.entity_a.endpoint, "pairing-start", {"pairing_id": pid})["offer"]
    nonce = dep.pack.pairings[pid].session_nonce
    absorbed = 0
    for _ in range(10):  # the attacker's replays of the certificate: harmless and idempotent
        for end in (meta.entity_a, meta.entity_b):
            absorbed += attempt(lambda e=end: wire.call(e.endpoint, "pairing-accept", {"certificate": encoded})) is None
    reasons = [attempt(lambda: wire.call(meta.entity_a.endpoint, "pairing-start", {"pairing_id": pid}))]
    reset = int(dep.pack.pairings[pid].session_nonce != nonce)
    reply = wire.call(meta.entity_b.endpoint, "pairing-offer", {"pairing_id": pid, "offer": offer})["reply"]
    answer = wire.call(meta.entity_a.endpoint, "pairing-offer", {"pairing_id": pid, "offer": reply})
    dep.controller.complete_pairing(CompletionProof.from_json(answer["completion"]))  # the session completes
    reasons.append(
        attempt(lambda: wire.call(meta.entity_b.endpoint, "pairing-offer", {"pairing_id": pid, "offer": offer}))
    )
    counters = {**counted("pack.rejections", dep.pack.rejections), **counted("module.rejections", module.rejections)}
    counters.update(accepts_absorbed=absorbed, session_reset=reset, uses_pack=len(dep.pack.pairing_uses(pid)),
                    uses_module=len(module.pairing_uses(pid)))  # fmt: skip
    pack.close()
    if reset or counters["uses_pack"] != 1 or counters["uses_module"] != 1:
        return Outcome("succeeded", "session_reset", counters, "a replay reset the session or spent a use")
    return judge(reasons, Reason.DUPLICATE, counters, detail="accept is idempotent; a second start is refused")


@scenario("pairing_accept_use_exhaustion", family=FAMILY, expected=("blocked", "exhausted"))
def pairing_accept_use_exhaustion(seed: int | None = None) -> Outcome:
    """Replay pairing-accept 100 times to burn a two-use certificate; the owners' two sessions still run."""
    pack, cert, wire = _service_world(seed, max_uses=2)
    dep, module = pack.dep, pack.module(1)
    meta, pid, encoded = cert.metadata, cert.metadata.pairing_id, b64(cert.encode())

    def replay(times: int) -> int:
        ok = 0
        for _ in range(times):
            for end in (meta.entity_a, meta.entity_b):
                ok += attempt(lambda e=end: wire.call(e.endpoint, "pairing-accept", {"certificate": encoded})) is None
        return ok

    absorbed = replay(50)
    spent_by_replays = len(dep.pack.pairing_uses(pid)) + len(module.pairing_uses(pid))
    sessions = 0
    for _ in range(2):  # both legitimate uses still work
        out = pair_entities(dep.controller, dep.pack, module, certificate=cert)
        sessions += 1
        absorbed += replay(25)
    burned = sum(out.burned.values())
    # Spent by its owners, the certificate now refuses everyone, the attacker included.
    reasons = [attempt(lambda: wire.call(meta.entity_b.endpoint, "pairing-accept", {"certificate": encoded}))]
    counters = {**counted("pack.rejections", dep.pack.rejections), **counted("module.rejections", module.rejections)}
    counters.update(accepts_absorbed=absorbed, uses_spent_by_replays=spent_by_replays, sessions_completed=sessions,
                    burned_seen_by_controller=burned)  # fmt: skip
    pack.close()
    if spent_by_replays or sessions != 2 or burned:
        return Outcome("succeeded", "uses_burned", counters, "replays spent uses of the certificate")
    return judge(reasons, Reason.EXHAUSTED, counters, detail="a use is counted only when a session derives secrets")
