"""The benchmarks behind ``streamemg bench``: compute, batching, ingest, memory and whole-pipeline capacity.

Every figure comes from the same process in the same run, so ratios between them are meaningful even on a busy
machine (absolute numbers are not: :func:`run_bench` records the load average before and after).

What is measured (see ``docs/performance.md`` for how to read the numbers):

* **compute**: a large float32 matmul (the device's practical limit), and the model's FLOPs per window and its
  achieved rate per batch size for each inference variant of :func:`streamemg.engine.optimize_model`;
* **batching**: the engine's throughput against one forward call per window (the way per-stream tools call a
  model), on the same windows, for a backlog and for the bursts that 1 ... 512 streams produce per hop;
* **ingest**: ring buffer + filters + resampling + window cutting per 10 ms chunk (:class:`StreamState`);
* **memory**: resident memory per added stream (VmRSS from ``/proc/self/status``);
* **real time**: the whole :class:`~streamemg.pipeline.Pipeline` fed by :class:`BenchSource` (N single-channel
  8 kHz streams, 10 ms chunks on absolute deadlines), for the scaling curve and a search for the largest number
  of streams that keeps up (no backlog, p99 decision latency below 50 ms);
* **transports**: the LSL and MQTT ingest figures of :mod:`streamemg.lsl.source` / :mod:`streamemg.mqtt.source`
  where they are available, and the dashboard's render cost at the largest stream count run.

Latency in the real-time runs is measured from the moment a window's last sample is *due* (its 10 ms chunk's
deadline on the source's clock) to the moment its Estimate is published (the pipeline's ``on_estimate``). That
includes any lateness of the event loop in picking the chunk up, so it is stricter than the pipeline's own
``latency_ms`` (from the chunk's arrival in the pipeline), which is reported alongside.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import io
import json
import logging
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .clock import Clock, monotonic
from .dsp import Resampler
from .engine import (
    OPTIMIZE_MODES,
    EngineSettings,
    InferenceEngine,
    default_threads,
    optimize_model,
    select_device,
)
from .errors import ConfigError
from .model import ModelBundle, count_flops
from .pipeline import Pipeline, PipelineSettings, StreamState
from .sources.base import GeneratorSource
from .types import Chunk, Estimate, SourceItem, StreamInfo, Window

__all__ = [
    "BenchSettings",
    "BenchSource",
    "RealtimeResult",
    "measure_batching",
    "measure_ingest",
    "measure_matmul",
    "measure_model",
    "measure_rss_per_stream",
    "read_rss_mb",
    "run_bench",
    "run_realtime",
    "search_capacity",
]

log = logging.getLogger(__name__)

#: Targets of the performance work (checked in the report's ``targets``).
TARGET_CAPACITY = 256
TARGET_P99_MS = 50.0
TARGET_RSS_MB = 2.0


@dataclass(frozen=True)
class BenchSettings:
    """What :func:`run_bench` runs.

    Attributes:
        quick: the reduced suite (under a minute): shorter real-time runs, no capacity bisection and no wait sweep.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        stream_counts: the scaling curve's stream counts (None: 1, 16, 64, 256 and, in the full run, 512; counts
            above 256 run only if 256 keeps up).
        duration_s: length of each real-time run (s of stream time; None: 10, quick 4); ``warmup_s`` of it
            (None: 2, quick 1.5) is not measured.
        fs: the streams' rate (Hz); ``chunk_ms``: chunk length (ms).
        capacity_limit: the capacity search stops here.
        capacity_step: the search's resolution (streams).
        max_batch, max_wait_ms, threads: engine settings for the real-time runs; None = chosen by the sweeps
            (max_batch, max_wait_ms) or the engine's default (threads).
        waits_ms: the max-wait values swept at ``sweep_streams`` streams (full run only).
        batch_sizes: batch sizes of the model sweep.
        spread: stagger the streams' start over one hop (as independent devices are); False = every stream's
            windows fall due in the same 10 ms (the worst burst).
        lsl, mqtt, dashboard: run those parts.
        model_path: the bundle's file (None = the shipped model), for the memory measurement's fresh process.
    """

    quick: bool = False
    device: str = "cpu"
    stream_counts: tuple[int, ...] | None = None
    duration_s: float | None = None
    warmup_s: float | None = None
    fs: float = 8000.0
    chunk_ms: float = 10.0
    capacity_limit: int = 2048
    capacity_step: int = 32
    max_batch: int | None = None
    max_wait_ms: float | None = None
    threads: int | None = None
    waits_ms: tuple[float, ...] = (1.0, 5.0, 10.0, 20.0)
    sweep_streams: int = 256
    batch_sizes: tuple[int, ...] = (1, 4, 16, 32, 64, 128, 256)
    spread: bool = True
    lsl: bool = True
    mqtt: bool = True
    dashboard: bool = True
    model_path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.quick, bool):
            raise ConfigError(f"BenchSettings.quick={self.quick!r}: must be true or false")
        if self.stream_counts is not None and not (
            self.stream_counts and all(isinstance(n, int) and n >= 1 for n in self.stream_counts)
        ):
            raise ConfigError(f"BenchSettings.stream_counts={self.stream_counts!r}: give stream counts >= 1")
        if self.warmup_s is not None and not (math.isfinite(self.warmup_s) and self.warmup_s >= 1.0):
            raise ConfigError(f"BenchSettings.warmup_s={self.warmup_s!r}: give at least 1 s (the first window)")
        if self.duration_s is not None and not (math.isfinite(self.duration_s) and self.duration_s > self.warm_s):
            raise ConfigError(
                f"BenchSettings.duration_s={self.duration_s!r}: give seconds above the warm-up ({self.warm_s} s)"
            )
        if not (math.isfinite(self.fs) and self.fs > 0) or not (math.isfinite(self.chunk_ms) and self.chunk_ms > 0):
            raise ConfigError(f"BenchSettings fs={self.fs!r}, chunk_ms={self.chunk_ms!r}: give positive numbers")
        if self.capacity_limit < 1 or self.capacity_step < 1:
            raise ConfigError("BenchSettings.capacity_limit and capacity_step must be at least 1")
        if not (self.batch_sizes and all(isinstance(b, int) and b >= 1 for b in self.batch_sizes)):
            raise ConfigError(f"BenchSettings.batch_sizes={self.batch_sizes!r}: give batch sizes >= 1")
        if not all(math.isfinite(w) and w >= 0 for w in self.waits_ms):
            raise ConfigError(f"BenchSettings.waits_ms={self.waits_ms!r}: give waits in ms >= 0")

    @property
    def run_s(self) -> float:
        """Length of one real-time run (s): 10 (quick: 4) unless ``duration_s`` is given."""
        if self.duration_s is not None:
            return self.duration_s
        return 4.0 if self.quick else 10.0

    @property
    def warm_s(self) -> float:
        """The unmeasured start of each real-time run (s): 2 (quick: 1.5) unless ``warmup_s`` is given."""
        if self.warmup_s is not None:
            return self.warmup_s
        return 1.5 if self.quick else 2.0

    @property
    def counts(self) -> tuple[int, ...]:
        """The scaling curve's stream counts: 1, 16, 64, 256 and (full run) 512, unless given."""
        if self.stream_counts is not None:
            return tuple(sorted(set(self.stream_counts)))
        return (1, 16, 64, 256) if self.quick else (1, 16, 64, 256, 512)


