"""Stateful, causal signal conditioning for streams: high-pass, mains notch and rational resampling.

Every unit here processes a stream chunk by chunk and keeps the state that carries the signal across
chunk borders, so feeding a signal in pieces of any sizes gives the same output as feeding it whole
(to float rounding). Arrays are sample-major ``(n_samples, n_channels)`` float32 in µV, like
:class:`streamemg.types.Chunk` data. Expensive set-up (filter design) happens in the constructors,
once per stream signature; ``process`` does a bounded amount of vectorised numpy/scipy work per chunk
and never calls Python once per sample.

* :class:`FilterSettings` / :class:`StreamFilter`: Butterworth high-pass (removes electrode offset and
  movement drift) cascaded with IIR notches at the mains frequency and its harmonics, run as one
  second-order-section cascade with per-channel state (float64 state, float32 output).
* :func:`rational_ratio` / :class:`Resampler`: polyphase FIR rational resampler from the stream's rate
  down to the model's rate, e.g. 23437.5 -> 8000 Hz is up 128 / down 375.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from .errors import ConfigError, StreamRateError
from .types import FloatArray

__all__ = [
    "FilterSettings",
    "Resampler",
    "StreamFilter",
    "design_antialias",
    "design_sos",
    "rational_ratio",
]

try:  # the compiled loop behind scipy.signal.sosfilt (private; the public function is used without it)
    from scipy.signal._sosfilt import _sosfilt as _SOSFILT_KERNEL
except ImportError:  # pragma: no cover - a scipy that moved it
    _SOSFILT_KERNEL = None

#: Mains frequencies the notch accepts (Hz).
MAINS_HZ: tuple[float, ...] = (50.0, 60.0)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_channels(n_channels: Any, owner: str) -> int:
    if not _is_whole(n_channels) or n_channels < 1:
        raise ConfigError(f"{owner} n_channels={n_channels!r}: give a whole number of channels >= 1")
    return int(n_channels)


def _check_rate(fs: Any, name: str, owner: str) -> float:
    if not (_is_number(fs) and math.isfinite(fs) and fs > 0):
        raise ConfigError(f"{owner} {name}={fs!r}: the sampling rate must be a finite number of Hz above 0")
    return float(fs)


def _as_block(x: Any, n_channels: int, owner: str) -> np.ndarray:
    """``x`` as a 2-D ``(n, n_channels)`` array; an empty input of any shape becomes ``(0, n_channels)``."""
    arr = np.asarray(x)
    if arr.size == 0:
        return np.empty((0, n_channels), dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != n_channels:
        raise ValueError(f"{owner}.process expects samples shaped (n, {n_channels}); got {arr.shape}")
    return arr


# --------------------------------------------------------------------------------------------------
# High-pass + mains notch


@dataclass(frozen=True)
class FilterSettings:
    """Settings of the causal pre-filter applied at the stream's native rate.

    Attributes:
        highpass_hz: Butterworth high-pass corner (-3 dB) in Hz, or None for no high-pass. Needle EMG
            carries useful energy from ~20 Hz up; below that lie electrode offset and movement drift.
            Must lie below the stream's Nyquist frequency (checked when the filter is built).
        highpass_order: Butterworth order (1-10); 4 gives 24 dB/octave.
        notch_hz: mains fundamental to notch out, 50.0 or 60.0 Hz, or None for no notch.
        notch_harmonics: how many notches: the fundamental plus ``notch_harmonics - 1`` harmonics
            (k * notch_hz for k = 1..notch_harmonics); those at or above Nyquist are skipped.
        notch_q: quality factor of every notch (centre / -3 dB bandwidth); 30 at 50 Hz removes ~1.7 Hz.
    """

    highpass_hz: float | None = 20.0
    highpass_order: int = 4
    notch_hz: float | None = 50.0
    notch_harmonics: int = 3
    notch_q: float = 30.0

    def __post_init__(self) -> None:
        hp = self.highpass_hz
        if hp is not None:
            if not (_is_number(hp) and math.isfinite(hp) and hp > 0):
                raise ConfigError(
                    f"FilterSettings.highpass_hz={hp!r}: give a corner frequency in Hz above 0 "
                    "(e.g. 20), or None to switch the high-pass off"
                )
            object.__setattr__(self, "highpass_hz", float(hp))
        order = self.highpass_order
        if not _is_whole(order) or not 1 <= order <= 10:
            raise ConfigError(f"FilterSettings.highpass_order={order!r}: give a whole number from 1 to 10 (e.g. 4)")
        object.__setattr__(self, "highpass_order", int(order))
        notch = self.notch_hz
        if notch is not None:
            if not _is_number(notch) or float(notch) not in MAINS_HZ:
                raise ConfigError(
                    f"FilterSettings.notch_hz={notch!r}: the mains notch must be 50 or 60 (Hz, the local mains "
                    "frequency), or None to switch it off"
                )
            object.__setattr__(self, "notch_hz", float(notch))
        harm = self.notch_harmonics
        if not _is_whole(harm) or harm < 1:
            raise ConfigError(
                f"FilterSettings.notch_harmonics={harm!r}: give the number of notches as a whole number >= 1 "
                "(1 = the fundamental only, 3 = fundamental + 2 harmonics)"
            )
        object.__setattr__(self, "notch_harmonics", int(harm))
        q = self.notch_q
        if not (_is_number(q) and math.isfinite(q) and q > 0):
            raise ConfigError(f"FilterSettings.notch_q={q!r}: give a quality factor above 0 (e.g. 30)")
        object.__setattr__(self, "notch_q", float(q))

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict (JSON/TOML friendly) that :meth:`from_dict` reads back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FilterSettings:
        """Build from a dict as written by :meth:`to_dict`; missing keys take their defaults.

        Raises:
            ConfigError: on unknown keys or invalid values.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"FilterSettings: expected a table/dict of settings, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"FilterSettings: unknown field(s) {', '.join(map(repr, unknown))}; known fields are "
                f"{', '.join(sorted(known))}"
            )
        return cls(**d)


