"""SpectroEMG-Net (a small attention CNN over log-spectrogram + delta) and the model bundle.

Network (defaults: 1 s windows at 8 kHz -> ``(B, 2, 64, 61)`` features)::

    (B, 2, F, N)  --BatchNorm (per plane)-->
    3 x [conv 3x3 stride 2 -> BN -> ReLU -> squeeze-excitation channel attention]     (B, C, F', N')
    flatten frequency into channels, 1x1 conv (a per-frame linear map) -> ReLU          (B, E, N')
    attention pooling over frames: softmax over N' of a small scoring MLP               (B, E)
    dropout -> linear                                                                   (B, K) logits

Strided convolutions do the down-sampling (4x fewer multiply-adds than convolving at full resolution and
pooling afterwards). Frequency is kept as a feature axis up to the end, because *where* in the spectrum the
power lies (MUAP duration and phase count) is the signal; time is pooled by attention, so any frame count
``N >= 1`` works and the frames that hold motor-unit discharges can outweigh quiet baseline frames.
``ArchSettings.attention = False`` removes both attention stages (plain mean over frames, no
squeeze-excitation) for an ablation.

The :class:`ModelBundle` holds the weights plus every setting needed to use them (classes, model rate, window,
hop, feature and filter settings, training summary, metrics). It is saved as a dict of plain Python types and
tensors and loaded with ``torch.load(weights_only=True)``: no arbitrary object is ever unpickled.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .dsp import FilterSettings
from .errors import ConfigError, ModelError
from .features import WAVEFORM_STATS_MODES, FeatureSettings, LogSpectrogram, SpectralFeatures, WaveformStats
from .types import CLASS_NAMES

__all__ = [
    "FORMAT_VERSION",
    "ArchSettings",
    "Classifier",
    "ModelBundle",
    "ModelConfig",
    "SpectroEMGNet",
    "apply_site",
    "bundle_fingerprint",
    "count_flops",
    "default_model_path",
    "load_bundle",
    "untrained_bundle",
]

log = logging.getLogger(__name__)

#: Version of the saved bundle layout; :meth:`ModelBundle.load` refuses any other.
FORMAT_VERSION = 1

_BUNDLE_KEYS = ("format_version", "name", "trained", "config", "state_dict", "training", "metrics")


@dataclass(frozen=True)
class ArchSettings:
    """Shape of :class:`SpectroEMGNet`.

    Attributes:
        channels: output channels of the convolution blocks (one block each; every block halves F and N).
        kernel_size: odd square kernel of the convolutions.
        embed_dim: width ``E`` of the per-frame embedding that the attention pools.
        attention: squeeze-excitation in every block and attention pooling over frames (False: neither;
            frames are averaged).
        se_reduction: channel reduction factor inside squeeze-excitation.
        attention_hidden: hidden width of the frame-scoring MLP.
        dropout: dropout probability before the classification layer (training only).
        waveform_stats: ``"none"`` (default; the network sees only the spectrogram planes), ``"shape"`` or
            ``"all"``: a side branch of window statistics of the waveform (:class:`WaveformStats`: temporal
            sparsity, crest factor, turns and zero-crossing rates; ``"all"`` adds three absolute-level ones),
            batch-normalised and mapped to ``stats_dim`` features by one linear layer + ReLU, concatenated with
            the pooled embedding before the classification layer.
        stats_dim: width of that side branch (ignored when ``waveform_stats == "none"``).
    """

    channels: tuple[int, ...] = (16, 24, 32)
    kernel_size: int = 3
    embed_dim: int = 64
    attention: bool = True
    se_reduction: int = 4
    attention_hidden: int = 32
    dropout: float = 0.2
    waveform_stats: str = "none"
    stats_dim: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.channels, list):
            object.__setattr__(self, "channels", tuple(self.channels))
        if not (
            isinstance(self.channels, tuple)
            and len(self.channels) >= 1
            and all(_is_int(c) and c >= 1 for c in self.channels)
        ):
            raise ConfigError(
                f"ArchSettings.channels={self.channels!r}: give a non-empty tuple of positive integers, "
                "e.g. (16, 24, 32)"
            )
        if not (_is_int(self.kernel_size) and self.kernel_size >= 1 and self.kernel_size % 2 == 1):
            raise ConfigError(f"ArchSettings.kernel_size={self.kernel_size!r}: use an odd integer >= 1, e.g. 3")
        for name in ("embed_dim", "se_reduction", "attention_hidden", "stats_dim"):
            v = getattr(self, name)
            if not (_is_int(v) and v >= 1):
                raise ConfigError(f"ArchSettings.{name}={v!r}: must be an integer >= 1")
        if not isinstance(self.attention, bool):
            raise ConfigError(f"ArchSettings.attention={self.attention!r}: must be true or false")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"ArchSettings.dropout={self.dropout!r}: must be a probability in [0, 1)")
        if self.waveform_stats not in WAVEFORM_STATS_MODES:
            raise ConfigError(
                f"ArchSettings.waveform_stats={self.waveform_stats!r}: use one of {', '.join(WAVEFORM_STATS_MODES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ArchSettings:
        return _from_dict(cls, d)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to turn a window of samples into class logits with a given set of weights.

    Attributes:
        classes: class names in logit order.
        fs: the model's sampling rate in Hz; streams are filtered and resampled to it.
        window_samples: samples per window at ``fs`` (default 1 s).
        hop_samples: samples between consecutive windows at ``fs`` (default 0.25 s: 4 decisions per second).
        features: spectrogram settings (``features.fs`` must equal ``fs``).
        filters: the causal pre-filtering applied at ``fs`` before windowing (high-pass, mains notch).
        arch: network shape.
    """

    classes: tuple[str, ...] = CLASS_NAMES
    fs: float = 8000.0
    window_samples: int = 8000
    hop_samples: int = 2000
    features: FeatureSettings = field(default_factory=FeatureSettings)
    filters: FilterSettings = field(default_factory=FilterSettings)
    arch: ArchSettings = field(default_factory=ArchSettings)

    def __post_init__(self) -> None:
        if isinstance(self.classes, list):
            object.__setattr__(self, "classes", tuple(self.classes))
        if not (
            isinstance(self.classes, tuple)
            and len(self.classes) >= 2
            and all(isinstance(c, str) and c for c in self.classes)
            and len(set(self.classes)) == len(self.classes)
        ):
            raise ConfigError(f"ModelConfig.classes={self.classes!r}: give at least two distinct non-empty names")
        if not (isinstance(self.fs, (int, float)) and math.isfinite(self.fs) and self.fs > 0):
            raise ConfigError(f"ModelConfig.fs={self.fs!r}: the model rate must be a finite number of Hz above 0")
        if not isinstance(self.features, FeatureSettings):
            raise ConfigError(f"ModelConfig.features={self.features!r}: must be a FeatureSettings")
        if not isinstance(self.arch, ArchSettings):
            raise ConfigError(f"ModelConfig.arch={self.arch!r}: must be an ArchSettings")
        if self.features.fs != self.fs:
            raise ConfigError(
                f"ModelConfig.features.fs={self.features.fs!r} differs from ModelConfig.fs={self.fs!r}: "
                "the features are computed at the model rate; set both to the same value"
            )
        if not (_is_int(self.window_samples) and self.window_samples >= self.features.win_length):
            raise ConfigError(
                f"ModelConfig.window_samples={self.window_samples!r}: must be an integer of at least one "
                f"spectrogram frame ({self.features.win_length} samples)"
            )
        if not (_is_int(self.hop_samples) and self.hop_samples >= 1):
            raise ConfigError(f"ModelConfig.hop_samples={self.hop_samples!r}: must be an integer >= 1")

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def window_s(self) -> float:
        return self.window_samples / self.fs

    @property
    def hop_s(self) -> float:
        return self.hop_samples / self.fs

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (lists, str, float, int, bool, None only)."""
        return {
            "classes": list(self.classes),
            "fs": float(self.fs),
            "window_samples": int(self.window_samples),
            "hop_samples": int(self.hop_samples),
            "features": self.features.to_dict(),
            "filters": self.filters.to_dict(),
            "arch": self.arch.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys raise ConfigError."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"ModelConfig.from_dict expects a dict, got {type(d).__name__}")
        kw = dict(d)
        if "features" in kw:
            kw["features"] = FeatureSettings.from_dict(dict(kw["features"]))
        if "filters" in kw:
            kw["filters"] = FilterSettings.from_dict(dict(kw["filters"]))
        if "arch" in kw:
            kw["arch"] = ArchSettings.from_dict(dict(kw["arch"]))
        return _from_dict(cls, kw)


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _from_dict(cls: Any, d: Mapping[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(names)}")
    try:
        return cls(**d)
    except TypeError as exc:  # e.g. a list where a number belongs
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


# ---------------------------------------------------------------------------------------------- network


class SqueezeExcitation(nn.Module):
    """Channel attention: ``x * sigmoid(W2 relu(W1 mean_{F,N}(x)))``; ``(B, C, F, N) -> (B, C, F, N)``."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class ConvBlock(nn.Module):
    """conv (stride 2, 'same' padding, no bias) -> BN -> ReLU [-> squeeze-excitation]; halves F and N (ceil)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, se_reduction: int | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=2, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.se = SqueezeExcitation(c_out, se_reduction) if se_reduction else None

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.se(x) if self.se is not None else x


class AttentionPool(nn.Module):
    """Attention pooling over frames: ``(B, E, N) -> (B, E)``, weights ``softmax_N(v · tanh(W h_n))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Conv1d(dim, hidden, 1), nn.Tanh(), nn.Conv1d(hidden, 1, 1))

    def forward(self, h: Tensor) -> Tensor:
        w = torch.softmax(self.score(h), dim=-1)  # (B, 1, N)
        return (h * w).sum(dim=-1)


