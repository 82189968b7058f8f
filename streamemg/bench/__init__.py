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
* **transports**: the LSL and MQTT ingest figures of :mod:`streamemg.lsl.source` / :mod:`streamemg.mqtt.throughput`
  where they are available, and the dashboard's render cost at the largest stream count run.

Latency in the real-time runs is measured from the moment a window's last sample is *due* (its 10 ms chunk's
deadline on the source's clock) to the moment its Estimate is published (the pipeline's ``on_estimate``). That
includes any lateness of the event loop in picking the chunk up, so it is stricter than the pipeline's own
``latency_ms`` (from the chunk's arrival in the pipeline), which is reported alongside.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..engine import OPTIMIZE_MODES, EngineSettings, default_threads, select_device
from ..errors import ConfigError
from ..model import ModelBundle
from ..pipeline import PipelineSettings
from .batching import measure_batching
from .capacity import BenchSource, RealtimeResult, SourceStats, measure_dashboard_cost, run_realtime, search_capacity
from .common import TARGET_CAPACITY, TARGET_P99_MS, TARGET_RSS_MB, _load, make_templates, read_rss_mb
from .compute import auto_variant, measure_matmul, measure_model, pick_max_batch
from .ingest import measure_ingest
from .memory import measure_rss_per_stream, measure_rss_subprocess
from .transports import _lsl_capacity_figures, _lsl_figures, _mqtt_figures

__all__ = [
    "TARGET_CAPACITY",
    "TARGET_P99_MS",
    "TARGET_RSS_MB",
    "BenchSettings",
    "BenchSource",
    "RealtimeResult",
    "SourceStats",
    "auto_variant",
    "make_templates",
    "measure_batching",
    "measure_dashboard_cost",
    "measure_ingest",
    "measure_matmul",
    "measure_model",
    "measure_rss_per_stream",
    "measure_rss_subprocess",
    "pick_max_batch",
    "read_rss_mb",
    "run_bench",
    "run_realtime",
    "search_capacity",
]

log = logging.getLogger(__name__)


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
        lsl, mqtt, dashboard: run those parts (``lsl``: the LSL ingest latency and the LSL capacity runs).
        latency_counts: stream counts of the latency-by-load runs (in-process sources, the chosen engine settings).
        lsl_counts: outlet counts of the LSL capacity runs (None: 32, 128 quick; 64, 128, 256, 512 full), run in
            ascending order until one does not keep up. The outlets push 10 ms chunks (``chunk_ms``).
        lsl_chunk_ms: further chunk lengths (ms) for the LSL outlets: each adds a capacity series at the same
            counts, reported beside the 10 ms one (``lsl_capacity_by_chunk_ms``). Larger chunks cost the outlets
            (and liblsl on both sides) less per sample; the 10 ms figure stays the headline.
        qemg: run the pipeline's per-stream QEMG analysis in the real-time runs (as shipped); False measures the
            classification path alone.
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
    waits_ms: tuple[float, ...] = (0.0, 1.0, 5.0, 20.0)
    sweep_streams: int = 256
    batch_sizes: tuple[int, ...] = (1, 4, 16, 32, 64, 128, 256)
    spread: bool = True
    lsl: bool = True
    mqtt: bool = True
    dashboard: bool = True
    model_path: str | None = None
    latency_counts: tuple[int, ...] = (1, 8, 32, 128)
    lsl_counts: tuple[int, ...] | None = None
    lsl_chunk_ms: tuple[float, ...] = ()
    qemg: bool = True

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
        for name in ("latency_counts", "lsl_counts"):
            counts = getattr(self, name)
            if counts is not None and not (counts and all(isinstance(n, int) and n >= 1 for n in counts)):
                raise ConfigError(f"BenchSettings.{name}={counts!r}: give stream counts >= 1, e.g. (1, 8, 32, 128)")
        if not all(isinstance(c, (int, float)) and math.isfinite(c) and 1.0 <= c <= 1000.0 for c in self.lsl_chunk_ms):
            raise ConfigError(f"BenchSettings.lsl_chunk_ms={self.lsl_chunk_ms!r}: give chunk lengths of 1-1000 ms")

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
    pipe_settings = PipelineSettings()
    if not s.qemg:
        pipe_settings = replace(pipe_settings, qemg=replace(pipe_settings.qemg, enabled=False))
    report["qemg"] = bool(pipe_settings.qemg.enabled)

    async def realtime(n: int, es: EngineSettings, dashboard: bool = False, tag: str = "",
                       settings: PipelineSettings | None = None) -> RealtimeResult:
        say(f"real time: {n} streams (max_batch {es.max_batch}, max_wait {es.max_wait_ms:g} ms){tag}")
        r = await run_realtime(bundle, n, es, templates, s.run_s, s.warm_s, s.fs, s.chunk_ms, s.spread,
                               measure_dashboard=dashboard, settings=settings or pipe_settings)
        runs[f"{n}{tag}"] = r.as_dict()
        qemg = f", QEMG process {r.qemg_cpu:.2f} cores, {100 * r.qemg_analysed:.0f}% analysed" if math.isfinite(
            r.qemg_analysed) else ""
        say(f"  -> keeps up: {r.keeps_up}; p50 {r.latency_ms_p50:.1f} ms, p99 {r.latency_ms_p99:.1f} ms, "
            f"cpu {r.cpu:.2f} cores{qemg} {r.reason}")
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
                                 s.spread, settings=pipe_settings)
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

    say("latency by load")
    # decision latency (due -> published) at 1 ... 128 streams with the engine's shipped wait (event-driven), not
    # the capacity sweep's choice above (which favours throughput at 256 streams), unless --max-wait-ms pinned one;
    # in the full run also with the fixed 5 ms wait for company the engine used before, for comparison
    by_load: list[dict[str, Any]] = []
    lat_wait = s.max_wait_ms if s.max_wait_ms is not None else EngineSettings().max_wait_ms
    compare = () if s.quick or lat_wait == 5.0 else (5.0,)
    for n in s.latency_counts:
        row = {"streams": n}
        for wait in (lat_wait, *compare):
            r = await realtime(n, replace(engine_settings, max_wait_ms=wait), tag=f" latency wait={wait:g}")
            key = "" if wait == lat_wait else f"_wait{wait:g}ms"
            row.update({f"latency_ms_p50{key}": round(r.latency_ms_p50, 2),
                        f"latency_ms_p99{key}": round(r.latency_ms_p99, 2),
                        f"keeps_up{key}": r.keeps_up, f"cpu{key}": round(r.cpu, 3),
                        f"batch_mean{key}": round(r.batch_mean, 2)})
        by_load.append(row)
    report["latency_by_load"] = by_load
    report["latency_by_load_max_wait_ms"] = lat_wait

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
        if pipe_settings.qemg.enabled:
            # what QEMG costs the classification: the same search with it off, starting from the runs above
            off = replace(pipe_settings, qemg=replace(pipe_settings.qemg, enabled=False))

            async def keeps_up_off(n: int) -> bool:
                return (await realtime(n, engine_settings, tag=" no QEMG", settings=off)).keeps_up

            # start where the search with QEMG on ended (a first run there), not from one stream: doubling up from 1
            # spends minutes below any plausible capacity, and one noisy miss on the way ended a search at 8 streams
            start = {cap: await keeps_up_off(cap)} if cap else {}
            cap_off, tried_off = await search_capacity(keeps_up_off, start, s.capacity_limit, s.capacity_step)
            tried_off = [*start, *tried_off]
            at_cap = runs.get(str(cap), {})
            report["qemg_cost"] = {
                "capacity_streams_qemg_off": cap_off,
                "capacity_tried_qemg_off": tried_off,
                "capacity_fall": round(1.0 - cap / cap_off, 3) if cap_off else None,
                "qemg_process_cpu_at_capacity": at_cap.get("qemg_cpu"),
                "qemg_analysed_at_capacity": at_cap.get("qemg_analysed"),
            }
    report["realtime_runs"] = runs

    if s.lsl:
        say("LSL ingest")
        report["lsl"] = await _lsl_figures(s.quick)
        say("LSL capacity (outlets in a separate process)")
        counts = s.lsl_counts or ((32, 128) if s.quick else (64, 128, 256, 512))
        # as a lab runs it: the engine's shipped wait (or the pinned one), like the latency-by-load runs
        lsl_settings = replace(engine_settings, max_wait_ms=lat_wait)
        report["lsl_capacity"] = await _lsl_capacity_figures(bundle, lsl_settings, counts, s, pipe_settings, say)
        report["lsl_capacity_max_wait_ms"] = lat_wait
        if s.lsl_chunk_ms:
            by_chunk: dict[str, Any] = {}
            for chunk_ms in s.lsl_chunk_ms:
                say(f"LSL capacity with {chunk_ms:g} ms chunks (an additional figure)")
                by_chunk[f"{chunk_ms:g}"] = await _lsl_capacity_figures(bundle, lsl_settings, counts, s,
                                                                        pipe_settings, say, chunk_ms=chunk_ms)
            report["lsl_capacity_by_chunk_ms"] = by_chunk
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
    fall = (report.get("qemg_cost") or {}).get("capacity_fall")
    if fall is not None:
        report["targets"]["qemg_capacity_fall<=0.25"] = bool(fall <= 0.25)
    report["load_avg_end"] = _load()
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    return report
