"""LSL ingest latency: from an outlet's ``push_chunk`` to the samples in a ring buffer, through the ``lsl:`` source."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import numpy as np

from ..errors import ConfigError, SourceError
from ..types import Chunk, StreamInfo
from .executor import LSLExecutor, import_pylsl
from .source import _release_blocking, from_uri


async def measure_ingest_latency(
    n_chunks: int = 500,
    fs: float = 10000.0,
    n_channels: int = 4,
    chunk_samples: int = 100,
    poll_ms: float = 1.0,
    warmup_chunks: int = 20,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Latency that LSL ingest adds: from ``push_chunk`` on an outlet to the samples being in a RingBuffer.

    An outlet in this process pushes ``n_chunks`` chunks of ``chunk_samples`` samples at the real-time pace of
    ``fs`` (float32, ``n_channels`` EMG channels plus a sample counter). An ``lsl:`` source reads them, and each
    Chunk is written into a :class:`streamemg.buffer.RingBuffer` as the pipeline does. For every pushed chunk,
    the latency is the time from just before its push to the moment its last sample is in the ring buffer
    (monotonic clock, ms). LSL traffic stays on this machine (:func:`streamemg.lsl.config.configure_machine_scope`
    unless LSLAPICFG is already set).

    Returns:
        dict with ``p50_ms``, ``p99_ms``, ``max_ms``, ``mean_ms``, ``n`` (chunks measured), ``lost`` and
        ``duplicated`` (samples, from the counter), ``poll_ms``, ``fs``, ``chunk_samples``, ``n_channels`` and a
        ``what`` description.

    Raises:
        LSLUnavailableError: liblsl cannot be loaded.
        SourceError: the stream was not seen within ``timeout_s``.
    """
    from ..buffer import RingBuffer
    from .config import configure_machine_scope

    if n_chunks < 1 or chunk_samples < 1 or n_channels < 1 or not fs > 0:
        raise ConfigError("measure_ingest_latency: n_chunks, chunk_samples, n_channels and fs must be positive")
    configure_machine_scope()
    pylsl = import_pylsl()
    sid = f"streamemg-bench-{uuid.uuid4().hex[:10]}"
    total = n_chunks + warmup_chunks
    push_times = np.full(total, np.nan)
    done_times = np.full(total, np.nan)
    period = chunk_samples / fs
    ring = RingBuffer(max(4 * chunk_samples, int(fs)), n_channels + 1)
    counts = np.zeros(total * chunk_samples, dtype=np.int32)

    def make_outlet() -> Any:
        info = pylsl.StreamInfo(sid, "EMGBench", n_channels + 1, fs, pylsl.cf_float32, sid)
        chans = info.desc().append_child("channels")
        for i in range(n_channels + 1):
            ch = chans.append_child("channel")
            ch.append_child_value("label", f"EMG{i + 1}" if i < n_channels else "counter")
            ch.append_child_value("unit", "microvolts" if i < n_channels else "samples")
            ch.append_child_value("type", "EMG" if i < n_channels else "MISC")
        return pylsl.StreamOutlet(info, chunk_size=0, max_buffered=10)

    executor = LSLExecutor("lsl-bench", 1)
    holder: list[Any] = [await executor.call(make_outlet, timeout_s=10.0, what="creating the benchmark outlet")]
    rng = np.random.default_rng(0)
    offsets = rng.uniform(0.0, min(poll_ms / 1000.0, period / 2), size=total)
    block = rng.normal(0.0, 50.0, size=(chunk_samples, n_channels + 1)).astype(np.float32)
    source = from_uri(f"lsl:source_id={sid}?channels=all&poll_ms={poll_ms:g}")
    t_start = time.perf_counter()
    try:
        async with source:
            # wait for the announcement, then stream
            first = await asyncio.wait_for(source.__anext__(), timeout_s)
            if not isinstance(first, StreamInfo):
                raise SourceError(f"benchmark stream: expected its StreamInfo first, got {first!r}")
            await asyncio.sleep(0.2)  # inlet subscribed and clock offset primed before the first push

            async def produce() -> None:
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                outlet = holder[0]
                for k in range(total):
                    # a random offset within one poll interval, so that pushes sample every phase of the poll
                    delay = t0 + k * period + offsets[k] - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    block[:, -1] = np.arange(k * chunk_samples, (k + 1) * chunk_samples, dtype=np.float32)
                    push_times[k] = time.perf_counter()
                    outlet.push_chunk(block)

            async def consume() -> None:
                seen = 0
                while seen < total * chunk_samples:
                    item = await source.__anext__()
                    if not isinstance(item, Chunk):
                        continue
                    ring.write(item.data)
                    now = time.perf_counter()
                    counter = item.data[:, -1].astype(np.int64)
                    valid = counter[(counter >= 0) & (counter < counts.size)]
                    np.add.at(counts, valid, 1)
                    seen = int(np.count_nonzero(counts))
                    ends = valid[(valid + 1) % chunk_samples == 0] // chunk_samples
                    done_times[ends] = np.where(np.isnan(done_times[ends]), now, done_times[ends])

            consumer = asyncio.create_task(consume(), name="lsl-bench-consume")
            try:
                await produce()
                remaining = max(1.0, timeout_s - (time.perf_counter() - t_start))
                await asyncio.wait_for(asyncio.shield(consumer), remaining)
            except TimeoutError:
                pass
            finally:
                consumer.cancel()
                await asyncio.gather(consumer, return_exceptions=True)
    finally:
        try:
            await executor.call(_release_blocking, holder, timeout_s=5.0, what="closing the benchmark outlet")
        finally:
            executor.close()
    lat = (done_times - push_times)[warmup_chunks:] * 1000.0
    lat = lat[np.isfinite(lat)]
    if lat.size == 0:
        raise SourceError("benchmark: no chunk arrived through LSL; is loopback networking available?")
    return {
        "what": "LSL ingest: outlet push_chunk -> samples in the RingBuffer (lsl: source, pulls on the event loop)",
        "n": int(lat.size),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "mean_ms": float(lat.mean()),
        "lost": int(np.count_nonzero(counts == 0)),
        "duplicated": int(np.count_nonzero(counts > 1)),
        "poll_ms": float(poll_ms),
        "fs": float(fs),
        "chunk_samples": int(chunk_samples),
        "n_channels": int(n_channels),
    }
