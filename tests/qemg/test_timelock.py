"""The one-pass time-lock matrix (a unit that is only a second peak of a larger unit's potential) against the
definition written out pair by pair."""

from __future__ import annotations

import numpy as np

from streamemg.qemg.analyser import _lock_matrix


def _one_pair(small: np.ndarray, big: np.ndarray, span: int, lock: int) -> bool:
    if small.size == 0 or big.size == 0:
        return False
    nearest = big[np.argmin(np.abs(small[:, None] - big[None, :]), axis=1)]  # ties: the earlier discharge
    lag = small - nearest
    near = lag[np.abs(lag) <= span]
    if near.size < 0.6 * small.size:
        return False
    return bool(np.count_nonzero(np.abs(near - np.median(near)) <= lock) >= 0.6 * small.size)


def test_lock_matrix_equals_the_pairwise_definition_on_random_trains() -> None:
    rng = np.random.default_rng(7)
    span, lock = 320, 3
    decided = {True: 0, False: 0}
    for _ in range(300):
        trains = [np.sort(rng.choice(80_000, size=rng.integers(0, 40), replace=False))
                  for _ in range(rng.integers(1, 7))]
        for i in range(len(trains)):  # some trains are second peaks: locked to another at a fixed lag, plus strays
            src = trains[rng.integers(len(trains))]
            if src.size and rng.random() < 0.4:
                keep = src[rng.random(src.size) < rng.uniform(0.4, 1.0)]
                trains[i] = np.sort(np.concatenate([
                    keep + int(rng.integers(-200, 200)) + rng.integers(-2, 3, keep.size),
                    rng.choice(80_000, size=rng.integers(0, 6))]))
        trains = [t.astype(np.int64) for t in trains]
        got = _lock_matrix(trains, span, lock)
        for i, small in enumerate(trains):
            for j, big in enumerate(trains):
                want = i != j and _one_pair(small, big, span, lock)
                assert bool(got[i, j]) == want, (i, j)
                decided[want] += 1
    assert decided[True] > 50 and decided[False] > 50  # both answers were exercised