class SpectroEMGNet(nn.Module):
    """``(B, 2, F, N)`` features [+ ``(B, S)`` window statistics] -> ``(B, K)`` logits.

    ``F`` is fixed at construction; any ``N >= 1`` works. ``n_stats > 0`` adds the statistics side branch
    (``forward(x, stats)``); with ``n_stats == 0`` the parameters are exactly those of earlier bundles.
    """

    def __init__(self, n_freqs: int, n_classes: int, arch: ArchSettings | None = None, n_stats: int = 0) -> None:
        super().__init__()
        arch = arch or ArchSettings()
        self.arch = arch
        self.n_freqs = n_freqs
        self.input_norm = nn.BatchNorm2d(2)
        blocks = []
        c_in, f = 2, n_freqs
        for c in arch.channels:
            blocks.append(ConvBlock(c_in, c, arch.kernel_size, arch.se_reduction if arch.attention else None))
            c_in, f = c, (f - 1) // 2 + 1
        self.blocks = nn.Sequential(*blocks)
        self.out_freqs = f
        self.embed = nn.Conv1d(c_in * f, arch.embed_dim, 1)
        self.pool: nn.Module | None = AttentionPool(arch.embed_dim, arch.attention_hidden) if arch.attention else None
        self.dropout = nn.Dropout(arch.dropout)
        self.n_stats = int(n_stats)
        self.stats_norm: nn.Module | None = nn.BatchNorm1d(n_stats) if n_stats else None
        self.stats_fc: nn.Module | None = nn.Linear(n_stats, arch.stats_dim) if n_stats else None
        self.head = nn.Linear(arch.embed_dim + (arch.stats_dim if n_stats else 0), n_classes)

    def forward(self, x: Tensor, stats: Tensor | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 2 or x.shape[2] != self.n_freqs:
            raise ValueError(f"SpectroEMGNet expects (B, 2, {self.n_freqs}, N), got {tuple(x.shape)}")
        if (stats is None) != (self.n_stats == 0) or (stats is not None and stats.shape[1:] != (self.n_stats,)):
            got = None if stats is None else tuple(stats.shape)
            raise ValueError(f"SpectroEMGNet built for {self.n_stats} window statistics, got stats {got}")
        x = self.blocks(self.input_norm(x))  # (B, C, F', N')
        b, c, f, n = x.shape
        h = torch.relu(self.embed(x.reshape(b, c * f, n)))  # (B, E, N')
        z = self.pool(h) if self.pool is not None else h.mean(dim=-1)
        return self.head(self.dropout(self.with_stats(z, stats)))

    def with_stats(self, z: Tensor, stats: Tensor | None) -> Tensor:
        """``(B, E)`` pooled embedding -> ``(B, E [+ stats_dim])``: appends the statistics branch if built."""
        if self.stats_norm is None or self.stats_fc is None or stats is None:
            return z
        return torch.cat([z, torch.relu(self.stats_fc(self.stats_norm(stats)))], dim=1)


class Classifier(nn.Module):
    """Features + network: ``(B, T)`` float32 µV at the model rate -> ``(B, K)`` logits."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        self.features = SpectralFeatures(self.config.features)
        mode = self.config.arch.waveform_stats
        self.stats: WaveformStats | None = (
            WaveformStats(self.config.features, absolute=mode == "all") if mode != "none" else None
        )
        n_stats = self.stats.n_stats if self.stats is not None else 0
        self.net = SpectroEMGNet(self.features.n_freqs, self.config.n_classes, self.config.arch, n_stats)

    def forward(self, x: Tensor, site: Tensor | None = None) -> Tensor:
        """``(B, T)`` µV -> ``(B, K)`` logits.

        Args:
            x: windows at the model rate.
            site: optional per-window site calibration ``(B, 2, 2, F)``: ``[scale, shift]`` per plane and
                frequency (:meth:`streamemg.clinical.site.SiteProfile.tensor`; identity rows are ones and
                zeros), applied to the features before the network, so windows of several sites share a batch.
        """
        f = self.features(x)
        if site is not None:
            f = apply_site(f, site)
        return self.net(f, self.stats(x) if self.stats is not None else None)


def apply_site(features: Tensor, site: Tensor) -> Tensor:
    """``(B, 2, F, N)`` features, ``(B, 2, 2, F)`` per-window ``[scale, shift]`` -> calibrated features."""
    if site.dim() != 4 or site.shape[0] != features.shape[0] or site.shape[1:] != (2, 2, features.shape[2]):
        raise ValueError(
            f"site calibration must be (B, 2, 2, F) = ({features.shape[0]}, 2, 2, {features.shape[2]}), "
            f"got {tuple(site.shape)}"
        )
    return features * site[:, 0, :, :, None] + site[:, 1, :, :, None]


# ---------------------------------------------------------------------------------------------- bundle


def _plain(value: Any, where: str) -> Any:
    """Convert to the plain types that ``torch.load(weights_only=True)`` accepts (numpy -> python)."""
    if isinstance(value, np.generic):  # before the float check: np.float64 subclasses float
        return value.item()
    if value is None:
        return None
    for plain in (bool, int, float, str):  # bool first: it subclasses int
        if isinstance(value, plain):
            return plain(value)  # subclasses (e.g. torch's version string) become the plain type
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ModelError(f"{where}: key {k!r} is not a string; bundles store only string keys")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ModelError(
        f"{where} holds a {type(value).__name__}; a bundle may only hold str, int, float, bool, None, lists and dicts"
    )


@dataclass
class ModelBundle:
    """Weights plus the metadata needed to use them.

    Attributes:
        config: the model configuration the weights belong to.
        state_dict: parameters and buffers of :class:`Classifier` (CPU tensors).
        trained: False for a model never trained on real data: its outputs must never be shown as a diagnosis.
        name: short model name (shown on the dashboard and in ``streamemg info``).
        training: training summary (data sets, subjects, epochs, seed, ...), plain types only.
        metrics: evaluation results (subject-wise), plain types only.
        format_version: layout version of the saved file.
    """

    config: ModelConfig
    state_dict: dict[str, Tensor]
    trained: bool
    name: str = "spectroemg-net"
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The saved form: a dict of plain types and CPU tensors."""
        return {
            "format_version": int(self.format_version),
            "name": str(self.name),
            "trained": bool(self.trained),
            "config": self.config.to_dict(),
            "state_dict": {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict.items()},
            "training": _plain(self.training, "training"),
            "metrics": _plain(self.metrics, "metrics"),
        }

    def save(self, path: str | Path) -> Path:
        """Write the bundle (atomically: a temporary file renamed into place). Returns the path."""
        path = Path(path)
        data = self.to_dict()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    torch.save(data, fh)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise ModelError(f"could not write the model bundle to {path}: {exc}") from exc
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> ModelBundle:
        """Validate a loaded dict and build the bundle (raises ModelError naming ``source``)."""
        hint = "re-create it with `streamemg train`, or omit --model to use the shipped default model"
        if not isinstance(data, dict):
            raise ModelError(f"{source} is not a streamemg model bundle (top level is {type(data).__name__}); {hint}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelError(
                f"{source} has bundle format_version={version!r}, this streamemg reads version {FORMAT_VERSION}; "
                f"use the streamemg release that wrote it or {hint}"
            )
        missing = [k for k in _BUNDLE_KEYS if k not in data]
        if missing:
            raise ModelError(f"{source} lacks the bundle key(s) {missing}; {hint}")
        try:
            config = ModelConfig.from_dict(data["config"])
        except (ConfigError, TypeError, ValueError) as exc:
            raise ModelError(f"{source} has an invalid model config: {exc}; {hint}") from exc
        state = data["state_dict"]
        if not (
            isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())
        ):
            raise ModelError(f"{source}: state_dict must map parameter names to tensors; {hint}")
        for key in ("training", "metrics"):
            if not isinstance(data[key], dict):
                raise ModelError(f"{source}: {key} must be a dict, got {type(data[key]).__name__}; {hint}")
        bundle = cls(
            config=config,
            state_dict=state,
            trained=bool(data["trained"]),
            name=str(data["name"]),
            training=data["training"],
            metrics=data["metrics"],
            format_version=int(version),
        )
        bundle.build()  # shape check: fails now, with the file name, rather than later in the engine
        return bundle

    @classmethod
    def load(cls, path: str | Path) -> ModelBundle:
        """Load a bundle saved by :meth:`save` (``torch.load(weights_only=True)``, CPU tensors).

        Raises:
            ModelError: the file is missing, unreadable, not a bundle, of another format version, or its
                weights do not fit its config.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelError(
                f"model file {path} not found; pass --model with the path of a bundle written by `streamemg train`, "
                "or omit --model to use the shipped default model"
            )
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling, zip and I/O errors all mean "not a usable bundle"
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [""]
            detail = next((ln for ln in lines if "Unsupported global" in ln), lines[0])[:240]
            raise ModelError(
                f"could not read model file {path} ({type(exc).__name__}: {detail}); "
                "it is corrupt, truncated or not a streamemg bundle: re-create it with `streamemg train`"
            ) from exc
        return cls.from_dict(data, source=str(path))

    def build(self, device: str | torch.device = "cpu") -> Classifier:
        """A :class:`Classifier` with these weights, on ``device``, in eval mode."""
        model = Classifier(self.config)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()
            raise ModelError(
                f"model {self.name!r}: the weights do not fit its config ({' '.join(first[:3])[:400]}); "
                "the bundle is inconsistent: re-create it with `streamemg train`"
            ) from exc
        return model.to(device).eval()


def bundle_fingerprint(bundle: ModelBundle) -> str:
    """16 hex digits identifying a bundle's weights and configuration (SHA-256 of both).

    Two bundles with the same fingerprint compute the same function; a site profile records the fingerprint
    of the model it was made for and is refused by any other.
    """
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(bundle.config.to_dict(), sort_keys=True).encode())
    for key in sorted(bundle.state_dict):
        t = bundle.state_dict[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def untrained_bundle(config: ModelConfig | None = None, seed: int = 0) -> ModelBundle:
    """A bundle with randomly initialised weights (reproducible by ``seed``) and ``trained=False``."""
    config = config or ModelConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(config)
    return ModelBundle(
        config=config,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        trained=False,
        name="untrained",
        training={"seed": int(seed), "note": "random initialisation, never trained on data"},
    )


def default_model_path() -> Path | None:
    """Path of the shipped ``default.pt``, or None when none is installed.

    Installed, the model is the package data of ``streamemg.models``. Imported from a source checkout (e.g.
    ``python -m pytest`` at the repository root puts the checkout first on ``sys.path``), that package does not
    exist: the checkout's ``models/`` folder beside ``streamemg/`` holds the same file.
    """
    try:
        candidate = resources.files("streamemg.models") / "default.pt"
        if candidate.is_file():
            return Path(str(candidate))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
        pass
    in_checkout = Path(__file__).resolve().parents[1] / "models" / "default.pt"
    return in_checkout if in_checkout.is_file() else None


def load_bundle(path: str | Path | None = None) -> ModelBundle:
    """Load ``path``; without one, the shipped default model, else an untrained bundle (logged warning).

    Raises:
        ModelError: ``path`` (or the shipped default) is missing, unreadable or incompatible.
    """
    if path is not None:
        return ModelBundle.load(path)
    default = default_model_path()
    if default is not None:
        return ModelBundle.load(default)
    log.warning(
        "no trained model is installed (streamemg/models/default.pt); using an UNTRAINED model: its outputs are "
        "labelled 'untrained' and are not a diagnosis. Train one with `streamemg train` or pass --model PATH."
    )
    return untrained_bundle()


def count_flops(classifier: Classifier, window_samples: int) -> int:
    """FLOPs (2 x multiply-adds) of one forward pass for one window of ``window_samples``.

    Counted: the spectrogram's DFT, every convolution and linear layer (incl. attention and squeeze-excitation).
    Not counted: element-wise work (BN, ReLU, log, softmax), which is small and mostly fused away.
    """
    macs = 0

    def conv_hook(mod: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        assert isinstance(mod, (nn.Conv1d, nn.Conv2d))
        per_out = (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        macs += out.numel() // out.shape[0] * per_out

    def linear_hook(mod: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        assert isinstance(mod, nn.Linear)
        macs += out.numel() // out.shape[0] * mod.in_features

    def spec_hook(mod: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        assert isinstance(mod, LogSpectrogram)
        macs += mod.macs(int(inputs[0].shape[-1]))

    hooks: list[Callable[[], None]] = []
    for mod in classifier.modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            hooks.append(mod.register_forward_hook(conv_hook).remove)
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook).remove)
        elif isinstance(mod, LogSpectrogram):
            hooks.append(mod.register_forward_hook(spec_hook).remove)
    was_training = classifier.training
    try:
        classifier.eval()
        device = next(iter(classifier.buffers())).device
        with torch.inference_mode():
            classifier(torch.zeros(1, window_samples, device=device))
    finally:
        for remove in hooks:
            remove()
        classifier.train(was_training)
    return 2 * macs
