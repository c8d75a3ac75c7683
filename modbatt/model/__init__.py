"""Layer 2: typed protocol records with validation of untrusted input."""

from .tier import Tier

__all__ = ["Tier"]
