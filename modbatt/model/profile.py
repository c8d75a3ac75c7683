"""Protocol profiles: how a pairing authenticates what its partners send each other (docs/profiles.md).

A profile is a property of a pairing, fixed by the controller in the signed certificate metadata
(``"profile"``), so both partners read it from the same signed bytes and a change breaks the
controller's signature. Every profile keeps the signatures a third party checks (ledger
statements, witnesses, completion proofs, escalations, the controller's copy of level 6, level 7);
they differ in what the two partners use between themselves:

* ``seed``: the seed as written. Binding-tier CAN frames carry an ECDSA P-256 signature with the
  sender's binding key, every level-5 command and acknowledgement is signed, level 3 signs its
  handshake and draws its ephemeral keys when it runs.
* ``efficient``: the partners derive a *binding MAC secret* once per pairing session, from static
  ECDH of their binding keys (docs/spec/key-schedule.md §4.3). Binding-tier frames use the
  pairing tier's AEAD formats under keys from it, the session's pairing secret is bound to it
  (so level 4, level 5 and the level-6 MAC prove possession of a binding key as well as of the
  pairing), level-5 commands and acknowledgements carry no signature, level 3 authenticates by
  MAC and takes its ephemeral keys from a pool filled at idle time, and at level 6 the partners
  check each other by MAC while the controller still checks both signatures.

The discrete-event model (docs/simulation.md §3) also knows ``ed25519``, which is modelled only.
"""

from __future__ import annotations

import enum

from ..errors import ConfigError

__all__ = ["DEFAULT_PROFILE", "ProtocolProfile", "profile_named"]


class ProtocolProfile(enum.StrEnum):
    """The implemented protocol profiles (docs/profiles.md)."""

    SEED = "seed"
    EFFICIENT = "efficient"

    @property
    def binding_mac(self) -> bool:
        """The partners derive a binding MAC secret and authenticate each other with it, not by signatures."""
        return self is ProtocolProfile.EFFICIENT


DEFAULT_PROFILE = ProtocolProfile.SEED


def profile_named(name: str | ProtocolProfile) -> ProtocolProfile:
    """The profile called ``name``; a one-line :class:`ConfigError` naming the known ones otherwise."""
    try:
        return ProtocolProfile(name)
    except ValueError:
        known = ", ".join(p.value for p in ProtocolProfile)
        hint = " (ed25519 is modelled only, docs/profiles.md)" if name == "ed25519" else ""
        raise ConfigError(f"unknown protocol profile {name!r}; known: {known}{hint}") from None
