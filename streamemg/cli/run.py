"""``streamemg run``: classify live streams from any sources, to the dashboard and any outputs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .common import add_model_args, add_pipeline_args, execute, make_plan


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="classify live streams (LSL, MQTT, files, simulators)",
        description="Classify one or more streams in real time. Sources: "
        "sim:<normal|als|myopathy>[?fs=&channels=&seed=], file:PATH[?speed=1|max&loop=1], "
        "lsl:name=Amp1 | lsl:type=EMG, mqtt://HOST[:PORT]/emg/+ .",
    )
    p.add_argument("--source", action="append", default=[], metavar="URI", help="a source URI (repeatable)")
    p.add_argument("--shard", metavar="K/N", help="MQTT: handle only the devices whose id hashes to shard K of N")
    add_model_args(p)
    add_pipeline_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sources = list(args.source)
    if args.shard:
        sources = [_with_shard(uri, args.shard) for uri in sources]
    plan = make_plan(args, sources)
    pipeline = asyncio.run(execute(plan))
    return exit_status(pipeline)


def exit_status(pipeline: Any) -> int:
    """0 for a run whose sources ended or were stopped normally; 1, with the reasons on stderr, when any source
    was given up for good (an unreadable file, a stream that cannot be classified, a library that is missing)."""
    failed: dict[str, str] = dict(getattr(pipeline, "failed_sources", {}) or {})
    if not failed:
        return 0
    total = len(getattr(pipeline, "sources", ())) or len(failed)
    every = "every source" if len(failed) >= total else f"{len(failed)} of {total} sources"
    print(f"streamemg: error: the run ended with {every} failed:", file=sys.stderr)
    for uri, why in failed.items():
        print(f"  {uri}: {why}", file=sys.stderr)
    return 1


def _with_shard(uri: str, shard: str) -> str:
    if not uri.lower().startswith(("mqtt://", "mqtts://")):
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}shard={shard}"
