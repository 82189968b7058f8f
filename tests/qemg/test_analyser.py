"""The streaming analyser: ground-truth recovery on the simulator, chunking, bounded memory, cost."""

from __future__ import annotations

import time

import numpy as np

from simulators.synth import EMGSimulator
from streamemg.qemg import QemgAnalyser, QemgSettings

from .groundtruth import score


def _recovery(cls: str, seeds: range, effort: float | None) -> tuple[int, int, int, int]:
    rs = [r for s in seeds for r in score(cls, s, effort=effort)]
    found = [r for r in rs if r.found]
    with_rate = [r for r in found if np.isfinite(r.found_rate)]
    return len(rs), sum(r.amp_ok and r.dur_ok for r in rs), sum(r.rate_ok for r in with_rate), len(with_rate)


def test_ground_truth_recovery_at_low_effort_normal_and_als() -> None:
    """Measured (docs/qemg.md): at effort 0.15, over seeds 0-4, 52% (normal) and 58% (ALS) of the units that fire
    >= 5 times have amplitude within 10% and duration within 2 ms. The bounds below sit under those figures so a
    regression fails; they are NOT the issue's 80% target, which the analyser does not reach."""
    n, ok, rate_ok, with_rate = _recovery("normal", range(5), 0.15)
    assert n >= 15 and ok / n >= 0.45, (ok, n)
    assert rate_ok / with_rate >= 0.5, (rate_ok, with_rate)
    n, ok, _, _ = _recovery("als", range(5), 0.15)
    assert n >= 8 and ok / n >= 0.5, (ok, n)


def test_found_units_are_measured_close_to_the_truth() -> None:
    """Of the units the analyser credits to a true unit, the median errors are small (amplitude, duration, rate)."""
    rs = [r for s in range(4) for r in score("normal", s, effort=0.15) if r.found]
    assert len(rs) >= 10
    amp = np.median([abs(r.found_amp / r.true_amp - 1) for r in rs])
    dur = np.median([abs(r.found_dur - r.true_dur) for r in rs])
    assert amp < 0.12 and dur < 1.5, (amp, dur)


def test_uneven_blocks_give_the_same_units_as_hops() -> None:
    fs = 10000.0
    x = EMGSimulator("normal", fs, seed=3, effort=0.15).generate(80000)

    def units(sizes: list[int]) -> list[tuple[float, int]]:
        an = QemgAnalyser(fs, 1)
        i, k = 0, 0
        while i < x.shape[0]:
            n = sizes[k % len(sizes)]
            an.process(x[i : i + n])
            i += n
            k += 1
        return sorted((round(u.waveform.amplitude_uv), u.discharges) for u in an.summary(fresh=True).units)

    hops = units([2500])
    assert len(hops) >= 3
    uneven = units([1, 7, 333, 2500, 4999, 64])
    # the same units, measured alike (block edges only shift when a template is updated, not what it holds)
    same = [h for h in hops if any(abs(u[0] - h[0]) <= 0.03 * h[0] and abs(u[1] - h[1]) <= 3 for u in uneven)]
    assert len(same) >= 0.8 * len(hops) and abs(len(uneven) - len(hops)) <= 1, (hops, uneven)


def test_memory_is_bounded_and_old_units_are_forgotten() -> None:
    fs = 10000.0
    s = QemgSettings(horizon_s=2.0, max_templates=8)
    an = QemgAnalyser(fs, 2, s)
    sim = EMGSimulator("myopathy", fs, n_channels=2, seed=1)
    for _ in range(60):
        an.process(sim.generate(2500))
    assert an.detector.buf.shape[1] <= an.detector.keep
    for t in an.sets:
        assert t.active.sum() <= 8
        assert t.times.shape == (8, t.ring)
    newest = an.samples_seen
    for u in an.summary(fresh=True).units:
        assert u.times_s[0] * fs >= newest - 2.0 * fs - 1  # only discharges within the horizon count
    # silence: every unit expires after one horizon
    for _ in range(12):
        an.process(np.zeros((2500, 2), np.float32))
    assert an.summary(fresh=True).units == ()


def test_nan_and_flat_input_do_not_break_it() -> None:
    an = QemgAnalyser(4000.0, 1)
    x = np.zeros((4000, 1), np.float32)
    x[100:200] = np.nan
    an.process(x)
    d = an.summary_dict()
    assert d["units"] == 0 and d["amplitude_uv"] is None


def test_cost_per_second_of_signal_is_small() -> None:
    """One channel at 10 kHz: well under 1% of real time (a few ms per second of signal on this machine)."""
    fs = 10000.0
    x = EMGSimulator("normal", fs, seed=0).generate(100000)
    an = QemgAnalyser(fs, 1)
    t0 = time.perf_counter()
    for i in range(0, x.shape[0], 2500):
        an.process(x[i : i + 2500])
        an.summary_dict()
    per_s = (time.perf_counter() - t0) / 10.0
    assert per_s < 0.05, per_s  # loose: the machine is shared; per-sample Python would cost 100x more
