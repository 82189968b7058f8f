"""An LSL amplifier: synthetic or replayed needle EMG on a Lab Streaming Layer outlet, paced at real time.

``streamemg simulate lsl --name Amp1 --class als --channels 4 --fs 10000 [--chunk-ms 10] [--counter]
[--replay FILE] [--duration S] [--seed N] [--format float32|double|int16|int32]``

* Samples come from :class:`simulators.synth.EMGSimulator` (class-specific motor-unit activity), or with
  ``--replay`` from any recording :func:`streamemg.clinical.recordings.read_recording` can read, looped.
* Pacing uses absolute deadlines (:class:`simulators.pacing.Pacer`): sample ``k`` is due at ``t0 + k / fs``, so
  the rate stays exact over hours; each chunk is time-stamped with the LSL clock time of its last sample.
* The outlet describes its channels (``desc/channels/channel``: label, unit ``microvolts``, type ``EMG``) and
  has a stable ``source_id`` (``streamemg-sim-<name>``), so inlets recover when the simulator restarts.
* ``--counter`` adds a last channel (label ``counter``, type ``MISC``, unit ``samples``) holding the sample
  index, for integrity checks (it wraps where the format can no longer hold it exactly: 2**24 for float32).
* Integer formats carry µV rounded to whole numbers (clipped to the format's range).

liblsl is kept on this machine (loopback only) unless ``LSLAPICFG`` names a configuration of your own.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulators.common import LoopedRecording, add_signal_arguments
from streamemg.errors import ConfigError, DataFormatError, LSLUnavailableError, StreamEMGError
from streamemg.lsl.config import configure_machine_scope
from streamemg.lsl.executor import LSLExecutor, import_pylsl

#: --format -> (pylsl format name, numpy dtype, counter modulus: the largest count the format holds exactly)
FORMATS: dict[str, tuple[str, Any, int]] = {
    "float32": ("float32", np.float32, 2**24),
    "double": ("double64", np.float64, 2**53),
    "int16": ("int16", np.int16, 2**15),
    "int32": ("int32", np.int32, 2**31),
}


@dataclass(frozen=True, slots=True)
class AmpSettings:
    """What the simulated amplifier streams.

    Attributes:
        name: LSL stream name.
        cls: simulated class (normal, als, myopathy or an alias); ignored with ``replay``.
        channels: EMG channels (synthetic); a replay uses the recording's channels.
        fs: sampling rate, Hz; None = 10000 (synthetic) or the recording's rate (replay).
        chunk_ms: milliseconds of samples per pushed chunk.
        counter: add a sample-counter channel.
        replay: recording to play (looped) instead of synthetic EMG.
        duration: stop after this many seconds of samples; None = run until interrupted.
        seed: synthetic EMG seed.
        stream_type: LSL content type.
        source_id: LSL source_id; None = ``streamemg-sim-<name>``.
        fmt: sample format: float32, double, int16 or int32.
        mains_hz, mains_uv: optional mains hum (synthetic only).
    """

    name: str = "Amp1"
    cls: str = "normal"
    channels: int = 1
    fs: float | None = None
    chunk_ms: float = 10.0
    counter: bool = False
    replay: Path | None = None
    duration: float | None = None
    seed: int = 0
    stream_type: str = "EMG"
    source_id: str | None = None
    fmt: str = "float32"
    mains_hz: float | None = None
    mains_uv: float = 0.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("AmpSettings.name='': give the stream a name, e.g. --name Amp1")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or not 1 <= self.channels <= 1024:
            raise ConfigError(f"AmpSettings.channels={self.channels!r}: use a whole number from 1 to 1024 (--channels)")
        if self.fs is not None and not (math.isfinite(self.fs) and self.fs > 0):
            raise ConfigError(f"AmpSettings.fs={self.fs!r}: give the rate in Hz above 0, e.g. --fs 10000")
        if not (math.isfinite(self.chunk_ms) and 0.1 <= self.chunk_ms <= 1000):
            raise ConfigError(f"AmpSettings.chunk_ms={self.chunk_ms!r}: use 0.1 to 1000 ms, e.g. --chunk-ms 10")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise ConfigError(f"AmpSettings.duration={self.duration!r}: give seconds above 0, or leave it out")
        if self.fmt not in FORMATS:
            raise ConfigError(f"AmpSettings.fmt={self.fmt!r}: use one of {', '.join(FORMATS)} (--format)")
        if self.seed < 0:
            raise ConfigError(f"AmpSettings.seed={self.seed!r}: use a whole number >= 0")
        if self.source_id == "":
            raise ConfigError("AmpSettings.source_id='': leave it out for streamemg-sim-<name>, or give a value")

    @property
    def effective_source_id(self) -> str:
        return self.source_id or f"streamemg-sim-{self.name}"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AmpSettings:
        return cls(
            name=args.name,
            cls=args.cls,
            channels=args.channels,
            fs=args.fs,
            chunk_ms=args.chunk_ms,
            counter=bool(args.counter),
            replay=Path(args.replay) if args.replay else None,
            duration=args.duration,
            seed=args.seed,
            stream_type=args.type,
            source_id=args.source_id,
            fmt=args.format,
            mains_hz=args.mains,
            mains_uv=args.mains_uv,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``streamemg simulate lsl`` options to ``parser``."""
    parser.add_argument("--name", default="Amp1", help="LSL stream name (default: Amp1)")
    add_signal_arguments(
        parser, default_class="normal", class_help="simulated class: normal, als or myopathy (default: normal)",
        chunk_ms=10.0, seed_help="seed of the synthetic EMG (default: 0)",
    )
    parser.add_argument("--counter", action="store_true", help="add a sample-counter channel (integrity checks)")
    parser.add_argument("--type", default="EMG", help="LSL content type (default: EMG)")
    parser.add_argument(
        "--source-id",
        default=None,
        help="LSL source_id (default: streamemg-sim-<name>; keep it stable so inlets recover)",
    )
    parser.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="float32",
        help="sample format on the wire (default: float32; integer formats carry whole µV)",
    )
    parser.add_argument("--mains", type=float, default=None, metavar="HZ", help="add mains hum at HZ (50 or 60)")
    parser.add_argument("--mains-uv", type=float, default=20.0, help="mains hum amplitude in µV (default: 20)")


