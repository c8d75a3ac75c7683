"""Signature malleability: the high-S twin of a controller signature on a pairing certificate.

An ECDSA signature ``(r, s)`` has a twin ``(r, n − s)`` that the curve accepts just as well. A man
in the middle who swaps the twin into a certificate gets other certificate bytes under a valid
controller signature, without any key. What stops it: suite v1 signs low-S only and every
verifier refuses ``s > n/2`` as ``malformed`` (docs/crypto.md §2), and a certificate's identity
(``certificate_hash``) covers the signed bytes, not the signature, so the twin is not even a
second certificate. The scenario delivers the twin to both entities and runs ``modbatt cert
inspect --controller-key`` on it, the auditor's path.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from ..crypto import labels
from ..crypto.suite import P256_ORDER
from ..errors import Reason
from ..model.pairing import PairingCertificate
from ._world import paired_pack
from .outcome import Outcome, attempt, counted, judge
from .registry import scenario

__all__ = ["high_s_twin"]

FAMILY = "mitm"


def high_s_twin(signature: bytes) -> bytes:
    """``(r, n − s)`` for a raw 64-byte ``r ‖ s`` signature: the same signature to the curve."""
    s = int.from_bytes(signature[32:], "big")
    return signature[:32] + (P256_ORDER - s).to_bytes(32, "big")


def _valid_without_the_low_s_rule(cert: PairingCertificate, key_der: bytes) -> bool:
    """Does plain ECDSA (OpenSSL, no low-S rule) accept the certificate? The control of the scenario."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = serialization.load_der_public_key(key_der)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    label = labels.SIG_PAIRING_CERTIFICATE
    framed = bytes([len(label)]) + label + cert._signed()  # modbatt's framing (docs/crypto.md §3)
    r, s = int.from_bytes(cert.signature[:32], "big"), int.from_bytes(cert.signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), framed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _cert_inspect(cert: PairingCertificate, key_der: bytes) -> int:
    """Exit code of ``modbatt cert inspect FILE --controller-key DER`` (its output discarded)."""
    from ..cli import main

    with tempfile.TemporaryDirectory(prefix="modbatt-high-s-") as tmp:
        cert_file, key_file = Path(tmp) / "certificate.cbor", Path(tmp) / "controller.der"
        cert_file.write_bytes(cert.encode())
        key_file.write_bytes(key_der)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return main(["cert", "inspect", str(cert_file), "--controller-key", str(key_file)])


@scenario("high_s_certificate", family=FAMILY, expected=("blocked", "malformed"))
def high_s_certificate(seed: int | None = None) -> Outcome:
    """Swap a certificate's signature for its high-S twin (r, n − s) and deliver it to both entities."""
    pack = paired_pack(seed, pair=False)
    dep, module = pack.dep, pack.module(1)
    cert = pack.issue_pairing(1, max_uses=1)
    twin = PairingCertificate(cert.metadata_bytes, dict(cert.sections), high_s_twin(cert.signature))
    key_der = dep.controller_key.public_key.to_spki_der()
    if not _valid_without_the_low_s_rule(twin, key_der):  # else the scenario proves nothing
        pack.close()
        raise RuntimeError("high_s_certificate built a twin that plain ECDSA rejects")
    reasons = [attempt(lambda e=e: e.accept_certificate(twin.encode())) for e in (module, dep.pack)]
    counters = {
        **counted("module.rejections", module.rejections),
        **counted("pack.rejections", dep.pack.rejections),
        "twin_valid_without_low_s_rule": 1,
        "same_certificate_hash": int(twin.certificate_hash == cert.certificate_hash),
        "cert_inspect_exit_twin": _cert_inspect(twin, key_der),
        "cert_inspect_exit_genuine": _cert_inspect(cert, key_der),
    }
    # No use was spent on the twin: the single-use genuine certificate still opens on both sides.
    counters["genuine_accepted_after"] = sum(
        attempt(lambda e=e: e.accept_certificate(cert.encode())) is None for e in (module, dep.pack)
    )
    pack.close()
    if counters["cert_inspect_exit_twin"] != 1:
        reasons.append(None)  # the auditor's path accepted it
    return judge(reasons, Reason.MALFORMED, counters, detail="suite v1 accepts low-S signatures only")
