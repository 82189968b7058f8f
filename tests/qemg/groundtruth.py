"""Score QEMG against the simulator's ground truth (shared by the tests and the docs' table).

A true unit is *in view* when it fires at least ``min_fires`` times in the analysed span. A found unit can be
credited to a true unit when it is time-locked to the true unit's discharges (at least 60% of the found unit's
discharges at one fixed lag, within ±0.5 ms, from a true discharge: its precision). Of the found units that can,
the true unit is credited with the one of the highest *agreement*, matched / (found + true - matched)
discharges, the usual score of spike-sorting comparisons: the found unit that holds most of the true unit's
discharges and few others, not a fragment of a few of its discharges that happens to be purer.
:attr:`UnitScore.fragments` counts the others (the unit split over several templates). A true unit counts as
recovered when the found unit credited to it has its amplitude within 10% and its duration within 2 ms; the
firing rate is compared with the true rate while the unit fires (:func:`true_rate`: its pauses left out). A
unit is also marked *clearly present* (:attr:`UnitScore.clear`) when its true peak-to-peak at the electrode is
above the analyser's detection threshold; that is a second figure beside the full one, never a replacement for
it.

A unit has a *twin* (:attr:`UnitScore.twin`) when another unit in view has, over the analyser's own matching window
(``match_ms`` either side of the main peak, both aligned there), a shape that the analyser's own match rule would
accept for it: the two are one template to a matcher that works on that window alone, and they tend to come out
as one unit holding both trains (so neither reaches the 60% precision that credits it); the analyser's wider
choosing window (``choose_ms``) separates some of them. The figure without the twins says how
much of the shortfall is that, not a replacement either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulators.synth import EMGSimulator, muap_duration_ms
from streamemg.qemg import QemgAnalyser, QemgSettings
from streamemg.qemg.templates import look_alikes


@dataclass
class UnitScore:
    cls: str
    seed: int
    unit: int
    true_amp: float
    true_dur: float
    true_rate: float
    fires: int
    found_amp: float = float("nan")
    found_dur: float = float("nan")
    found_rate: float = float("nan")
    threshold: float = float("nan")  # the analyser's detection threshold at the end, µV
    noise: float = float("nan")  # the analyser's baseline noise at the end, µV
    recall: float = 0.0  # share of the true discharges that the credited found unit holds
    fragments: int = 0  # other found units time-locked to this true unit
    twin: bool = False  # another unit in view matches this one's shape over the matching window (module docstring)

    @property
    def clear(self) -> bool:
        """Clearly present: the unit's true peak-to-peak at the electrode is above the detection threshold."""
        return bool(self.true_amp > self.threshold)

    @property
    def found(self) -> bool:
        return bool(np.isfinite(self.found_amp))

    @property
    def amp_ok(self) -> bool:
        return self.found and abs(self.found_amp / self.true_amp - 1.0) <= 0.10

    @property
    def dur_ok(self) -> bool:
        return self.found and abs(self.found_dur - self.true_dur) <= 2.0

    @property
    def rate_ok(self) -> bool:
        return self.found and np.isfinite(self.found_rate) and abs(self.found_rate - self.true_rate) <= 1.0


def true_rate(t: np.ndarray) -> float:
    """A unit's true firing rate while it fires (Hz): 1 / the mean of its true inter-discharge intervals, leaving out
    the pauses (intervals over twice the median) of a unit that the effort's slow swing de-recruits for a while.
    (The mean rate over the whole span would count those pauses: a unit firing at 7 Hz for 2 of 10 s would be
    scored against 1.5 Hz.)"""
    isi = np.diff(t)
    if isi.size == 0:
        return float("nan")
    kept = isi[isi <= 2.0 * np.median(isi)]
    return float(1.0 / kept.mean())


def _locked(found_t: np.ndarray, true_t: np.ndarray, tol_s: float = 0.0005) -> int:
    """How many of the found discharges sit at one fixed lag (within ``tol_s``) from a true discharge."""
    if true_t.size < 2 or found_t.size == 0:
        return 0
    pos = np.clip(np.searchsorted(true_t, found_t), 1, true_t.size - 1)
    a = found_t - true_t[pos - 1]
    b = found_t - true_t[pos]
    lag = np.where(np.abs(a) <= np.abs(b), a, b)
    near = lag[(lag >= -0.005) & (lag < 0.04)]
    if near.size == 0:
        return 0
    med = float(np.median(near))
    return int(np.count_nonzero(np.abs(lag - med) <= tol_s))


def score(
    cls: str, seed: int, seconds: float = 10.0, fs: float = 10000.0, min_fires: int = 5,
    settings: QemgSettings | None = None, noise_uv: float = 5.0, effort: float | None = None,
) -> list[UnitScore]:
    """Simulate ``seconds`` of ``cls``, analyse it in 0.25 s hops, and score every motor unit in view."""
    sim = EMGSimulator(cls, fs, seed=seed, record_events=True, noise_uv=noise_uv, effort=effort)
    x = sim.generate(round(seconds * fs))
    an = QemgAnalyser(fs, 1, settings)
    hop = round(0.25 * fs)
    for i in range(0, x.shape[0], hop):
        an.process(x[i : i + hop])
    summary = an.summary(fresh=True)
    units = np.concatenate([u for u, _ in sim.event_log])
    pos = np.concatenate([p for _, p in sim.event_log])
    gain = sim.profile.pickup_gain
    thr = float(an.detector.threshold[0])
    st = an.settings
    half = max(2, round(st.match_ms * fs / 1000.0))
    step = max(1, round(fs / st.match_rate_hz))
    allow = st.k_noise * len(range(-half, half + 1, step)) * float(an.detector.noise[0]) ** 2
    windows: dict[int, np.ndarray] = {}
    out: list[UnitScore] = []
    for gid, info in enumerate(sim.units):
        if info.kind != "motor_unit":
            continue
        t = np.sort(pos[units == gid]) / fs
        if t.size < min_fires:
            continue
        kernel = info.kernel * gain
        pk = int(np.argmax(np.abs(kernel)))
        padded = np.concatenate([np.zeros(half), kernel, np.zeros(half)])
        windows[gid] = padded[pk : pk + 2 * half + 1 : step]
        s = UnitScore(
            cls, seed, gid, float(np.ptp(kernel)), muap_duration_ms(kernel, fs), true_rate(t), int(t.size),
            threshold=thr, noise=float(an.detector.noise[0]),
        )
        best = 0.0
        for u in summary.units:
            m = _locked(u.times_s, t)
            if m < 0.6 * u.times_s.size:
                continue
            s.fragments += 1
            agreement = m / (u.times_s.size + t.size - m)
            if agreement > best:
                best = agreement
                s.found_amp, s.found_dur, s.found_rate = u.waveform.amplitude_uv, u.waveform.duration_ms, u.firing_hz
                s.recall = min(1.0, m / t.size)
        s.fragments = max(0, s.fragments - 1)
        out.append(s)
    has_twin = twins([windows[s.unit] for s in out], st.tol, allow)
    for s, t in zip(out, has_twin, strict=True):
        s.twin = t
    return out


def twins(windows: list[np.ndarray], tol: float, allow: float) -> list[bool]:
    """For each unit's matching window, whether another unit's window passes the analyser's match rule against it
    (squared distance under ``tol`` times the larger energy plus the noise allowance ``allow``), either way."""
    if not windows:
        return []
    return [bool(x) for x in look_alikes(np.asarray(windows, dtype=np.float64), tol, allow).any(axis=1)]
