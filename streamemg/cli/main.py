"""The ``streamemg`` command: one module per subcommand, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import StreamEMGError

#: subcommand modules under streamemg.cli, in the order ``--help`` lists them
COMMANDS = (
    "demo", "run", "classify", "qemg", "simulate", "train", "calibrate", "evaluate", "report",
    "bench", "broker", "info",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamemg",
        description="Real-time needle-EMG classification (Normal / ALS / Myopathy) of many live streams. "
        "Research use only; not a medical device.",
    )
    parser.add_argument("--version", action="version", version=f"streamemg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"streamemg.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"streamemg.cli.{name}":
                continue  # a command not shipped in this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        code: int = args.func(args)
    except StreamEMGError as exc:
        print(f"streamemg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def entry() -> None:
    """The console script: ``main`` then a fast exit.

    Every source, output and recording is closed when ``main`` returns; the interpreter's teardown of native
    libraries (torch alone takes about a second) is skipped so that SIGINT/SIGTERM end the process within 2 s.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
