"""Signal-quality gate, channel fusion and rolling estimates.

Three small pieces sit between the model's per-channel window probabilities and the published
:class:`streamemg.types.Estimate`:

* :func:`assess_quality` looks at a window's *raw* samples (native rate, unfiltered, µV) and gives each
  channel ``"ok"`` or the reason it cannot be trusted: ``"nan"``, ``"flat"``, ``"clipping"`` or
  ``"low_activity"``.
* :func:`fuse_channels` combines the class probabilities of the good channels of one window into one
  distribution (normalised geometric mean).
* :class:`RollingEstimator` smooths the fused window probabilities over stream time (exponential,
  time constant ``tau_s``) and keeps the recording-level mean over all usable windows.
* :class:`EstimateHistory` keeps a stream's recent estimates compactly (a ring of numbers, not objects) for
  the dashboard's stream view.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError
from .types import CLASS_NAMES, N_CLASSES

__all__ = [
    "QUALITY_CODES",
    "QUALITY_REASONS",
    "EstimateHistory",
    "EstimateSettings",
    "HistoryView",
    "QualitySettings",
    "RollingEstimator",
    "assess_quality",
    "fuse_channels",
    "top_class",
]

#: Per-channel quality flags, in the order the checks run (the first failing check names the channel).
QUALITY_REASONS: tuple[str, ...] = ("ok", "nan", "flat", "clipping", "low_activity")
#: Small-integer codes of the quality flags in :class:`EstimateHistory` (0 = ok; a lower non-zero code is a
#: worse reason, in the order the checks run; "no usable channel" and any other reason come last).
QUALITY_CODES: dict[str, int] = {q: i for i, q in enumerate((*QUALITY_REASONS, "no usable channel", "other"))}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _positive_float(owner: str, name: str, value: Any, fix: str, allow_zero: bool = False) -> float:
    ok = _is_number(value) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "above 0"
        raise ConfigError(f"{owner}.{name}={value!r}: give a finite number {bound} ({fix})")
    return float(value)


def _from_dict(cls: Any, d: Any) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__}: expected a table/dict of settings, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown field(s) {', '.join(map(repr, unknown))}; known fields are "
            f"{', '.join(sorted(known))}"
        )
    return cls(**d)


# --------------------------------------------------------------------------------------------------
# Quality gate


@dataclass(frozen=True)
class QualitySettings:
    """Thresholds of the per-channel signal-quality gate, for needle EMG in µV.

    The checks run on the raw window (native rate, before high-pass and notch), in this order; the
    first that fails names the channel:

    1. ``"nan"``: any non-finite sample (NaN/Inf, e.g. samples a device marked as missing).
    2. ``"flat"``: standard deviation below ``flat_uv``. A disconnected input, a held last value or a dead
       amplifier channel; even a needle at rest in healthy muscle shows several µV of noise.
    3. ``"clipping"``: the amplifier or ADC hit its rail. A rail shows up as samples sitting exactly
       at the window's maximum or minimum (within ``clip_rel_tol`` times the peak-to-peak range) for
       ``clip_min_run`` or more consecutive samples; if such runs cover at least ``clip_fraction`` of
       the window, the channel is clipping. Both conditions are needed: a lone peak sample is always at
       the maximum, and a coarsely quantised signal may touch its top level several times, but neither
       dwells there in runs for 1 % of the window.
    4. ``"low_activity"``: RMS about the mean (= standard deviation) below ``low_activity_uv``: there is
       signal, but less than the noise floor of a needle recording with the muscle active (the clinical
       sets here have per-recording std of 6.6 µV and up, mostly tens to hundreds), so the electrode is
       probably off or outside the muscle and a label would be a guess.

    Attributes:
        flat_uv: std (µV) below which a channel is flat. Default 1.0.
        clip_fraction: fraction of the window (0-1] in rail runs that makes it clipping. Default 0.01.
        clip_min_run: shortest run of consecutive at-rail samples that counts (>= 1). Default 3.
        clip_rel_tol: how close to the extreme counts as "at the rail", relative to the window's
            peak-to-peak range. Default 1e-6 (equal up to float rounding: rails are one ADC code).
        low_activity_uv: RMS (µV) below which a channel has too little activity. Default 5.0.
    """

    flat_uv: float = 1.0
    clip_fraction: float = 0.01
    clip_min_run: int = 3
    clip_rel_tol: float = 1e-6
    low_activity_uv: float = 5.0

    def __post_init__(self) -> None:
        own = "QualitySettings"
        object.__setattr__(self, "flat_uv", _positive_float(own, "flat_uv", self.flat_uv, "e.g. 1.0 µV", True))
        frac = self.clip_fraction
        if not (_is_number(frac) and 0 < frac <= 1):
            raise ConfigError(f"{own}.clip_fraction={frac!r}: give a fraction in (0, 1] (e.g. 0.01 for 1 %)")
        object.__setattr__(self, "clip_fraction", float(frac))
        run = self.clip_min_run
        if not isinstance(run, (int, np.integer)) or isinstance(run, bool) or run < 1:
            raise ConfigError(f"{own}.clip_min_run={run!r}: give a whole number of samples >= 1 (e.g. 3)")
        object.__setattr__(self, "clip_min_run", int(run))
        tol = _positive_float(own, "clip_rel_tol", self.clip_rel_tol, "e.g. 1e-6", True)
        if tol >= 0.5:
            raise ConfigError(f"{own}.clip_rel_tol={tol!r}: give a small fraction of the range below 0.5 (e.g. 1e-6)")
        object.__setattr__(self, "clip_rel_tol", tol)
        low = _positive_float(own, "low_activity_uv", self.low_activity_uv, "e.g. 5.0 µV", True)
        object.__setattr__(self, "low_activity_uv", low)

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict that :meth:`from_dict` reads back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QualitySettings:
        """Build from a dict; missing keys take their defaults. Raises ConfigError on unknown keys."""
        result: QualitySettings = _from_dict(cls, d)
        return result


def _samples_in_runs(mask: np.ndarray, min_run: int) -> np.ndarray:
    """Per row of ``mask`` (C, n) bool: how many True samples lie in runs of >= ``min_run`` Trues."""
    n = mask.shape[1]
    if min_run <= 1:
        return np.count_nonzero(mask, axis=1)
    if n < min_run:
        return np.zeros(mask.shape[0], dtype=np.int64)
    # full[:, i]: samples i .. i+min_run-1 are all True. A run of length L >= min_run holds
    # L - min_run + 1 full windows and starts one rising edge of `full`, so
    # (samples in such runs) = (full windows) + (min_run - 1) * (rising edges).
    csum = np.zeros((mask.shape[0], n + 1), dtype=np.int32 if n < 2**31 - 1 else np.int64)
    np.cumsum(mask, axis=1, out=csum[:, 1:])
    full = (csum[:, min_run:] - csum[:, :-min_run]) == min_run  # (C, n - min_run + 1)
    rising = np.count_nonzero(full[:, 1:] & ~full[:, :-1], axis=1) + full[:, 0]
    return np.count_nonzero(full, axis=1) + (min_run - 1) * rising


def _rail_fraction(raw: np.ndarray, rel_tol: float, min_run: int, skip_below: float = 0.0) -> np.ndarray:
    """Per-channel fraction of samples in runs of >= ``min_run`` consecutive samples at the max or min.

    Runs at the maximum and at the minimum are counted separately (a sample at the maximum followed
    by one at the minimum are two runs, not one).

    Args:
        raw: ``(C, n)`` finite samples, channel-major (rows contiguous for speed), n >= 1.
        rel_tol: closeness to the extreme, relative to the channel's peak-to-peak range.
        min_run: shortest run that counts.
        skip_below: shortcut for the gate: a channel whose fraction of at-rail samples (runs or not,
            an upper bound) is below this returns that bound instead of the exact run fraction; both
            are below ``skip_below``. Most windows touch their extremes only a few times, so the run
            analysis is skipped for them.

    Returns:
        ``(C,)`` float64 fractions in [0, 1].
    """
    n = raw.shape[1]
    hi = raw.max(axis=1, keepdims=True)
    lo = raw.min(axis=1, keepdims=True)
    tol = rel_tol * (hi.astype(np.float64) - lo)
    mask_hi = raw >= hi - tol
    mask_lo = raw <= lo + tol
    # For a constant channel every sample is at both extremes; count it once.
    bound = np.minimum(np.count_nonzero(mask_hi, axis=1) + np.count_nonzero(mask_lo, axis=1), n) / n
    rows = np.flatnonzero(bound >= skip_below)
    if rows.size == 0 or min_run <= 1:
        return bound
    in_runs = _samples_in_runs(mask_hi[rows], min_run) + _samples_in_runs(mask_lo[rows], min_run)
    result = bound.copy()
    result[rows] = np.minimum(in_runs, n) / n
    return result


def assess_quality(raw: np.ndarray, settings: QualitySettings) -> tuple[str, ...]:
    """Per-channel signal quality of one window.

    Args:
        raw: ``(n, C)`` samples in µV at the stream's native rate, the span of the window, unfiltered;
            may hold NaN/Inf.
        settings: thresholds (see :class:`QualitySettings`).

    Returns:
        One flag per channel: ``"ok"``, ``"nan"``, ``"flat"``, ``"clipping"`` or ``"low_activity"`` (the
        first failing check, in that order). A window with fewer than 2 samples shows no variation and
        is ``"flat"`` (``"nan"`` if a sample is non-finite).

    Cost: this runs once per window on the event loop, and at window sizes numpy's per-call overhead is most
    of it, so the common case (every sample finite) takes few calls over all channels at once: the float64
    sum (which also tells whether every sample is finite: NaN and Inf propagate into it), the deviations and
    their sum of squares, maximum, minimum and one count of at-rail samples per side; the exact run analysis
    of the rail check runs only for a channel whose at-rail samples reach ``clip_fraction``. Windows holding
    a non-finite sample take the general path. Both give the same flags (the standard deviation agrees to
    the last few bits).
    """
    raw = np.asarray(raw)
    if raw.ndim != 2:
        raise ValueError(f"assess_quality expects raw samples shaped (n, C); got {raw.shape}")
    n, n_ch = raw.shape
    if n < 2 or n_ch == 0:
        return _assess_general(raw, settings)
    rows = raw.T if raw.T.flags.c_contiguous else np.ascontiguousarray(raw.T)  # (C, n), rows contiguous
    total = rows.sum(axis=1, dtype=np.float64)
    if not np.isfinite(total).all():
        return _assess_general(raw, settings)
    dev = rows - (total / n)[:, None]  # float64
    std = np.sqrt(np.einsum("ij,ij->i", dev, dev) / n)
    hi = rows.max(axis=1)
    lo = rows.min(axis=1)
    tol = settings.clip_rel_tol * (hi.astype(np.float64) - lo)
    at_rail = np.count_nonzero(rows >= (hi - tol)[:, None], axis=1)
    at_rail += np.count_nonzero(rows <= (lo + tol)[:, None], axis=1)
    bound = np.minimum(at_rail, n) / n  # for a constant channel every sample is at both extremes: count it once
    flags = ["ok"] * n_ch
    for c in range(n_ch):
        if std[c] < settings.flat_uv:
            flags[c] = "flat"
        elif bound[c] >= settings.clip_fraction and _clipping(rows[c : c + 1], settings):
            flags[c] = "clipping"
        elif std[c] < settings.low_activity_uv:
            flags[c] = "low_activity"
    return tuple(flags)


def _clipping(row: np.ndarray, settings: QualitySettings) -> bool:
    """The exact rail-run analysis of one channel ``(1, n)``."""
    frac = _rail_fraction(row, settings.clip_rel_tol, settings.clip_min_run)[0]
    return bool(frac >= settings.clip_fraction)


def _assess_general(raw: np.ndarray, settings: QualitySettings) -> tuple[str, ...]:
    """:func:`assess_quality` for any input, non-finite samples included (the reference path)."""
    n, n_ch = raw.shape
    finite = np.isfinite(raw).all(axis=0) if n else np.ones(n_ch, dtype=bool)
    flags = ["ok"] * n_ch
    good = np.flatnonzero(finite)
    for c in np.flatnonzero(~finite):
        flags[c] = "nan"
    if good.size == 0:
        return tuple(flags)
    if n < 2:
        for c in good:
            flags[c] = "flat"
        return tuple(flags)
    # Channel-major rows make every reduction below run over contiguous memory (free when the caller
    # passes the transpose of a channel-major buffer, as RingBuffer.latest(...).T is).
    rows = np.ascontiguousarray(raw.T if good.size == n_ch else raw[:, good].T)
    std = rows.std(axis=1, dtype=np.float64)
    rail = _rail_fraction(rows, settings.clip_rel_tol, settings.clip_min_run, skip_below=settings.clip_fraction)
    for i, c in enumerate(good):
        if std[i] < settings.flat_uv:
            flags[c] = "flat"
        elif rail[i] >= settings.clip_fraction:
            flags[c] = "clipping"
        elif std[i] < settings.low_activity_uv:
            flags[c] = "low_activity"
    return tuple(flags)


# --------------------------------------------------------------------------------------------------
# Channel fusion


def fuse_channels(probs: np.ndarray, quality: Sequence[str], floor: float = 1e-6) -> np.ndarray:
    """Fuse the class probabilities of a window's good channels: normalised geometric mean.

    Why a geometric mean: if each channel gives independent evidence about the one diagnosis of the
    muscle, the evidence combines by *adding log-likelihoods* (a product of per-channel probabilities,
    under a flat prior). The plain sum grows with the channel count, which would make a 16-channel
    stream look far more certain than a 1-channel stream for the same per-channel output; dividing the
    summed log-probabilities by the number of channels (the geometric mean) keeps the result on the
    scale of one channel's calibrated probabilities, while still letting channels that agree
    reinforce each other and letting a channel that firmly rules a class out pull it down. The result
    is renormalised to sum to 1.

    Args:
        probs: ``(C, K)`` per-channel class probabilities.
        quality: ``C`` flags from :func:`assess_quality`; only ``"ok"`` channels (with finite
            probabilities) take part.
        floor: probabilities are clipped to ``[floor, 1]`` before the log, so that one channel's
            numerical zero cannot veto a class alone.

    Returns:
        ``(K,)`` float64 probabilities summing to 1; all NaN when no channel is usable.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"fuse_channels expects probabilities shaped (C, K); got {p.shape}")
    if len(quality) != p.shape[0]:
        raise ValueError(f"fuse_channels: {len(quality)} quality flags for {p.shape[0]} channels")
    use = np.array([q == "ok" for q in quality], dtype=bool) & np.isfinite(p).all(axis=1)
    if not use.any():
        return np.full(p.shape[1], np.nan)
    logp = np.log(np.clip(p[use], floor, 1.0)).mean(axis=0)
    fused = np.exp(logp - logp.max())
    fused /= fused.sum()
    return fused


