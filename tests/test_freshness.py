"""Freshness counters, replay windows and SecOC reconstruction (modbatt.crypto.freshness)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modbatt.crypto.freshness import (
    MAX_COUNTER,
    FileCounterStore,
    FreshnessCounter,
    MemoryCounterStore,
    ReplayWindow,
    reconstruct,
)
from modbatt.errors import ModbattError, Reason, VerificationError


def test_counter_counts_and_reserves_in_windows() -> None:
    store = MemoryCounterStore()
    counter = FreshnessCounter(store, window=10)
    assert [counter.next() for _ in range(25)] == list(range(25))
    assert store.writes == 3  # 0, 10, 20: one durable write per window
    assert store.value == 30 == counter.reserved_until


def test_counter_never_repeats_across_restarts_with_file_store(tmp_path: Path) -> None:
    path = tmp_path / "fv" / "counter"
    seen: list[int] = []
    for uses in (5, 0, 17, 1, 64):  # several lives, each "crashing" after some messages
        counter = FreshnessCounter(FileCounterStore(path), window=16)
        seen.extend(counter.next() for _ in range(uses))
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)
    # a restart resumes exactly at the durable bound
    bound = FileCounterStore(path).load()
    assert bound is not None
    assert FreshnessCounter(FileCounterStore(path), window=16).next() == bound
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_memory_store_restart_resumes_at_reservation() -> None:
    store = MemoryCounterStore()
    first = FreshnessCounter(store, window=100)
    assert first.next() == 0
    second = FreshnessCounter(store, window=100)  # restart: value 1..99 are skipped, never reused
    assert second.next() == 100


def test_corrupt_counter_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "counter"
    path.write_text("12x\n")
    with pytest.raises(ModbattError):
        FreshnessCounter(FileCounterStore(path))


def test_counter_exhaustion() -> None:
    counter = FreshnessCounter(MemoryCounterStore(MAX_COUNTER), window=8)
    assert counter.next() == MAX_COUNTER
    with pytest.raises(VerificationError) as exc:
        counter.next()
    assert exc.value.reason is Reason.EXHAUSTED


def _reason(window: ReplayWindow, value: int) -> Reason | None:
    try:
        window.check(value)
    except VerificationError as exc:
        return exc.reason
    return None


def test_replay_window_classifies() -> None:
    w = ReplayWindow(8)
    for v in (0, 1, 2, 5, 4):  # 4 arrives late: still accepted
        w.accept(v)
    assert w.highest == 5
    assert _reason(w, 4) is Reason.REPLAY
    assert _reason(w, 3) is None  # never seen, inside the window
    w.accept(20)
    assert _reason(w, 12) is Reason.STALE  # 20 - 12 = 8 = window size
    assert _reason(w, 13) is None
    assert _reason(w, 20) is Reason.REPLAY
    before = (w.highest, w._bitmap)
    _reason(w, 99)
    assert (w.highest, w._bitmap) == before  # check() never changes state


def test_unsynced_window_needs_resync() -> None:
    w = ReplayWindow.unsynced(8)
    assert _reason(w, 0) is Reason.STALE
    w.resync(1000)
    assert _reason(w, 1000) is Reason.REPLAY
    w.accept(1001)


@given(st.lists(st.integers(0, 300), max_size=80), st.integers(1, 70))
def test_replay_window_accepts_each_value_at_most_once(values: list[int], size: int) -> None:
    w = ReplayWindow(size)
    accepted: list[int] = []
    for v in values:
        if _reason(w, v) is None:
            w.accept(v)
            accepted.append(v)
    assert len(accepted) == len(set(accepted))


def test_reconstruct_examples() -> None:
    assert reconstruct(0x05, 8, 0x1FF, behind=0) == 0x205  # wraps into the next epoch (SecOC)
    assert reconstruct(0xFF, 8, 0x100, behind=0) == 0x1FF
    assert reconstruct(0xFE, 8, 0x100) == 0xFE  # within 'behind': the replay window decides
    assert reconstruct(3, 8, -1) == 3  # nothing received yet


@given(st.integers(0, 1 << 40), st.integers(2, 16), st.data())
def test_reconstruct_recovers_values_in_range(latest: int, bits: int, data: st.DataObject) -> None:
    behind = (1 << bits) >> 2
    delta = data.draw(st.integers(1 - behind, (1 << bits) - behind))
    value = latest + delta
    if value < 0:
        return
    assert reconstruct(value & ((1 << bits) - 1), bits, latest, behind=behind) == value
