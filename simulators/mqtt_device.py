"""MQTT edge devices: synthetic or replayed needle EMG published with the streamemg wire protocol v1.

``streamemg simulate mqtt --broker mqtt://127.0.0.1:1883 --devices 10 --class mixed --fs 10000
[--format binary|json] [--sample-format float32|int16] [--replay FILE] [--duration S] [--chunk-ms 20]``

Each simulated device behaves like a small microcontroller with an EMG front end:

* its own MQTT connection, with a last will: ``emg/<device>/status`` = ``offline`` (retained, QoS 1), so a
  device that dies is reported by the broker;
* on every (re)connection it publishes ``emg/<device>/meta`` (retained JSON: rate, channel labels, device
  facts) and ``emg/<device>/status`` = ``online`` (retained);
* it samples at ``fs`` on its own clock and publishes one data message per ``chunk_ms`` on
  ``emg/<device>/data`` (binary float32 or int16, or JSON), with ``seq`` +1 per message and ``t0`` = the device
  time (s since the device started) of the first sample. Pacing targets absolute deadlines
  (:class:`simulators.pacing.Pacer`), so the rate stays exact over hours;
* when the broker goes away it keeps sampling (those messages are lost, as on a real device: the receiver
  sees a seq gap), reconnects with exponential backoff and carries on;
* on a clean stop it publishes ``offline`` itself.

Signals come from :class:`simulators.synth.EMGSimulator` (``--class mixed`` cycles normal, ALS, myopathy over
the devices) or, with ``--replay``, from any recording :func:`streamemg.clinical.recordings.read_recording` reads,
looped, each device starting at a different offset.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

from simulators.common import LoopedRecording, add_signal_arguments
from streamemg.errors import BrokerError, ConfigError, DataFormatError, SourceURIError
from streamemg.mqtt.client import (
    MqttConnection,
    backoff_delays,
    connect_within,
    disconnect_quietly,
    parse_broker_uri,
    publish_within,
)
from streamemg.mqtt.protocol import (
    DEVICE_PREFIX,
    OFFLINE,
    ONLINE,
    encode_binary,
    encode_json,
    encode_meta,
    is_valid_device_id,
    quantize_int16,
    topic,
)

log = logging.getLogger(__name__)

FORMATS = ("binary", "json")
#: longest wait for one data publish (QoS 1: its PUBACK) before the link is taken for dead
_PUBLISH_TIMEOUT_S = 1.0
SAMPLE_FORMATS = ("float32", "int16")


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """What the simulated devices publish.

    Attributes:
        broker: ``mqtt[s]://[user[:password]@]host[:port]`` of the broker.
        devices: number of devices (1..10000).
        cls: ``mixed`` (devices cycle normal, als, myopathy) or one class (normal, als, myopathy, aliases).
        fs: sampling rate, Hz; None = 10000 (synthetic) or the recording's rate (replay).
        channels: EMG channels per device (synthetic; a replay uses the recording's channels).
        fmt: data message form: ``binary`` or ``json``.
        sample_format: binary sample type: ``float32`` (µV, scale 1) or ``int16`` (counts of ``scale`` µV).
        scale: µV per int16 count (default 0.5: ±16 mV range).
        replay: recording to play (looped) instead of synthetic EMG.
        duration: stop after this many seconds of samples; None = until interrupted.
        chunk_ms: milliseconds of samples per data message.
        prefix: first topic level (default ``emg``).
        device_prefix: device ids are ``<device_prefix><n>``, n = 01, 02, ...
        seed: synthetic EMG seed of the first device (device i uses seed + i).
        qos: QoS of data messages (0 or 1; meta and status always use 1).
    """

    broker: str = "mqtt://127.0.0.1:1883"
    devices: int = 3
    cls: str = "mixed"
    fs: float | None = None
    channels: int = 1
    fmt: str = "binary"
    sample_format: str = "float32"
    scale: float = 0.5
    replay: Path | None = None
    duration: float | None = None
    chunk_ms: float = 20.0
    prefix: str = DEVICE_PREFIX
    device_prefix: str = "dev"
    seed: int = 0
    qos: int = 0
    connection: MqttConnection = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            connection, path, params = parse_broker_uri(self.broker, "broker")
        except SourceURIError as exc:
            raise ConfigError(f"--broker: {exc}") from None
        if path.strip("/") or params:
            raise ConfigError(f"--broker {self.broker!r}: give only mqtt://HOST[:PORT] (no topic, no options)")
        object.__setattr__(self, "connection", connection)
        if isinstance(self.devices, bool) or not 1 <= self.devices <= 10000:
            raise ConfigError(f"--devices {self.devices!r}: give 1..10000 devices")
        if self.fs is not None and not (math.isfinite(self.fs) and self.fs > 0):
            raise ConfigError(f"--fs {self.fs!r}: give the sampling rate in Hz, e.g. 10000")
        if isinstance(self.channels, bool) or not 1 <= self.channels <= 256:
            raise ConfigError(f"--channels {self.channels!r}: give 1..256 channels")
        if self.fmt not in FORMATS:
            raise ConfigError(f"--format {self.fmt!r}: use binary or json")
        if self.sample_format not in SAMPLE_FORMATS:
            raise ConfigError(f"--sample-format {self.sample_format!r}: use float32 or int16")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"--scale {self.scale!r}: give the µV per int16 count, e.g. 0.5")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise ConfigError(f"--duration {self.duration!r}: give a positive number of seconds")
        if not (math.isfinite(self.chunk_ms) and 0.1 <= self.chunk_ms <= 10000):
            raise ConfigError(f"--chunk-ms {self.chunk_ms!r}: give 0.1..10000 ms (default 20)")
        if not all(is_valid_device_id(level) for level in self.prefix.split("/")):
            raise ConfigError(f"--prefix {self.prefix!r}: use topic levels of A-Za-z0-9_- separated by '/'")
        if not is_valid_device_id(self.device_ids()[-1]):
            raise ConfigError(f"--device-prefix {self.device_prefix!r}: ids must match [A-Za-z0-9_-]{{1,64}}")
        if self.qos not in (0, 1):
            raise ConfigError(f"--qos {self.qos!r}: use 0 or 1")
        if isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"--seed {self.seed!r}: give a whole number >= 0")

    def device_ids(self) -> list[str]:
        """``<device_prefix>01``, ``02``, ... (at least two digits)."""
        width = max(2, len(str(self.devices)))
        return [f"{self.device_prefix}{i + 1:0{width}d}" for i in range(self.devices)]

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FleetSettings:
        return cls(
            broker=args.broker,
            devices=args.devices,
            cls=args.cls,
            fs=args.fs,
            channels=args.channels,
            fmt=args.format,
            sample_format=args.sample_format,
            scale=args.scale,
            replay=Path(args.replay) if args.replay else None,
            duration=args.duration,
            chunk_ms=args.chunk_ms,
            prefix=args.prefix,
            device_prefix=args.device_prefix,
            seed=args.seed,
            qos=args.qos,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``streamemg simulate mqtt`` options."""
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL (default mqtt://127.0.0.1:1883)")
    parser.add_argument("--devices", type=int, default=3, help="number of devices (default 3)")
    add_signal_arguments(
        parser, default_class="mixed",
        class_help="mixed (default: devices cycle normal, als, myopathy) or one of normal, als, myopathy",
        chunk_ms=20.0, seed_help="synthetic EMG seed (device i uses seed + i)",
    )
    parser.add_argument("--format", choices=FORMATS, default="binary", help="data message form (default binary)")
    parser.add_argument(
        "--sample-format", choices=SAMPLE_FORMATS, default="float32",
        help="binary sample type (default float32 µV; int16 = counts of --scale µV)",
    )
    parser.add_argument("--scale", type=float, default=0.5, help="µV per int16 count (default 0.5)")
    parser.add_argument("--prefix", default=DEVICE_PREFIX, help="first topic level (default emg)")
    parser.add_argument("--device-prefix", default="dev", help="device ids are <prefix>01, <prefix>02, ...")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=0, help="QoS of data messages (default 0)")


@dataclass(slots=True)
class DeviceStats:
    """What one simulated device did."""

    device: str
    sent: int = 0  # data messages handed to the broker
    lost: int = 0  # data messages produced while disconnected (seq advanced, nothing sent)
    samples: int = 0  # samples (per channel) produced
    reconnects: int = 0


class _Device:
    """One device: its generator, its connection (re-established in the background) and its counters."""

    def __init__(
        self,
        settings: FleetSettings,
        device: str,
        gen: Any,
        fs: float,
        labels: tuple[str, ...],
        info: dict[str, Any],
    ) -> None:
        self.settings = settings
        self.device = device
        self.gen = gen
        self.fs = fs
        self.labels = labels
        self.info = info
        self.stats = DeviceStats(device)
        self.client: aiomqtt.Client | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self.data_topic = topic(device, "data", settings.prefix)
        self.status_topic = topic(device, "status", settings.prefix)
        self.meta_topic = topic(device, "meta", settings.prefix)

    async def connect(self) -> None:
        """Connect with the last will set, then publish retained meta and ``online``."""
        will = aiomqtt.Will(self.status_topic, OFFLINE.encode(), qos=1, retain=True)
        conn = self.settings.connection
        client = await conn.client(client_id=f"streamemg-sim-{self.device}", will=will)
        await connect_within(client, conn.timeout_s + 1.0)
        try:
            meta = encode_meta(fs=self.fs, channels=self.labels, device=self.info)
            await publish_within(client, self.meta_topic, meta, qos=1, retain=True, limit_s=conn.timeout_s)
            await publish_within(client, self.status_topic, ONLINE.encode(), qos=1, retain=True, limit_s=conn.timeout_s)
        except aiomqtt.MqttError:
            await disconnect_quietly(client, 1.0)
            raise
        self.client = client

    def lost_connection(self, exc: BaseException) -> None:
        client, self.client = self.client, None
        if client is not None:
            log.warning("device %s: broker connection lost (%s); reconnecting", self.device, exc)
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(
                self._reconnect_loop(client), name=f"reconnect:{self.device}"
            )

    async def _reconnect_loop(self, old: aiomqtt.Client | None) -> None:
        if old is not None:
            await disconnect_quietly(old, 1.0)
        for delay in backoff_delays(0.25, 5.0):
            await asyncio.sleep(delay)
            try:
                await self.connect()
            except (aiomqtt.MqttError, OSError):
                continue
            self.stats.reconnects += 1
            log.warning("device %s: reconnected", self.device)
            return

    async def publish(self, payload: bytes) -> None:
        client = self.client
        if client is None:
            self.stats.lost += 1
            return
        try:
            # a short wait: a dead link must not stall the sampling loop (the pacer catches up afterwards)
            await publish_within(client, self.data_topic, payload, qos=self.settings.qos, limit_s=_PUBLISH_TIMEOUT_S)
            self.stats.sent += 1
        except aiomqtt.MqttError as exc:
            self.stats.lost += 1
            self.lost_connection(exc)

    async def close(self) -> None:
        """Stop reconnecting; publish ``offline`` (retained) and disconnect cleanly."""
        task, self._reconnect = self._reconnect, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await publish_within(client, self.status_topic, OFFLINE.encode(), qos=1, retain=True, limit_s=2.0)
            await disconnect_quietly(client, 2.0)

    def encode(self, samples: np.ndarray, seq: int, t0: float) -> bytes:
        s = self.settings
        if s.fmt == "json":
            return encode_json(samples, seq=seq, t0=t0, fs=self.fs)
        if s.sample_format == "int16":
            return encode_binary(quantize_int16(samples, s.scale), seq=seq, t0=t0, fs=self.fs, scale=s.scale)
        return encode_binary(samples, seq=seq, t0=t0, fs=self.fs)

    async def run(self) -> None:
        """Sample, encode and publish on absolute deadlines until the duration is reached."""
        from .pacing import Pacer

        chunk_s = self.settings.chunk_ms / 1000.0
        fs = self.fs
        total = None if self.settings.duration is None else max(1, round(self.settings.duration * fs))
        pacer = Pacer(chunk_s)
        pacer.start()
        sent_samples = 0
        seq = 0
        while total is None or sent_samples < total:
            await pacer.wait_next()
            due = math.floor(pacer.ticks * chunk_s * fs + 1e-9) - sent_samples
            if total is not None:
                due = min(due, total - sent_samples)
            if due <= 0:
                continue
            samples = self.gen.generate(due)
            await self.publish(self.encode(samples, seq, sent_samples / fs))
            seq += 1
            sent_samples += due
            self.stats.samples = sent_samples


async def run_fleet(
    settings: FleetSettings,
    ready: asyncio.Event | None = None,
    quiet: bool = False,
    on_stats: Callable[[list[DeviceStats]], None] | None = None,
) -> list[DeviceStats]:
    """Run the simulated devices until ``settings.duration`` (or until cancelled).

    Args:
        settings: what to simulate.
        ready: set once every device is connected and has published meta and ``online``.
        quiet: no banner on stderr.
        on_stats: called with the live per-device stats objects once they exist (for tests and monitors).

    Returns:
        Per-device statistics.

    Raises:
        BrokerError: a device could not connect at start; ConfigError, DataFormatError: bad settings or file.
    """
    ids = settings.device_ids()
    fs, labels, gens, infos, what = await _generators(settings, ids)
    devices = [_Device(settings, d, g, fs, labels, info) for d, g, info in zip(ids, gens, infos, strict=True)]
    stats = [d.stats for d in devices]
    if on_stats is not None:
        on_stats(stats)
    try:
        try:
            await asyncio.gather(*(d.connect() for d in devices))
        except (aiomqtt.MqttError, OSError) as exc:
            raise BrokerError(
                f"simulated devices could not connect to {settings.connection.display()}: {exc}. Is the broker "
                "running? (`streamemg broker` starts one.)"
            ) from exc
        if not quiet:
            print(
                f"{len(devices)} simulated device(s) ({', '.join(ids[:4])}{', ...' if len(ids) > 4 else ''}) on "
                f"{settings.connection.display()}: {what}, {len(labels)} channel(s) at {fs:g} Hz, "
                f"{settings.fmt}{'/' + settings.sample_format if settings.fmt == 'binary' else ''}, "
                f"{settings.chunk_ms:g} ms per message, topics {settings.prefix}/<device>/data|meta|status. "
                "Ctrl-C to stop.",
                file=sys.stderr,
                flush=True,
            )
        if ready is not None:
            ready.set()
        async with asyncio.TaskGroup() as tg:
            for d in devices:
                tg.create_task(d.run(), name=f"device:{d.device}")
    finally:
        await asyncio.shield(asyncio.gather(*(d.close() for d in devices), return_exceptions=True))
    return stats


async def _generators(
    settings: FleetSettings, ids: list[str]
) -> tuple[float, tuple[str, ...], list[Any], list[dict[str, Any]], str]:
    """(fs, channel labels, one sample generator per device, device facts, description)."""
    base: dict[str, Any] = {"model": "streamemg simulated edge device", "firmware": "sim-1", "format": settings.fmt}
    gens: list[Any] = []
    infos: list[dict[str, Any]] = []
    if settings.replay is not None:
        from streamemg.clinical.recordings import read_recording

        rec = await asyncio.to_thread(read_recording, settings.replay, settings.fs)
        n = rec.data.shape[0]
        gens.extend(LoopedRecording(rec.data, i * n // len(ids)) for i in range(len(ids)))
        infos.extend({**base, "replay": Path(str(rec.path or settings.replay)).name} for _ in ids)
        return float(rec.fs), tuple(rec.channels), gens, infos, f"replay of {settings.replay} (looped)"
    from .synth import EMGSimulator, pick_class

    fs = float(settings.fs) if settings.fs is not None else 10000.0
    for i in range(len(ids)):
        gen = EMGSimulator(pick_class(settings.cls, i), fs, settings.channels, settings.seed + i)
        gens.append(gen)
        infos.append({**base, "simulated_class": gen.label, "seed": settings.seed + i})
    labels = tuple(f"EMG{i + 1}" for i in range(settings.channels))
    return fs, labels, gens, infos, f"synthetic EMG ({settings.cls})"


async def main(args: argparse.Namespace) -> int:
    """``streamemg simulate mqtt``: 0 when the duration was reached (or on Ctrl-C), 2 on a setup error."""
    try:
        settings = FleetSettings.from_args(args)
        stats = await run_fleet(settings)
    except (ConfigError, DataFormatError, BrokerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sent = sum(s.sent for s in stats)
    lost = sum(s.lost for s in stats)
    print(f"done: {sent} data messages sent, {lost} lost while disconnected", file=sys.stderr)
    return 0
