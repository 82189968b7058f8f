"""Whole-pipeline real-time runs: a paced synthetic source, latency and CPU per run, and the capacity search."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..clock import Clock, monotonic
from ..dsp import Resampler
from ..engine import (
    EngineSettings,
)
from ..errors import ConfigError
from ..model import ModelBundle
from ..pipeline import Pipeline, PipelineSettings
from ..qemg.service import RemoteQemg
from ..sources.base import GeneratorSource
from ..types import Chunk, Estimate, SourceItem, StreamInfo
from .common import (
    TARGET_P99_MS,
    _load,
    qemg_processes_cpu_s,
    read_rss_mb,
)

log = logging.getLogger(__name__)


@dataclass
class SourceStats:
    """What :class:`BenchSource` observed: ticks emitted, each tick's lateness (s) and CPU/wall marks."""

    ticks: int = 0
    lateness: list[float] = field(default_factory=list)
    marks: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)


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
        self.stats.marks[name] = (self.clock(), time.process_time(), time.thread_time(), qemg_processes_cpu_s())

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
    qemg_cpu: float
    qemg_analysed: float
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
            if isinstance(v, float):
                v = round(v, 3) if math.isfinite(v) else None  # strict JSON: no NaN
            out[k] = v
        return out


def _qemg_share(pipe: Pipeline) -> float:
    """Share of the live streams' QEMG blocks the QEMG process analysed (NaN when none went there)."""
    remote = [st.qemg for st in pipe.streams.values() if isinstance(st.qemg, RemoteQemg)]
    total = sum(q.sent_blocks + q.dropped_blocks for q in remote)
    if not total:
        return math.nan
    return sum(q.analysed_blocks for q in remote) / total  # the pipeline let the QEMG process finish (or 1 s)


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
    settings: PipelineSettings | None = None,
) -> RealtimeResult:
    """Run the whole pipeline on ``n_streams`` real-time streams for ``duration_s``; measure latency and CPU.

    The run keeps up when no window was dropped, every window got its estimate, the source was less than
    ``p99_limit_ms`` late over its last second (no backlog) and the p99 latency (due time of a window's last
    sample -> estimate published) is below ``p99_limit_ms``. CPU use is process CPU time / wall time over the
    measured segment (after ``warmup_s``), in cores; ``loop_cpu`` the event-loop thread's share; ``qemg_cpu`` the
    QEMG process's (live streams' MUAP analysis, at lower priority) and ``qemg_analysed`` the share of the streams'
    QEMG blocks it analysed (the rest it was too far behind for, and dropped).
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

    pipe = Pipeline([src], [], bundle=bundle, settings=settings or PipelineSettings(), engine_settings=engine_settings,
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
        qemg_cpu=(end[3] - start[3]) / wall if start and end else math.nan,
        qemg_analysed=_qemg_share(pipe),
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

        from ..ui.dashboard import DashboardRenderer
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
