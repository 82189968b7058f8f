"""The synthetic needle-EMG simulator and the absolute-deadline pacer."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from simulators.pacing import Pacer
from simulators.synth import (
    MIXED,
    PROFILES,
    SIM_CLASSES,
    EMGSimulator,
    count_phases,
    draw_muap_shape,
    muap_duration_ms,
    normalize_class,
    pick_class,
    render_potential,
)
from streamemg.clock import ManualClock
from streamemg.errors import ConfigError

RATES = (4000.0, 8000.0, 10000.0, 23437.5, 32768.0)


def _units(cls: str, kind: str = "motor_unit", seeds: range = range(12), fs: float = 10000.0):
    out = []
    for seed in seeds:
        out += [u for u in EMGSimulator(cls, fs, n_channels=2, seed=seed).units if u.kind == kind]
    return out


def _centroid(x: np.ndarray, fs: float) -> float:
    f, p = signal.welch(x, fs=fs, nperseg=2048, axis=0)
    p = p.mean(axis=1)
    m = (f >= 20) & (f <= 4000)
    return float((f[m] * p[m]).sum() / p[m].sum())


def _rates(sim: EMGSimulator, seconds: float) -> dict[int, np.ndarray]:
    """Discharge times (s) per global unit id, from the simulator's event log."""
    ids = np.concatenate([e[0] for e in sim.event_log])
    samples = np.concatenate([e[1] for e in sim.event_log])
    return {int(u): np.sort(samples[ids == u]) / sim.fs for u in np.unique(ids)}


# ----------------------------------------------------------------------------- shapes, reproducibility, continuity


@pytest.mark.parametrize("fs", RATES)
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_dtype_for_any_rate_and_channel_count(fs: float, channels: int) -> None:
    sim = EMGSimulator("normal", fs, n_channels=channels, seed=1)
    x = sim.generate(int(fs * 0.25))
    assert x.shape == (int(fs * 0.25), channels)
    assert x.dtype == np.float32 and np.isfinite(x).all()
    assert sim.generate(0).shape == (0, channels)
    assert sim.samples_generated == int(fs * 0.25)


@pytest.mark.parametrize("cls", SIM_CLASSES)
def test_same_seed_same_samples_other_seed_other_samples(cls: str) -> None:
    a = EMGSimulator(cls, 8000.0, n_channels=2, seed=3).generate(8000)
    b = EMGSimulator(cls, 8000.0, n_channels=2, seed=3).generate(8000)
    c = EMGSimulator(cls, 8000.0, n_channels=2, seed=4).generate(8000)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a[:, 0], a[:, 1])  # channels have their own units


@pytest.mark.parametrize("cls", SIM_CLASSES)
@pytest.mark.parametrize("fs", [4000.0, 23437.5, 32768.0])
def test_split_generation_equals_one_call(cls: str, fs: float) -> None:
    kw = dict(n_channels=3, seed=7, mains_hz=50.0, mains_uv=20.0, crosstalk=0.1)
    n = int(fs * 0.7)
    whole = EMGSimulator(cls, fs, **kw).generate(n)  # type: ignore[arg-type]
    sim = EMGSimulator(cls, fs, **kw)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    parts, done = [], 0
    while done < n:
        k = min(int(rng.integers(0, int(fs * 0.15))), n - done)
        parts.append(sim.generate(k))
        done += k
    np.testing.assert_array_equal(np.concatenate(parts), whole)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 2500), min_size=1, max_size=8), st.sampled_from(SIM_CLASSES))
def test_any_split_equals_one_call(sizes: list[int], cls: str) -> None:
    whole = EMGSimulator(cls, 10000.0, seed=2).generate(sum(sizes))
    sim = EMGSimulator(cls, 10000.0, seed=2)
    np.testing.assert_array_equal(np.concatenate([sim.generate(k) for k in sizes]), whole)


def test_a_channel_keeps_its_units_whatever_the_channel_count() -> None:
    one = EMGSimulator("als", 10000.0, n_channels=1, seed=5)
    many = EMGSimulator("als", 10000.0, n_channels=4, seed=5)
    k1 = [u.kernel for u in one.units if u.channel == 0]
    k4 = [u.kernel for u in many.units if u.channel == 0]
    assert len(k1) == len(k4) and all(np.array_equal(a, b) for a, b in zip(k1, k4, strict=True))


# ----------------------------------------------------------------------------- MUAP physiology


