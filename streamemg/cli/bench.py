"""``streamemg bench``: compute, batching, ingest, memory and real-time capacity on this machine.

Progress goes to stderr; the result is a rich table (default) or one JSON object (``--json``) on stdout.
See ``docs/performance.md`` for what every key means and how the targets were met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from typing import Any

from ..errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark this machine: model FLOPs, batching, ingest, memory and real-time stream capacity",
        description="Measures the matmul limit, the model's achieved rate per batch size, the batched engine against "
        "one call per window, ingest cost per chunk, memory per stream, and drives the whole pipeline with "
        "real-time synthetic 8 kHz streams to find how many it keeps up with (p99 latency < 50 ms). "
        "The full run takes a few minutes; --quick under one.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--quick", action="store_true", help="reduced suite (under a minute): no sweeps or search")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--model", metavar="PATH", help="model bundle (default: the shipped model)")
    p.add_argument(
        "--streams", default=None, metavar="N,N,...",
        help="stream counts of the scaling curve (default 1,16,64,256,512)",
    )
    p.add_argument("--duration", type=float, default=None, metavar="S", help="seconds per real-time run")
    p.add_argument("--max-batch", type=int, default=None, metavar="N", help="fix max_batch (default: measured)")
    p.add_argument("--max-wait-ms", type=float, default=None, metavar="MS", help="fix max_wait_ms (default: measured)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="engine threads (default: cores - 1)")
    p.add_argument("--aligned", action="store_true",
                   help="all streams' windows fall due together, and the LSL outlets push at one deadline "
                        "(worst burst)")
    p.add_argument("--no-lsl", action="store_true", help="skip the LSL ingest figures")
    p.add_argument("--no-mqtt", action="store_true", help="skip the MQTT ingest figures")
    p.add_argument(
        "--lsl-streams", default=None, metavar="N,N,...",
        help="outlet counts of the LSL capacity runs (default 32,128 quick; 64,128,256,512 full)",
    )
    p.add_argument(
        "--lsl-chunk-ms", default=None, metavar="MS,MS,...",
        help="also run the LSL capacity series with outlets pushing chunks of these lengths (the 10 ms series "
             "stays; each is reported beside it)",
    )
    p.add_argument(
        "--latency-streams", default=None, metavar="N,N,...",
        help="stream counts of the latency-by-load runs (default 1,8,32,128)",
    )
    p.add_argument("--no-qemg", action="store_true", help="real-time runs without the per-stream QEMG analysis")
    p.add_argument("--output", metavar="FILE", help="also write the JSON report to FILE")
    p.set_defaults(func=run)


def _counts(text: str | None, flag: str = "--streams") -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: give comma-separated stream counts, e.g. 1,16,64,256") from None
    if not counts or min(counts) < 1:
        raise ConfigError(f"{flag} {text!r}: give stream counts of at least 1")
    return counts


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchSettings, run_bench
    from ..model import load_bundle

    kw: dict[str, Any] = {
        "quick": args.quick, "device": args.device, "duration_s": args.duration, "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms, "threads": args.threads, "spread": not args.aligned,
        "lsl": not args.no_lsl, "mqtt": not args.no_mqtt, "model_path": args.model, "qemg": not args.no_qemg,
    }
    latency_counts = _counts(args.latency_streams, "--latency-streams")
    if latency_counts is not None:
        kw["latency_counts"] = latency_counts
    lsl_counts = _counts(args.lsl_streams, "--lsl-streams")
    if lsl_counts is not None:
        kw["lsl_counts"] = lsl_counts
    if args.lsl_chunk_ms is not None:
        try:
            kw["lsl_chunk_ms"] = tuple(float(part) for part in args.lsl_chunk_ms.split(",") if part.strip())
        except ValueError:
            raise ConfigError(f"--lsl-chunk-ms {args.lsl_chunk_ms!r}: give chunk lengths in ms, e.g. 50") from None
    counts = _counts(args.streams)
    if counts is not None:
        kw["stream_counts"] = counts
    settings = BenchSettings(**kw)
    bundle = load_bundle(args.model)

    def progress(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    report = _json_safe(asyncio.run(run_bench(bundle, settings, progress)))
    text = json.dumps(report, indent=2)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.json:
        print(text)
    else:
        print_report(report)
    return 0


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def print_report(report: dict[str, Any]) -> None:
    """The report as rich tables: headline figures, scaling curve, batching by stream count, targets."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    head = Table(title=f"streamemg bench ({report.get('device')}, torch {report.get('torch')}, "
                 f"load {report.get('load_avg_start')} -> {report.get('load_avg_end')})", show_header=False)
    head.add_column(style="bold")
    head.add_column(justify="right")
    head.add_column()
    rows = [
        ("matmul", report.get("matmul_gflops"), f"GFLOP/s ({report.get('matmul_threads')} threads); "
         f"{_fmt(report.get('matmul_gflops_engine_threads'))} with the engine's {report.get('engine_threads')}"),
        ("model cost", report.get("model_mflops_per_window"), "MFLOP per window"),
        ("model rate", report.get("model_gflops"), f"GFLOP/s at batch {report.get('model_best_batch')} "
         f"({(report.get('model_best') or {}).get('mode')}), {_fmt(100 * (report.get('model_vs_matmul') or 0))} % "
         "of matmul on the same threads"),
        ("engine", report.get("windows_per_s_batched"), "windows/s (backlog)"),
        ("one call per window", report.get("windows_per_s_single"), "windows/s (model as built)"),
        ("batched vs single", report.get("batched_vs_single"),
         f"x (batching alone: {_fmt(report.get('batching_gain'), 2)} x)"),
        ("capacity", report.get("capacity_streams"), "real-time 8 kHz streams (p99 < 50 ms, no backlog)"
         + (", QEMG on" if report.get("qemg") else ", QEMG off")),
        ("latency @ 64 streams", report.get("latency_ms_p50"), f"ms p50, {_fmt(report.get('latency_ms_p99'))} ms p99"),
        ("ingest", report.get("ingest_us_per_chunk"), "µs per 10 ms chunk (ring buffer + DSP)"),
        ("memory", report.get("rss_mb_per_stream"), "MiB per stream"),
        ("chosen", report.get("chosen_max_batch"), f"max_batch, max_wait {report.get('chosen_max_wait_ms')} ms"),
    ]
    qc = report.get("qemg_cost")
    if isinstance(qc, dict):
        share = qc.get("qemg_analysed_at_capacity")
        rows.insert(rows.index(next(r for r in rows if r[0] == "capacity")) + 1, (
            "capacity, QEMG off", qc.get("capacity_streams_qemg_off"),
            f"streams (QEMG costs {_fmt(100 * (qc.get('capacity_fall') or 0.0))} % of capacity; at capacity the QEMG "
            f"process used {_fmt(qc.get('qemg_process_cpu_at_capacity'), 2)} cores and analysed "
            f"{'-' if share is None else f'{100 * share:.0f}'} % of the blocks)"))
    for name, value, unit in rows:
        head.add_row(name, _fmt(value, 2 if isinstance(value, float) and abs(value) < 10 else 1), unit)
    console.print(head)

    curve = Table(title="scaling (whole pipeline, real time)")
    for col in ("streams", "keeps up", "p50 ms", "p99 ms", "cpu cores", "loop cpu", "qemg cpu", "qemg analysed",
                "batch mean", "batched vs single", "note"):
        curve.add_column(col, justify="right" if col not in ("note",) else "left")
    for row in report.get("scaling", []):
        share = row.get("qemg_analysed")
        curve.add_row(str(row["streams"]), _fmt(row["keeps_up"]), _fmt(row["latency_ms_p50"]),
                      _fmt(row["latency_ms_p99"]), _fmt(row["cpu"], 2), _fmt(row["loop_cpu"], 2),
                      _fmt(row.get("qemg_cpu"), 2), f"{100 * share:.0f}%" if isinstance(share, float) else "-",
                      _fmt(row["batch_mean"]), _fmt(row.get("batched_vs_single"), 2), row.get("reason", ""))
    console.print(curve)

    by_load = report.get("latency_by_load") or []
    if by_load:
        t = Table(title=f"decision latency by load (max_wait {report.get('latency_by_load_max_wait_ms')} ms; "
                  f"QEMG {'on' if report.get('qemg') else 'off'})")
        extra = any("latency_ms_p50_wait5ms" in row for row in by_load)
        cols = ["streams", "p50 ms", "p99 ms", "cpu cores", "batch mean"]
        cols += ["p50 / p99 ms, 5 ms wait"] if extra else []
        for col in cols:
            t.add_column(col, justify="right")
        for row in by_load:
            cells = [str(row["streams"]), _fmt(row["latency_ms_p50"], 2), _fmt(row["latency_ms_p99"], 2),
                     _fmt(row["cpu"], 2), _fmt(row["batch_mean"], 2)]
            if extra:
                p50, p99 = row.get("latency_ms_p50_wait5ms"), row.get("latency_ms_p99_wait5ms")
                cells.append(f"{_fmt(p50, 2)} / {_fmt(p99, 2)}")
            t.add_row(*cells)
        console.print(t)

    series = [(report.get("lsl_capacity"), 10.0)]
    series += [(cap, float(ms)) for ms, cap in (report.get("lsl_capacity_by_chunk_ms") or {}).items()]
    for lsl_cap, chunk_ms in series:
        if isinstance(lsl_cap, dict):
            t = Table(title=f"LSL capacity: outlets in another process, {chunk_ms:g} ms chunks (largest that kept "
                      f"up: {lsl_cap.get('capacity_streams')})")
            for col in ("outlets", "keeps up", "open s", "p50 ms", "p99 ms", "due->pipeline p99", "in pipeline p99",
                        "cpu cores", "outlets late p99 ms", "outlets cpu", "note"):
                t.add_column(col, justify="left" if col == "note" else "right")
            for row in lsl_cap.get("runs", []):
                fleet = row.get("fleet") or {}
                t.add_row(str(row["streams"]), _fmt(row["keeps_up"]), _fmt(row.get("open_s"), 1),
                          _fmt(row.get("latency_ms_p50"), 1), _fmt(row.get("latency_ms_p99"), 1),
                          _fmt(row.get("to_pipeline_ms_p99"), 1), _fmt(row.get("in_pipeline_ms_p99"), 1),
                          _fmt(row.get("cpu"), 2), _fmt(fleet.get("lateness_ms_p99"), 1),
                          _fmt(fleet.get("cpu_cores"), 2), row.get("reason", ""))
            console.print(t)
        elif lsl_cap is not None:
            console.print(f"[bold]LSL capacity ({chunk_ms:g} ms chunks)[/]: {lsl_cap}")

    by = report.get("batched_vs_single_by_streams") or {}
    if by:
        t = Table(title="a burst of N windows: engine vs one call per window (CPU time)")
        for col in ("N", "engine cpu ms", "engine wall ms", "single cpu ms", "batched vs single", "batching alone"):
            t.add_column(col, justify="right")
        for n, row in by.items():
            t.add_row(n, _fmt(row["engine_cpu_ms"], 2), _fmt(row["engine_wall_ms"], 2), _fmt(row["single_cpu_ms"], 2),
                      _fmt(row["batched_vs_single"], 2), _fmt(row["batching_gain"], 2))
        console.print(t)

    for name in ("lsl", "mqtt", "dashboard"):
        value = report.get(name)
        if isinstance(value, dict):
            brief = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
            console.print(f"[bold]{name}[/]: " + ", ".join(f"{k}={_fmt(v, 3)}" for k, v in brief.items()))
        elif value is not None:
            console.print(f"[bold]{name}[/]: {value}")
    targets = report.get("targets") or {}
    console.print("targets: " + ", ".join(f"{k} {'[green]met[/]' if v else '[red]NOT met[/]'}"
                                          for k, v in targets.items()))
