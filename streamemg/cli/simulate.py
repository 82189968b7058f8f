"""``streamemg simulate lsl|mqtt``: device emulators (an LSL amplifier, MQTT edge devices)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
from typing import Any

#: simulator name -> module providing add_arguments(parser) and async main(args) -> int
SIMULATORS = {
    "lsl": ("simulators.lsl_amp", "an LSL amplifier outlet (synthetic or replayed EMG)"),
    "mqtt": ("simulators.mqtt_device", "MQTT edge devices publishing EMG (protocol v1)"),
}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulate", help="run device simulators (LSL amplifier, MQTT edge devices)")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for name, (module_name, text) in SIMULATORS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        k = kinds.add_parser(name, help=text, description=text)
        module.add_arguments(k)
        k.set_defaults(func=run, _module=module)


def run(args: argparse.Namespace) -> int:
    module: Any = args._module
    try:
        return int(asyncio.run(module.main(args)))
    except KeyboardInterrupt:
        return 0