def top_class(probs: np.ndarray, classes: Sequence[str] = CLASS_NAMES) -> tuple[str | None, float]:
    """Arg-max class and its probability; ``(None, 0.0)`` for a non-finite (withheld) vector."""
    p = np.asarray(probs, dtype=np.float64)
    if p.size == 0 or not np.isfinite(p).all():
        return None, 0.0
    k = int(np.argmax(p))
    return classes[k], float(p[k])


# --------------------------------------------------------------------------------------------------
# Rolling estimate


@dataclass(frozen=True)
class EstimateSettings:
    """Settings of the per-stream rolling estimate.

    Attributes:
        tau_s: time constant of the exponential smoothing, in seconds of stream time. After a step
            change of the window probabilities, the rolling estimate covers 63 % of the step in
            ``tau_s`` and 95 % in ``3 * tau_s``. Default 3.0.
    """

    tau_s: float = 3.0

    def __post_init__(self) -> None:
        tau = _positive_float("EstimateSettings", "tau_s", self.tau_s, "a time constant in seconds, e.g. 3.0")
        object.__setattr__(self, "tau_s", tau)

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict that :meth:`from_dict` reads back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EstimateSettings:
        """Build from a dict; missing keys take their defaults. Raises ConfigError on unknown keys."""
        result: EstimateSettings = _from_dict(cls, d)
        return result


