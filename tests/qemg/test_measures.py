"""QEMG measures of single waveforms and firing trains, against the simulator's own definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulators.synth import count_phases, draw_muap_shape, muap_duration_ms, render_potential
from streamemg.errors import ConfigError
from streamemg.qemg import QemgSettings, firing_stats, waveform_measures
from streamemg.qemg.measures import count_turns, remove_baseline


@pytest.mark.parametrize("n_phases", [2, 3, 5, 7])
def test_noise_free_kernel_measures_equal_the_simulator_definitions(n_phases: int) -> None:
    fs = 10000.0
    rng = np.random.default_rng(n_phases)
    k = render_potential(draw_muap_shape(rng, n_phases), fs, duration_ms=9.0, amplitude_uv=400.0)
    w = np.concatenate([np.zeros(200), k, np.zeros(200)])
    m = waveform_measures(w, fs)
    assert m.amplitude_uv == pytest.approx(400.0, rel=1e-9)
    assert m.duration_ms == pytest.approx(muap_duration_ms(k, fs), abs=0.11)
    assert m.phases == count_phases(k)
    assert m.area_uv_ms == pytest.approx(np.abs(w[m.onset : m.end + 1]).sum() * 1000.0 / fs)
    assert m.thickness_ms == pytest.approx(m.area_uv_ms / m.amplitude_uv)


def test_turns_need_25_uv_excursions_and_duration_ends_are_followed_under_the_noise() -> None:
    # up to 120 (the 20 µV dip at 80 is no turn), down to -60 (turn 1; the 10 µV bump is none), up to 0 (turn 2)
    x = np.array([0, 100, 80, 120, -50, -40, -60, 0], dtype=float)
    assert count_turns(x, 25.0) == 2
    assert count_turns(x, 15.0) == 4
    fs = 10000.0
    k = render_potential(draw_muap_shape(np.random.default_rng(1), 3), fs, 10.0, 200.0)
    w = np.concatenate([np.zeros(300), k, np.zeros(300)])
    quiet = waveform_measures(w, fs)
    assert quiet.duration_ms == pytest.approx(10.0, abs=0.15)
    # a 30 µV noise bound instead of the 6 µV (3%) level: the ends are followed out to the baseline, not cut
    assert waveform_measures(w, fs, noise_uv=10.0).duration_ms == pytest.approx(quiet.duration_ms, abs=0.3)
    # with real noise on the template (3 µV, low-passed like averaged background) the duration stays within 2 ms
    rng = np.random.default_rng(2)
    noise = np.convolve(rng.normal(0.0, 3.0, w.size), np.ones(10) / np.sqrt(10), "same")
    out, sd = remove_baseline(w + noise, 20)
    assert abs(waveform_measures(out, fs, noise_uv=sd).duration_ms - 10.0) < 2.0


def test_baseline_is_removed_from_the_segment_ends() -> None:
    w = np.full(100, 7.0)
    w[40:60] += np.hanning(20) * 50
    out, sd = remove_baseline(w, 10)
    assert out[:10] == pytest.approx(0.0) and sd == pytest.approx(0.0)


def test_firing_rate_survives_missed_and_doubled_discharges() -> None:
    rng = np.random.default_rng(0)
    isi = rng.normal(1 / 12.0, 0.1 / 12.0, 120)  # 12 Hz, CV 0.1
    t = np.cumsum(isi)
    keep = rng.uniform(size=t.size) > 0.3  # 30% missed (superimposed on other units)
    t2 = np.sort(np.concatenate([t[keep], t[::17] + 0.004]))  # and a few doubled detections 4 ms later
    rate, cv, n = firing_stats(t2)
    assert rate == pytest.approx(12.0, abs=0.7)
    assert 0.03 < cv < 0.2 and n >= 20
    assert all(math.isnan(v) for v in firing_stats([0.0, 0.1, 0.2])[:2])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"k_detect": -1}, "k_detect"), ({"max_templates": 0}, "max_templates"), ({"notch_hz": 55}, "notch_hz"),
     ({"match_ms": 20.0}, "match_ms"), ({"horizon_s": float("nan")}, "horizon_s")],
)
def test_bad_settings_name_the_field(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        QemgSettings(**kwargs)


def test_short_polyphasic_potential_is_not_cut_to_its_main_spike_under_template_noise() -> None:
    """A myopathic-like MUAP (a 9 µV lead, a 100 µV spike, a 9 µV tail; 3-4 ms) on a template whose noise (SD 3 µV)
    puts the noise bound (3 SD) above its small phases: they still belong to the potential (they stand clear of the
    smoothed template's noise), so the duration is not the spike's 0.6 ms (the simulator's seed-1 myopathy unit 11
    read 0.6 ms for 3.4 ms before this)."""
    fs = 10000.0
    t = np.arange(-60, 60) / fs * 1000.0  # ms
    k = (9.0 * np.exp(-(((t + 0.9) / 0.45) ** 2)) - 100.0 * np.exp(-((t / 0.18) ** 2))
         + 9.0 * np.exp(-(((t - 1.0) / 0.6) ** 2)))
    w = np.concatenate([np.zeros(150), k, np.zeros(150)])
    quiet = waveform_measures(w, fs)
    rng = np.random.default_rng(0)
    noise = np.convolve(rng.normal(0.0, 3.6, w.size), np.ones(6) / np.sqrt(6), "same")
    out, sd = remove_baseline(w + noise, 20)
    assert 3.0 * sd > 9.0  # the noise bound hides the small phases
    m = waveform_measures(out, fs, noise_uv=sd)
    assert quiet.duration_ms > 2.5
    assert abs(m.duration_ms - quiet.duration_ms) < 1.0, (m.duration_ms, quiet.duration_ms)


def test_duration_ends_are_brought_in_past_what_lies_within_the_templates_uncertainty() -> None:
    """A short potential (myopathic: 4.5 ms, 120 µV) whose template holds a slow 6 µV wander after it, where other
    units' activity fell on a few of its discharges: the wander reaches the 3% level (3.6 µV) and the duration ran on
    over it. Where the template's uncertainty there is larger than the wander, the end stops at the potential's own;
    where it is small (the wander is then part of the potential: a late phase every discharge has), it stays."""
    fs = 10000.0
    k = render_potential(draw_muap_shape(np.random.default_rng(4), 3), fs, 4.5, 120.0)
    w = np.concatenate([np.zeros(150), k, np.zeros(250)])
    peak = 150 + int(np.argmax(np.abs(k)))
    clean = waveform_measures(w, fs, peak=peak)
    own = muap_duration_ms(k, fs)
    assert clean.duration_ms == pytest.approx(own, abs=0.11)
    start = clean.end - 10
    t = np.arange(80)
    w[start : start + 80] += 6.0 * np.sin(np.pi * t / 80)  # 8 ms bump from the potential's last 1 ms on
    ran_on = waveform_measures(w, fs, peak=peak)
    assert ran_on.duration_ms > own + 4.0  # the wander counted
    unsure = np.full(w.size, 1.0)
    unsure[start + 10 : start + 85] = 8.0
    m = waveform_measures(w, fs, peak=peak, uncertainty_uv=unsure)
    assert m.duration_ms == pytest.approx(own, abs=0.3)
    sure = waveform_measures(w, fs, peak=peak, uncertainty_uv=np.full(w.size, 1.0))
    assert sure.duration_ms == pytest.approx(ran_on.duration_ms)


def test_a_potential_not_clear_of_its_baseline_is_a_unit_but_not_in_the_waveform_means() -> None:
    """A template whose potential does not stand out of its baseline's noise has no duration: it is not measured.
    It still counts as a unit (and in the firing measures), but its zeros do not drag the stream's waveform means
    (seen on real ALS recordings: 18 of 522 units read 0 ms before)."""
    from streamemg.qemg import QemgSummary
    from streamemg.qemg.analyser import UnitMeasures

    fs = 10000.0
    k = render_potential(draw_muap_shape(np.random.default_rng(1), 3), fs, duration_ms=10.0, amplitude_uv=300.0)
    clear = waveform_measures(np.concatenate([np.zeros(200), k, np.zeros(200)]), fs)
    buried = waveform_measures(np.concatenate([np.zeros(200), 0.1 * k, np.zeros(200)]), fs, noise_uv=30.0)
    assert clear.measured and clear.duration_ms > 5.0
    assert not buried.measured and buried.duration_ms == 0.0 and buried.phases == 0

    def unit(w: object, hz: float) -> UnitMeasures:
        return UnitMeasures(0, w, 20, hz, 0.1, "muap", np.zeros(1), np.zeros(20))  # type: ignore[arg-type]

    d = QemgSummary((unit(clear, 10.0), unit(buried, 20.0)), 50.0, (3.0,), 1, 10.0).to_dict()
    assert d["units"] == 2
    assert d["firing_hz"] == 15.0
    assert d["duration_ms"] == round(clear.duration_ms, 2) and d["phases"] == clear.phases
    assert d["amplitude_uv"] == round(clear.amplitude_uv, 1) and d["polyphasic_pct"] == 0.0
