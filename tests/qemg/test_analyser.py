"""The streaming analyser: ground-truth recovery on the simulator, chunking, bounded memory, cost."""

from __future__ import annotations

import cProfile
import functools
import pstats

import numpy as np

from simulators.synth import EMGSimulator
from streamemg.qemg import QemgAnalyser, QemgSettings

from .groundtruth import UnitScore, score, twins


@functools.cache
def _scores(cls: str) -> tuple[UnitScore, ...]:
    return tuple(r for s in range(20) for r in score(cls, s))


def test_ground_truth_recovery_is_measured_and_below_the_target() -> None:
    """Measured (docs/qemg.md, seeds 0-19, 10 s each, the calibrated profiles, class default effort): of the units
    that fire >= 5 times, amplitude within 10% and duration within 2 ms for normal 87 of 143 (61%), ALS 50 of 54
    (93%), myopathy 80 of 182 (44%); of the clearly present units without a twin, 56 of 65 (86%), 50 of 54 (93%) and
    70 of 84 (83%). The 80% target is reached over all units for ALS only (normal and myopathy: units below the
    detection threshold, units of one shape over the matching window). Of the units found with a rate, 89 / 89 / 79%
    have it within 1 Hz. Bounds sit a few points under the measured figures so a regression fails."""
    for cls, ok_min, single_min, rate_min in (("normal", 0.57, 0.80, 0.84), ("als", 0.87, 0.87, 0.82),
                                              ("myopathy", 0.40, 0.78, 0.74)):
        rs = _scores(cls)
        assert len(rs) >= 50, (cls, len(rs))
        ok = sum(r.amp_ok and r.dur_ok for r in rs)
        assert ok / len(rs) >= ok_min, (cls, ok, len(rs))
        single = [r for r in rs if r.clear and not r.twin]
        ok_single = sum(r.amp_ok and r.dur_ok for r in single)
        assert ok_single / len(single) >= single_min, (cls, ok_single, len(single))
        with_rate = [r for r in rs if r.found and np.isfinite(r.found_rate)]
        rate_ok = sum(r.rate_ok for r in with_rate)
        assert rate_ok / len(with_rate) >= rate_min, (cls, rate_ok, len(with_rate))


def test_found_units_are_measured_close_to_the_truth() -> None:
    """Of the units the analyser credits to a true unit (seeds 0-19), the median amplitude error is 1.6 / 1.3 / 1.3%
    and the median duration error 0.3 / 0.4 / 0.2 ms (normal / ALS / myopathy)."""
    for cls, amp_bound, dur_bound in (("normal", 0.025, 0.6), ("als", 0.025, 0.6), ("myopathy", 0.025, 0.5)):
        rs = [r for r in _scores(cls) if r.found]
        assert len(rs) >= 30
        amp = np.median([abs(r.found_amp / r.true_amp - 1) for r in rs])
        dur = np.median([abs(r.found_dur - r.true_dur) for r in rs])
        assert amp < amp_bound and dur < dur_bound, (cls, amp, dur)


def test_twins_are_told_by_the_match_rule() -> None:
    """The twin rule of the ground-truth table: a shape and a copy scaled by 1.1 are one template to the matcher
    (squared distance 1% of the energy, under the 5% tolerance); scaled by 1.6 (36%) they are two; the noise
    allowance makes small shapes twins sooner."""
    t = np.linspace(-3, 3, 31)
    a = -np.exp(-t * t) + 0.3 * np.exp(-(t - 1.5) ** 2)
    assert twins([a, 1.1 * a, 1.6 * a], 0.05, 0.0) == [True, True, False]
    assert twins([0.1 * a, 0.16 * a], 0.05, 0.0) == [False, False]
    assert twins([0.1 * a, 0.16 * a], 0.05, 1.0) == [True, True]


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
    assert uneven == hops  # analysed in blocks of exactly block_s: chunking cannot matter


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


def test_no_python_runs_per_sample() -> None:
    """The analysis makes Python calls per block, per candidate batch and per unit, never per sample: 10 s of one
    20 kHz channel (200 000 samples) take about 20 000 Python-level calls in all (20 042 when this was written), counted
    by the profiler (a count, not a time: the cost itself is measured by ``tests/qemg/cost_analyser.py`` and
    ``streamemg bench``). A loop over samples would make at least 200 000."""
    fs = 20000.0
    x = EMGSimulator("normal", fs, seed=0).generate(round(10 * fs))
    an = QemgAnalyser(fs, 1)
    hop = round(0.25 * fs)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(0, x.shape[0], hop):
        an.process(x[i : i + hop])
        an.summary_dict()
    prof.disable()
    calls = pstats.Stats(prof).total_calls
    assert an.summary(fresh=True).units  # it did analyse
    assert calls < x.shape[0] / 4, calls
