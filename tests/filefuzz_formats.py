"""Format-specific mutations for the file fuzzer: key stores, ledgers, python-can SQLite logs.

Key stores are encrypted, so byte edits only test the header parser and the authentication
check. :func:`keystore_edits` also writes *authentic* hostile stores: it knows the seed's key
file, decrypts the body, edits the CBOR inside (records of the wrong shape, keys of the wrong
length, names with control characters) and seals it again, so the code that trusts a store
once it authenticates is reached. Ledger and log databases get SQL statements from catalogs of
row edits (under the exact schema) and schema edits.
"""

from __future__ import annotations

import secrets
from typing import Any

import cbor2
from filefuzz_mutations import (
    HOSTILE_TEXT,
    INTERESTING_INTS,
    _tree_op,
    byte_edits,
    cbor_trees,
    random_bytes,
    sql_values,
    sqlite_edits,
)
from hypothesis import strategies as st

from modbatt.crypto import keystore_format as ks
from modbatt.crypto import labels
from modbatt.crypto.suite import AEAD_NONCE_BYTES, AEAD_TAG_BYTES, aead_decrypt, aead_encrypt

# --------------------------------------------------------------------------- key stores

_FIELDS = ("magic", "version", "flags", "kdf_id", "a", "b", "c", "salt", "kcv", "nonce", "body_len")
#: KDF parameters at and around the bounds the header parser accepts (argon2id: iterations,
#: memory KiB, lanes; scrypt: n, r, p).
_KDF_EXTREMES = (
    (2, 1000, 2 * 1024 * 1024, 64), (2, 1000, 700 * 1024, 1), (2, 1, 8, 1), (2, 4, 1024 * 1024, 4),
    (1, 1 << 20, 8, 16), (1, 1 << 14, 1024, 16), (1, 1 << 24, 1, 1), (1, 16, 1, 1),
)  # fmt: skip


def _header(data: bytes) -> dict[str, Any]:
    return dict(zip(_FIELDS, ks._HEADER.unpack_from(data), strict=True))


def _pack(fields: dict[str, Any]) -> bytes:
    return ks._HEADER.pack(*(fields[f] for f in _FIELDS))


def _set_field(data: bytes, field: str, value: int) -> bytes:
    fields = _header(data)
    width = {"version": 8, "flags": 8, "kdf_id": 8}.get(field, 32)
    fields[field] = value % (1 << width)
    return _pack(fields) + data[ks.HEADER_BYTES :]


def _set_kdf(data: bytes, params: tuple[int, int, int, int]) -> bytes:
    fields = _header(data)
    fields["kdf_id"], fields["a"], fields["b"], fields["c"] = params
    return _pack(fields) + data[ks.HEADER_BYTES :]


def seal(genuine: bytes, kek: bytes, body: bytes) -> bytes:
    """``body`` sealed under the seed's header and key: a store that authenticates."""
    fields = _header(genuine)
    fields["nonce"] = secrets.token_bytes(AEAD_NONCE_BYTES)
    fields["body_len"] = len(body) + AEAD_TAG_BYTES
    header = _pack(fields)
    return header + aead_encrypt(kek, fields["nonce"], body, labels.KEYSTORE_BLOB + header)


def open_body(genuine: bytes, kek: bytes) -> bytes:
    fields = _header(genuine)
    return aead_decrypt(
        kek, fields["nonce"], genuine[ks.HEADER_BYTES :], labels.KEYSTORE_BLOB + genuine[: ks.HEADER_BYTES]
    )


def kek_of(genuine: bytes, key_file: bytes) -> bytes:
    """The key-encryption key of a key-file store (what ``KeyStore.open`` derives)."""
    fields = _header(genuine)
    kek, _ = ks._derive(key_file, fields["kdf_id"], (fields["a"], fields["b"], fields["c"]), fields["salt"],
                        labels.KEYSTORE_KEK)  # fmt: skip
    return kek


_names = st.sampled_from(HOSTILE_TEXT[:14]) | st.text(min_size=1, max_size=20) | st.just("x" * 129)


def _body_edits(body: Any) -> st.SearchStrategy[Any]:
    """The decrypted body with one value replaced (anywhere), or a record or key added with a hostile name."""
    return st.one_of(
        _tree_op(body, cbor_trees, 600),
        st.tuples(_names, cbor_trees).map(lambda t: {**body, "records": {**body["records"], t[0]: t[1]}}),
        st.tuples(_names, st.binary(max_size=40)).map(lambda t: {**body, "keys": {**body["keys"], t[0]: t[1]}}),
    )


