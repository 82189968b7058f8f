"""``streamemg demo --transport mqtt``: embedded broker + simulated edge devices + the pipeline, zero set-up.

Everything runs in this one process: an in-process MQTT broker on a free loopback port, three simulated
devices (one per class) publishing protocol-v1 binary messages, and the pipeline subscribed to
``emg/+`` that publishes its estimates back to ``streamemg/<device>/estimate``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from .common import execute, load_model, make_plan

#: time for the pipeline to connect and subscribe before the devices start publishing
SUBSCRIBE_GRACE_S = 1.0


async def _demo(args: argparse.Namespace) -> int:
    from simulators.mqtt_device import FleetSettings, run_fleet

    from ..mqtt.broker import EmbeddedBroker

    async with EmbeddedBroker() as broker:
        args.output = [*(args.output or []), broker.url]
        plan = make_plan(args, [f"{broker.url}/emg/+"])
        bundle = load_model(plan.model, plan.window_s)  # the slow part, before anything publishes
        pipeline = asyncio.create_task(execute(plan, bundle=bundle), name="demo-pipeline")
        await asyncio.wait({pipeline}, timeout=SUBSCRIBE_GRACE_S)
        duration = None if args.duration is None else max(0.5, args.duration - SUBSCRIBE_GRACE_S)
        fleet = FleetSettings(broker=broker.url, devices=3, cls="mixed", fs=args.fs, duration=duration)
        devices = asyncio.create_task(run_fleet(fleet, quiet=True), name="demo-devices")
        try:
            await pipeline
        finally:
            devices.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await devices
    return 0


def run_mqtt_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args))
