"""Stamps a fresh liblsl inlet hands out from zero are deduced again (`_InletReader`, with a fake inlet)."""

from __future__ import annotations

from typing import Any

import numpy as np

from streamemg.lsl.source import _InletReader


class _FakeInlet:
    """Hands out queued (samples, stamps) pulls through pylsl's ``pull_chunk`` signature."""

    def __init__(self, pulls: list[np.ndarray]) -> None:
        self.pulls = list(pulls)

    def pull_chunk(self, timeout: float, max_samples: int, dest_obj: np.ndarray, as_numpy: bool) -> Any:
        ts = self.pulls.pop(0) if self.pulls else np.zeros(0)
        dest_obj[: ts.size] = 1.0
        return None, ts


def _reader(pulls: list[np.ndarray], now: float = 5000.0) -> _InletReader:
    return _InletReader(_FakeInlet(pulls), np.empty((64, 1), np.float32), None, floor=1000.0, fs=100.0,
                        clock=lambda: now)


def test_stamps_from_zero_are_deduced_from_the_first_real_stamp() -> None:
    ts = np.concatenate([np.arange(1, 5) * 0.01, 4000.04 + np.arange(6) * 0.01])  # 4 from zero, then real ones
    r = _reader([ts])
    n = r.pull()
    assert n == 10 and r.repaired == 4
    assert np.allclose(np.diff(r.ts[:n]), 0.01) and r.ts[4] == 4000.04  # on the real ones' grid, before them


def test_a_pull_with_no_real_stamp_ends_now_and_the_next_real_stamps_never_fall_behind() -> None:
    r = _reader([np.arange(1, 6) * 0.01, 4999.99 + np.arange(5) * 0.01], now=5000.0)
    assert r.pull() == 5 and r.repaired == 5
    assert r.ts[4] == 5000.0 and np.allclose(np.diff(r.ts[:5]), 0.01)
    first = r.ts[:5].copy()
    assert r.pull() == 5  # real stamps 4999.99... , a little behind the deduced ones: lifted, still increasing
    assert r.ts[0] > first[-1] and np.all(np.diff(r.ts[:5]) > 0)


def test_real_stamps_pass_untouched() -> None:
    ts = 4000.0 + np.arange(8) * 0.01
    r = _reader([ts])
    assert r.pull() == 8 and r.repaired == 0
    assert np.array_equal(r.ts[:8], ts)
