"""Cut a stream's samples into exact analysis blocks, whatever the chunks they arrive in.

QEMG analyses a stream in blocks of exactly ``block_s`` seconds, so its result does not depend on how a source
chunked the signal; the first block is shorter by ``phase`` of a block, so that streams started together do not
all fall due in the same hop. Chunks are kept by reference until their block is complete.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class BlockGatherer:
    """Gathers chunks (n, C) and hands out exact blocks.

    Args:
        fs: sampling rate, Hz; block_s: block length, s; phase: 0..1, the share of a block the first one is short.
    """

    def __init__(self, fs: float, block_s: float, phase: float = 0.0) -> None:
        self.block = max(1, round(block_s * fs))
        self.first = max(1, round(self.block * (1.0 - float(phase) % 1.0)))
        self._pending: list[npt.NDArray[np.floating]] = []
        self.pending_n = 0
        self.fed = 0  # samples handed out in blocks (or by take_rest)

    def add(self, raw: npt.NDArray[np.floating]) -> list[npt.NDArray[np.floating]]:
        """Take the next samples (do not modify them afterwards); return the blocks they completed, in order."""
        if raw.shape[0] == 0:
            return []
        self._pending.append(raw)
        self.pending_n += raw.shape[0]
        size = self.first if self.fed == 0 else self.block
        if self.pending_n < size:
            return []
        x = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        start = 0
        blocks = []
        while x.shape[0] - start >= size:
            blocks.append(x[start : start + size])
            start += size
            size = self.block
        rest = x[start:]
        self._pending = [rest] if rest.shape[0] else []
        self.pending_n = rest.shape[0]
        self.fed += start
        return blocks

    def take_rest(self) -> npt.NDArray[np.floating] | None:
        """The samples of the block in progress (None if there are none); they count as handed out."""
        if not self.pending_n:
            return None
        raw = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
        self._pending = []
        self.fed += self.pending_n
        self.pending_n = 0
        return raw
