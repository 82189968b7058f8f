"""MQTT ingest throughput: the source's rate against the raw aiomqtt receive rate on the same broker."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import BrokerError, ConfigError
from ..types import Chunk, StreamInfo
from .client import MqttConnection, parse_broker_uri
from .source import MqttSource, MqttSourceSettings


async def measure_ingest_throughput(
    broker_url: str | None = None,
    *,
    devices: int = 10,
    messages_per_device: int = 2000,
    samples_per_message: int = 40,
    channels: int = 1,
    fs: float = 10000.0,
    encoding: str = "binary",
    rounds: int = 3,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """MQTT ingest throughput vs the raw aiomqtt receive rate of the same messages on the same broker.

    A publisher in a separate process floods the broker with ``devices x messages_per_device`` pre-encoded
    data messages (QoS 0). Each round sends them twice: first to a bare aiomqtt subscriber that only counts
    the messages (the raw receive rate), then to an :class:`MqttSource` whose Chunks are written into one
    :class:`~streamemg.buffer.RingBuffer` per stream (the ingest rate: decode, validation, seq tracking,
    Chunk, ring buffer). Rates are measured at the receiver from its first to its last message; the
    publisher is several times faster than either receiver, so the receivers are the bottleneck. Rounds
    alternate the two phases, so a busy machine disturbs both alike; the best round of each is reported
    (the least disturbed), with the per-round numbers.

    Args:
        broker_url: ``mqtt://host:port``; None starts an :class:`~streamemg.mqtt.broker.EmbeddedBroker`.
        devices, messages_per_device: the message set (unique topics per call).
        samples_per_message, channels, fs: the size of each message.
        encoding: ``"binary"`` (float32), ``"int16"`` or ``"json"``.
        rounds: raw/ingest pairs to run (>= 1).
        timeout_s: give up waiting for messages after this long per phase.

    Returns:
        dict with ``raw_msgs_per_s``, ``ingest_msgs_per_s``, ``ingest_samples_per_s`` (samples per channel),
        ``ratio`` (best ingest / best raw; target >= 0.8), ``ratio_median`` (median of the per-round ratios),
        ``cpu_ratio`` (the same from messages per CPU-second of the receiving thread: robust on a shared
        machine, where other processes steal wall time), ``complete`` (every message arrived in every
        phase), ``rounds`` (per-round details) and the source counters of the last round.
    """
    from .broker import EmbeddedBroker

    if rounds < 1:
        raise ConfigError(f"rounds={rounds!r}: give at least 1")
    if broker_url is None:
        async with EmbeddedBroker() as broker:
            return await measure_ingest_throughput(
                broker.url, devices=devices, messages_per_device=messages_per_device,
                samples_per_message=samples_per_message, channels=channels, fs=fs, encoding=encoding,
                rounds=rounds, timeout_s=timeout_s,
            )
    connection, _, _ = parse_broker_uri(broker_url, "broker")
    total = devices * messages_per_device
    per_round: list[dict[str, Any]] = []
    counters: dict[str, Any] = {}
    for _ in range(rounds):
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        payloads = _bench_payloads(prefix, devices, messages_per_device, samples_per_message, channels, fs, encoding)
        blob_path = await asyncio.to_thread(_write_blob, payloads)
        try:
            raw = await _bench_raw(connection, prefix, blob_path, total, timeout_s)
            ingest = await _bench_ingest(connection, prefix, blob_path, total, timeout_s)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(blob_path)
        counters = ingest.pop("counters")
        raw_rate, raw_cpu = _rate(raw, "seconds"), _rate(raw, "cpu_seconds")
        ingest_rate, ingest_cpu = _rate(ingest, "seconds"), _rate(ingest, "cpu_seconds")
        per_round.append({
            "raw_received": raw["received"],
            "raw_msgs_per_s": raw_rate,
            "raw_msgs_per_cpu_s": raw_cpu,
            "ingest_received": ingest["received"],
            "ingest_msgs_per_s": ingest_rate,
            "ingest_msgs_per_cpu_s": ingest_cpu,
            "ratio": ingest_rate / raw_rate if raw_rate > 0 else math.nan,
            "cpu_ratio": ingest_cpu / raw_cpu if raw_cpu > 0 else math.nan,
            "publisher_msgs_per_s": min(raw["publisher_rate"], ingest["publisher_rate"]),
        })
    best_raw = _best(r["raw_msgs_per_s"] for r in per_round)
    best_ingest = _best(r["ingest_msgs_per_s"] for r in per_round)
    best_raw_cpu = _best(r["raw_msgs_per_cpu_s"] for r in per_round)
    best_ingest_cpu = _best(r["ingest_msgs_per_cpu_s"] for r in per_round)
    ratios = sorted(r["ratio"] for r in per_round)
    return {
        "broker": connection.display(),
        "encoding": encoding,
        "messages": total,
        "samples_per_message": samples_per_message,
        "channels": channels,
        "raw_msgs_per_s": best_raw,
        "ingest_msgs_per_s": best_ingest,
        "ingest_samples_per_s": best_ingest * samples_per_message,
        "ratio": best_ingest / best_raw if best_raw > 0 else math.nan,
        "ratio_median": ratios[len(ratios) // 2],
        "raw_msgs_per_cpu_s": best_raw_cpu,
        "ingest_msgs_per_cpu_s": best_ingest_cpu,
        "cpu_ratio": best_ingest_cpu / best_raw_cpu if best_raw_cpu > 0 else math.nan,
        "complete": all(r["raw_received"] == total and r["ingest_received"] == total for r in per_round),
        "rounds": per_round,
        "source_counters": counters,
    }


def _rate(phase: dict[str, Any], key: str) -> float:
    """Messages per second after the first one (NaN when not measurable)."""
    seconds = phase[key]
    return (phase["received"] - 1) / seconds if seconds > 0 and phase["received"] > 1 else math.nan


def _best(values: Iterator[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else math.nan


def _bench_payloads(
    prefix: str, devices: int, per_device: int, n: int, c: int, fs: float, encoding: str
) -> list[tuple[str, bytes]]:
    from .protocol import encode_binary, encode_json, quantize_int16

    rng = np.random.default_rng(0)
    block = (rng.standard_normal((n, c)) * 50).astype(np.float32)
    out: list[tuple[str, bytes]] = []
    for k in range(per_device):
        for d in range(devices):
            t0 = k * n / fs
            if encoding == "json":
                body = encode_json(block, seq=k, t0=t0, fs=fs)
            elif encoding == "int16":
                body = encode_binary(quantize_int16(block, 0.5), seq=k, t0=t0, fs=fs, scale=0.5)
            elif encoding == "binary":
                body = encode_binary(block, seq=k, t0=t0, fs=fs)
            else:
                raise ConfigError(f"encoding={encoding!r}: use binary, int16 or json")
            out.append((f"{prefix}/d{d:03d}/data", body))
    return out


def _write_blob(payloads: list[tuple[str, bytes]]) -> str:
    import tempfile

    fd, path = tempfile.mkstemp(prefix="streamemg-bench-", suffix=".bin")
    with os.fdopen(fd, "wb") as f:
        for name, body in payloads:
            topic = name.encode()
            f.write(len(topic).to_bytes(2, "little") + topic + len(body).to_bytes(4, "little") + body)
    return path


_PUBLISHER = r"""
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
user, password = (sys.argv[4] or None), (sys.argv[5] or None)
msgs = []
with open(path, "rb") as f:
    blob = f.read()