def design_sos(settings: FilterSettings, fs: float) -> np.ndarray | None:
    """Design the high-pass + notch cascade for rate ``fs``.

    Args:
        settings: the filter settings.
        fs: sampling rate in Hz.

    Returns:
        float64 second-order sections ``(n_sections, 6)`` (high-pass first, then one section per notch
        below Nyquist), or None when nothing is to be filtered.

    Raises:
        ConfigError: if ``highpass_hz`` is not below the Nyquist frequency ``fs / 2``.
    """
    fs = _check_rate(fs, "fs", "StreamFilter")
    nyquist = fs / 2.0
    sections: list[np.ndarray] = []
    if settings.highpass_hz is not None:
        if settings.highpass_hz >= nyquist:
            raise ConfigError(
                f"FilterSettings.highpass_hz={settings.highpass_hz!r} is not below the Nyquist frequency "
                f"{nyquist:g} Hz of a {fs:g} Hz stream; lower it (e.g. 20) or set it to None"
            )
        sections.append(
            signal.butter(settings.highpass_order, settings.highpass_hz, btype="highpass", fs=fs, output="sos")
        )
    if settings.notch_hz is not None:
        for k in range(1, settings.notch_harmonics + 1):
            f0 = k * settings.notch_hz
            if f0 >= nyquist:
                break
            b, a = signal.iirnotch(f0, settings.notch_q, fs=fs)
            sections.append(signal.tf2sos(b, a))
    if not sections:
        return None
    return np.ascontiguousarray(np.concatenate(sections, axis=0), dtype=np.float64)


