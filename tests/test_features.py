"""Features against an independent scipy/numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from streamemg.errors import ConfigError
from streamemg.features import Delta, FeatureSettings, LogSpectrogram, SpectralFeatures


def scipy_log_spectrogram(x: np.ndarray, s: FeatureSettings) -> np.ndarray:
    """(T,) -> (F, N) via scipy.signal.spectrogram (one-sided PSD, Hann, no detrend, no padding)."""
    freqs, _, sxx = signal.spectrogram(
        x.astype(np.float64),
        fs=s.fs,
        window=signal.get_window("hann", s.win_length),
        nperseg=s.win_length,
        noverlap=s.win_length - s.hop_length,
        nfft=s.n_fft,
        detrend=False,
        scaling="density",
        mode="psd",
    )
    keep = (freqs >= s.fmin - 1e-9) & (freqs <= s.fmax + 1e-9)
    out = np.log(sxx[keep] + s.log_floor)
    if s.normalize == "window":
        out = out - out.mean()
    return out


def numpy_delta(c: np.ndarray, width: int) -> np.ndarray:
    """HTK regression delta with explicit loops, edge frames replicated. c: (F, N)."""
    n_frames = c.shape[1]
    denom = 2 * sum(n * n for n in range(1, width + 1))
    out = np.zeros_like(c, dtype=np.float64)
    for t in range(n_frames):
        acc = np.zeros(c.shape[0])
        for n in range(1, width + 1):
            acc += n * (c[:, min(t + n, n_frames - 1)] - c[:, max(t - n, 0)])
        out[:, t] = acc / denom
    return out


def emg_like(rng: np.random.Generator, b: int, t: int) -> np.ndarray:
    """Random test signals in µV: white noise plus a few sinusoids, varying scale."""
    x = rng.normal(size=(b, t)) * rng.uniform(5, 500, size=(b, 1))
    tt = np.arange(t) / 8000.0
    x += 100 * np.sin(2 * np.pi * rng.uniform(30, 1500, size=(b, 1)) * tt)
    return x.astype(np.float32)


SETTINGS = [
    FeatureSettings(),
    FeatureSettings(n_fft=512, win_length=400, hop_length=160, fmin=0.0, fmax=4000.0),
    FeatureSettings(fs=10000.0, n_fft=128, win_length=128, hop_length=64, fmin=50.0, fmax=3000.0, delta_width=3),
    FeatureSettings(normalize="window", delta_width=1),
]


@pytest.mark.parametrize("s", SETTINGS, ids=lambda s: f"nfft{s.n_fft}-win{s.win_length}-{s.normalize}")
def test_log_spectrogram_matches_scipy(s: FeatureSettings) -> None:
    rng = np.random.default_rng(1)
    x = emg_like(rng, 3, 4000)
    got = LogSpectrogram(s)(torch.from_numpy(x)).numpy()
    assert got.shape == (3, s.n_freqs, s.n_frames(4000))
    for i in range(3):
        ref = scipy_log_spectrogram(x[i], s)
        assert ref.shape == got[i].shape
        np.testing.assert_allclose(got[i], ref, atol=2e-3, rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(
    n_fft=st.sampled_from([64, 128, 256]),
    shrink=st.integers(0, 32),
    hop=st.integers(16, 96),
    t=st.integers(300, 1200),
    seed=st.integers(0, 2**16),
)
def test_log_spectrogram_matches_scipy_random_settings(n_fft: int, shrink: int, hop: int, t: int, seed: int) -> None:
    s = FeatureSettings(n_fft=n_fft, win_length=n_fft - shrink, hop_length=hop, fmin=0.0, fmax=4000.0)
    x = emg_like(np.random.default_rng(seed), 1, t)
    got = LogSpectrogram(s)(torch.from_numpy(x)).numpy()[0]
    np.testing.assert_allclose(got, scipy_log_spectrogram(x[0], s), atol=2e-3, rtol=1e-4)


def test_pure_tone_peaks_in_its_bin() -> None:
    s = FeatureSettings()
    f0 = 40 * s.fs / s.n_fft  # exactly on bin 40 (1250 Hz)
    x = (200 * np.sin(2 * np.pi * f0 * np.arange(8000) / s.fs)).astype(np.float32)
    ls = LogSpectrogram(s)(torch.from_numpy(x)[None])[0]
    peak = s.frequencies[ls.mean(dim=1).argmax().item()]
    assert peak == pytest.approx(f0)


def test_kept_bins() -> None:
    s = FeatureSettings()  # 31.25 Hz spacing, 20..2000 Hz -> bins 1..64
    assert s.bins == (1, 65)
    assert s.n_freqs == 64
    assert s.frequencies[0] == pytest.approx(31.25) and s.frequencies[-1] == pytest.approx(2000.0)
    assert s.n_frames(8000) == 61


@pytest.mark.parametrize("width", [1, 2, 4])
def test_delta_matches_htk_reference(width: int) -> None:
    rng = np.random.default_rng(width)
    c = rng.normal(size=(2, 5, 9)).astype(np.float32)
    got = Delta(width)(torch.from_numpy(c)).numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i], numpy_delta(c[i], width), atol=1e-5)


def test_delta_of_a_ramp_is_its_slope_and_of_a_constant_zero() -> None:
    ramp = torch.arange(20, dtype=torch.float32).repeat(1, 3, 1) * 0.5
    d = Delta(2)(ramp)
    torch.testing.assert_close(d[..., 2:-2], torch.full_like(d[..., 2:-2], 0.5))
    assert torch.all(Delta(3)(torch.full((1, 4, 2), 7.0)) == 0)
    assert Delta(2)(torch.ones(1, 3, 1)).shape == (1, 3, 1)  # a single frame works


def test_spectral_features_shape_and_planes() -> None:
    s = FeatureSettings()
    feats = SpectralFeatures(s)
    x = torch.from_numpy(emg_like(np.random.default_rng(0), 4, 8000))
    y = feats(x)
    assert y.shape == (4, *feats.output_shape(8000)) == (4, 2, 64, 61)
    torch.testing.assert_close(y[:, 0], feats.spectrogram(x))
    torch.testing.assert_close(y[:, 1], feats.delta(y[:, 0]))


@pytest.mark.parametrize("normalize", ["none", "window"])
def test_batched_equals_stacked_singles(normalize: str) -> None:
    feats = SpectralFeatures(FeatureSettings(normalize=normalize))
    x = torch.from_numpy(emg_like(np.random.default_rng(3), 7, 8000))
    batched = feats(x)
    singles = torch.cat([feats(x[i : i + 1]) for i in range(7)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


def test_window_normalisation_gives_gain_invariance() -> None:
    feats = SpectralFeatures(FeatureSettings(normalize="window", log_floor=1e-9))
    x = torch.from_numpy(emg_like(np.random.default_rng(4), 2, 8000))
    a, b = feats(x), feats(x * 37.0)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    assert a[:, 0].mean(dim=(1, 2)).abs().max() < 1e-4
    plain = SpectralFeatures(FeatureSettings())
    assert (plain(x * 37.0)[:, 0] - plain(x)[:, 0]).mean() == pytest.approx(2 * np.log(37.0), rel=1e-3)


def test_silence_is_finite() -> None:
    y = SpectralFeatures(FeatureSettings(normalize="window"))(torch.zeros(2, 8000))
    assert torch.isfinite(y).all()


def test_basis_is_a_buffer_that_moves_but_is_not_saved() -> None:
    feats = SpectralFeatures(FeatureSettings())
    names = [n for n, _ in feats.named_buffers()]
    assert names == ["spectrogram.basis", "delta.kernel"]
    assert feats.state_dict() == {}  # derived from settings: never stale in a saved bundle
    moved = feats.to(torch.float64)
    assert moved.spectrogram.basis.dtype == torch.float64


def test_settings_round_trip_and_validation() -> None:
    s = FeatureSettings(n_fft=512, win_length=300, normalize="window")
    assert FeatureSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ConfigError, match="unknown field"):
        FeatureSettings.from_dict({"nfft": 3})
    bad = {
        "fs": -1.0,
        "n_fft": 0,
        "win_length": 1024,
        "hop_length": 2.5,
        "fmax": 5000.0,
        "log_floor": 0.0,
        "normalize": "global",
        "delta_width": 0,
    }
    for name, value in bad.items():
        with pytest.raises(ConfigError, match=f"FeatureSettings.{name}="):
            FeatureSettings(**{name: value})
    with pytest.raises(ConfigError, match="shorter than"):
        FeatureSettings().n_frames(100)