def test_normal_muaps_are_mostly_bi_or_triphasic_5_to_13_ms() -> None:
    units = _units("normal")
    assert len(units) > 100
    for u in units:
        assert 50 <= u.amplitude_uv <= 6500  # at the needle tip (the electrode sees pickup_gain of it)
        assert 5.0 <= muap_duration_ms(u.kernel, 10000.0) <= 13.0
        assert 2 <= count_phases(u.kernel) <= 4
    phases = np.array([count_phases(u.kernel) for u in units])
    assert np.mean(phases <= 3) >= 0.85  # polyphasic MUAPs are the exception in normal muscle


def test_als_muaps_are_few_large_long_and_polyphasic() -> None:
    units = _units("als")
    normal = _units("normal")
    assert all(u.amplitude_uv >= 1000 for u in units)
    assert np.median([u.amplitude_uv for u in units]) > 3 * np.median([u.amplitude_uv for u in normal])
    als_dur = [muap_duration_ms(u.kernel, 10000.0) for u in units]
    assert min(als_dur) >= 10.0 and np.median(als_dur) > np.median([u.duration_ms for u in normal]) + 3.0
    assert np.mean([count_phases(u.kernel) >= 4 for u in units]) >= 0.6
    assert np.mean([u.has_satellite for u in units]) > 0.3  # unstable late components
    # few units under the needle: reduced recruitment (1-4 against normal's 6-11)
    per_channel = [sum(u.channel == c for u in EMGSimulator("als", 8000.0, 4, seed=s).units if u.kind == "motor_unit")
                   for s in range(5) for c in range(4)]
    assert max(per_channel) <= 4


def test_myopathic_muaps_are_small_short_and_many() -> None:
    units = _units("myopathy", seeds=range(4))
    normal = _units("normal", seeds=range(4))
    assert all(muap_duration_ms(u.kernel, 10000.0) < 5.5 for u in units)
    assert np.median([u.amplitude_uv for u in units]) < 0.5 * np.median([u.amplitude_uv for u in normal])
    # several small units under the needle (the fit to EMGLAB put 7-11 per channel at the tip: the real myopathic
    # recordings show about 6 separable units per 10 s, docs/qemg.md)
    per_channel = [sum(u.channel == c for u in EMGSimulator("myopathy", 8000.0, 2, seed=s).units
                       if u.kind == "motor_unit") for s in range(4) for c in range(2)]
    assert min(per_channel) >= 7


def test_als_has_fibrillations_positive_sharp_waves_and_fasciculations_others_do_not() -> None:
    fibs = _units("als", "fibrillation")
    assert fibs and all(20 <= u.amplitude_uv <= 200 and u.duration_ms <= 5.0 for u in fibs)
    for u in fibs:  # initial positive phase
        k = u.kernel
        first = k[np.flatnonzero(np.abs(k) >= 0.1 * np.ptp(k))[0]]
        assert first > 0
    assert _units("als", "positive_sharp_wave")
    assert _units("als", "fasciculation")
    for cls in ("normal", "myopathy"):
        kinds = {u.kind for s in range(5) for u in EMGSimulator(cls, 8000.0, 2, seed=s).units}
        assert kinds == {"motor_unit"}