class RollingEstimator:
    """Rolling and cumulative class probabilities of one stream.

    Args:
        settings: smoothing settings.
        n_classes: K, the length of every probability vector.

    Attributes:
        rolling: ``(K,)`` exponentially smoothed probabilities; NaN until the first valid window. For a
            valid window at stream time ``t``: ``rolling += alpha * (probs - rolling)`` with
            ``alpha = 1 - exp(-dt / tau_s)`` and ``dt`` the stream time since the previous window.
            Because alpha follows the elapsed time, the smoothing means the same thing at any hop size.
        cumulative: ``(K,)`` mean of all valid window probabilities (the recording-level estimate);
            NaN until the first valid window.
        n_valid: number of valid windows taken in.
        n_invalid: number of windows skipped (invalid, or valid with non-finite probabilities).

    Invalid windows (bad quality) do not change the estimates, but they do advance the time base:
    ``dt`` is measured from the previous window of *any* validity. So a stretch of bad signal holds
    the estimate frozen, and the first good window after it moves it by one ordinary hop's weight
    rather than replacing it (a ``dt`` measured from the last valid window would give alpha near 1
    after a long bad stretch, and one window would overwrite everything learnt before). A real gap
    in the stream (no windows at all) still lets alpha grow towards 1, so after a long silence the
    estimate follows the new data quickly. Time going backwards (a restarted source clock) counts
    as ``dt = 0`` for that window.
    """

    def __init__(self, settings: EstimateSettings, n_classes: int = N_CLASSES) -> None:
        if not isinstance(n_classes, (int, np.integer)) or isinstance(n_classes, bool) or n_classes < 1:
            raise ConfigError(f"RollingEstimator n_classes={n_classes!r}: give a whole number >= 1")
        self.settings = settings
        self.n_classes = int(n_classes)
        self.rolling = np.full(self.n_classes, np.nan)
        self.cumulative = np.full(self.n_classes, np.nan)
        self.n_valid = 0
        self.n_invalid = 0
        self._sum = np.zeros(self.n_classes)
        self._t_last: float | None = None

    def update(self, probs: np.ndarray, t: float, valid: bool) -> None:
        """Take in one window's fused probabilities.

        Args:
            probs: ``(K,)`` class probabilities of the window (ignored when ``valid`` is False; a valid
                window with non-finite entries is treated as invalid).
            t: stream time of the window's newest sample, seconds.
            valid: False when the quality gate withheld the window.
        """
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"RollingEstimator.update: the stream time t={t!r} must be finite seconds")
        dt = 0.0 if self._t_last is None else max(0.0, t - self._t_last)
        self._t_last = t
        p = np.asarray(probs, dtype=np.float64) if valid else None
        if p is not None and p.shape != (self.n_classes,):
            raise ValueError(f"RollingEstimator.update: probs shape {p.shape}, expected ({self.n_classes},)")
        if p is None or not np.isfinite(p).all():
            self.n_invalid += 1
            return
        self.n_valid += 1
        self._sum += p
        np.divide(self._sum, self.n_valid, out=self.cumulative)
        if self.n_valid == 1:
            self.rolling[:] = p
        else:
            alpha = -math.expm1(-dt / self.settings.tau_s)  # 1 - exp(-dt / tau), exact for small dt
            self.rolling += alpha * (p - self.rolling)

    def reset(self) -> None:
        """Back to the state after construction."""
        self.rolling[:] = np.nan
        self.cumulative[:] = np.nan
        self._sum[:] = 0.0
        self.n_valid = 0
        self.n_invalid = 0
        self._t_last = None


