"""The batched engine against one forward call per window, on the same windows."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..engine import (
    EngineSettings,
    InferenceEngine,
)
from ..model import ModelBundle
from ..types import Window
from .common import (
    _best_wall,
    _sync_for,
    _windows,
)

log = logging.getLogger(__name__)


async def _engine_burst(engine: InferenceEngine, windows: Sequence[Window]) -> tuple[float, float]:
    """Submit ``windows`` at once and wait for all results: ``(wall s, process CPU s)`` from the first submit to
    the last result. The CPU time leaves out the engine's deliberate wait for company (``max_wait_ms``)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for w in windows:
        engine.submit_nowait(w)
    await engine.drain()
    return time.perf_counter() - t0, time.process_time() - c0


def _cpu_per_call(fn: Callable[[], object], trials: int) -> float:
    """Least process CPU time (s) of ``trials`` calls of ``fn``."""
    best = math.inf
    for _ in range(trials):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best


async def measure_batching(
    bundle: ModelBundle,
    engine_settings: EngineSettings,
    templates: np.ndarray,
    burst_sizes: Sequence[int] = (1, 16, 64, 256, 512),
    backlog: int = 1024,
    single_windows: int = 128,
    trials: int = 3,
) -> dict[str, Any]:
    """The engine against one forward call per window, on the same windows.

    ``single`` is the peers' way: the model as built (``bundle.build()``), one ``softmax(model(x[None]))`` per
    window. ``single_optimized`` is the same loop with the engine's own optimised module, so the report can tell
    the gain of batching (``batching_gain``) from the gain of the optimised module.

    Returns:
        ``windows_per_s_batched`` (engine, backlog of ``backlog`` windows), ``windows_per_s_single``,
        ``windows_per_s_single_optimized``, ``batched_vs_single``, ``batching_gain`` and ``by_streams``: for a
        burst of N windows (what N streams produce per hop when their windows fall due together), the engine's
        process CPU time against that of N single calls (its wall time, which includes the deliberate wait for
        company, is reported as ``engine_wall_ms``).
    """
    T = bundle.config.window_samples
    windows = _windows(templates, max(backlog, *burst_sizes), T)
    results: list[int] = []
    engine = InferenceEngine(bundle, replace(engine_settings, queue_size=max(4096, len(windows) + 1)),
                             on_result=lambda w, p: results.append(1))
    plain = bundle.build().to(engine.device).eval()
    fast = engine.model
    device = engine.device
    sync = _sync_for(device)

    def single(module: torch.nn.Module, ws: Sequence[Window]) -> None:
        with torch.inference_mode():
            for w in ws:
                x = torch.from_numpy(w.data).to(device)
                torch.softmax(module(x), dim=-1).cpu().numpy()

    async with engine:
        await _engine_burst(engine, windows[:64])  # warm
        t_backlog = min([(await _engine_burst(engine, windows[:backlog]))[0] for _ in range(trials)])
        sample = windows[:single_windows]
        single(plain, sample[:4])
        single(fast, sample[:4])
        t_single = _best_wall(lambda: single(plain, sample), 1, trials, sync) / len(sample)
        t_single_fast = _best_wall(lambda: single(fast, sample), 1, trials, sync) / len(sample)
        by_streams: dict[str, dict[str, float]] = {}
        for n in burst_sizes:
            burst = windows[:n]
            runs = [await _engine_burst(engine, burst) for _ in range(trials)]
            wall_eng, cpu_eng = min(r[0] for r in runs), min(r[1] for r in runs)
            single_ws = burst[: min(n, single_windows)]
            cpu_one = _cpu_per_call(functools.partial(single, plain, single_ws), trials) / len(single_ws)
            cpu_one_fast = _cpu_per_call(functools.partial(single, fast, single_ws), trials) / len(single_ws)
            by_streams[str(n)] = {
                "engine_wall_ms": round(wall_eng * 1e3, 3),  # includes the wait for company (max_wait_ms)
                "engine_cpu_ms": round(cpu_eng * 1e3, 3),
                "single_cpu_ms": round(cpu_one * n * 1e3, 3),
                "batched_vs_single": round(cpu_one * n / cpu_eng, 2) if cpu_eng > 0 else math.nan,
                "batching_gain": round(cpu_one_fast * n / cpu_eng, 2) if cpu_eng > 0 else math.nan,
            }
    return {
        "max_batch": engine.settings.max_batch,
        "variant": engine.optimized.mode,
        "windows_per_s_batched": backlog / t_backlog,
        "windows_per_s_single": 1.0 / t_single,
        "windows_per_s_single_optimized": 1.0 / t_single_fast,
        "batched_vs_single": (backlog / t_backlog) * t_single,
        "batching_gain": (backlog / t_backlog) * t_single_fast,
        "by_streams": by_streams,
    }
