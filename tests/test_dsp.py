"""Tests of the streaming filters and the rational resampler."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from streamemg.dsp import FilterSettings, Resampler, StreamFilter, rational_ratio
from streamemg.errors import ConfigError, StreamRateError

RATES = (23437.5, 32768.0, 10000.0, 8000.0)
MODEL_FS = 8000.0


def tone(freq: float, fs: float, n: int, amp: float = 1.0, phase: float = 0.0) -> np.ndarray:
    t = np.arange(n) / fs
    return amp * np.sin(2 * np.pi * freq * t + phase)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def split_points(data: st.DataObject, n: int) -> list[int]:
    """Random uneven cut points (with empty pieces allowed) of a length-n signal."""
    cuts = data.draw(st.lists(st.integers(0, n), min_size=0, max_size=12))
    return sorted(cuts)


def run_chunked(proc: Callable[[np.ndarray], np.ndarray], x: np.ndarray, cuts: list[int]) -> np.ndarray:
    pieces = [proc(x[a:b]) for a, b in zip([0, *cuts], [*cuts, len(x)], strict=True)]
    return np.concatenate(pieces, axis=0)


# ---------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("highpass_hz", 0.0),
        ("highpass_hz", -5.0),
        ("highpass_hz", math.nan),
        ("highpass_hz", "20"),
        ("highpass_order", 0),
        ("highpass_order", 11),
        ("highpass_order", 2.0),
        ("highpass_order", True),
        ("notch_hz", 55.0),
        ("notch_hz", 100.0),
        ("notch_harmonics", 0),
        ("notch_harmonics", 1.5),
        ("notch_q", 0.0),
        ("notch_q", math.inf),
    ],
)
def test_filter_settings_reject_bad_values_naming_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        FilterSettings(**{field: value})
    assert repr(value) in str(info.value)


def test_filter_settings_accept_off_and_ints_and_round_trip() -> None:
    s = FilterSettings(highpass_hz=None, notch_hz=60, notch_harmonics=1)
    assert s.notch_hz == 60.0 and isinstance(s.notch_hz, float)
    assert FilterSettings.from_dict(s.to_dict()) == s
    assert FilterSettings.from_dict({}) == FilterSettings()
    assert FilterSettings().to_dict() == {
        "highpass_hz": 20.0,
        "highpass_order": 4,
        "notch_hz": 50.0,
        "notch_harmonics": 3,
        "notch_q": 30.0,
    }
    with pytest.raises(ConfigError, match="notch_frequency"):
        FilterSettings.from_dict({"notch_frequency": 50})


def test_highpass_must_be_below_nyquist() -> None:
    with pytest.raises(ConfigError, match="highpass_hz"):
        StreamFilter(FilterSettings(highpass_hz=4000.0), 8000.0, 1)
    with pytest.raises(ConfigError, match="n_channels"):
        StreamFilter(FilterSettings(), 8000.0, 0)


def test_only_notches_below_nyquist_are_built() -> None:
    # fs 250 Hz: notches at 50 and 100 Hz fit, 150 Hz does not; order-4 high-pass = 2 sections.
    f = StreamFilter(FilterSettings(notch_harmonics=3), 250.0, 1)
    assert f.n_sections == 2 + 2
    assert StreamFilter(FilterSettings(notch_hz=None), 8000.0, 1).n_sections == 2
    assert StreamFilter(FilterSettings(highpass_hz=None, notch_hz=None), 8000.0, 1).n_sections == 0


# ---------------------------------------------------------------------------------------------- filter


@pytest.mark.parametrize("fs", RATES)
@pytest.mark.parametrize("mains", [50.0, 60.0])
def test_notch_removes_mains_and_harmonics_and_passes_300hz(fs: float, mains: float) -> None:
    n = int(3.0 * fs)
    settle = int(1.5 * fs)  # Q=30 notches ring for ~0.2 s; judge the steady state only
    freqs = [mains * k for k in (1, 2, 3)]
    x = np.stack([tone(f, fs, n, amp=100.0) for f in [*freqs, 300.0]], axis=1).astype(np.float32)
    f = StreamFilter(FilterSettings(notch_hz=mains, notch_harmonics=3), fs, 4)
    y = f.process(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    for c, freq in enumerate(freqs):
        attenuation_db = 20 * np.log10(rms(y[settle:, c]) / rms(x[settle:, c]))
        assert attenuation_db < -30.0, (freq, attenuation_db)
    gain_300_db = 20 * np.log10(rms(y[settle:, 3]) / rms(x[settle:, 3]))
    assert abs(gain_300_db) < 1.0


def test_highpass_removes_dc_and_drift() -> None:
    fs = 10000.0
    n = int(4 * fs)
    t = np.arange(n) / fs
    drift = 1500.0 + 200.0 * t + 300.0 * np.sin(2 * np.pi * 0.7 * t)  # offset, ramp, slow wander (µV)
    emg = tone(300.0, fs, n, amp=50.0) + tone(1000.0, fs, n, amp=30.0)
    x = (drift + emg)[:, None].astype(np.float32)
    y = StreamFilter(FilterSettings(notch_hz=None), fs, 1).process(x)[:, 0]
    steady = y[int(1 * fs) :].astype(np.float64)
    spectrum = np.fft.rfft(steady) / len(steady)
    freqs = np.fft.rfftfreq(len(steady), 1 / fs)
    slow_uv = np.sqrt(2 * np.sum(np.abs(spectrum[freqs < 5.0]) ** 2))  # rms of content below 5 Hz
    assert abs(float(np.mean(steady))) < 1.0  # DC gone
    assert slow_uv < 2.0  # offset, ramp and wander (>1500 µV) gone
    assert rms(steady) == pytest.approx(rms(emg), rel=0.02)  # EMG band kept
    # The state starts at the first sample's steady state: no 1500 µV step ringing at the start.
    assert float(np.max(np.abs(y[:100]))) < 150.0


@settings(max_examples=25, deadline=None)
@given(data=st.data(), fs=st.sampled_from(RATES), n_channels=st.integers(1, 3))
def test_filter_chunked_equals_whole(data: st.DataObject, fs: float, n_channels: int) -> None:
    n = data.draw(st.integers(1, 3000))
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((n, n_channels)) * 50 + 300).astype(np.float32)
    cuts = split_points(data, n)
    whole = StreamFilter(FilterSettings(), fs, n_channels).process(x)
    chunked_filter = StreamFilter(FilterSettings(), fs, n_channels)
    chunked = run_chunked(chunked_filter.process, x, cuts)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-3)
    # reset() gives a fresh start: the same output again
    chunked_filter.reset()
    np.testing.assert_allclose(chunked_filter.process(x), whole, rtol=1e-5, atol=1e-3)


def test_filter_empty_input_and_wrong_shape() -> None:
    f = StreamFilter(FilterSettings(), 8000.0, 2)
    assert f.process([]).shape == (0, 2)
    assert f.process(np.zeros((0, 2))).dtype == np.float32
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        f.process(np.zeros((5, 3)))


def test_filter_survives_nonfinite_samples() -> None:
    fs = 8000.0
    x = (np.random.default_rng(0).standard_normal((4000, 2)) * 20).astype(np.float32)
    x[1000, 0] = np.nan
    x[2000:2010, 1] = np.inf
    f = StreamFilter(FilterSettings(), fs, 2)
    y = np.concatenate([f.process(x[:1500]), f.process(x[1500:])])
    assert np.isfinite(y).all()
    assert f.nonfinite == 11
    # The repaired sample is the last finite one: the output equals filtering the held signal.
    held = x.copy()
    held[1000, 0] = held[999, 0]
    held[2000:2010, 1] = held[1999, 1]
    np.testing.assert_allclose(y, StreamFilter(FilterSettings(), fs, 2).process(held), atol=1e-4)


def test_passthrough_filter_returns_float32_copy() -> None:
    f = StreamFilter(FilterSettings(highpass_hz=None, notch_hz=None), 8000.0, 1)
    x = np.arange(5, dtype=np.float64)[:, None]
    y = f.process(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x)


# ---------------------------------------------------------------------------------------------- resampler


@pytest.mark.parametrize(
    ("fs_in", "expected"),
    [(23437.5, (128, 375)), (32768.0, (125, 512)), (10000.0, (4, 5)), (8000.0, (1, 1)), (16000.0, (1, 2))],
)
def test_rational_ratio(fs_in: float, expected: tuple[int, int]) -> None:
    assert rational_ratio(fs_in, MODEL_FS) == expected
    r = Resampler(fs_in, MODEL_FS, 1)
    assert (r.up, r.down) == expected
    assert r.fs_out == MODEL_FS


def test_rational_ratio_limits_denominator() -> None:
    up, down = rational_ratio(44100.0 * 1.0001, 8000.0, max_den=1000)
    assert down <= 1000
    assert abs(up / down - 8000.0 / (44100.0 * 1.0001)) < 1e-5
    with pytest.raises(ConfigError, match="fs_in"):
        rational_ratio(0.0, 8000.0)


def test_upsampling_is_refused() -> None:
    with pytest.raises(StreamRateError, match="4000 Hz is below the model's rate 8000 Hz"):
        Resampler(4000.0, 8000.0, 1)


def test_identity_at_equal_rates() -> None:
    r = Resampler(8000.0, 8000.0, 2)
    x = np.random.default_rng(0).standard_normal((100, 2)).astype(np.float32)
    np.testing.assert_array_equal(r.process(x), x)
    assert r.delay_s == 0.0 and r.identity


def direct_reference(x: np.ndarray, taps: np.ndarray, up: int, down: int, m: int) -> np.ndarray:
    """The textbook definition, output by output: y[k] = sum_i x[i] * taps[k * down - i * up]."""
    y = np.zeros((m, x.shape[1]))
    for k in range(m):
        i = np.arange(len(x))
        lag = k * down - i * up
        use = (lag >= 0) & (lag < len(taps))
        y[k] = taps[lag[use]] @ x[i[use]].astype(np.float64)
    return y


@pytest.mark.parametrize("fs_in", RATES[:3])
def test_resampler_equals_direct_convolution(fs_in: float) -> None:
    x = np.random.default_rng(1).standard_normal((1500, 2)).astype(np.float32) * 100
    r = Resampler(fs_in, MODEL_FS, 2)
    y = r.process(x)
    assert y.dtype == np.float32
    assert y.shape == (math.ceil(1500 * r.up / r.down), 2)
    np.testing.assert_allclose(y, direct_reference(x, r.taps, r.up, r.down, len(y)), atol=2e-3)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), fs_in=st.sampled_from(RATES), n_channels=st.integers(1, 3))
def test_resampler_chunked_equals_whole(data: st.DataObject, fs_in: float, n_channels: int) -> None:
    n = data.draw(st.integers(1, 4000))
    x = np.random.default_rng(n).standard_normal((n, n_channels)).astype(np.float32) * 100
    cuts = split_points(data, n)
    whole_rs = Resampler(fs_in, MODEL_FS, n_channels)
    whole = whole_rs.process(x)
    chunked_rs = Resampler(fs_in, MODEL_FS, n_channels)
    lengths = []

    def step(block: np.ndarray) -> np.ndarray:
        expected = chunked_rs.output_length(len(block))
        out = chunked_rs.process(block)
        lengths.append((expected, len(out)))
        return out

    chunked = run_chunked(step, x, cuts)
    assert all(a == b for a, b in lengths)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-4)
    assert chunked_rs.total_in == n and chunked_rs.total_out == len(whole)
    chunked_rs.reset()
    np.testing.assert_allclose(chunked_rs.process(x), whole, rtol=1e-5, atol=1e-4)


def test_resampler_large_chunk_spans_several_blocks() -> None:
    # 16 channels at 32768 Hz: one vectorised block holds ~300 outputs, so 2 s of input needs ~50 blocks.
    x = np.random.default_rng(2).standard_normal((65536, 16)).astype(np.float32)
    whole = Resampler(32768.0, MODEL_FS, 16).process(x)
    r = Resampler(32768.0, MODEL_FS, 16)
    small = np.concatenate([r.process(x[i : i + 327]) for i in range(0, len(x), 327)])
    np.testing.assert_allclose(small, whole, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fs_in", RATES[:3])
def test_resampler_preserves_tone_with_known_delay(fs_in: float) -> None:
    freq, amp = 437.0, 200.0
    n = int(1.0 * fs_in)
    x = tone(freq, fs_in, n, amp)[:, None].astype(np.float32)
    r = Resampler(fs_in, MODEL_FS, 1)
    y = r.process(x)[:, 0].astype(np.float64)
    d = round(r.delay_s * MODEL_FS)
    assert d == pytest.approx(r.delay_s * MODEL_FS)  # a whole number of output samples
    steady = np.arange(2 * d, len(y))
    expected = amp * np.sin(2 * np.pi * freq * (steady / MODEL_FS - r.delay_s))
    np.testing.assert_allclose(y[steady], expected, atol=0.01 * amp)
    # Frequency and amplitude from the spectrum of the steady state.
    seg = y[steady] * np.hanning(len(steady))
    spectrum = np.abs(np.fft.rfft(seg, 8 * len(seg)))
    peak_hz = np.argmax(spectrum) * MODEL_FS / (8 * len(seg))
    assert peak_hz == pytest.approx(freq, abs=1.0)
    assert rms(y[steady]) == pytest.approx(amp / np.sqrt(2), rel=0.005)


@pytest.mark.parametrize("fs_in", RATES[:3])
def test_resampler_matches_resample_poly_in_steady_state(fs_in: float) -> None:
    x = (tone(123.0, fs_in, 20000, 80.0) + tone(2100.0, fs_in, 20000, 40.0))[:, None].astype(np.float32)
    r = Resampler(fs_in, MODEL_FS, 1)
    y = r.process(x)[:, 0]
    # resample_poly with the same taps is the zero-phase (non-causal) version: ours lags by d outputs.
    ref = signal.resample_poly(x[:, 0].astype(np.float64), r.up, r.down, window=r.taps / r.up)
    d = round(r.delay_s * MODEL_FS)
    np.testing.assert_allclose(y[2 * d : len(ref) - d], ref[d : len(ref) - 2 * d], atol=1e-3)


@pytest.mark.parametrize("fs_in", RATES[:3])
def test_resampler_suppresses_aliasing(fs_in: float) -> None:
    # 4700 Hz would fold to 3300 Hz at 8 kHz; the anti-alias filter must remove it (>= 60 dB).
    n = int(0.5 * fs_in)
    x = tone(4700.0, fs_in, n, 1000.0)[:, None].astype(np.float32)
    r = Resampler(fs_in, MODEL_FS, 1)
    y = r.process(x)[:, 0]
    d = round(r.delay_s * MODEL_FS)
    assert 20 * np.log10(rms(y[2 * d :]) / rms(x)) < -60.0


def test_resampler_shape_errors_and_empty() -> None:
    r = Resampler(10000.0, MODEL_FS, 2)
    assert r.process([]).shape == (0, 2)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        r.process(np.zeros((10, 1)))
    with pytest.raises(ConfigError, match="n_channels"):
        Resampler(10000.0, MODEL_FS, 0)
