"""Hypothesis strategies that turn real files into hostile ones (tests/test_fuzz_files.py).

Every strategy starts from a genuine file the package wrote and mutates it with awareness of its
structure, or replaces it with random bytes:

* :func:`byte_edits`: bit flips, byte stores, inserted, deleted and repeated chunks, truncation,
  and integers stored at any offset in both byte orders (length and count fields);
* :func:`text_edits`: whole lines deleted, repeated or swapped, a number replaced by an absurd
  one (``inf``, ``nan``, 5 000 digits, 2**64 …), hostile text (terminal escapes, NUL, bidi
  overrides, a 100 KiB token) put into a line;
* :func:`sqlite_edits`: pages flipped, zeroed, copied, swapped or cut off, header fields set, and
  SQL run on a copy: values of the wrong type or size, rows added or removed, the schema
  changed (generated zeroblob columns, views, triggers) or rebuilt exactly around hostile rows;
* :func:`json_edits` and :func:`cbor_edits`: a value anywhere in the tree replaced, removed or
  nested deeply, then serialised again (so the file still parses and the checks behind the
  parser are reached).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import cbor2
from hypothesis import strategies as st

#: Integers that sit on the boundaries of length and count fields.
INTERESTING_INTS = (
    0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
    0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1,
)  # fmt: skip
#: Numbers as text that parsers and range checks get wrong.
INTERESTING_NUMBERS = (
    "0", "-0", "-1", "1e308", "-1e308", "1e309", "inf", "-inf", "Infinity", "nan", "NaN", "1e-320",
    "9" * 5000, "18446744073709551616", "-9223372036854775809", "4294967296", "2147483648",
    "0x7fffffff", "0xffffffffffffffff", "1.5", "", "00000000000000000001", "1_000", "٣",
)  # fmt: skip
#: Text that must never reach a terminal unescaped, or that strains a parser.
HOSTILE_TEXT = (
    "\x1b]0;owned\x07", "\x1b[2J\x1b[H", "\x1b[32mledger OK\x1b[0m", "\r", "\n", "\x00", "\t", "\x7f",
    "\u202e", "\u2028", "\x85", "\x9b", "é°C", "\ufeff", "'", '"', "\\", "%s%n", "{0}", "${HOME}",
    "*a", "&a", "!!python/object/apply:os.system ['true']", "[" * 2000, "{" * 2000, "A" * 100_000,
)  # fmt: skip

_position = st.one_of(st.integers(0, 128), st.integers(0, 1 << 24))


def _apply_bytes(data: bytes, ops: Sequence[tuple[Any, ...]]) -> bytes:
    out = bytearray(data)
    for op in ops:
        kind, pos = op[0], op[1] % (len(out) + 1)
        if kind == "flip" and out:
            pos %= len(out)
            out[pos] ^= 1 << op[2]
        elif kind == "set" and out:
            out[pos % len(out)] = op[2]
        elif kind == "insert":
            out[pos:pos] = op[2]
        elif kind == "delete":
            del out[pos : pos + op[2]]
        elif kind == "truncate":
            del out[pos:]
        elif kind == "repeat":
            chunk = bytes(out[pos : pos + op[2]])
            out[pos:pos] = chunk * op[3]
        elif kind == "int":
            _, _, width, value, order = op
            raw = (value % (1 << (8 * width))).to_bytes(width, order)
            out[pos : pos + width] = raw
    return bytes(out)


_byte_op = st.one_of(
    st.tuples(st.just("flip"), _position, st.integers(0, 7)),
    st.tuples(st.just("set"), _position, st.integers(0, 255)),
    st.tuples(st.just("insert"), _position, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), _position, st.integers(1, 512)),
    st.tuples(st.just("truncate"), _position),
    st.tuples(st.just("repeat"), _position, st.integers(1, 256), st.integers(1, 200)),
    st.tuples(
        st.just("int"), _position, st.sampled_from((1, 2, 4, 8)), st.sampled_from(INTERESTING_INTS),
        st.sampled_from(("little", "big")),
    ),
)  # fmt: skip


def byte_edits(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """One of ``seeds`` with 1-8 byte-level edits."""
    return st.tuples(st.sampled_from(list(seeds)), st.lists(_byte_op, min_size=1, max_size=8)).map(
        lambda t: _apply_bytes(*t)
    )


def random_bytes(max_size: int = 4096) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


def _number_spans(line: str) -> list[tuple[int, int]]:
    spans, i = [], 0
    while i < len(line):
        if line[i].isdigit() or (line[i] in "+-." and i + 1 < len(line) and line[i + 1].isdigit()):
            j = i + 1
            while j < len(line) and (line[j].isalnum() or line[j] in "._"):
                j += 1
            spans.append((i, j))
            i = j
        else:
            i += 1
    return spans


def _apply_text(text: str, ops: Sequence[tuple[Any, ...]]) -> str:
    lines = text.splitlines(keepends=True) or [""]
    for op in ops:
        kind, i = op[0], op[1] % len(lines)
        if kind == "delete" and len(lines) > 1:
            del lines[i]
        elif kind == "repeat":
            lines[i:i] = [lines[i]] * op[2]
        elif kind == "swap":
            j = op[2] % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "number":
            spans = _number_spans(lines[i])
            if spans:
                a, b = spans[op[2] % len(spans)]
                lines[i] = lines[i][:a] + op[3] + lines[i][b:]
        elif kind == "insert":
            pos = op[2] % (len(lines[i]) + 1)
            lines[i] = lines[i][:pos] + op[3] + lines[i][pos:]
        elif kind == "replace":
            lines[i] = op[2] + "\n"
        elif kind == "cut":
            del lines[i + 1 :]
            lines[i] = lines[i][: op[2] % (len(lines[i]) + 1)]
    return "".join(lines)


_line = st.integers(0, 1 << 16)
_text_op = st.one_of(
    st.tuples(st.just("delete"), _line),
    st.tuples(st.just("repeat"), _line, st.integers(1, 500)),
    st.tuples(st.just("swap"), _line, _line),
    st.tuples(st.just("number"), _line, st.integers(0, 64), st.sampled_from(INTERESTING_NUMBERS)),
    st.tuples(st.just("insert"), _line, st.integers(0, 1 << 12), st.sampled_from(HOSTILE_TEXT) | st.text(max_size=20)),
    st.tuples(st.just("replace"), _line, st.text(max_size=80)),
    st.tuples(st.just("cut"), _line, st.integers(0, 200)),
)


def text_edits(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """A text seed with 1-6 line-level edits (numbers, hostile text, lines), encoded as UTF-8."""
    texts = [s.decode("utf-8") for s in seeds]
    return st.tuples(st.sampled_from(texts), st.lists(_text_op, min_size=1, max_size=6)).map(
        lambda t: _apply_text(*t).encode("utf-8", errors="surrogateescape")
    )


def file_bytes(seeds: Sequence[bytes], *, text: bool = False, extra: Sequence[st.SearchStrategy[bytes]] = ()):
    """Random bytes, byte edits of a seed, text edits (for text formats) and any ``extra`` strategies."""
    options = [random_bytes(), byte_edits(seeds), *extra]
    if text:
        both = st.tuples(text_edits(seeds), st.lists(_byte_op, max_size=3)).map(lambda t: _apply_bytes(*t))
        options += [text_edits(seeds), text_edits(seeds), both]
    return st.one_of(options)


# --------------------------------------------------------------------------- SQLite


def _page_size(data: bytes) -> int:
    raw = int.from_bytes(data[16:18], "big") if len(data) >= 18 else 4096
    return 65536 if raw == 1 else max(raw, 512)


def _apply_pages(data: bytes, ops: Sequence[tuple[Any, ...]]) -> bytes:
    size = _page_size(data)
    out = bytearray(data)
    for op in ops:
        pages = max(len(out) // size, 1)
        kind = op[0]
        if kind == "flip":
            page, offset, bit = op[1] % pages, op[2] % size, op[3]
            at = page * size + offset
            if at < len(out):
                out[at] ^= 1 << bit
        elif kind == "zero":
            page = op[1] % pages
            out[page * size : (page + 1) * size] = bytes(len(out[page * size : (page + 1) * size]))
        elif kind == "copy":
            src, dst = op[1] % pages, op[2] % pages
            out[dst * size : (dst + 1) * size] = out[src * size : (src + 1) * size]
        elif kind == "cut":
            del out[(op[1] % pages) * size :]
        elif kind == "btree":  # a b-tree page header byte: page type, freeblock, cell count, content start
            page = op[1] % pages
            base = page * size + (100 if page == 0 else 0)
            at = base + op[2] % 12
            if at < len(out):
                out[at] = op[3]
        elif kind == "header":  # page size, versions, counts, freelist, schema cookie, encoding …
            _, offset, width, value = op
            out[offset : offset + width] = (value % (1 << (8 * width))).to_bytes(width, "big")
    return bytes(out)


_page = st.integers(0, 1 << 10)
# (offset, width) of the database header's fields (page size, versions, counts, freelist, cookies …).
_HEADER_FIELDS = ((16, 2), (18, 1), (19, 1), (20, 1), (21, 1), (28, 4), (32, 4), (36, 4), (40, 4), (44, 4), (48, 4),
                  (52, 4), (56, 4), (60, 4), (64, 4), (68, 4), (92, 4), (96, 4))  # fmt: skip
_header_field = st.sampled_from(_HEADER_FIELDS)
_page_op = st.one_of(
    st.tuples(st.just("flip"), _page, st.integers(0, 1 << 16), st.integers(0, 7)),
    st.tuples(st.just("zero"), _page),
    st.tuples(st.just("copy"), _page, _page),
    st.tuples(st.just("cut"), _page),
    st.tuples(st.just("btree"), _page, st.integers(0, 11), st.sampled_from((0, 1, 2, 5, 10, 13, 0x7F, 0x80, 0xFF))),
    st.builds(lambda f, v: ("header", f[0], f[1], v), _header_field, st.sampled_from(INTERESTING_INTS)),
)


def page_edits(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """An SQLite seed with 1-5 page-level edits."""
    return st.tuples(st.sampled_from(list(seeds)), st.lists(_page_op, min_size=1, max_size=5)).map(
        lambda t: _apply_pages(*t)
    )


#: Values of every SQLite storage class, sized to strain a reader.
sql_values = st.one_of(
    st.none(),
    st.sampled_from((*INTERESTING_INTS, -1, -(2**63))),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=40) | st.sampled_from(HOSTILE_TEXT[:12]),
    st.binary(max_size=64),
    st.integers(0, 200_000).map(lambda n: b"\xa5" * n),
)


def run_sql(data: bytes, script: Callable[[sqlite3.Connection], None]) -> bytes:
    """``data`` after ``script`` ran on a copy of it (rollback journal, so the result is one file)."""
    fd, path = tempfile.mkstemp(suffix=".sqlite")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            script(conn)
        finally:
            conn.close()
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        for name in (path, f"{path}-journal", f"{path}-wal", f"{path}-shm"):
            if os.path.exists(name):
                os.unlink(name)


def sql_statements(conn: sqlite3.Connection, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
    """Run each statement; one SQLite refuses (a constraint, a type) is a mutation that did not apply."""
    for sql, params in statements:
        with contextlib.suppress(sqlite3.Error, OverflowError):  # OverflowError: an int past 64 bits
            conn.execute(sql, params)


def keep_schema(conn: sqlite3.Connection, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
    """Run ``statements`` with every trigger out of the way, then put the triggers back exactly as
    they were, so a schema compared exactly still matches and only the rows are hostile."""
    triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'").fetchall()
    for name, _ in triggers:
        conn.execute(f'DROP TRIGGER "{name}"')
    sql_statements(conn, statements)
    for _, sql in triggers:
        conn.execute(sql)


def sqlite_edits(
    seeds: Sequence[bytes],
    value_statements: st.SearchStrategy[list[tuple[str, tuple[Any, ...]]]],
    schema_statements: st.SearchStrategy[list[tuple[str, tuple[Any, ...]]]],
) -> st.SearchStrategy[bytes]:
    """Page edits, hostile rows under the exact schema, a changed schema, or both and then page edits."""
    rows = st.tuples(st.sampled_from(list(seeds)), value_statements).map(
        lambda t: run_sql(t[0], lambda c: keep_schema(c, t[1]))
    )
    schema = st.tuples(st.sampled_from(list(seeds)), schema_statements).map(
        lambda t: run_sql(t[0], lambda c: sql_statements(c, t[1]))
    )
    return st.one_of(
        page_edits(seeds),
        rows,
        schema,
        st.tuples(rows, st.lists(_page_op, min_size=1, max_size=3)).map(lambda t: _apply_pages(*t)),
    )


# --------------------------------------------------------------------------- trees (JSON, CBOR)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any, *, delete: bool = False) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if delete and not rest:
            copy.pop(head, None)
        else:
            copy[head] = _replace(value[head], rest, new, delete=delete)
        return copy
    copy_list = list(value)
    if delete and not rest:
        del copy_list[head]
    else:
        copy_list[head] = _replace(value[head], rest, new, delete=delete)
    return copy_list


def _nest(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


#: Stands for an integer of 5 000 digits in a JSON file: Python refuses to even print one (its
#: 4 300-digit conversion limit), so the text is put in after serialising.
HUGE_INTEGER = "\u2063huge-integer\u2063"

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from((2**64, -(2**63) - 1, 10**4000, 0, HUGE_INTEGER)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(HOSTILE_TEXT),
)
json_trees = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


def _tree_op(seed: Any, leaves: st.SearchStrategy[Any], max_depth: int = 200_000) -> st.SearchStrategy[Any]:
    """``seed`` with one value replaced by a ``leaves`` value, removed, or nested ``max_depth`` deep at most."""
    paths = _paths(seed)
    return st.one_of(
        st.tuples(st.sampled_from(paths), leaves).map(lambda t: _replace(seed, t[0], t[1])),
        st.sampled_from([p for p in paths if p] or [()]).map(
            lambda p: _replace(seed, p, None, delete=True) if p else seed
        ),
        st.tuples(st.sampled_from(paths), st.integers(100, max_depth)).map(lambda t: _replace(seed, t[0], _nest(t[1]))),
    )


def _dump_json(value: Any) -> bytes:
    try:
        text = json.dumps(value, allow_nan=True)
    except (RecursionError, ValueError):
        return b"[" * 100_000
    return text.replace(json.dumps(HUGE_INTEGER), "9" * 5000).encode("utf-8", errors="surrogatepass")


def json_edits(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """A JSON seed with one value (anywhere) replaced, removed or nested 100-200 000 deep, serialised again."""
    parsed = [json.loads(s) for s in seeds]
    return st.sampled_from(parsed).flatmap(lambda seed: _tree_op(seed, json_trees)).map(_dump_json)


cbor_scalars = st.one_of(
    json_scalars,
    st.binary(max_size=80),
    st.integers(0, 100_000).map(lambda n: b"\0" * n),
)
cbor_trees = st.recursive(
    cbor_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)  # fmt: skip


def _dump_cbor(value: Any, canonical: bool) -> bytes:
    try:
        return cbor2.dumps(value, canonical=canonical)
    except (RecursionError, ValueError, cbor2.CBOREncodeError):
        return b"\x81" * 100_000


def cbor_edits(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """A CBOR seed with one value replaced, removed or nested deeply; canonical or not."""
    parsed = [cbor2.loads(s) for s in seeds]
    # cbor2's C encoder does not bound its recursion (it crashes past some 100 000 levels); its
    # decoder stops at 400, so 600 levels are enough to reach that limit.
    deep = 600
    return st.tuples(st.sampled_from(parsed).flatmap(lambda seed: _tree_op(seed, cbor_trees, deep)), st.booleans()).map(
        lambda t: _dump_cbor(*t)
    )
