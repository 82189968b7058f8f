"""Site calibration without labels: a site profile and how the model applies it.

A *site* is one recording setup (amplifier, needle, filters, gain, muscle, contraction habits). The model's
features are an absolute log-spectrogram and its delta, ``(2, F, N)`` per window; a new site shifts and
stretches their distribution per frequency (another gain moves every bin of the ln-PSD plane by the same
amount, another band limit or needle tilts it, another noise floor compresses its spread). A site profile
records, for that site's unlabelled windows, the mean and standard deviation of each plane and frequency
(over windows and frames, every recording weighted equally), next to the same statistics of the model's
training windows (the model's *reference*, stored in the bundle at training time). Applying a profile maps
each window's features per plane and frequency::

    f' = (f - site_mean) / site_std * ref_std + ref_mean          (mode "affine")
    f' = f - site_mean + ref_mean                                 (mode "shift": means only)

which the classifier does inside its forward pass for a per-window ``(B, 2, 2, F)`` tensor of
``(scale, shift)`` gathered by site, so one batch can hold windows of many sites
(:meth:`streamemg.model.Classifier.forward`).

The profile is a small JSON file (about 10 kB for 64 bins), versioned, human readable: it also states the
site's level (dB re the reference), spectral tilt (dB per octave re the reference), noise floor and median RMS.
It names the model it was made for (name and weight fingerprint) and the feature layout; loading it for any
other model fails with a :class:`~streamemg.errors.ConfigError` that says to run ``streamemg calibrate``
again. What calibration does to accuracy, per direction, is measured in ``docs/experiments.md``: it is not a
uniform improvement.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

__all__ = [
    "PROFILE_FORMAT",
    "PROFILE_MODES",
    "PROFILE_VERSION",
    "SiteProfile",
    "feature_layout",
    "feature_moments",
    "make_profile",
    "reference_statistics",
]

PROFILE_FORMAT = "streamemg-site-profile"
PROFILE_VERSION = 1
PROFILE_MODES = ("affine", "shift")

#: where a bundle keeps its reference feature statistics
REFERENCE_KEY = "feature_reference"


def feature_layout(config: Any) -> dict[str, Any]:
    """What a profile's per-frequency statistics depend on: model rate, window, spectrogram and filters."""
    feats = config.features
    return {
        "fs": float(config.fs),
        "window_samples": int(config.window_samples),
        "n_fft": int(feats.n_fft),
        "win_length": int(feats.win_length),
        "hop_length": int(feats.hop_length),
        "fmin": float(feats.fmin),
        "fmax": float(feats.fmax),
        "n_freqs": int(feats.n_freqs),
        "normalize": str(feats.normalize),
        "delta_width": int(feats.delta_width),
        "filters": config.filters.to_dict(),
    }


@torch.inference_mode()
def feature_moments(features: torch.nn.Module, recordings: Sequence[np.ndarray], batch: int = 256) -> dict[str, Any]:
    """Per-plane, per-frequency mean and standard deviation of the features of windows, recordings equal.

    Args:
        features: the model's :class:`~streamemg.features.SpectralFeatures` (``(B, T) -> (B, 2, F, N)``).
        recordings: one ``(W_i, T)`` float32 µV array of (quality-checked) windows per recording.

    Returns:
        ``{"mean": (2, F), "std": (2, F), "windows": int, "recordings": int, "rms_uv": median window RMS,
        "frame_power_db": 10th percentile of frame power, dB re 1 µV²/Hz}``.

    Raises:
        ConfigError: no window at all.
    """
    sums: list[np.ndarray] = []
    sq: list[np.ndarray] = []
    rms: list[np.ndarray] = []
    floor: list[np.ndarray] = []
    n_windows = 0
    for windows in recordings:
        if len(windows) == 0:
            continue
        s1 = s2 = None
        count = 0
        for i in range(0, len(windows), batch):
            xb = torch.from_numpy(np.ascontiguousarray(windows[i : i + batch], dtype=np.float32))
            f = features(xb).double()  # (b, 2, F, N)
            a, b = f.sum(dim=(0, 3)), (f * f).sum(dim=(0, 3))
            s1 = a if s1 is None else s1 + a
            s2 = b if s2 is None else s2 + b
            count += f.shape[0] * f.shape[3]
            rms.append(np.sqrt(np.mean(np.square(windows[i : i + batch], dtype=np.float64), axis=1)))
            floor.append(torch.logsumexp(f[:, 0], dim=1).flatten().numpy())  # ln of summed PSD per frame
        assert s1 is not None and s2 is not None
        sums.append((s1 / count).numpy())
        sq.append((s2 / count).numpy())
        n_windows += len(windows)
    if not sums:
        raise ConfigError(
            "calibration found no usable window (each needs one full window of signal that passes the quality "
            "gate); give longer or livelier recordings of the site"
        )
    mean = np.mean(sums, axis=0)
    var = np.maximum(np.mean(sq, axis=0) - mean**2, 1e-12)
    return {
        "mean": mean,
        "std": np.sqrt(var),
        "windows": n_windows,
        "recordings": len(sums),
        "rms_uv": float(np.median(np.concatenate(rms))),
        "frame_power_db": float(np.percentile(np.concatenate(floor), 10) * 10 / math.log(10)),
    }