class StreamFilter:
    """Stateful causal high-pass + mains notch for one stream.

    Args:
        settings: filter settings.
        fs: the stream's sampling rate in Hz.
        n_channels: channel count.

    The state starts in the steady state for a constant input equal to the first sample of each
    channel (like ``scipy.signal.sosfilt_zi`` scaled), so an electrode offset does not ring through the
    high-pass at the start of a stream.

    Non-finite input samples (NaN/Inf, e.g. dropped samples marked by a device) are replaced by the
    channel's last finite value before filtering and counted in :attr:`nonfinite`: one bad sample must
    not poison an IIR state for the rest of the stream. The quality gate sees the raw samples and flags
    such windows separately.
    """

    def __init__(self, settings: FilterSettings, fs: float, n_channels: int) -> None:
        self.settings = settings
        self.fs = _check_rate(fs, "fs", "StreamFilter")
        self.n_channels = _check_channels(n_channels, "StreamFilter")
        self.sos: np.ndarray | None = design_sos(settings, self.fs)
        #: number of non-finite input samples replaced so far (all channels together).
        self.nonfinite = 0
        self._zi_unit: np.ndarray | None = None
        if self.sos is not None:
            self._zi_unit = signal.sosfilt_zi(self.sos)  # (n_sections, 2): state for a unit step
        self._zi: np.ndarray | None = None  # (n_sections, 2, C) float64 once started
        self._zi_kernel: np.ndarray | None = None  # the same state as (C, n_sections, 2) for the compiled loop
        self._last = np.zeros(self.n_channels, dtype=np.float64)  # last finite value per channel

    @property
    def n_sections(self) -> int:
        """Number of second-order sections in the cascade (0 = pass-through)."""
        return 0 if self.sos is None else int(self.sos.shape[0])

    def reset(self) -> None:
        """Forget the filter state; the next sample starts the stream afresh."""
        self._zi = None
        self._zi_kernel = None
        self._last[:] = 0.0
        self.nonfinite = 0

    def process(self, x: Any) -> FloatArray:
        """Filter the next block of the stream.

        Args:
            x: ``(n, n_channels)`` samples in µV (any real dtype; ``n`` may be 0, ``[]`` is accepted).

        Returns:
            ``(n, n_channels)`` float32 filtered samples in µV (a new array).
        """
        block = _as_block(x, self.n_channels, "StreamFilter")
        if block.shape[0] == 0:
            return np.empty((0, self.n_channels), dtype=np.float32)
        if self.sos is None:
            return np.array(block, dtype=np.float32)
        # Channel-major float64 copy (C, n): the layout scipy's compiled sosfilt loop runs on, ours to edit.
        xt = np.array(block.T, dtype=np.float64, order="C")
        xd = xt.T  # (n, C) view of the same samples
        # One cheap reduction decides whether the (rare) non-finite repair is needed.
        if not math.isfinite(float(xt.sum())):
            self._fill_nonfinite(xd)
        self._last[:] = xd[-1]
        if self._zi is None:
            assert self._zi_unit is not None
            self._zi = self._zi_unit[:, :, None] * xd[0][None, None, :]
        if _SOSFILT_KERNEL is not None:
            # Performance: scipy's sosfilt() spends ~20 µs per call on validation and axis shuffling around its
            # compiled loop; the state is kept in the loop's own layout (C, sections, 2) and the loop runs in place.
            if self._zi_kernel is None:
                self._zi_kernel = np.ascontiguousarray(np.moveaxis(self._zi, 2, 0))
            _SOSFILT_KERNEL(self.sos, xt, self._zi_kernel)
            return np.ascontiguousarray(xd, dtype=np.float32)
        y, self._zi = signal.sosfilt(self.sos, xd, axis=0, zi=self._zi)
        return y.astype(np.float32)

    def _fill_nonfinite(self, xd: np.ndarray) -> None:
        """Replace non-finite samples of ``xd`` (n, C) in place by the last finite value of their channel."""
        good = np.isfinite(xd)
        n_bad = int(xd.size - np.count_nonzero(good))
        if n_bad == 0:  # the sum overflowed on finite data
            return
        self.nonfinite += n_bad
        n = xd.shape[0]
        # Index of the last good row at or before each row, 0 meaning "the carried value from before".
        idx = np.where(good, np.arange(1, n + 1)[:, None], 0)
        np.maximum.accumulate(idx, axis=0, out=idx)
        extended = np.concatenate([self._last[None, :], xd], axis=0)
        xd[:] = np.take_along_axis(extended, idx, axis=0)


# --------------------------------------------------------------------------------------------------
# Rational resampling


def rational_ratio(fs_in: float, fs_out: float, max_den: int = 1000) -> tuple[int, int]:
    """The resampling ratio ``fs_out / fs_in`` as a reduced fraction ``up / down``.

    Args:
        fs_in: input rate, Hz.
        fs_out: output rate, Hz.
        max_den: largest allowed ``down`` (the polyphase filter has ``up`` phases and its length grows
            with ``down``); the closest fraction with a denominator up to this is taken.

    Returns:
        ``(up, down)``, e.g. (128, 375) for 23437.5 -> 8000, (125, 512) for 32768 -> 8000,
        (4, 5) for 10000 -> 8000, (1, 1) for equal rates.
    """
    fs_in = _check_rate(fs_in, "fs_in", "rational_ratio")
    fs_out = _check_rate(fs_out, "fs_out", "rational_ratio")
    if not _is_whole(max_den) or max_den < 1:
        raise ConfigError(f"rational_ratio max_den={max_den!r}: give a whole number >= 1 (e.g. 1000)")
    # Fraction(float) is exact for binary floats such as 23437.5, so exact ratios stay exact.
    ratio = (Fraction(fs_out) / Fraction(fs_in)).limit_denominator(int(max_den))
    if ratio == 0:
        raise ConfigError(
            f"rational_ratio: {fs_in:g} Hz -> {fs_out:g} Hz needs a denominator above max_den={max_den}; raise max_den"
        )
    return ratio.numerator, ratio.denominator


