"""Training SpectroEMG-Net on the clinical recordings, with exactly the streaming preprocessing.

Preprocessing (:func:`prepare`) is the stream's: the recording's usable range goes through
:class:`streamemg.dsp.StreamFilter` (high-pass + mains notch at the native rate) and
:class:`streamemg.dsp.Resampler` (to the model rate) from its first sample, as one stream would receive it
(the DSP owners test that chunked processing equals whole-signal processing). Windows are then
``config.window_samples`` long:

- *stream windows* end at ``window_samples + i * hop_samples`` (the grid a stream cuts), each with the
  quality flags :func:`streamemg.estimates.assess_quality` gives its raw (native-rate, unfiltered) span;
  evaluation uses these, aggregated exactly as a stream does;
- *training windows* start anywhere on a fine grid (time-shift augmentation) whose raw span passes the same
  quality gate and touches no saturated sample.

The prepared model-rate signal of each recording is cached as ``.npz`` under a temporary folder keyed by
everything that changes it (never inside the project).

Training (:func:`fit`): AdamW + one-cycle learning rate, cross-entropy with light label smoothing,
windows drawn each epoch with weights that balance sites, classes within a site and (by the square root of
their duration) subjects within a class; augmentation on the waveform (gain, white noise, mains hum with
harmonics at a random 50/60 Hz) runs on the batch before the shared feature module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..types import CLASS_NAMES
from .datasets import RecordingRef, clipped_mask

__all__ = [
    "AugmentSettings",
    "PreparedRecording",
    "TrainSettings",
    "default_config",
    "fit",
    "prepare",
    "prepare_all",
    "select_device",
    "train_bundle",
]


def default_config() -> Any:
    """The shipped model's configuration (decided by measurement; see models/README.md).

    4 kHz model rate (8 kHz measured no better, it halves the cost, and 4 kHz streams such as PhysioNet
    emgdb can be classified without upsampling), 1 s windows every 0.25 s (2 s windows measured no better at
    twice the cost), 128-point frames with 50 % overlap (31.25 Hz bins) from 20 Hz to 2 kHz, absolute log
    power (per-window normalisation measured equal within a site and worse across sites), 20 Hz high-pass
    and a 50 Hz comb notch (3 notches; without it the Mendeley 'Healthy' class is partly recognised by hum).
    """
    from ..dsp import FilterSettings
    from ..features import FeatureSettings
    from ..model import ArchSettings, ModelConfig

    fs = 4000.0
    return ModelConfig(
        fs=fs,
        window_samples=4000,
        hop_samples=1000,
        features=FeatureSettings(
            fs=fs, n_fft=128, win_length=128, hop_length=64, fmin=20.0, fmax=2000.0, normalize="none"
        ),
        filters=FilterSettings(highpass_hz=20.0, notch_hz=50.0, notch_harmonics=3),
        arch=ArchSettings(),
    )


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class AugmentSettings:
    """Waveform augmentation of training windows (after the stream filters, before the features).

    Attributes:
        gain_db: each window is scaled by a gain drawn uniformly in ``[-gain_db, +gain_db]`` dB.
        noise_prob: probability of adding white noise to a window.
        noise_snr_db: ``(low, high)`` signal-to-noise ratio range (dB, relative to the window RMS).
        hum_prob: probability of adding mains hum (fundamental + 2 harmonics, random phases).
        hum_rel_db: ``(low, high)`` hum RMS relative to the window RMS, dB.
        hum_hz: mains frequencies drawn from (50 and/or 60 Hz).
        tilt_db_per_octave: each window's spectrum is tilted by a slope drawn uniformly in
            ``[-tilt, +tilt]`` dB per octave (about 1 kHz), imitating other electrodes and amplifier filters.
        time_shift: draw training windows at any grid offset (False: only the stream grid).
        lowpass_prob: probability of band-limiting a window with a 2nd-order low-pass roll-off (another
            amplifier's or needle's upper band edge).
        lowpass_hz: ``(low, high)`` range of that roll-off's corner frequency, Hz (drawn log-uniformly).
    """

    gain_db: float = 6.0
    noise_prob: float = 0.3
    noise_snr_db: tuple[float, float] = (10.0, 40.0)
    hum_prob: float = 0.5
    hum_rel_db: tuple[float, float] = (-30.0, 0.0)
    hum_hz: tuple[float, ...] = (50.0, 60.0)
    tilt_db_per_octave: float = 0.0
    time_shift: bool = True
    lowpass_prob: float = 0.0
    lowpass_hz: tuple[float, float] = (500.0, 2000.0)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gain_db) and self.gain_db >= 0):
            raise ConfigError(f"AugmentSettings.gain_db={self.gain_db!r}: give a non-negative number of dB, e.g. 6")
        for name in ("noise_prob", "hum_prob", "lowpass_prob"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ConfigError(f"AugmentSettings.{name}={v!r}: give a probability in [0, 1]")
        for name in ("noise_snr_db", "hum_rel_db"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ConfigError(f"AugmentSettings.{name}={(lo, hi)!r}: give (low, high) with low <= high")
        if not 0 < self.lowpass_hz[0] <= self.lowpass_hz[1]:
            raise ConfigError(
                f"AugmentSettings.lowpass_hz={self.lowpass_hz!r}: give (low, high) Hz with 0 < low <= high"
            )
        if not self.hum_hz or any(not f > 0 for f in self.hum_hz):
            raise ConfigError(f"AugmentSettings.hum_hz={self.hum_hz!r}: give mains frequencies in Hz, e.g. (50, 60)")

    @classmethod
    def off(cls) -> AugmentSettings:
        """No augmentation (and windows only on the stream grid)."""
        return cls(gain_db=0.0, noise_prob=0.0, hum_prob=0.0, tilt_db_per_octave=0.0, time_shift=False)


def parse_augment(text: str, base: AugmentSettings | None = None) -> AugmentSettings:
    """``"gain_db=20,lowpass_prob=0.5"`` -> :class:`AugmentSettings` (numbers only; others keep ``base``'s values).

    Raises:
        ConfigError: an unknown key or a value that is not a number (the message lists the keys).
    """
    base = base or AugmentSettings()
    numeric = ("gain_db", "noise_prob", "hum_prob", "tilt_db_per_octave", "lowpass_prob")
    changes: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in numeric:
            raise ConfigError(f"--augment {part!r}: write KEY=NUMBER with KEY one of {', '.join(numeric)}")
        try:
            changes[key] = float(value)
        except ValueError:
            raise ConfigError(f"--augment {part!r}: {value!r} is not a number") from None
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


BALANCE_MODES = ("none", "class", "site_class_subject")


@dataclass(frozen=True)
class TrainSettings:
    """How :func:`fit` trains.

    Attributes:
        epochs: passes; each draws ``draws_per_s`` windows per usable second of training data.
        batch_size: windows per optimisation step.
        lr: peak learning rate of the one-cycle schedule (AdamW).
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing.
        draws_per_s: training windows drawn per epoch per second of usable recording.
        balance: ``"none"`` (windows as they come), ``"class"`` (each class equal), ``"site_class_subject"``
            (each site equal, each class within a site equal, subjects within a class by the square root
            of their duration).
        grid_s: spacing of candidate training-window starts, s (the time-shift resolution).
        seed: seeds numpy, torch and the window draws.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when present).
        threads: torch CPU threads (None: leave torch's choice).
        augment: waveform augmentation.
    """

    epochs: int = 14
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.05
    draws_per_s: float = 2.0
    balance: str = "site_class_subject"
    grid_s: float = 0.05
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ConfigError(f"TrainSettings.{name}={v!r}: must be an integer >= 1")
        for name in ("lr", "draws_per_s", "grid_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"TrainSettings.{name}={v!r}: must be a positive number")
        if not (0 <= self.weight_decay < 1 and 0 <= self.label_smoothing < 1):
            raise ConfigError(
                f"TrainSettings.weight_decay={self.weight_decay!r} / label_smoothing={self.label_smoothing!r}: "
                "each must lie in [0, 1)"
            )
        if self.balance not in BALANCE_MODES:
            raise ConfigError(f"TrainSettings.balance={self.balance!r}: use one of {', '.join(BALANCE_MODES)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"TrainSettings.threads={self.threads!r}: give a positive count or None")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["augment"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["augment"].items()}
        return d


def select_device(requested: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; otherwise the named device (ConfigError if unusable)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError as exc:
        raise ConfigError(f"--device {requested!r}: not a device name; use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested!r}: CUDA is not available here; use --device cpu or auto")
    return dev


# ------------------------------------------------------------------------------------------------ preparation


@dataclass
class PreparedRecording:
    """One recording after the stream's preprocessing, with its windows' quality.

    Attributes:
        ref: the recording.
        x: ``(n,)`` float32 µV at the model rate (filtered, resampled; the usable range only).
        stream_ends: ``(W,)`` int64 end indices (exclusive) in ``x`` of the windows a stream cuts.
        stream_quality: ``(W,)`` the quality flag of each stream window (one channel).
        train_starts: ``(M,)`` int64 start indices of windows usable for training (quality ok, no clipping).
    """

    ref: RecordingRef
    x: np.ndarray
    stream_ends: np.ndarray
    stream_quality: list[str]
    train_starts: np.ndarray

    @property
    def stream_valid(self) -> np.ndarray:
        """``(W,)`` bool: the stream window passes the quality gate."""
        return np.array([q == "ok" for q in self.stream_quality], dtype=bool)

    def stream_windows(self, window_samples: int) -> np.ndarray:
        """``(W, T)`` float32: the stream's windows."""
        if len(self.stream_ends) == 0:
            return np.zeros((0, window_samples), dtype=np.float32)
        idx = self.stream_ends[:, None] - window_samples + np.arange(window_samples)[None, :]
        return self.x[idx]


def _cache_key(config: Any, quality: Any, grid_s: float) -> str:
    payload = {
        "v": 3,
        "fs": config.fs,
        "window": config.window_samples,
        "hop": config.hop_samples,
        "filters": config.filters.to_dict(),
        "quality": dataclasses.asdict(quality),
        "grid_s": grid_s,
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$STREAMEMG_CACHE`` or ``<system temp>/streamemg-cache``: prepared signals live there, never in the project."""
    env = os.environ.get("STREAMEMG_CACHE")
    return Path(env) if env else Path(tempfile.gettempdir()) / "streamemg-cache"


def prepare(
    ref: RecordingRef, config: Any, quality: Any = None, grid_s: float = 0.05, cache_dir: Path | None = None
) -> PreparedRecording:
    """Run one recording through the stream's preprocessing and cut its stream and training windows.

    Args:
        ref: the recording (its usable range is used: A08's tail never enters).
        config: the :class:`~streamemg.model.ModelConfig` (rate, window, hop, filters).
        quality: :class:`~streamemg.estimates.QualitySettings` of the gate (default settings if None).
        grid_s: spacing of candidate training-window starts, s.
        cache_dir: where prepared signals are cached (None: :func:`default_cache_dir`; a missing folder is made).
    """
    from ..dsp import Resampler, StreamFilter
    from ..estimates import QualitySettings, assess_quality

    quality = quality if quality is not None else QualitySettings()
    cache_root = (cache_dir or default_cache_dir()) / _cache_key(config, quality, grid_s)
    cache_file = cache_root / f"{ref.dataset}_{ref.record}.npz".replace(":", "_")
    if cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                return PreparedRecording(
                    ref, z["x"], z["stream_ends"], [str(q) for q in z["stream_quality"]], z["train_starts"]
                )
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            cache_file.unlink(missing_ok=True)

    rec = ref.load(trim=True)
    raw = rec.data[:, :1]
    fs_in, fs_out = float(rec.fs), float(config.fs)
    filt = StreamFilter(config.filters, fs_in, 1)
    res = Resampler(fs_in, fs_out, 1)
    x = res.process(filt.process(raw))[:, 0].astype(np.float32)
    T = int(config.window_samples)
    ratio = fs_in / fs_out
    raw_len = max(1, math.ceil(T * ratio))
    n_raw = raw.shape[0]

    def raw_span(end_model: int) -> np.ndarray:
        # the native samples that arrived with the window: the last raw_len up to the window's end
        stop = min(n_raw, max(1, round(end_model * ratio)))
        return raw[max(0, stop - raw_len) : stop]

    ends, stream_q = _stream_windows(ref, raw, fs_in, config, quality, x)

    clip = clipped_mask(ref, raw)
    clip_cum = np.concatenate([[0], np.cumsum(clip, dtype=np.int64)])
    grid = max(1, round(grid_s * fs_out))
    starts = np.arange(0, x.shape[0] - T + 1, grid, dtype=np.int64)
    ok: list[int] = []
    delay = round(getattr(res, "delay_s", 0.0) * fs_in)
    for s in starts.tolist():
        span = raw_span(s + T)
        if assess_quality(np.ascontiguousarray(span), quality)[0] != "ok":
            continue
        stop = min(n_raw, max(1, round((s + T) * ratio)))
        a, b = max(0, stop - raw_len - delay), min(n_raw, stop + delay)
        if clip_cum[b] - clip_cum[a] > 0:
            continue
        ok.append(s)
    prepared = PreparedRecording(ref, x, ends, stream_q, np.array(ok, dtype=np.int64))
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")  # own name: processes preparing at once do not mix
        np.savez(tmp, x=x, stream_ends=ends, stream_quality=np.array(stream_q), train_starts=prepared.train_starts)
        os.replace(tmp, cache_file)
    except OSError:
        pass  # the cache is an optimisation only
    return prepared


_BUNDLES: dict[str, Any] = {}


def _stream_windows(
    ref: RecordingRef, raw: np.ndarray, fs_in: float, config: Any, quality: Any, x: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Feed the recording to the stream's own per-stream state (:class:`streamemg.pipeline.StreamState`)
    as one chunk and collect its windows: ``(end indices in x, quality flag)`` per window.

    The windows' samples are checked against ``x`` (whole-recording preprocessing) so that training and
    evaluation provably see what a stream sees.
    """
    from ..model import untrained_bundle
    from ..pipeline import PipelineSettings, signal_windows

    key = json.dumps(config.to_dict(), sort_keys=True)
    if key not in _BUNDLES:
        _BUNDLES[key] = untrained_bundle(config)
    windows = signal_windows(raw, fs_in, _BUNDLES[key], PipelineSettings(quality=quality), name="prepare")
    T, hop = int(config.window_samples), int(config.hop_samples)
    ends = np.array([T + w.index * hop for w in windows], dtype=np.int64)
    for w, e in zip(windows[:: max(1, len(windows) // 4)], ends[:: max(1, len(windows) // 4)], strict=True):
        if not np.allclose(w.data[0], x[e - T : e], rtol=1e-4, atol=1e-3):
            raise AssertionError(f"{ref.record}: stream window {w.index} differs from whole-recording preprocessing")
    return ends, [w.quality[0] for w in windows]


def prepare_all(
    refs: Sequence[RecordingRef],
    config: Any,
    quality: Any = None,
    grid_s: float = 0.05,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> list[PreparedRecording]:
    """:func:`prepare` every recording, with a rich progress bar."""
    out: list[PreparedRecording] = []
    slow = [r for r in refs if r.fs < float(config.fs)]
    if slow:
        logging.getLogger(__name__).warning(
            "%d recording(s) sampled below the model rate %g Hz are skipped (no upsampling): %s",
            len(slow),
            config.fs,
            ", ".join(r.record for r in slow[:5]),
        )
    with _progress(progress) as bar:
        task = bar.add_task("preparing recordings", total=len(refs) - len(slow), info="")
        for ref in refs:
            if ref.fs < float(config.fs):
                continue
            out.append(prepare(ref, config, quality, grid_s, cache_dir))
            bar.advance(task)
    return out


# ------------------------------------------------------------------------------------------------ training


class _NullProgress:
    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def advance(self, *a: Any, **k: Any) -> None:
        return None

    def update(self, *a: Any, **k: Any) -> None:
        return None

    def reset(self, *a: Any, **k: Any) -> None:
        return None


def _progress(enabled: bool) -> Any:
    if not enabled:
        return _NullProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=True,
    )


def draw_weights(prepared: Sequence[PreparedRecording], balance: str) -> np.ndarray:
    """Per-recording sampling mass ``(R,)`` (sums to 1) under a balance mode (see :class:`TrainSettings`)."""
    dur = np.array([max(len(p.train_starts), 0) for p in prepared], dtype=np.float64)
    if balance == "none" or dur.sum() == 0:
        return dur / max(dur.sum(), 1.0)
    if balance == "class":
        w = np.zeros_like(dur)
        labels = np.array([p.ref.label_index for p in prepared])
        present = [c for c in np.unique(labels) if dur[labels == c].sum() > 0]
        for c in present:
            m = labels == c
            w[m] = dur[m] / dur[m].sum() / len(present)
        return w / w.sum()
    # site -> class -> subject (sqrt of duration) -> recording (duration)
    tree: dict[str, dict[int, dict[str, list[int]]]] = {}
    for i, p in enumerate(prepared):
        if dur[i] > 0:
            tree.setdefault(p.ref.site, {}).setdefault(p.ref.label_index, {}).setdefault(p.ref.subject, []).append(i)
    w = np.zeros_like(dur)
    for classes in tree.values():
        for subjects in classes.values():
            sub_mass = {s: math.sqrt(dur[idx].sum()) for s, idx in subjects.items()}
            total = sum(sub_mass.values())
            for s, idx in subjects.items():
                share = sub_mass[s] / total / len(classes) / len(tree)
                w[idx] = share * dur[idx] / dur[idx].sum()
    return w / w.sum()


def augment_batch(x: torch.Tensor, fs: float, settings: AugmentSettings, gen: torch.Generator) -> torch.Tensor:
    """Gain, white noise and mains hum on a batch ``(B, T)`` µV (in place on a copy; same device)."""
    b, t = x.shape
    dev = x.device
    out = x.clone()
    rms = out.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-3)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, 1, generator=gen) * (hi - lo) + lo).to(dev)

    if settings.noise_prob > 0:
        on = (torch.rand(b, 1, generator=gen) < settings.noise_prob).to(dev, out.dtype)
        snr = uniform(*settings.noise_snr_db)
        noise = torch.randn(b, t, generator=gen).to(dev)
        out = out + on * noise * rms * torch.pow(10.0, -snr / 20.0)
    if settings.hum_prob > 0:
        on = (torch.rand(b, 1, generator=gen) < settings.hum_prob).to(dev, out.dtype)
        rel = uniform(*settings.hum_rel_db)
        choice = torch.randint(len(settings.hum_hz), (b, 1), generator=gen)
        f0 = torch.tensor(settings.hum_hz, dtype=torch.float32)[choice].to(dev)
        f0 = f0 * (1 + 0.002 * torch.randn(b, 1, generator=gen).to(dev))  # mains frequency wanders slightly
        tt = torch.arange(t, device=dev, dtype=torch.float32)[None, :] / fs
        hum = torch.zeros(b, t, device=dev)
        for h, amp in ((1, 1.0), (2, 0.3), (3, 0.5)):
            if h * f0.max().item() >= fs / 2:
                continue
            phase = (torch.rand(b, 1, generator=gen) * 2 * math.pi).to(dev)
            hum = hum + amp * torch.sin(2 * math.pi * h * f0 * tt + phase)
        hum = hum / hum.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-6)
        out = out + on * hum * rms * torch.pow(10.0, rel / 20.0)
    if settings.tilt_db_per_octave > 0:
        spec = torch.fft.rfft(out, dim=1)
        freqs = torch.fft.rfftfreq(t, d=1.0 / fs).to(dev).clamp_min(20.0)
        slope = uniform(-settings.tilt_db_per_octave, settings.tilt_db_per_octave)
        gain = torch.pow(10.0, slope * torch.log2(freqs / 1000.0)[None, :] / 20.0)
        out = torch.fft.irfft(spec * gain, n=t, dim=1)
    if settings.lowpass_prob > 0:
        on = (torch.rand(b, 1, generator=gen) < settings.lowpass_prob).to(dev)
        lo, hi = math.log(settings.lowpass_hz[0]), math.log(settings.lowpass_hz[1])
        corner = torch.exp(uniform(lo, hi))
        freqs = torch.fft.rfftfreq(t, d=1.0 / fs).to(dev)[None, :]
        gain = 1.0 / torch.sqrt(1.0 + (freqs / corner) ** 4)  # 2nd-order Butterworth magnitude
        gain = torch.where(on, gain, torch.ones_like(gain))
        out = torch.fft.irfft(torch.fft.rfft(out, dim=1) * gain, n=t, dim=1)
    if settings.gain_db > 0:
        g = uniform(-settings.gain_db, settings.gain_db)
        out = out * torch.pow(10.0, g / 20.0)
    return out


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained classifier and a plain-typed summary."""

    model: nn.Module
    summary: dict[str, Any]


def fit(
    prepared: Sequence[PreparedRecording],
    config: Any,
    settings: TrainSettings | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train a :class:`~streamemg.model.Classifier` on prepared recordings.

    Args:
        prepared: training recordings (their ``train_starts`` windows are drawn).
        config: the model configuration.
        settings: training settings (defaults if None).
        progress: show rich progress bars.
        log: called with one line per epoch (loss, accuracy on the drawn windows).

    Returns:
        the classifier (eval mode, on CPU) and a summary (epochs, seconds, windows, final loss, ...).
    """
    from ..model import Classifier

    settings = settings or TrainSettings()
    if not prepared:
        raise ConfigError("no training recordings: check the data folders and dataset selection")
    labels_present = {p.ref.label_index for p in prepared if len(p.train_starts)}
    if len(labels_present) < 2:
        raise ConfigError(f"training needs windows of at least two classes, got {sorted(labels_present)}")
    device = select_device(settings.device)
    old_threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    model = Classifier(config).to(device)
    T = int(config.window_samples)
    grid = max(1, round(settings.grid_s * config.fs))
    weights = draw_weights(prepared, settings.balance)
    usable_s = sum(len(p.train_starts) for p in prepared) * grid / config.fs
    per_epoch = max(settings.batch_size, round(settings.draws_per_s * usable_s))
    steps_per_epoch = math.ceil(per_epoch / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=total_steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    labels = np.array([p.ref.label_index for p in prepared], dtype=np.int64)
    aug = settings.augment
    t0 = time.perf_counter()
    history: list[dict[str, float]] = []
    with _progress(progress) as bar:
        ep_task = bar.add_task("training epochs", total=settings.epochs, info="")
        st_task = bar.add_task("  steps", total=steps_per_epoch, info="")
        for epoch in range(settings.epochs):
            model.train()
            bar.reset(st_task, total=steps_per_epoch)
            rec_idx = rng.choice(len(prepared), size=steps_per_epoch * settings.batch_size, p=weights)
            run_loss, run_correct, run_n = 0.0, 0, 0
            for step in range(steps_per_epoch):
                sel = rec_idx[step * settings.batch_size : (step + 1) * settings.batch_size]
                batch = np.empty((len(sel), T), dtype=np.float32)
                for j, r in enumerate(sel.tolist()):
                    p = prepared[r]
                    s = int(p.train_starts[rng.integers(len(p.train_starts))])
                    if aug.time_shift:
                        s = int(np.clip(s + rng.integers(-grid // 2, grid // 2 + 1), 0, p.x.shape[0] - T))
                    batch[j] = p.x[s : s + T]
                xb = torch.from_numpy(batch).to(device)
                yb = torch.from_numpy(labels[sel]).to(device)
                xb = augment_batch(xb, float(config.fs), aug, gen)
                logits = model(xb)
                loss = loss_fn(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                sched.step()
                run_loss += float(loss.item()) * len(sel)
                run_correct += int((logits.argmax(1) == yb).sum().item())
                run_n += len(sel)
                bar.update(st_task, advance=1, info=f"loss {run_loss / run_n:.3f}")
            rec = {"epoch": epoch + 1, "loss": run_loss / run_n, "train_acc": run_correct / run_n}
            history.append(rec)
            bar.update(ep_task, advance=1, info=f"loss {rec['loss']:.3f} acc {rec['train_acc']:.3f}")
            if log is not None:
                log(f"epoch {epoch + 1}/{settings.epochs}: loss {rec['loss']:.4f}, train acc {rec['train_acc']:.3f}")
    if settings.threads is not None:
        torch.set_num_threads(old_threads)
    model = model.to("cpu").eval()
    summary = {
        "epochs": settings.epochs,
        "steps": total_steps,
        "windows_per_epoch": steps_per_epoch * settings.batch_size,
        "seconds": round(time.perf_counter() - t0, 1),
        "device": str(device),
        "final_loss": history[-1]["loss"],
        "final_train_acc": history[-1]["train_acc"],
        "history": history,
        "settings": settings.to_dict(),
        "recordings": len(prepared),
        "subjects": len({p.ref.subject for p in prepared}),
    }
    return FitResult(model, summary)


@torch.inference_mode()
def predict_windows(
    model: nn.Module, windows: np.ndarray, batch: int = 256, device: str = "cpu", site: torch.Tensor | None = None
) -> np.ndarray:
    """Softmax probabilities ``(B, K)`` float32 for windows ``(B, T)`` µV.

    ``site``: optional ``(2, 2, F)`` site calibration applied to every window
    (:meth:`streamemg.clinical.site.SiteProfile.tensor`).
    """
    model = model.to(device).eval()
    out = np.zeros((windows.shape[0], len(CLASS_NAMES)), dtype=np.float32)
    for i in range(0, windows.shape[0], batch):
        xb = torch.from_numpy(np.ascontiguousarray(windows[i : i + batch])).to(device)
        if site is None:
            logits = model(xb)
        else:
            logits = model(xb, site=site.to(device)[None].expand(xb.shape[0], -1, -1, -1))
        out[i : i + batch] = torch.softmax(logits, dim=1).cpu().numpy()
    return out


def feature_reference(model: Any, prepared: Sequence[PreparedRecording], config: Any) -> dict[str, Any]:
    """The training windows' per-plane, per-frequency feature mean and spread, sites weighted equally.

    Stored in the bundle (``training["feature_reference"]``) as the target a site profile maps a new site to
    (:mod:`streamemg.clinical.site`). Uses the quality-checked stream windows of every training recording.
    """
    from .site import feature_moments, recording_windows

    by_site: dict[str, list[PreparedRecording]] = {}
    for p in prepared:
        by_site.setdefault(p.ref.site, []).append(p)
    means, variances = [], []
    for recs in by_site.values():
        m = feature_moments(model.features, recording_windows(recs, int(config.window_samples)))
        means.append(m["mean"])
        variances.append(m["std"] ** 2 + m["mean"] ** 2)
    mean = np.mean(means, axis=0)
    std = np.sqrt(np.maximum(np.mean(variances, axis=0) - mean**2, 1e-12))
    return {"mean": mean.round(5).tolist(), "std": std.round(5).tolist(), "sites": sorted(by_site)}


def train_bundle(
    prepared: Sequence[PreparedRecording],
    config: Any,
    settings: TrainSettings | None = None,
    name: str = "spectroemg-net",
    metrics: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Any:
    """Train on ``prepared`` and wrap the weights with their config and summary in a ModelBundle (trained)."""
    from ..model import ModelBundle, count_flops

    settings = settings or TrainSettings()
    result = fit(prepared, config, settings, progress=progress, log=log)
    refs = [p.ref for p in prepared]
    datasets: dict[str, dict[str, Any]] = {}
    for r in refs:
        d = datasets.setdefault(r.dataset, {"recordings": 0, "subjects": set(), "classes": {}})
        d["recordings"] += 1
        d["subjects"].add(r.subject)
        d["classes"][r.label] = d["classes"].get(r.label, 0) + 1
    training = dict(result.summary)
    training["data"] = {
        k: {"recordings": v["recordings"], "subjects": len(v["subjects"]), "classes": v["classes"]}
        for k, v in datasets.items()
    }
    training["subject_ids"] = sorted({r.subject for r in refs})
    training["flops_per_window"] = int(count_flops(result.model, int(config.window_samples)))  # type: ignore[arg-type]
    training["parameters"] = int(sum(p.numel() for p in result.model.parameters()))
    training["torch"] = str(torch.__version__)
    training["feature_reference"] = feature_reference(result.model, prepared, config)
    return ModelBundle(
        config=config,
        state_dict={k: v.detach().clone() for k, v in result.model.state_dict().items()},
        trained=True,
        name=name,
        training=training,
        metrics=dict(metrics or {}),
    )


def render_model_card(bundle: Any, command: str = "") -> str:
    """A Markdown model card from a bundle's config, training summary and embedded metrics."""
    cfg = bundle.config
    tr = bundle.training
    lines = [
        f"# Model card: {bundle.name}",
        "",
        "**Research use only; not a medical device.** Outputs are not a diagnosis.",
        "",
        "## Model",
        "",
        f"- Classes: {', '.join(cfg.classes)}",
        f"- Model rate {cfg.fs:g} Hz; window {cfg.window_s:g} s ({cfg.window_samples} samples), hop {cfg.hop_s:g} s",
        f"- Features: {json.dumps(cfg.features.to_dict())}",
        f"- Filters (native rate, causal): {json.dumps(cfg.filters.to_dict())}",
        f"- Architecture: {json.dumps(cfg.arch.to_dict())}",
        f"- Parameters: {tr.get('parameters', 'n/a')}; FLOPs per window: {tr.get('flops_per_window', 'n/a')}",
        "",
        "## Training",
        "",
    ]
    if command:
        lines += [f"Command: `{command}`", ""]
    origin = tr.get("adapted_from")
    if isinstance(origin, dict):
        base_data = ", ".join(f"{k} ({v.get('recordings')} recordings)" for k, v in (origin.get("data") or {}).items())
        lines += [
            f"**Adapted** (fine-tuned) from `{origin.get('file')}` ({origin.get('name')}, fingerprint "
            f"{origin.get('fingerprint')}, trained on {base_data or 'unrecorded data'}) on the recordings below "
            f"({tr.get('steps')} steps, layers `{(tr.get('settings') or {}).get('layers')}`).",
            "",
        ]
    for key, value in (tr.get("data") or {}).items():
        lines.append(
            f"- {key}: {value['recordings']} recordings, {value['subjects']} subjects, classes {value['classes']}"
        )
    lines += [
        f"- Epochs {tr.get('epochs')}, {tr.get('windows_per_epoch')} windows per epoch, {tr.get('seconds')} s on "
        f"{tr.get('device')}; final training loss {tr.get('final_loss', float('nan')):.4f}"
        if "epochs" in tr
        else f"- {tr.get('steps')} fine-tuning steps, {tr.get('seconds')} s on {tr.get('device')}",
        f"- Settings: `{json.dumps(tr.get('settings', {}))}`",
        "",
        "## Metrics",
        "",
    ]
    reports = bundle.metrics.get("reports", []) if isinstance(bundle.metrics, dict) else []
    if not reports:
        lines.append("No evaluation embedded (run `streamemg evaluate ... --json` and pass it with --metrics).")
    for rep in reports:
        lines.append(f"### {rep.get('protocol')}")
        lines.append("")
        lines.append("| level | n | accuracy | macro-F1 |")
        lines.append("|---|---|---|---|")
        for level, m in rep.get("levels", {}).items():
            acc = m.get("accuracy")
            f1 = m.get("macro_f1")
            lines.append(
                f"| {level} | {m.get('n')} | {'n/a' if acc is None else f'{100 * acc:.1f}%'} | "
                f"{'n/a' if f1 is None else f'{100 * f1:.1f}%'} |"
            )
        for note in rep.get("notes", []):
            lines.append(f"\nNote: {note}")
        lines.append("")
    if bundle.metrics.get("command"):
        lines += [f"Evaluation command: `{bundle.metrics['command']}`", ""]
    lines += [
        "## Intended use and limitations",
        "",
        "- Research and teaching: real-time demonstration of spectral needle-EMG classification.",
        "- Not a medical device; not validated for clinical decisions. Small data sets (tens of subjects),",
        "  biceps brachii at low contraction; other muscles, electrodes and amplifiers are out of distribution.",
        "- 'ALS' means the neurogenic class: the training data's 'Neuropathy' recordings are generic neuropathy.",
        "",
    ]
    return "\n".join(lines)
