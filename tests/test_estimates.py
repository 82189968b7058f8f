"""Tests of the quality gate, channel fusion and the rolling estimator."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from streamemg.errors import ConfigError
from streamemg.estimates import (
    EstimateSettings,
    QualitySettings,
    RollingEstimator,
    _rail_fraction,
    assess_quality,
    fuse_channels,
    top_class,
)

QS = QualitySettings()
FS = 23437.5


def noise(n: int, std: float, seed: int = 0, offset: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * std + offset).astype(np.float32)


def emg_like(n: int, seed: int = 0) -> np.ndarray:
    """Noise plus spiky bursts: tens of µV with peaks of a few hundred µV."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 15.0
    for start in rng.integers(0, n - 200, size=20):
        x[start : start + 200] += 300.0 * np.sin(np.linspace(0, 3 * np.pi, 200)) * np.hanning(200)
    return x.astype(np.float32)


# ---------------------------------------------------------------------------------------------- settings


def test_quality_defaults() -> None:
    assert (QS.flat_uv, QS.clip_fraction, QS.clip_min_run, QS.low_activity_uv) == (1.0, 0.01, 3, 5.0)
    assert QualitySettings.from_dict(QS.to_dict()) == QS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("flat_uv", -1.0),
        ("flat_uv", math.nan),
        ("clip_fraction", 0.0),
        ("clip_fraction", 1.5),
        ("clip_min_run", 0),
        ("clip_min_run", 2.5),
        ("clip_rel_tol", 0.7),
        ("low_activity_uv", -0.1),
        ("low_activity_uv", "5"),
    ],
)
def test_quality_settings_reject_bad_values(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        QualitySettings(**{field: value})


def test_estimate_settings_validation() -> None:
    assert EstimateSettings().tau_s == 3.0
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ConfigError, match="tau_s"):
            EstimateSettings(tau_s=bad)
    with pytest.raises(ConfigError, match="tau"):
        EstimateSettings.from_dict({"tau": 2.0})
    assert EstimateSettings.from_dict({"tau_s": 2}).tau_s == 2.0


# ---------------------------------------------------------------------------------------------- quality


def test_each_reason_on_its_own_channel() -> None:
    n = int(0.5 * FS)
    good = emg_like(n)
    with_nan = emg_like(n, 1)
    with_nan[100] = np.nan
    with_inf = emg_like(n, 2)
    with_inf[-1] = -np.inf
    flat = noise(n, 0.3, offset=-58.0)  # held offset with sub-µV jitter
    clipped = np.clip(emg_like(n, 3) * 4, -600.0, 600.0)
    quiet = noise(n, 3.0, offset=20.0)
    raw = np.stack([good, with_nan, with_inf, flat, clipped, quiet], axis=1)
    assert assess_quality(raw, QS) == ("ok", "nan", "nan", "flat", "clipping", "low_activity")


def test_checks_run_in_order() -> None:
    n = 5000
    # NaN wins over flat.
    flat_nan = np.zeros(n, dtype=np.float32)
    flat_nan[3] = np.nan
    # A small clipped signal (std < low_activity) is reported as clipping, not low activity.
    small_clipped = np.clip(noise(n, 4.0, seed=3), -2.0, 2.0)
    assert small_clipped.std() < QS.low_activity_uv
    # Exactly constant: flat, not clipping (every sample is at the max).
    constant = np.full(n, 12.5, dtype=np.float32)
    raw = np.stack([flat_nan, small_clipped, constant], axis=1)
    assert assess_quality(raw, QS) == ("nan", "clipping", "flat")


def test_dc_offset_alone_does_not_count_as_activity() -> None:
    # A large offset with 3 µV of noise: RMS about the mean is 3 µV -> low activity.
    raw = noise(10000, 3.0, offset=2000.0)[:, None]
    assert assess_quality(raw, QS) == ("low_activity",)


def test_single_peaks_and_quantised_signals_are_not_clipping() -> None:
    n = 12000
    spiky = emg_like(n, 5)
    # Coarse quantisation (0.78 µV steps, as in one clinical set) of a smooth, oversampled 50 Hz wave:
    # the top level is hit for several samples at every crest, but only briefly.
    t = np.arange(n) / 32768.0
    hum = np.round(300 * np.sin(2 * np.pi * 50 * t) / 0.78) * 0.78 + noise(n, 10.0)
    coarse = np.round(noise(n, 6.0, seed=7))  # integer-valued noise
    raw = np.stack([spiky, hum, coarse], axis=1).astype(np.float32)
    assert assess_quality(raw, QS) == ("ok", "ok", "ok")


