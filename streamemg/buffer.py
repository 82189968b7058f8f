"""A preallocated, channel-major ring buffer for one stream.

The buffer holds the newest ``capacity`` samples of ``n_channels`` channels in one array shaped
``(n_channels, capacity)``, allocated once. Samples are addressed by their *absolute* index: the
k-th sample ever written has index ``k`` (0-based), so a reader can ask for "the 1024 samples that end
at sample 50 000" no matter how often the storage wrapped around.

Writing never reallocates: a block longer than the buffer keeps only its newest ``capacity``
samples. Reading (:meth:`RingBuffer.latest`) copies into a caller-owned array when one is given, so
the steady-state hot path (write a chunk, read a window) allocates nothing.

Overrun accounting: the buffer keeps a read cursor, the absolute end of the last :meth:`latest`
call. A sample that is pushed out of storage (or never fits into it) while it is at or after the read
cursor was never handed to anyone; those samples are counted in :attr:`RingBuffer.overrun`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


class RingBuffer:
    """Preallocated channel-major ring buffer.

    Args:
        capacity: number of samples per channel the buffer holds (>= 1).
        n_channels: number of channels (>= 1).
        dtype: storage dtype (float32 by default; samples in µV).

    Attributes:
        capacity: samples held per channel.
        n_channels: channel count.
        total_written: absolute number of samples ever written (since construction or :meth:`reset`).
        overrun: samples that were overwritten (or dropped on arrival) before any :meth:`latest`
            call covered them.
    """

    def __init__(self, capacity: int, n_channels: int, dtype: npt.DTypeLike = np.float32) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ValueError(f"RingBuffer capacity={capacity!r}: give a whole number of samples >= 1")
        if isinstance(n_channels, bool) or not isinstance(n_channels, (int, np.integer)) or n_channels < 1:
            raise ValueError(f"RingBuffer n_channels={n_channels!r}: give a whole number of channels >= 1")
        self.capacity: int = int(capacity)
        self.n_channels: int = int(n_channels)
        self._data: np.ndarray = np.zeros((self.n_channels, self.capacity), dtype=dtype)
        self.total_written: int = 0
        self.overrun: int = 0
        self._read_cursor: int = 0

    @property
    def dtype(self) -> np.dtype[Any]:
        """Storage dtype."""
        return self._data.dtype

    @property
    def oldest(self) -> int:
        """Absolute index of the oldest sample still held (== ``total_written`` when empty)."""
        return max(0, self.total_written - self.capacity)

    @property
    def read_cursor(self) -> int:
        """Absolute end of the newest range handed out by :meth:`latest` (0 before the first read)."""
        return self._read_cursor

    def available(self) -> int:
        """Number of samples currently held, i.e. the largest ``n`` that :meth:`latest` accepts."""
        return min(self.total_written, self.capacity)

    def unread(self) -> int:
        """Held samples at or after the read cursor (not yet covered by any :meth:`latest` call)."""
        return self.total_written - max(self._read_cursor, self.oldest)

    def write(self, data: np.ndarray) -> None:
        """Append a block of samples.

        Args:
            data: ``(n, n_channels)`` samples (any ``n >= 0``, also larger than ``capacity``); cast to the
                storage dtype on copy. Only the newest ``capacity`` samples of a long block are stored.

        Raises:
            ValueError: if ``data`` is not 2-D with ``n_channels`` columns.
        """
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != self.n_channels:
            raise ValueError(f"RingBuffer.write expects data shaped (n, {self.n_channels}); got {data.shape}")
        n = int(data.shape[0])
        if n == 0:
            return
        old_oldest = self.oldest
        new_total = self.total_written + n
        new_oldest = max(0, new_total - self.capacity)
        # Samples in [old_oldest, new_oldest) leave the buffer now (or never enter it); the ones that were
        # not yet read (>= read cursor) are lost to the reader.
        lost = new_oldest - max(old_oldest, self._read_cursor)
        if lost > 0:
            self.overrun += lost

        if n > self.capacity:
            data = data[n - self.capacity :]
            start = new_total - self.capacity
            n = self.capacity
        else:
            start = self.total_written
        pos = start % self.capacity
        first = min(n, self.capacity - pos)
        # data is (n, C); storage is (C, capacity): assign through the transposed view (strided copy).
        self._data[:, pos : pos + first] = data[:first].T
        if first < n:
            self._data[:, : n - first] = data[first:].T
        self.total_written = new_total

    def latest(self, n: int, end: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Return the ``n`` samples that end at absolute index ``end`` (exclusive), channel-major.

        Args:
            n: number of samples (0 <= n <= capacity).
            end: absolute end index (exclusive); default ``total_written`` (the newest samples).
            out: optional ``(n_channels, n)`` array to copy into (no allocation); must have a dtype the
                storage casts to safely (same-kind).

        Returns:
            ``(n_channels, n)`` samples ``[end - n, end)``; ``out`` itself when given, else a new array.

        Raises:
            ValueError: if the range is not entirely held (too old, in the future, or ``n`` > capacity),
                or ``out`` has the wrong shape.

        Side effect: the read cursor moves to ``end`` (never backwards).
        """
        if end is None:
            end = self.total_written
        n = int(n)
        end = int(end)
        start = end - n
        if n < 0 or end > self.total_written or start < self.oldest:
            raise ValueError(
                f"RingBuffer.latest(n={n}, end={end}): samples [{start}, {end}) are not all held; the buffer "
                f"holds [{self.oldest}, {self.total_written}) (capacity {self.capacity})"
            )
        if out is None:
            out = np.empty((self.n_channels, n), dtype=self._data.dtype)
        elif out.shape != (self.n_channels, n):
            raise ValueError(f"RingBuffer.latest: out has shape {out.shape}, expected {(self.n_channels, n)}")
        if n > 0:
            pos = start % self.capacity
            first = min(n, self.capacity - pos)
            np.copyto(out[:, :first], self._data[:, pos : pos + first], casting="same_kind")
            if first < n:
                np.copyto(out[:, first:], self._data[:, : n - first], casting="same_kind")
        if end > self._read_cursor:
            self._read_cursor = end
        return out

    def reset(self) -> None:
        """Forget all samples and counters (storage is kept, not reallocated)."""
        self.total_written = 0
        self.overrun = 0
        self._read_cursor = 0

    def __repr__(self) -> str:
        return (
            f"RingBuffer(capacity={self.capacity}, n_channels={self.n_channels}, dtype={self._data.dtype}, "
            f"total_written={self.total_written}, overrun={self.overrun})"
        )
