"""Synthetic needle EMG built from motor-unit physiology.

What a concentric needle electrode sees
---------------------------------------
A motor unit is one motor neuron plus the few dozen to few hundred muscle fibres it innervates. Every
discharge of the neuron makes all of its fibres fire almost together; the needle, sitting among the fibres of
several units, picks up the summed extracellular currents of one unit's fibres as a *motor-unit action
potential* (MUAP). Fibres close to the needle dominate the sharp main spike; fibres farther away and the
spread of end-plate positions and conduction times shape the slower initial and terminal phases. Each unit
therefore has its own fixed waveform, repeated at every discharge, and the recording is the sum of the
repeating waveforms of all active units plus the amplifier's noise and mains pick-up.

The shape model used here
-------------------------
A MUAP is written as a short sequence of *phases*: Gaussian lobes of alternating polarity laid side by side,
each with its own width and height (a sum of zeroth-order Hermite-Gaussian functions). Two lobes give a
biphasic potential, three the classic triphasic one (small positive onset as the depolarisation approaches,
a large negative spike as it passes the tip, a slower positive return as it travels away); more lobes give a
polyphasic potential, as produced when the fibres of a unit fire out of step. Optional narrow same-polarity
bumps ("serrations") add turns without extra baseline crossings. The positive lobes are rescaled so the
potential has zero net area, as an extracellular potential of a propagating wave should. The whole shape
is then stretched in time to the unit's duration and scaled to its peak-to-peak amplitude.

Duration is measured the way it is defined here everywhere (:func:`muap_duration_ms`): the time from the
first to the last sample whose magnitude reaches :data:`DURATION_REL` of the peak-to-peak amplitude.

Firing
------
Each unit discharges as a renewal process: inter-spike intervals are gamma distributed around the unit's
current mean interval with a coefficient of variation of about 0.1-0.25 for voluntary firing (motor neurons
fire fairly regularly), near 0.03 for fibrillating fibres (pacemaker-like, very regular) and 1 for
fasciculations (random, Poisson-like). Voluntary drive ("effort", 0..1) varies slowly over time. Units are
recruited in order of size (Henneman's size principle): each unit has a recruitment threshold that grows
with its amplitude, starts firing at a minimum rate when the effort passes its threshold and speeds up with
the effort above it, up to a ceiling. Rate changes use time rescaling: the remaining part of the current
interval is kept in units of mean intervals, so a unit whose rate changes mid-interval stays a proper
renewal process.

The three classes
-----------------
* **Normal**: bi- or triphasic MUAPs, 5-12 ms long, 0.1-2 mV, about a dozen units under the needle, recruited
  one by one as effort rises, firing at moderate rates (6-20 Hz).
* **ALS (neurogenic)**: motor neurons die and the survivors adopt the orphaned fibres by collateral
  sprouting, so the few remaining units are large (2-10 mV), long (12-20+ ms) and polyphasic (the new sprouts
  conduct slowly and out of step). The new terminals transmit unreliably, so late components come and go
  between discharges (unstable "jiggly" MUAPs with blocking satellites). With few units left, each must fire
  fast (20-30 Hz) before another is recruited: reduced recruitment. Denervated single fibres fire on their
  own: fibrillation potentials (brief 1-5 ms, 20-200 µV, initial positive, very regular 1-15 Hz) and
  positive sharp waves (a sharp positive deflection with a long shallow negative tail). Whole units also
  discharge spontaneously and irregularly: fasciculations.
* **Myopathy**: the motor neurons survive but their fibres shrink or die, so each unit holds fewer and
  smaller fibres of mixed sizes: MUAPs are small (< 0.5 mV), short (< 5 ms) and polyphasic. Each unit gives
  little force, so many units are recruited at once even at low effort (early recruitment), giving a dense,
  low-amplitude, high-frequency interference pattern.

Everything else
---------------
Background noise is white (amplifier) plus a 1/f-like component (electrode and tissue), and optional mains
hum (fundamental plus 2nd, 3rd and 5th harmonics). Each channel has its own units; channels share the
effort profile (one contraction) and, with ``crosstalk > 0``, see a fraction of their neighbours' units.

Implementation
--------------
Time is cut into fixed frames (about 100 ms) anchored at sample 0. Each frame is computed once from its own
random stream (seeded by ``(seed, kind, frame index)``) and the state carried from the previous frame
(remaining interval of each unit, filter state, the tails of MUAPs that run past the frame end), so the
output does not depend on how it is requested: ``generate(a)`` then ``generate(b)`` equals
``generate(a + b)`` exactly. Inside a frame everything is vectorised: one gamma draw per unit and interval,
and one ``np.bincount`` scatter of all MUAP kernels of the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import signal

from streamemg.errors import ConfigError

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

#: The simulator's class keys, in the order of :data:`streamemg.types.CLASS_NAMES`.
SIM_CLASSES: Final[tuple[str, ...]] = ("normal", "als", "myopathy")
#: class key -> label used by the classifier (``CLASS_NAMES``).
CLASS_LABELS: Final[dict[str, str]] = {"normal": "Normal", "als": "ALS", "myopathy": "Myopathy"}
_ALIASES: Final[dict[str, str]] = {
    "normal": "normal",
    "healthy": "normal",
    "control": "normal",
    "als": "als",
    "neurogenic": "als",
    "neuropathy": "als",
    "myopathy": "myopathy",
    "myopathic": "myopathy",
}
#: Spec accepted by :func:`pick_class` that cycles through the classes by device index.
MIXED: Final[str] = "mixed"

#: A MUAP's duration is the span over which its magnitude reaches this fraction of its peak-to-peak amplitude.
DURATION_REL: Final[float] = 0.03
#: Kernels are cut where the magnitude falls below this fraction of the peak-to-peak amplitude.
_SUPPORT_REL: Final[float] = 1e-3
#: Lobe width / Gaussian standard deviation; 2.6 keeps neighbouring phases distinct but touching.
_SHARPNESS: Final[float] = 2.6
#: Frame length in seconds (rates and effort are constant within a frame).
FRAME_S: Final[float] = 0.1
#: Lowest supported sampling rate, Hz.
MIN_FS: Final[float] = 500.0
MAX_CHANNELS: Final[int] = 4096


def normalize_class(name: str) -> str:
    """Map a class name or alias (``"ALS"``, ``"neurogenic"``, ``"Myopathy"``...) to its key in SIM_CLASSES.

    Raises:
        ConfigError: unknown name.
    """
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        raise ConfigError(
            f"simulated class {name!r} is unknown; use one of {', '.join(SIM_CLASSES)} "
            "(aliases: healthy, neurogenic, myopathic)"
        )
    return key


def pick_class(spec: str, index: int) -> str:
    """The class for device number ``index`` (0-based) of a fleet described by ``spec``.

    ``spec`` is a class name (every device gets it) or ``"mixed"`` (devices cycle through normal, als,
    myopathy, so any three consecutive devices cover all classes).
    """
    if str(spec).strip().lower() == MIXED:
        return SIM_CLASSES[int(index) % len(SIM_CLASSES)]
    return normalize_class(spec)


# ---------------------------------------------------------------------------------------------------------
# MUAP shape model
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PotentialShape:
    """A potential as a sum of Gaussian lobes in normalised time (unitless, rescaled when rendered).

    Attributes:
        centers: lobe centres, shape (P,).
        sigmas: lobe standard deviations, shape (P,), > 0.
        amps: signed lobe heights, shape (P,).
    """

    centers: F64
    sigmas: F64
    amps: F64

    def __call__(self, t: npt.ArrayLike) -> F64:
        """Evaluate the shape at normalised times ``t`` (any shape); returns the same shape."""
        t = np.asarray(t, dtype=np.float64)
        z = (t[..., None] - self.centers) / self.sigmas
        return np.asarray(np.exp(-0.5 * z * z) @ self.amps, dtype=np.float64)

    def balanced(self) -> PotentialShape:
        """The same shape with its positive lobes rescaled so the net area is zero."""
        area = self.amps * self.sigmas
        pos = area[area > 0].sum()
        neg = -area[area < 0].sum()
        if pos <= 0 or neg <= 0:
            return self
        amps = np.where(self.amps > 0, self.amps * (neg / pos), self.amps)
        return PotentialShape(self.centers, self.sigmas, amps)


def phases_from_widths(widths: F64, amps: F64) -> PotentialShape:
    """Lay lobes of the given widths side by side (no gaps); sigma = width / 2.6."""
    widths = np.asarray(widths, dtype=np.float64)
    centers = np.cumsum(widths) - widths / 2.0
    return PotentialShape(centers, widths / _SHARPNESS, np.asarray(amps, dtype=np.float64))


def draw_muap_shape(
    rng: np.random.Generator, n_phases: int, serrations: int = 0, main_width: float = 0.75
) -> PotentialShape:
    """A random MUAP shape with ``n_phases`` phases (>= 2), balanced to zero area.

    Biphasic: negative spike then a slow positive return (needle at the end-plate zone, no approach phase).
    Triphasic and more: small positive onset, alternating phases, one dominant negative spike, slow positive
    terminal phase. ``serrations`` narrow same-polarity bumps add turns. ``main_width`` is the width of the
    main spike relative to the other phases (smaller: a sharper spike, more high-frequency power).
    """
    if n_phases < 2:
        raise ValueError("a MUAP has at least 2 phases")
    widths = rng.uniform(0.7, 1.3, n_phases)
    if n_phases == 2:
        signs = np.array([-1.0, 1.0])
        amps = np.array([1.0, rng.uniform(0.3, 0.6)])
        main = 0
    else:
        signs = np.where(np.arange(n_phases) % 2 == 0, 1.0, -1.0)
        amps = rng.uniform(0.35, 0.9, n_phases)
        amps[0] = rng.uniform(0.15, 0.45)  # approach phase
        amps[-1] = rng.uniform(0.25, 0.5)  # terminal phase
        negatives = np.flatnonzero(signs < 0)
        inner = negatives[negatives < n_phases - 1]
        main = int(rng.choice(inner)) if inner.size else 1
        amps[main] = 1.0
    widths[main] *= main_width  # the main spike is the steepest phase
    widths[-1] *= rng.uniform(1.5, 2.2)  # slow terminal phase
    shape = phases_from_widths(widths, signs * amps)
    if serrations > 0:
        which = rng.integers(0, n_phases, serrations)
        c = shape.centers[which] + rng.uniform(-0.35, 0.35, serrations) * widths[which]
        s = 0.18 * widths[which]
        a = np.sign(shape.amps[which]) * rng.uniform(0.1, 0.25, serrations) * np.abs(shape.amps[which])
        shape = PotentialShape(
            np.concatenate([shape.centers, c]), np.concatenate([shape.sigmas, s]), np.concatenate([shape.amps, a])
        )
    return shape.balanced()


def render_potential(shape: PotentialShape, fs: float, duration_ms: float, amplitude_uv: float) -> F64:
    """Sample ``shape`` at ``fs`` so that its duration is ``duration_ms`` and its peak-to-peak ``amplitude_uv``.

    Returns:
        float64 kernel shaped (L,), µV, starting where the potential leaves the baseline.
    """
    lo = float(np.min(shape.centers - 4.5 * shape.sigmas))
    hi = float(np.max(shape.centers + 4.5 * shape.sigmas))
    grid = np.linspace(lo, hi, 401)
    f = shape(grid)
    pp = float(f.max() - f.min())
    above = np.flatnonzero(np.abs(f) >= DURATION_REL * pp)
    d0 = float(grid[above[-1]] - grid[above[0]])
    support = np.flatnonzero(np.abs(f) >= _SUPPORT_REL * pp)
    g_lo, g_hi = float(grid[support[0]]), float(grid[support[-1]])
    ms_per_unit = duration_ms / d0
    step = 1000.0 / (fs * ms_per_unit)  # normalised time per sample
    n = math.ceil((g_hi - g_lo) / step) + 1
    k = shape(g_lo + step * np.arange(n))
    span = float(k.max() - k.min())
    if span <= 0:
        return np.zeros(n)
    return np.asarray(k * (amplitude_uv / span), dtype=np.float64)


def muap_duration_ms(kernel: npt.ArrayLike, fs: float, rel: float = DURATION_REL) -> float:
    """Duration (ms): first to last sample reaching ``rel`` of the peak-to-peak amplitude."""
    k = np.asarray(kernel, dtype=np.float64)
    pp = float(k.max() - k.min())
    if pp <= 0:
        return 0.0
    above = np.flatnonzero(np.abs(k) >= rel * pp)
    return float(above[-1] - above[0]) * 1000.0 / fs


def count_phases(kernel: npt.ArrayLike, rel: float = DURATION_REL) -> int:
    """Number of phases: baseline crossings + 1, ignoring samples below ``rel`` of peak-to-peak."""
    k = np.asarray(kernel, dtype=np.float64)
    pp = float(k.max() - k.min())
    if pp <= 0:
        return 0
    big = k[np.abs(k) >= rel * pp]
    return int(np.count_nonzero(np.diff(np.sign(big)) != 0)) + 1


def count_turns(kernel: npt.ArrayLike, rel: float = 0.05) -> int:
    """Number of turns: changes of direction whose excursion is at least ``rel`` of peak-to-peak."""
    k = np.asarray(kernel, dtype=np.float64)
    pp = float(k.max() - k.min())
    if pp <= 0 or k.size < 3:
        return 0
    d = np.sign(np.diff(k))
    d = d[d != 0]
    idx = np.flatnonzero(np.diff(d) != 0) + 1
    extrema = np.concatenate([[k[0]], k[idx], [k[-1]]]) if idx.size else np.array([k[0], k[-1]])
    turns = 0
    ref = extrema[0]
    direction = 0.0
    for v in extrema[1:]:
        step = v - ref
        if direction == 0.0:
            if abs(step) >= rel * pp:
                direction, ref = math.copysign(1.0, step), v
        elif step * direction > 0:
            ref = v  # still moving the same way: extend
        elif abs(step) >= rel * pp:
            turns += 1
            direction, ref = -direction, v
    return turns


# ---------------------------------------------------------------------------------------------------------
# Class profiles
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassProfile:
    """Physiological parameters of one class; ranges are sampled per unit (amplitudes log-uniformly).

    Attributes:
        n_units: (min, max) voluntary motor units within the needle's pick-up territory, per channel.
        amplitude_uv: (min, max) MUAP peak-to-peak amplitude, µV.
        duration_ms: (min, max) MUAP duration, ms.
        phases: ((n_phases, probability), ...).
        serrations: (min, max) extra turns per MUAP.
        threshold_max: recruitment threshold (effort, 0..1) of the largest unit.
        threshold_power: >1 packs thresholds towards 0 (many small units recruited early).
        effort: mean voluntary effort (0..1); effort_swing: amplitude of its slow modulation.
        base_rate_hz: firing rate at recruitment; rate_gain_hz: extra Hz per unit of effort above threshold;
        max_rate_hz: rate ceiling.
        isi_cv: coefficient of variation of inter-spike intervals.
        amp_cv: discharge-to-discharge amplitude variability (relative).
        satellite_p: probability that a unit has an unstable late (linked) component; satellite_block:
        probability that it is blocked at a given discharge.
        fibrillations: (min, max) fibrillating fibres per channel; psw: (min, max) positive-sharp-wave sources.
        fasciculation_hz: (min, max) rate of the one fasciculating unit per channel, None for none.
        pickup_gain: what reaches the electrode relative to the potentials above. The amplitudes above are
            those at the needle tip close to the fibres; a concentric needle at the low effort of a routine
            biceps study sits farther from most units, and volume conduction attenuates them.
        noise_gain: the background (amplifier, tissue, unresolved distant units) relative to the simulator's
            ``noise_uv``.
        main_width: width of a MUAP's main spike relative to its other phases (smaller: sharper spike, more
            power at high frequencies).
        noise_corner_hz: the background passes a first-order low-pass at this frequency (distant units reach the
            needle through tissue, which attenuates their high frequencies); None: no low-pass. ``noise_gain``
            sets its RMS either way.
    """

    n_units: tuple[int, int]
    amplitude_uv: tuple[float, float]
    duration_ms: tuple[float, float]
    phases: tuple[tuple[int, float], ...]
    serrations: tuple[int, int]
    threshold_max: float
    threshold_power: float
    effort: float
    effort_swing: float
    base_rate_hz: float
    rate_gain_hz: float
    max_rate_hz: float
    isi_cv: float
    amp_cv: float
    satellite_p: float = 0.0
    satellite_block: float = 0.0
    fibrillations: tuple[int, int] = (0, 0)
    psw: tuple[int, int] = (0, 0)
    fasciculation_hz: tuple[float, float] | None = None
    pickup_gain: float = 1.0
    noise_gain: float = 1.0
    main_width: float = 0.75
    noise_corner_hz: float | None = None


#: Per-class parameters, fitted to the EMGLAB N2001 classes (docs/qemg.md, "The simulator, calibrated"): the
#: simulated signal seen through the classifier's own frames (class-mean log spectrum and its 10th / 90th
#: percentiles over frames, 64 bins 31-2000 Hz) and through QEMG (amplitude, duration, phases, % polyphasic;
#: for ALS and myopathy also units per horizon, baseline noise, firing rate, and the classifier's embedding of
#: the stream windows, ``streamemg.qemg.simfit``) matches the real class. Ranges at the needle tip keep their
#: physiological meaning; ``pickup_gain``, ``noise_gain`` and ``noise_corner_hz`` bring them to what the
#: electrode records.
PROFILES: Final[dict[str, ClassProfile]] = {
    "normal": ClassProfile(
        n_units=(6, 11),
        amplitude_uv=(62.0, 6400.0),
        duration_ms=(6.7, 12.2),
        phases=((2, 0.48), (3, 0.44), (4, 0.08)),  # up to ~10-15 % polyphasic is normal
        serrations=(0, 0),
        threshold_max=0.6,
        threshold_power=1.0,
        effort=0.41,
        effort_swing=0.1,
        base_rate_hz=5.96,
        rate_gain_hz=24.8,
        max_rate_hz=19.9,
        isi_cv=0.15,
        amp_cv=0.03,
        pickup_gain=0.158,
        noise_gain=0.68,
        main_width=0.55,
    ),
    "als": ClassProfile(
        n_units=(1, 4),
        amplitude_uv=(1253.3, 14326.4),
        duration_ms=(11.5, 19.5),
        phases=((2, 0.039), (3, 0.299), (4, 0.485), (5, 0.165), (6, 0.012)),
        serrations=(0, 3),
        threshold_max=0.25,
        threshold_power=1.0,
        effort=0.336,
        effort_swing=0.08,
        base_rate_hz=6.44,
        rate_gain_hz=38.64,
        max_rate_hz=20.58,
        isi_cv=0.2,
        amp_cv=0.08,
        satellite_p=0.6,
        satellite_block=0.25,
        fibrillations=(1, 3),
        psw=(0, 2),
        fasciculation_hz=(0.2, 0.8),
        pickup_gain=0.0835,
        noise_gain=0.154,
        main_width=0.2,
        noise_corner_hz=484.4,
    ),
    "myopathy": ClassProfile(
        n_units=(7, 11),
        amplitude_uv=(16.8, 1339.6),
        duration_ms=(2.83, 5.43),
        phases=((2, 0.344), (3, 0.496), (4, 0.15)),
        serrations=(0, 0),
        threshold_max=0.12,
        threshold_power=1.0,
        effort=0.114,
        effort_swing=0.08,
        base_rate_hz=8.72,
        rate_gain_hz=27.25,
        max_rate_hz=21.83,
        isi_cv=0.15,
        amp_cv=0.05,
        pickup_gain=0.299,
        noise_gain=1.502,
        main_width=0.366,
        noise_corner_hz=180.6,
    ),
}


@dataclass(frozen=True)
class UnitInfo:
    """Description of one simulated source of potentials (for inspection and tests).

    Attributes:
        kind: "motor_unit", "fasciculation", "fibrillation" or "positive_sharp_wave".
        channel: channel index it is seen on.
        amplitude_uv: peak-to-peak amplitude of the stable waveform, µV.
        duration_ms: duration of the stable waveform (see :func:`muap_duration_ms`).
        phases: number of phases of the stable waveform.
        threshold: recruitment threshold (effort 0..1); -1 for spontaneous sources.
        kernel: the stable waveform sampled at the simulator's rate, µV, shape (L,).
        has_satellite: True when an unstable late component is attached.
    """

    kind: str
    channel: int
    amplitude_uv: float
    duration_ms: float
    phases: int
    threshold: float
    kernel: F64 = field(repr=False)
    has_satellite: bool = False


# ---------------------------------------------------------------------------------------------------------
# Runtime state
# ---------------------------------------------------------------------------------------------------------


class _Population:
    """Sources of one kind: kernels, rate laws and renewal state, advanced one frame at a time."""

    def __init__(
        self,
        kind_id: int,
        channel: list[int],
        kernels: list[F64],
        satellites: list[F64 | None],
        threshold: list[float],
        base: list[float],
        gain: list[float],
        rmax: list[float],
        isi_cv: list[float],
        amp_cv: list[float],
        block_p: list[float],
        rng: np.random.Generator,
    ) -> None:
        self.kind_id = kind_id
        n = len(kernels)
        length = max(
            max(len(k), 0 if s is None else len(s)) for k, s in zip(kernels, satellites, strict=True)
        )
        self.length = length
        self.kernels = np.zeros((n, length))
        self.satellites: F64 | None = None
        for i, k in enumerate(kernels):
            self.kernels[i, : len(k)] = k
        if any(s is not None for s in satellites):
            self.satellites = np.zeros((n, length))
            for i, s in enumerate(satellites):
                if s is not None:
                    self.satellites[i, : len(s)] = s
        self.channel = np.asarray(channel, dtype=np.int64)
        self.threshold = np.asarray(threshold, dtype=np.float64)
        self.base = np.asarray(base, dtype=np.float64)
        self.gain = np.asarray(gain, dtype=np.float64)
        self.rmax = np.asarray(rmax, dtype=np.float64)
        cv = np.asarray(isi_cv, dtype=np.float64)
        self.shape_k = 1.0 / (cv * cv)  # gamma shape for the wanted CV (mean 1)
        self.amp_cv = np.asarray(amp_cv, dtype=np.float64)
        self.block_p = np.asarray(block_p, dtype=np.float64)
        # operational time (in mean intervals) until each unit's next discharge: a random phase at start
        self.remaining = rng.uniform(0.0, 1.0, n)

    def rates(self, effort: F64) -> F64:
        """Firing rate (Hz) of each unit for per-channel effort ``effort`` (C,); 0 when not recruited."""
        e = effort[self.channel]
        r = np.minimum(self.base + self.gain * (e - self.threshold), self.rmax)
        return np.where(e >= self.threshold, r, 0.0)

    def frame_events(
        self, rng: np.random.Generator, effort: F64, n_frame: int, fs: float
    ) -> tuple[np.ndarray, np.ndarray, F64, F64 | None]:
        """Discharges within one frame of ``n_frame`` samples.

        Returns:
            (unit indices (E,), sample offsets within the frame (E,) in [0, n_frame], stable weights (E,),
            satellite weights (E,) or None).
        """
        rate = self.rates(effort)
        act = np.flatnonzero(rate > 0)
        empty = np.zeros(0, dtype=np.int64)
        if act.size == 0:
            return empty, empty, np.zeros(0), None
        r = rate[act]
        need = r * (n_frame / fs)  # frame length in operational time (mean intervals)
        k = self.shape_k[act][:, None]
        n_draw = math.ceil(float(need.max())) + 4 * math.ceil(math.sqrt(float(need.max()))) + 4
        draws = rng.gamma(k, 1.0 / k, size=(act.size, n_draw))
        tau = self.remaining[act][:, None] + np.concatenate(
            [np.zeros((act.size, 1)), np.cumsum(draws, axis=1)], axis=1
        )
        while np.any(tau[:, -1] < need):  # rare: extend until every unit's train passes the frame end
            more = rng.gamma(k, 1.0 / k, size=(act.size, n_draw))
            tau = np.concatenate([tau, tau[:, -1:] + np.cumsum(more, axis=1)], axis=1)
        inside = tau < need[:, None]
        count = inside.sum(axis=1)
        self.remaining[act] = tau[np.arange(act.size), count] - need
        rows, cols = np.nonzero(inside)
        units = act[rows]
        offsets = np.rint(tau[rows, cols] / r[rows] * fs).astype(np.int64)
        w = 1.0 + self.amp_cv[units] * rng.standard_normal(units.size)
        np.maximum(w, 0.2, out=w)
        sat = None
        if self.satellites is not None:
            passed = rng.uniform(size=units.size) >= self.block_p[units]
            sat = passed * (1.0 + 0.15 * rng.standard_normal(units.size))
        return units, offsets, w, sat


_KIND_NAMES: Final[tuple[str, ...]] = ("motor_unit", "fasciculation", "fibrillation", "positive_sharp_wave")


class EMGSimulator:
    """Continuous synthetic needle EMG of one class on ``n_channels`` channels.

    Args:
        cls: "normal", "als" or "myopathy" (case-insensitive; also the labels "Normal", "ALS", "Myopathy"
            and aliases "neurogenic", "myopathic").
        fs: sampling rate in Hz (>= 500; any value, e.g. 4000, 10000, 23437.5, 32768).
        n_channels: number of channels, each with its own motor units.
        seed: reproducibility seed (>= 0): the same arguments give the same samples.
        mains_hz: mains frequency (e.g. 50 or 60) for hum, None for none. Hum is added only when both
            ``mains_hz`` is set and ``mains_uv > 0``.
        mains_uv: amplitude of the mains fundamental, µV (harmonics are smaller).
        noise_uv: RMS of the background noise (half white, half 1/f-like power), µV.
        crosstalk: fraction (0..0.5) of each neighbouring channel's motor-unit activity seen on a channel;
            0 (default) makes the channels' potentials independent (they still share the effort profile).
        effort: overrides the class's mean voluntary effort (0..1).
        record_events: keep every discharge in :attr:`event_log` (for tests and inspection).

    Attributes:
        cls: class key; label: class label as in ``CLASS_NAMES``; fs; n_channels; seed.
        units: one :class:`UnitInfo` per simulated source, in global unit order.
        samples_generated: samples returned so far.
        event_log: when recording, a list of (global unit ids (E,), absolute sample indices (E,)) per frame.
    """

    def __init__(
        self,
        cls: str,
        fs: float,
        n_channels: int = 1,
        seed: int = 0,
        mains_hz: float | None = None,
        mains_uv: float = 0.0,
        noise_uv: float = 5.0,
        *,
        crosstalk: float = 0.0,
        effort: float | None = None,
        record_events: bool = False,
    ) -> None:
        self.cls = normalize_class(cls)
        self.label = CLASS_LABELS[self.cls]
        self.fs = _check_number("fs", fs, lo=MIN_FS, hint="give the amplifier rate in Hz, e.g. 10000")
        if isinstance(n_channels, bool) or not isinstance(n_channels, (int, np.integer)) or not (
            1 <= n_channels <= MAX_CHANNELS
        ):
            raise ConfigError(f"EMGSimulator.n_channels={n_channels!r}: use a whole number from 1 to {MAX_CHANNELS}")
        self.n_channels = int(n_channels)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"EMGSimulator.seed={seed!r}: use a whole number >= 0")
        self.seed = int(seed)
        if mains_hz is not None:
            mains_hz = _check_number("mains_hz", mains_hz, lo=1.0, hint="use 50 or 60 (or None for no hum)")
            if mains_hz >= self.fs / 2:
                raise ConfigError(f"EMGSimulator.mains_hz={mains_hz!r} is above half the rate {self.fs:g} Hz")
        self.mains_hz = mains_hz
        self.mains_uv = _check_number("mains_uv", mains_uv, lo=0.0, hint="give the hum amplitude in µV, e.g. 20")
        self.noise_uv = _check_number("noise_uv", noise_uv, lo=0.0, hint="give the noise RMS in µV, e.g. 5")
        self.crosstalk = _check_number("crosstalk", crosstalk, lo=0.0, hint="use 0 (independent) to 0.5")
        if self.crosstalk > 0.5:
            raise ConfigError(f"EMGSimulator.crosstalk={crosstalk!r}: use a fraction from 0 to 0.5")
        profile = PROFILES[self.cls]
        if effort is not None:
            e = _check_number("effort", effort, lo=0.0, hint="use a fraction of maximal effort from 0 to 1")
            if e > 1:
                raise ConfigError(f"EMGSimulator.effort={effort!r}: use a fraction of maximal effort from 0 to 1")
            profile = replace(profile, effort=e)
        self.profile = profile
        self.record_events = bool(record_events)
        self.event_log: list[tuple[np.ndarray, np.ndarray]] = []
        self.samples_generated = 0

        self.frame_len = max(64, round(FRAME_S * self.fs))
        self.units: list[UnitInfo] = []
        self._build()
        self._tail = np.zeros((self.n_channels, self._tail_len))
        self._frame_index = 0
        self._frame: F32 = np.zeros((0, self.n_channels), dtype=np.float32)
        self._pos = 0

    # -- construction ------------------------------------------------------------------------------------

    def _build(self) -> None:
        p = self.profile
        fs = self.fs
        setup = np.random.default_rng([self.seed, 0])
        # slow effort modulation shared by all channels (one contraction), small per-channel offsets
        self._effort_f = setup.uniform([0.05, 0.2], [0.15, 0.4])
        self._effort_phi = setup.uniform(0.0, 2 * math.pi, 2)
        self._effort_offset = setup.normal(0.0, 0.03, self.n_channels)
        groups: dict[int, dict[str, list]] = {i: _empty_group() for i in range(len(_KIND_NAMES))}

        for ch in range(self.n_channels):
            rng = np.random.default_rng([self.seed, 1, ch])  # channel c's units don't depend on n_channels
            n = int(rng.integers(p.n_units[0], p.n_units[1] + 1))
            amps = np.sort(_log_uniform(rng, p.amplitude_uv, n))  # size order = recruitment order
            rank = (np.arange(n) + rng.uniform(0.0, 1.0, n)) / n
            thresholds = p.threshold_max * rank**p.threshold_power
            for i in range(n):
                dur = p.duration_ms[0] + (p.duration_ms[1] - p.duration_ms[0]) * (0.4 * rank[i] + 0.6 * rng.uniform())
                n_ph = _choose(rng, p.phases)
                n_ser = int(rng.integers(p.serrations[0], p.serrations[1] + 1))
                kernel = render_potential(draw_muap_shape(rng, n_ph, n_ser, p.main_width), fs, dur, float(amps[i]))
                sat = None
                if p.satellite_p > 0 and rng.uniform() < p.satellite_p:
                    sat = self._satellite(rng, kernel, float(amps[i]))
                self._add(
                    groups[0], "motor_unit", ch, kernel, sat, float(thresholds[i]), p.base_rate_hz, p.rate_gain_hz,
                    p.max_rate_hz, p.isi_cv, p.amp_cv, p.satellite_block,
                )
            if p.fasciculation_hz is not None:
                amp = float(_log_uniform(rng, p.amplitude_uv, 1)[0])
                dur = float(rng.uniform(*p.duration_ms))
                kernel = render_potential(draw_muap_shape(rng, _choose(rng, p.phases), 2), fs, dur, amp)
                rate = float(rng.uniform(*p.fasciculation_hz))
                self._add(groups[1], "fasciculation", ch, kernel, None, -1.0, rate, 0.0, rate, 1.0, 0.1, 0.0)
            for _ in range(int(rng.integers(p.fibrillations[0], p.fibrillations[1] + 1))):
                # a single denervated fibre: initial-positive bi/triphasic spike, 1-5 ms, 20-200 µV, regular
                n_ph = 2 if rng.uniform() < 0.5 else 3
                widths = rng.uniform(0.8, 1.2, n_ph)
                heights = np.array([1.0, -1.0] if n_ph == 2 else [0.6, -1.0, 0.4]) * rng.uniform(0.7, 1.0, n_ph)
                shape = phases_from_widths(widths, heights).balanced()
                kernel = render_potential(shape, fs, rng.uniform(1.2, 4.0), float(_log_uniform(rng, (20, 200), 1)[0]))
                rate = float(rng.uniform(1.0, 15.0))
                self._add(groups[2], "fibrillation", ch, kernel, None, -1.0, rate, 0.0, rate, 0.03, 0.02, 0.0)
            for _ in range(int(rng.integers(p.psw[0], p.psw[1] + 1))):
                # positive sharp wave: brisk positive deflection, then a long shallow negative return
                shape = phases_from_widths(np.array([0.12, 1.0]), np.array([1.0, -0.15])).balanced()
                kernel = render_potential(shape, fs, rng.uniform(10.0, 25.0), float(_log_uniform(rng, (50, 300), 1)[0]))
                rate = float(rng.uniform(1.0, 10.0))
                self._add(groups[3], "positive_sharp_wave", ch, kernel, None, -1.0, rate, 0.0, rate, 0.03, 0.02, 0.0)

        self._pops: list[tuple[int, _Population]] = []  # (global unit offset, population)
        offset = 0
        for kind_id, g in groups.items():
            if not g["kernels"]:
                continue
            pop = _Population(
                kind_id, g["channel"], g["kernels"], g["satellites"], g["threshold"], g["base"], g["gain"],
                g["rmax"], g["isi_cv"], g["amp_cv"], g["block_p"], np.random.default_rng([self.seed, 2, kind_id]),
            )
            self._pops.append((offset, pop))
            self.units.extend(g["info"])
            offset += len(g["kernels"])
        self._tail_len = max([pop.length for _, pop in self._pops], default=1)

        # noise: white + 1/f-like (first-order shelving sections alternating poles and zeros a half decade
        # apart give about -10 dB per decade between 2 Hz and the top corner)
        corners = [f for f in (2.0, 20.0, 200.0, 2000.0) if f * math.sqrt(10.0) < fs / 2]
        zeros = [math.exp(-2 * math.pi * f * math.sqrt(10.0) / fs) for f in corners]
        poles = [math.exp(-2 * math.pi * f / fs) for f in corners]
        self._pink_sos = signal.zpk2sos(zeros, poles, 1.0)
        impulse = np.zeros(int(fs * 2.0))
        impulse[0] = 1.0
        h = signal.sosfilt(self._pink_sos, impulse)
        self._pink_sos[0, :3] /= math.sqrt(float(np.sum(h * h)))  # unit output variance for unit white input
        h /= math.sqrt(float(np.sum(h * h)))
        h[0] += 1.0
        self._bg_sos: np.ndarray | None = None
        corner = p.noise_corner_hz
        if corner is not None and corner < 0.45 * fs:
            self._bg_sos = signal.butter(1, corner, fs=fs, output="sos")
            h = signal.sosfilt(self._bg_sos, h)
            self._bg_zi = np.zeros((self._bg_sos.shape[0], 2, self.n_channels))
        self._noise_norm = 1.0 / math.sqrt(float(np.sum(h * h)))  # white + pink from one draw -> unit variance
        self._pink_zi = np.zeros((self._pink_sos.shape[0], 2, self.n_channels))

        # mains: per-channel pick-up gain and phase (different lead geometry)
        mrng = np.random.default_rng([self.seed, 3])
        self._mains_gain = mrng.uniform(0.8, 1.2, self.n_channels)
        self._mains_phase = mrng.uniform(-0.3, 0.3, self.n_channels)

    def _satellite(self, rng: np.random.Generator, kernel: F64, amp: float) -> F64:
        """An unstable late component: a small brief potential 2-8 ms after the main MUAP has ended."""
        sat = render_potential(
            draw_muap_shape(rng, int(rng.integers(2, 4))), self.fs, rng.uniform(1.5, 4.0), amp * rng.uniform(0.04, 0.12)
        )
        lag = len(kernel) + round(rng.uniform(2.0, 8.0) * self.fs / 1000.0)
        out = np.zeros(lag + len(sat))
        out[lag:] = sat
        return out

    def _add(
        self, g: dict[str, list], kind: str, ch: int, kernel: F64, sat: F64 | None, thr: float, base: float,
        gain: float, rmax: float, isi_cv: float, amp_cv: float, block_p: float,
    ) -> None:
        kernel.setflags(write=False)
        g["channel"].append(ch)
        g["kernels"].append(kernel)
        g["satellites"].append(sat)
        g["threshold"].append(thr)
        g["base"].append(base)
        g["gain"].append(gain)
        g["rmax"].append(rmax)
        g["isi_cv"].append(isi_cv)
        g["amp_cv"].append(amp_cv)
        g["block_p"].append(block_p)
        g["info"].append(
            UnitInfo(
                kind, ch, float(kernel.max() - kernel.min()), muap_duration_ms(kernel, self.fs),
                count_phases(kernel), thr, kernel, sat is not None,
            )
        )

    # -- generation ----------------------------------------------------------------------------------------

    @property
    def seconds_generated(self) -> float:
        return self.samples_generated / self.fs

    def effort_at(self, t: float) -> F64:
        """Voluntary effort (0..1) per channel at time ``t`` (s since sample 0), shape (C,)."""
        p = self.profile
        wave = 0.6 * math.sin(2 * math.pi * self._effort_f[0] * t + self._effort_phi[0]) + 0.4 * math.sin(
            2 * math.pi * self._effort_f[1] * t + self._effort_phi[1]
        )
        return np.asarray(np.clip(p.effort + p.effort_swing * wave + self._effort_offset, 0.0, 1.0), dtype=np.float64)

    def generate(self, n_samples: int) -> F32:
        """The next ``n_samples`` samples, float32 shaped (n_samples, n_channels), µV.

        Continuous across calls: the samples do not depend on how a span is split into calls.
        """
        n = int(n_samples)
        if n < 0:
            raise ConfigError(f"EMGSimulator.generate(n_samples={n_samples!r}): use a count >= 0")
        out = np.empty((n, self.n_channels), dtype=np.float32)
        filled = 0
        while filled < n:
            if self._pos >= self._frame.shape[0]:
                self._frame = self._next_frame()
                self._pos = 0
            take = min(n - filled, self._frame.shape[0] - self._pos)
            out[filled : filled + take] = self._frame[self._pos : self._pos + take]
            self._pos += take
            filled += take
        self.samples_generated += n
        return out

    def _next_frame(self) -> F32:
        f = self._frame_index
        self._frame_index += 1
        n = self.frame_len
        n0 = f * n
        fs = self.fs
        c = self.n_channels
        effort = self.effort_at((n0 + n / 2) / fs)
        width = n + self._tail_len
        acc = np.zeros((c, width))
        acc[:, : self._tail_len] += self._tail
        for offset, pop in self._pops:
            rng = np.random.default_rng([self.seed, 4, pop.kind_id, f])
            units, pos, w, sat = pop.frame_events(rng, effort, n, fs)
            if units.size == 0:
                continue
            if self.record_events:
                self.event_log.append((units + offset, pos + n0))
            vals = pop.kernels[units] * w[:, None]
            if sat is not None and pop.satellites is not None:
                vals += pop.satellites[units] * sat[:, None]
            pw = n + pop.length
            idx = (pop.channel[units] * pw + pos)[:, None] + np.arange(pop.length)
            scattered = np.bincount(idx.ravel(), weights=vals.ravel(), minlength=c * pw).reshape(c, pw)
            acc[:, :pw] += scattered
        self._tail = acc[:, n:].copy()
        x = acc[:, :n].T * self.profile.pickup_gain  # (n, C): what the electrode picks up
        if self.crosstalk > 0 and c > 1:
            mixed = x.copy()
            mixed[:, 1:] += self.crosstalk * x[:, :-1]
            mixed[:, :-1] += self.crosstalk * x[:, 1:]
            x = mixed
        if self.noise_uv > 0:
            nrng = np.random.default_rng([self.seed, 5, f])
            # one white draw feeds both parts: white + its 1/f-shaped filtered copy
            white = nrng.standard_normal((n, c))
            pink, self._pink_zi = signal.sosfilt(self._pink_sos, white, axis=0, zi=self._pink_zi)
            white += pink
            if self._bg_sos is not None:
                white, self._bg_zi = signal.sosfilt(self._bg_sos, white, axis=0, zi=self._bg_zi)
            white *= self.noise_uv * self.profile.noise_gain * self._noise_norm
            x += white
        if self.mains_hz is not None and self.mains_uv > 0:
            t = (n0 + np.arange(n)) / fs
            for h, rel in ((1, 1.0), (2, 0.1), (3, 0.35), (5, 0.15)):
                fh = h * self.mains_hz
                if fh >= fs / 2:
                    continue
                wt = 2 * math.pi * fh * t
                gain = self.mains_uv * rel * self._mains_gain
                x += np.sin(wt)[:, None] * (gain * np.cos(h * self._mains_phase)) + np.cos(wt)[:, None] * (
                    gain * np.sin(h * self._mains_phase)
                )
        return x.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def _check_number(name: str, value: object, lo: float, hint: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not math.isfinite(v) or v < lo:
        raise ConfigError(f"EMGSimulator.{name}={value!r}: must be a finite number >= {lo:g}; {hint}")
    return v


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> F64:
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    return np.exp(rng.uniform(lo, hi, n))


def _choose(rng: np.random.Generator, table: tuple[tuple[int, float], ...]) -> int:
    cum = np.cumsum([p for _, p in table])
    i = int(np.searchsorted(cum, rng.uniform() * cum[-1], side="right"))
    return table[min(i, len(table) - 1)][0]


def _empty_group() -> dict[str, list]:
    keys = ("channel", "kernels", "satellites", "threshold", "base", "gain", "rmax", "isi_cv", "amp_cv", "block_p",
            "info")
    return {k: [] for k in keys}