def test_rail_fraction_hand_computed() -> None:
    # max 5 and min 0. Runs at the rail: [5,5,5] (3), [5,5] (2), [0,0,0,0] (4), two lone 0s.
    x = np.array([0, 5, 5, 5, 1, 5, 5, 2, 0, 0, 0, 0, 3, 0], dtype=np.float32)[None, :]
    assert _rail_fraction(x, 1e-6, 3)[0] == pytest.approx(7 / 14)  # runs >= 3: 3 + 4 samples
    assert _rail_fraction(x, 1e-6, 2)[0] == pytest.approx(9 / 14)  # runs >= 2: 3 + 2 + 4
    assert _rail_fraction(x, 1e-6, 1)[0] == pytest.approx(11 / 14)  # every sample at 0 or 5
    assert _rail_fraction(x, 1e-6, 5)[0] == 0.0
    # A run that reaches the end of the window counts too.
    y = np.array([1, 2, 9, 9, 9], dtype=np.float32)[None, :]
    assert _rail_fraction(y, 1e-6, 3)[0] == pytest.approx(3 / 5)
    # Several channels at once; the shortcut returns the at-rail bound where it is below skip_below.
    rows = np.stack([x[0], x[0, ::-1], np.arange(14, dtype=np.float32)])
    np.testing.assert_allclose(_rail_fraction(rows, 1e-6, 3), [7 / 14, 7 / 14, 0.0])
    np.testing.assert_allclose(_rail_fraction(rows, 1e-6, 3, skip_below=0.5), [7 / 14, 7 / 14, 2 / 14])
    np.testing.assert_allclose(_rail_fraction(rows, 1e-6, 3, skip_below=0.9), [11 / 14, 11 / 14, 2 / 14])


def test_clip_fraction_threshold() -> None:
    n = 10000
    x = noise(n, 20.0, seed=4)
    hi = float(x.max()) + 50.0
    x[1000:1095] = hi  # 95 samples = 0.95 % at the rail
    assert assess_quality(x[:, None], QS) == ("ok",)
    x[5000:5010] = hi  # 105 samples = 1.05 %
    assert assess_quality(x[:, None], QS) == ("clipping",)
    assert assess_quality(x[:, None], QualitySettings(clip_fraction=0.02)) == ("ok",)


def test_quality_edge_shapes() -> None:
    assert assess_quality(np.zeros((0, 2), dtype=np.float32), QS) == ("flat", "flat")
    assert assess_quality(np.array([[1.0, np.nan]], dtype=np.float32), QS) == ("flat", "nan")
    with pytest.raises(ValueError):
        assess_quality(np.zeros(10, dtype=np.float32), QS)


# ---------------------------------------------------------------------------------------------- fusion


def test_fuse_hand_computed_geometric_mean() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    # sqrt(0.1), sqrt(0.09), sqrt(0.1) -> normalised
    g = np.array([math.sqrt(0.1), 0.3, math.sqrt(0.1)])
    np.testing.assert_allclose(fuse_channels(probs, ("ok", "ok")), g / g.sum(), rtol=1e-12)


def test_fuse_agreeing_channels_reinforce_and_count_does_not_inflate() -> None:
    one = np.array([[0.6, 0.3, 0.1]])
    np.testing.assert_allclose(fuse_channels(one, ("ok",)), one[0])
    # The same evidence on 4 channels gives the same distribution (geometric mean, not product).
    np.testing.assert_allclose(fuse_channels(np.repeat(one, 4, axis=0), ("ok",) * 4), one[0])
    # A channel that firmly rules out a class pulls it below the arithmetic mean.
    probs = np.array([[0.45, 0.45, 0.10], [0.01, 0.50, 0.49]])
    fused = fuse_channels(probs, ("ok", "ok"))
    assert fused[0] < probs[:, 0].mean()
    assert fused.sum() == pytest.approx(1.0)


def test_fuse_uses_only_ok_channels() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.0, 0.0, 1.0], [np.nan, np.nan, np.nan]])
    fused = fuse_channels(probs, ("ok", "clipping", "ok"))  # NaN probs are skipped too
    np.testing.assert_allclose(fused, [0.7, 0.2, 0.1])
    assert np.isnan(fuse_channels(probs, ("flat", "nan", "low_activity"))).all()
    assert fuse_channels(probs, ("flat", "nan", "low_activity")).shape == (3,)
    with pytest.raises(ValueError, match="quality flags"):
        fuse_channels(probs, ("ok",))


