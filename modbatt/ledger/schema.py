"""The ledger file's SQLite schema, and opening a file that may be hostile.

A ledger handed to an auditor is untrusted input. SQLite trusts a database's own schema: a
"ledger" whose ``entries`` columns are generated columns (``GENERATED ALWAYS AS
(zeroblob(900000000))``), views or triggers runs that SQL the moment a row is read. So, before
any row is read (docs/ledger.md, "Opening untrusted files"):

* every connection runs with ``PRAGMA trusted_schema=OFF`` and a per-value size limit
  (``SQLITE_LIMIT_LENGTH``), so no value larger than a ledger row can be built or read;
* :func:`differences` compares ``sqlite_master`` exactly (type, name, table, SQL text) with the
  schema :func:`create` writes, and the file is refused on any difference;
* audits open the file read-only (:func:`connect` with ``read_only=True``): URI ``mode=ro``, and
  ``immutable=1`` when no ``-wal`` file exists, so SQLite neither writes the file nor creates
  ``-wal``/``-shm`` files beside it.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path
from typing import Final

__all__ = ["LOG_TABLES", "connect", "create", "differences", "expected"]

_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE entries (
    idx INTEGER PRIMARY KEY,
    entry BLOB NOT NULL,
    leaf_hash BLOB NOT NULL
);
CREATE TABLE nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE tree_heads (
    id INTEGER PRIMARY KEY,
    tree_size INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    root_hash BLOB NOT NULL,
    signature BLOB NOT NULL
);
"""
#: The append-only tables (triggers refuse UPDATE and DELETE on them).
LOG_TABLES: Final = ("entries", "nodes", "tree_heads")
_TRIGGERS: Final = "".join(
    f"CREATE TRIGGER {t}_no_{op.lower()} BEFORE {op} ON {t} "
    f"BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;\n"
    for t in LOG_TABLES
    for op in ("UPDATE", "DELETE")
)
#: More schema rows than this and the file is refused before the rows are fetched.
_MAX_SCHEMA_ROWS: Final = 64

SchemaRow = tuple[str, str, str, str | None]


def create(conn: sqlite3.Connection) -> None:
    """Create the tables and triggers, statement by statement, in the caller's transaction.

    (``executescript`` would COMMIT the caller's transaction.)
    """
    for statement in (_SCHEMA + _TRIGGERS).split(";\n"):
        if statement.strip():
            conn.execute(statement)


@functools.cache
def expected() -> tuple[SchemaRow, ...]:
    """``sqlite_master`` of a ledger as :func:`create` makes it: sorted (type, name, table, sql)."""
    conn = sqlite3.connect(":memory:")
    try:
        create(conn)
        return _rows(conn)
    finally:
        conn.close()


def _rows(conn: sqlite3.Connection) -> tuple[SchemaRow, ...]:
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return tuple(sorted((tuple(r) for r in rows), key=repr))  # type: ignore[misc]


def differences(conn: sqlite3.Connection) -> list[str]:
    """How the database's schema differs from a ledger's (empty when it is exactly the same).

    Reads only ``sqlite_master`` (its row count first), never a row of a ledger table. Names are
    shown with ``repr`` so that control characters in a hostile file reach no terminal.
    """
    want = expected()
    count = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
    if count > _MAX_SCHEMA_ROWS:
        return [f"{count} schema objects, a ledger has {len(want)}"]
    have = _rows(conn)
    if have == want:
        return []
    want_by_name = {(r[0], r[1]): r for r in want}
    have_by_name = {(r[0], r[1]): r for r in have}
    found = []
    for t, n in sorted(want_by_name.keys() | have_by_name.keys()):
        if (t, n) not in have_by_name:
            found.append(f"missing {t} {n!r}")
        elif (t, n) not in want_by_name:
            found.append(f"unexpected {t} {n!r}")
        elif have_by_name[(t, n)] != want_by_name[(t, n)]:
            found.append(f"{t} {n!r} is defined differently")
    return found or [f"{len(have)} schema objects where a ledger has {len(want)}"]


def connect(path: str, *, read_only: bool, max_value_bytes: int) -> sqlite3.Connection:
    """Open ``path`` (or ``":memory:"``) with the hardening above; read-only for audits."""
    if read_only:
        resolved = Path(path).resolve()
        # immutable=1 makes SQLite skip locking and the -shm file entirely; valid only when no
        # writer is active, which a missing -wal file shows (a live ledger always has one).
        live = os.path.exists(f"{resolved}-wal")
        uri = f"{resolved.as_uri()}?mode=ro" + ("" if live else "&immutable=1")
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10.0)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    try:
        # Bounds every string or blob SQLite builds or returns, a generated zeroblob included.
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
        conn.execute("PRAGMA trusted_schema=OFF")
        conn.execute("PRAGMA cell_size_check=ON")
        if read_only:
            conn.execute("PRAGMA query_only=ON")
    except BaseException:
        conn.close()
        raise
    return conn
