"""LSL capacity: how many real LSL outlets, in another process, the whole pipeline keeps up with.

A *fleet* process (``python -m streamemg.bench.lsl_capacity``, :func:`fleet_main`) creates ``N`` single-channel
float32 outlets of one stream type and pushes one ``chunk_ms`` chunk per outlet and period on absolute deadlines,
stamping each chunk's last sample with its deadline. Independent amplifiers are not phase-locked, so the outlets
are split into ``phases`` groups (by default one per outlet, at most 10) whose deadlines are spread evenly over the
period (``t0 + (k + 1) * period + g * period / phases``); ``phases=1`` pushes every outlet at the same deadline
(the worst burst, ``streamemg bench --aligned``). A late wake-up pushes at once and is counted: the fleet reports
its own lateness at each wake-up and when the group's last push returned, so a generator starved of CPU, or one
that needs most of a period to push all its outlets, is not read as streamemg's fault. streamemg reads the
outlets through an ``lsl:type=...`` source into a :class:`~streamemg.pipeline.Pipeline` in this process.

Decision latency is measured from the moment a window's last sample was *due* (its chunk's deadline, which is
the sample's LSL timestamp: liblsl's clock and :func:`time.monotonic` are the same clock on Linux) to the
moment its estimate is published. It includes the fleet's lateness, liblsl transport, the source's pulls, the
pipeline and the engine. A run keeps up when every outlet was opened and classified, at least 95 % of the
expected windows were classified in the measured segment, and the p99 latency is below the limit.

Everything stays on this machine (:func:`streamemg.lsl.config.configure_machine_scope`, inherited by the fleet
through ``LSLAPICFG``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dsp import Resampler
from ..engine import EngineSettings
from ..errors import ConfigError
from ..model import ModelBundle
from ..pipeline import Pipeline, PipelineSettings
from ..types import Estimate
from .common import TARGET_P99_MS, _load

log = logging.getLogger(__name__)

#: how long the outlets of one run may take to be found and opened (s)
OPEN_TIMEOUT_S = 90.0


# ---------------------------------------------------------------------------------------------- the fleet


def _fleet_stats(deadlines: np.ndarray, lateness: np.ndarray, t_from: float, t_to: float,
                 cpu: np.ndarray | None = None, pushed: np.ndarray | None = None) -> dict[str, Any]:
    """The fleet's own timing over the wake-ups due in ``[t_from, t_to]``: ``lateness`` (s) at each wake-up,
    ``pushed`` (s) when that wake-up's last push returned, ``cpu`` the process CPU time (s) at each wake-up."""
    sel = (deadlines >= t_from) & (deadlines <= t_to)
    late = lateness[sel] * 1000.0
    if late.size == 0:
        return {"ticks": 0}
    idx = np.flatnonzero(sel)
    span = float(deadlines[idx[-1]] - deadlines[idx[0]])
    cores = float(cpu[idx[-1]] - cpu[idx[0]]) / span if cpu is not None and span > 0 else math.nan
    out: dict[str, Any] = {
        "cpu_cores": round(cores, 3) if math.isfinite(cores) else None,
        "ticks": int(late.size),
        "lateness_ms_p50": round(float(np.percentile(late, 50)), 3),
        "lateness_ms_p99": round(float(np.percentile(late, 99)), 3),
        "lateness_ms_max": round(float(late.max()), 3),
        "ticks_late_over_10ms": int(np.count_nonzero(late > 10.0)),
    }
    if pushed is not None:
        done = pushed[sel] * 1000.0
        out["pushed_ms_p50"] = round(float(np.percentile(done, 50)), 3)
        out["pushed_ms_p99"] = round(float(np.percentile(done, 99)), 3)
    return out