def test_firing_patterns_recruitment_and_spontaneous_activity() -> None:
    seconds = 30.0
    # normal: moderate rates, orderly recruitment (smaller units fire more: they were recruited earlier)
    sim = EMGSimulator("normal", 4000.0, seed=1, record_events=True)
    sim.generate(int(seconds * 4000))
    trains = _rates(sim, seconds)
    rates = np.array([len(trains.get(i, ())) / seconds for i, u in enumerate(sim.units)])
    assert 5.0 <= rates.max() <= 20.0
    thresholds = np.array([u.threshold for u in sim.units])
    assert np.all(np.diff(thresholds) > 0)  # sorted by size = recruitment order
    assert np.all(np.diff(rates) <= 1.0)  # later-recruited units fire less (tolerance for interval noise)
    assert np.all(np.diff([u.amplitude_uv for u in sim.units]) >= 0)

    # ALS: few units firing fast; fibrillations regular; fasciculations irregular
    sim = EMGSimulator("als", 4000.0, seed=2, record_events=True)
    sim.generate(int(seconds * 4000))
    trains = _rates(sim, seconds)
    mu = [i for i, u in enumerate(sim.units) if u.kind == "motor_unit"]
    als_rr = max(len(trains[i]) for i in mu) / seconds / len(mu)
    normal = EMGSimulator("normal", 4000.0, seed=2, record_events=True)
    normal.generate(int(seconds * 4000))
    n_trains = _rates(normal, seconds)
    n_mu = [i for i, u in enumerate(normal.units) if n_trains.get(i) is not None and len(n_trains[i]) > 0]
    normal_rr = max(len(n_trains[i]) for i in n_mu) / seconds / len(n_mu)
    assert als_rr > 2 * normal_rr  # reduced recruitment: fastest rate per active unit (Petajan's ratio)
    for i, u in enumerate(sim.units):
        isi = np.diff(trains[i])
        cv = isi.std() / isi.mean()
        if u.kind in ("fibrillation", "positive_sharp_wave"):
            assert cv < 0.1
        if u.kind == "fasciculation":
            assert len(isi) >= 3 and cv > 0.4

    # myopathy: early recruitment. At its low effort every unit fires; a normal muscle at the same effort has
    # recruited fewer than half of its units
    def active_share(cls: str, effort: float | None) -> float:
        sim = EMGSimulator(cls, 4000.0, seed=3, record_events=True, effort=effort)
        sim.generate(5 * 4000)
        mu = {i for i, u in enumerate(sim.units) if u.kind == "motor_unit"}
        return len(mu & set(_rates(sim, 5.0))) / len(mu)

    low = PROFILES["myopathy"].effort
    assert active_share("myopathy", None) == 1.0
    assert active_share("normal", low) < 0.5


def test_class_signals_differ_as_a_physiologist_expects() -> None:
    fs = 10000.0
    x = {cls: EMGSimulator(cls, fs, n_channels=4, seed=11).generate(int(fs * 5)) for cls in SIM_CLASSES}

    def loud_frames_db(cls: str) -> float:  # 90th percentile of 32 ms frame power, 20-500 Hz, mean of 6 seeds
        sos = signal.butter(4, [20.0, 500.0], "bandpass", fs=fs, output="sos")
        out = []
        for seed in range(6):
            y = signal.sosfilt(sos, EMGSimulator(cls, fs, seed=seed).generate(int(fs * 10))[:, 0].astype(np.float64))
            n = y.size // 320
            out.append(10 * np.log10(np.percentile(np.mean(y[: n * 320].reshape(n, 320) ** 2, axis=1), 90)))
        return float(np.mean(out))

    # large, sparse neurogenic potentials: the loud frames are louder than normal (EMGLAB: 6-9 dB below 500 Hz)
    assert loud_frames_db("als") > loud_frames_db("normal") + 4.0
    centroid = {cls: _centroid(v, fs) for cls, v in x.items()}
    assert centroid["myopathy"] > 1.5 * centroid["als"]
    assert centroid["myopathy"] > 1.5 * centroid["normal"]
    # (zero crossings of the noise-free signal no longer separate them: the fitted ALS units are polyphasic, 4-6
    # phases at up to 20 Hz, and cross zero as often as the myopathic pattern; the centroid above carries the
    # myopathic pattern's higher frequencies)


def test_every_potential_is_compact() -> None:
    """A kernel reaches at most three times the potential's duration (it is cut at 0.1% of its amplitude). A main
    spike much narrower than the other phases (``main_width`` under about 0.2) leaves the balanced positive phases
    below the 3% duration level, so the spike alone is stretched to the duration and the kernel runs for up to a
    second of near-zero tail: slow to render and no MUAP. The fit's bounds keep ``main_width`` at 0.2 or more."""
    for cls in SIM_CLASSES:
        for seed in range(6):
            for u in EMGSimulator(cls, 10000.0, n_channels=4, seed=seed).units:
                assert len(u.kernel) / 10.0 <= 3.0 * max(u.duration_ms, 1.0), (cls, seed, u.kind, len(u.kernel))


def test_class_profiles_carry_their_calibration() -> None:
    """The fitted background and spike sharpness are part of the profile (docs/qemg.md)."""
    fs = 8000.0
    for cls in SIM_CLASSES:
        sim = EMGSimulator(cls, fs, seed=3, noise_uv=5.0)
        clean = EMGSimulator(cls, fs, seed=3, noise_uv=0.0).generate(int(fs * 4))
        noise = sim.generate(int(fs * 4)) - clean
        assert float(noise.std()) == pytest.approx(5.0 * sim.profile.noise_gain, rel=0.15)
    sharp = render_potential(draw_muap_shape(np.random.default_rng(0), 3, main_width=0.2), 10000.0, 10.0, 100.0)
    blunt = render_potential(draw_muap_shape(np.random.default_rng(0), 3, main_width=0.75), 10000.0, 10.0, 100.0)
    assert np.abs(np.diff(sharp)).max() > 1.5 * np.abs(np.diff(blunt)).max()


