"""Anti-rollback: the signer's pinned tree head (modbatt.ledger.pin, Ledger.pin_heads) and the controller."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from modbatt.attacks.ledger_tamper import bound_site, forge_history, truncate_ledger
from modbatt.attacks.ledger_tamper import ledger_shape as _rows
from modbatt.crypto.keystore import KeyStore
from modbatt.crypto.rng import SeededRandom
from modbatt.crypto.suite import PrivateKey
from modbatt.errors import KeyStoreError, LedgerError, Reason
from modbatt.ledger import KeyStoreHeadPin, Ledger, LedgerRollbackError, SignedTreeHead
from modbatt.ledger.pin import PIN_RECORD

ENTRIES = [b"statement %d" % i for i in range(12)]


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return PrivateKey.generate(SeededRandom("ledger-pin-tests/controller"))


@pytest.fixture
def store() -> KeyStore:
    return KeyStore.in_memory(reproducible=True)


def _pinned_ledger(path: Path, key: PrivateKey, store: KeyStore) -> Ledger:
    led = Ledger(path, signer=key)
    led.pin_heads(KeyStoreHeadPin(store))
    return led


def test_each_signed_head_is_pinned_and_never_lowered(tmp_path: Path, key: PrivateKey, store: KeyStore) -> None:
    pin = KeyStoreHeadPin(store)
    assert pin.load() is None
    with _pinned_ledger(tmp_path / "l.db", key, store) as led:
        led.append_many(ENTRIES[:5])
        first = led.signed_tree_head()
        assert pin.load() == first
        led.append_many(ENTRIES[5:8])
        second = led.signed_tree_head()
        assert pin.load() == second and store.record(PIN_RECORD)["sth"] == second.to_bytes()
    pin.store(first)  # an older head never replaces a newer pin
    assert pin.load() == second


def test_rollback_is_refused_with_nothing_written(tmp_path: Path, key: PrivateKey, store: KeyStore) -> None:
    path = tmp_path / "l.db"
    with _pinned_ledger(path, key, store) as led:
        led.append_many(ENTRIES[:8])
        led.signed_tree_head()
    truncate_ledger(path, keep=5)
    before = _rows(path)
    with _pinned_ledger(path, key, store) as led:
        led.verify()  # the shorter log verifies on its own: only the pin shows the rollback
        for write in (lambda: led.append(b"next"), led.signed_tree_head, led.check_pinned_head):
            with pytest.raises(LedgerRollbackError) as exc:
                write()
            assert exc.value.reason is Reason.STALE and "rolled back" in str(exc.value)
            assert isinstance(exc.value, LedgerError)  # a ledger failure, and a classified one
    assert _rows(path) == before


def test_fork_is_refused_even_at_the_same_size(tmp_path: Path, key: PrivateKey, store: KeyStore) -> None:
    path = tmp_path / "l.db"
    with _pinned_ledger(path, key, store) as led:
        led.append_many(ENTRIES[:8])
        led.signed_tree_head()
    forge_history(path, 3, [b"forged %d" % i for i in range(6)])  # 9 entries, the first 3 genuine
    before = _rows(path)
    with _pinned_ledger(path, key, store) as led:
        with pytest.raises(LedgerRollbackError) as exc:
            led.signed_tree_head()
        assert exc.value.reason is Reason.BAD_PROOF and "fork" in str(exc.value)
        with pytest.raises(LedgerRollbackError):
            led.append_many([b"more"])
    assert _rows(path) == before


def test_an_extended_log_is_accepted(tmp_path: Path, key: PrivateKey, store: KeyStore) -> None:
    """The consistency check passes for every honest extension (sizes around powers of two)."""
    with _pinned_ledger(tmp_path / "l.db", key, store) as led:
        for n in range(1, 12):
            led.append(ENTRIES[n])
            if n in (1, 2, 3, 4, 7, 8, 11):
                led.signed_tree_head()
        led.check_pinned_head()
        assert KeyStoreHeadPin(store).load().tree_size == 11  # type: ignore[union-attr]


def test_pin_from_another_key_is_refused(tmp_path: Path, key: PrivateKey, store: KeyStore) -> None:
    other = PrivateKey.generate(SeededRandom("ledger-pin-tests/other"))
    with Ledger(":memory:", signer=other) as led:
        led.pin_heads(KeyStoreHeadPin(store))
        led.append(b"x")
        led.signed_tree_head()
    with _pinned_ledger(tmp_path / "l.db", key, store) as led, pytest.raises(LedgerError, match="another key"):
        led.append(b"y")


def test_damaged_pin_record_is_a_ledger_error(store: KeyStore) -> None:
    store.put_record(PIN_RECORD, {"sth": b"not a head"})
    with pytest.raises(LedgerError, match="not a signed tree head"):
        KeyStoreHeadPin(store).load()


def test_a_pin_that_cannot_be_written_lags_safely(
    tmp_path: Path, key: PrivateKey, store: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing(KeyStoreHeadPin):
        def store(self, sth: SignedTreeHead) -> None:
            raise KeyStoreError("disk full")

    with Ledger(tmp_path / "l.db", signer=key) as led:
        led.pin_heads(Failing(store))
        led.append(b"x")
        with caplog.at_level(logging.WARNING):
            sth = led.signed_tree_head()  # signed and recorded; the pin stays where it was
        assert led.latest_tree_head() == sth and "not pinned" in caplog.text


def test_read_only_ledgers_cannot_pin(tmp_path: Path, key: PrivateKey, store: KeyStore) -> None:
    with Ledger(tmp_path / "l.db", signer=key) as led:
        led.append(b"x")
    with Ledger(tmp_path / "l.db", read_only=True) as led, pytest.raises(LedgerError, match="read-only"):
        led.pin_heads(KeyStoreHeadPin(store))


# --------------------------------------------------------------------------- the controller


def test_controller_refuses_to_start_on_a_rolled_back_ledger(tmp_path: Path) -> None:
    site, dep, _, _ = bound_site(tmp_path, seed=5)
    assert KeyStoreHeadPin(dep.controller_store).load().tree_size == 4  # type: ignore[union-attr]
    dep.close()
    truncate_ledger(site.ledger, keep=2)
    store_bytes = site.keystore.read_bytes()
    with pytest.raises(LedgerRollbackError) as exc:
        site.start()
    assert exc.value.reason is Reason.STALE
    assert site.keystore.read_bytes() == store_bytes and _rows(site.ledger) == (2, 2)


def test_controller_refuses_to_write_on_a_ledger_forked_under_it(tmp_path: Path) -> None:
    site, dep, controller, binding_id = bound_site(tmp_path, seed=6)
    forge_history(site.ledger, 1, [b"a", b"b", b"c"])
    with pytest.raises(LedgerRollbackError) as exc:
        controller.revoke(binding_id, "module replaced")
    assert exc.value.reason is Reason.BAD_PROOF
    assert controller.rejections[Reason.BAD_PROOF] == 1
    assert not controller.is_revoked(binding_id) and _rows(site.ledger) == (4, 1)
    dep.close()