# ---------------------------------------------------------------------------------------------- utilities


def read_rss_mb() -> float:
    """Resident set size of this process (VmRSS in ``/proc/self/status``), MiB; NaN where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


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


# ---------------------------------------------------------------------------------------------- compute


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


# ---------------------------------------------------------------------------------------------- batching


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


# ---------------------------------------------------------------------------------------------- ingest, memory


def measure_ingest(
    bundle: ModelBundle, templates: np.ndarray, fs: float = 8000.0, chunk_ms: float = 10.0, seconds: float = 20.0
) -> dict[str, Any]:
    """CPU µs per chunk of :meth:`StreamState.ingest` (ring buffers, filters, resampling, window cuts + quality).

    One single-channel stream at ``fs`` fed ``seconds`` of ``chunk_ms`` chunks (thread CPU time, best of 3).
    Windows are cut (and their quality assessed) as in the pipeline; inference is not included.
    """
    chunk = max(1, round(chunk_ms * fs / 1000.0))
    data = templates[0]
    if fs != 8000.0:
        data = make_templates(1, fs, 4.0, chunk)[0]
    per = data.shape[0] // chunk
    n = max(1, round(seconds * fs / chunk))
    ts = np.arange(n * chunk, dtype=np.float64) / fs
    chunks = [Chunk("s", data[(k % per) * chunk : (k % per + 1) * chunk], ts[k * chunk : (k + 1) * chunk], k)
              for k in range(n)]
    info = StreamInfo("s", "s", fs, ("ch1",))
    best = math.inf
    windows = 0
    for _ in range(3):
        state = StreamState(info, None, bundle, PipelineSettings(), monotonic)
        t0 = time.thread_time()
        windows = 0
        for c in chunks:
            windows += len(state.ingest(c, 0.0))
        best = min(best, time.thread_time() - t0)
    return {"us_per_chunk": best / n * 1e6, "chunk_samples": chunk, "fs": fs, "chunks": n, "windows": windows}


def _feed_states(bundle: ModelBundle, templates: np.ndarray, first: int, count: int, fs: float,
                 seconds: float) -> list[StreamState]:
    """``count`` StreamStates fed ``seconds`` of 10 ms chunks each, with results for their windows."""
    chunk = round(0.01 * fs)
    per = templates.shape[1] // chunk
    k_chunks = round(seconds * fs / chunk)
    ts = np.arange(k_chunks * chunk, dtype=np.float64) / fs
    probs = np.full((1, bundle.config.n_classes), 1.0 / bundle.config.n_classes, dtype=np.float32)
    states = []
    for i in range(first, first + count):
        info = StreamInfo(f"m{i}", f"m{i}", fs, ("ch1",))
        st = StreamState(info, None, bundle, PipelineSettings(), monotonic)
        tpl = templates[i % templates.shape[0]]
        for k in range(k_chunks):
            j = (k % per) * chunk
            for w in st.ingest(Chunk(info.stream_id, tpl[j : j + chunk], ts[k * chunk : (k + 1) * chunk], k), 0.0):
                st.on_result(w, probs, 1.0 + k * 1e-3)
        for q in range(st.latencies.maxlen or 0):  # a full latency history (distinct float objects)
            st.latencies.append(10.0 + q * 1e-3)
        states.append(st)
    return states


def measure_rss_per_stream(bundle: ModelBundle, templates: np.ndarray, n_streams: int = 512,
                           fs: float = 8000.0, seconds: float = 2.5) -> dict[str, Any]:
    """Resident memory added per stream, in this process: the slope of VmRSS from ``n_streams // 8`` to
    ``n_streams`` StreamStates, each fed ``seconds`` of 10 ms chunks (every buffer page touched, windows cut) and
    given results for its windows (latency history, rolling estimate), as in a running pipeline.

    Run it in a fresh process (:func:`measure_rss_subprocess`): in a process that has freed memory before, new
    streams reuse already-resident pages and the slope reads too low.
    """
    gc.collect()
    before = read_rss_mb()
    first = max(1, n_streams // 8)
    keep = _feed_states(bundle, templates, 0, first, fs, seconds)
    gc.collect()
    mid = read_rss_mb()
    keep += _feed_states(bundle, templates, first, n_streams - first, fs, seconds)
    gc.collect()
    after = read_rss_mb()
    del keep
    return {"streams": n_streams, "rss_mb_before": before, "rss_mb_after": after,
            "mb_per_stream": (after - mid) / max(1, n_streams - first)}


def _rss_child(model: str | None, n_streams: int, fs: float) -> dict[str, Any]:
    """Entry point of the fresh process of :func:`measure_rss_subprocess`."""
    from .model import load_bundle

    logging.disable(logging.WARNING)
    bundle = load_bundle(model)
    templates = make_templates(8, fs, 4.0, round(0.01 * fs))
    return measure_rss_per_stream(bundle, templates, n_streams, fs)


async def measure_rss_subprocess(model: str | None, n_streams: int = 512, fs: float = 8000.0,
                                 timeout_s: float = 180.0) -> dict[str, Any]:
    """:func:`measure_rss_per_stream` in a fresh Python process (so freed memory cannot hide the growth)."""
    code = (
        "import json, sys\n"
        "from streamemg.bench import _rss_child\n"
        f"print(json.dumps(_rss_child({model!r}, {int(n_streams)}, {float(fs)!r})))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {err.decode(errors='replace')[-500:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------------------- real time


@dataclass
class SourceStats:
    """What :class:`BenchSource` observed: ticks emitted, each tick's lateness (s) and CPU/wall marks."""

    ticks: int = 0
    lateness: list[float] = field(default_factory=list)
    marks: dict[str, tuple[float, float, float]] = field(default_factory=dict)


