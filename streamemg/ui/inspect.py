"""What the model sees in one window: its log-spectrogram and its attention over frames.

The stream view shows these for the one stream on screen. They are recomputed here, in the display, from the
window's samples with the model's own modules (the same :class:`~streamemg.features.SpectralFeatures` and the
same attention pooling weights), so they are exactly what the classifier reads, without asking the inference
engine for anything: one extra forward pass of one window (about a millisecond on a CPU) per new window of
the selected stream, and nothing for the other streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..model import ModelBundle

__all__ = ["Inspection", "WindowInspector"]


@dataclass(frozen=True, slots=True, eq=False)
class Inspection:
    """The model's view of one window of one channel.

    Attributes:
        spectrogram: ``(F, N)`` natural log of the power spectral density (µV²/Hz), frequency rows low to
            high, frames oldest first: the model's input plane 0.
        frequencies: ``(F,)`` bin centre frequencies (Hz).
        frame_s: ``(N,)`` time of each frame's centre from the window's start (s).
        attention: ``(N',)`` attention weights over the network's pooled frames (sum 1), oldest first; each
            covers ``N / N'`` input frames. None for a model without attention pooling.
        probabilities: ``(K,)`` the model's class probabilities for this channel and window.
        window_s: window length (s).
        channel: label of the channel inspected ("" when not known).
    """

    spectrogram: np.ndarray
    frequencies: np.ndarray
    frame_s: np.ndarray
    attention: np.ndarray | None
    probabilities: np.ndarray
    window_s: float
    channel: str = ""


class WindowInspector:
    """Runs the model's own modules on one window and keeps the spectrogram and attention weights.

    Args:
        bundle: the model bundle the pipeline uses (its weights are built once, on the CPU, in eval mode).
    """

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.classifier = bundle.build("cpu")
        self.classifier.eval()
        self._scores: torch.Tensor | None = None
        pool = self.classifier.net.pool
        score = getattr(pool, "score", None) if pool is not None else None
        if isinstance(score, nn.Module):
            score.register_forward_hook(self._keep_scores)
        self.has_attention = isinstance(score, nn.Module)

    def _keep_scores(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._scores = output.detach()

    def inspect(self, window: np.ndarray, channel: str = "") -> Inspection:
        """The model's view of ``window``.

        Args:
            window: ``(T,)`` float µV at the model rate, one channel (``T`` = the model's window length or
                more; longer input gives more frames).
            channel: its label, kept in the result for the display.

        Returns:
            An :class:`Inspection`.
        """
        x = np.asarray(window, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"WindowInspector.inspect expects one channel shaped (T,), got {x.shape}")
        settings = self.classifier.config.features
        if x.shape[0] < settings.win_length:
            raise ValueError(f"a window of {x.shape[0]} samples is shorter than one frame ({settings.win_length})")
        self._scores = None
        with torch.inference_mode():
            xt = torch.from_numpy(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))[None, :]
            spec = self.classifier.features.spectrogram(xt)[0]
            probs = torch.softmax(self.classifier(xt), dim=-1)[0]
        attention = None
        if self._scores is not None:
            attention = torch.softmax(self._scores[0, 0].double(), dim=-1).numpy()
        n = spec.shape[1]
        frame_s = (np.arange(n) * settings.hop_length + settings.win_length / 2) / settings.fs
        return Inspection(
            spectrogram=spec.numpy().astype(np.float64),
            frequencies=np.asarray(settings.frequencies, dtype=np.float64),
            frame_s=frame_s,
            attention=attention,
            probabilities=probs.double().numpy(),
            window_s=x.shape[0] / settings.fs,
            channel=channel,
        )
