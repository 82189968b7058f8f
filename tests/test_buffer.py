"""Tests of the preallocated ring buffer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamemg.buffer import RingBuffer


def ramp(start: int, n: int, n_channels: int) -> np.ndarray:
    """(n, C) samples whose value encodes (absolute index, channel): index * 10 + channel."""
    idx = np.arange(start, start + n, dtype=np.float32)[:, None]
    return idx * 10 + np.arange(n_channels, dtype=np.float32)[None, :]


def test_rejects_bad_construction() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(0, 1)
    with pytest.raises(ValueError, match="n_channels"):
        RingBuffer(8, 0)
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(True, 1)


def test_write_and_read_back_channel_major() -> None:
    buf = RingBuffer(8, 2)
    buf.write(ramp(0, 5, 2))
    assert buf.total_written == 5
    assert buf.available() == 5
    got = buf.latest(3)
    assert got.shape == (2, 3)
    np.testing.assert_array_equal(got, ramp(2, 3, 2).T)
    assert got.dtype == np.float32


def test_wraparound_and_explicit_end() -> None:
    buf = RingBuffer(8, 3)
    buf.write(ramp(0, 6, 3))
    buf.write(ramp(6, 5, 3))  # wraps: storage holds samples 3..10
    assert buf.available() == 8
    assert buf.oldest == 3
    np.testing.assert_array_equal(buf.latest(8), ramp(3, 8, 3).T)
    np.testing.assert_array_equal(buf.latest(4, end=9), ramp(5, 4, 3).T)


def test_write_larger_than_capacity_keeps_newest() -> None:
    buf = RingBuffer(5, 2)
    buf.write(ramp(0, 2, 2))
    buf.write(ramp(2, 13, 2))  # 15 written, only 10..14 held
    assert buf.total_written == 15
    np.testing.assert_array_equal(buf.latest(5), ramp(10, 5, 2).T)
    with pytest.raises(ValueError, match="not all held"):
        buf.latest(6)


def test_latest_into_out_does_not_allocate() -> None:
    buf = RingBuffer(16, 2)
    out = np.empty((2, 6), dtype=np.float32)
    storage = buf._data
    for start in range(0, 60, 7):
        buf.write(ramp(start, 7, 2))
        got = buf.latest(6, out=out)
        assert got is out
        np.testing.assert_array_equal(out, ramp(start + 1, 6, 2).T)
    assert buf._data is storage  # never reallocated


def test_latest_out_wrong_shape_raises() -> None:
    buf = RingBuffer(16, 2)
    buf.write(ramp(0, 10, 2))
    with pytest.raises(ValueError, match="shape"):
        buf.latest(4, out=np.empty((2, 5), dtype=np.float32))


def test_latest_range_errors() -> None:
    buf = RingBuffer(8, 1)
    buf.write(ramp(0, 12, 1))
    with pytest.raises(ValueError):
        buf.latest(2, end=13)  # in the future
    with pytest.raises(ValueError):
        buf.latest(3, end=6)  # starts at 3 < oldest 4
    with pytest.raises(ValueError):
        buf.latest(9)  # more than capacity
    with pytest.raises(ValueError):
        buf.latest(-1)
    assert buf.latest(0).shape == (1, 0)


def test_write_wrong_shape_raises_and_empty_is_noop() -> None:
    buf = RingBuffer(8, 2)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        buf.write(np.zeros((3, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        buf.write(np.zeros(4, dtype=np.float32))
    buf.write(np.zeros((0, 2), dtype=np.float32))
    assert buf.total_written == 0


def test_overrun_counts_only_unread_overwritten_samples() -> None:
    buf = RingBuffer(10, 1)
    buf.write(ramp(0, 8, 1))
    buf.latest(4)  # read cursor -> 8 (samples 0..7 count as read)
    buf.write(ramp(8, 8, 1))  # 16 written; samples 0..5 dropped, all read
    assert buf.overrun == 0
    assert buf.unread() == 8
    buf.write(ramp(16, 6, 1))  # 22 written; samples 6..11 dropped: 6, 7 read, 8..11 unread
    assert buf.overrun == 4
    buf.latest(5)  # cursor -> 22
    buf.write(ramp(22, 25, 1))  # 47 written; 12..36 dropped: 12..21 read, 22..36 (15) never fit
    assert buf.overrun == 4 + 15
    np.testing.assert_array_equal(buf.latest(10), ramp(37, 10, 1).T)


def test_read_cursor_never_moves_back() -> None:
    buf = RingBuffer(10, 1)
    buf.write(ramp(0, 10, 1))
    buf.latest(2)
    buf.latest(2, end=5)  # re-reading old samples does not un-read the newer ones
    assert buf.read_cursor == 10
    buf.write(ramp(10, 10, 1))
    assert buf.overrun == 0


def test_reset_forgets_counters_but_keeps_storage() -> None:
    buf = RingBuffer(4, 1)
    storage = buf._data
    buf.write(ramp(0, 9, 1))
    assert buf.overrun == 5
    buf.reset()
    assert (buf.total_written, buf.overrun, buf.available(), buf.read_cursor) == (0, 0, 0, 0)
    buf.write(ramp(100, 2, 1))
    np.testing.assert_array_equal(buf.latest(2), ramp(100, 2, 1).T)
    assert buf._data is storage


def test_dtype_float64_storage() -> None:
    buf = RingBuffer(4, 1, dtype=np.float64)
    buf.write(np.array([[1.0 + 1e-12]]))
    assert buf.latest(1)[0, 0] == 1.0 + 1e-12


# One operation: ("w", n) writes n samples; ("r", n, back) reads n samples ending `back` before the newest.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("w"), st.integers(0, 40)),
        st.tuples(st.just("r"), st.integers(0, 20), st.integers(0, 20)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 16), n_channels=st.integers(1, 3), ops=operations)
def test_matches_naive_reference(capacity: int, n_channels: int, ops: list[tuple]) -> None:
    """Random writes and reads against np.concatenate of all writes and a set of unread indices."""
    buf = RingBuffer(capacity, n_channels)
    written: list[np.ndarray] = [np.zeros((0, n_channels), dtype=np.float32)]
    unread: set[int] = set()
    overrun = 0
    rng = np.random.default_rng(len(ops))
    for op in ops:
        total = sum(len(w) for w in written)
        if op[0] == "w":
            block = rng.standard_normal((op[1], n_channels)).astype(np.float32)
            buf.write(block)
            written.append(block)
            unread |= set(range(total, total + op[1]))
            total += op[1]
            dropped = {i for i in unread if i < total - capacity}
            overrun += len(dropped)
            unread -= dropped
        else:
            n, back = op[1], op[2]
            end = total - back
            reference = np.concatenate(written)
            if n > capacity or end - n < max(0, total - capacity) or end < 0:
                with pytest.raises(ValueError):
                    buf.latest(n, end=end)
                continue
            out = np.full((n_channels, n), np.nan, dtype=np.float32)
            buf.latest(n, end=end, out=out)
            np.testing.assert_array_equal(out, reference[end - n : end].T)
            unread -= {i for i in unread if i < end}
        assert buf.total_written == total
        assert buf.overrun == overrun
        assert buf.unread() == len(unread)
        assert buf.available() == min(total, capacity)
