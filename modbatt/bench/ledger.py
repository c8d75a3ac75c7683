"""Bench area ``ledger``: append throughput, proof sizes and proof-verification times.

Rows are ``{"area", "metric", "n", "value", "unit"}``; ``n`` is the log size the figure
was taken at (None where it does not apply). Quick mode measures at 10^4 entries; the
full run adds 10^6 (about a minute and ~250 MB of temporary disk on a small machine).
Everything runs in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..crypto.suite import PrivateKey
from ..ledger import Ledger, merkle, tree_head
from . import time_per_call

NAME = "ledger"
DESCRIPTION = "Merkle ledger: appends/s (batched, durable), proof bytes and verify time at 10^4 / 10^6"

ENTRY_BYTES = 128  # about a ValidationEvent record with its commitments
BATCH = 10_000


def _row(metric: str, value: float, unit: str, n: int | None = None) -> dict[str, Any]:
    return {"area": NAME, "metric": metric, "n": n, "value": round(value, 3), "unit": unit}


def _entries(start: int, count: int) -> Iterator[bytes]:
    # Deterministic, incompressible-looking entries; generation stays out of the timings.
    for i in range(start, start + count):
        seed = hashlib.sha256(i.to_bytes(8, "big")).digest()
        yield (seed * (ENTRY_BYTES // 32 + 1))[:ENTRY_BYTES]


def _append_rates(tmp: Path, quick: bool) -> list[dict[str, Any]]:
    rows = []
    total = 10_000 if quick else 100_000
    batches = [list(_entries(i, 1000)) for i in range(0, total, 1000)]
    with Ledger(tmp / "batched.db") as led:
        t0 = time.perf_counter()
        for batch in batches:
            led.append_many(batch)
        elapsed = time.perf_counter() - t0
    rows.append(_row("append_many (1000/txn, synchronous=FULL)", total / elapsed, "entries/s"))

    singles = list(_entries(0, 200 if quick else 1000))
    for durable, label in (
        (True, "append, 1 txn/entry, synchronous=FULL"),
        (False, "append, 1 txn/entry, synchronous=NORMAL"),
    ):
        with Ledger(tmp / f"single-{durable}.db", durable=durable) as led:
            t0 = time.perf_counter()
            for e in singles:
                led.append(e)
            elapsed = time.perf_counter() - t0
        rows.append(_row(label, len(singles) / elapsed, "entries/s"))
    return rows


def _at_size(tmp: Path, n: int, key: PrivateKey, *, full_verify: bool) -> list[dict[str, Any]]:
    rows = []
    path = tmp / f"log-{n}.db"
    with Ledger(path, signer=key, durable=False) as led:
        t0 = time.perf_counter()
        for start in range(0, n, BATCH):
            led.append_many(list(_entries(start, min(BATCH, n - start))))
        rows.append(_row("build (append_many, 10^4/txn)", n / (time.perf_counter() - t0), "entries/s", n))
        half = led.root_hash(n // 2)
        old = tree_head.SignedTreeHead.sign(key, tree_size=n // 2, root_hash=half, timestamp=0)
        sth = led.signed_tree_head()
        # Database plus write-ahead log: with synchronous=NORMAL most pages are still in the WAL.
        on_disk = sum(os.path.getsize(f) for f in tmp.glob(f"{path.name}*"))
        rows.append(_row("disk per entry (db + WAL, 128-byte entries)", on_disk / n, "bytes", n))

        # Worst case is the deepest leaf; report the largest proof among a spread of indices.
        indices = [0, n // 3, n // 2, n - 2, n - 1]
        proofs = {i: led.inclusion_proof(i) for i in indices}
        rows.append(_row("inclusion proof (max of 5 indices)", max(32 * len(p) for p in proofs.values()), "bytes", n))
        cproof = led.consistency_proof(n // 2)
        rows.append(_row("consistency proof n/2 -> n", 32 * len(cproof), "bytes", n))

        cycle = iter(range(10**9))

        def make_proof() -> None:
            led.inclusion_proof((next(cycle) * 7919) % n)

        rows.append(_row("inclusion proof generation (SQLite)", time_per_call(make_proof) * 1e6, "us", n))
        rows.append(
            _row(
                "consistency proof generation (SQLite)",
                time_per_call(lambda: led.consistency_proof(n // 3)) * 1e6,
                "us",
                n,
            )
        )

        idx = n // 3
        entry, proof = led.entry(idx), proofs[idx]
        leaf = merkle.leaf_hash(entry)
        pub = key.public_key
        rows.append(
            _row(
                "verify inclusion (hashes only)",
                time_per_call(lambda: merkle.verify_inclusion(leaf, idx, n, proof, sth.root_hash)) * 1e6,
                "us",
                n,
            )
        )
        rows.append(
            _row(
                "verify inclusion offline (STH signature + path)",
                time_per_call(lambda: tree_head.verify_inclusion(entry, idx, proof, sth, pub)) * 1e6,
                "us",
                n,
            )
        )
        rows.append(
            _row(
                "verify consistency offline (2 STH signatures + proof)",
                time_per_call(lambda: tree_head.verify_consistency(old, sth, cproof, pub)) * 1e6,
                "us",
                n,
            )
        )
        if full_verify:
            t0 = time.perf_counter()
            led.verify()
            rows.append(_row("Ledger.verify() full recomputation", time.perf_counter() - t0, "s", n))
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure the ledger; ``quick`` keeps it to a few seconds (10^4 entries only)."""
    key = PrivateKey.generate()
    rows = []
    with tempfile.TemporaryDirectory(prefix="modbatt-bench-ledger-") as d:
        tmp = Path(d)
        rows += _append_rates(tmp, quick)
        rows.append(
            _row(
                "sign tree head",
                time_per_call(lambda: tree_head.SignedTreeHead.sign(key, tree_size=1, root_hash=bytes(32), timestamp=0))
                * 1e6,
                "us",
            )
        )
        for n in (10_000,) if quick else (10_000, 1_000_000):
            rows += _at_size(tmp, n, key, full_verify=True)
            for f in tmp.glob(f"log-{n}.db*"):
                f.unlink()  # keep peak disk use to one log
    return rows