def test_fuse_floor_limits_a_single_zero() -> None:
    probs = np.array([[0.0, 0.5, 0.5], [0.9, 0.05, 0.05]])
    fused = fuse_channels(probs, ("ok", "ok"), floor=1e-6)
    g = np.array([math.sqrt(1e-6 * 0.9), math.sqrt(0.025), math.sqrt(0.025)])
    np.testing.assert_allclose(fused, g / g.sum(), rtol=1e-9)


def test_top_class() -> None:
    assert top_class(np.array([0.2, 0.5, 0.3])) == ("ALS", 0.5)
    assert top_class(np.full(3, np.nan)) == (None, 0.0)


# ---------------------------------------------------------------------------------------------- rolling


def test_rolling_hand_computed() -> None:
    est = RollingEstimator(EstimateSettings(tau_s=2.0))
    assert np.isnan(est.rolling).all() and np.isnan(est.cumulative).all()
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([0.0, 1.0, 0.0])
    est.update(a, t=10.0, valid=True)  # first valid window: taken as is
    np.testing.assert_allclose(est.rolling, a)
    est.update(b, t=12.0, valid=True)  # dt = tau -> alpha = 1 - e^-1
    alpha = 1 - math.exp(-1)
    np.testing.assert_allclose(est.rolling, [1 - alpha, alpha, 0.0])
    np.testing.assert_allclose(est.cumulative, [0.5, 0.5, 0.0])
    est.update(b, t=12.5, valid=True)  # dt = 0.25 tau
    alpha2 = 1 - math.exp(-0.25)
    expected = np.array([1 - alpha, alpha, 0.0]) + alpha2 * (b - np.array([1 - alpha, alpha, 0.0]))
    np.testing.assert_allclose(est.rolling, expected)
    np.testing.assert_allclose(est.cumulative, [1 / 3, 2 / 3, 0.0])
    assert est.n_valid == 3
    assert est.rolling.sum() == pytest.approx(1.0)


def test_invalid_windows_hold_the_estimate_and_advance_time() -> None:
    est = RollingEstimator(EstimateSettings(tau_s=1.0))
    a = np.array([0.8, 0.1, 0.1])
    b = np.array([0.1, 0.1, 0.8])
    est.update(np.full(3, np.nan), t=0.0, valid=False)  # nothing before the first valid window
    assert np.isnan(est.rolling).all()
    est.update(a, t=1.0, valid=True)
    for t in np.arange(1.5, 30.0, 0.5):  # 29 s of bad signal
        est.update(b, t=float(t), valid=False)
        np.testing.assert_allclose(est.rolling, a)
    assert est.n_invalid == 1 + 57
    est.update(b, t=30.0, valid=True)  # dt = 0.5 s since the last (invalid) window, not 29 s
    alpha = 1 - math.exp(-0.5)
    np.testing.assert_allclose(est.rolling, a + alpha * (b - a))
    np.testing.assert_allclose(est.cumulative, (a + b) / 2)


def test_nonfinite_probs_and_time_going_back() -> None:
    est = RollingEstimator(EstimateSettings(tau_s=1.0))
    a = np.array([0.5, 0.25, 0.25])
    est.update(a, t=5.0, valid=True)
    est.update(np.array([np.nan, 0.5, 0.5]), t=6.0, valid=True)  # treated as invalid
    np.testing.assert_allclose(est.rolling, a)
    assert (est.n_valid, est.n_invalid) == (1, 1)
    est.update(np.array([0.0, 0.0, 1.0]), t=1.0, valid=True)  # clock went back: dt = 0, no move
    np.testing.assert_allclose(est.rolling, a)
    np.testing.assert_allclose(est.cumulative, (a + np.array([0.0, 0.0, 1.0])) / 2)
    with pytest.raises(ValueError, match="finite"):
        est.update(a, t=math.nan, valid=True)
    with pytest.raises(ValueError, match="shape"):
        est.update(np.ones(4) / 4, t=7.0, valid=True)


