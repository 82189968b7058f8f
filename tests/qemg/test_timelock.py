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


def _two_unit_signal(fs: float, seconds: float) -> tuple[np.ndarray, list[float]]:
    """Two triphasic units of one family, 159 and 214 µV: a main negative spike and a terminal positive phase a third
    of its size about 3 ms later (the simulator's normal units look like this), each at about 11 Hz."""
    rng = np.random.default_rng(3)
    t = np.arange(-5e-3, 12e-3, 1 / fs)

    def unit(main: float, hump: float, lag: float) -> np.ndarray:
        return (-main * np.exp(-((t / 0.45e-3) ** 2)) + hump * np.exp(-(((t - lag) / 1.2e-3) ** 2))
                + 0.15 * main * np.exp(-(((t + 1.4e-3) / 0.6e-3) ** 2)))

    kernels = [unit(110.0, 48.0, 3.3e-3), unit(166.0, 45.0, 3.1e-3)]
    n = round(seconds * fs)
    x = rng.normal(0.0, 2.0, n)
    for k in kernels:
        at = np.cumsum(rng.normal(0.09, 0.012, 200))
        at = at[at < seconds - 0.02]
        for a in at:
            i = round(a * fs)
            x[i : i + k.size] += k * (1.0 + 0.03 * rng.standard_normal())
    return x[:, None].astype(np.float32), [float(np.ptp(k)) for k in kernels]


def test_a_units_terminal_phase_is_not_taken_for_a_unit() -> None:
    """The terminal phase of a triphasic potential peaks about 3 ms after the main spike at a third of its size. With
    candidates 3 ms apart it was detected again on every discharge and reported as a unit of its own (here two
    extra units of 165-180 µV aligned on +50 µV); candidates are now 5 ms apart: the two units, each at its size,
    each aligned on its main spike, and nothing else."""
    from streamemg.qemg import QemgAnalyser

    fs = 10000.0
    x, true_amp = _two_unit_signal(fs, 10.0)
    an = QemgAnalyser(fs, 1)
    for i in range(0, x.shape[0], 2500):
        an.process(x[i : i + 2500])
    units = [u for u in an.summary(fresh=True).units if u.discharges >= 10]
    assert len(units) == 2, [(u.waveform.amplitude_uv, u.discharges) for u in units]
    for u in units:
        w = u.template
        assert abs(w[an.detector.pre]) >= 0.95 * np.abs(w).max()  # aligned on its main spike
        assert u.discharges >= 90
    found = sorted(u.waveform.amplitude_uv for u in units)
    for f, a in zip(found, sorted(true_amp), strict=True):
        assert abs(f / a - 1) <= 0.05, (found, true_amp)


def test_joined_fragments_put_both_trains_on_one_peak() -> None:
    """A polyphasic unit with two peaks of about one size is aligned on one or the other, so its discharges end in two
    templates; joined, the second template's discharge times must move to the first one's peak (they were moved the
    other way, twice the shift off, so a unit joined from two fragments had two trains a few ms apart)."""
    from streamemg.qemg import QemgAnalyser

    fs = 10000.0
    an = QemgAnalyser(fs, 1)
    pre, n = an.detector.pre, an.detector.pre + an.detector.post
    gap = 12  # samples between the two peaks
    t = np.arange(n) - pre

    def potential(peak_a_at: int) -> np.ndarray:
        return (80.0 * np.exp(-(((t - peak_a_at) / 3.0) ** 2)) + 78.0 * np.exp(-(((t - peak_a_at - gap) / 3.0) ** 2))
                - 60.0 * np.exp(-(((t - peak_a_at - 2 * gap) / 5.0) ** 2)))

    wi = potential(0)  # aligned on peak A
    wj = potential(-gap)  # aligned on peak B, A sits gap samples before the aligning point
    peaks_a = np.arange(20, dtype=np.int64) * 1000 + 5000
    ti, tj = peaks_a[::2], peaks_a[1::2] + gap  # j's discharges were detected on peak B
    from streamemg.qemg.analyser import _Template
    from streamemg.qemg.measures import waveform_measures

    def template(w: np.ndarray, times: np.ndarray) -> _Template:
        return _Template(w, waveform_measures(w, fs, peak=pre), times, np.ones(n))

    joined = an._joined(template(wi, ti), template(wj, tj), an.detector.dead)
    assert joined is not None
    assert np.array_equal(joined.times, peaks_a)