def keystore_edits(genuine: bytes, key_file: bytes) -> st.SearchStrategy[bytes]:
    """Header fields set to boundary values, byte edits, random bytes, and authentic hostile bodies."""
    kek = kek_of(genuine, key_file)
    body = cbor2.loads(open_body(genuine, kek))

    def resealed(value: Any, canonical: bool) -> bytes:
        try:
            raw = cbor2.dumps(value, canonical=canonical)
        except (ValueError, RecursionError, cbor2.CBOREncodeError):
            raw = b"\x81" * 10_000
        return seal(genuine, kek, raw)

    return st.one_of(
        random_bytes(),
        byte_edits([genuine]),
        st.tuples(st.sampled_from((*_FIELDS[1:7], "body_len")), st.sampled_from(INTERESTING_INTS)).map(
            lambda t: _set_field(genuine, *t)
        ),
        st.sampled_from(_KDF_EXTREMES).map(lambda p: _set_kdf(genuine, p)),
        st.tuples(_body_edits(body), st.booleans()).map(lambda t: resealed(*t)),
        st.binary(max_size=256).map(lambda raw: seal(genuine, kek, raw)),
    )


def passphrase_store_edits(genuine: bytes) -> st.SearchStrategy[bytes]:
    """A passphrase store: header fields and KDF parameters at the bounds, byte edits."""
    return st.one_of(
        byte_edits([genuine]),
        st.tuples(st.sampled_from((*_FIELDS[1:7], "body_len")), st.sampled_from(INTERESTING_INTS)).map(
            lambda t: _set_field(genuine, *t)
        ),
        st.sampled_from(_KDF_EXTREMES).map(lambda p: _set_kdf(genuine, p)),
    )


# --------------------------------------------------------------------------- ledgers

_index = st.integers(-2, 40) | st.sampled_from((2**31, 2**62, 2**63 - 1, -(2**63)))
_table_key = st.sampled_from(("format", "version", "public_key", "\x1b[2J", ""))

_ledger_row_statement = st.one_of(
    st.tuples(st.just("UPDATE entries SET entry=? WHERE idx=?"), st.tuples(sql_values, _index)),
    st.tuples(st.just("UPDATE entries SET leaf_hash=? WHERE idx=?"), st.tuples(sql_values, _index)),
    st.tuples(st.just("UPDATE entries SET idx=? WHERE idx=?"), st.tuples(_index, _index)),
    st.tuples(st.just("DELETE FROM entries WHERE idx=?"), st.tuples(_index)),
    st.tuples(st.just("INSERT INTO entries(idx, entry, leaf_hash) VALUES (?, ?, ?)"),
              st.tuples(_index, sql_values, sql_values)),
    st.tuples(st.just("INSERT INTO entries(idx, entry, leaf_hash) SELECT idx + ?, entry, leaf_hash FROM entries"),
              st.tuples(st.integers(1, 1000))),
    st.tuples(st.just("UPDATE nodes SET hash=? WHERE level=? AND idx=?"), st.tuples(sql_values, _index, _index)),
    st.tuples(st.just("UPDATE nodes SET level=?, idx=? WHERE level=? AND idx=?"),
              st.tuples(_index, _index, _index, _index)),
    st.tuples(st.just("DELETE FROM nodes WHERE level=? AND idx=?"), st.tuples(_index, _index)),
    st.tuples(st.just("INSERT INTO nodes(level, idx, hash) VALUES (?, ?, ?)"), st.tuples(_index, _index, sql_values)),
    st.tuples(st.sampled_from(tuple(f"UPDATE tree_heads SET {column}=? WHERE id=?"
                                    for column in ("tree_size", "timestamp", "root_hash", "signature", "id"))),
              st.tuples(sql_values, _index)),
    st.tuples(st.just("INSERT INTO tree_heads(tree_size, timestamp, root_hash, signature) "
                      "SELECT tree_size + ?, timestamp, root_hash, signature FROM tree_heads"),
              st.tuples(st.integers(-5, 1000))),
    st.tuples(st.just("DELETE FROM tree_heads WHERE id=?"), st.tuples(_index)),
    st.tuples(st.just("UPDATE meta SET value=? WHERE key=?"), st.tuples(sql_values, _table_key)),
    st.tuples(st.just("DELETE FROM meta WHERE key=?"), st.tuples(_table_key)),
    st.tuples(st.just("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)"), st.tuples(_table_key, sql_values)),
)  # fmt: skip
ledger_row_statements = st.lists(_ledger_row_statement, min_size=1, max_size=6)

