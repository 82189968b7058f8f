"""The recorder (``--output record:DIR``) and its replay (``file:DIR``): nothing lost, crash-safe, reproducible."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.synth import EMGSimulator
from streamemg.engine import EngineSettings
from streamemg.errors import ConfigError, SinkError, SourceURIError
from streamemg.model import untrained_bundle
from streamemg.pipeline import Pipeline
from streamemg.record.format import DATA_FILE, INDEX_FILE, MAGIC, safe_name
from streamemg.record.reader import RecordedSource, RecordingReader, export_hdf5
from streamemg.record.reader import from_uri as recorded_from_uri
from streamemg.record.writer import RecordSettings, RecordSink
from streamemg.sinks.base import SinkRunner, open_sink
from streamemg.sinks.memory import MemorySink
from streamemg.sources.base import open_source
from streamemg.sources.memory import MemorySource
from streamemg.types import Chunk, Estimate, StreamInfo

ENGINE = EngineSettings(device="cpu", max_wait_ms=2.0, warmup=False)


@pytest.fixture(scope="module")
def bundle():
    return untrained_bundle(seed=0)


def emg(cls: str, fs: float, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    return EMGSimulator(cls, fs, n_channels=channels, seed=seed).generate(round(fs * seconds))


def two_streams() -> tuple[list[MemorySource], dict[str, np.ndarray]]:
    """A 2-channel 10 kHz stream with seq and uneven chunks, and an 8 kHz stream without seq."""
    a = emg("als", 10000.0, 3.0, channels=2, seed=1)
    b = emg("normal", 8000.0, 3.0, seed=2)
    sources = [
        MemorySource.from_array("rec-a", a, 10000.0, chunk_sizes=[97, 1000, 3, 0, 2500], seq_start=2**63 + 5),
        MemorySource.from_array("lsl:Amp 1/../x", b, 8000.0, chunk_sizes=400, seq_start=None, t0=1234.5),
    ]
    return sources, {"rec-a": a, "lsl:Amp 1/../x": b}


async def run(sources, bundle, sinks=(), **kw) -> tuple[Pipeline, MemorySink]:
    mem = MemorySink()
    p = Pipeline(sources, [mem, *sinks], bundle=bundle, engine_settings=ENGINE, **kw)
    await asyncio.wait_for(p.run(), timeout=120)
    return p, mem


def assert_same_estimates(got: list[Estimate], want: list[Estimate], atol: float = 1e-5) -> None:
    assert len(got) == len(want) > 0
    assert [e.index for e in got] == [e.index for e in want]
    assert [e.time for e in got] == [e.time for e in want]
    assert [e.quality for e in got] == [e.quality for e in want]
    for field in ("probabilities", "rolling", "cumulative"):
        np.testing.assert_allclose([getattr(e, field) for e in got], [getattr(e, field) for e in want], atol=atol)


# ------------------------------------------------------------------------------------------------ round trip


async def test_every_sample_timestamp_seq_and_estimate_is_recorded(bundle, tmp_path: Path) -> None:
    sources, arrays = two_streams()
    rec = open_sink(f"record:{tmp_path / 'rec'}")
    assert isinstance(rec, RecordSink) and rec.wants_chunks
    p, mem = await run(sources, bundle, [rec])
    assert rec.complete and not p.errors
    runner = next(r for r in p.runners if r.sink is rec)
    assert runner.dropped == 0 and runner.errors == 0 and runner.settings.queue_size >= 100_000

    reader = RecordingReader(tmp_path / "rec")
    summary = reader.summary()
    assert summary["complete"] and summary["torn_bytes"] == 0 and summary["corrupt_records"] == 0
    for sid, arr in arrays.items():
        data, _ = reader.samples(sid)
        np.testing.assert_array_equal(data, arr)  # bit-exact
        assert summary["streams"][sid]["samples"] == len(arr)
        assert rec.counts[sid].samples == len(arr) and rec.counts[sid].dropped_samples == 0
    _, ts_b = reader.samples("lsl:Amp 1/../x")
    np.testing.assert_array_equal(ts_b, 1234.5 + np.arange(len(arrays["lsl:Amp 1/../x"])) / 8000.0)
    seqs = [c.chunk.seq for c in reader.chunks("rec-a")]
    assert seqs == [2**63 + 5 + i for i in range(len(seqs))]  # unsigned 64-bit seq kept
    assert all(c.chunk.seq is None for c in reader.chunks("lsl:Amp 1/../x"))
    assert reader.estimates() == mem.estimates  # every field, in order
    infos = reader.stream_infos()
    assert infos["rec-a"][0].fs == 10000.0 and infos["rec-a"][0].channels == ("ch1", "ch2")

    for name in (DATA_FILE, INDEX_FILE):  # health data: owner only
        assert (tmp_path / "rec" / name).stat().st_mode & 0o077 == 0
    index = json.loads((tmp_path / "rec" / INDEX_FILE).read_text())
    assert index["complete"] is True and index["bytes"] == (tmp_path / "rec" / DATA_FILE).stat().st_size
    assert {s["stream"]: s["samples"] for s in index["streams"]} == {k: len(v) for k, v in arrays.items()}


async def test_replay_of_a_recording_reproduces_the_estimates(bundle, tmp_path: Path) -> None:
    sources, _ = two_streams()
    _, original = await run(sources, bundle, [RecordSink(tmp_path / "rec")])
    source = recorded_from_uri(f"file:{tmp_path / 'rec'}?speed=max")
    assert source.realtime is False
    _, replay = await run([source], bundle)
    for sid in ("rec-a", "lsl:Amp 1/../x"):
        assert_same_estimates(replay.by_stream(sid), original.by_stream(sid))
    # and the recorded estimates themselves equal the replayed ones
    recorded = RecordingReader(tmp_path / "rec").estimates("rec-a")
    assert_same_estimates(replay.by_stream("rec-a"), recorded)


async def test_file_uri_of_a_directory_replays_the_recording(bundle, tmp_path: Path) -> None:
    sources, _ = two_streams()
    _, original = await run(sources[:1], bundle, [RecordSink(tmp_path / "rec")])
    source = open_source(f"file:{tmp_path / 'rec'}?speed=max")
    assert isinstance(source, RecordedSource)
    _, replay = await run([source], bundle)
    assert_same_estimates(replay.by_stream("rec-a"), original.by_stream("rec-a"))


async def test_signature_change_and_sequence_faults_replay_identically(bundle, tmp_path: Path) -> None:
    one = emg("als", 8000.0, 1.5, seed=7)
    two = emg("als", 10000.0, 1.5, channels=2, seed=8)
    ts1 = np.arange(len(one)) / 8000.0
    items = [StreamInfo("x", "x", 8000.0, ("a",))]
    for i, seq in enumerate([0, 1, 1, 3, 2, 4, 5]):  # a duplicate, a gap, a late chunk
        items.append(Chunk("x", one[i * 1500 : (i + 1) * 1500], ts1[i * 1500 : (i + 1) * 1500], seq))
    items += [StreamInfo("x", "x", 10000.0, ("a", "b")), Chunk("x", two, 2.0 + np.arange(len(two)) / 1e4, 6)]
    p, original = await run([MemorySource(items)], bundle, [RecordSink(tmp_path / "rec")])
    reader = RecordingReader(tmp_path / "rec")
    assert [c.chunk.seq for c in reader.chunks("x")] == [0, 1, 3, 4, 5, 6]  # only accepted chunks
    assert [i.n_channels for i in reader.stream_infos()["x"]] == [1, 2]
    p2, replay = await run([recorded_from_uri(f"file:{tmp_path / 'rec'}?speed=max")], bundle)
    assert_same_estimates(replay.by_stream("x"), original.by_stream("x"))
    snap = {s.stream_id: s for s in p2.snapshot().streams}["x"]
    assert snap.dropped_samples == {s.stream_id: s for s in p.snapshot().streams}["x"].dropped_samples > 0


async def test_paced_replay_keeps_the_recorded_pace(bundle, tmp_path: Path) -> None:
    async def paced():
        yield StreamInfo("p", "p", 8000.0, ("c",))
        x = emg("normal", 8000.0, 0.6, seed=3)
        for i in range(12):
            yield Chunk("p", x[i * 400 : (i + 1) * 400], (i * 400 + np.arange(400)) / 8000.0, i)
            await asyncio.sleep(0.05)

    await run([MemorySource(paced(), realtime=True)], bundle, [RecordSink(tmp_path / "rec")])
    ticks = [c.t_rec for c in RecordingReader(tmp_path / "rec").chunks()]
    span = ticks[-1] - ticks[0]
    assert span >= 0.5
    source = recorded_from_uri(f"file:{tmp_path / 'rec'}?speed=2")
    assert source.realtime is True
    arrivals: list[float] = []
    loop = asyncio.get_running_loop()
    async with source:
        async for item in source:
            if isinstance(item, Chunk):
                arrivals.append(loop.time())
    assert len(arrivals) == 12
    assert span / 2 - 0.05 <= arrivals[-1] - arrivals[0] <= span / 2 + 0.5


# ------------------------------------------------------------------------------------------------ crash safety


async def _small_recording(bundle, directory: Path) -> list[Estimate]:
    sources, _ = two_streams()
    _, mem = await run(sources, bundle, [RecordSink(directory)])
    return mem.estimates


async def test_a_torn_tail_is_ignored_and_everything_before_it_is_read(bundle, tmp_path: Path) -> None:
    await _small_recording(bundle, tmp_path / "rec")
    path = tmp_path / "rec" / DATA_FILE
    full = path.read_bytes()
    whole = RecordingReader(tmp_path / "rec")
    offsets = [r.offset for r in whole.records(decode_chunks=False)]
    n_records = len(offsets)
    rng = np.random.default_rng(0)
    # cut inside the frame header, inside a payload, and exactly between records
    cuts = [offsets[-3] + 5, offsets[-10] + 100, *rng.integers(offsets[1] + 1, len(full), 6).tolist(), offsets[-2]]
    ends = [*offsets[1:], len(full)]
    for cut in cuts:
        path.write_bytes(full[:cut])
        reader = RecordingReader(tmp_path / "rec")
        kept = [r.offset for r in reader.records(decode_chunks=False)]
        want = [o for o, e in zip(offsets, ends, strict=True) if e <= cut]
        assert kept == want
        assert reader.stats.torn_bytes == cut - ends[len(want) - 1]
        assert reader.stats.corrupt_records == 0 and not reader.stats.complete
        assert reader.stats.records == len(kept) < n_records
        # a torn recording still replays (up to the tear)
        source = recorded_from_uri(f"file:{tmp_path / 'rec'}?speed=max")
        async with source:
            got = [item async for item in source]
        assert got


async def test_a_damaged_record_in_the_middle_is_skipped(bundle, tmp_path: Path) -> None:
    estimates = await _small_recording(bundle, tmp_path / "rec")
    path = tmp_path / "rec" / DATA_FILE
    reader = RecordingReader(tmp_path / "rec")
    chunk_offsets = [r.offset for r in reader.records(decode_chunks=False) if r.kind == 2]
    blob = bytearray(path.read_bytes())
    target = chunk_offsets[len(chunk_offsets) // 2]
    blob[target + 60] ^= 0xFF  # a flipped bit inside the samples of one chunk
    path.write_bytes(bytes(blob))
    reader = RecordingReader(tmp_path / "rec")
    assert sum(1 for r in reader.records(decode_chunks=False) if r.kind == 2) == len(chunk_offsets) - 1
    assert reader.stats.corrupt_records == 1 and reader.stats.corrupt_bytes > 0 and reader.stats.complete
    assert reader.estimates() == estimates


def test_not_a_recording_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(SourceURIError, match="not a streamemg recording"):
        recorded_from_uri(f"file:{tmp_path / 'd'}")
    (tmp_path / "d" / DATA_FILE).write_bytes(b"garbage!" * 4)
    with pytest.raises(SourceURIError, match="not a streamemg recording"):
        recorded_from_uri(f"file:{tmp_path / 'd'}")
    with pytest.raises(SourceURIError, match="unknown parameter"):
        recorded_from_uri(f"file:{tmp_path / 'd'}?loop=1")


def _start_run(args: list[str], cwd: Path, stdout: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(stdout, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streamemg", "run", *args], cwd=cwd, stdout=out, stderr=subprocess.PIPE, env=env
        )


def _wait_for(predicate, limit_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"streamemg exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"condition not reached within {limit_s} s")
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_kill_9_loses_at_most_the_last_second(tmp_path: Path) -> None:
    """``kill -9`` after ~3 s of recording: the directory is readable and holds samples up to within 1 s of the kill."""
    directory = tmp_path / "rec"
    proc = _start_run(["--source", "sim:als?seed=1", "--output", f"record:{directory}", "--no-dashboard"],
                      tmp_path, tmp_path / "stdout")
    try:
        _wait_for(lambda: (directory / DATA_FILE).exists(), 90, proc)
        _wait_for(lambda: (directory / DATA_FILE).stat().st_size > 200_000, 60, proc)  # ~1.5 s of samples
        time.sleep(1.5)
        t_kill = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert not (directory / INDEX_FILE).exists()  # it really was not closed cleanly
    reader = RecordingReader(directory)
    header = reader.header()
    summary = reader.summary()
    assert not summary["complete"] and summary["corrupt_records"] == 0
    chunks = list(reader.chunks("sim:als-1"))
    assert len(chunks) > 100
    first_arrival = header["created_unix"] + chunks[0].t_rec
    last_arrival = header["created_unix"] + chunks[-1].t_rec
    loss_s = t_kill - last_arrival
    assert loss_s <= 1.0, f"the last recorded chunk arrived {loss_s:.3f} s before the kill"
    # and nothing is missing before that: the samples cover the whole span of the recording, in order
    seqs = [c.chunk.seq for c in chunks]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    n = sum(c.chunk.n_samples for c in chunks)
    assert n / 10000.0 >= (last_arrival - first_arrival) - 0.2
    assert summary["streams"]["sim:als-1"]["estimates"] >= 1


# ------------------------------------------------------------------------------------------------ failures


class _DiskFull:
    """Replaces the recorder's low-level write: fails with ENOSPC while ``full`` is set (after writing a bit)."""

    def __init__(self) -> None:
        self.full = False
        self.failures = 0
        self.real = RecordSink._write_all

    def __call__(self, fd: int, data: bytes) -> None:
        if self.full:
            self.failures += 1
            os.write(fd, data[: len(data) // 3])  # a partial write before the error, as a real disk would
            raise OSError(errno.ENOSPC, "No space left on device")
        self.real(fd, data)


async def test_disk_full_is_reported_the_pipeline_goes_on_and_the_gap_is_documented(
    bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = _DiskFull()
    monkeypatch.setattr(RecordSink, "_write_all", staticmethod(disk))
    x = emg("als", 8000.0, 4.0, seed=3)
    ts = np.arange(len(x)) / 8000.0

    async def items():
        yield StreamInfo("d", "d", 8000.0, ("c",))
        for i in range(40):
            disk.full = 10 <= i < 20
            yield Chunk("d", x[i * 800 : (i + 1) * 800], ts[i * 800 : (i + 1) * 800], i)
            await asyncio.sleep(0.03)  # a few flushes per phase

    rec = RecordSink(tmp_path / "rec", RecordSettings(flush_s=0.02))
    p, mem = await run([MemorySource(items(), realtime=True)], bundle, [rec])
    runner = next(r for r in p.runners if r.sink is rec)
    assert disk.failures >= 1 and rec.write_errors == disk.failures
    assert runner.errors >= 1 and "No space left on device" in runner.last_error
    assert len(mem.by_stream("d")) == 13  # the estimates went on
    counts = rec.counts["d"]
    assert counts.dropped_samples > 0 and counts.samples + counts.dropped_samples == len(x)
    reader = RecordingReader(tmp_path / "rec")
    summary = reader.summary()
    assert summary["complete"] and summary["corrupt_records"] == 0 and summary["torn_bytes"] == 0
    gaps = reader.gaps()
    assert sum(g["samples"] for g in gaps) == counts.dropped_samples
    assert any("No space left" in reason for g in gaps for reason in g["reasons"])
    data, _ = reader.samples("d")
    assert len(data) == counts.samples
    seqs = [c.chunk.seq for c in reader.chunks("d")]
    assert seqs[0] == 0 and seqs[-1] == 39  # before and after the outage


async def test_a_disk_slower_than_the_data_drops_beyond_the_memory_bound_counted(
    bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = RecordSink._write_all

    def slow(fd: int, data: bytes) -> None:
        time.sleep(0.2)  # runs on the write thread, never on the event loop
        real(fd, data)

    monkeypatch.setattr(RecordSink, "_write_all", staticmethod(slow))
    x = emg("normal", 8000.0, 3.0, seed=4)
    settings_ = RecordSettings(flush_s=0.05, max_pending_mb=0.05)  # ~50 kB: a few chunks
    rec = RecordSink(tmp_path / "rec", settings_)
    _, mem = await run([MemorySource.from_array("s", x, 8000.0, chunk_sizes=400)], bundle, [rec])
    counts = rec.counts["s"]
    assert counts.dropped_chunks > 0 and counts.samples + counts.dropped_samples == len(x)
    gaps = RecordingReader(tmp_path / "rec").gaps()
    assert sum(g["samples"] for g in gaps) == counts.dropped_samples
    assert any("waiting for the disk" in r for g in gaps for r in g["reasons"])
    assert len(mem.by_stream("s")) == 9  # inference never waited for the disk


async def test_a_malformed_chunk_costs_only_itself(tmp_path: Path) -> None:
    rec = RecordSink(tmp_path / "rec")
    async with rec:
        await rec.announce(StreamInfo("m", "m", 8000.0, ("c",)))
        await rec.write_chunk(Chunk("m", np.ones((4, 1), np.float32), np.arange(4.0), 0))
        await rec.write_chunk(Chunk("m", np.ones((4, 1), np.float32), np.arange(4.0), 2**70))  # seq beyond 64 bits
        await rec.write_chunk(Chunk("m", np.ones((4, 1), np.float32), np.arange(4.0), -3))
        await rec.write_chunk(Chunk("unannounced", np.ones((4, 1), np.float32), np.arange(4.0), 0))
    reader = RecordingReader(tmp_path / "rec")
    assert [c.chunk.seq for c in reader.chunks("m")] == [0, -3]
    assert rec.counts["m"].dropped_chunks == 1 and rec.counts["unannounced"].dropped_chunks == 1
    assert {g["stream"] for g in reader.gaps()} == {"m", "unannounced"}
    with pytest.raises(SinkError, match="not open"):
        await rec.send(Estimate("m", "m", 0, 0.0, (1.0, 0.0, 0.0), (1.0, 0.0, 0.0), (1.0, 0.0, 0.0), None, 0.0, "ok",
                                1.0))


def test_uri_and_settings_validation(tmp_path: Path) -> None:
    sink = open_sink(f"record:{tmp_path / 'new' / 'dir'}?flush_s=0.1&fsync_s=0&max_pending_mb=64")
    assert isinstance(sink, RecordSink)
    assert sink.settings == RecordSettings(flush_s=0.1, fsync_s=None, max_pending_mb=64.0)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / DATA_FILE).write_bytes(MAGIC)
    with pytest.raises(ConfigError, match="never overwrites"):
        open_sink(f"record:{tmp_path / 'old'}")
    with pytest.raises(ConfigError, match="needs a directory"):
        open_sink("record:")
    with pytest.raises(ConfigError, match="unknown parameter"):
        open_sink(f"record:{tmp_path / 'x'}?flush=1")
    with pytest.raises(ConfigError, match="flush_s"):
        open_sink(f"record:{tmp_path / 'x'}?flush_s=5")
    with pytest.raises(ConfigError, match="max_pending_mb"):
        RecordSettings(max_pending_mb=float("nan"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        open_sink(f"record:{tmp_path / 'file'}")


async def test_a_second_recorder_on_the_same_directory_fails_to_open(tmp_path: Path) -> None:
    first, second = RecordSink(tmp_path / "rec"), RecordSink(tmp_path / "rec")
    async with first:
        with pytest.raises(SinkError, match="never overwrites"):
            await second.__aenter__()
    assert RecordingReader(tmp_path / "rec").summary()["complete"]


# ------------------------------------------------------------------------------------------------ names


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=200), st.text(min_size=1, max_size=200))
def test_safe_name_is_a_safe_unique_file_name(a: str, b: str) -> None:
    for s in (a, b):
        name = safe_name(s)
        assert name and len(name) <= 73
        assert not name.startswith(".") and "/" not in name and "\\" not in name and "\x00" not in name
        assert all(c.isascii() and (c.isalnum() or c in "_.-") for c in name)
        assert name == safe_name(s)
    if a != b:
        assert safe_name(a) != safe_name(b)


def test_safe_name_keeps_plain_names() -> None:
    assert safe_name("dev01") == "dev01"
    assert safe_name("sim:als").startswith("sim_als-")
    assert safe_name("..") != ".." and safe_name("../../etc/passwd").startswith("_.._etc_passwd-")


async def test_export_to_hdf5_uses_sanitised_names(bundle, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    sources, arrays = two_streams()
    _, mem = await run(sources, bundle, [RecordSink(tmp_path / "rec")])
    out = export_hdf5(tmp_path / "rec", tmp_path / "rec.h5")
    with h5py.File(out, "r") as f:
        names = set(f["streams"])
        assert "rec-a" in names and all("/" not in n for n in names)
        tricky = next(n for n in names if n != "rec-a")
        assert tricky == safe_name("lsl:Amp 1/../x")
        g = f["streams"][tricky]
        assert g.attrs["stream_id"] == "lsl:Amp 1/../x" and g.attrs["fs"] == 8000.0
        np.testing.assert_array_equal(g["data"][:], arrays["lsl:Amp 1/../x"])
        np.testing.assert_array_equal(f["streams/rec-a/data"][:], arrays["rec-a"])
        est = f["estimates/rec-a"][:]
        assert len(est) == len(mem.by_stream("rec-a"))
        np.testing.assert_allclose(est["rolling"], [e.rolling for e in mem.by_stream("rec-a")], atol=1e-6)


def test_sink_runner_gives_the_recorder_its_long_queue(tmp_path: Path) -> None:
    runner = SinkRunner(RecordSink(tmp_path / "r", RecordSettings(queue_size=123_456)))
    assert runner.settings.queue_size == 123_456 and runner.wants_chunks