def reference_statistics(bundle: Any) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's reference ``(mean (2, F), std (2, F))``.

    Raises:
        ConfigError: the bundle holds none (it was trained by an older streamemg).
    """
    ref = bundle.training.get(REFERENCE_KEY) if isinstance(bundle.training, dict) else None
    n_freqs = int(bundle.config.features.n_freqs)
    try:
        mean = np.asarray(ref["mean"], dtype=np.float64)  # type: ignore[index]
        std = np.asarray(ref["std"], dtype=np.float64)  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        raise ConfigError(
            f"model {bundle.name!r} carries no reference feature statistics, so a site cannot be calibrated "
            "against it; retrain it with this streamemg (`streamemg train` stores them) or use the shipped model"
        ) from None
    if mean.shape != (2, n_freqs) or std.shape != (2, n_freqs):
        raise ConfigError(f"model {bundle.name!r}: reference statistics shaped {mean.shape}, expected (2, {n_freqs})")
    return mean, std


def _slope_db_per_octave(freqs: np.ndarray, diff_ln: np.ndarray) -> float:
    x = np.log2(freqs)
    y = diff_ln * 10 / math.log(10)
    return float(np.polyfit(x, y, 1)[0])


@dataclass(frozen=True)
class SiteProfile:
    """A site's feature statistics next to the model's reference, for one model (see the module doc).

    Attributes:
        site: the site's name.
        mode: ``"affine"`` (means and spreads) or ``"shift"`` (means only).
        model_name, model_fingerprint: the model it was made for (:func:`streamemg.model.bundle_fingerprint`).
        layout: :func:`feature_layout` of that model.
        freqs_hz: ``(F,)`` bin centres.
        site_mean, site_std, ref_mean, ref_std: ``(2, F)`` each (ln-PSD plane, delta plane).
        summary: human-readable facts (level and tilt re the reference, noise floor, RMS, data counted).
        created: UTC time of creation, ISO 8601.
    """

    site: str
    mode: str
    model_name: str
    model_fingerprint: str
    layout: dict[str, Any]
    freqs_hz: np.ndarray
    site_mean: np.ndarray
    site_std: np.ndarray
    ref_mean: np.ndarray
    ref_std: np.ndarray
    summary: dict[str, Any]
    created: str = ""

    def __post_init__(self) -> None:
        if self.mode not in PROFILE_MODES:
            raise ConfigError(f"site profile mode {self.mode!r}: use one of {', '.join(PROFILE_MODES)}")
        f = len(self.freqs_hz)
        for name in ("site_mean", "site_std", "ref_mean", "ref_std"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (2, f) or not np.isfinite(arr).all():
                raise ConfigError(f"site profile {self.site!r}: {name} must be 2 x {f} finite numbers")
        if (np.asarray(self.site_std) <= 0).any() or (np.asarray(self.ref_std) <= 0).any():
            raise ConfigError(f"site profile {self.site!r}: standard deviations must be above 0")

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scale, shift)``, each ``(2, F)`` float32: ``f' = f * scale + shift`` per plane and frequency."""
        if self.mode == "shift":
            scale = np.ones_like(self.site_mean)
        else:
            scale = self.ref_std / self.site_std
        shift = self.ref_mean - scale * self.site_mean
        return scale.astype(np.float32), shift.astype(np.float32)

    def tensor(self) -> torch.Tensor:
        """``(2, 2, F)`` float32: ``[scale, shift]`` for :meth:`streamemg.model.Classifier.forward`."""
        scale, shift = self.affine()
        return torch.from_numpy(np.stack([scale, shift]))

    def check(self, bundle: Any, source: str = "site profile") -> None:
        """Refuse a profile made for another model or feature layout (ConfigError saying what to do)."""
        from ..model import bundle_fingerprint

        redo = "run `streamemg calibrate --model MODEL.pt ...` again for the model you use"
        layout = feature_layout(bundle.config)
        if self.layout != layout:
            diff = sorted(k for k in set(layout) | set(self.layout) if layout.get(k) != self.layout.get(k))
            raise ConfigError(
                f"{source} (site {self.site!r}) was made for another feature layout (differs in {', '.join(diff)}); "
                f"{redo}"
            )
        fp = bundle_fingerprint(bundle)
        if fp != self.model_fingerprint:
            raise ConfigError(
                f"{source} (site {self.site!r}) was made for model {self.model_name!r} (fingerprint "
                f"{self.model_fingerprint}), not for {bundle.name!r} (fingerprint {fp}); {redo}"
            )

    # ------------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        def rows(a: np.ndarray) -> dict[str, list[float]]:
            return {
                "log_psd": [round(float(v), 5) for v in a[0]],
                "delta": [round(float(v), 5) for v in a[1]],
            }

        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "site": self.site,
            "created": self.created,
            "mode": self.mode,
            "model": {"name": self.model_name, "fingerprint": self.model_fingerprint},
            "layout": self.layout,
            "summary": self.summary,
            "freqs_hz": [round(float(v), 3) for v in self.freqs_hz],
            "site_mean": rows(self.site_mean),
            "site_std": rows(self.site_std),
            "reference_mean": rows(self.ref_mean),
            "reference_std": rows(self.ref_std),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        except OSError as exc:
            raise ConfigError(f"could not write the site profile {path}: {exc}") from exc
        return path

    @classmethod
    def from_dict(cls, d: Any, source: str = "site profile") -> SiteProfile:
        if not isinstance(d, dict) or d.get("format") != PROFILE_FORMAT:
            raise ConfigError(f"{source} is not a streamemg site profile (no \"format\": \"{PROFILE_FORMAT}\")")
        if d.get("version") != PROFILE_VERSION:
            raise ConfigError(
                f"{source} has site profile version {d.get('version')!r}; this streamemg reads version "
                f"{PROFILE_VERSION}: run `streamemg calibrate` again"
            )
        try:
            def planes(key: str) -> np.ndarray:
                return np.array([d[key]["log_psd"], d[key]["delta"]], dtype=np.float64)

            return cls(
                site=str(d["site"]),
                mode=str(d["mode"]),
                model_name=str(d["model"]["name"]),
                model_fingerprint=str(d["model"]["fingerprint"]),
                layout=dict(d["layout"]),
                freqs_hz=np.asarray(d["freqs_hz"], dtype=np.float64),
                site_mean=planes("site_mean"),
                site_std=planes("site_std"),
                ref_mean=planes("reference_mean"),
                ref_std=planes("reference_std"),
                summary=dict(d.get("summary", {})),
                created=str(d.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: malformed site profile ({type(exc).__name__}: {exc}); re-create it") from exc

    @classmethod
    def load(cls, path: str | Path, bundle: Any = None) -> SiteProfile:
        """Read a profile; with ``bundle``, also :meth:`check` it against that model."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"site profile {path} not found; make one with `streamemg calibrate ... --out {path}`")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"site profile {path}: not readable JSON ({exc})") from exc
        profile = cls.from_dict(data, source=str(path))
        if bundle is not None:
            profile.check(bundle, source=str(path))
        return profile


def make_profile(
    bundle: Any, windows: Sequence[np.ndarray], site: str, mode: str = "affine", features: Any = None
) -> SiteProfile:
    """Calibrate: the profile of a site from its (unlabelled) windows, for ``bundle``.

    Args:
        bundle: the model (must carry reference statistics, see :func:`reference_statistics`).
        windows: one ``(W_i, T)`` array of quality-checked windows at the model rate per recording.
        site: the site's name.
        mode: ``"affine"`` or ``"shift"``.
        features: the features module (default: the bundle's).
    """
    from ..model import bundle_fingerprint

    if mode not in PROFILE_MODES:
        raise ConfigError(f"--mode {mode!r}: use one of {', '.join(PROFILE_MODES)}")
    ref_mean, ref_std = reference_statistics(bundle)
    feats = features if features is not None else bundle.build().features
    m = feature_moments(feats, windows)
    freqs = np.asarray(bundle.config.features.frequencies, dtype=np.float64)
    diff = m["mean"][0] - ref_mean[0]
    summary = {
        "recordings": m["recordings"],
        "windows": m["windows"],
        "seconds_of_windows": round(m["windows"] * bundle.config.window_s, 1),
        "median_window_rms_uv": round(m["rms_uv"], 3),
        "level_db_re_reference": round(float(np.mean(diff)) * 10 / math.log(10), 2),
        "tilt_db_per_octave_re_reference": round(_slope_db_per_octave(freqs, diff), 2),
        "frame_power_p10_db": round(m["frame_power_db"], 2),
        "spread_ratio_log_psd": round(float(np.mean(m["std"][0] / ref_std[0])), 3),
    }
    return SiteProfile(
        site=site,
        mode=mode,
        model_name=str(bundle.name),
        model_fingerprint=bundle_fingerprint(bundle),
        layout=feature_layout(bundle.config),
        freqs_hz=freqs,
        site_mean=m["mean"],
        site_std=m["std"],
        ref_mean=ref_mean,
        ref_std=ref_std,
        summary=summary,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def recording_windows(prepared: Sequence[Any], window_samples: int) -> list[np.ndarray]:
    """The stream windows that pass the quality gate, one ``(W_i, T)`` array per prepared recording."""
    return [p.stream_windows(window_samples)[p.stream_valid] for p in prepared]
