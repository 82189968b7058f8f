"""draft"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .clock import Clock, monotonic
from .engine import EngineSettings
from .model import ModelBundle
from .pipeline import Pipeline, PipelineSettings
from .sources.memory import GeneratorSource
from .types import Chunk, Estimate, SourceItem, StreamInfo


def read_rss_mb() -> float:
    """Resident set size of this process (VmRSS from /proc/self/status), MiB; NaN where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.nan


def make_templates(n: int, fs: float, seconds: float, chunk_samples: int, seed: int = 0) -> np.ndarray:
    """``(n, L, 1)`` float32 µV synthetic EMG (classes cycled), ``L`` a whole number of chunks."""
    from simulators.synth import SIM_CLASSES, EMGSimulator

    length = max(1, round(seconds * fs / chunk_samples)) * chunk_samples
    out = np.empty((n, length, 1), dtype=np.float32)
    for i in range(n):
        out[i] = EMGSimulator(SIM_CLASSES[i % len(SIM_CLASSES)], fs, 1, seed=seed + i).generate(length)
    return out


@dataclass
class SourceStats:
    ticks: int = 0
    lateness: list[float] = field(default_factory=list)
    marks: dict[str, tuple[float, float, float]] = field(default_factory=dict)


class BenchSource(GeneratorSource):
    """``n_streams`` real-time single-channel streams produced by one task from pre-generated chunks."""

    def __init__(
        self,
        n_streams: int,
        templates: np.ndarray,
        fs: float,
        chunk_samples: int,
        duration_s: float,
        warmup_s: float,
        clock: Clock = monotonic,
        prefix: str = "bench",
    ) -> None:
        super().__init__(f"bench:{n_streams}", realtime=True)
        self.n_streams = n_streams
        self.templates = templates
        self.fs = fs
        self.chunk = chunk_samples
        self.n_ticks = max(1, round(duration_s * fs / chunk_samples))
        self.warm_tick = min(self.n_ticks - 1, round(warmup_s * fs / chunk_samples))
        self.clock = clock
        self.prefix = prefix
        self.stats = SourceStats()
        self.t0 = 0.0

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
        self.t0 = t0 = self.clock() + 0.05
        ts = t0 + np.arange((self.n_ticks + 1) * c, dtype=np.float64) / fs
        period = c / fs
        stats = self.stats
        for k in range(self.n_ticks):
            deadline = t0 + (k + 1) * period
            now = self.clock()
            if now < deadline:
                await asyncio.sleep(deadline - now)
                now = self.clock()
            stats.lateness.append(now - deadline)
            if k == self.warm_tick:
                self._mark("start")
            tsk = ts[k * c : (k + 1) * c]
            for i in range(n):
                j = ((k + offsets[i]) % per_tpl) * c
                yield Chunk(ids[i], tpl[i % n_tpl, j : j + c], tsk, k)
            stats.ticks = k + 1
        self._mark("end")


async def run_realtime(
    bundle: ModelBundle,
    n_streams: int,
    duration_s: float = 8.0,
    warmup_s: float = 2.0,
    engine_settings: EngineSettings | None = None,
    fs: float = 8000.0,
    chunk_ms: float = 10.0,
    templates: np.ndarray | None = None,
) -> dict[str, Any]:
    chunk = round(chunk_ms * fs / 1000.0)
    if templates is None:
        templates = make_templates(8, fs, 4.0, chunk)
    clock = monotonic
    src = BenchSource(n_streams, templates, fs, chunk, duration_s, warmup_s, clock)
    lat_deadline: list[float] = []
    lat_pipe: list[float] = []
    pub_t: list[float] = []
    settings_e = engine_settings or EngineSettings(device="cpu", threads=int(os.environ.get("BT", "1")))

    def on_est(est: Estimate) -> None:
        now = clock()
        lat_deadline.append(now - (est.time + 1.0 / fs))
        lat_pipe.append(est.latency_ms / 1000.0)
        pub_t.append(now)

    pipe = Pipeline([src], [], bundle=bundle, settings=PipelineSettings(), engine_settings=settings_e, on_estimate=on_est)
    rss0 = read_rss_mb()
    await pipe.run()
    start = src.stats.marks.get("start")
    end = src.stats.marks.get("end")
    pub = np.array(pub_t)
    ld = np.array(lat_deadline) * 1000
    lp = np.array(lat_pipe) * 1000
    sel = pub >= (start[0] if start else 0)
    lateness = np.array(src.stats.lateness)
    w = end[0] - start[0] if start and end else math.nan
    ws = (src.n_ticks * chunk - bundle.config.window_samples) // bundle.config.hop_samples + 1
    st = pipe.engine.stats if pipe.engine else None
    return {
        "streams": n_streams,
        "windows": int(len(pub)),
        "windows_expected": int(n_streams * ws),
        "latency_ms_p50": float(np.percentile(ld[sel], 50)) if sel.any() else math.nan,
        "latency_ms_p99": float(np.percentile(ld[sel], 99)) if sel.any() else math.nan,
        "latency_ms_max": float(ld[sel].max()) if sel.any() else math.nan,
        "pipeline_latency_ms_p99": float(np.percentile(lp[sel], 99)) if sel.any() else math.nan,
        "lateness_ms_max": float(lateness.max() * 1000),
        "lateness_ms_end": float(lateness[-50:].mean() * 1000),
        "cpu": (end[1] - start[1]) / w if start and end else math.nan,
        "loop_cpu": (end[2] - start[2]) / w if start and end else math.nan,
        "batch_mean": st.batch_mean if st else 0,
        "busy": st.busy_s if st else 0,
        "dropped": st.dropped if st else 0,
        "rss_mb": read_rss_mb(),
        "rss0": rss0,
        "load": os.getloadavg()[0],
    }


def _main() -> None:
    import json
    import sys

    from .model import load_bundle

    b = load_bundle(None)
    for n in [int(a) for a in sys.argv[1:]]:
        r = asyncio.run(run_realtime(b, n))
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    _main()

_unused: Callable[..., Any] | None = None
