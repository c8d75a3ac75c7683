"""Wire-time model against the bit counts of docs/can-frames.md §4."""

from __future__ import annotations

import dataclasses

import pytest

from modbatt.can.wiretime import (
    CLASSIC,
    FD,
    bus_load,
    classic_frame_bits,
    fd_frame_bits,
    frame_length,
    frame_time,
    frames_per_second,
    isotp_frame_lengths,
)


def test_classic_bit_counts() -> None:
    assert (classic_frame_bits(8).best, classic_frame_bits(8).worst) == (131, 160)
    assert (classic_frame_bits(8, extended=False).best, classic_frame_bits(8, extended=False).worst) == (111, 135)
    assert classic_frame_bits(0).worst == 80  # can-utils closed form 80 + 10n (29-bit, worst)
    assert classic_frame_bits(0, extended=False).worst == 55  # 55 + 10n (11-bit)


def test_fd_bit_counts_single_rate() -> None:
    assert (fd_frame_bits(64).best, fd_frame_bits(64).worst) == (598, 736)
    assert (fd_frame_bits(64, extended=False).best, fd_frame_bits(64, extended=False).worst) == (579, 712)
    # 8 dynamic stuff bits fall in the nominal phase of a 64-byte 29-bit frame (docs/can-frames.md §4).
    assert fd_frame_bits(64).nominal_worst - fd_frame_bits(64).nominal_best == 8


@pytest.mark.parametrize(
    ("bitrate", "best_us", "worst_us"),
    [(125_000, 1048, 1280), (250_000, 524, 640), (500_000, 262, 320), (1_000_000, 131, 160)],
)
def test_classic_frame_times(bitrate: int, best_us: float, worst_us: float) -> None:
    profile = dataclasses.replace(CLASSIC, nominal_bitrate=bitrate)
    assert frame_time(profile, 8, worst=False) * 1e6 == pytest.approx(best_us)
    assert frame_time(profile, 8) * 1e6 == pytest.approx(worst_us)


def test_frames_per_second_table() -> None:
    assert frames_per_second(CLASSIC, 8) == pytest.approx(6250)
    assert round(frames_per_second(CLASSIC, 8, worst=False)) == 7634
    std = dataclasses.replace(CLASSIC, extended=False, nominal_bitrate=500_000)
    assert round(frames_per_second(std, 8)) == 3704
    assert round(frames_per_second(std, 8, worst=False)) == 4505


def test_fd_with_bit_rate_switch() -> None:
    fd_2m = dataclasses.replace(FD, nominal_bitrate=500_000, data_bitrate=2_000_000)
    assert frame_time(fd_2m, 64, worst=False) * 1e6 == pytest.approx(372.5)
    assert frame_time(fd_2m, 64) * 1e6 == pytest.approx(453.5)
    assert round(frames_per_second(fd_2m, 64)) == 2205
    assert round(frames_per_second(fd_2m, 64, worst=False)) == 2685
    std = dataclasses.replace(fd_2m, extended=False)
    assert (frame_time(std, 64, worst=False) * 1e6, frame_time(std, 64) * 1e6) == pytest.approx((334.5, 407.0))
    fd_5m = dataclasses.replace(fd_2m, data_bitrate=5_000_000)
    assert (round(frames_per_second(fd_5m, 64, worst=False)), round(frames_per_second(fd_5m, 64))) == (4812, 4003)


def test_fd_lengths_and_limits() -> None:
    assert [frame_length(n, fd=True) for n in (0, 8, 9, 13, 17, 33, 49, 64)] == [0, 8, 12, 16, 20, 48, 64, 64]
    with pytest.raises(ValueError):
        frame_length(9, fd=False)
    with pytest.raises(ValueError):
        frame_length(65, fd=True)


def test_bus_load() -> None:
    assert bus_load(CLASSIC, [(8, 3125.0)]) == pytest.approx(0.5)
    assert bus_load(CLASSIC, [(8, 1000.0), (8, 1000.0)], worst=False) == pytest.approx(0.262)


def test_isotp_frames() -> None:
    # Unpadded (the bare ISO 15765-2 frame sizes) ...
    assert isotp_frame_lengths(7, CLASSIC, padded=False) == [8]
    assert isotp_frame_lengths(13, CLASSIC, padded=False) == [8, 3, 8]  # FF 6 + FC + CF 7
    assert len(isotp_frame_lengths(79, CLASSIC, padded=False)) == 13
    assert isotp_frame_lengths(79, FD, padded=False) == [64, 3, 20]
    assert isotp_frame_lengths(30, FD, padded=False) == [32]
    # ... and as modbatt's can-isotp configuration sends them: every frame at least 8 bytes.
    assert isotp_frame_lengths(13, CLASSIC) == [8, 8, 8]
    assert isotp_frame_lengths(2, CLASSIC) == [8]
    assert isotp_frame_lengths(79, FD) == [64, 8, 20]
    assert isotp_frame_lengths(4, FD) == [8]