# --------------------------------------------------------------------------------------------------
# Estimate history (for the stream view)


@dataclass(frozen=True, slots=True, eq=False)
class HistoryView:
    """A stream's recent estimates, oldest first, as arrays (a copy: safe to read while the stream goes on).

    Attributes:
        times: ``(n,)`` stream time of each window's newest sample (s).
        window: ``(n, K)`` each window's fused probabilities (NaN when withheld).
        rolling: ``(n, K)`` the rolling probabilities after each window (NaN before the first usable one).
        quality: ``(n,)`` int8 code of each estimate's quality (:data:`QUALITY_CODES`; 0 = ok).
        channel_flag: ``(n,)`` int8 code of the worst flag among the window's channels (0 = every channel ok).
    """

    times: np.ndarray
    window: np.ndarray
    rolling: np.ndarray
    quality: np.ndarray
    channel_flag: np.ndarray

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @staticmethod
    def flag_name(code: int) -> str:
        """The quality flag of a code."""
        return _CODE_NAMES[code] if 0 <= code < len(_CODE_NAMES) else "other"

    @classmethod
    def from_estimates(cls, estimates: Sequence[Any], n_classes: int = N_CLASSES) -> HistoryView:
        """From :class:`~streamemg.types.Estimate` objects (tests, made-up data)."""
        hist = EstimateHistory(max(1, len(estimates)), n_classes)
        for e in estimates:
            hist.append(e.time, e.probabilities, e.rolling, e.quality, e.channel_quality)
        return hist.view()


