"""Clinical measures of one motor-unit action potential (MUAP) template and of a unit's firing.

Definitions (written out in docs/qemg.md; all on the template, i.e. the running median of a unit's aligned
discharges, after its baseline was removed):

* **amplitude** (µV): peak-to-peak, maximum minus minimum of the potential (the template within its duration).
* **duration** (ms): from the first to the last sample at which the template departs from the baseline by
  at least ``max(rel * amplitude, k_noise * baseline noise)``, taken over the stretch that holds the main
  peak; stretches separated from it by more than ``gap_ms`` of baseline (late, linked potentials) are
  left out. Given the template's per-sample uncertainty, each end is then brought in past the samples where the
  smoothed template lies within it (other units' activity left in a template of few, scattered discharges).
* **phases**: baseline crossings inside the duration + 1; samples within the same threshold of the baseline
  are ignored, so noise around zero does not add crossings.
* **turns**: changes of direction inside the duration whose excursion from the previous turn is at least
  ``turn_uv`` (25 µV, Stålberg's convention).
* **area** (µV·ms): the rectified area inside the duration; **thickness** (ms) = area / amplitude.
* **firing rate** (Hz) and **CV**: from the inter-discharge intervals (IDIs) of the unit: IDIs outside
  0.5-1.5 times their median (missed or doubled detections) are left out; rate = 1 / mean IDI, CV = SD / mean.

A template whose potential cannot be told from its baseline (no sample reaches the threshold) or from its own
scatter has no duration (0): it is *not measured* (:attr:`WaveformMeasures.measured`), and its shape measures
are none of the potential's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

#: Turns are counted for excursions of at least this many µV (Stålberg's multi-MUP convention).
TURN_UV = 25.0
#: Polyphasic: more than this many phases.
POLYPHASIC_PHASES = 4


@dataclass(frozen=True, slots=True)
class WaveformMeasures:
    """The measures of one template (see the module docstring).

    Attributes:
        amplitude_uv: peak-to-peak, µV.
        duration_ms: baseline departure to return, ms.
        phases: baseline crossings + 1.
        turns: direction changes of at least ``TURN_UV``.
        area_uv_ms: rectified area inside the duration, µV·ms.
        thickness_ms: area / amplitude, ms.
        onset: sample index of the duration's first sample in the template; end: of its last sample.
        initial_positive: True when the first phase inside the duration is positive (recorded sign).
    """

    amplitude_uv: float
    duration_ms: float
    phases: int
    turns: int
    area_uv_ms: float
    thickness_ms: float
    onset: int
    end: int
    initial_positive: bool

    @property
    def measured(self) -> bool:
        """Whether the potential could be told from the template's baseline and scatter (it has a duration)."""
        return self.duration_ms > 0.0


