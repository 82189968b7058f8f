"""What the device simulators share: the signal options of ``streamemg simulate`` and looped replay."""

from __future__ import annotations

import argparse

import numpy as np


class LoopedRecording:
    """Endless reads from a recording, starting at ``start``: ``(n, C)`` float32 µV blocks, wrapping around.

    Has the same ``generate(n)`` interface as :class:`simulators.synth.EMGSimulator`, so a device plays a file
    or synthetic EMG through the same code.
    """

    def __init__(self, data: np.ndarray, start: int = 0) -> None:
        self.data = data
        self.pos = start % data.shape[0]

    def generate(self, n: int) -> np.ndarray:
        idx = (self.pos + np.arange(n)) % self.data.shape[0]
        self.pos = int((self.pos + n) % self.data.shape[0])
        return self.data[idx]


def add_signal_arguments(
    parser: argparse.ArgumentParser, *, default_class: str, class_help: str, chunk_ms: float, seed_help: str
) -> None:
    """The options every simulator has: --class, --fs, --channels, --chunk-ms, --replay, --duration, --seed."""
    parser.add_argument("--class", dest="cls", default=default_class, metavar="CLASS", help=class_help)
    parser.add_argument(
        "--fs", type=float, default=None, help="sampling rate in Hz (default: 10000; with --replay the recording's)"
    )
    parser.add_argument("--channels", type=int, default=1, help="EMG channels (default: 1)")
    parser.add_argument(
        "--chunk-ms", type=float, default=chunk_ms, help=f"milliseconds of samples per chunk (default: {chunk_ms:g})"
    )
    parser.add_argument(
        "--replay", metavar="FILE", default=None,
        help="play a recording (any format streamemg reads), looped, instead of synthetic EMG",
    )
    parser.add_argument(
        "--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: until Ctrl-C)"
    )
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
