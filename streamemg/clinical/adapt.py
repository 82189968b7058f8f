"""Fine-tuning a trained model on a few labelled subjects of a new site.

:func:`fine_tune` starts from a trained :class:`~streamemg.model.Classifier` and continues training on the
new site's prepared recordings only (the original training data is not needed, a lab does not have it),
with a small, fixed budget and a low learning rate, windows drawn class- and subject-balanced, the same
waveform augmentation as training. Which parameters move is a setting (``layers``), measured in
``docs/experiments.md``:

- ``"all"``: every parameter; BatchNorm statistics keep their trained values (frozen) so that a handful of
  subjects cannot overwrite them;
- ``"head"``: only the final linear layer;
- ``"norm_head"``: the final layer plus every BatchNorm (affine parameters *and* running statistics, which
  then follow the new site: AdaBN with labels).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .train import AugmentSettings, FitResult, PreparedRecording, augment_batch, draw_weights, select_device

__all__ = ["LAYER_MODES", "FineTuneSettings", "fine_tune"]

LAYER_MODES = ("all", "head", "norm_head")


@dataclass(frozen=True)
class FineTuneSettings:
    """How :func:`fine_tune` adapts a model.

    Attributes:
        steps: optimisation steps (the budget; windows seen = ``steps * batch_size``).
        batch_size: windows per step.
        lr: peak learning rate (AdamW, cosine decay after a 10 % warm-up).
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing.
        layers: which parameters move: ``"all"``, ``"head"`` or ``"norm_head"`` (see the module doc).
        anchor: weight of an L2 pull of every trainable parameter back to its starting value (L2-SP:
            ``anchor * sum((w - w0)^2)`` added to the loss); 0 (default) is plain fine-tuning. A pull keeps
            more of what the model knew about its training sites, at some cost on the new one.
        seed: seeds the window draws, augmentation and dropout.
        device: ``"cpu"``, ``"cuda"``, ``"auto"``.
        threads: torch CPU threads (None: torch's choice).
        augment: waveform augmentation of the drawn windows.
    """

    steps: int = 150
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.05
    layers: str = "all"
    anchor: float = 0.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ConfigError(f"FineTuneSettings.{name}={v!r}: must be an integer >= 1")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"FineTuneSettings.lr={self.lr!r}: must be a positive number, e.g. 1e-3")
        if not (0 <= self.weight_decay < 1 and 0 <= self.label_smoothing < 1):
            raise ConfigError("FineTuneSettings.weight_decay / label_smoothing: each must lie in [0, 1)")
        if not (isinstance(self.anchor, (int, float)) and math.isfinite(self.anchor) and self.anchor >= 0):
            raise ConfigError(f"FineTuneSettings.anchor={self.anchor!r}: give a weight >= 0, e.g. 0.1")
        if self.layers not in LAYER_MODES:
            raise ConfigError(f"FineTuneSettings.layers={self.layers!r}: use one of {', '.join(LAYER_MODES)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"FineTuneSettings.threads={self.threads!r}: give a positive count or None")

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        d = dataclasses.asdict(self)
        d["augment"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["augment"].items()}
        return d


def _trainable(model: nn.Module, layers: str) -> list[nn.Parameter]:
    net: Any = getattr(model, "net", model)
    if layers == "all":
        return [p for p in model.parameters()]
    params = list(net.head.parameters())
    if layers == "norm_head":
        for mod in net.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                params += list(mod.parameters())
    return params


def _set_modes(model: nn.Module, layers: str) -> None:
    """Dropout on; BatchNorm statistics update only for ``norm_head``."""
    model.train()
    if layers != "norm_head":
        for mod in model.modules():
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.eval()


def fine_tune(
    model: nn.Module,
    prepared: Sequence[PreparedRecording],
    config: Any,
    settings: FineTuneSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Adapt a copy of ``model`` (a trained :class:`~streamemg.model.Classifier`) to labelled recordings.

    Args:
        model: the starting point (left unchanged).
        prepared: the new site's labelled recordings (their training windows are drawn, balanced by class and
            by the square root of each subject's duration).
        config: the model configuration (the one ``model`` was built with).
        settings: budget and layers.
        log: called with a line every quarter of the budget.

    Returns:
        the adapted copy (eval mode, CPU) and a summary.

    Raises:
        ConfigError: no recording, unlabelled recordings, or fewer than two classes with windows.
    """
    settings = settings or FineTuneSettings()
    if not prepared:
        raise ConfigError("fine-tuning needs labelled recordings of the new site; none were given")
    unlabelled = [p.ref.path for p in prepared if not p.ref.label]
    if unlabelled:
        raise ConfigError(f"fine-tuning needs labels; unlabelled: {', '.join(map(str, unlabelled[:3]))}")
    usable = [p for p in prepared if len(p.train_starts)]
    classes = {p.ref.label_index for p in usable}
    if len(classes) < 2:
        raise ConfigError(
            f"fine-tuning needs usable windows of at least two classes, got {len(classes)}; add recordings "
            "of the other classes (recordings shorter than one window or failing the quality gate give none)"
        )
    device = select_device(settings.device)
    old_threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    tuned = copy.deepcopy(model).to(device)
    for p in tuned.parameters():
        p.requires_grad_(False)
    params = _trainable(tuned, settings.layers)
    for p in params:
        p.requires_grad_(True)
    start = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    warm = max(1, settings.steps // 10)
    decay = max(1, settings.steps - warm)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / decay))
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
    weights = draw_weights(usable, "site_class_subject")  # classes equal, subjects by sqrt(duration)
    labels = np.array([p.ref.label_index for p in usable], dtype=np.int64)
    T = int(config.window_samples)
    grid = max(1, round(0.05 * config.fs))
    t0 = time.perf_counter()
    _set_modes(tuned, settings.layers)
    run_loss, run_n = 0.0, 0
    for step in range(settings.steps):
        sel = rng.choice(len(usable), size=settings.batch_size, p=weights)
        batch = np.empty((len(sel), T), dtype=np.float32)
        for j, r in enumerate(sel.tolist()):
            p = usable[r]
            s = int(p.train_starts[rng.integers(len(p.train_starts))])
            if settings.augment.time_shift:
                s = int(np.clip(s + rng.integers(-grid // 2, grid // 2 + 1), 0, p.x.shape[0] - T))
            batch[j] = p.x[s : s + T]
        xb = augment_batch(torch.from_numpy(batch).to(device), float(config.fs), settings.augment, gen)
        yb = torch.from_numpy(labels[sel]).to(device)
        loss = loss_fn(tuned(xb), yb)
        if settings.anchor > 0:
            loss = loss + settings.anchor * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start, strict=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        run_loss += float(loss.item())
        run_n += 1
        if log is not None and (step + 1) % max(1, settings.steps // 4) == 0:
            log(f"fine-tune step {step + 1}/{settings.steps}: loss {run_loss / run_n:.4f}")
            run_loss, run_n = 0.0, 0
    if settings.threads is not None:
        torch.set_num_threads(old_threads)
    for p in tuned.parameters():
        p.requires_grad_(True)
    tuned = tuned.to("cpu").eval()
    summary = {
        "steps": settings.steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "device": str(device),
        "settings": settings.to_dict(),
        "recordings": len(usable),
        "subjects": len({p.ref.subject for p in usable}),
        "trainable_parameters": int(sum(p.numel() for p in params)),
    }
    return FitResult(tuned, summary)