def remove_baseline(template: npt.ArrayLike, edge: int) -> tuple[F64, float]:
    """Subtract the mean of the first and last ``edge`` samples; return (template, SD of those samples).

    Args:
        template: (L,) µV.
        edge: samples at each end that count as baseline (>= 1).
    """
    w = np.asarray(template, dtype=np.float64)
    e = max(1, min(int(edge), w.size // 4))
    ends = np.concatenate([w[:e], w[-e:]])
    base = float(ends.mean())
    return w - base, float(ends.std())


def waveform_measures(
    template: npt.ArrayLike,
    fs: float,
    *,
    noise_uv: float = 0.0,
    rel: float = 0.03,
    k_noise: float = 3.0,
    gap_ms: float = 1.5,
    turn_uv: float = TURN_UV,
    smooth_ms: float = 0.5,
    peak: int | None = None,
    uncertainty_uv: F64 | None = None,
) -> WaveformMeasures:
    """Measure one baseline-corrected template.

    Args:
        template: (L,) µV, baseline at 0 (see :func:`remove_baseline`).
        fs: sampling rate of the template, Hz.
        noise_uv: SD of the template's baseline, µV (raises the duration threshold above the noise).
        rel: duration threshold as a fraction of the amplitude.
        k_noise: duration threshold as a multiple of ``noise_uv``.
        gap_ms: a stretch of baseline longer than this ends the potential.
        turn_uv: smallest excursion that counts as a turn, µV.
        smooth_ms: boxcar over which the template is smoothed while following its ends out to the baseline.
        peak: index of the potential's own main peak (the analyser's aligning peak, where every discharge of the
            unit was aligned); None: the template's largest absolute value. The measures are those of the stretch
            holding it: activity of other units left elsewhere in the template (a neighbour that fired near most of
            a small unit's discharges, or one peeled off imperfectly) is not part of the potential.
        uncertainty_uv: (L,) how far each sample of the template may lie from the potential's own value, µV (the
            analyser gives 2 standard errors of its discharges' scatter there). Each end of the duration is then
            brought in past the samples where the smoothed template stays within it: what other units' activity
            left in a template of few, scattered discharges is not part of the potential. None: not used.
    """
    w = np.asarray(template, dtype=np.float64)
    if w.size < 3:
        return WaveformMeasures(0.0, 0.0, 0, 0, 0.0, 0.0, 0, 0, False)
    amp = float(w.max() - w.min())
    if amp <= 0:
        return WaveformMeasures(0.0, 0.0, 0, 0, 0.0, 0.0, 0, 0, False)
    if peak is None or not 0 <= peak < w.size:
        peak = int(np.argmax(np.abs(w)))
    gap = max(1, round(gap_ms * fs / 1000.0))
    span = _extent(w, fs, amp, peak, gap, noise_uv, rel, k_noise, smooth_ms, uncertainty_uv)
    if span is None:  # the baseline is noisier than the potential: nothing measurable
        return WaveformMeasures(amp, 0.0, 0, 0, 0.0, 0.0, 0, 0, False)
    onset, end = span
    # the amplitude is the potential's own: residue of other units elsewhere in the template is not part of it
    own = float(w[onset : end + 1].max() - w[onset : end + 1].min())
    if own < amp:
        span = _extent(w, fs, own, peak, gap, noise_uv, rel, k_noise, smooth_ms, uncertainty_uv)
        if span is not None:
            onset, end = span
        amp = float(w[onset : end + 1].max() - w[onset : end + 1].min())
        if amp <= 0:
            return WaveformMeasures(own, 0.0, 0, 0, 0.0, 0.0, 0, 0, False)
    thr = max(rel * amp, k_noise * noise_uv)
    seg = w[onset : end + 1]
    duration = (end - onset) * 1000.0 / fs
    big = seg[np.abs(seg) >= thr]
    phases = int(np.count_nonzero(np.diff(np.sign(big)) != 0)) + 1 if big.size else 0
    turns = count_turns(seg, turn_uv)
    area = float(np.abs(seg).sum()) * 1000.0 / fs
    return WaveformMeasures(
        amplitude_uv=amp,
        duration_ms=duration,
        phases=phases,
        turns=turns,
        area_uv_ms=area,
        thickness_ms=area / amp,
        onset=onset,
        end=end,
        initial_positive=bool(big.size and big[0] > 0),
    )


def _extent(
    w: F64, fs: float, amp: float, peak: int, gap: int, noise_uv: float, rel: float, k_noise: float, smooth_ms: float,
    uncertainty_uv: F64 | None = None,
) -> tuple[int, int] | None:
    """First and last sample of the potential holding ``peak`` for an amplitude ``amp`` (the duration's stretch,
    see :func:`waveform_measures`); None when no sample reaches the threshold."""
    thr = max(rel * amp, k_noise * noise_uv)
    above = np.flatnonzero(np.abs(w) >= thr)
    if above.size == 0:
        return None
    onset, end = _stretch(above, peak, gap)
    sm = _smooth(w, max(1, round(smooth_ms * fs / 1000.0)))
    if thr > rel * amp:  # the noise hides the rel level: follow each end out to where it reaches the baseline
        # the smoothed template is less noisy: phases that the raw noise bound hid but that stand clear of the
        # smoothed template's own noise (its first and last 2 ms) belong to the potential too
        e = max(1, min(round(0.002 * fs), w.size // 4))
        thr_sm = max(rel * amp, k_noise * float(np.concatenate([sm[:e], sm[-e:]]).std()))
        if thr_sm < thr:
            on2, end2 = _stretch(np.flatnonzero(np.abs(sm) >= thr_sm), peak, gap)
            onset, end = min(onset, on2), max(end, end2)
        onset = _to_baseline(sm, onset, -1, rel * amp)
        end = _to_baseline(sm, end, 1, rel * amp)
    if uncertainty_uv is not None:  # bring each end in past what lies within the template's own uncertainty
        clear = np.abs(sm) >= np.maximum(rel * amp, uncertainty_uv)
        lo, hi = min(peak, end), max(peak, onset)
        if lo > onset:
            part = clear[onset : lo + 1]
            onset += int(np.argmax(part)) if part.any() else part.size - 1
        if end > hi:
            part = clear[hi : end + 1][::-1]
            end -= int(np.argmax(part)) if part.any() else part.size - 1
    return onset, end


def _stretch(above: npt.NDArray[np.intp], peak: int, gap: int) -> tuple[int, int]:
    """First and last index of the run of ``above`` (increasing sample indices) that holds ``peak`` (or the first run
    ending at or after it), runs closer than ``gap`` samples merged."""
    if above.size == 0:
        return peak, peak
    breaks = np.flatnonzero(np.diff(above) > gap)
    starts = np.concatenate([[above[0]], above[breaks + 1]])
    ends = np.concatenate([above[breaks], [above[-1]]])
    which = min(int(np.searchsorted(ends, peak)), starts.size - 1)
    return int(starts[which]), int(ends[which])


def _smooth(w: F64, n: int) -> F64:
    """Centred moving average over ``n`` samples (ends averaged over what there is)."""
    if n <= 1:
        return w
    return np.asarray(np.convolve(w, np.ones(n), "same") / _smooth_norm(w.size, n), dtype=np.float64)


@functools.lru_cache(maxsize=16)
def _smooth_norm(size: int, n: int) -> F64:
    """How many samples each output of :func:`_smooth` averages (one template length and width per stream)."""
    out = np.convolve(np.ones(size), np.ones(n), "same")
    out.flags.writeable = False
    return out


def _to_baseline(sm: F64, start: int, step: int, level: float) -> int:
    """From ``start`` (a sample clearly off the baseline), the last sample in direction ``step`` before the smoothed
    template ``sm`` stops approaching the baseline: before it falls to ``level``, crosses zero or turns away again."""
    path = sm[start::-1] if step < 0 else sm[start:]
    if path.size < 2:
        return start
    mag = path * (1.0 if path[0] >= 0 else -1.0)  # distance from the baseline on the side the potential is on
    stop = (mag[1:] < level) | (np.diff(mag) > 0)
    k = int(np.argmax(stop)) if stop.any() else path.size - 1
    return start + step * k


def count_turns(x: npt.ArrayLike, min_uv: float) -> int:
    """Direction changes of ``x`` whose excursion from the previous turning point is at least ``min_uv``.

    Works on the local extrema only (a few dozen per potential), not per sample.
    """
    k = np.asarray(x, dtype=np.float64)
    if k.size < 3:
        return 0
    d = np.sign(np.diff(k))
    nz = np.flatnonzero(d)
    if nz.size < 2:
        return 0
    d = d[nz]
    idx = nz[np.flatnonzero(np.diff(d) != 0) + 1]  # samples at which the direction changed
    extrema = np.concatenate([[k[0]], k[idx], [k[-1]]])
    turns = 0
    ref = float(extrema[0])
    direction = 0.0
    for v in extrema[1:]:
        step = float(v) - ref
        if direction == 0.0:
            if abs(step) >= min_uv:
                direction, ref = math.copysign(1.0, step), float(v)
        elif step * direction > 0:
            ref = float(v)
        elif abs(step) >= min_uv:
            turns += 1
            direction, ref = -direction, float(v)
    return turns


def firing_stats(times_s: npt.ArrayLike, min_isi_s: float = 0.015) -> tuple[float, float, int]:
    """Firing rate (Hz), its coefficient of variation, and the number of intervals used.

    Missed discharges (superimposed on another unit's) make intervals of 2, 3... times the true one and
    doubled detections make very short ones, so the rate comes from the shortest consistent group of
    inter-discharge intervals (IDIs): IDIs under ``min_isi_s`` are dropped; the reference is the 25th
    percentile of the rest; then three times, the IDIs within 0.5-1.5 times the reference are kept and the
    reference becomes their median (a mean would follow the IDIs that the window cuts on one side only, and
    settle short of the true interval). Rate = 1 / the mean of the kept IDIs, CV = their SD / mean.

    Args:
        times_s: discharge times of one unit, s, increasing, shape (N,).

    Returns:
        (rate, cv, n_intervals); rate and cv are NaN with fewer than 3 usable intervals.
    """
    t = np.asarray(times_s, dtype=np.float64)
    nan = float("nan")
    if t.size < 4:
        return nan, nan, 0
    isi = np.diff(t)
    isi = isi[isi >= min_isi_s]
    if isi.size < 3:
        return nan, nan, 0
    ref = float(np.partition(isi, isi.size // 4)[isi.size // 4])  # about the 25th percentile
    kept = isi
    for _ in range(3):
        kept = isi[(isi >= 0.5 * ref) & (isi <= 1.5 * ref)]
        if kept.size < 3:
            return nan, nan, int(kept.size)
        ref = float(np.median(kept))
    mean = float(kept.mean())
    return 1.0 / mean, float(kept.std() / mean), int(kept.size)
