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


def test_ground_truth_recovery_als_meets_the_target() -> None:
    """Measured (docs/qemg.md, seeds 0-4, 10 s each): 8 of 10 ALS units that fire >= 5 times have amplitude within
    10% and duration within 2 ms (the target is 80%); 7 of 10 have the firing rate within 1 Hz."""
    n, ok, rate_ok, with_rate = _recovery("als", range(5))
    assert n >= 8 and ok / n >= 0.7, (ok, n)
    assert rate_ok / with_rate >= 0.6, (rate_ok, with_rate)


def test_ground_truth_recovery_myopathy_rates_and_found_units() -> None:
    """Measured: myopathy (dense, ~17 units per channel) 28 of 86 units within both bounds (33%: the target is NOT
    reached), but 42 of 52 found units with a rate have it within 1 Hz. Bounds sit just under the measured figures so a
    regression fails."""
    n, ok, rate_ok, with_rate = _recovery("myopathy", range(5))
    assert n >= 60 and ok / n >= 0.25, (ok, n)
    assert rate_ok / with_rate >= 0.7, (rate_ok, with_rate)


def test_found_units_are_measured_close_to_the_truth() -> None:
    """Of the units the analyser credits to a true unit, the amplitude is right (median error 1.5-2.6% per class);
    normal durations are the weak point (median error about 3 ms: slow phases sink under a noise-bound threshold)."""
    for cls, dur_bound in (("normal", 4.0), ("als", 1.5), ("myopathy", 2.5)):
        rs = [r for s in range(3) for r in score(cls, s) if r.found]
        assert len(rs) >= 5
        amp = np.median([abs(r.found_amp / r.true_amp - 1) for r in rs])
        dur = np.median([abs(r.found_dur - r.true_dur) for r in rs])
        assert amp < 0.06 and dur < dur_bound, (cls, amp, dur)


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
