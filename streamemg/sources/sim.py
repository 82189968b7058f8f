"""Simulated needle-EMG streams: ``sim:<normal|als|myopathy>[?fs=10000&channels=1&seed=0&...]``.

Parameters (all optional):

========== ============ ==================================================================================
``fs``     10000        sampling rate, Hz (>= 500; e.g. 4000, 8000, 23437.5, 32768)
``channels`` 1          number of channels (1-1024), each with its own motor units
``seed``   0            reproducibility seed (>= 0)
``chunk_ms`` 10 / 250   samples per chunk in ms (default 10 in real time, 250 at ``speed=max``)
``speed``  1            1 = real time (paced on absolute deadlines), any factor > 0, or ``max`` (as fast as
                        the consumer takes it)
``duration`` none       stop after this many seconds of signal
``name``   sim:<class>  stream name and id (default ``sim:<class>``, ``sim:<class>-<seed>`` for seed > 0)
``mains``  0            mains hum: 0 (none), 50 or 60 Hz
``mains_uv`` 20         hum amplitude, µV (when ``mains`` is 50 or 60)
``noise_uv`` 5          background noise RMS, µV
========== ============ ==================================================================================

Timestamps come from a stream clock: in paced modes sample ``i`` is at ``t_start + i / fs`` with
``t_start`` the pipeline clock at start (on Linux the same monotonic clock as ``pylsl.local_clock``); at
``speed=max`` they start at 0. When the consumer falls behind by whole chunks, the missed chunks are sent at
once (as a device's transport buffer would), so the stream never drifts from its clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from simulators.pacing import Pacer, Sleep
from simulators.synth import CLASS_LABELS, MAX_CHANNELS, MIN_FS, SIM_CLASSES, EMGSimulator, normalize_class

from ..clock import Clock, monotonic
from ..errors import ConfigError, SourceURIError
from ..types import Chunk, SourceItem, StatusEvent, StreamInfo, StreamStatus
from .base import GeneratorSource, UriParams, split_uri

#: Most channels a sim: URI may ask for.
MAX_SIM_CHANNELS = min(1024, MAX_CHANNELS)
_PARAMS = ("fs", "channels", "seed", "chunk_ms", "speed", "duration", "name", "mains", "mains_uv", "noise_uv")
_EXAMPLE = "sim:als?fs=10000&channels=2&seed=1&speed=max&duration=5"


class SimSource(GeneratorSource):
    """One simulated stream of class ``cls`` (see the module docstring for the parameters).

    Args:
        cls: "normal", "als" or "myopathy" (aliases as :func:`simulators.synth.normalize_class`).
        fs, channels, seed, mains_hz, mains_uv, noise_uv: passed to :class:`simulators.synth.EMGSimulator`.
        chunk_ms: chunk length in ms (default 10 when paced, 250 at max speed).
        speed: 1.0 = real time, another factor > 0, or None for "max" (no pacing).
        duration: seconds of signal to produce, None for no end.
        name: stream name and id.
        uri: shown as the source URI (default built from the arguments).
        clock, sleep: injectable time source and sleep for the pacing (tests).

    Attributes:
        info: the StreamInfo announced first.
        stream_id: the stream key.
        chunk_samples: samples per chunk.
        pacer: the pacer of the current run (None at max speed), for its late-tick count.

    Raises:
        ConfigError: invalid arguments (naming the argument and the fix).
    """

    def __init__(
        self,
        cls: str,
        *,
        fs: float = 10000.0,
        channels: int = 1,
        seed: int = 0,
        chunk_ms: float | None = None,
        speed: float | None = 1.0,
        duration: float | None = None,
        name: str | None = None,
        mains_hz: float | None = None,
        mains_uv: float = 20.0,
        noise_uv: float = 5.0,
        uri: str | None = None,
        clock: Clock = monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.cls = normalize_class(cls)
        if speed is not None and not (float(speed) > 0):
            raise ConfigError(f"SimSource.speed={speed!r}: use a factor above 0 (1 = real time) or None for max")
        if duration is not None and not (float(duration) > 0):
            raise ConfigError(f"SimSource.duration={duration!r}: give seconds above 0, or None for no end")
        if chunk_ms is None:
            chunk_ms = 10.0 if speed is not None else 250.0
        if not (float(chunk_ms) > 0):
            raise ConfigError(f"SimSource.chunk_ms={chunk_ms!r}: give the chunk length in ms above 0, e.g. 10")
        # validate the simulator's own arguments now (cheap: one channel), build the real one per run
        EMGSimulator(self.cls, fs, 1, seed, mains_hz, mains_uv, noise_uv)
        if not (1 <= int(channels) <= MAX_SIM_CHANNELS):
            raise ConfigError(f"SimSource.channels={channels!r}: use 1 to {MAX_SIM_CHANNELS}")
        self.fs = float(fs)
        self.channels = int(channels)
        self.seed = int(seed)
        self.speed = None if speed is None else float(speed)
        self.duration = None if duration is None else float(duration)
        self.mains_hz = mains_hz
        self.mains_uv = float(mains_uv)
        self.noise_uv = float(noise_uv)
        self.chunk_samples = max(1, round(float(chunk_ms) * self.fs / 1000.0))
        self.stream_id = name or (f"sim:{self.cls}" if self.seed == 0 else f"sim:{self.cls}-{self.seed}")
        super().__init__(uri or f"sim:{self.cls}?fs={self.fs:g}&channels={self.channels}&seed={self.seed}",
                         realtime=self.speed is not None)
        self.info = StreamInfo(
            self.stream_id,
            self.stream_id,
            self.fs,
            tuple(f"ch{i + 1}" for i in range(self.channels)),
            source=self.uri,
            meta={
                "simulated": True,
                "class": CLASS_LABELS[self.cls],
                "seed": self.seed,
                "speed": "max" if self.speed is None else self.speed,
            },
        )
        self._clock = clock
        self._sleep = sleep
        self.pacer: Pacer | None = None

    def _simulator(self) -> EMGSimulator:
        return EMGSimulator(
            self.cls, self.fs, self.channels, self.seed,
            mains_hz=self.mains_hz, mains_uv=self.mains_uv if self.mains_hz else 0.0, noise_uv=self.noise_uv,
        )

    async def _items(self) -> AsyncIterator[SourceItem]:
        # many channels take a moment to set up: keep that off the event loop
        sim = self._simulator() if self.channels <= 16 else await asyncio.to_thread(self._simulator)
        yield self.info
        fs, chunk, sid = self.fs, self.chunk_samples, self.stream_id
        total = None if self.duration is None else max(1, round(self.duration * fs))
        sent = 0
        seq = 0
        pacer: Pacer | None = None
        t_base = 0.0
        if self.speed is not None:
            t_base = self._clock()
            pacer = Pacer(chunk / fs / self.speed, clock=self._clock, sleep=self._sleep, start=t_base)
        self.pacer = pacer
        while total is None or sent < total:
            due = 1 if pacer is None else await pacer.wait_next()
            for _ in range(due):
                n = chunk if total is None else min(chunk, total - sent)
                if n <= 0:
                    break
                data = sim.generate(n)
                ts = t_base + (sent + np.arange(n, dtype=np.float64)) / fs
                yield Chunk(sid, data, ts, seq)
                seq += 1
                sent += n
            if pacer is None:
                await asyncio.sleep(0)  # at max speed, let the rest of the pipeline run between chunks
        yield StatusEvent(sid, StreamStatus.ENDED, f"simulated duration of {self.duration:g} s reached")


def from_uri(uri: str) -> SimSource:
    """Open ``sim:<normal|als|myopathy>[?fs=...&channels=...&seed=...&chunk_ms=...&speed=1|max&duration=S&name=...]``.

    Raises:
        SourceURIError: unknown class or parameter, or a parameter out of range (says what to write).
    """
    scheme, body, params = split_uri(uri)
    if scheme != "sim":
        raise SourceURIError(f"{uri!r} is not a sim: URI (e.g. {_EXAMPLE})")
    cls_name = body.strip().strip("/")
    if not cls_name:
        raise SourceURIError(f"{uri!r}: name the class to simulate: sim:normal, sim:als or sim:myopathy")
    try:
        cls = normalize_class(cls_name)
    except ConfigError:
        raise SourceURIError(
            f"{uri!r}: unknown simulated class {cls_name!r}; use one of " + ", ".join(f"sim:{c}" for c in SIM_CLASSES)
        ) from None
    p = UriParams(uri, params, _PARAMS, _EXAMPLE)
    fs = p.number("fs", 10000.0, lo=MIN_FS, hi=1_000_000.0)
    channels = p.integer("channels", 1, lo=1, hi=MAX_SIM_CHANNELS)
    seed = p.integer("seed", 0, lo=0, hi=2**63 - 1)
    chunk_ms = p.number("chunk_ms", None, lo=0.0, hi=60_000.0, lo_inclusive=False)
    speed = p.speed("speed", 1.0)
    duration = p.number("duration", None, lo=0.0, lo_inclusive=False)
    name = p.text("name", None)
    mains = p.number("mains", 0.0)
    if mains not in (0.0, 50.0, 60.0):
        raise p.error("mains", "must be 0 (no hum), 50 or 60")
    mains_uv = p.number("mains_uv", 20.0, lo=0.0)
    noise_uv = p.number("noise_uv", 5.0, lo=0.0)
    assert fs is not None and mains_uv is not None and noise_uv is not None
    try:
        return SimSource(
            cls, fs=fs, channels=channels, seed=seed, chunk_ms=chunk_ms, speed=speed, duration=duration, name=name,
            mains_hz=mains or None, mains_uv=mains_uv, noise_uv=noise_uv, uri=uri,
        )
    except ConfigError as exc:
        raise SourceURIError(f"{uri!r}: {exc}") from exc
