"""The binding authority's side (the seed's "external means"): granting a binding.

In a deployment the authority is a separate party (manufacturer, fleet owner); the workbench and
the tests run it locally to produce :class:`~modbatt.model.binding.BindingAuthorization` grants.
"""

from __future__ import annotations

from ..crypto.rng import RandomSource
from ..crypto.suite import PrivateKey
from ..model.binding import BindingAuthorization
from .entity import EntityNode

__all__ = ["AUTHORIZATION_LIFETIME_S", "authorize_binding"]

#: How long a grant stays valid (each grant binds once: the controller records its nonce).
AUTHORIZATION_LIFETIME_S = 600


def authorize_binding(
    authority_key: PrivateKey,
    a: EntityNode,
    b: EntityNode,
    now: float,
    rng: RandomSource,
    lifetime_s: int = AUTHORIZATION_LIFETIME_S,
) -> BindingAuthorization:
    """The binding authority's grant for binding ``a`` and ``b``, naming their identity keys."""
    return BindingAuthorization(
        a.access_data.device_id,
        a.identity_key,
        b.access_data.device_id,
        b.identity_key,
        int(now),
        int(now) + lifetime_s,
        rng.token_bytes(16),
    ).sign(authority_key)
