"""The key store: round trips, unlocking, damage, atomicity, backups, misuse and secrecy."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import stat
import tempfile
import threading
from pathlib import Path

import pytest
from helpers_files import fail_directory_fsync
from hypothesis import given, settings
from hypothesis import strategies as st

from modbatt.crypto import keystore_format as ks_mod
from modbatt.crypto.keystore import HEADER_BYTES, KdfParams, KeyStore
from modbatt.crypto.rng import SeededRandom
from modbatt.crypto.suite import PrivateKey
from modbatt.errors import KeyStoreError, ReproducibleModeError

PASS = "correct horse battery staple"
CHEAP = KdfParams.cheap()


@pytest.fixture
def key() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture
def store_path(tmp_path: Path, key: PrivateKey) -> Path:
    """A store on disk holding one key and one record."""
    path = tmp_path / "store.mbks"
    store = KeyStore.create(path, passphrase=PASS, kdf=CHEAP)
    with store.transaction():
        store.put_private_key("module-7", key)
        store.put_record("partner/pack-1", {"endpoint": "can://0x18", "semi_public_key": b"\x02" * 33})
    return path


def _dir_listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- round trips


def test_round_trip(store_path: Path, key: PrivateKey) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    assert store.names() == ["module-7", "partner/pack-1"]
    assert store.key_names() == ["module-7"] and store.record_names() == ["partner/pack-1"]
    loaded = store.private_key("module-7")
    assert loaded.public_key == key.public_key
    assert loaded.scalar_bytes() == key.scalar_bytes()
    assert not loaded.reproducible
    assert store.record("partner/pack-1") == {"endpoint": "can://0x18", "semi_public_key": b"\x02" * 33}
    assert "module-7" in store and len(store) == 2
    assert store.kdf == CHEAP


def test_records_are_copies(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "s", passphrase=PASS, kdf=CHEAP)
    value = {"list": [1, 2], "nested": {"a": b"x"}}
    store.put_record("r", value)
    value["list"].append(3)  # caller's later changes do not leak in
    got = store.record("r")
    got["nested"]["a"] = b"changed"  # nor do changes to a returned copy
    assert store.record("r") == {"list": [1, 2], "nested": {"a": b"x"}}


def test_update_and_delete_persist(store_path: Path) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    store.put_record("partner/pack-1", {"endpoint": "http://pack"})
    store.delete("module-7")
    again = KeyStore.open(store_path, passphrase=PASS)
    assert again.names() == ["partner/pack-1"]
    assert again.record("partner/pack-1") == {"endpoint": "http://pack"}
    with pytest.raises(KeyStoreError, match="no private key"):
        again.private_key("module-7")
    with pytest.raises(KeyStoreError, match="nothing named"):
        again.delete("module-7")


def test_names_are_one_namespace_and_keys_are_not_silently_replaced(store_path: Path) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    other = PrivateKey.generate()
    with pytest.raises(KeyStoreError, match="replace=True"):
        store.put_private_key("module-7", other)
    with pytest.raises(KeyStoreError, match="names a record"):
        store.put_private_key("partner/pack-1", other)
    with pytest.raises(KeyStoreError, match="names a private key"):
        store.put_record("module-7", {})
    with pytest.raises(KeyStoreError, match="is a record"):
        store.private_key("partner/pack-1")
    with pytest.raises(KeyStoreError, match="is a private key"):
        store.record("module-7")
    store.put_private_key("module-7", other, replace=True)
    assert KeyStore.open(store_path, passphrase=PASS).private_key("module-7").public_key == other.public_key


@pytest.mark.parametrize("bad", ["", "x" * 129, "tab\there", 7])
def test_bad_names_refused(bad: object) -> None:
    store = KeyStore.in_memory()
    with pytest.raises(KeyStoreError, match="name"):
        store.put_record(bad, {})  # type: ignore[arg-type]


def test_non_cbor_record_refused() -> None:
    store = KeyStore.in_memory()
    with pytest.raises(KeyStoreError, match="not CBOR-encodable"):
        store.put_record("r", {"f": object()})
    with pytest.raises(KeyStoreError, match="mapping"):
        store.put_record("r", [1, 2])  # type: ignore[arg-type]
    assert store.names() == []


def test_in_memory_store(key: PrivateKey, tmp_path: Path) -> None:
    store = KeyStore.in_memory()
    store.put_private_key("k", key)
    store.put_record("r", {"a": 1})
    assert store.path is None and store.kdf is None
    assert store.private_key("k").public_key == key.public_key
    # An in-memory store can still be backed up and restored to disk.
    store.export_backup(tmp_path / "mem.bak", passphrase="b", kdf=CHEAP)
    restored = KeyStore.restore_backup(
        tmp_path / "mem.bak", tmp_path / "disk", backup_passphrase="b", passphrase=PASS, kdf=CHEAP
    )
    assert restored.names() == ["k", "r"]


def test_create_refuses_existing_file(store_path: Path) -> None:
    before = store_path.read_bytes()
    with pytest.raises(KeyStoreError, match="already exists"):
        KeyStore.create(store_path, passphrase="other", kdf=CHEAP)
    assert store_path.read_bytes() == before


def test_kek_derived_once(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = ks_mod._derive
    monkeypatch.setattr(ks_mod, "_derive", lambda *a: calls.append(1) or real(*a))
    store = KeyStore.open(store_path, passphrase=PASS)
    for i in range(5):
        store.put_record(f"r{i}", {"i": i})
    assert len(calls) == 1


def test_closed_store_and_pickle(store_path: Path) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    with pytest.raises(TypeError):
        pickle.dumps(store)
    with store:
        pass
    with pytest.raises(KeyStoreError, match="closed"):
        store.names()
    assert "closed" in repr(store)


def test_direct_construction_refused() -> None:
    with pytest.raises(TypeError):
        KeyStore(path=None, unlocked=None, state=ks_mod._State(), reproducible=False)


# --------------------------------------------------------------------------- unlocking


def test_wrong_passphrase(store_path: Path) -> None:
    before = store_path.read_bytes()
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        KeyStore.open(store_path, passphrase=PASS + "!")
    assert store_path.read_bytes() == before


def test_unlock_argument_checks(store_path: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="exactly one"):
        KeyStore.open(store_path)
    with pytest.raises(KeyStoreError, match="exactly one"):
        KeyStore.open(store_path, passphrase=PASS, key_file=tmp_path / "k")
    with pytest.raises(KeyStoreError, match="empty"):
        KeyStore.open(store_path, passphrase="")
    with pytest.raises(KeyStoreError, match="no key store"):
        KeyStore.open(tmp_path / "missing", passphrase=PASS)


def test_passphrase_is_unicode_normalised(tmp_path: Path) -> None:
    KeyStore.create(tmp_path / "s", passphrase="caf\u00e9", kdf=CHEAP)  # precomposed é
    KeyStore.open(tmp_path / "s", passphrase="cafe\u0301")  # e + combining accent
    KeyStore.open(tmp_path / "s", passphrase="caf\u00e9".encode())


def test_key_file_mode(tmp_path: Path, key: PrivateKey) -> None:
    key_file = KeyStore.generate_key_file(tmp_path / "store.key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and key_file.stat().st_size == 32
    with pytest.raises(KeyStoreError, match="already exists"):
        KeyStore.generate_key_file(key_file)
    store = KeyStore.create(tmp_path / "s", key_file=key_file)
    store.put_private_key("k", key)
    assert store.kdf is None and "key-file" in repr(store)
    assert KeyStore.open(tmp_path / "s", key_file=key_file).private_key("k").public_key == key.public_key

    other = KeyStore.generate_key_file(tmp_path / "other.key")
    with pytest.raises(KeyStoreError, match="wrong key file"):
        KeyStore.open(tmp_path / "s", key_file=other)
    with pytest.raises(KeyStoreError, match="key file, not a passphrase"):
        KeyStore.open(tmp_path / "s", passphrase=PASS)
    with pytest.raises(KeyStoreError, match="kdf= applies to passphrases"):
        KeyStore.create(tmp_path / "s2", key_file=key_file, kdf=CHEAP)


def test_passphrase_store_refuses_key_file(store_path: Path, tmp_path: Path) -> None:
    key_file = KeyStore.generate_key_file(tmp_path / "k")
    with pytest.raises(KeyStoreError, match="passphrase, not a key file"):
        KeyStore.open(store_path, key_file=key_file)


def test_short_or_missing_key_file(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(os.urandom(31))
    with pytest.raises(KeyStoreError, match="at least 32"):
        KeyStore.create(tmp_path / "s", key_file=short)
    with pytest.raises(KeyStoreError, match="cannot read key file"):
        KeyStore.create(tmp_path / "s", key_file=tmp_path / "absent.key")
    assert not (tmp_path / "s").exists()


def test_scrypt_profile(tmp_path: Path) -> None:
    kdf = KdfParams.scrypt(n=16, r=1, p=1)
    assert kdf.is_weak
    KeyStore.create(tmp_path / "s", passphrase=PASS, kdf=kdf).put_record("r", {"a": 1})
    store = KeyStore.open(tmp_path / "s", passphrase=PASS)
    assert store.kdf == kdf and store.record("r") == {"a": 1}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithm": "pbkdf2"},
        {"algorithm": "scrypt", "n": 1000, "r": 8, "p": 1},
        {"algorithm": "scrypt", "n": 1 << 22, "r": 8, "p": 1},
        {"algorithm": "argon2id", "iterations": 0, "memory_kib": 64, "lanes": 1},
        {"algorithm": "argon2id", "iterations": 1, "memory_kib": 8, "lanes": 2},
        {"algorithm": "argon2id", "iterations": 1, "memory_kib": 1 << 22, "lanes": 1},
    ],
)
def test_kdf_parameter_bounds(kwargs: dict[str, object]) -> None:
    with pytest.raises(KeyStoreError, match="KDF"):
        KdfParams(**kwargs)  # type: ignore[arg-type]


def test_default_kdf_is_not_weak() -> None:
    assert not KdfParams.default().is_weak
    assert not KdfParams.argon2id().is_weak and not KdfParams.scrypt().is_weak


# --------------------------------------------------------------------------- damage


def test_every_corrupted_byte_is_rejected(store_path: Path) -> None:
    original = store_path.read_bytes()
    assert len(original) > HEADER_BYTES
    damaged = store_path.with_name("damaged")
    damaged.touch(mode=0o600)  # private like a real store, so open() has nothing to warn about
    for i in range(len(original)):
        # Three masks reach the low bit, the high bit and whole bytes of every field
        # (KDF-parameter flips stay within the open()-time bounds or are refused by them).
        for mask in (0x01, 0x80, 0xFF):
            data = bytearray(original)
            data[i] ^= mask
            damaged.write_bytes(bytes(data))
            with pytest.raises(KeyStoreError):
                KeyStore.open(damaged, passphrase=PASS)
            assert damaged.read_bytes() == bytes(data), f"open() modified the file (byte {i})"
    assert store_path.read_bytes() == original
    KeyStore.open(store_path, passphrase=PASS)  # the intact file still opens


def test_every_truncation_is_rejected(store_path: Path) -> None:
    original = store_path.read_bytes()
    cut = store_path.with_name("cut")
    cut.touch(mode=0o600)
    for n in range(len(original)):
        cut.write_bytes(original[:n])
        with pytest.raises(KeyStoreError):
            KeyStore.open(cut, passphrase=PASS)
    cut.write_bytes(original + b"\x00")
    with pytest.raises(KeyStoreError, match="unexpected bytes"):
        KeyStore.open(cut, passphrase=PASS)


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"XXXXXXXX", "not a modbatt key store"),
        (0, b"MBKSBKUP", "is a key-store backup"),
        (8, b"\x02", "format version 2"),
        (9, b"\x80", "unknown header flags"),
        (10, b"\x09", "unknown KDF id"),
    ],
)
def test_header_damage_messages(store_path: Path, offset: int, value: bytes, message: str) -> None:
    data = bytearray(store_path.read_bytes())
    data[offset : offset + len(value)] = value
    store_path.write_bytes(bytes(data))
    with pytest.raises(KeyStoreError, match=message):
        KeyStore.open(store_path, passphrase=PASS)


def test_body_damage_is_reported_as_corruption(store_path: Path) -> None:
    data = bytearray(store_path.read_bytes())
    data[-1] ^= 1
    store_path.write_bytes(bytes(data))
    with pytest.raises(KeyStoreError, match="corrupted or has been tampered"):
        KeyStore.open(store_path, passphrase=PASS)


def test_file_mode_is_0600_even_with_permissive_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_chmod(*_a: object, **_k: object) -> None:
        raise AssertionError("the key store must be created 0600, not chmod-ed afterwards")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    old = os.umask(0)
    try:
        store = KeyStore.create(tmp_path / "s", passphrase=PASS, kdf=CHEAP)
        store.put_record("r", {})
        store.export_backup(tmp_path / "b", passphrase="b", kdf=CHEAP)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600


# --------------------------------------------------------------------------- atomicity


def _eio(*_a: object, **_k: object) -> None:
    raise OSError(errno.EIO, "injected I/O error")


@pytest.mark.parametrize("victim", ["replace", "fsync", "write"])
def test_failed_write_changes_nothing(
    store_path: Path, key: PrivateKey, monkeypatch: pytest.MonkeyPatch, victim: str
) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    before = store_path.read_bytes()
    listing = _dir_listing(store_path.parent)
    with monkeypatch.context() as m:
        m.setattr(os, victim, _eio)
        with pytest.raises(KeyStoreError, match="previous file is unchanged"):
            store.put_record("new", {"a": 1})
        with pytest.raises(KeyStoreError):
            store.delete("module-7")
        with pytest.raises(KeyStoreError), store.transaction():
            store.put_record("t1", {})
            store.put_record("t2", {})
    assert store_path.read_bytes() == before
    assert _dir_listing(store_path.parent) == listing, "temporary file left behind"
    assert store.names() == ["module-7", "partner/pack-1"]
    assert store.private_key("module-7").public_key == key.public_key
    # The store keeps working once the disk recovers.
    store.put_record("new", {"a": 1})
    assert KeyStore.open(store_path, passphrase=PASS).names() == ["module-7", "new", "partner/pack-1"]


def test_directory_fsync_failure_only_warns(
    store_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    fail_directory_fsync(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="modbatt.crypto.keystore"):
        store.put_record("new", {})  # past the commit point: the change stands
    assert "could not be synced" in caplog.text
    assert "new" in KeyStore.open(store_path, passphrase=PASS)


def test_transaction_is_one_write(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    replaces = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda *a: replaces.append(a) or real(*a))
    with store.transaction() as tx:
        assert tx is store
        for i in range(4):
            store.put_record(f"r{i}", {"i": i})
        store.delete("r0")
        assert "r3" in store  # reads see the pending changes
    assert len(replaces) == 1
    assert KeyStore.open(store_path, passphrase=PASS).record_names() == ["partner/pack-1", "r1", "r2", "r3"]
    with store.transaction():
        pass  # nothing changed: nothing written
    assert len(replaces) == 1


def test_transaction_rollback(store_path: Path) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    before = store_path.read_bytes()
    with pytest.raises(RuntimeError), store.transaction():
        store.put_record("doomed", {"a": 1})
        store.delete("module-7")
        raise RuntimeError("caller changed its mind")
    assert store_path.read_bytes() == before
    assert store.names() == ["module-7", "partner/pack-1"]


def test_nested_transaction_is_a_savepoint(store_path: Path) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    with store.transaction():
        store.put_record("outer", {})
        with pytest.raises(ValueError), store.transaction():
            store.put_record("inner", {})
            raise ValueError
        assert "inner" not in store
    assert KeyStore.open(store_path, passphrase=PASS).record_names() == ["outer", "partner/pack-1"]


def test_refused_change_inside_transaction_leaves_no_trace(store_path: Path) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    with store.transaction():
        store.put_record("a", {})
        with pytest.raises(KeyStoreError):
            store.put_private_key("module-7", PrivateKey.generate())
    assert KeyStore.open(store_path, passphrase=PASS).names() == ["a", "module-7", "partner/pack-1"]


def test_lost_update_guard(store_path: Path) -> None:
    first = KeyStore.open(store_path, passphrase=PASS)
    second = KeyStore.open(store_path, passphrase=PASS)
    first.put_record("from-first", {})
    with pytest.raises(KeyStoreError, match="changed by someone else"):
        second.put_record("from-second", {})
    assert "from-second" not in second
    assert KeyStore.open(store_path, passphrase=PASS).record_names() == ["from-first", "partner/pack-1"]


# --------------------------------------------------------------------------- backups


def test_backup_and_restore(store_path: Path, tmp_path: Path, key: PrivateKey) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    backup = store.export_backup(tmp_path / "store.bak", passphrase="backup pass", kdf=CHEAP)
    assert backup.read_bytes()[:8] == b"MBKSBKUP"
    restored = KeyStore.restore_backup(
        backup, tmp_path / "restored", backup_passphrase="backup pass", passphrase="new pass", kdf=CHEAP
    )
    assert restored.names() == store.names()
    assert restored.private_key("module-7").public_key == key.public_key
    assert KeyStore.open(tmp_path / "restored", passphrase="new pass").record("partner/pack-1")[
        "endpoint"
    ] == ("can://0x18")


def test_backup_misuse(store_path: Path, tmp_path: Path) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    backup = store.export_backup(tmp_path / "b", passphrase="backup pass", kdf=CHEAP)
    before = backup.read_bytes()
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        KeyStore.restore_backup(backup, tmp_path / "r", backup_passphrase="nope", passphrase=PASS, kdf=CHEAP)
    assert not (tmp_path / "r").exists() and backup.read_bytes() == before
    # The store's own passphrase does not open the backup (own salt, own label).
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        KeyStore.restore_backup(backup, tmp_path / "r", backup_passphrase=PASS, passphrase=PASS, kdf=CHEAP)
    with pytest.raises(KeyStoreError, match="is a key-store backup"):
        KeyStore.open(backup, passphrase="backup pass")
    with pytest.raises(KeyStoreError, match="not a backup"):
        KeyStore.restore_backup(store_path, tmp_path / "r", backup_passphrase=PASS, passphrase=PASS)
    with pytest.raises(KeyStoreError, match="already exists"):
        store.export_backup(backup, passphrase="x", kdf=CHEAP)
    with pytest.raises(KeyStoreError, match="cannot overwrite the key store"):
        store.export_backup(store_path, passphrase="x", kdf=CHEAP, overwrite=True)
    with pytest.raises(KeyStoreError, match="already exists"):
        KeyStore.restore_backup(backup, store_path, backup_passphrase="backup pass", passphrase=PASS)
    with pytest.raises(KeyStoreError, match="transaction"), store.transaction():
        store.export_backup(tmp_path / "b2", passphrase="x", kdf=CHEAP)
    store.export_backup(backup, passphrase="again", kdf=CHEAP, overwrite=True)


def test_backup_relabelled_as_store_does_not_open(store_path: Path, tmp_path: Path) -> None:
    """Swapping the magic is not enough: the KEK label differs, so the KCV fails."""
    backup = KeyStore.open(store_path, passphrase=PASS).export_backup(
        tmp_path / "b", passphrase=PASS, kdf=CHEAP
    )
    fake = tmp_path / "fake"
    fake.write_bytes(b"MBKSTORE" + backup.read_bytes()[8:])
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        KeyStore.open(fake, passphrase=PASS)


# --------------------------------------------------------------------------- reproducible mode


def test_reproducible_key_refused_by_production_store(store_path: Path) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    seeded = PrivateKey.generate(SeededRandom(1))
    assert seeded.reproducible
    before = store_path.read_bytes()
    with pytest.raises(ReproducibleModeError, match="production key store"):
        store.put_private_key("seeded", seeded)
    with pytest.raises(ReproducibleModeError):
        KeyStore.in_memory().put_private_key("seeded", seeded)
    assert store_path.read_bytes() == before and "seeded" not in store


def test_reproducible_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore.create(tmp_path / "r", passphrase=PASS, kdf=CHEAP, reproducible=True)
    seeded = PrivateKey.generate(SeededRandom(1))
    store.put_private_key("seeded", seeded)
    store.put_private_key("real", PrivateKey.generate())
    reopened = KeyStore.open(tmp_path / "r", passphrase=PASS)
    assert reopened.reproducible
    # Everything from a reproducible store is marked, so it cannot leak into production.
    assert reopened.private_key("seeded").reproducible and reopened.private_key("real").reproducible
    with pytest.raises(ReproducibleModeError):
        KeyStore.in_memory().put_private_key("x", reopened.private_key("real"))
    reopened.export_backup(tmp_path / "r.bak", passphrase="b", kdf=CHEAP)

    monkeypatch.delenv("MODBATT_REPRODUCIBLE")
    with pytest.raises(ReproducibleModeError):
        KeyStore.open(tmp_path / "r", passphrase=PASS)
    with pytest.raises(ReproducibleModeError):
        KeyStore.restore_backup(tmp_path / "r.bak", tmp_path / "r2", backup_passphrase="b", passphrase=PASS)
    assert not (tmp_path / "r2").exists()


def test_test_only_settings_need_the_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODBATT_REPRODUCIBLE")
    with pytest.raises(ReproducibleModeError):
        KeyStore.create(tmp_path / "a", passphrase=PASS, kdf=CHEAP, reproducible=True)
    with pytest.raises(ReproducibleModeError):
        KeyStore.in_memory(reproducible=True)
    with pytest.raises(ReproducibleModeError, match="production minimum"):
        KeyStore.create(tmp_path / "b", passphrase=PASS, kdf=CHEAP)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- secrecy


def test_secrets_never_leak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    passphrase = "s3cret-Passphrase-do-not-print"
    backup_pass = "b4ckup-Passphrase-do-not-print"
    key = PrivateKey.generate()
    scalar_hex = key.scalar_bytes().hex()
    record_secret = b"\x5a" * 32
    texts: list[str] = []

    def expect_error(fn: object, *args: object, **kwargs: object) -> None:
        with pytest.raises((KeyStoreError, ReproducibleModeError)) as info:
            fn(*args, **kwargs)  # type: ignore[operator]
        texts.extend([str(info.value), repr(info.value)])
        cause = info.value.__cause__ or info.value.__context__
        if cause is not None and not info.value.__suppress_context__:
            texts.append(str(cause))

    with caplog.at_level(logging.DEBUG):
        path = tmp_path / "s"
        store = KeyStore.create(path, passphrase=passphrase, kdf=CHEAP)
        store.put_private_key("k", key)
        store.put_record("partner", {"semi_public": record_secret})
        store.export_backup(tmp_path / "b", passphrase=backup_pass, kdf=CHEAP)
        texts += [repr(store), str(store)]
        expect_error(KeyStore.open, path, passphrase=passphrase + "x")
        expect_error(KeyStore.create, path, passphrase=passphrase, kdf=CHEAP)
        expect_error(store.put_private_key, "k", key)
        expect_error(store.put_private_key, "seeded", PrivateKey.generate(SeededRandom(9)))
        expect_error(store.put_record, "k", {"semi_public": record_secret})
        expect_error(
            KeyStore.restore_backup, tmp_path / "b", tmp_path / "r", backup_passphrase="x", passphrase="y"
        )
        data = bytearray(path.read_bytes())
        data[-3] ^= 1
        (tmp_path / "bad").write_bytes(bytes(data))
        expect_error(KeyStore.open, tmp_path / "bad", passphrase=passphrase)
        reopened = KeyStore.open(path, passphrase=passphrase)
        texts += [repr(reopened), repr(reopened.private_key("k")), repr(reopened._unlocked)]

    haystack = "\n".join([*texts, caplog.text])
    for secret in (passphrase, backup_pass, scalar_hex, record_secret.hex(), repr(record_secret)):
        assert secret not in haystack
    assert "KeyStore(" in haystack  # the check above did look at something
    # Nor are they in the files in the clear.
    for file in (path, tmp_path / "b"):
        blob = file.read_bytes()
        assert (
            key.scalar_bytes() not in blob and passphrase.encode() not in blob and record_secret not in blob
        )


def test_symlinked_store_updates_its_target(store_path: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.mbks"
    link.symlink_to(store_path)
    store = KeyStore.open(link, passphrase=PASS)
    store.put_record("via-link", {})
    assert link.is_symlink()
    assert "via-link" in KeyStore.open(store_path, passphrase=PASS)


def test_create_in_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="cannot create key store"):
        KeyStore.create(tmp_path / "nope" / "s", passphrase=PASS, kdf=CHEAP)


_cbor_leaf = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.booleans(),
)
_cbor_value = st.recursive(
    _cbor_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=12, deadline=None)
@given(
    records=st.dictionaries(
        st.text(min_size=1, max_size=10).filter(str.isprintable),
        st.dictionaries(st.text(max_size=8), _cbor_value, max_size=4),
        max_size=4,
    )
)
def test_records_round_trip_property(records: dict[str, dict[str, object]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s"
        store = KeyStore.create(path, passphrase=PASS, kdf=CHEAP)
        with store.transaction():
            for name, value in records.items():
                store.put_record(name, value)
        again = KeyStore.open(path, passphrase=PASS)
        assert {name: again.record(name) for name in again.names()} == records


# --------------------------------------------------------------------------- sharing one file


def test_refresh_rereads_what_another_holder_wrote(store_path: Path) -> None:
    a = KeyStore.open(store_path, passphrase=PASS)
    b = KeyStore.open(store_path, passphrase=PASS)
    a.put_record("claim", {"by": "a"})
    with pytest.raises(KeyStoreError, match="changed by someone else"):  # stale: refused, not overwritten
        b.put_record("other", {"by": "b"})
    assert "claim" not in b
    assert b.refresh() is True and b.record("claim") == {"by": "a"}
    assert b.refresh() is False  # nothing new: no read
    b.put_record("other", {"by": "b"})
    with a.exclusive():  # the critical section re-reads first
        assert a.record("other") == {"by": "b"}


def test_refresh_refuses_a_store_recreated_under_another_salt(store_path: Path, tmp_path: Path) -> None:
    a = KeyStore.open(store_path, passphrase=PASS)
    other = KeyStore.create(tmp_path / "other", passphrase=PASS, kdf=CHEAP)
    other.put_record("x", {"v": 1})
    os.replace(tmp_path / "other", store_path)
    with pytest.raises(KeyStoreError, match="re-created"):
        a.refresh()


def test_exclusive_nests_and_serialises_threads(store_path: Path) -> None:
    store = KeyStore.open(store_path, passphrase=PASS)
    order: list[str] = []

    def other() -> None:
        with store.exclusive():
            order.append("other")

    with store.exclusive(), store.exclusive():
        t = threading.Thread(target=other)
        t.start()
        t.join(0.2)
        order.append("holder")  # the other thread cannot enter while this block holds the store
    t.join(5)
    assert order == ["holder", "other"]
    lock_file = store_path.parent / f".{store_path.name}.lock"
    assert lock_file.exists() and stat.S_IMODE(lock_file.stat().st_mode) == 0o600
    memory = KeyStore.in_memory()
    with memory.exclusive():
        memory.put_record("r", {"a": 1})
    assert memory.refresh() is False