i = 0
while i < len(blob):
    tl = int.from_bytes(blob[i:i+2], "little"); topic = blob[i+2:i+2+tl].decode(); i += 2 + tl
    bl = int.from_bytes(blob[i:i+4], "little"); msgs.append((topic, blob[i+4:i+4+bl])); i += 4 + bl
c = mqtt.Client(CallbackAPIVersion.VERSION2)
if user:
    c.username_pw_set(user, password)
c.connect(host, port, 30)
c.loop_start()
t = time.perf_counter()
for topic, body in msgs:
    info = c.publish(topic, body, qos=0)
    while info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
        time.sleep(0.001); info = c.publish(topic, body, qos=0)
while c.want_write():
    time.sleep(0.001)
dt = time.perf_counter() - t
c.disconnect(); c.loop_stop()
print(len(msgs) / dt if dt > 0 else 0.0)
"""


async def _publish_blob(connection: MqttConnection, blob_path: str) -> asyncio.subprocess.Process:
    import sys

    if connection.tls is not None:
        raise ConfigError("the ingest benchmark needs a plain mqtt:// broker")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PUBLISHER, connection.host, str(connection.port), blob_path,
        connection.username or "", connection.password or "",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _finish_publisher(proc: asyncio.subprocess.Process, timeout_s: float) -> float:
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BrokerError("benchmark publisher did not finish in time") from None
    if proc.returncode != 0:
        raise BrokerError(f"benchmark publisher failed: {err.decode(errors='replace')[-500:]}")
    try:
        return float(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("nan")


class _Progress:
    """Receiver-side progress of one benchmark phase."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.received = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu_first = 0.0
        self.cpu_last = math.nan

    def tick(self) -> None:
        self.received += 1
        self.last = time.perf_counter()
        if self.received == 1:
            self.first = self.last
            self.cpu_first = time.thread_time()
        else:  # every message (0.1 µs): a round that lost messages (QoS 0 on a busy machine) still has its CPU rate
            self.cpu_last = time.thread_time()

    def result(self) -> dict[str, Any]:
        """Received messages, wall seconds and receiving-thread CPU seconds (first to last message received)."""
        return {
            "received": self.received,
            "seconds": self.last - self.first,
            "cpu_seconds": self.cpu_last - self.cpu_first,
        }