def design_antialias(
    up: int, down: int, fs_in: float, atten_db: float = 80.0, rolloff: float = 0.9
) -> tuple[np.ndarray, float]:
    """Design the Kaiser-window low-pass of the ``up / down`` resampler.

    The filter runs at the virtual rate ``fs_in * up``. Its -6 dB cutoff is ``rolloff`` times the lower
    Nyquist frequency ``min(fs_in, fs_out) / 2``, and the transition band is symmetric about it, so the
    stopband (``atten_db`` down) starts exactly at that Nyquist frequency: nothing that could alias
    into the band below the cutoff survives.

    The length is rounded up so that the group delay ``(N - 1) / 2`` is a whole multiple of ``down``
    virtual samples, i.e. a whole number of output samples: output sample ``m`` then lines up with
    input time ``m / fs_out - delay`` exactly.

    Returns:
        ``(taps, delay_s)``: float64 taps of odd length N with DC gain ``up`` (which makes up for the
        zeros inserted by upsampling), and the group delay in seconds.
    """
    fs_up = fs_in * up
    nyquist = min(fs_in, fs_in * up / down) / 2.0
    cutoff = rolloff * nyquist
    width = 2.0 * (nyquist - cutoff)  # Hz
    numtaps, beta = signal.kaiserord(atten_db, width / (fs_up / 2.0))
    half = (numtaps - 1) / 2.0
    half_len = max(1, math.ceil(half / down)) * down
    taps = signal.firwin(2 * half_len + 1, cutoff, window=("kaiser", beta), fs=fs_up) * up
    return taps, half_len / fs_up


#: Outputs per block of the resampler's matrix-product path, and the largest ``up`` it handles.
_GEMM_BLOCK = 64
_GEMM_MAX_UP = 8


@functools.lru_cache(maxsize=64)
def _block_matrix(up: int, down: int, block: int, phase0: int, phases: bytes, k: int) -> np.ndarray:
    """``H (S, block)`` float32 (read-only): column ``i`` holds output ``i``'s phase filter at its input offset.

    Output ``i`` of a block whose first output has virtual position ``phase0 (mod up)`` reads input rows
    ``rel_i .. rel_i + k - 1`` (``rel_i = (phase0 + i * down) // up``) with phase ``(phase0 + i * down) % up``.
    """
    taps = np.frombuffer(phases, dtype=np.float32).reshape(-1, k)
    pos = phase0 + np.arange(block) * down
    rel, phase = pos // up, pos % up
    h = np.zeros((int(rel[-1]) + k, block), dtype=np.float32)
    for i in range(block):
        h[rel[i] : rel[i] + k, i] = taps[phase[i]]
    h.flags.writeable = False
    return h


