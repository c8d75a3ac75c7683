"""Benchmark area ``crypto``: cost of each suite-v1 operation and of the key store.

Rows are ``{"area", "name", "us_per_call", "detail"}``. The figures size the CPU cost
profiles of the simulator and are quoted in docs/crypto.md; they are host measurements,
not a model of the module MCUs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..crypto import labels
from ..crypto.keystore import KdfParams, KeyStore
from ..crypto.suite import (
    PrivateKey,
    aead_decrypt,
    aead_encrypt,
    hkdf_sha256,
    open_sealed,
    seal_to_semi_public_key,
)
from . import time_per_call

NAME = "crypto"
DESCRIPTION = "µs per P-256 sign/verify/ECDH, ECIES seal/open, AES-256-GCM, HKDF, key-store open/write"

_MESSAGE = bytes(range(64))  # a typical signed record body
_SEALED_PLAINTEXT = bytes(32)  # one pairing-key half
_CONTEXT = b"modbatt/v2/bench/sealed-box"  # associated data of the benchmark's boxes


def run(quick: bool) -> list[dict[str, object]]:
    """Time every operation; ``quick`` shortens each measurement (noisier figures)."""
    min_seconds, repeats = (0.05, 3) if quick else (0.3, 5)
    rows: list[dict[str, object]] = []

    def measure(name: str, fn: Callable[[], object], detail: str, *, single_calls: bool = False) -> None:
        # single_calls: one call already takes far longer than min_seconds (a KDF run).
        seconds = time_per_call(fn, min_seconds=0.0 if single_calls else min_seconds, repeats=repeats)
        rows.append({"area": NAME, "name": name, "us_per_call": round(seconds * 1e6, 2), "detail": detail})

    key, peer = PrivateKey.generate(), PrivateKey.generate()
    signature = key.sign(labels.SIG_BINDING_RECORD, _MESSAGE)
    box = seal_to_semi_public_key(key.public_key, _SEALED_PLAINTEXT, context=_CONTEXT)
    aead_key, nonce = os.urandom(32), os.urandom(12)
    ct8 = aead_encrypt(aead_key, nonce, bytes(8))
    ct64 = aead_encrypt(aead_key, nonce, bytes(64))

    measure(
        "ecdsa_sign", lambda: key.sign(labels.SIG_BINDING_RECORD, _MESSAGE), "P-256, RFC 6979, 64 B message"
    )
    measure(
        "ecdsa_verify",
        lambda: key.public_key.verify(labels.SIG_BINDING_RECORD, _MESSAGE, signature),
        "P-256, raw r||s, 64 B message",
    )
    measure("ecdh", lambda: key.exchange(peer.public_key), "P-256 shared secret (validated peer key)")
    measure(
        "ecies_seal",
        lambda: seal_to_semi_public_key(key.public_key, _SEALED_PLAINTEXT, context=_CONTEXT),
        "32 B plaintext: keygen + ECDH + HKDF + GCM",
    )
    measure(
        "ecies_open",
        lambda: open_sealed(key, box, context=_CONTEXT),
        "32 B plaintext: point decode + ECDH + HKDF + GCM",
    )
    measure("aes_gcm_encrypt_8B", lambda: aead_encrypt(aead_key, nonce, bytes(8)), "AES-256-GCM, 8 B, no AAD")
    measure("aes_gcm_decrypt_8B", lambda: aead_decrypt(aead_key, nonce, ct8), "AES-256-GCM, 8 B, no AAD")
    measure(
        "aes_gcm_encrypt_64B", lambda: aead_encrypt(aead_key, nonce, bytes(64)), "AES-256-GCM, 64 B, no AAD"
    )
    measure("aes_gcm_decrypt_64B", lambda: aead_decrypt(aead_key, nonce, ct64), "AES-256-GCM, 64 B, no AAD")
    measure("hkdf_sha256", lambda: hkdf_sha256(aead_key, info=labels.ECIES_KEY, length=32), "32 B out")
    _keystore_rows(measure)
    return rows


def _keystore_rows(measure: Callable[..., None]) -> None:
    # Production parameters only: the cheap test profile is refused outside reproducible mode,
    # and its timing would say nothing about a real store.
    kdf = KdfParams.default()
    with tempfile.TemporaryDirectory(prefix="modbatt-bench-") as tmp:
        directory = Path(tmp)
        key_file = KeyStore.generate_key_file(directory / "store.key")
        passphrase = os.urandom(16).hex()
        for store in (
            KeyStore.create(directory / "pp.mbks", passphrase=passphrase, kdf=kdf),
            KeyStore.create(directory / "kf.mbks", key_file=key_file),
        ):
            store.put_private_key("identity", PrivateKey.generate())
            store.put_record("partner", {"endpoint": "can://0x18", "semi_public_key": bytes(33)})
        kdf_detail = (
            f"{kdf.algorithm} t={kdf.iterations} m={kdf.memory_kib} KiB p={kdf.lanes}"
            if kdf.algorithm == "argon2id"
            else f"scrypt N={kdf.n} r={kdf.r} p={kdf.p}"
        )
        measure(
            "keystore_open_passphrase",
            lambda: KeyStore.open(directory / "pp.mbks", passphrase=passphrase),
            f"KDF {kdf_detail}; 1 key + 1 record",
            single_calls=True,
        )
        measure(
            "keystore_open_key_file",
            lambda: KeyStore.open(directory / "kf.mbks", key_file=key_file),
            "HKDF only; 1 key + 1 record",
        )
        writer = KeyStore.open(directory / "kf.mbks", key_file=key_file)
        counter = iter(range(1 << 30))
        measure(
            "keystore_write",
            lambda: writer.put_record("counter", {"n": next(counter)}),
            "one auto-committed put: seal + temp file + fsync + rename + directory fsync",
        )
