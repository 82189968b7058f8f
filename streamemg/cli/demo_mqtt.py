"""``streamemg demo --transport mqtt``: embedded broker + simulated edge devices + the pipeline, zero set-up.

Everything runs in this one process: an in-process MQTT broker on a free loopback port, three simulated
devices (one per class) publishing protocol-v1 binary messages, and the pipeline subscribed to
``emg/+`` that publishes its estimates back to ``streamemg/<device>/estimate``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from .common import execute, make_plan


async def _demo(args: argparse.Namespace) -> int:
    from simulators.mqtt_device import FleetSettings, run_fleet

    from ..broker import EmbeddedBroker

    async with EmbeddedBroker() as broker:
        fleet = FleetSettings(broker=broker.url, devices=3, cls="mixed", fs=args.fs, duration=args.duration)
        ready = asyncio.Event()
        devices = asyncio.create_task(run_fleet(fleet, ready=ready, quiet=True), name="demo-devices")
        try:
            await asyncio.wait_for(ready.wait(), timeout=30)
            args.output = [*(args.output or []), broker.url]
            plan = make_plan(args, [f"{broker.url}/emg/+"])
            await execute(plan)
        finally:
            devices.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await devices
    return 0


def run_mqtt_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args))