class Resampler:
    """Stateful polyphase FIR rational resampler for one stream (causal, linear phase).

    Args:
        fs_in: the stream's rate, Hz.
        fs_out: the model's rate, Hz (not above ``fs_in``).
        n_channels: channel count.
        max_den: largest ``down`` of the rational ratio (see :func:`rational_ratio`).
        atten_db: stopband attenuation of the anti-alias filter, dB.
        rolloff: cutoff as a fraction of the output Nyquist frequency.

    Attributes:
        up, down: the rational ratio; the actual output rate is :attr:`fs_out` = ``fs_in * up / down``.
        delay_s: group delay of the anti-alias filter in seconds (a whole number of output samples):
            absolute output sample ``m`` (0-based since the start or :meth:`reset`) estimates the
            signal at ``m / fs_out - delay_s`` seconds after input sample 0.
        taps: the float64 FIR taps (length N, DC gain ``up``); :attr:`n_taps_per_phase` = ceil(N / up).
        total_in, total_out: samples consumed / produced so far.

    How it works: output ``m`` sits at virtual (upsampled) position ``m * down``; with
    ``i0 = (m * down) // up`` and phase ``p = (m * down) % up`` it is
    ``sum_q taps[p + q * up] * x[i0 - q]``. Each chunk is appended to the last ``K - 1`` input samples
    (K = taps per phase), every output's K-sample input window is gathered at once through a strided
    view, and one batched matrix product applies each output's phase filter: no Python loop per sample
    (only per block of ~1M gathered values, to bound memory for very large chunks). Samples before the
    first are taken as zero.

    Raises:
        StreamRateError: if ``fs_in < fs_out`` (streamemg never upsamples silently).
    """

    #: Upper bound on gathered values per vectorised block (memory bound for huge chunks).
    _BLOCK_ELEMENTS = 1 << 20

    def __init__(
        self,
        fs_in: float,
        fs_out: float,
        n_channels: int,
        *,
        max_den: int = 1000,
        atten_db: float = 80.0,
        rolloff: float = 0.9,
    ) -> None:
        self.fs_in = _check_rate(fs_in, "fs_in", "Resampler")
        fs_out_req = _check_rate(fs_out, "fs_out", "Resampler")
        self.n_channels = _check_channels(n_channels, "Resampler")
        if self.fs_in < fs_out_req:
            raise StreamRateError(
                f"the stream's rate {self.fs_in:g} Hz is below the model's rate {fs_out_req:g} Hz; streamemg does "
                "not upsample. Record/stream at or above the model's rate, or use a model trained for this rate"
            )
        if not (_is_number(atten_db) and math.isfinite(atten_db) and 20.0 <= atten_db <= 200.0):
            raise ConfigError(f"Resampler atten_db={atten_db!r}: give a stopband attenuation from 20 to 200 dB")
        if not (_is_number(rolloff) and 0.5 <= rolloff < 1.0):
            raise ConfigError(f"Resampler rolloff={rolloff!r}: give a fraction of the Nyquist frequency in [0.5, 1)")
        self.up, self.down = rational_ratio(self.fs_in, fs_out_req, max_den)
        self.fs_out: float = self.fs_in * self.up / self.down
        self.total_in = 0
        self.total_out = 0
        if self.up == self.down:
            self.taps = np.ones(1)
            self.delay_s = 0.0
            self.n_taps_per_phase = 1
            self._phases = np.ones((1, 1), dtype=np.float32)
            self._ext = np.zeros((0, self.n_channels), dtype=np.float32)
            self._j = 0
            return
        self.taps, self.delay_s = design_antialias(self.up, self.down, self.fs_in, float(atten_db), float(rolloff))
        k = -(-self.taps.size // self.up)  # ceil
        self.n_taps_per_phase = k
        padded = np.zeros(k * self.up)
        padded[: self.taps.size] = self.taps
        # phases[p, t] multiplies window element t (oldest first) = x[i0 - (k-1-t)] = taps[p + (k-1-t)*up].
        self._phases = np.ascontiguousarray(padded.reshape(k, self.up).T[:, ::-1], dtype=np.float32)
        # ext: k-1 rows of history, then room for the chunk; grows (rarely) for larger chunks.
        self._ext = np.zeros((k - 1 + 1024, self.n_channels), dtype=np.float32)
        # _j = m_next * down - total_in * up: the next output's virtual position relative to the
        # first sample of the coming chunk (bounded, so no ever-growing integers enter numpy).
        self._j = 0

    @property
    def identity(self) -> bool:
        """True when input and output rates are equal (``process`` passes samples through)."""
        return self.up == self.down

    def output_length(self, n: int) -> int:
        """How many samples the next ``process`` of ``n`` input samples returns."""
        if self.identity:
            return n
        last = n * self.up - 1 - self._j
        return 0 if last < 0 else last // self.down + 1

    def _process_blocks(self, n_rows: int, out: np.ndarray, m: int) -> bool:
        """Fast path: all ``m`` outputs as one matrix product per channel (blocks of :data:`_GEMM_BLOCK`).

        Performance (docs/performance.md): for small ``up`` the outputs of a block of ``B`` (a multiple of ``up``)
        read overlapping stretches of ``S`` input rows with a fixed pattern of phases and offsets, so block ``q`` is
        row ``q`` of a strided view ``V (blocks, S)`` of ``_ext`` (no copy) and all its outputs are ``V @ H`` with a
        constant ``H (S, B)`` (:func:`_block_matrix`, shared by every stream with the same filter). One BLAS call
        replaces the gather of ``m x k`` values and ``m`` tiny products (8 -> 4 kHz: about 4x faster per 2000
        samples). The last, partial block reads a zero-padded copy of its rows (the padding only feeds outputs
        beyond ``m``, which are dropped). Returns False (nothing written) when ``up`` is too large for this path.

        Args:
            n_rows: valid rows of ``_ext`` (history + this chunk).
            out: ``(m, C)`` float32 output.
            m: outputs due.
        """
        up, down = self.up, self.down
        if up > _GEMM_MAX_UP:
            return False
        b = max(up, _GEMM_BLOCK - _GEMM_BLOCK % up)
        j = self._j
        h = _block_matrix(up, down, b, j % up, self._phases.tobytes(), self.n_taps_per_phase)
        span = h.shape[0]
        rows_per_block = b * down // up
        base = j // up  # _ext row where output 0's window starts
        ext = self._ext
        c_all = self.n_channels
        item = ext.itemsize
        blocks = m // b
        if blocks:
            for c in range(c_all):
                view = np.ndarray(
                    (blocks, span), dtype=np.float32, buffer=ext, offset=(base * c_all + c) * item,
                    strides=(rows_per_block * c_all * item, c_all * item),
                )
                out[: blocks * b, c] = (view @ h).reshape(-1)
        tail = m - blocks * b
        if tail:
            start = base + blocks * rows_per_block
            seg = ext[start : min(n_rows, start + span)]
            padded = np.zeros((span, c_all), dtype=np.float32)
            padded[: seg.shape[0]] = seg
            out[blocks * b :] = (padded.T @ h[:, :tail]).T
        return True

    def input_needed(self, m: int) -> int:
        """Fewest input samples after which :meth:`process` will have returned at least ``m`` more samples.

        The inverse of :meth:`output_length` (0 for ``m <= 0``): ``output_length(input_needed(m)) >= m`` and
        ``output_length(input_needed(m) - 1) < m``. Lets a caller queue input until an output sample is due.
        """
        if m <= 0:
            return 0
        if self.identity:
            return m
        # output_length(n) >= m  <=>  n * up - 1 - j >= (m - 1) * down  (j >= 0 is the next output's offset)
        return -(-((m - 1) * self.down + 1 + self._j) // self.up)

    def reset(self) -> None:
        """Forget the history; the next sample is treated as the start of the stream."""
        self._ext[:] = 0.0
        self._j = 0
        self.total_in = 0
        self.total_out = 0

    def process(self, x: Any) -> FloatArray:
        """Resample the next block of the stream.

        Args:
            x: ``(n, n_channels)`` samples at ``fs_in`` (µV; any real dtype; ``n`` may be 0).

        Returns:
            ``(m, n_channels)`` float32 samples at :attr:`fs_out`; ``m`` = :meth:`output_length` ``(n)``.
            With equal rates the input is returned as float32 (no copy if it already is float32).
        """
        block = _as_block(x, self.n_channels, "Resampler")
        n = int(block.shape[0])
        if self.identity:
            self.total_in += n
            self.total_out += n
            return np.asarray(block, dtype=np.float32)
        k = self.n_taps_per_phase
        hist = k - 1
        m = self.output_length(n)
        if hist + n > self._ext.shape[0]:
            grown = np.zeros((max(hist + n, 2 * self._ext.shape[0]), self.n_channels), dtype=np.float32)
            grown[:hist] = self._ext[:hist]
            self._ext = grown
        ext = self._ext
        ext[hist : hist + n] = block
        out = np.empty((m, self.n_channels), dtype=np.float32)
        if m and not self._process_blocks(hist + n, out, m):
            # (hist + n - k + 1, C, k) strided view: windows[s] = ext[s : s + k].T, no copy.
            windows = sliding_window_view(ext[: hist + n], k, axis=0)
            step = max(1, self._BLOCK_ELEMENTS // (k * self.n_channels))
            for b0 in range(0, m, step):
                b1 = min(m, b0 + step)
                pos = self._j + np.arange(b0, b1, dtype=np.int64) * self.down
                starts = pos // self.up  # window start row in ext == i0 - (k - 1) - (total_in - hist)
                phase_taps = self._phases[pos % self.up]  # (b, k)
                # (b, C, k) @ (b, k, 1) -> (b, C, 1)
                np.matmul(windows[starts], phase_taps[:, :, None], out=out[b0:b1, :, None])
        # Keep the newest hist input samples for the next chunk (overlapping copy is handled by numpy).
        ext[:hist] = ext[n : n + hist]
        self._j += m * self.down - n * self.up
        self.total_in += n
        self.total_out += m
        return out
