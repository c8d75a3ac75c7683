"""Layer 1: cipher suite v1, randomness, freshness and the key store."""

from .rng import RandomSource, SeededRandom, SystemRandom, reproducible_mode_allowed
from .suite import (
    PrivateKey,
    PublicKey,
    aead_decrypt,
    aead_encrypt,
    hkdf_sha256,
    open_sealed,
    seal_to_semi_public_key,
    sha256,
)

__all__ = [
    "PrivateKey",
    "PublicKey",
    "RandomSource",
    "SeededRandom",
    "SystemRandom",
    "aead_decrypt",
    "aead_encrypt",
    "hkdf_sha256",
    "open_sealed",
    "reproducible_mode_allowed",
    "seal_to_semi_public_key",
    "sha256",
]