_GENERATED = "zeroblob(900000000)"
_ledger_schema_statement = st.sampled_from(
    (
        "DROP TRIGGER entries_no_update",
        "CREATE VIEW v AS SELECT * FROM entries",
        "CREATE TRIGGER t AFTER INSERT ON meta BEGIN SELECT 1; END",
        "ALTER TABLE entries ADD COLUMN extra BLOB",
        f"ALTER TABLE entries ADD COLUMN g BLOB GENERATED ALWAYS AS ({_GENERATED}) VIRTUAL",
        "CREATE INDEX i ON entries(leaf_hash)",
        "DROP TABLE nodes",
        "ALTER TABLE entries RENAME TO e2",
        'CREATE TABLE "\x1b]0;owned\x07" (a)',
        "PRAGMA application_id=0",
        "PRAGMA user_version=2",
        "PRAGMA user_version=-1",
        "DROP TRIGGER entries_no_update; DROP TABLE entries; CREATE TABLE entries (idx INTEGER PRIMARY KEY, "
        f"entry BLOB GENERATED ALWAYS AS ({_GENERATED}), leaf_hash BLOB NOT NULL)",
        "CREATE VIEW entries_v AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
    )
).map(lambda sql: [(s, ()) for s in sql.split("; ")])
ledger_schema_statements = st.lists(_ledger_schema_statement, min_size=1, max_size=3).map(
    lambda lists: [s for group in lists for s in group]
)


def ledger_edits(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        random_bytes(), byte_edits(seeds), sqlite_edits(seeds, ledger_row_statements, ledger_schema_statements)
    )


# --------------------------------------------------------------------------- python-can SQLite logs

_row = st.integers(1, 60) | st.sampled_from((-1, 2**62))
_message_column = st.sampled_from(("ts", "arbitration_id", "extended", "remote", "error", "dlc", "data"))
_canlog_row_statement = st.one_of(
    st.tuples(_message_column, sql_values, _row).map(
        lambda t: (f"UPDATE messages SET {t[0]}=? WHERE rowid=?", (t[1], t[2]))
    ),
    st.tuples(st.just("DELETE FROM messages WHERE rowid=?"), st.tuples(_row)),
    st.tuples(st.just("INSERT INTO messages SELECT * FROM messages"), st.just(())),
    st.tuples(
        st.just("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)"),
        st.tuples(sql_values, sql_values, sql_values, sql_values, sql_values, sql_values, sql_values),
    ),
)
canlog_row_statements = st.lists(_canlog_row_statement, min_size=1, max_size=6)
_canlog_schema_statement = st.sampled_from(
    (
        f"ALTER TABLE messages ADD COLUMN g BLOB GENERATED ALWAYS AS ({_GENERATED}) VIRTUAL",
        "ALTER TABLE messages ADD COLUMN extra TEXT",
        "ALTER TABLE messages RENAME TO m2",
        "ALTER TABLE messages RENAME TO m2; CREATE VIEW messages AS WITH RECURSIVE c(x) AS "
        "(SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x, 1, 1, 0, 0, 8, zeroblob(8) FROM c",
        "ALTER TABLE messages RENAME TO m2; CREATE VIEW messages AS SELECT ts, arbitration_id, extended, remote, "
        f"error, dlc, {_GENERATED} FROM m2",
        "DROP TABLE messages",
        "CREATE TABLE messages2 (a); DROP TABLE messages; ALTER TABLE messages2 RENAME TO messages",
        "CREATE TRIGGER t AFTER INSERT ON messages BEGIN SELECT 1; END",
        "PRAGMA journal_mode=WAL",
        "PRAGMA user_version=7",
    )
).map(lambda sql: [(s, ()) for s in sql.split("; ")])
canlog_schema_statements = st.lists(_canlog_schema_statement, min_size=1, max_size=2).map(
    lambda lists: [s for group in lists for s in group]
)


def canlog_db_edits(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        random_bytes(), byte_edits(seeds), sqlite_edits(seeds, canlog_row_statements, canlog_schema_statements)
    )
