"""``streamemg broker``: run the embedded MQTT broker alone (for the simulator and ``run`` in other shells)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from ..mqtt.broker import EmbeddedBroker


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "broker",
        help="run a small MQTT broker on this machine (no installation needed)",
        description="Runs an in-process MQTT broker (amqtt) on 127.0.0.1 for devices, simulators and "
        "`streamemg run --source mqtt://127.0.0.1/emg/+` on this machine. Ctrl-C stops it. For many devices "
        "or other machines use mosquitto, EMQX or HiveMQ.",
    )
    p.add_argument("--port", type=int, default=1883, help="TCP port (default 1883; 0 = any free port)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_serve(args.port, args.duration))
    except KeyboardInterrupt:
        return 0


async def _serve(port: int, duration: float | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with EmbeddedBroker(port=port) as broker:
        print(f"streamemg: MQTT broker listening on {broker.url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()
    return 0
