"""``streamemg run``: classify live streams from any sources, to the dashboard and any outputs."""

from __future__ import annotations

import argparse
import asyncio

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
    asyncio.run(execute(plan))
    return 0


def _with_shard(uri: str, shard: str) -> str:
    if not uri.lower().startswith(("mqtt://", "mqtts://")):
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}shard={shard}"