_CODE_NAMES: tuple[str, ...] = tuple(QUALITY_CODES)


def quality_code(flag: str) -> int:
    """The :data:`QUALITY_CODES` code of a flag (unknown reasons: ``"other"``)."""
    return QUALITY_CODES.get(flag, QUALITY_CODES["other"])


class EstimateHistory:
    """The last ``capacity`` estimates of one stream as preallocated arrays (about 40 bytes per estimate).

    Kept per stream by the pipeline for the stream view; one :meth:`append` per decision writes a few numbers
    into the ring (no object is retained), :meth:`view` copies them out in time order for the one stream shown.

    Args:
        capacity: estimates kept (>= 1).
        n_classes: K.
    """

    def __init__(self, capacity: int, n_classes: int = N_CLASSES) -> None:
        if not (isinstance(capacity, (int, np.integer)) and not isinstance(capacity, bool) and capacity >= 1):
            raise ConfigError(f"EstimateHistory capacity={capacity!r}: give a whole number of estimates >= 1")
        self.capacity = int(capacity)
        self.n_classes = int(n_classes)
        self._t = np.full(self.capacity, np.nan)
        self._window = np.full((self.capacity, self.n_classes), np.nan, dtype=np.float32)
        self._rolling = np.full((self.capacity, self.n_classes), np.nan, dtype=np.float32)
        self._quality = np.zeros(self.capacity, dtype=np.int8)
        self._channel = np.zeros(self.capacity, dtype=np.int8)
        self.count = 0  # estimates appended so far

    def append(
        self,
        t: float,
        window: Sequence[float] | np.ndarray,
        rolling: Sequence[float] | np.ndarray,
        quality: str,
        channel_quality: Sequence[str] = (),
    ) -> None:
        """Record one estimate: its time (s), window and rolling probabilities ``(K,)`` and quality flags."""
        i = self.count % self.capacity
        self._t[i] = t
        self._window[i] = window
        self._rolling[i] = rolling
        self._quality[i] = 0 if quality == "ok" else quality_code(quality)
        worst = 0
        for q in channel_quality:
            if q != "ok":
                code = quality_code(q)
                worst = code if worst == 0 else min(worst, code)
        self._channel[i] = worst
        self.count += 1

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def view(self) -> HistoryView:
        """The kept estimates, oldest first (copies)."""
        n = len(self)
        start = self.count % self.capacity if self.count > self.capacity else 0
        order = (start + np.arange(n)) % self.capacity
        return HistoryView(
            times=self._t[order],
            window=self._window[order],
            rolling=self._rolling[order],
            quality=self._quality[order],
            channel_flag=self._channel[order],
        )