def _make_info(pylsl: Any, settings: AmpSettings, fs: float, labels: tuple[str, ...], detail: dict[str, str]) -> Any:
    fmt_name = FORMATS[settings.fmt][0]
    n = len(labels) + (1 if settings.counter else 0)
    info = pylsl.StreamInfo(settings.name, settings.stream_type, n, fs, fmt_name, settings.effective_source_id)
    desc = info.desc()
    desc.append_child_value("manufacturer", "streamemg")
    desc.append_child_value("model", "simulated needle-EMG amplifier")
    chans = desc.append_child("channels")
    for label in labels:
        ch = chans.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", "microvolts")
        ch.append_child_value("type", "EMG")
    if settings.counter:
        ch = chans.append_child("channel")
        ch.append_child_value("label", "counter")
        ch.append_child_value("unit", "samples")
        ch.append_child_value("type", "MISC")
    sim = desc.append_child("streamemg")
    for key, value in detail.items():
        sim.append_child_value(key, value)
    return info


def _release(holder: list[Any]) -> None:
    while holder:
        obj = holder.pop()
        del obj


async def run_amp(settings: AmpSettings, ready: asyncio.Event | None = None, quiet: bool = False) -> int:
    """Stream until ``settings.duration`` of samples was sent (or until cancelled). Returns the samples sent.

    Args:
        settings: what to stream.
        ready: set once the outlet exists (tests wait for it).
        quiet: no banner on stderr.

    Raises:
        LSLUnavailableError, ConfigError, DataFormatError: setup problems (``main`` turns them into messages).
    """
    from .pacing import Pacer

    own_config = bool(os.environ.get("LSLAPICFG"))
    configure_machine_scope()  # keeps LSL on loopback unless LSLAPICFG names the user's own configuration
    pylsl = import_pylsl()
    detail: dict[str, str]
    if settings.replay is not None:
        from streamemg.clinical.recordings import read_recording

        rec = await asyncio.to_thread(read_recording, settings.replay, settings.fs)
        fs = float(rec.fs)
        labels = tuple(rec.channels)
        gen: Any = LoopedRecording(rec.data)
        detail = {"replay": str(rec.path or settings.replay), "looped": "true"}
        what = f"replay of {settings.replay} ({rec.duration_s:.1f} s, looped)"
    else:
        from .synth import EMGSimulator

        fs = float(settings.fs) if settings.fs is not None else 10000.0
        mains_uv = settings.mains_uv if settings.mains_hz is not None else 0.0
        gen = EMGSimulator(
            settings.cls, fs, settings.channels, settings.seed, mains_hz=settings.mains_hz, mains_uv=mains_uv
        )
        labels = tuple(f"EMG{i + 1}" for i in range(settings.channels))
        detail = {"class": gen.label, "seed": str(settings.seed)}
        what = f"synthetic {gen.label} EMG (seed {settings.seed})"
    _, dtype, modulus = FORMATS[settings.fmt]
    chunk_s = settings.chunk_ms / 1000.0
    total = None if settings.duration is None else max(1, round(settings.duration * fs))
    executor = LSLExecutor("lsl-amp", 1)
    holder: list[Any] = []
    outlet: Any = None
    sent = 0
    try:
        info = _make_info(pylsl, settings, fs, labels, detail)
        holder.append(
            await executor.call(
                pylsl.StreamOutlet, info, 0, 60, timeout_s=10.0, what=f"creating LSL outlet {settings.name!r}"
            )
        )
        del info
        outlet = holder[0]
        if not quiet:
            extra = " + counter" if settings.counter else ""
            print(
                f"LSL outlet {settings.name!r} (type {settings.stream_type}, source_id "
                f"{settings.effective_source_id}): {len(labels)} channel(s){extra} at {fs:g} Hz, {settings.fmt}, "
                f"{settings.chunk_ms:g} ms chunks, {what}. "
                + (
                    ""
                    if own_config
                    else "Visible on this machine only (set LSLAPICFG to use your own liblsl configuration). "
                )
                + "Ctrl-C to stop.",
                file=sys.stderr,
                flush=True,
            )
        if ready is not None:
            ready.set()
        pacer = Pacer(chunk_s)
        pacer.start()
        lsl_t0 = pylsl.local_clock()
        n_cols = len(labels) + (1 if settings.counter else 0)
        while total is None or sent < total:
            await pacer.wait_next()
            due = math.floor(pacer.ticks * chunk_s * fs + 1e-9) - sent
            if total is not None:
                due = min(due, total - sent)
            if due <= 0:
                continue
            samples = gen.generate(due)
            block = np.empty((due, n_cols), dtype=dtype)
            if np.issubdtype(dtype, np.integer):
                info_i = np.iinfo(dtype)
                block[:, : len(labels)] = np.clip(np.rint(samples), info_i.min, info_i.max)
            else:
                block[:, : len(labels)] = samples
            if settings.counter:
                block[:, -1] = (sent + np.arange(due, dtype=np.int64)) % modulus
            outlet.push_chunk(block, lsl_t0 + (sent + due - 1) / fs)
            sent += due
        return sent
    finally:
        outlet = None  # the outlet is destroyed in the worker thread (liblsl may block briefly)
        if holder:
            try:
                await asyncio.shield(executor.call(_release, holder, timeout_s=5.0, what="closing the LSL outlet"))
            except (StreamEMGError, asyncio.CancelledError):
                pass
        executor.close()


async def main(args: argparse.Namespace) -> int:
    """``streamemg simulate lsl``: returns 0 when done (duration reached), 2 on a setup error."""
    try:
        settings = AmpSettings.from_args(args)
        await run_amp(settings)
    except LSLUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, DataFormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
