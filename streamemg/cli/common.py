"""What ``run``, ``demo`` and ``classify`` share: model/engine/pipeline options and the run loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ConfigError
from ..types import Estimate


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --device and the batching options."""
    g = parser.add_argument_group("model and inference")
    g.add_argument("--model", metavar="PATH", help="model bundle (.pt); default: the shipped model")
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--max-batch", type=int, default=None, metavar="N", help="largest inference batch (rows)")
    g.add_argument("--max-wait-ms", type=float, default=None, metavar="MS", help="longest wait for a batch to fill")
    g.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    g.add_argument(
        "--site", default=None, metavar="SITE.json",
        help="site profile (from `streamemg calibrate`) for every source without its own ?site=",
    )


def add_pipeline_args(parser: argparse.ArgumentParser, outputs: bool = True) -> None:
    """--window, --hop, --output, --no-dashboard, --duration, --config."""
    g = parser.add_argument_group("pipeline")
    g.add_argument(
        "--window", type=float, default=None, metavar="S",
        help="window length in seconds (default: the model's; the model was validated at its own)",
    )
    g.add_argument("--hop", type=float, default=None, metavar="S", help="seconds between decisions (default: model's)")
    g.add_argument("--tau", type=float, default=None, metavar="S", help="time constant of the rolling estimate")
    if outputs:
        g.add_argument(
            "--output", action="append", default=None, metavar="URI",
            help="where estimates go (repeatable): jsonl:PATH, stdout, lsl, mqtt://HOST[:PORT], record:DIR",
        )
        g.add_argument(
            "--no-dashboard", action="store_true",
            help="no live dashboard; print one JSON object per estimate on stdout instead",
        )
    g.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    g.add_argument("--config", metavar="FILE", help="TOML config file (flags override it)")


@dataclasses.dataclass
class RunPlan:
    """Everything a pipeline run needs, after config file and flags are merged."""

    sources: list[str]
    outputs: list[str]
    dashboard: bool
    duration: float | None
    model: str | None
    engine: Any
    pipeline: Any
    window_s: float | None = None
    site: str | None = None


def make_plan(args: argparse.Namespace, sources: Sequence[str], default_dashboard: bool = True) -> RunPlan:
    """Merge ``--config`` (if any) with the flags; flags win. Validates every value."""
    from ..config import build_settings, load_config
    from ..engine import EngineSettings
    from ..estimates import EstimateSettings, QualitySettings
    from ..pipeline import PipelineSettings
    from ..qemg.analyser import QemgSettings

    cfg: dict[str, dict[str, Any]] = load_config(args.config) if getattr(args, "config", None) else {}
    run = cfg.get("run", {})
    engine_values = dict(cfg.get("engine", {}))
    if run.get("device"):
        engine_values.setdefault("device", run["device"])
    for flag, key in (("device", "device"), ("max_batch", "max_batch"), ("max_wait_ms", "max_wait_ms"),
                      ("threads", "threads")):
        value = getattr(args, flag, None)
        if value is not None:
            engine_values[key] = value
    engine = build_settings(EngineSettings, "engine", engine_values)

    pipe_values = dict(cfg.get("pipeline", {}))
    if getattr(args, "hop", None) is not None:
        pipe_values["hop_s"] = args.hop
    est_values = dict(cfg.get("estimates", {}))
    if getattr(args, "tau", None) is not None:
        est_values["tau_s"] = args.tau
    pipe_values["estimates"] = build_settings(EstimateSettings, "estimates", est_values)
    pipe_values["quality"] = build_settings(QualitySettings, "quality", dict(cfg.get("quality", {})))
    pipe_values["qemg"] = build_settings(QemgSettings, "qemg", dict(cfg.get("qemg", {})))
    pipeline = build_settings(PipelineSettings, "pipeline", pipe_values)

    all_sources = list(sources) or list(run.get("sources", []))
    outputs = list(getattr(args, "output", None) or run.get("outputs", []))
    dashboard = default_dashboard and bool(run.get("dashboard", True)) and not getattr(args, "no_dashboard", False)
    if dashboard and not sys.stdout.isatty():
        print("streamemg: stdout is not a terminal: no dashboard, printing JSON lines", file=sys.stderr)
        dashboard = False
    if not dashboard and "stdout" not in outputs and default_dashboard:
        outputs.append("stdout")
    duration = args.duration if getattr(args, "duration", None) is not None else run.get("duration")
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise ConfigError(f"--duration {duration!r}: give a positive number of seconds")
    window = getattr(args, "window", None)
    if window is not None and not (math.isfinite(window) and window > 0):
        raise ConfigError(f"--window {window!r}: give a positive number of seconds, e.g. 1.0")
    return RunPlan(
        sources=all_sources,
        outputs=outputs,
        dashboard=dashboard,
        duration=float(duration) if duration is not None else None,
        model=getattr(args, "model", None) or run.get("model"),
        engine=engine,
        pipeline=pipeline,
        window_s=window,
        site=getattr(args, "site", None),
    )