async def _watch(task: asyncio.Task[None], progress: _Progress, timeout_s: float, idle_s: float = 2.0) -> None:
    """Wait for ``task``; cancel it after ``timeout_s`` or when no message came for ``idle_s`` (QoS 0 loss)."""
    deadline = time.perf_counter() + timeout_s
    seen = -1
    seen_at = time.perf_counter()
    while not task.done():
        await asyncio.wait({task}, timeout=0.25)
        now = time.perf_counter()
        if progress.received != seen:
            seen, seen_at = progress.received, now
        if now > deadline or (progress.received and now - seen_at > idle_s):
            task.cancel()
            break
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _bench_raw(
    connection: MqttConnection, prefix: str, blob_path: str, total: int, timeout_s: float
) -> dict[str, Any]:
    client = await connection.client()
    progress = _Progress(total)

    async def consume() -> None:
        async for message in client.messages:
            _ = len(message.payload)
            progress.tick()
            if progress.received >= total:
                return

    async with client:
        await client.subscribe(f"{prefix}/+/data", 0)
        proc = await _publish_blob(connection, blob_path)
        await _watch(asyncio.create_task(consume(), name="bench-raw"), progress, timeout_s)
        rate = await _finish_publisher(proc, timeout_s)
    return {**progress.result(), "publisher_rate": rate}


async def _bench_ingest(
    connection: MqttConnection, prefix: str, blob_path: str, total: int, timeout_s: float
) -> dict[str, Any]:
    from ..buffer import RingBuffer

    settings = MqttSourceSettings(connection=connection, topic_filter=f"{prefix}/+", qos=0, queue_size=max(1, total))
    source = MqttSource(settings)
    buffers: dict[str, RingBuffer] = {}
    progress = _Progress(total)

    async def consume() -> None:
        async for item in source:
            if isinstance(item, Chunk):
                buffers[item.stream_id].write(item.data)
                progress.tick()
                if progress.received >= total:
                    return
            elif isinstance(item, StreamInfo):
                buffers[item.stream_id] = RingBuffer(max(4096, round(item.fs * 2)), item.n_channels)

    async with source:
        proc = await _publish_blob(connection, blob_path)
        await _watch(asyncio.create_task(consume(), name="bench-ingest"), progress, timeout_s)
        rate = await _finish_publisher(proc, timeout_s)
    counters: dict[str, Any] = source.counters.as_dict()
    counters["ring_samples"] = sum(b.total_written for b in buffers.values())
    return {**progress.result(), "publisher_rate": rate, "counters": counters}