# ----------------------------------------------------------------------------- noise, hum, crosstalk


def test_background_low_pass_keeps_its_level_and_drops_high_frequencies() -> None:
    """``noise_corner_hz``: the background of distant units loses its high frequencies, at the same RMS."""
    from dataclasses import replace

    from simulators import synth

    fs = 8000.0
    old = synth.PROFILES["normal"]
    try:
        ps = {}
        for corner in (None, 150.0):
            synth.PROFILES["normal"] = replace(old, noise_corner_hz=corner)
            clean = EMGSimulator("normal", fs, seed=3, noise_uv=0.0).generate(int(fs * 8))
            noise = (EMGSimulator("normal", fs, seed=3, noise_uv=5.0).generate(int(fs * 8)) - clean)[:, 0]
            assert float(noise.std()) == pytest.approx(5.0 * old.noise_gain, rel=0.15)
            f, p = signal.welch(noise.astype(np.float64), fs=fs, nperseg=4096)
            ps[corner] = p[(f > 30) & (f < 100)].mean() / p[(f > 1000) & (f < 3000)].mean()
    finally:
        synth.PROFILES["normal"] = old
    assert ps[150.0] > 10 * ps[None]



def test_noise_level_and_1_over_f_shape() -> None:
    fs = 8000.0
    clean = EMGSimulator("normal", fs, n_channels=2, seed=3, noise_uv=0.0).generate(int(fs * 8))
    noisy = EMGSimulator("normal", fs, n_channels=2, seed=3, noise_uv=5.0).generate(int(fs * 8))
    noise = (noisy - clean).astype(np.float64)  # the units do not depend on the noise setting
    gain = EMGSimulator("normal", fs, seed=3).profile.noise_gain  # the class's calibrated background
    assert 0.8 * 5.0 * gain < noise.std() < 1.2 * 5.0 * gain
    f, p = signal.welch(noise[:, 0], fs=fs, nperseg=4096)
    low = p[(f > 5) & (f < 20)].mean()
    high = p[(f > 1000) & (f < 3000)].mean()
    assert low > 5 * high


@pytest.mark.parametrize("mains", [50.0, 60.0])
def test_mains_hum_appears_only_when_asked(mains: float) -> None:
    fs = 8000.0
    off = EMGSimulator("myopathy", fs, seed=1).generate(int(fs * 4))[:, 0]
    on = EMGSimulator("myopathy", fs, seed=1, mains_hz=mains, mains_uv=30.0).generate(int(fs * 4))[:, 0]
    f, p = signal.welch(on - off, fs=fs, nperseg=8000)
    peak = f[np.argmax(p)]
    assert abs(peak - mains) <= 1.0
    assert p[np.argmin(abs(f - 3 * mains))] > 100 * p[np.argmin(abs(f - 3 * mains - 20))]  # 3rd harmonic
    silent = EMGSimulator("myopathy", fs, seed=1, mains_hz=mains)  # mains_uv 0: no hum
    assert np.allclose(silent.generate(800)[:, 0], off[:800])


def test_crosstalk_correlates_neighbours() -> None:
    def corr(ct: float) -> float:
        x = EMGSimulator("normal", 8000.0, n_channels=3, seed=4, crosstalk=ct).generate(8000 * 3).astype(float)
        return float(np.corrcoef(x[:, 0], x[:, 1])[0, 1])

    assert abs(corr(0.0)) < 0.1
    assert corr(0.3) > 0.2


