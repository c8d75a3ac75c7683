"""Randomness sources: the system CSPRNG, and a seeded stream for tests and docs only.

Protocol machines take a :class:`RandomSource` instead of calling ``os.urandom`` so that a
simulation or a notebook can be replayed byte for byte. The seeded source refuses to exist
unless ``MODBATT_REPRODUCIBLE=1`` is set in the environment, and every key it produces is
marked ``reproducible`` so the key store refuses to persist it (docs/crypto.md §6).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import Protocol

from ..errors import ReproducibleModeError
from . import labels

__all__ = [
    "REPRODUCIBLE_ENV",
    "RandomSource",
    "ScriptedRandom",
    "SeededRandom",
    "SystemRandom",
    "reproducible_mode_allowed",
]

REPRODUCIBLE_ENV = "MODBATT_REPRODUCIBLE"


def reproducible_mode_allowed() -> bool:
    """True when the environment explicitly opts in to seeded randomness."""
    return os.environ.get(REPRODUCIBLE_ENV) == "1"


class RandomSource(Protocol):
    """Where protocol code gets its randomness."""

    reproducible: bool

    def token_bytes(self, n: int) -> bytes:
        """Return ``n`` random bytes."""
        ...


class SystemRandom:
    """The operating system's CSPRNG (the default everywhere)."""

    reproducible = False

    def token_bytes(self, n: int) -> bytes:
        return secrets.token_bytes(n)

    def __repr__(self) -> str:
        return "SystemRandom()"


class SeededRandom:
    """A deterministic byte stream (SHA-256 in counter mode over a seed).

    Not a DRBG for production use; it exists so that tests, notebooks and spec figures
    produce identical bytes on every run.
    """

    reproducible = True

    def __init__(self, seed: bytes | str | int) -> None:
        if not reproducible_mode_allowed():
            raise ReproducibleModeError(
                f"seeded randomness is for tests and docs only; set {REPRODUCIBLE_ENV}=1 to use it"
            )
        if isinstance(seed, int):
            seed = seed.to_bytes(16, "big", signed=False)
        elif isinstance(seed, str):
            seed = seed.encode("utf-8")
        self._seed = hashlib.sha256(labels.REPRODUCIBLE_STREAM + bytes(seed)).digest()
        self._counter = 0
        self._buffer = b""

    def token_bytes(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            self._buffer += block
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def __repr__(self) -> str:
        return "SeededRandom(<seed hidden>)"


class ScriptedRandom:
    """Hands out exactly the byte strings it was given, in order: fixed ephemeral keys for
    known-answer vectors (docs/vectors.md), e.g. ``seal_to_semi_public_key(..., rng=ScriptedRandom([e]))``.

    Reproducible mode only, like :class:`SeededRandom` (keys it yields are marked reproducible),
    and each request must match the next scripted string's length exactly, so a script can never
    silently feed a different use than the one it was written for.
    """

    reproducible = True

    def __init__(self, chunks: list[bytes]) -> None:
        if not reproducible_mode_allowed():
            raise ReproducibleModeError(
                f"scripted randomness is for test vectors only; set {REPRODUCIBLE_ENV}=1 to use it"
            )
        self._chunks = [bytes(c) for c in chunks]

    def token_bytes(self, n: int) -> bytes:
        if not self._chunks:
            raise ReproducibleModeError("scripted randomness exhausted")
        if len(self._chunks[0]) != n:
            raise ReproducibleModeError(f"scripted chunk is {len(self._chunks[0])} bytes, {n} requested")
        return self._chunks.pop(0)

    def __repr__(self) -> str:
        return f"ScriptedRandom(<{len(self._chunks)} chunks>)"