def test_rolling_converges_with_time_constant_regardless_of_hop() -> None:
    # After 3 tau of constant input the step is 95 % covered, at any window hop.
    for hop in (0.05, 0.25, 1.0):
        est = RollingEstimator(EstimateSettings(tau_s=2.0))
        est.update(np.array([1.0, 0.0, 0.0]), t=0.0, valid=True)
        for k in range(1, round(6.0 / hop) + 1):
            est.update(np.array([0.0, 1.0, 0.0]), t=k * hop, valid=True)
        assert est.rolling[1] == pytest.approx(1 - math.exp(-3), rel=1e-9)


def test_reset() -> None:
    est = RollingEstimator(EstimateSettings(), n_classes=2)
    est.update(np.array([0.3, 0.7]), t=1.0, valid=True)
    est.reset()
    assert np.isnan(est.rolling).all() and np.isnan(est.cumulative).all()
    assert (est.n_valid, est.n_invalid) == (0, 0)
    est.update(np.array([0.9, 0.1]), t=0.0, valid=True)
    np.testing.assert_allclose(est.rolling, [0.9, 0.1])
    np.testing.assert_allclose(est.cumulative, [0.9, 0.1])
    with pytest.raises(ConfigError, match="n_classes"):
        RollingEstimator(EstimateSettings(), n_classes=0)


# ---------------------------------------------------------------------------------------------- the fast path


def test_fast_path_gives_the_general_paths_flags() -> None:
    """Every-sample-finite windows take a path with fewer numpy calls; it must flag exactly as the general one."""
    from streamemg.estimates import _assess_general

    rng = np.random.default_rng(11)
    seen: set[str] = set()
    for trial in range(300):
        n = int(rng.integers(2, 3000))
        c = int(rng.integers(1, 5))
        kind = trial % 6
        x = rng.standard_normal((n, c)) * rng.choice([0.3, 3.0, 40.0, 400.0])
        x += rng.choice([0.0, 2500.0, -1e4])  # electrode offsets up to 10 mV
        if kind == 1:  # clipping: a rail on some channels
            x = np.clip(x * 5, np.percentile(x, 5), np.percentile(x, 95))
        elif kind == 2:  # a held value
            x[:, 0] = x[0, 0]
        elif kind == 3:  # coarse quantisation (touches its top level often, without dwelling there)
            x = np.round(x / 50.0) * 50.0
        elif kind == 4:  # a few rail samples: below the clipping fraction
            x[rng.integers(0, n, 3), 0] = x[:, 0].max()
        raw = (x.astype(np.float32) if trial % 2 else x).T.copy().T  # channel-major storage, as the pipeline's
        if trial % 3 == 0:
            raw = np.ascontiguousarray(raw)  # and sample-major
        want = _assess_general(np.asarray(raw), QS)
        assert assess_quality(raw, QS) == want, (trial, kind, n, c)
        seen.update(want)
    assert seen == {"ok", "flat", "clipping", "low_activity"}


# ---------------------------------------------------------------------------------------------- history


def test_estimate_history_is_a_bounded_ring_in_time_order() -> None:
    from streamemg.estimates import QUALITY_CODES, EstimateHistory, HistoryView

    h = EstimateHistory(4)
    assert len(h.view()) == 0
    for i in range(6):
        q = "clipping" if i == 4 else "ok"
        channels = ("ok", "flat", "nan") if i == 5 else ("ok", "ok", "ok")
        h.append(0.25 * i, (0.1, 0.2, 0.7), (0.2, 0.3, i / 10), q, channels)
    v = h.view()
    assert len(v) == 4 and len(h) == 4 and h.count == 6
    np.testing.assert_array_equal(v.times, [0.5, 0.75, 1.0, 1.25])  # the oldest two were overwritten
    np.testing.assert_allclose(v.rolling[:, 2], [0.2, 0.3, 0.4, 0.5], rtol=1e-6)
    assert v.quality.tolist() == [0, 0, QUALITY_CODES["clipping"], 0]
    assert v.channel_flag.tolist() == [0, 0, 0, QUALITY_CODES["nan"]]  # the worst channel flag: nan before flat
    assert HistoryView.flag_name(QUALITY_CODES["low_activity"]) == "low_activity"
    v.times[:] = 0  # a view is a copy
    assert h.view().times[0] == 0.5
    nbytes = sum(a.nbytes for a in (h._t, h._window, h._rolling, h._quality, h._channel))
    assert nbytes / h.capacity <= 40  # compact: no object kept per estimate
    with pytest.raises(ConfigError, match="capacity"):
        EstimateHistory(0)