def load_model(path: str | None, window_s: float | None = None) -> Any:
    """Load the bundle (default: shipped model) and apply a ``--window`` override."""
    from ..model import load_bundle

    bundle = load_bundle(path)
    if window_s is not None:
        samples = round(window_s * bundle.config.fs)
        config = dataclasses.replace(bundle.config, window_samples=samples)
        bundle = dataclasses.replace(bundle, config=config)
    return bundle


async def execute(
    plan: RunPlan,
    bundle: Any = None,
    on_estimate: Callable[[Estimate], None] | None = None,
    extra_sinks: Sequence[Any] = (),
) -> Any:
    """Open sources and sinks, run the pipeline (with the dashboard if asked), stop cleanly on signals.

    Returns the finished Pipeline (for its counters and last estimates).
    """
    from ..pipeline import Pipeline
    from ..sinks.base import open_sink
    from ..sources.base import open_source, split_site

    if not plan.sources:
        raise ConfigError("no source given: add --source URI (e.g. --source sim:als) or run.sources in --config")
    if bundle is None:
        bundle = load_model(plan.model, plan.window_s)
    split = [split_site(uri) for uri in plan.sources]
    sites = _site_tensors(bundle, [site or plan.site for _, site in split])
    sources = [open_source(uri) for uri, _ in split]
    sinks = [open_sink(uri) for uri in plan.outputs] + list(extra_sinks)
    pipeline = Pipeline(
        sources, sinks, bundle=bundle, settings=plan.pipeline, engine_settings=plan.engine, on_estimate=on_estimate,
        sites=sites,
    )
    loop = asyncio.get_running_loop()
    installed: list[int] = []

    def request_stop() -> None:
        pipeline.stop()
        for sig in installed:  # a second Ctrl-C falls through to the default (immediate) behaviour
            loop.remove_signal_handler(sig)
        installed.clear()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, request_stop)
            installed.append(sig)
    try:
        if plan.dashboard:
            from ..ui.dashboard import Dashboard

            # log lines on stderr would scribble over the full-screen dashboard: show them in its footer
            with _logs_into(pipeline.errors):
                async with Dashboard(pipeline.snapshot, detail_fn=pipeline.stream_detail, bundle=bundle):
                    await pipeline.run(duration=plan.duration)
        else:
            await pipeline.run(duration=plan.duration)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    return pipeline


def _site_tensors(bundle: Any, paths: Sequence[str | None]) -> list[Any] | None:
    """Each source's site profile (loaded once per file, checked against ``bundle``) as its tensor, or None."""
    if not any(paths):
        return None
    from ..clinical.site import SiteProfile

    loaded: dict[str, Any] = {}
    out: list[Any] = []
    for p in paths:
        if p is None:
            out.append(None)
            continue
        if p not in loaded:
            loaded[p] = SiteProfile.load(p, bundle).tensor()
        out.append(loaded[p])
    return out


class _DequeHandler(logging.Handler):
    def __init__(self, sink: Any) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != "streamemg.pipeline":  # the pipeline puts its own errors there already
            self.sink.append(f"{record.levelname.lower()}: {record.getMessage()}")


@contextlib.contextmanager
def _logs_into(sink: Any) -> Iterator[None]:
    """While the dashboard owns the terminal, route log records of WARNING and above into ``sink``."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [_DequeHandler(sink)]
    try:
        yield
    finally:
        root.handlers = saved