def fleet_main(argv: Sequence[str] | None = None) -> int:
    """The fleet process: create the outlets, say ``ready``, push on deadlines until ``stop T0 T1`` on stdin,
    then print one JSON line with the lateness over the ticks due between T0 and T1 (monotonic s)."""
    ap = argparse.ArgumentParser(prog="python -m streamemg.bench.lsl_capacity")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--type", required=True, help="LSL stream type of every outlet")
    ap.add_argument("--fs", type=float, default=8000.0)
    ap.add_argument("--chunk-ms", type=float, default=10.0)
    ap.add_argument("--max-s", type=float, default=600.0, help="stop by itself after this long")
    ap.add_argument("--phases", type=int, default=0,
                    help="push groups spread over each period (0: one per outlet, at most 10; 1: all at once)")
    args = ap.parse_args(argv)
    from ..lsl.config import configure_machine_scope
    from ..lsl.executor import import_pylsl
    from .common import make_templates

    configure_machine_scope()
    pylsl = import_pylsl()
    chunk = max(1, round(args.chunk_ms * args.fs / 1000.0))
    templates = make_templates(8, args.fs, 2.0, chunk)
    per = templates.shape[1] // chunk
    outlets = []
    for i in range(args.count):
        info = pylsl.StreamInfo(f"{args.type}-{i:04d}", args.type, 1, args.fs, pylsl.cf_float32,
                                f"{args.type}-{i:04d}")
        ch = info.desc().append_child("channels").append_child("channel")
        ch.append_child_value("label", "ch1")
        ch.append_child_value("unit", "microvolts")
        ch.append_child_value("type", "EMG")
        outlets.append(pylsl.StreamOutlet(info, chunk_size=0, max_buffered=30))
    stop: list[tuple[float, float]] = []

    def read_stdin() -> None:
        for line in sys.stdin:
            parts = line.split()
            if parts and parts[0] == "stop":
                stop.append((float(parts[1]), float(parts[2])) if len(parts) == 3 else (0.0, math.inf))
                return
        stop.append((0.0, math.inf))  # parent gone

    threading.Thread(target=read_stdin, daemon=True).start()
    print("ready", flush=True)
    period = chunk / args.fs
    phases = max(1, min(args.phases or 10, args.count))
    groups = [list(range(g, args.count, phases)) for g in range(phases)]
    n_max = int(args.max_s / period) * phases  # wake-ups: one per group and period
    deadlines = np.zeros(n_max)
    lateness = np.zeros(n_max)
    pushed = np.zeros(n_max)  # when the wake-up's last push returned, after its deadline (s)
    cpu = np.zeros(n_max)  # the fleet's own process CPU time at each wake-up (liblsl's sender threads included)
    offsets = [(i * 7919) % per for i in range(args.count)]
    # pushes through liblsl's C call with the outlet handle built once (pylsl's push_chunk costs ~10 µs of
    # argument conversion per call, which at hundreds of outlets starves the fleet itself)
    tpl = np.ascontiguousarray(templates[:, :, 0], dtype=np.float32)  # (8, L) float32
    base = tpl.ctypes.data
    row_bytes = tpl.strides[0]
    fast = [(o.do_push_chunk, o.obj) if hasattr(o, "do_push_chunk") else (None, o) for o in outlets]
    n_values = ctypes.c_long(chunk)
    push_through = ctypes.c_int(1)
    t0 = time.monotonic() + 0.05
    w = 0
    while not stop and w < n_max:
        k, g = divmod(w, phases)  # period k, group g
        deadline = t0 + (k + 1) * period + g * period / phases
        now = time.monotonic()
        if now < deadline:
            time.sleep(deadline - now)
            now = time.monotonic()
        deadlines[w], lateness[w], cpu[w] = deadline, now - deadline, time.process_time()
        stamp = ctypes.c_double(deadline)
        for i in groups[g]:
            fn, obj = fast[i]
            j = ((k + offsets[i]) % per) * chunk
            if fn is None:
                obj.push_chunk(templates[i % 8, j : j + chunk], deadline)
            else:
                fn(obj, ctypes.c_void_p(base + (i % 8) * row_bytes + j * 4), n_values, stamp, push_through)
        pushed[w] = time.monotonic() - deadline
        w += 1
    t_from, t_to = stop[0] if stop else (0.0, math.inf)
    stats = _fleet_stats(deadlines[:w], lateness[:w], t_from, t_to, cpu[:w], pushed[:w])
    stats["outlets"] = args.count
    stats["phases"] = phases
    print(json.dumps(stats), flush=True)
    del outlets
    return 0


# ---------------------------------------------------------------------------------------------- one run


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values.size else None


