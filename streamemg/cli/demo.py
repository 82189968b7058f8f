"""``streamemg demo``: three simulated patients through the whole pipeline, zero set-up."""

from __future__ import annotations

import argparse
import asyncio

from .common import add_model_args, execute, make_plan

DEMO_SOURCES = (
    "sim:normal?name=patient-1&seed=1",
    "sim:als?name=patient-2&seed=2",
    "sim:myopathy?name=patient-3&seed=3",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="three simulated patients (Normal, ALS, Myopathy) live on the dashboard, no set-up",
        description="Streams three simulated needle-EMG patients, one per class, in real time through the whole "
        "pipeline to the live dashboard. Ctrl-C stops it.",
    )
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument(
        "--transport", choices=("direct", "mqtt"), default="direct",
        help="direct (default): simulators feed the pipeline in-process; mqtt: through an embedded MQTT broker",
    )
    p.add_argument("--fs", type=float, default=10000.0, help="simulated amplifier rate, Hz (default 10000)")
    p.add_argument("--no-dashboard", action="store_true", help="print JSON lines instead of the dashboard")
    p.add_argument("--output", action="append", default=None, metavar="URI", help="extra outputs, as for run")
    add_model_args(p)
    p.set_defaults(func=run, config=None, window=None, hop=None, tau=None)


def run(args: argparse.Namespace) -> int:
    if args.transport == "mqtt":
        from .demo_mqtt import run_mqtt_demo

        return run_mqtt_demo(args)
    sources = [f"{uri}&fs={args.fs:g}" for uri in DEMO_SOURCES]
    plan = make_plan(args, sources)
    asyncio.run(execute(plan))
    return 0
