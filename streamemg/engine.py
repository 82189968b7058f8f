"""The inference engine: a dynamic batcher that classifies the windows of every stream on one device.

How a window flows::

    submit_nowait / submit  ->  bounded deque  ->  worker task (event loop), woken by the submission: takes every
    queued window up to max_batch rows at once (by default it does not wait for company: see below)
    ->  one call on the single inference thread: copy the rows into a preallocated staging buffer (pinned on CUDA,
    non-blocking copy to the device), features + model + softmax under torch.inference_mode
    ->  back on the loop: on_result(window, probs (C, K)) for each window, in submission order.

Batching is event-driven: a window that arrives on an idle engine is classified at once, and the windows that
arrive while a batch is being classified queue up and go together in the next one. Batches therefore grow with
the load by themselves, with no fixed wait: at 1-8 streams a decision costs one forward call, at hundreds of
streams the calls carry tens of rows. ``max_wait_ms`` > 0 adds a wait for company (counted from the oldest
window's submission) for devices where a fuller batch is worth a delay (a GPU with a high per-call cost).

Every channel of a window is one row of the batch (``(B, T)`` float32 µV at the model rate); rows of all streams
share one forward call. Fusing a window's channels into one estimate is the caller's job (see
``streamemg.estimates.fuse_channels``).

Failure handling: a forward that raises (e.g. out of memory) is retried in halves down to single rows; if a row
still fails on a GPU the engine moves the model to the CPU for good and retries there. Windows that cannot be
classified at all (or whose call exceeds ``timeout_s``) get all-NaN probabilities, so callers treat them as
unusable; every failure is counted in :attr:`EngineStats.errors`. The event loop never crashes on a failing
device. An exception raised by ``on_result`` itself is a bug in the caller and is not swallowed: the worker stops
and ``submit``, ``drain`` and ``__aexit__`` re-raise it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import gc
import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from .clock import Clock, monotonic
from .errors import ConfigError, InferenceError
from .model import Classifier, ConvBlock, ModelBundle, SqueezeExcitation
from .types import Window

__all__ = [
    "OPTIMIZE_MODES",
    "EngineSettings",
    "EngineStats",
    "FoldedClassifier",
    "GraphRunner",
    "InferenceEngine",
    "OptimizedModel",
    "cuda_graph_capture",
    "default_threads",
    "graph_buckets",
    "optimize_model",
    "select_device",
]

log = logging.getLogger(__name__)

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

#: Inline calls (:attr:`EngineSettings.inline_budget`) pause for a second after one in which the event loop's thread
#: was busy (CPU time / wall time) for at least this share: they are for low load (at 128 in-process streams, with
#: the loop 31-43 % busy, they did not lower the latency and may have raised its p99; docs/performance.md).
_INLINE_LOOP_BUSY_MAX = 0.25

#: Accepted values of :attr:`EngineSettings.optimize`.
OPTIMIZE_MODES: tuple[str, ...] = ("auto", "none", "fold", "trace")


@dataclass(frozen=True)
class EngineSettings:
    """Batching and device settings of :class:`InferenceEngine`.

    Attributes:
        max_batch: most rows (window channels) per forward call.
        max_wait_ms: longest time (ms) the oldest queued window waits for company before its batch runs; 0 (the
            default): none, a window on an idle engine runs at once and batches form from the windows that queue
            up during the previous call.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: torch intra-op threads (process wide). None: on a CPU all cores this process may use but one,
            at least 1 (:func:`default_threads`): the event loop (ingest, DSP, estimates) needs a core of its own,
            and on 2 cores an inference pool spanning both made every batch wait for the loop's core
            (docs/performance.md: p99 at 64 streams 4.7 s with 2 threads against 46 ms with 1). On CUDA, None
            leaves torch's default.
        queue_size: most windows waiting; ``submit_nowait`` drops (and counts) beyond it, ``submit`` waits.
        timeout_s: longest one forward call may take before its windows are given up (device hung).
        warmup: run one forward at the largest batch size on entry, so the first real batch is not slow.
        optimize: how the bundle's model is prepared for inference (see :func:`optimize_model`): ``"none"`` runs
            it as built; ``"fold"`` runs an equivalent module (batch norms folded into the convolutions, the
            spectrogram as one matrix product, the delta by slicing); ``"trace"`` also traces and freezes that
            module with ``torch.jit`` (no Python per operator); ``"auto"`` = ``"trace"`` on a CPU, ``"fold"`` on
            CUDA (where CUDA graphs remove the per-operator overhead instead). Every variant is checked against
            the model as built (probabilities within 1e-4) and falls back to it otherwise.
        cuda_graphs: on CUDA, capture the model once per batch-size bucket (powers of two up to ``max_batch``) and
            replay the graph, padding a batch up to its bucket, where a timed replay beats the eager call at
            warm-up. Ignored on a CPU.
        freeze_heap: when the first engine of the process has started (model built and warmed up), collect
            garbage once and move every object alive then (torch, the model, the imported modules: about 210 000)
            out of the cyclic garbage collector's reach (:func:`gc.freeze`). Without it, a full collection scanned
            them all and stopped the event loop for 130-170 ms in the middle of a live run, enough on its own to
            push the p99 latency of 64 LSL streams past 50 ms (docs/performance.md). Objects made later are
            collected as usual.
        inline_budget: a window that arrives alone on an idle engine with a CPU device is classified on the event
            loop's own thread instead of being handed to the inference thread and back: two thread wake-ups (about
            0.3 ms each on this machine) come off its latency. Such inline calls may take at most this share of
            the loop's time over each second, and none are made in a second after one in which the loop's thread
            was busy a quarter of the time or more: under load every batch goes to the inference thread as
            before, and the loop keeps its core for ingest. 0 turns it off. Inline calls cannot be abandoned on
            ``timeout_s``, so only the engine's own model runs inline (a CPU forward of one window does not hang
            the way a device or a module given by the caller can).
    """

    # Both measured by `streamemg bench` (docs/performance.md): 32-64 rows give the model's best windows/s (larger
    # batches spill out of cache). A fixed wait for company (5 ms before) doubled the latency at low load; without
    # it, the batches still grow under load from the windows queued during the previous call (latency by load in
    # docs/performance.md).
    max_batch: int = 64
    max_wait_ms: float = 0.0
    device: str = "auto"
    threads: int | None = None
    queue_size: int = 4096
    timeout_s: float = 30.0
    warmup: bool = True
    optimize: str = "auto"
    cuda_graphs: bool = True
    freeze_heap: bool = True
    inline_budget: float = 0.05

    def __post_init__(self) -> None:
        if not (_is_int(self.max_batch) and self.max_batch >= 1):
            raise ConfigError(f"EngineSettings.max_batch={self.max_batch!r}: must be an integer >= 1 (e.g. 64)")
        if not (_is_real(self.max_wait_ms) and 0 <= self.max_wait_ms <= 10_000):
            raise ConfigError(
                f"EngineSettings.max_wait_ms={self.max_wait_ms!r}: give a wait in milliseconds in [0, 10000] (e.g. 5)"
            )
        if not (isinstance(self.device, str) and _DEVICE_RE.match(self.device)):
            raise ConfigError(f"EngineSettings.device={self.device!r}: use auto, cpu, cuda or cuda:N")
        if not (_is_real(self.inline_budget) and 0 <= self.inline_budget <= 1):
            raise ConfigError(
                f"EngineSettings.inline_budget={self.inline_budget!r}: give a share of the loop's time in [0, 1] "
                "(e.g. 0.05), or 0 to hand every batch to the inference thread"
            )
        if self.threads is not None and not (_is_int(self.threads) and self.threads >= 1):
            raise ConfigError(
                f"EngineSettings.threads={self.threads!r}: give an integer >= 1, or None for torch's default"
            )
        if not (_is_int(self.queue_size) and self.queue_size >= 1):
            raise ConfigError(f"EngineSettings.queue_size={self.queue_size!r}: must be an integer >= 1 (e.g. 4096)")
        if not (_is_real(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"EngineSettings.timeout_s={self.timeout_s!r}: give a positive number of seconds")
        if not isinstance(self.warmup, bool):
            raise ConfigError(f"EngineSettings.warmup={self.warmup!r}: must be true or false")
        if self.optimize not in OPTIMIZE_MODES:
            raise ConfigError(
                f"EngineSettings.optimize={self.optimize!r}: use one of {', '.join(OPTIMIZE_MODES)} (default auto)"
            )
        if not isinstance(self.cuda_graphs, bool):
            raise ConfigError(f"EngineSettings.cuda_graphs={self.cuda_graphs!r}: must be true or false")
        if not isinstance(self.freeze_heap, bool):
            raise ConfigError(f"EngineSettings.freeze_heap={self.freeze_heap!r}: must be true or false")


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def select_device(
    requested: str = "auto", cuda_available: Callable[[], bool] = torch.cuda.is_available
) -> torch.device:
    """Resolve ``"auto" | "cpu" | "cuda" | "cuda:N"`` to a torch device.

    Raises:
        ConfigError: CUDA was asked for but is not available, or the name is unknown.
    """
    if not (isinstance(requested, str) and _DEVICE_RE.match(requested)):
        raise ConfigError(f"device {requested!r} is not known: use auto, cpu, cuda or cuda:N")
    if requested == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if requested.startswith("cuda") and not cuda_available():
        raise ConfigError(
            f"device {requested!r} was requested but CUDA is not available here (torch {torch.__version__}); "
            "use --device cpu (or --device auto to take a GPU only when there is one)"
        )
    return torch.device(requested)


def default_threads(device: torch.device) -> int | None:
    """The engine's thread count when ``EngineSettings.threads`` is None: on a CPU, the cores this process may
    run on minus one for the event loop (at least 1); None (torch's default) on other devices."""
    if device.type != "cpu":
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


# ---------------------------------------------------------------------------------------------- inference model


def _fold_bn(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as ``y = x * scale + shift``; returns ``(scale, shift)``, each ``(C,)``."""
    assert bn.running_var is not None and bn.running_mean is not None
    weight = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = weight / torch.sqrt(bn.running_var + bn.eps)
    return scale.detach().clone(), (bias - bn.running_mean * scale).detach().clone()


class FoldedClassifier(nn.Module):
    """An inference-only equivalent of :class:`streamemg.model.Classifier` for windows of ``window_samples``.

    ``(B, T)`` float32 µV -> ``(B, K)`` logits, equal to the classifier's to float rounding. It is built from a copy
    of the weights (the classifier itself is not changed) and differs only in how the same arithmetic is laid out:

    * spectrogram: the window is cut into ``hop``-sample blocks (a free reshape when the frame is a whole number
      ``r`` of hops, else an unfolded copy) and multiplied by the windowed DFT basis in **one** large matrix product
      ``(B * blocks, hop) @ (hop, r * 2F)``; frame ``n`` is the sum of block ``n + j``'s ``j``-th output part. The
      FLOPs are those of the convolution it replaces, but a single big GEMM runs near the machine's matmul rate.
    * the network runs on ``(B, C, N, F)`` (time before frequency) so the features need no transpose: every 3x3
      kernel is transposed instead, which is exact because kernel, stride and padding are square.
    * delta: the regression delta as slices of the edge-padded log-spectrogram (a 1-channel ``conv1d`` over
      ``B * F`` rows is pathologically slow in oneDNN); the input batch norm is applied to both planes as
      scalars; every conv's batch norm is folded into its weights and bias; ReLUs run in place.
    """

    dft: torch.Tensor

    def __init__(self, classifier: Classifier, window_samples: int) -> None:
        super().__init__()
        feats, net = classifier.features, classifier.net
        s = feats.settings
        hop, win = int(s.hop_length), int(s.win_length)
        self.hop = hop
        self.win = win
        self.n_freqs = int(feats.n_freqs)
        self.n_frames = s.n_frames(window_samples)
        self.whole = win % hop == 0  # frames are whole numbers of blocks
        self.r = win // hop if self.whole else 1
        self.floor = float(s.log_floor)
        self.normalize = s.normalize == "window"
        basis = feats.spectrogram.basis[:, 0, :].detach().to(torch.float32)  # (2F, W)
        if self.whole:
            parts = [basis[:, j * hop : (j + 1) * hop].T for j in range(self.r)]  # r x (hop, 2F)
            weight = torch.cat(parts, dim=1)  # (hop, r * 2F)
        else:
            weight = basis.T  # (W, 2F)
        self.register_buffer("dft", weight.contiguous().clone())
        scale, shift = _fold_bn(net.input_norm)
        self.delta_width = int(feats.delta.width)
        self.delta_norm = float(feats.delta.norm)
        self.a0, self.b0 = float(scale[0]), float(shift[0])
        self.a1, self.b1 = float(scale[1]) / self.delta_norm, float(shift[1])
        convs: list[nn.Module] = []
        excite: list[nn.Module] = []
        has_se: list[bool] = []
        for block in net.blocks:
            assert isinstance(block, ConvBlock)
            conv, (bn_scale, bn_shift) = block.conv, _fold_bn(block.bn)
            kh, kw = conv.kernel_size[0], conv.kernel_size[-1]
            sh, sw = conv.stride[0], conv.stride[-1]
            padding = conv.padding if isinstance(conv.padding, str) else (conv.padding[-1], conv.padding[0])
            # (N, F) layout: kernel, stride and padding swap their two axes (equal for the model's square ones)
            folded = nn.Conv2d(conv.in_channels, conv.out_channels, (kw, kh), (sw, sh), padding, bias=True)
            with torch.no_grad():
                w = conv.weight.detach() * bn_scale[:, None, None, None]
                folded.weight.copy_(w.transpose(2, 3))  # kernels over (N, F) instead of (F, N)
                b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn_shift)
                assert folded.bias is not None
                folded.bias.copy_(b * bn_scale + bn_shift)
            convs.append(folded)
            excite.append(block.se if block.se is not None else nn.Identity())
            has_se.append(block.se is not None)
        self.convs = nn.ModuleList(convs)
        self.excite = nn.ModuleList(excite)
        self.has_se = tuple(has_se)
        self.embed = net.embed
        self.pool = net.pool
        self.head = net.head
        # the optional window-statistics side branch (ArchSettings.waveform_stats), run as built
        self.stats: nn.Module | None = getattr(classifier, "stats", None)
        self.stats_norm: nn.Module | None = getattr(net, "stats_norm", None)
        self.stats_fc: nn.Module | None = getattr(net, "stats_fc", None)
        self.eval()

    def features(self, x: torch.Tensor, site: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T)`` -> ``(B, 2, N, F)``: normalised [log-spectrogram, delta] planes, time-major.

        ``site``: optional per-window site calibration ``(B, 2, 2, F)`` (see ``Classifier.forward``).
        """
        n, f2, hop = self.n_frames, 2 * self.n_freqs, self.hop
        if self.whole:
            nb = n + self.r - 1
            y = (x[:, : nb * hop].reshape(-1, hop) @ self.dft).reshape(-1, nb, self.r * f2)
            acc = y[:, :n, :f2]
            for j in range(1, self.r):
                acc = acc + y[:, j : j + n, j * f2 : (j + 1) * f2]
        else:
            frames = x.unfold(1, self.win, hop)  # (B, N, W), a strided view
            acc = (frames.reshape(-1, self.win) @ self.dft).reshape(-1, n, f2)
        re, im = acc[..., : self.n_freqs], acc[..., self.n_freqs :]
        ls = torch.log(re * re + im * im + self.floor)  # (B, N, F)
        if self.normalize:
            ls = ls - ls.mean(dim=(1, 2), keepdim=True)
        w = self.delta_width
        padded = torch.cat([ls[:, :1].expand(-1, w, -1), ls, ls[:, -1:].expand(-1, w, -1)], dim=1)
        delta = padded[:, w + 1 : w + 1 + n] - padded[:, w - 1 : w - 1 + n]
        for k in range(2, w + 1):
            delta = delta + k * (padded[:, w + k : w + k + n] - padded[:, w - k : w - k + n])
        if site is not None:  # per-window site calibration of both planes, before the input batch norm
            ls = ls * site[:, 0, 0, None, :] + site[:, 1, 0, None, :]
            delta = delta * site[:, 0, 1, None, :] + site[:, 1, 1, None, :] * self.delta_norm
        return torch.stack([ls * self.a0 + self.b0, delta * self.a1 + self.b1], dim=1)

    def forward(self, x: torch.Tensor, site: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x, site)
        for conv, se, has_se in zip(self.convs, self.excite, self.has_se, strict=True):
            h = torch.relu_(conv(h))
            if has_se:
                assert isinstance(se, SqueezeExcitation)
                s = torch.sigmoid(se.fc2(torch.relu(se.fc1(h.mean(dim=(2, 3))))))
                h = h * s[:, :, None, None]
        b, c, n, f = h.shape
        e = torch.relu(self.embed(h.permute(0, 1, 3, 2).reshape(b, c * f, n)))  # channel index c * F' + f
        z = self.pool(e) if self.pool is not None else e.mean(dim=-1)
        if self.stats is not None and self.stats_norm is not None and self.stats_fc is not None:
            z = torch.cat([z, torch.relu(self.stats_fc(self.stats_norm(self.stats(x))))], dim=1)
        return self.head(z)


@dataclass(frozen=True)
class OptimizedModel:
    """What :func:`optimize_model` made: the module to run and how it came about.

    Attributes:
        module: ``(B, T) -> (B, K)`` logits on ``device``.
        mode: the variant in use (``"none"``, ``"fold"`` or ``"trace"``).
        max_abs_diff: largest probability difference to the model as built, on the check input.
        note: why a requested variant was not used (empty when it was).
    """

    module: nn.Module
    mode: str
    max_abs_diff: float = 0.0
    note: str = ""


def optimize_model(
    model: nn.Module, window_samples: int, device: torch.device, mode: str = "auto", tolerance: float = 1e-4
) -> OptimizedModel:
    """Prepare a :class:`~streamemg.model.Classifier` for inference on ``device`` (see ``EngineSettings.optimize``).

    The model passed in is not modified (variants are built from copies of its weights). A variant whose softmax
    probabilities differ from the model's by more than ``tolerance`` on a check batch (random µV-scale windows,
    batch sizes 3 and 1), or that fails to build, is dropped in favour of the next simpler one, and the reason is
    logged and returned in :attr:`OptimizedModel.note`.
    """
    if mode not in OPTIMIZE_MODES:
        raise ConfigError(f"optimize mode {mode!r}: use one of {', '.join(OPTIMIZE_MODES)}")
    model = model.to(device).eval()
    if mode == "auto":
        mode = "fold" if device.type == "cuda" else "trace"
    if mode == "none" or not isinstance(model, Classifier):
        return OptimizedModel(model, "none", 0.0, "" if mode == "none" else "not a Classifier: run as given")
    gen = torch.Generator().manual_seed(1234)
    check = (torch.randn(3, window_samples, generator=gen) * 50.0).to(device)
    with torch.inference_mode():
        ref = torch.softmax(model(check).float(), dim=-1)
        ref1 = torch.softmax(model(check[:1]).float(), dim=-1)
    notes: list[str] = []
    candidates = ["trace", "fold"] if mode == "trace" else ["fold"]
    for variant in candidates:
        try:
            module: nn.Module = FoldedClassifier(model, window_samples).to(device).eval()
            for p in module.parameters():
                p.requires_grad_(False)
            if variant == "trace":
                # torch.jit is deprecated in favour of torch.compile/export, but measured fastest here on a CPU
                # (docs/performance.md); if a later torch drops it, the exception below falls back to "fold".
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.freeze(torch.jit.trace(module, check, check_trace=False))
            with torch.inference_mode():
                out = torch.softmax(module(check).float(), dim=-1)
                out1 = torch.softmax(module(check[:1]).float(), dim=-1)
            diff = max(float((out - ref).abs().max()), float((out1 - ref1).abs().max()))
        except Exception as exc:  # an architecture the variant does not cover: use a simpler one
            notes.append(f"{variant}: {type(exc).__name__}: {exc}")
            continue
        if not diff <= tolerance:
            notes.append(f"{variant}: probabilities differ by {diff:.2e} > {tolerance:g}")
            continue
        note = "; ".join(notes)
        if note:
            log.warning("model optimisation: %s; using %s", note, variant)
        return OptimizedModel(module, variant, diff, note)
    note = "; ".join(notes)
    log.warning("model optimisation failed (%s); running the model as built", note)
    return OptimizedModel(model, "none", 0.0, note)


# ---------------------------------------------------------------------------------------------- CUDA graphs


def graph_buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes to capture: powers of two below ``max_batch``, and ``max_batch`` itself (ascending)."""
    sizes = {max_batch}
    b = 1
    while b < max_batch:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


#: ``capture(bucket) -> (static_input (bucket, T), replay(), static_output (bucket, K))`` on the device.
GraphCapture = Callable[[int], tuple[torch.Tensor, Callable[[], None], torch.Tensor]]


class GraphRunner:
    """Runs batches through captured graphs, one per batch-size bucket, captured lazily on first use.

    A batch of ``rows`` goes to the smallest bucket ``>= rows``: its rows are copied into the bucket's static input
    (non-blocking from pinned memory), the rows beyond them are zeroed, the graph is replayed and the first ``rows``
    outputs are returned. Batches larger than every bucket, and buckets whose capture failed, return None (the
    caller runs them eagerly); a failed capture is remembered and not retried.

    Args:
        capture: makes one bucket's graph (injectable: tests pass a CPU stand-in; on CUDA see
            :func:`cuda_graph_capture`).
        buckets: the batch sizes to use, ascending.
    """

    def __init__(self, capture: GraphCapture, buckets: Sequence[int]) -> None:
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
            raise ConfigError(f"GraphRunner buckets={tuple(buckets)!r}: give distinct ascending sizes >= 1")
        self._capture = capture
        self.buckets = tuple(int(b) for b in buckets)
        self.graphs: dict[int, tuple[torch.Tensor, Callable[[], None], torch.Tensor]] = {}
        self.failed: dict[int, str] = {}
        self.replays = 0
        self.padded_rows = 0

    def bucket_for(self, rows: int) -> int | None:
        """The smallest bucket holding ``rows`` rows, or None when ``rows`` exceeds the largest."""
        for b in self.buckets:
            if b >= rows:
                return b
        return None

    def run(self, x: torch.Tensor) -> torch.Tensor | None:
        """``x`` (rows, T) host or device -> (rows, K) device output of the replayed graph, or None (run eagerly)."""
        rows = int(x.shape[0])
        bucket = self.bucket_for(rows)
        if bucket is None or bucket in self.failed:
            return None
        entry = self.graphs.get(bucket)
        if entry is None:
            try:
                entry = self._capture(bucket)
            except Exception as exc:  # capture is an optimisation: never fatal
                self.failed[bucket] = f"{type(exc).__name__}: {exc}"
                log.warning("graph capture for batch %d failed (%s); that bucket runs eagerly", bucket, exc)
                return None
            self.graphs[bucket] = entry
        static_in, replay, static_out = entry
        static_in[:rows].copy_(x, non_blocking=True)
        if rows < bucket:
            static_in[rows:].zero_()
            self.padded_rows += bucket - rows
        replay()
        self.replays += 1
        return static_out[:rows]


def cuda_graph_capture(model: nn.Module, window_samples: int, device: torch.device, warmup: int = 3) -> GraphCapture:
    """The real capture for :class:`GraphRunner`: ``softmax(model(x))`` into a ``torch.cuda.CUDAGraph``."""

    def capture(bucket: int) -> tuple[torch.Tensor, Callable[[], None], torch.Tensor]:
        static_in = torch.zeros((bucket, window_samples), dtype=torch.float32, device=device)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(warmup):  # cuDNN/cuBLAS pick their kernels outside the capture
                torch.softmax(model(static_in).float(), dim=-1)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = torch.softmax(model(static_in).float(), dim=-1)
        return static_in, graph.replay, static_out

    return capture


@dataclass
class EngineStats:
    """Counters of one engine (read them from the loop thread; they only grow, except ``queued``).

    Attributes:
        windows: windows classified (results delivered, NaN ones included).
        rows: rows (window channels) classified.
        batches: forward calls made (one per batch).
        batch_max: largest batch (rows).
        dropped: windows refused by ``submit_nowait`` because the queue was full.
        errors: forward calls that raised or timed out.
        failed: windows delivered with NaN probabilities because the device failed.
        busy_s: seconds the inference thread spent on batches (staging copy + forward), by the engine's clock.
        cpu_s: CPU seconds the inference thread spent on those batches (``time.thread_time``): unlike ``busy_s`` it
            excludes time the thread waited for a core, so it is the batches' cost on a busy machine.
        queued: windows waiting now; ``queue_high``: the most ever waiting at once.
        fallbacks: times the engine moved from a GPU to the CPU after failures.
        inline: batches of one lone window run on the event loop's thread (``EngineSettings.inline_budget``).
    """

    windows: int = 0
    rows: int = 0
    batches: int = 0
    batch_max: int = 0
    dropped: int = 0
    errors: int = 0
    failed: int = 0
    busy_s: float = 0.0
    cpu_s: float = 0.0
    queued: int = 0
    queue_high: int = 0
    fallbacks: int = 0
    inline: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)

    @property
    def batch_mean(self) -> float:
        """Mean rows per forward call (0 before the first)."""
        return self.rows / self.batches if self.batches else 0.0

    def snapshot(self) -> EngineStats:
        """An independent copy."""
        return replace(self, batch_sizes=collections.Counter(self.batch_sizes))


_Item = tuple[Window, float]  # (window, loop time of submission)


class InferenceEngine:
    """Dynamic batcher: all streams' windows, features + model in one call on one device, off the event loop.

    Args:
        bundle: the model (weights + config); ``bundle.config.window_samples`` is the expected window length.
        settings: batching and device settings.
        on_result: called in the event-loop thread as ``on_result(window, probs)`` with ``probs`` float32
            ``(C, K)`` softmax probabilities, one row per channel (all NaN if the device failed on this window).
        clock: monotonic seconds, for :attr:`EngineStats.busy_s`.
        model: optional module to run instead of ``bundle.build()`` (``(B, T) -> (B, K)`` logits), e.g. a
            compiled or exported variant; it is moved to the engine's device and run as given (no ``optimize``).
        cuda_available: injectable CUDA probe (tests).
        graph_capture: injectable graph capture for :class:`GraphRunner` (tests exercise the graph bookkeeping on a
            CPU with a stand-in); by default graphs are captured only on CUDA with ``settings.cuda_graphs``.

    Attributes:
        optimized: how the model was prepared (:class:`OptimizedModel`: mode, check difference, note).
        graphs: the CUDA-graph runner in use, or None (CPU, disabled, or slower than eager at warm-up).
    """

    def __init__(
        self,
        bundle: ModelBundle,
        settings: EngineSettings | None = None,
        on_result: Callable[[Window, np.ndarray], None] | None = None,
        clock: Clock = monotonic,
        *,
        model: nn.Module | None = None,
        cuda_available: Callable[[], bool] = torch.cuda.is_available,
        graph_capture: GraphCapture | None = None,
        site_table: torch.Tensor | None = None,
    ) -> None:
        self.bundle = bundle
        self.settings = settings = settings or EngineSettings()
        self.on_result = on_result or (lambda window, probs: None)
        self.clock = clock
        self.device = select_device(settings.device, cuda_available)
        threads = settings.threads if settings.threads is not None else default_threads(self.device)
        if threads is not None and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.window_samples = bundle.config.window_samples
        self.n_classes = bundle.config.n_classes
        self._own_model = model is None  # built here: may be optimised, and rebuilt for the CPU on a fall-back
        # site calibration (streamemg.clinical.site): row Window.site of this (S, 2, 2, F) table is applied to a
        # window's features inside the batch; a traced module takes no such input, so the folded one runs
        self.site_table = site_table.to(self.device, torch.float32) if site_table is not None else None
        self._optimize = settings.optimize
        if site_table is not None and settings.optimize in ("auto", "trace"):
            self._optimize = "fold"
        if model is None:
            self.optimized = optimize_model(bundle.build(), self.window_samples, self.device, self._optimize)
        else:
            given = model.to(self.device).eval()
            self.optimized = OptimizedModel(given, "none", 0.0, "module given by the caller: run as given")
        self.model: nn.Module = self.optimized.module
        self.graphs: GraphRunner | None = None
        self._graphs_checked = graph_capture is not None  # an injected capture is used without timing it
        if graph_capture is not None:
            self.graphs = GraphRunner(graph_capture, graph_buckets(settings.max_batch))
        elif self.device.type == "cuda" and settings.cuda_graphs and site_table is None:
            capture = cuda_graph_capture(self.model, self.window_samples, self.device)
            self.graphs = GraphRunner(capture, graph_buckets(settings.max_batch))
        self.stats = EngineStats()
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_rows = 0
        self._pending = 0  # accepted windows without a result yet
        self._wake = asyncio.Event()  # set: first window queued, or max_batch rows queued
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # model / device swaps vs. predict() from another thread
        self._staging = self._make_staging(settings.max_batch)
        self._batch_cpu_s = 0.0  # CPU time of the last batch (inference thread)
        self._inline_since = -math.inf  # start of the current second of inline-budget accounting (clock s)
        self._inline_used = 0.0  # inline forward time (s) spent since then
        self._inline_cpu = 0.0  # the loop thread's CPU time (s) at _inline_since

    # ------------------------------------------------------------------ lifecycle
    def _make_staging(self, rows: int) -> torch.Tensor:
        """Preallocated (rows, T) float32 host buffer; pinned when the device is CUDA (async H2D copies)."""
        pin = self.device.type == "cuda"
        return torch.empty((rows, self.window_samples), dtype=torch.float32, pin_memory=pin)

    async def __aenter__(self) -> InferenceEngine:
        if self._task is not None:
            return self
        self._failure = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamemg-infer")
        if self.settings.warmup:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(loop.run_in_executor(self._executor, self._warm_up), self.settings.timeout_s)
            except TimeoutError:
                self.stats.errors += 1
                log.warning("engine warm-up on %s took longer than %.1f s", self.device, self.settings.timeout_s)
                self._replace_executor()
        if self.settings.freeze_heap:
            _freeze_startup_heap()
        self._task = asyncio.create_task(self._worker(), name="streamemg-engine")
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Drain pending windows (on a normal exit), stop the worker and the inference thread. Idempotent."""
        task = self._task
        if task is None:
            return
        try:
            if exc_type is None and self._failure is None:
                await self.drain()
        finally:
            self._task = None
            if not task.done():
                task.cancel()
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()  # retrieved here; re-raised below as self._failure
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
        if exc_type is None and self._failure is not None:
            raise InferenceError(f"the inference engine stopped: {self._failure!r}") from self._failure

    # ------------------------------------------------------------------ submission
    def _check(self, window: Window) -> None:
        if self._failure is not None:
            raise InferenceError(f"the inference engine stopped: {self._failure!r}") from self._failure
        data = window.data
        if data.ndim != 2 or data.shape[1] != self.window_samples or data.shape[0] < 1:
            raise ValueError(
                f"window of stream {window.stream_id!r} has shape {tuple(data.shape)}; the model expects "
                f"(channels, {self.window_samples})"
            )

    def submit_nowait(self, window: Window) -> bool:
        """Queue a window; False (and ``stats.dropped`` + 1) if the queue is full. Call from the loop thread."""
        self._check(window)
        if len(self._queue) >= self.settings.queue_size:
            self.stats.dropped += 1
            return False
        self._enqueue(window)
        return True

    async def submit(self, window: Window) -> None:
        """Queue a window, waiting for space when the queue is full (back-pressure for offline sources)."""
        self._check(window)
        while len(self._queue) >= self.settings.queue_size:
            self._space.clear()
            await self._space.wait()
            self._check(window)
        self._enqueue(window)

    def _enqueue(self, window: Window) -> None:
        loop_time = asyncio.get_running_loop().time()
        was_empty = not self._queue
        self._queue.append((window, loop_time))
        self._queued_rows += window.n_channels
        self._pending += 1
        self._idle.clear()
        st = self.stats
        st.queued = len(self._queue)
        st.queue_high = max(st.queue_high, st.queued)
        if was_empty or self._queued_rows >= self.settings.max_batch:
            self._wake.set()

    async def drain(self) -> None:
        """Return when every accepted window has had its result delivered (raises if the worker failed)."""
        while self._pending:
            if self._failure is not None:
                raise InferenceError(f"the inference engine stopped: {self._failure!r}") from self._failure
            if self._task is None:
                raise InferenceError("drain() needs a running engine: use `async with engine:`")
            idle = asyncio.ensure_future(self._idle.wait())
            try:
                await asyncio.wait({idle, self._task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                idle.cancel()
        if self._failure is not None:
            raise InferenceError(f"the inference engine stopped: {self._failure!r}") from self._failure

    # ------------------------------------------------------------------ worker (event loop)
    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        max_batch, max_wait = self.settings.max_batch, self.settings.max_wait_ms / 1000.0
        try:
            while True:
                while not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                deadline = self._queue[0][1] + max_wait
                while max_wait > 0 and self._queued_rows < max_batch:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    except TimeoutError:
                        break
                batch = self._take(max_batch)
                arrays, sites = [w.data for w, _ in batch], [w.site for w, _ in batch]
                if self._inline_allowed(batch):
                    probs = self._classify_inline(arrays, sites)
                else:
                    probs = await self._classify(arrays, sites)
                off = 0
                for w, _ in batch:
                    c = w.n_channels
                    self._pending -= 1
                    self.on_result(w, probs[off : off + c])
                    off += c
                if not self._pending:
                    self._idle.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failure = exc
            log.error("inference engine stopped: on_result raised %r", exc)
            self._idle.set()
            self._space.set()
            raise

    def _take(self, max_batch: int) -> list[_Item]:
        """Pop the oldest windows whose rows fit in ``max_batch`` (always at least one)."""
        batch: list[_Item] = []
        rows = 0
        q = self._queue
        while q and (not batch or rows + q[0][0].n_channels <= max_batch):
            item = q.popleft()
            batch.append(item)
            rows += item[0].n_channels
        self._queued_rows -= rows
        self.stats.queued = len(q)
        self._space.set()
        return batch

    def _inline_allowed(self, batch: list[_Item]) -> bool:
        """Whether ``batch`` (just taken) runs on the loop's thread: one window, nothing else queued, the engine's
        own model (a module given by the caller may block: it keeps the timeout) on a CPU, and inline calls under
        ``inline_budget`` of the current second."""
        budget = self.settings.inline_budget
        if budget <= 0 or len(batch) != 1 or self._queue or self.device.type != "cpu" or not self._own_model:
            return False
        now = self.clock()
        if now - self._inline_since >= 1.0:
            # a new second: no inline calls in it (the budget counts as spent) if the loop's thread was busy
            # _INLINE_LOOP_BUSY_MAX of the last one or more (under load the loop is the pipeline's bottleneck, and
            # the inference thread should take every batch)
            cpu = time.thread_time()
            busy = (cpu - self._inline_cpu) / (now - self._inline_since)
            self._inline_since, self._inline_cpu = now, cpu
            self._inline_used = 0.0 if busy < _INLINE_LOOP_BUSY_MAX else budget
        return self._inline_used < budget

    def _classify_inline(self, arrays: list[np.ndarray], sites: list[int] | None = None) -> np.ndarray:
        """Run one lone window's batch here, on the event loop's thread; (rows, K) probabilities."""
        t0 = self.clock()
        try:
            probs: np.ndarray | None = self._run_batch(arrays, sites)
        except InferenceError as exc:
            log.error("%s", exc)
            probs = None
        self._inline_used += self.clock() - t0
        self.stats.inline += 1
        return self._account(arrays, t0, probs)

    async def _classify(self, arrays: list[np.ndarray], sites: list[int] | None = None) -> np.ndarray:
        """Run one batch on the inference thread with a timeout; (rows, K) probabilities (NaN on failure)."""
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        rows = sum(a.shape[0] for a in arrays)
        st = self.stats
        t0 = self.clock()
        try:
            probs = await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._run_batch, arrays, sites), self.settings.timeout_s
            )
        except TimeoutError:
            st.errors += 1
            log.error(
                "inference on %s took longer than %.1f s for %d rows; giving those windows up",
                self.device,
                self.settings.timeout_s,
                rows,
            )
            self._replace_executor()
            probs = None
        except InferenceError as exc:
            log.error("%s", exc)
            probs = None
        return self._account(arrays, t0, probs)

    def _account(self, arrays: list[np.ndarray], t0: float, probs: np.ndarray | None) -> np.ndarray:
        """Count a finished batch (started at ``t0``) in :attr:`stats`; its probabilities, NaN if it failed."""
        rows = sum(a.shape[0] for a in arrays)
        st = self.stats
        st.busy_s += self.clock() - t0
        if probs is not None:
            st.cpu_s += self._batch_cpu_s
        st.batches += 1
        st.rows += rows
        st.windows += len(arrays)
        st.batch_max = max(st.batch_max, rows)
        st.batch_sizes[rows] += 1
        if probs is None:
            st.failed += len(arrays)
            probs = np.full((rows, self.n_classes), np.nan, dtype=np.float32)
        return probs

    def _replace_executor(self) -> None:
        """Abandon a hung inference thread: new thread, new staging buffer (the old thread may still read its own)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamemg-infer")
        self._staging = self._make_staging(self.settings.max_batch)

    # ------------------------------------------------------------------ inference thread
    def _warm_up(self) -> None:
        """Inference thread: run the largest and the smallest batch once (lazy initialisation, traced-graph
        specialisation), and on CUDA keep the graphs only if a replay beats the eager call."""
        zeros = np.zeros((self.settings.max_batch, self.window_samples), dtype=np.float32)
        for rows in dict.fromkeys((self.settings.max_batch, 1)):
            self._run_batch([zeros[:rows]])
        if self.graphs is not None and not self._graphs_checked and self.device.type == "cuda":
            self._graphs_checked = True
            x = self._staging[: self.settings.max_batch]
            x.zero_()
            eager_s = _best_time(lambda: self._forward_eager(x), self.device)
            graph_s = _best_time(lambda: self._forward(x), self.device)
            if not graph_s < eager_s:
                log.info("CUDA graphs (%.2f ms) not faster than eager (%.2f ms): off", graph_s * 1e3, eager_s * 1e3)
                self.graphs = None

    def _run_batch(self, arrays: Sequence[np.ndarray], sites: Sequence[int] | None = None) -> np.ndarray:
        """Inference thread: stage ``arrays`` (each (C_i, T)) into one (B, T) block and classify it."""
        cpu0 = time.thread_time()
        rows = sum(a.shape[0] for a in arrays)
        staging = self._staging if rows <= self._staging.shape[0] else self._make_staging(rows)
        host = staging.numpy()
        off = 0
        for a in arrays:
            np.copyto(host[off : off + a.shape[0]], a, casting="same_kind")
            off += a.shape[0]
        site = None
        if self.site_table is not None and sites is not None and any(sites):
            idx = [s for a, s in zip(arrays, sites, strict=True) for _ in range(a.shape[0])]
            site = self.site_table[torch.tensor(idx, device=self.site_table.device)]
        probs = self._forward_robust(staging[:rows], site)
        self._batch_cpu_s = time.thread_time() - cpu0  # read by _classify once the call has returned
        return probs

    def _forward(self, x: torch.Tensor, site: torch.Tensor | None = None) -> np.ndarray:
        """(B, T) host tensor -> (B, K) float32 probabilities, on the current device (graph replay if any)."""
        graphs = self.graphs
        if graphs is not None and site is None:
            with torch.inference_mode():
                out = graphs.run(x)
            if out is not None:
                return out.cpu().numpy()  # synchronises with the replay
        return self._forward_eager(x, site)

    def _forward_eager(self, x: torch.Tensor, site: torch.Tensor | None = None) -> np.ndarray:
        with torch.inference_mode():
            xd = x.to(self.device, non_blocking=True) if self.device.type != "cpu" else x
            if site is None:
                out = torch.softmax(self.model(xd).float(), dim=-1)
            else:
                out = torch.softmax(self.model(xd, site.to(xd.device)).float(), dim=-1)
            return out.cpu().numpy()

    def _forward_robust(self, x: torch.Tensor, site: torch.Tensor | None = None) -> np.ndarray:
        """:meth:`_forward` with retries in halves, then a permanent move to the CPU; raises InferenceError."""
        try:
            return self._forward_halving(x, site)
        except Exception as exc:
            if self.device.type == "cpu":
                raise InferenceError(f"inference failed on the CPU for a batch of {x.shape[0]} rows: {exc!r}") from exc
            self._fall_back_to_cpu(exc)
            site = site.to("cpu") if site is not None else None
        try:
            return self._forward_halving(x, site)
        except Exception as exc:
            raise InferenceError(f"inference failed on the CPU too for {x.shape[0]} rows: {exc!r}") from exc

    def _forward_halving(self, x: torch.Tensor, site: torch.Tensor | None = None) -> np.ndarray:
        try:
            return self._forward(x, site)
        except Exception as exc:
            self.stats.errors += 1
            if x.shape[0] <= 1:
                raise
            log.warning("forward of %d rows on %s failed (%r); retrying in halves", x.shape[0], self.device, exc)
            _empty_cache(self.device)
            half = x.shape[0] // 2
            lo, hi = (None, None) if site is None else (site[:half], site[half:])
            return np.concatenate([self._forward_halving(x[:half], lo), self._forward_halving(x[half:], hi)])

    def _fall_back_to_cpu(self, exc: BaseException) -> None:
        log.error("inference on %s keeps failing (%r); moving the model to the CPU", self.device, exc)
        with self._lock:
            old = self.device
            self.graphs = None
            if self._own_model and old.type != "cpu":  # a traced/frozen module keeps its device: rebuild it
                self.optimized = optimize_model(
                    self.bundle.build(), self.window_samples, torch.device("cpu"), self._optimize
                )
                self.model = self.optimized.module
            else:
                self.model = self.model.to("cpu")
            self.device = torch.device("cpu")
            if self.site_table is not None:
                self.site_table = self.site_table.to("cpu")
            self.stats.fallbacks += 1
            _empty_cache(old)

    # ------------------------------------------------------------------ offline
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Synchronous offline inference: ``(B, T)`` float32 µV -> ``(B, K)`` probabilities, in max_batch slices.

        Runs on the calling thread (not the engine's), so it may be used without entering the engine.
        """
        arr = np.ascontiguousarray(x, dtype=np.float32)
        if arr.ndim != 2:
            raise ValueError(f"predict expects (B, T), got shape {arr.shape}")
        out = np.empty((arr.shape[0], self.n_classes), dtype=np.float32)
        step = self.settings.max_batch
        for i in range(0, arr.shape[0], step):
            out[i : i + step] = self._forward_robust(torch.from_numpy(arr[i : i + step]))
        return out


_heap_frozen = False


def _freeze_startup_heap() -> None:
    """Once per process: collect garbage, then keep the objects alive now out of later collections (gc.freeze).

    Collecting first means only live objects are frozen (garbage frozen now could never be reclaimed).
    """
    global _heap_frozen
    if _heap_frozen:
        return
    _heap_frozen = True
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    took_ms = (time.perf_counter() - t0) * 1e3
    log.debug("heap frozen after start-up: %d objects, %.0f ms", gc.get_freeze_count(), took_ms)


def _best_time(fn: Callable[[], object], device: torch.device, reps: int = 5) -> float:
    """Shortest of ``reps`` timed calls of ``fn`` (seconds), synchronising CUDA around each."""
    best = math.inf
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        try:
            torch.cuda.empty_cache()
        except Exception:  # best effort only
            pass
