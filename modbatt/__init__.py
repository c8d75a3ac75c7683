"""modbatt: a workbench for the Modbatt trust protocol for modular battery packs.

Layers (DESIGN §2), bottom to top: ``crypto`` and ``encoding``; ``model`` and ``ledger``;
``protocol`` (sans-I/O) and ``can``; ``nodes`` and ``transport``; ``sim``; ``workbench``
and ``cli``. A lower layer never imports a higher one.
"""

from .crypto.labels import SPEC_VERSION
from .errors import ModbattError, Reason, VerificationError

__version__ = "0.1.0"

__all__ = ["SPEC_VERSION", "ModbattError", "Reason", "VerificationError", "__version__"]
