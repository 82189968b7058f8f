"""The classifier's own view of a signal: the pooled embedding the network's head reads, per stream window.

A simulated class can match a real class on QEMG and on the mean log spectrum and still look different to the
classifier, which reads the joint pattern of its log-spectrogram and delta planes over a second. This module
measures that view, so the simulator's fit (:mod:`streamemg.qemg.simfit`) can compare it with the real class's:

* :func:`stream_windows`: the windows a stream would cut from a signal (the pipeline's own per-stream state:
  same filters, resampler, hop and quality gate), those that pass the gate;
* :func:`rolling_labels`: the rolling estimate a stream of the signal would show, window by window;
* :func:`embeddings`: the ``(W, E)`` vectors the head of the network reads for those windows;
* :func:`real_embedding_targets`: per EMGLAB class, the mean of the subjects' mean embeddings and the per-dimension
  spread over windows;
* :func:`embedding_distance`: the RMS over dimensions of the difference of means in units of that spread.

The model is only read here, never changed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..types import CLASS_NAMES


def stream_windows(x: np.ndarray, fs: float, bundle: Any) -> np.ndarray:
    """``(W, T)`` float32: the quality-checked stream windows of ``x`` (n,) or (n, 1) µV at ``fs``.

    The signal goes through a stream's own state (:class:`streamemg.pipeline.StreamState`) as one chunk, so the
    windows are exactly what a live stream would send to the classifier.
    """
    windows, valid, _ = all_stream_windows(x, fs, bundle)
    return windows[valid]


def all_stream_windows(x: np.ndarray, fs: float, bundle: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every stream window of ``x``: ``(W, T)`` float32 samples, ``(W,)`` bool passes the quality gate, ``(W,)``
    stream time (s) of each window's newest sample."""
    from ..pipeline import signal_windows

    raw = np.asarray(x, dtype=np.float32).reshape(len(x), -1)[:, :1]
    windows = signal_windows(raw, fs, bundle, name="view")
    T = int(bundle.config.window_samples)
    data = np.stack([w.data[0] for w in windows]).astype(np.float32) if windows else np.zeros((0, T), np.float32)
    valid = np.array([w.quality[0] == "ok" for w in windows], dtype=bool)
    return data, valid, np.array([w.t_end for w in windows], dtype=np.float64)


def rolling_labels(x: np.ndarray, fs: float, bundle: Any, model: Any) -> tuple[np.ndarray, np.ndarray]:
    """What a stream of ``x`` would show: per window, the stream time (s) and the rolling probabilities ``(W, K)``
    (the pipeline's :class:`streamemg.estimates.RollingEstimator` with the bundle's settings; withheld windows hold
    it), as the dashboard's label is their arg-max."""
    from ..clinical.train import predict_windows
    from ..estimates import EstimateSettings, RollingEstimator

    windows, valid, t = all_stream_windows(x, fs, bundle)
    probs = np.full((len(windows), len(CLASS_NAMES)), np.nan)
    if valid.any():
        probs[valid] = predict_windows(model, windows[valid])
    est = RollingEstimator(EstimateSettings(), len(CLASS_NAMES))
    out = np.empty_like(probs)
    for i in range(len(windows)):
        est.update(probs[i], float(t[i]), bool(valid[i]))
        out[i] = est.rolling
    return t, out


@torch.inference_mode()
def embeddings(model: Any, windows: np.ndarray, batch: int = 256) -> np.ndarray:
    """``(W, E)`` float32: what the network's head reads for each window (the attention-pooled embedding)."""
    model = model.eval()
    seen: list[torch.Tensor] = []
    handle = model.net.head.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))
    try:
        for i in range(0, len(windows), batch):
            model(torch.from_numpy(np.ascontiguousarray(windows[i : i + batch])))
    finally:
        handle.remove()
    if not seen:
        return np.zeros((0, int(model.net.head.in_features)), dtype=np.float32)
    return torch.cat(seen).numpy().astype(np.float32)


def real_embedding_targets(data: Path, bundle: Any, model: Any | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per EMGLAB class: ``{"mean": (E,), "sd": (E,)}``; the mean of the subjects' mean embeddings, and the
    per-dimension SD over all of the class's windows (a floor of 1e-3 keeps dead dimensions out)."""
    from ..clinical.datasets import find_recordings
    from ..clinical.train import prepare

    model = model if model is not None else bundle.build("cpu")
    per: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    T = int(bundle.config.window_samples)
    for ref in find_recordings([data], datasets=["emglab"]):
        p = prepare(ref, bundle.config)
        w = p.stream_windows(T)[p.stream_valid]
        if len(w):
            per[(ref.label, ref.subject)].append(embeddings(model, w))
    out: dict[str, dict[str, np.ndarray]] = {}
    for cls in CLASS_NAMES:
        subjects = [np.concatenate(v) for (c, _), v in per.items() if c == cls]
        if not subjects:
            continue
        mean = np.mean([s.mean(axis=0) for s in subjects], axis=0)
        sd = np.maximum(np.concatenate(subjects).std(axis=0), 1e-3)
        out[cls] = {"mean": mean, "sd": sd}
    return out


def embedding_distance(emb: Sequence[np.ndarray], target: dict[str, np.ndarray]) -> float:
    """RMS over dimensions of (simulated mean - real mean) / real SD; ``emb`` holds one ``(W, E)`` array per
    simulated subject (their means are averaged, as the real subjects' are)."""
    means = [e.mean(axis=0) for e in emb if len(e)]
    if not means:
        return float("inf")
    z = (np.mean(means, axis=0) - target["mean"]) / target["sd"]
    return float(np.sqrt(np.mean(z * z)))