# ----------------------------------------------------------------------------- arguments, helpers, speed


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(cls="dystrophy", fs=8000.0), "dystrophy"),
        (dict(cls="als", fs=100.0), "fs"),
        (dict(cls="als", fs=float("nan")), "fs"),
        (dict(cls="als", fs=8000.0, n_channels=0), "n_channels"),
        (dict(cls="als", fs=8000.0, seed=-1), "seed"),
        (dict(cls="als", fs=8000.0, mains_hz=5000.0), "mains_hz"),
        (dict(cls="als", fs=8000.0, noise_uv=-1.0), "noise_uv"),
        (dict(cls="als", fs=8000.0, crosstalk=0.9), "crosstalk"),
        (dict(cls="als", fs=8000.0, effort=2.0), "effort"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_field(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        EMGSimulator(**kwargs)


def test_class_names_aliases_and_mixed_fleets() -> None:
    assert normalize_class("ALS") == normalize_class("neurogenic") == "als"
    assert normalize_class("Myopathy") == "myopathy"
    assert [pick_class(MIXED, i) for i in range(6)] == ["normal", "als", "myopathy"] * 2
    assert pick_class("Normal", 5) == "normal"
    with pytest.raises(ConfigError, match="unknown"):
        pick_class("nope", 0)
    assert EMGSimulator("Myopathy", 8000.0).label == "Myopathy"


def test_generates_faster_than_real_time() -> None:
    sim = EMGSimulator("myopathy", 8000.0, n_channels=16, seed=0)
    t = time.perf_counter()
    x = sim.generate(8000 * 10)
    elapsed = time.perf_counter() - t
    assert x.shape == (80000, 16)
    assert elapsed < 3.0, f"10 s x 16 ch took {elapsed:.2f} s"  # typically ~0.1 s; loose for a busy machine


@pytest.mark.slow
@pytest.mark.parametrize("cls", SIM_CLASSES)
def test_256_channels_at_8khz_in_real_time(cls: str) -> None:
    sim = EMGSimulator(cls, 8000.0, n_channels=256, seed=0)
    t = time.perf_counter()
    sim.generate(8000 * 3)
    elapsed = time.perf_counter() - t
    assert elapsed < 3.0, f"3 s of 256 channels took {elapsed:.2f} s"


# ----------------------------------------------------------------------------- pacer


def _fake_time(overshoot: float = 0.0) -> tuple[ManualClock, list[float], object]:
    clock = ManualClock(100.0)
    sleeps: list[float] = []

    async def sleep(dt: float) -> None:
        sleeps.append(dt)
        clock.advance(dt + (overshoot if dt > 0 else 0.0))

    return clock, sleeps, sleep


async def test_pacer_targets_absolute_deadlines_without_drift() -> None:
    clock, sleeps, sleep = _fake_time(overshoot=0.0004)  # every sleep oversleeps by 0.4 ms
    pacer = Pacer(0.01, clock=clock, sleep=sleep)  # type: ignore[arg-type]
    for _ in range(1000):
        assert await pacer.wait_next() == 1
    # 1000 ticks of 10 ms: 10 s, plus one oversleep, not 1000 of them
    assert clock() - 100.0 == pytest.approx(10.0004, abs=1e-9)
    assert pacer.ticks == 1000 and pacer.late_ticks == 0
    assert sleeps[1] == pytest.approx(0.0096)  # the next sleep absorbs the previous lateness


async def test_pacer_skips_ahead_when_late_and_counts_it() -> None:
    clock, sleeps, sleep = _fake_time()
    pacer = Pacer(0.01, clock=clock, sleep=sleep, start=100.0)  # type: ignore[arg-type]
    assert await pacer.wait_next() == 1
    assert clock() == pytest.approx(100.01)
    clock.advance(0.055)  # a stall of 5.5 periods; the next deadline (100.02) was missed by 4.5 periods
    assert await pacer.wait_next() == 5
    assert pacer.late_ticks == 4 and pacer.ticks == 6
    assert sleeps[-1] == 0  # late ticks still yield to the event loop
    assert pacer.next_deadline == pytest.approx(100.07) and pacer.next_deadline > clock()
    assert await pacer.wait_next() == 1
    assert clock() == pytest.approx(100.07)  # back on the original grid


async def test_pacer_late_by_less_than_a_period_returns_at_once() -> None:
    clock, sleeps, sleep = _fake_time()
    pacer = Pacer(0.01, clock=clock, sleep=sleep, start=100.0)  # type: ignore[arg-type]
    clock.advance(0.015)
    assert await pacer.wait_next() == 1
    assert sleeps == [0] and pacer.late_ticks == 0
    assert await pacer.wait_next() == 1  # next deadline 100.02: sleeps 5 ms
    assert clock() == pytest.approx(100.02)


def test_pacer_rejects_bad_periods() -> None:
    for bad in (0, -1, float("inf"), "x"):
        with pytest.raises(ConfigError, match="period"):
            Pacer(bad)  # type: ignore[arg-type]
