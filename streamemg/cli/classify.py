"""``streamemg classify FILE...``: whole recordings through the same streaming path as ``run``.

Each file becomes a ``file:PATH?speed=max`` source of one pipeline (files are batched together), and its
recording-level result is the stream's cumulative estimate after the last window: exactly what ``run``
reports for the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from typing import Any
from urllib.parse import quote

from ..errors import ConfigError
from ..types import CLASS_NAMES
from .common import add_model_args, execute, load_model, make_plan


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "classify",
        help="classify whole recordings (one line per file)",
        description="Classify recordings (.hea/.bin[.xz] EMGLAB, WFDB, .asc[.xz], .npy, .csv, .xdf) through the "
        "streaming path at full speed. Prints one line per file; --json for machine-readable lines.",
    )
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument(
        "--manifest", action="append", default=[], metavar="CSV",
        help="a CSV listing recordings (its path and fs columns are used); repeatable",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.add_argument("--fs", type=float, default=None, help="sampling rate for formats that carry none (.npy)")
    p.add_argument("--window", type=float, default=None, metavar="S", help="window length override, seconds")
    p.add_argument("--hop", type=float, default=None, metavar="S", help="seconds between windows")
    add_model_args(p)
    p.set_defaults(func=run, config=None, tau=None, duration=None, no_dashboard=True, output=None)


def file_uri(path: str, fs: float | None = None) -> str:
    uri = f"file:{quote(str(path), safe='/._-~')}?speed=max"
    if fs is not None:
        uri += f"&fs={fs:g}"
    return uri


async def classify_files(
    paths: list[str], args: argparse.Namespace, rates: list[float | None] | None = None
) -> list[dict[str, Any]]:
    """Run every file through one pipeline; return one result dict per file, in input order.

    A file that cannot even be opened (missing, unknown format) gets an error result and stays out of the
    pipeline, so every other file is still classified. ``rates``: per-file sampling rate (None: ``--fs``).
    """
    from ..errors import StreamEMGError
    from ..sources.base import open_source

    rates = rates if rates is not None else [None] * len(paths)
    uris = [file_uri(p, fs if fs is not None else args.fs) for p, fs in zip(paths, rates, strict=True)]
    errors: dict[int, str] = {}
    for i, uri in enumerate(uris):
        try:
            open_source(uri)  # construction only: checks the file and its format, opens nothing
        except StreamEMGError as exc:
            errors[i] = str(exc)
    good = [i for i in range(len(paths)) if i not in errors]
    results: list[dict[str, Any]] = [
        _result(paths[i], [], True, errors[i]) if i in errors else {} for i in range(len(paths))
    ]
    if not good:
        return results
    plan = make_plan(args, [uris[i] for i in good], default_dashboard=False)
    bundle = load_model(plan.model, plan.window_s)
    pipeline = await execute(plan, bundle=bundle)
    by_source: dict[int, list[Any]] = {}
    for state in pipeline.streams.values():
        by_source.setdefault(id(state.source), []).append(state)
    for i, source in zip(good, pipeline.sources, strict=True):
        states = by_source.get(id(source), [])
        results[i] = _result(paths[i], states, bundle.trained, pipeline.source_errors.get(source.uri))
    return results


def _result(path: str, states: list[Any], trained: bool, error: str | None) -> dict[str, Any]:
    windows = sum(s.windows for s in states)
    valid = sum(s.estimator.n_valid for s in states)
    out: dict[str, Any] = {"file": path, "label": None, "confidence": 0.0, "probabilities": None,
                           "windows": windows, "quality": "no windows"}
    if not states:
        out["quality"] = f"error: {error or 'no stream could be read'}"
        return out
    cum = states[0].estimator.cumulative
    if valid and all(math.isfinite(float(x)) for x in cum):
        k = max(range(len(CLASS_NAMES)), key=lambda i: float(cum[i]))
        out["label"] = CLASS_NAMES[k] if trained else "untrained"
        out["confidence"] = round(float(cum[k]), 6)
        out["probabilities"] = {c: round(float(v), 6) for c, v in zip(CLASS_NAMES, cum, strict=True)}
        out["quality"] = "ok" if valid == windows else f"{windows - valid} of {windows} windows withheld"
    elif windows:
        reasons = {q for s in states for q in (s.last_estimate.channel_quality if s.last_estimate else ())}
        out["quality"] = "no usable window: " + ", ".join(sorted(reasons - {"ok"}) or ["too short"])
    else:
        out["quality"] = "too short for one window"
    return out


def run(args: argparse.Namespace) -> int:
    paths = list(args.files)
    rates: list[float | None] = [None] * len(paths)
    if args.manifest:
        from ..clinical.manifest import read_manifests

        for row in read_manifests(args.manifest):
            if row.start_s is not None or row.stop_s is not None:
                print(
                    f"streamemg: note: {row.where}: classify plays whole files; start_s/stop_s are not applied",
                    file=sys.stderr,
                )
            paths.append(str(row.path))
            rates.append(row.fs)
    if not paths:
        raise ConfigError("nothing to classify: give recording FILE(s) and/or --manifest FILE.csv")
    results = asyncio.run(classify_files(paths, args, rates))
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            probs = r["probabilities"] or {}
            p = "  ".join(f"{c} {probs.get(c, float('nan')):.2f}" for c in CLASS_NAMES) if probs else ""
            print(f"{r['file']}: {r['label'] or '-'} ({r['confidence']:.2f})  {p}  [{r['windows']} windows, "
                  f"{r['quality']}]")
    sys.stdout.flush()
    failed = [r["file"] for r in results if not r["label"]]
    if failed:
        print(
            f"streamemg: {len(failed)} of {len(results)} file(s) gave no estimate (unreadable, too short or no "
            f"usable window): {', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}",
            file=sys.stderr,
        )
    return 0 if not failed else 1