async def _start_fleet(n: int, stream_type: str, fs: float, chunk_ms: float,
                       phases: int = 0) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamemg.bench.lsl_capacity", "--count", str(n), "--type", stream_type,
        "--fs", repr(fs), "--chunk-ms", repr(chunk_ms), "--phases", str(phases),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ),
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60.0 + n * 0.1)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ConfigError(f"the LSL outlet fleet ({n} outlets) did not start within {60 + n * 0.1:.0f} s") from None
    if line.strip() != b"ready":
        err = (await proc.stderr.read()).decode(errors="replace")[-800:] if proc.stderr else ""
        await proc.wait()
        raise ConfigError(f"the LSL outlet fleet failed to start: {err or line!r}")
    return proc


async def _stop_fleet(proc: asyncio.subprocess.Process, t_from: float, t_to: float) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(f"stop {t_from!r} {t_to!r}\n".encode())
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), 30.0)
        result: dict[str, Any] = json.loads(line)
    except (OSError, TimeoutError, ValueError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return result


async def run_lsl_realtime(
    bundle: ModelBundle,
    n_streams: int,
    engine_settings: EngineSettings,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    fs: float = 8000.0,
    chunk_ms: float = 10.0,
    p99_limit_ms: float = TARGET_P99_MS,
    source_params: str = "",
    settings: PipelineSettings | None = None,
    phases: int = 0,
) -> dict[str, Any]:
    """``n_streams`` LSL outlets in a fleet process -> ``lsl:type=...`` -> the whole pipeline; latency and CPU.

    ``phases``: the fleet's push groups over each period (module docstring; 0: its default, 1: all at once).

    Returns a dict with ``streams``, ``keeps_up`` (and ``reason`` when not), ``open_s`` (from the source's start
    until every outlet was announced), ``classified_streams``, ``windows`` / ``windows_expected`` in the measured
    segment, ``latency_ms_p50`` / ``p99`` / ``max`` (due -> published), ``cpu`` (this process, cores),
    ``fleet`` (the outlets' own lateness) and ``load``.
    """
    from ..lsl.config import configure_machine_scope
    from ..lsl.source import LSLSource, parse_uri

    if n_streams < 1 or not duration_s > 0:
        raise ConfigError("run_lsl_realtime: n_streams >= 1 and duration_s > 0 are needed")
    configure_machine_scope()
    stream_type = f"EMGcap{uuid.uuid4().hex[:8]}"
    uri = f"lsl:type={stream_type}" + (f"?{source_params}" if source_params else "")
    delay_s = Resampler(fs, bundle.config.fs, 1).delay_s + 1.0 / fs
    published: list[tuple[float, float, str, float]] = []

    def on_estimate(est: Estimate) -> None:
        now = time.monotonic()
        published.append((now, now - (est.time + delay_s), est.stream_id, est.latency_ms))

    proc = await _start_fleet(n_streams, stream_type, fs, chunk_ms, phases)
    source = LSLSource(uri, parse_uri(uri))
    pipe = Pipeline([source], [], bundle=bundle, settings=settings or PipelineSettings(),
                    engine_settings=engine_settings, on_estimate=on_estimate)
    task = asyncio.create_task(pipe.run(), name="lsl-capacity-pipeline")
    t_start = time.monotonic()
    open_s = math.nan
    fleet: dict[str, Any] = {}
    m0 = m1 = t_start
    c0 = c1 = 0.0
    try:
        while time.monotonic() - t_start < OPEN_TIMEOUT_S and not task.done():
            if len(pipe.streams) >= n_streams:
                open_s = time.monotonic() - t_start
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(warmup_s)
        m0, c0 = time.monotonic(), time.process_time()
        await asyncio.sleep(duration_s)
        m1, c1 = time.monotonic(), time.process_time()
    finally:
        t_to = time.monotonic()
        fleet = await _stop_fleet(proc, m0, t_to)
        pipe.stop()
        try:
            await asyncio.wait_for(task, 30.0)
        except TimeoutError:
            task.cancel()
    rows = [r for r in published if m0 <= r[0] <= m1]
    lat = np.asarray([r[1] for r in rows]) * 1000.0
    # the two halves of the latency: due -> arrival in the pipeline (the outlets' lateness, liblsl, the source's
    # pulls and hand-off) and arrival -> published (ingest, the engine's queue and batch, the estimate)
    inside = np.asarray([r[3] for r in rows])
    before = lat - inside
    classified = len({r[2] for r in published})
    hop_s = bundle.config.hop_samples / bundle.config.fs
    expected = int(n_streams * (m1 - m0) / hop_s)
    p50 = float(np.percentile(lat, 50)) if lat.size else math.nan
    p99 = float(np.percentile(lat, 99)) if lat.size else math.nan
    reasons = []
    if not math.isfinite(open_s):
        reasons.append(f"{len(pipe.streams)} of {n_streams} outlets opened within {OPEN_TIMEOUT_S:g} s")
    if classified < n_streams:
        reasons.append(f"{classified} of {n_streams} streams classified")
    if len(rows) < 0.95 * expected:
        reasons.append(f"{len(rows)} of {expected} expected windows classified")
    if not p99 < p99_limit_ms:
        reasons.append(f"p99 latency {p99:.1f} ms >= {p99_limit_ms:g} ms")
    stats = pipe.engine.stats if pipe.engine is not None else None
    return {
        "streams": n_streams,
        "chunk_ms": chunk_ms,
        "keeps_up": not reasons,
        "reason": "; ".join(reasons),
        "open_s": round(open_s, 2) if math.isfinite(open_s) else None,
        "classified_streams": classified,
        "windows": len(rows),
        "windows_expected": expected,
        "latency_ms_p50": round(p50, 2),
        "latency_ms_p99": round(p99, 2),
        "latency_ms_max": round(float(lat.max()), 2) if lat.size else None,
        "to_pipeline_ms_p50": _pct(before, 50),
        "to_pipeline_ms_p99": _pct(before, 99),
        "in_pipeline_ms_p50": _pct(inside, 50),
        "in_pipeline_ms_p99": _pct(inside, 99),
        "cpu": round((c1 - c0) / (m1 - m0), 3) if m1 > m0 else None,
        "batch_mean": round(float(stats.batch_mean), 2) if stats else None,
        "dropped_windows": int(sum(s.dropped_windows for s in pipe.streams.values())),
        "source_restarts": int(sum(pipe.source_restarts.values())),
        "fleet": fleet,
        "load": _load(),
    }


async def measure_lsl_capacity(
    bundle: ModelBundle,
    engine_settings: EngineSettings,
    counts: Sequence[int] = (32, 128, 256),
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    progress: Any = None,
    settings: PipelineSettings | None = None,
    chunk_ms: float = 10.0,
    phases: int = 0,
) -> dict[str, Any]:
    """:func:`run_lsl_realtime` at each count (ascending; stops after the first count that does not keep up).

    Returns ``{"runs": [...], "capacity_streams": largest count that kept up (0: none), "chunk_ms": ...}``.
    """
    runs: list[dict[str, Any]] = []
    capacity = 0
    for n in sorted(set(counts)):
        if progress is not None:
            progress(f"LSL capacity: {n} outlets in another process, {chunk_ms:g} ms chunks")
        r = await run_lsl_realtime(bundle, n, engine_settings, duration_s, warmup_s, chunk_ms=chunk_ms,
                                   settings=settings, phases=phases)
        runs.append(r)
        if progress is not None:
            fl = r.get("fleet", {})
            progress(f"  -> keeps up: {r['keeps_up']}; p50 {r['latency_ms_p50']} ms, p99 {r['latency_ms_p99']} ms "
                     f"(due -> pipeline p99 {r['to_pipeline_ms_p99']}, in pipeline p99 {r['in_pipeline_ms_p99']}), "
                     f"cpu {r['cpu']}, outlets late p99 {fl.get('lateness_ms_p99')} ms (pushed p99 "
                     f"{fl.get('pushed_ms_p99')} ms), outlets cpu "
                     f"{fl.get('cpu_cores')} {r['reason']}")
        if not r["keeps_up"]:
            break
        capacity = n
    return {"runs": runs, "capacity_streams": capacity, "chunk_ms": chunk_ms, "phases": phases}


if __name__ == "__main__":  # pragma: no cover - the fleet process
    sys.exit(fleet_main())
