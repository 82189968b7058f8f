"""The streaming analyser: ground-truth recovery on the simulator, chunking, bounded memory, cost."""

from __future__ import annotations

import time

import numpy as np

from simulators.synth import EMGSimulator
from streamemg.qemg import QemgAnalyser, QemgSettings

from .groundtruth import score


def _recovery(cls: str, seeds: range, effort: float | None = None) -> tuple[int, int, int, int]:
    rs = [r for s in seeds for r in score(cls, s, effort=effort)]
    found = [r for r in rs if r.found]
    with_rate = [r for r in found if np.isfinite(r.found_rate)]
    return len(rs), sum(r.amp_ok and r.dur_ok for r in rs), sum(r.rate_ok for r in with_rate), len(with_rate)


def test_ground_truth_recovery_is_measured_and_below_the_target() -> None:
    """Measured (docs/qemg.md, seeds 0-4, 10 s each, the calibrated profiles): of the units that fire >= 5 times,
    amplitude within 10% and duration within 2 ms for normal 15 of 35 (43%), ALS 8 of 14 (57%), myopathy 19 of 46
    (41%): the 80% target is NOT reached in any class (units below the detection threshold, overlapping units, and
    polyphasic ALS potentials measured too short or too long). Of the units found with a rate, normal 15 of 21,
    ALS 7 of 13 and myopathy 13 of 23 have it within 1 Hz. Bounds sit just under the measured figures so a
    regression fails."""
    for cls, n_min, ok_min, rate_min in (("normal", 30, 0.40, 0.65), ("als", 12, 0.50, 0.50),
                                         ("myopathy", 40, 0.38, 0.50)):
        n, ok, rate_ok, with_rate = _recovery(cls, range(5))
        assert n >= n_min and ok / n >= ok_min, (cls, ok, n)
        assert rate_ok / with_rate >= rate_min, (cls, rate_ok, with_rate)


def test_found_units_are_measured_close_to_the_truth() -> None:
    """Of the units the analyser credits to a true unit (seeds 0-4), the median amplitude error is 3.8 / 2.0 / 2.8%
    and the median duration error 1.3 / 0.95 / 0.6 ms (normal / ALS / myopathy)."""
    for cls, amp_bound, dur_bound in (("normal", 0.05, 1.8), ("als", 0.04, 1.3), ("myopathy", 0.04, 0.9)):
        rs = [r for s in range(5) for r in score(cls, s) if r.found]
        assert len(rs) >= 8
        amp = np.median([abs(r.found_amp / r.true_amp - 1) for r in rs])
        dur = np.median([abs(r.found_dur - r.true_dur) for r in rs])
        assert amp < amp_bound and dur < dur_bound, (cls, amp, dur)


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
