"""Soak: 64 streams pushed through the whole pipeline at full speed for minutes; nothing may grow.

What is pushed, and why (measured on the 2-core CI machine):

* One literal hour of 64 streams is 64 x 3600 s x 8 kHz = 1.8e9 samples and 921,600 windows. The shipped
  model classifies about 100-150 windows/s on 2 CPU cores, so that hour would take about two hours. The soak
  is about the pipeline's resources (ring buffers, filters, queues, tasks, files, the engine's batching and
  staging), not the network's arithmetic, so it runs the real pipeline end to end with a stand-in model: a
  tiny ``nn.Module`` with the classifier's interface ((B, T) µV -> (B, K) logits, a few tensor operations per
  batch). Everything else is the production code: sources with seq and timestamps, seq checks, the causal
  high-pass + notch filters, ring buffers, windowing, the quality gate, the dynamic batcher on its inference
  thread, channel fusion, rolling estimates, and two outputs (an in-memory counter and JSON lines to
  /dev/null, through their bounded queues).
* The test pushes for a fixed wall-clock budget (``STREAMEMG_SOAK_S``, default 150 s) or until every stream has
  delivered its hour, whichever comes first, then stops the pipeline as a signal would. With the stand-in
  model the pipeline sustains about 350-600 stream-seconds per second on 2 loaded cores, so the default
  budget pushes about 64 streams x 15-20 minutes (60,000-90,000 stream-seconds, 0.5-0.7e9 samples, 200,000+
  windows). The numbers of each run are printed (``pytest -s``) and asserted to be at least 64 x 2 minutes.
* After a warm-up (the first 20 % of the budget, at least 15 s), the resident set size must stay within 5 %
  of its value at the end of the warm-up, and neither the number of asyncio tasks nor the number of open file
  descriptors may exceed what the warm-up saw. After the run every descriptor opened by it is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from simulators.synth import EMGSimulator
from streamemg.engine import EngineSettings
from streamemg.model import ModelBundle, untrained_bundle
from streamemg.pipeline import Pipeline
from streamemg.sinks.jsonl import JsonlSink
from streamemg.sources.memory import MemorySource
from streamemg.types import Chunk, Estimate, StreamInfo

N_STREAMS = 64
FS = 8000.0
CHUNK = 2000  # 0.25 s per chunk
HOUR_S = 3600.0
MIN_STREAM_S = 120.0  # per stream: what the run must reach at least


def _budget_s() -> float:
    return float(os.environ.get("STREAMEMG_SOAK_S", "150"))


def rss_kb() -> int:
    """Resident set size of this process in kB (from /proc; psutil is not a dependency)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class _StandIn(nn.Module):
    """(B, T) -> (B, K) logits from the mean rectified amplitude: cheap, deterministic, allocates per batch."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1e-3, 1e-3, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x[:, ::32].abs().mean(dim=1, keepdim=True)
        return level * self.weight


def standin_bundle() -> ModelBundle:
    base = untrained_bundle(seed=0)

    class StandInBundle(ModelBundle):
        def build(self, device: str | torch.device = "cpu") -> Any:
            return _StandIn(self.config.n_classes).to(device).eval()

    return StandInBundle(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})


class CountingSink:
    """Counts estimates per stream and checks their order; keeps nothing else."""

    name = "counting"

    def __init__(self) -> None:
        self.count = 0
        self.next_index: dict[str, int] = {}
        self.out_of_order = 0

    async def __aenter__(self) -> CountingSink:
        return self

    async def __aexit__(self, a: type[BaseException] | None, b: BaseException | None, c: TracebackType | None) -> None:
        return None

    async def announce(self, info: StreamInfo) -> None:
        return None

    async def send(self, estimate: Estimate) -> None:
        self.count += 1
        expected = self.next_index.get(estimate.stream_id, 0)
        if estimate.index != expected:
            self.out_of_order += 1
        self.next_index[estimate.stream_id] = estimate.index + 1


async def endless(i: int, pools: list[np.ndarray], pushed: list[int]) -> AsyncIterator[Any]:
    """Stream ``i``: an hour of 8 kHz EMG in 0.25 s chunks with seq and timestamps, cut from a shared pool."""
    sid = f"soak{i:02d}"
    yield StreamInfo(sid, sid, FS, ("c1",))
    pool = pools[i % len(pools)]
    n_pool = pool.shape[0] - CHUNK
    total = int(HOUR_S * FS) // CHUNK
    offsets = np.arange(CHUNK, dtype=np.float64) / FS
    for k in range(total):
        start = (i * 7919 + k * CHUNK) % n_pool
        pushed[i] += CHUNK  # counted before the yield: the consumer may stop right after taking it
        yield Chunk(sid, pool[start : start + CHUNK], offsets + k * CHUNK / FS, k)
        await asyncio.sleep(0)


@pytest.mark.slow
@pytest.mark.timeout(330)
async def test_soak_64_streams_full_speed_no_growth_in_memory_tasks_or_files() -> None:
    budget = _budget_s()
    warmup = max(15.0, 0.2 * budget)
    pools = [EMGSimulator(cls, FS, seed=s).generate(int(FS * 10)) for s, cls in enumerate(("normal", "als",
                                                                                           "myopathy"))]
    pushed = [0] * N_STREAMS
    counting = CountingSink()
    sources = [MemorySource(endless(i, pools, pushed), uri=f"memory:soak{i:02d}") for i in range(N_STREAMS)]
    fds_before = open_fds()
    p = Pipeline(sources, [counting, JsonlSink(Path(os.devnull))], bundle=standin_bundle(),
                 engine_settings=EngineSettings(device="cpu", max_batch=256, warmup=False))
    samples: list[tuple[float, int, int, int]] = []  # (elapsed s, rss kB, tasks, fds)

    async def monitor() -> None:
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            elapsed = time.monotonic() - t0
            samples.append((elapsed, rss_kb(), len(asyncio.all_tasks()), open_fds()))
            if elapsed >= budget or min(pushed) >= HOUR_S * FS:
                p.stop()
                return

    t_start = time.monotonic()
    watcher = asyncio.create_task(monitor())
    await asyncio.wait_for(p.run(), budget + 120)
    wall = time.monotonic() - t_start
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)

    stream_s = sum(pushed) / FS
    warm = [s for s in samples if s[0] <= warmup]
    after = [s for s in samples if s[0] > warmup]
    assert warm and len(after) >= 10, (len(warm), len(after))
    base_rss = warm[-1][1]
    peak_rss = max(s[1] for s in after)
    assert p.engine is not None
    stats = p.engine.stats
    print(
        f"\nsoak: {N_STREAMS} streams, {wall:.0f} s wall, {stream_s:.0f} stream-seconds "
        f"({stream_s / N_STREAMS / 60:.1f} min per stream, {sum(pushed) / 1e9:.2f}e9 samples, "
        f"{stream_s / wall:.0f} stream-s/s), {stats.windows} windows in {stats.batches} batches "
        f"(mean {stats.batch_mean:.0f} rows); RSS {base_rss / 1024:.0f} MiB after warm-up, peak after "
        f"{peak_rss / 1024:.0f} MiB ({100 * (peak_rss / base_rss - 1):+.1f} %); tasks "
        f"{max(s[2] for s in warm)} -> {max(s[2] for s in after)}; fds {max(s[3] for s in warm)} -> "
        f"{max(s[3] for s in after)}"
    )
    # it really was a soak
    assert min(pushed) >= MIN_STREAM_S * FS, f"only {min(pushed) / FS:.0f} s per stream pushed in {wall:.0f} s"
    # nothing grew
    assert peak_rss < 1.05 * base_rss
    assert max(s[2] for s in after) <= max(s[2] for s in warm)
    assert max(s[3] for s in after) <= max(s[3] for s in warm)
    assert open_fds() <= fds_before
    # and nothing was lost on the way: every window of every stream was classified and delivered, in order
    windows_expected = sum((n - 8000) // 2000 + 1 for n in pushed)
    assert stats.windows == counting.count == windows_expected
    assert counting.out_of_order == 0 and stats.dropped == 0 and stats.failed == 0
    assert all(r.dropped == 0 and r.errors == 0 for r in p.runners)
    assert not p.errors
