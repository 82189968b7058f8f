"""Shared helpers of the benchmarks: targets, timing, thread scope, synthetic templates and windows."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..qemg.service import child_pids as qemg_child_pids
from ..types import Window

log = logging.getLogger(__name__)


#: Targets of the performance work (checked in the report's ``targets``).
TARGET_CAPACITY = 256
TARGET_P99_MS = 50.0
TARGET_RSS_MB = 2.0




def read_rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process (VmRSS in ``/proc/PID/status``; this one by default), MiB; NaN where there is
    no /proc or no such process."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


def read_cpu_s(pid: int | str = "self") -> float:
    """CPU time (user + system, s) a process has used (``/proc/PID/stat``); NaN where there is no /proc or no such
    process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def qemg_processes_cpu_s() -> float:
    """CPU time the running QEMG processes have used, together (s); 0 when none runs."""
    return sum(c for c in (read_cpu_s(pid) for pid in qemg_child_pids()) if math.isfinite(c))


def qemg_processes_rss_mb() -> float:
    """Resident memory of the running QEMG processes, together (MiB); 0 when none runs."""
    return sum(r for r in (read_rss_mb(pid) for pid in qemg_child_pids()) if math.isfinite(r))


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return math.nan


def _best_wall(fn: Callable[[], object], reps: int, trials: int, sync: Callable[[], None] | None = None) -> float:
    """Shortest mean time (s) per call over ``trials`` runs of ``reps`` calls (the least-disturbed run)."""
    best = math.inf
    for _ in range(trials):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if sync is not None:
            sync()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def _sync_for(device: torch.device) -> Callable[[], None] | None:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Any:
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_templates(n: int, fs: float, seconds: float, chunk_samples: int, seed: int = 0) -> np.ndarray:
    """``(n, L, 1)`` float32 µV synthetic needle EMG (the three classes in turn), ``L`` a whole number of chunks."""
    from simulators.synth import SIM_CLASSES, EMGSimulator

    length = max(1, round(seconds * fs / chunk_samples)) * chunk_samples
    out = np.empty((n, length, 1), dtype=np.float32)
    for i in range(n):
        out[i] = EMGSimulator(SIM_CLASSES[i % len(SIM_CLASSES)], fs, 1, seed=seed + i).generate(length)
    return out


def _windows(templates: np.ndarray, n: int, window_samples: int) -> list[Window]:
    """``n`` distinct single-channel windows ``(1, T)`` cut from the templates (model-rate data assumed)."""
    out = []
    n_tpl, length = templates.shape[0], templates.shape[1]
    span = max(1, length - window_samples)
    for i in range(n):
        start = (i * 977) % span
        data = np.ascontiguousarray(templates[i % n_tpl, start : start + window_samples, 0][None, :])
        out.append(Window(f"w{i}", i, data, float(i), 0.0, ("ok",)))
    return out
