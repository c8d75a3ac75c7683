"""Anti-rollback: the last signed tree head, kept where whoever can edit the ledger file cannot.

Anyone with write access to a ledger file can delete its tail entries and the tree heads that
cover them; the shorter log still verifies on its own. The auth controller therefore keeps its
last signed head outside the file, in its authenticated key store, and the ledger refuses to
append or sign unless the log still extends that head (RFC 9162 §2.1.4 consistency). See
docs/ledger.md, "Anti-rollback".

:class:`HeadPin` is what the ledger needs from such a place; :class:`KeyStoreHeadPin` keeps the
head in a :class:`~modbatt.crypto.keystore.KeyStore` record.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from ..errors import LedgerError, VerificationError
from .tree_head import SignedTreeHead

__all__ = ["PIN_RECORD", "HeadPin", "KeyStoreHeadPin"]

#: Key-store record holding the controller's last signed tree head.
PIN_RECORD: Final = "ledger/tree-head"


class HeadPin(Protocol):
    """Where a ledger's signer keeps its last signed tree head."""

    def load(self) -> SignedTreeHead | None:
        """The pinned head, or None before the first signing."""
        ...

    def store(self, sth: SignedTreeHead) -> None:
        """Pin ``sth`` (never lowers an existing pin)."""
        ...


class KeyStoreHeadPin:
    """A :class:`HeadPin` in a key store record (``{"sth": SignedTreeHead.to_bytes()}``).

    The key store is encrypted and authenticated, so the pin cannot be edited without its key;
    it can still be rolled back together with the ledger by someone who kept an old copy of both
    files (docs/crypto.md §8), which only an auditor's kept head catches (``ledger verify --sth``).
    """

    def __init__(self, store: Any, name: str = PIN_RECORD) -> None:
        self._store = store
        self._name = name
        self._decoded: tuple[bytes, SignedTreeHead] | None = None  # the record is read each time

    def load(self) -> SignedTreeHead | None:
        if self._name not in self._store:
            return None
        raw = self._store.record(self._name).get("sth")
        if self._decoded is not None and self._decoded[0] == raw:
            return self._decoded[1]
        try:
            sth = SignedTreeHead.from_bytes(raw)
        except (TypeError, VerificationError):
            raise LedgerError(f"key-store record {self._name!r} is not a signed tree head") from None
        self._decoded = (raw, sth)
        return sth

    def store(self, sth: SignedTreeHead) -> None:
        current = self.load()
        if current is not None and current.tree_size > sth.tree_size:
            return
        self._store.put_record(self._name, {"sth": sth.to_bytes()})

    def __repr__(self) -> str:
        return f"KeyStoreHeadPin({self._name!r})"
