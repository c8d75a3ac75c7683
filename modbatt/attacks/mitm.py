"""Man in the middle on binding (semi-public key substitution) and on pairing (certificate swap
between two pairings, offer substitution).

The attacker sits on the controller↔entity link or the entity↔entity link, reads and rewrites
everything, but holds no controller, identity or binding private key. What stops it: entity
answers are signed by the device identity key the binding authority pinned (binding), the
controller signs certificates over metadata *and* sections (pairing), and offers are signed with
binding keys (the half exchange).
"""

from __future__ import annotations

import base64
from typing import Any

from ..crypto import labels
from ..crypto.suite import PrivateKey
from ..encoding import canonical_dumps, strict_loads
from ..errors import Reason
from ..model.pairing import ControllerMode, PairingCertificate
from ..nodes.inmemory import InMemoryDeployment
from ..protocol.binding import _pop_bytes
from ._world import paired_pack, tap
from .outcome import Outcome, attempt, counted, judge
from .registry import scenario

FAMILY = "mitm"


@scenario("mitm_binding_key_substitution", family=FAMILY, expected=("blocked", "bad_signature"))
def mitm_binding_key_substitution(seed: int | None = None) -> Outcome:
    """Swap the module's semi-public key in its generate-keys answer for the attacker's own."""
    dep = InMemoryDeployment(seed=seed, modules=1)
    module = dep.modules[1]
    mallory = PrivateKey.generate(dep.rng)

    def substitute(endpoint: str, op: str, answer: Any) -> Any:
        if op != "generate-keys" or answer["device_id"] != module.access_data.device_id:
            return answer
        request_id = base64.b64decode(answer["request_id"])
        pop = mallory.sign(
            labels.SIG_PROOF_OF_POSSESSION,
            _pop_bytes(answer["binding_id"], request_id, answer["device_id"], mallory.public_key),
        )  # a perfect proof of possession for the attacker's key: only the identity signature is missing
        body = {"semi_public_key": _b64(mallory.public_key.to_bytes()), "proof_of_possession": _b64(pop)}
        return {**answer, "body": body}

    tap(dep, substitute)
    size = dep.ledger.size
    reasons = [attempt(lambda: dep.bind(dep.pack, module))]
    counters = counted("controller.rejections", dep.controller.rejections)
    counters["ledger_entries_added"] = dep.ledger.size - size
    counters["module_bindings_left"] = len(module.machine.bindings)  # the abort told it to drop its keys
    counters["pack_bindings_left"] = len(dep.pack.machine.bindings)
    dep.ledger.close()
    return judge(reasons, Reason.BAD_SIGNATURE, counters, detail="answers are signed by pinned identity keys")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@scenario("mitm_pairing_certificate_swap", family=FAMILY, expected=("blocked", "bad_signature"))
def mitm_pairing_certificate_swap(seed: int | None = None) -> Outcome:
    """Deliver module 2's certificate to module 1, and splice sections between two certificates."""
    pack = paired_pack(seed, modules=2, pair=False)
    dep, m1 = pack.dep, pack.module(1)
    cert1 = pack.issue_pairing(1)
    cert2 = dep.controller.issue_pairing(pack.records[2].binding_id)
    cert1b = pack.issue_pairing(1)  # a second pairing of the same binding
    spliced = [
        PairingCertificate(cert1.metadata_bytes, cert2.sections, cert1.signature),  # sections of another pairing
        PairingCertificate(cert1.metadata_bytes, cert1b.sections, cert1.signature),  # same binding, other pairing
        PairingCertificate(cert1b.metadata_bytes, cert1.sections, cert1b.signature),
        PairingCertificate(cert1.metadata_bytes, cert1.sections, cert2.signature),  # another certificate's signature
    ]
    reasons = [attempt(lambda c=c: m1.accept_certificate(c.encode())) for c in spliced]
    reasons.append(attempt(lambda: m1.accept_certificate(cert2.encode())))  # whole certificate of module 2
    counters = counted("module_1.rejections", m1.rejections)
    counters["pairings_opened"] = len(m1.pairings)
    pack.close()
    return judge(reasons, Reason.BAD_SIGNATURE, counters, detail="the signature covers metadata and sections")


@scenario("mitm_pairing_offer_substitution", family=FAMILY, expected=("blocked", "bad_signature"))
def mitm_pairing_offer_substitution(seed: int | None = None) -> Outcome:
    """Replace or edit A's offer (half, ephemeral key, session nonce) on its way to B, in blind mode."""
    pack = paired_pack(seed, pair=False)
    dep, module = pack.dep, pack.module(1)
    cert = pack.issue_pairing(1, mode=ControllerMode.BLIND)
    pid = cert.metadata.pairing_id
    dep.pack.accept_certificate(cert.encode())
    module.accept_certificate(cert.encode())
    offer = dict(strict_loads(dep.pack.pairing_start(pid)))
    mallory = PrivateKey.generate(dep.rng)
    body = {k: v for k, v in offer.items() if k != "signature"}
    forged = []
    # 1. the attacker's own ephemeral key, re-signed with its own key (it has no binding key)
    own = {**body, "ephemeral": PrivateKey.generate(dep.rng).public_key.to_bytes()}
    forged.append({**own, "signature": mallory.sign(labels.SIG_PAIRING_OFFER, canonical_dumps(own))})
    # 2. the genuine signature over edited fields (ephemeral, half, session nonce)
    forged.append({**offer, "ephemeral": own["ephemeral"]})
    forged.append({**offer, "sealed_half": bytes(len(offer["sealed_half"]))})
    forged.append({**offer, "session_nonce": bytes(16)})
    reasons = [attempt(lambda f=f: module.pairing_offer(pid, canonical_dumps(f))) for f in forged]
    counters = counted("module.rejections", module.rejections)
    counters["module_holds_secrets"] = int(module.pairing_secrets(pid) is not None)
    pack.close()
    return judge(reasons, Reason.BAD_SIGNATURE, counters, detail="offers are signed with binding keys")
