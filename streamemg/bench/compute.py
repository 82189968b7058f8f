"""Compute figures: the device's matmul limit and the model's achieved rate per batch size and variant."""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..engine import (
    optimize_model,
)
from ..model import ModelBundle, count_flops
from .common import (
    _best_wall,
    _sync_for,
    _torch_threads,
)

log = logging.getLogger(__name__)


def measure_matmul(device: torch.device, size: int = 2048, threads: int | None = None, trials: int = 5) -> float:
    """GFLOP/s of a ``size x size`` float32 matmul on ``device`` (best of ``trials``), with ``threads`` CPU threads."""
    with _torch_threads(threads):
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)
        sync = _sync_for(device)
        a @ b
        reps = 2 if device.type == "cpu" else 20
        dt = _best_wall(lambda: a @ b, reps, trials, sync)
    return 2.0 * size**3 / dt / 1e9


def measure_model(
    bundle: ModelBundle,
    device: torch.device,
    batch_sizes: Sequence[int] = (1, 4, 16, 32, 64, 128, 256),
    modes: Sequence[str] = ("none", "fold", "trace"),
    threads: int | None = None,
    min_rows: int = 256,
    trials: int = 5,
) -> dict[str, Any]:
    """Per batch size and inference variant: µs per window and GFLOP/s (``count_flops`` x windows / s).

    Variants are timed interleaved (each trial runs every variant once), so a load change hits all alike.

    Returns:
        ``{"mflops_per_window", "threads", "variants": {mode: {...}}, "sweep": [{"batch", "<mode>_us",
        "<mode>_gflops"}...], "best": {"mode", "batch", "us_per_window", "gflops", "windows_per_s"}}``.
    """
    T = bundle.config.window_samples
    flops = count_flops(bundle.build(), T)
    sync = _sync_for(device)
    with _torch_threads(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = {m: optimize_model(bundle.build(), T, device, m) for m in modes}
        gen = torch.Generator().manual_seed(0)
        sweep: list[dict[str, Any]] = []
        best: dict[str, Any] = {"gflops": 0.0}
        with torch.inference_mode():
            for b in batch_sizes:
                x = (torch.randn(b, T, generator=gen) * 50.0).to(device)
                reps = max(1, min_rows // b)
                for opt in built.values():
                    for _ in range(2):
                        opt.module(x)
                times = {m: math.inf for m in built}
                for _ in range(trials):
                    for m, opt in built.items():
                        times[m] = min(times[m], _best_wall(functools.partial(opt.module, x), reps, 1, sync))
                row: dict[str, Any] = {"batch": b}
                for m, dt in times.items():
                    gf = flops * b / dt / 1e9
                    row[f"{m}_us"] = round(dt / b * 1e6, 1)
                    row[f"{m}_gflops"] = round(gf, 1)
                    if gf > best["gflops"]:
                        best = {"mode": built[m].mode, "batch": b, "us_per_window": dt / b * 1e6, "gflops": gf,
                                "windows_per_s": b / dt}
                sweep.append(row)
    return {
        "mflops_per_window": flops / 1e6,
        "threads": torch.get_num_threads() if threads is None else threads,
        "variants": {m: {"mode": o.mode, "max_abs_diff": o.max_abs_diff, "note": o.note} for m, o in built.items()},
        "sweep": sweep,
        "best": best,
    }


def pick_max_batch(sweep: Sequence[dict[str, Any]], mode: str, within: float = 0.05) -> int:
    """The smallest swept batch size whose per-window time is within ``within`` of the best (for ``mode``)."""
    key = f"{mode}_us"
    rows = [r for r in sweep if key in r]
    if not rows:
        return 64
    best = min(r[key] for r in rows)
    return int(min(r["batch"] for r in rows if r[key] <= best * (1.0 + within)))



def auto_variant(device: torch.device) -> str:
    """The variant ``optimize="auto"`` picks on ``device`` (the sweep's column used to choose max_batch)."""
    return "fold" if device.type == "cuda" else "trace"