class BenchSource(GeneratorSource):
    """``n_streams`` real-time single-channel streams produced by one task from pre-generated chunks.

    Every ``chunk`` samples (10 ms at 8 kHz) the task wakes at an absolute deadline ``t0 + (k + 1) * period`` and
    yields one Chunk per stream: a view into a pre-generated template (no copy, no synthesis on the hot path), the
    shared absolute timestamps of tick ``k`` on the pipeline clock, and sequence number ``k``. A late wake-up
    emits the tick at once and records the lateness (a device's transport buffers would deliver the same way), so
    a loop that cannot keep up shows as growing lateness and latency, never as lost data.

    With ``spread``, stream ``i`` starts ``i / n_streams`` of a hop later than stream 0, as independently started
    devices do, so the streams' windows fall due evenly over each hop; without it every window of a hop falls
    due in the same tick (the worst burst).

    Args:
        n_streams: streams to produce; templates: ``(n_tpl, L, 1)`` float32 µV (L a multiple of ``chunk``).
        fs: rate (Hz); chunk: samples per chunk; duration_s: seconds to run; warmup_s: when ``marks["start"]``
            is taken (CPU and wall time) for the measured segment.
        hop_samples: the hop at the stream's rate (for ``spread``); clock: the pipeline's clock.
    """

    def __init__(
        self,
        n_streams: int,
        templates: np.ndarray,
        fs: float,
        chunk: int,
        duration_s: float,
        warmup_s: float,
        hop_samples: int,
        spread: bool = True,
        clock: Clock = monotonic,
        prefix: str = "bench",
    ) -> None:
        super().__init__(f"bench:{n_streams}?fs={fs:g}", realtime=True)
        if templates.ndim != 3 or templates.shape[1] % chunk or templates.shape[2] != 1:
            raise ConfigError("BenchSource templates must be (n, L, 1) with L a whole number of chunks")
        self.n_streams = int(n_streams)
        self.templates = templates
        self.fs = float(fs)
        self.chunk = int(chunk)
        self.n_ticks = max(1, round(duration_s * fs / chunk))
        self.warm_tick = min(self.n_ticks - 1, round(warmup_s * fs / chunk))
        hop_ticks = max(1, round(hop_samples / chunk))
        self.starts = [(i * hop_ticks) // self.n_streams if spread else 0 for i in range(self.n_streams)]
        self.clock = clock
        self.prefix = prefix
        self.stats = SourceStats()
        self.t0 = 0.0

    def __aiter__(self) -> Any:
        # Iterate the generator itself (its C-level __anext__), not GeneratorSource's Python wrapper: the bench
        # source should cost as little as possible, so the figures are the pipeline's, not the harness's.
        if self._gen is None:
            self._gen = self._items()
        return self._gen

    def chunks_of(self, i: int) -> int:
        """Chunks stream ``i`` emits in a full run."""
        return self.n_ticks - self.starts[i]

    def _mark(self, name: str) -> None:
        self.stats.marks[name] = (self.clock(), time.process_time(), time.thread_time())

    async def _items(self) -> AsyncIterator[SourceItem]:
        n, c, fs = self.n_streams, self.chunk, self.fs
        ids = [f"{self.prefix}{i:04d}" for i in range(n)]
        for sid in ids:
            yield StreamInfo(sid, sid, fs, ("ch1",), source=self.uri)
        tpl = self.templates
        n_tpl = tpl.shape[0]
        per_tpl = tpl.shape[1] // c
        offsets = [(i * 7919) % per_tpl for i in range(n)]
        sources = [tpl[i % n_tpl] for i in range(n)]
        starts = self.starts
        by_start: dict[int, list[int]] = {}
        for i, s in enumerate(starts):
            by_start.setdefault(s, []).append(i)
        active: list[int] = []
        self.t0 = t0 = self.clock() + 0.05
        ts = t0 + np.arange((self.n_ticks + 1) * c, dtype=np.float64) / fs
        period = c / fs
        stats = self.stats
        for k in range(self.n_ticks):
            deadline = t0 + (k + 1) * period  # the tick's last sample is due now
            now = self.clock()
            if now < deadline:
                await asyncio.sleep(deadline - now)
                now = self.clock()
            else:
                await asyncio.sleep(0)  # late: still give the loop a turn each tick, as a device source would
            stats.lateness.append(now - deadline)
            if k == self.warm_tick:
                self._mark("start")
            if k in by_start:
                active.extend(by_start[k])
            tsk = ts[k * c : (k + 1) * c]
            for i in active:
                seq = k - starts[i]
                j = ((seq + offsets[i]) % per_tpl) * c
                yield Chunk(ids[i], sources[i][j : j + c], tsk, seq)
            stats.ticks = k + 1
        self._mark("end")


@dataclass
class RealtimeResult:
    """One real-time run of the whole pipeline (see :func:`run_realtime`); ``as_dict`` for the report."""

    streams: int
    keeps_up: bool
    windows: int
    windows_expected: int
    latency_ms_p50: float
    latency_ms_p99: float
    latency_ms_max: float
    pipeline_latency_ms_p99: float
    lateness_ms_max: float
    lateness_ms_end: float
    cpu: float
    loop_cpu: float
    batch_mean: float
    batch_max: int
    engine_busy: float
    engine_cpu_us_per_window: float
    dropped_windows: int
    max_batch: int
    max_wait_ms: float
    threads: int
    rss_mb: float
    load: float
    reason: str = ""
    dashboard: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = round(v, 3) if isinstance(v, float) and math.isfinite(v) else v
        return out


async def run_realtime(
    bundle: ModelBundle,
    n_streams: int,
    engine_settings: EngineSettings,
    templates: np.ndarray,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    fs: float = 8000.0,
    chunk_ms: float = 10.0,
    spread: bool = True,
    p99_limit_ms: float = TARGET_P99_MS,
    measure_dashboard: bool = False,
) -> RealtimeResult:
    """Run the whole pipeline on ``n_streams`` real-time streams for ``duration_s``; measure latency and CPU.

    The run keeps up when no window was dropped, every window got its estimate, the source was less than
    ``p99_limit_ms`` late over its last second (no backlog) and the p99 latency (due time of a window's last
    sample -> estimate published) is below ``p99_limit_ms``. CPU use is process CPU time / wall time over the
    measured segment (after ``warmup_s``), in cores; ``loop_cpu`` the event-loop thread's share.
    """
    chunk = max(1, round(chunk_ms * fs / 1000.0))
    clock = monotonic
    hop_native = round(bundle.config.hop_samples * fs / bundle.config.fs)
    src = BenchSource(n_streams, templates, fs, chunk, duration_s, warmup_s, hop_native, spread, clock)
    inv_fs = 1.0 / fs
    lat_due: list[float] = []
    lat_pipe: list[float] = []
    published: list[float] = []

    delay_s = Resampler(fs, bundle.config.fs, 1).delay_s

    def on_estimate(est: Estimate) -> None:
        now = clock()
        # est.time = (timestamp of the window's last input sample) - resampler delay; that sample is due 1/fs later
        lat_due.append(now - (est.time + delay_s + inv_fs))
        lat_pipe.append(est.latency_ms)
        published.append(now)

    pipe = Pipeline([src], [], bundle=bundle, settings=PipelineSettings(), engine_settings=engine_settings,
                    on_estimate=on_estimate)
    gc.collect()
    await pipe.run()
    start, end = src.stats.marks.get("start"), src.stats.marks.get("end")
    pub = np.asarray(published)
    due = np.asarray(lat_due) * 1000.0
    own = np.asarray(lat_pipe)
    sel = pub >= start[0] if start else np.ones(pub.shape, dtype=bool)
    late = np.asarray(src.stats.lateness) * 1000.0
    wall = (end[0] - start[0]) if start and end else math.nan
    model_rate = Resampler(fs, bundle.config.fs, 1)  # fresh: output_length(n) = model samples from n inputs
    win, hop = bundle.config.window_samples, bundle.config.hop_samples
    per_stream = [max(0, (model_rate.output_length(src.chunks_of(i) * chunk) - win) // hop + 1)
                  for i in range(n_streams)]
    expected = int(sum(per_stream))
    stats = pipe.engine.stats if pipe.engine is not None else None
    tail = late[-max(1, round(1.0 * fs / chunk)) :]
    p50 = float(np.percentile(due[sel], 50)) if sel.any() else math.nan
    p99 = float(np.percentile(due[sel], 99)) if sel.any() else math.nan
    dropped = int(sum(s.dropped_windows for s in pipe.streams.values()))
    reasons = []
    if dropped:
        reasons.append(f"{dropped} windows dropped")
    if len(pub) < expected:
        reasons.append(f"{expected - len(pub)} windows without an estimate")
    if float(tail.max()) >= p99_limit_ms:
        reasons.append(f"source {float(tail.max()):.0f} ms late at the end (backlog)")
    if not p99 < p99_limit_ms:
        reasons.append(f"p99 latency {p99:.1f} ms >= {p99_limit_ms:g} ms")
    dash = None
    if measure_dashboard:
        dash = measure_dashboard_cost(pipe)
    threads = engine_settings.threads if engine_settings.threads is not None else torch.get_num_threads()
    return RealtimeResult(
        streams=n_streams,
        keeps_up=not reasons,
        windows=len(pub),
        windows_expected=expected,
        latency_ms_p50=p50,
        latency_ms_p99=p99,
        latency_ms_max=float(due[sel].max()) if sel.any() else math.nan,
        pipeline_latency_ms_p99=float(np.percentile(own[sel], 99)) if sel.any() else math.nan,
        lateness_ms_max=float(late.max()) if late.size else math.nan,
        lateness_ms_end=float(tail.max()) if tail.size else math.nan,
        cpu=(end[1] - start[1]) / wall if start and end else math.nan,
        loop_cpu=(end[2] - start[2]) / wall if start and end else math.nan,
        batch_mean=float(stats.batch_mean) if stats else 0.0,
        batch_max=int(stats.batch_max) if stats else 0,
        engine_busy=float(stats.busy_s) / duration_s if stats else 0.0,
        engine_cpu_us_per_window=float(stats.cpu_s) / stats.windows * 1e6 if stats and stats.windows else math.nan,
        dropped_windows=dropped,
        max_batch=engine_settings.max_batch,
        max_wait_ms=engine_settings.max_wait_ms,
        threads=int(threads),
        rss_mb=read_rss_mb(),
        load=_load(),
        reason="; ".join(reasons),
        dashboard=dash,
    )


def measure_dashboard_cost(pipe: Pipeline, frames: int = 20, width: int = 160, height: int = 50) -> dict[str, Any]:
    """CPU ms per dashboard frame (snapshot + render + terminal output into memory) for ``pipe``'s streams."""
    try:
        from rich.console import Console

        from .ui.dashboard import DashboardRenderer
    except Exception as exc:  # the dashboard is optional for the benchmark
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    console = Console(file=io.StringIO(), width=width, height=height, force_terminal=True, color_system="truecolor")
    renderer = DashboardRenderer()
    snap_s, total_s = math.inf, math.inf
    for page in range(frames):
        t0 = time.thread_time()
        snap = pipe.snapshot()
        t1 = time.thread_time()
        console.print(renderer.render(snap, width=width, height=height, page=page))
        t2 = time.thread_time()
        console.file = io.StringIO()
        snap_s, total_s = min(snap_s, t1 - t0), min(total_s, t2 - t0)
    return {
        "streams": len(pipe.streams),
        "snapshot_ms": round(snap_s * 1e3, 3),
        "frame_ms": round(total_s * 1e3, 3),
        "cpu_at_4hz": round(total_s * 4.0, 4),
        "terminal": f"{width}x{height}",
    }


async def search_capacity(
    run: Callable[[int], Any],
    known: dict[int, bool],
    limit: int,
    step: int,
) -> tuple[int, list[int]]:
    """Largest stream count that keeps up: doubles past the largest passing count, then bisects to ``step``.

    Args:
        run: ``async run(n) -> bool`` (keeps up at n streams).
        known: results already measured (stream count -> keeps up), e.g. from the scaling curve.
        limit: never try more streams than this.
        step: stop bisecting when the gap is at most this many streams.

    Returns:
        ``(capacity, tried)``: 0 when even the smallest count fails; ``tried`` the counts run here, in order.
    """
    results = dict(known)
    tried: list[int] = []

    async def check(n: int) -> bool:
        if n not in results:
            results[n] = bool(await run(n))
            tried.append(n)
        return results[n]

    passing = [n for n, ok in results.items() if ok]
    lo = max(passing) if passing else 0
    failing = [n for n, ok in results.items() if not ok and n > lo]
    hi = min(failing) if failing else None
    while hi is None:
        nxt = min(limit, max(1, lo * 2))
        if nxt <= lo:
            return lo, tried
        if await check(nxt):
            lo = nxt
        else:
            hi = nxt
    while hi - lo > step:
        mid = (lo + hi) // 2
        mid -= mid % step if mid - mid % step > lo else 0
        if await check(mid):
            lo = mid
        else:
            hi = mid
    return lo, tried


# ---------------------------------------------------------------------------------------------- transports


async def _lsl_figures(quick: bool) -> dict[str, Any] | str:
    try:
        from .lsl.source import measure_ingest_latency
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"
    try:
        return await measure_ingest_latency(n_chunks=150 if quick else 500)
    except Exception as exc:  # report, never fail the benchmark
        return f"unavailable: {type(exc).__name__}: {exc}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_mosquitto() -> str | None:
    """The mosquitto broker executable, if installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def _write_mosquitto_conf(folder: str, port: int) -> str:
    """A loopback-only, anonymous, non-persistent mosquitto config in ``folder``; returns its path."""
    conf = os.path.join(folder, "mosquitto.conf")
    with open(conf, "w", encoding="ascii") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    return conf


async def _mqtt_figures(quick: bool) -> dict[str, Any] | str:
    try:
        from .mqtt.source import measure_ingest_throughput
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"
    kw: dict[str, Any] = {"devices": 10, "messages_per_device": 300 if quick else 2000, "rounds": 1 if quick else 3}
    try:
        mosquitto = await asyncio.to_thread(_find_mosquitto)
        if mosquitto is None:
            result = await measure_ingest_throughput(None, **kw)  # an embedded broker
            result["broker_kind"] = "embedded (amqtt)"
            return result
        port = _free_port()
        with tempfile.TemporaryDirectory() as tmp:
            conf = await asyncio.to_thread(_write_mosquitto_conf, tmp, port)
            proc = await asyncio.create_subprocess_exec(
                mosquitto, "-c", conf, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            try:
                for _ in range(100):  # wait for the listener (finite)
                    try:
                        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
                        writer.close()
                        break
                    except (OSError, TimeoutError):
                        await asyncio.sleep(0.05)
                result = await measure_ingest_throughput(f"mqtt://127.0.0.1:{port}", **kw)
                result["broker_kind"] = "mosquitto"
                return result
            finally:
                if proc.returncode is None:
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    except Exception as exc:  # report, never fail the benchmark
        return f"unavailable: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------- the suite


async def run_bench(
    bundle: ModelBundle,
    settings: BenchSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the whole suite and return the report (a JSON-serialisable dict; keys in ``docs/performance.md``)."""
    s = settings or BenchSettings()
    t_start = time.perf_counter()

    def say(message: str) -> None:
        if progress is not None:
            progress(f"[{time.perf_counter() - t_start:5.1f} s] {message}")
    device = select_device(s.device)
    report: dict[str, Any] = {
        "quick": s.quick,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_start": _load(),
        "model": {"name": bundle.name, "trained": bundle.trained, "window_samples": bundle.config.window_samples,
                  "hop_samples": bundle.config.hop_samples, "fs": bundle.config.fs},
    }
    base = EngineSettings(device=str(device), threads=s.threads)
    engine_threads = s.threads or default_threads(device) or torch.get_num_threads()
    all_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    report["engine_threads"] = engine_threads

    say("matmul")
    size, trials = (1536, 3) if s.quick else (2048, 5)
    report["matmul_gflops"] = measure_matmul(device, size, all_threads, trials)
    report["matmul_gflops_engine_threads"] = measure_matmul(device, size, engine_threads, trials)
    report["matmul_threads"] = all_threads

    say("model sweep")
    quick_sizes = tuple(b for b in s.batch_sizes if b in (1, 16, 64, 128)) or s.batch_sizes
    sizes = quick_sizes if s.quick else s.batch_sizes
    modes = ("none", "trace") if s.quick else tuple(m for m in OPTIMIZE_MODES if m != "auto")
    model = measure_model(bundle, device, sizes, modes, threads=engine_threads, trials=3 if s.quick else 5)
    report["model_mflops_per_window"] = model["mflops_per_window"]
    report["model_sweep"] = model["sweep"]
    report["model_variants"] = model["variants"]
    report["model_best"] = model["best"]
    report["model_gflops"] = model["best"]["gflops"]
    report["model_best_batch"] = model["best"]["batch"]
    report["model_vs_matmul"] = model["best"]["gflops"] / report["matmul_gflops_engine_threads"]
    if not s.quick and all_threads != engine_threads:
        both = measure_model(bundle, device, (64, 128, 256), ("trace",), threads=all_threads, trials=3)
        report["model_gflops_all_threads"] = both["best"]["gflops"]
        report["model_sweep_all_threads"] = both["sweep"]
    chosen_variant = auto_variant(device)
    max_batch = s.max_batch or pick_max_batch(model["sweep"], chosen_variant)
    report["chosen_max_batch"] = max_batch

    say("templates")
    chunk = max(1, round(s.chunk_ms * s.fs / 1000.0))
    templates = make_templates(8, s.fs, 4.0, chunk)

    say("batched vs single")
    engine_settings = replace(base, max_batch=max_batch)
    if s.max_wait_ms is not None:
        engine_settings = replace(engine_settings, max_wait_ms=s.max_wait_ms)
    bursts = s.counts
    batching = await measure_batching(bundle, engine_settings, templates, bursts,
                                      backlog=512 if s.quick else 1024, single_windows=64 if s.quick else 128,
                                      trials=2 if s.quick else 3)
    report.update({k: batching[k] for k in ("windows_per_s_batched", "windows_per_s_single",
                                            "windows_per_s_single_optimized", "batched_vs_single", "batching_gain")})
    report["batched_vs_single_by_streams"] = batching["by_streams"]

    say("ingest")
    ingest = measure_ingest(bundle, templates, s.fs, s.chunk_ms, seconds=8.0 if s.quick else 20.0)
    report["ingest_us_per_chunk"] = ingest["us_per_chunk"]
    report["ingest"] = ingest
    if not s.quick:
        report["ingest_10khz"] = measure_ingest(bundle, templates, 10000.0, s.chunk_ms, seconds=10.0)

    say("memory")
    try:
        rss = await measure_rss_subprocess(s.model_path, 128 if s.quick else 512, s.fs)
    except Exception as exc:  # e.g. no /proc: measure here (reads low if memory was freed before)
        rss = measure_rss_per_stream(bundle, templates, 128 if s.quick else 512, s.fs)
        rss["note"] = f"in-process ({type(exc).__name__}: {exc})"
    report["rss_mb_per_stream"] = rss["mb_per_stream"]
    report["rss"] = rss

    runs: dict[str, dict[str, Any]] = {}

    async def realtime(n: int, es: EngineSettings, dashboard: bool = False, tag: str = "") -> RealtimeResult:
        say(f"real time: {n} streams (max_batch {es.max_batch}, max_wait {es.max_wait_ms:g} ms){tag}")
        r = await run_realtime(bundle, n, es, templates, s.run_s, s.warm_s, s.fs, s.chunk_ms, s.spread,
                               measure_dashboard=dashboard)
        runs[f"{n}{tag}"] = r.as_dict()
        say(f"  -> keeps up: {r.keeps_up}; p50 {r.latency_ms_p50:.1f} ms, p99 {r.latency_ms_p99:.1f} ms, "
            f"cpu {r.cpu:.2f} cores {r.reason}")
        return r

    if not s.quick and s.max_wait_ms is None and s.waits_ms:
        sweep = []
        for w in s.waits_ms:
            r = await realtime(s.sweep_streams, replace(engine_settings, max_wait_ms=w), tag=f" wait={w:g}")
            sweep.append({"max_wait_ms": w, "keeps_up": r.keeps_up, "latency_ms_p50": r.latency_ms_p50,
                          "latency_ms_p99": r.latency_ms_p99, "cpu": r.cpu, "batch_mean": r.batch_mean})
        report["wait_sweep"] = sweep
        ok = [row for row in sweep if row["keeps_up"]] or sweep
        # lowest CPU among the settings whose p99 is within 20 % of the best p99: latency first, then cost
        best_p99 = min(row["latency_ms_p99"] for row in ok)
        near = [row for row in ok if row["latency_ms_p99"] <= best_p99 * 1.2 + 1.0]
        engine_settings = replace(engine_settings, max_wait_ms=min(near, key=lambda row: row["cpu"])["max_wait_ms"])
    report["chosen_max_wait_ms"] = engine_settings.max_wait_ms

    say("scaling curve")
    scaling: list[dict[str, Any]] = []
    known: dict[int, bool] = {}
    largest_dash = max((n for n in s.counts if n <= 256), default=s.counts[0])
    # The peers' way under the same real-time traffic: one forward call of the model as built per window, as the
    # window falls due (the engine with max_batch=1, no wait, optimize="none"); a shorter run suffices for its cost.
    single_settings = replace(engine_settings, max_batch=1, max_wait_ms=0.0, optimize="none")
    single_s = min(s.run_s, s.warm_s + (1.5 if s.quick else 3.0))
    for n in s.counts:
        if n > 256 and not known.get(256, True):
            break  # 512 only "if reached"
        r = await realtime(n, engine_settings, dashboard=s.dashboard and n == largest_dash)
        known[n] = r.keeps_up
        row = {k: v for k, v in r.as_dict().items() if k != "dashboard"}
        if r.dashboard is not None:
            report["dashboard"] = r.dashboard
        say(f"real time: {n} streams, one call per window (model as built)")
        one = await run_realtime(bundle, n, single_settings, templates, single_s, s.warm_s, s.fs, s.chunk_ms,
                                 s.spread)
        single_cost = one.engine_cpu_us_per_window
        cost = r.engine_cpu_us_per_window
        row["single_cpu_us_per_window"] = round(single_cost, 1) if math.isfinite(single_cost) else None
        # CPU per window of one call per window / CPU per window of the engine's batches, same traffic
        ratio = single_cost / cost if cost and math.isfinite(cost) and math.isfinite(single_cost) else math.nan
        row["batched_vs_single"] = round(ratio, 2) if math.isfinite(ratio) else None
        scaling.append(row)
    report["scaling"] = scaling
    at64 = next((row for row in scaling if row["streams"] == 64), None)
    report["latency_ms_p50"] = at64["latency_ms_p50"] if at64 else math.nan
    report["latency_ms_p99"] = at64["latency_ms_p99"] if at64 else math.nan

    if not s.quick and all_threads != engine_threads and 64 in s.counts:
        # the thread setting, measured: the engine with every core against the default (a core left to the loop)
        r = await realtime(64, replace(engine_settings, threads=all_threads), tag=f" threads={all_threads}")
        report["threads_comparison"] = {
            "streams": 64,
            f"threads_{engine_threads}": {k: at64[k] for k in ("latency_ms_p50", "latency_ms_p99", "cpu")} if at64
            else None,
            f"threads_{all_threads}": {"latency_ms_p50": r.latency_ms_p50, "latency_ms_p99": r.latency_ms_p99,
                                       "cpu": r.cpu, "keeps_up": r.keeps_up},
        }
        torch.set_num_threads(engine_threads)

    say("capacity")
    if s.quick:
        passing = [n for n, ok in known.items() if ok]
        report["capacity_streams"] = max(passing) if passing else 0
        report["capacity_note"] = "quick: the largest scaling-curve count that kept up (no search)"
    else:
        async def keeps_up(n: int) -> bool:
            return (await realtime(n, engine_settings)).keeps_up

        cap, tried = await search_capacity(keeps_up, known, s.capacity_limit, s.capacity_step)
        report["capacity_streams"] = cap
        report["capacity_tried"] = tried
    report["realtime_runs"] = runs

    if s.lsl:
        say("LSL ingest")
        report["lsl"] = await _lsl_figures(s.quick)
    if s.mqtt:
        say("MQTT ingest")
        report["mqtt"] = await _mqtt_figures(s.quick)

    report["targets"] = {
        "capacity_streams>=256": report["capacity_streams"] >= TARGET_CAPACITY,
        "latency_ms_p99@64<=50": bool(report["latency_ms_p99"] <= TARGET_P99_MS),
        "rss_mb_per_stream<=2": bool(report["rss_mb_per_stream"] <= TARGET_RSS_MB),
        "batched_vs_single>1": bool(report["batched_vs_single"] > 1.0),
        "batched_vs_single>1_at_every_stream_count": all(
            (row["batched_vs_single"] or 0.0) > 1.0 for row in report["scaling"]
        ),
    }
    report["load_avg_end"] = _load()
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    return report


def auto_variant(device: torch.device) -> str:
    """The variant ``optimize="auto"`` picks on ``device`` (the sweep's column used to choose max_batch)."""
    return "fold" if device.type == "cuda" else "trace"
