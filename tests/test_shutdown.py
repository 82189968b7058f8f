"""Graceful shutdown: SIGINT/SIGTERM drain queues, flush every output and the recorder, and exit within 2 s."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

import numpy as np
import pytest

from simulators.synth import EMGSimulator
from streamemg.engine import EngineSettings
from streamemg.model import untrained_bundle
from streamemg.pipeline import Pipeline
from streamemg.record.format import DATA_FILE, INDEX_FILE
from streamemg.record.reader import RecordingReader
from streamemg.record.writer import RecordSink
from streamemg.sinks.memory import MemorySink
from streamemg.sources.memory import MemorySource
from streamemg.types import Chunk, Estimate, StreamInfo

#: The promise: from the signal to the end of the process.
EXIT_LIMIT_S = 2.0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_flushes_and_exits_within_2_s(sig: signal.Signals, tmp_path: Path) -> None:
    directory, jsonl, stdout = tmp_path / "rec", tmp_path / "est.jsonl", tmp_path / "stdout.jsonl"
    cmd = [sys.executable, "-m", "streamemg", "run", "--source", "sim:als", "--source", "sim:normal",
           "--output", f"record:{directory}", "--output", f"jsonl:{jsonl}", "--no-dashboard"]
    with open(stdout, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.PIPE,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        # wait until estimates of both streams flow (stdout is flushed per line)
        deadline = time.monotonic() + 120
        while True:
            text = stdout.read_text() if stdout.exists() else ""
            if '"sim:als"' in text and '"sim:normal"' in text:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "no estimates within 120 s"
            time.sleep(0.05)
        t_signal = time.monotonic()
        proc.send_signal(sig)
        try:
            proc.wait(timeout=EXIT_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"streamemg did not exit within {EXIT_LIMIT_S} s of {sig.name}")
        exit_s = time.monotonic() - t_signal
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode == 0, stderr[-2000:]
    assert exit_s < EXIT_LIMIT_S

    # the JSON-lines file: complete lines only, every one parseable
    raw = jsonl.read_text()
    assert raw.endswith("\n")
    lines = [json.loads(line) for line in raw.splitlines()]
    assert {d["stream"] for d in lines} == {"sim:als", "sim:normal"}
    # stdout too
    assert all(json.loads(line) for line in stdout.read_text().splitlines())

    # the recording: closed cleanly, readable, the same estimates as the JSON lines
    assert (directory / INDEX_FILE).exists()
    reader = RecordingReader(directory)
    summary = reader.summary()
    assert summary["complete"] and summary["torn_bytes"] == 0 and summary["corrupt_records"] == 0
    recorded = [(e.stream_id, e.index) for e in reader.estimates()]
    assert recorded == [(d["stream"], d["index"]) for d in lines]
    for sid in ("sim:als", "sim:normal"):
        chunks = list(reader.chunks(sid))
        assert [c.chunk.seq for c in chunks] == list(range(len(chunks)))  # every chunk, none missing
        assert summary["streams"][sid]["samples"] >= 10000  # at least the one-second window of the first estimate
    index = json.loads((directory / INDEX_FILE).read_text())
    assert index["bytes"] == (directory / DATA_FILE).stat().st_size


# ---------------------------------------------------------------------------------------------- in process


@pytest.fixture(scope="module")
def bundle():
    return untrained_bundle(seed=0)


async def _live(stream_id: str, seed: int) -> AsyncIterator[object]:
    """A never-ending live stream: 20 ms chunks at 8 kHz, paced at real time."""
    sim = EMGSimulator("als", 8000.0, seed=seed)
    yield StreamInfo(stream_id, stream_id, 8000.0, ("c",))
    loop = asyncio.get_running_loop()
    start, i = loop.time(), 0
    while True:
        yield Chunk(stream_id, sim.generate(160), (i * 160 + np.arange(160)) / 8000.0, i)
        i += 1
        await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))


async def test_stop_drains_every_window_and_flushes_every_sink(bundle, tmp_path: Path) -> None:
    mem = MemorySink()
    rec = RecordSink(tmp_path / "rec")
    p = Pipeline([MemorySource(_live(f"s{i}", i), realtime=True) for i in range(3)], [mem, rec], bundle=bundle,
                 engine_settings=EngineSettings(device="cpu", max_wait_ms=50.0, warmup=False))
    task = asyncio.create_task(p.run())
    for _ in range(600):  # until estimates flow
        await asyncio.sleep(0.01)
        if len(mem.estimates) >= 3:
            break
    assert len(mem.estimates) >= 3
    t0 = time.monotonic()
    p.stop()
    await asyncio.wait_for(task, EXIT_LIMIT_S)
    assert time.monotonic() - t0 < EXIT_LIMIT_S
    assert p.engine is not None
    stats = p.engine.stats
    assert stats.windows == len(mem.estimates) and stats.dropped == 0 and stats.queued == 0  # nothing left behind
    assert rec.complete
    reader = RecordingReader(tmp_path / "rec")
    assert reader.estimates() == mem.estimates
    for i in range(3):
        assert sum(c.chunk.n_samples for c in reader.chunks(f"s{i}")) == rec.counts[f"s{i}"].samples > 0


class _HangingSink:
    """An output whose ``send`` never returns (a broker that stopped answering)."""

    name = "hanging"

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def __aenter__(self) -> _HangingSink:
        return self

    async def __aexit__(self, a: type[BaseException] | None, b: BaseException | None, c: TracebackType | None) -> None:
        return None

    async def announce(self, info: StreamInfo) -> None:
        return None

    async def send(self, estimate: Estimate) -> None:
        self.entered.set()
        await asyncio.Event().wait()


async def test_a_hung_output_does_not_block_shutdown(bundle) -> None:
    hanging = _HangingSink()
    mem = MemorySink()
    p = Pipeline([MemorySource(_live("h", 1), realtime=True)], [mem, hanging], bundle=bundle,
                 engine_settings=EngineSettings(device="cpu", max_wait_ms=5.0, warmup=False))
    task = asyncio.create_task(p.run())
    try:
        await asyncio.wait_for(hanging.entered.wait(), 60)
        p.stop()
        done, _ = await asyncio.wait({task}, timeout=EXIT_LIMIT_S)
        assert done, "the pipeline did not finish within 2 s of stop() with a hung output"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
