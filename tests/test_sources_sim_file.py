"""The sim:, file: and in-memory sources."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from simulators.synth import EMGSimulator
from streamemg.clock import ManualClock
from streamemg.errors import ConfigError, SourceError, SourceURIError
from streamemg.sources.base import Source, open_source
from streamemg.sources.file import FileSource
from streamemg.sources.memory import MemorySource
from streamemg.sources.sim import SimSource
from streamemg.types import Chunk, SourceItem, StatusEvent, StreamInfo, StreamStatus


async def collect(src: Source, limit: int = 100_000, wait_s: float = 20.0) -> list[SourceItem]:
    """All items of a source (at most ``limit``), inside its context."""

    async def run() -> list[SourceItem]:
        out: list[SourceItem] = []
        async with src:
            async for item in src:
                out.append(item)
                if len(out) >= limit:
                    break
        return out

    return await asyncio.wait_for(run(), wait_s)


def chunks_of(items: list[SourceItem]) -> list[Chunk]:
    return [i for i in items if isinstance(i, Chunk)]


def check_stream(items: list[SourceItem], fs: float, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """StreamInfo first, then well-formed chunks with consecutive seq and evenly spaced timestamps."""
    assert isinstance(items[0], StreamInfo)
    info = items[0]
    assert info.fs == fs and info.n_channels == n_channels
    chunks = chunks_of(items)
    assert chunks and all(c.stream_id == info.stream_id for c in chunks)
    for c in chunks:
        assert c.data.dtype == np.float32 and c.data.ndim == 2 and c.data.shape[1] == n_channels
        assert c.timestamps.dtype == np.float64 and c.timestamps.shape == (c.n_samples,)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    data = np.concatenate([c.data for c in chunks])
    ts = np.concatenate([c.timestamps for c in chunks])
    np.testing.assert_allclose(np.diff(ts), 1.0 / fs, rtol=1e-6)
    return data, ts


def fake_time(start: float = 50.0) -> tuple[ManualClock, object]:
    clock = ManualClock(start)

    async def sleep(dt: float) -> None:
        clock.advance(dt)
        await asyncio.sleep(0)

    return clock, sleep


# ----------------------------------------------------------------------------- sim:


async def test_sim_at_max_speed_yields_the_simulator_signal_then_ends() -> None:
    src = open_source("sim:als?fs=8000&channels=2&seed=3&speed=max&duration=1.5")
    assert isinstance(src, SimSource) and isinstance(src, Source)
    assert src.realtime is False
    items = await collect(src)
    data, ts = check_stream(items, 8000.0, 2)
    info = items[0]
    assert isinstance(info, StreamInfo)
    assert info.stream_id == "sim:als-3" and info.meta["class"] == "ALS"
    assert data.shape == (12000, 2)
    assert ts[0] == 0.0
    assert {c.n_samples for c in chunks_of(items)} == {2000}  # 250 ms chunks by default at max speed
    np.testing.assert_array_equal(data, EMGSimulator("als", 8000.0, 2, 3).generate(12000))
    assert isinstance(items[-1], StatusEvent) and items[-1].status is StreamStatus.ENDED


async def test_sim_chunk_ms_duration_and_name() -> None:
    items = await collect(open_source("sim:myopathy?fs=23437.5&chunk_ms=7&speed=max&duration=0.1&name=bed-4"))
    data, _ = check_stream(items, 23437.5, 1)
    assert isinstance(items[0], StreamInfo) and items[0].stream_id == "bed-4" and items[0].name == "bed-4"
    assert data.shape[0] == round(0.1 * 23437.5)
    sizes = [c.n_samples for c in chunks_of(items)]
    assert set(sizes[:-1]) == {round(0.007 * 23437.5)} and sizes[-1] <= sizes[0]


def test_sim_stream_ids_are_unique_per_seed() -> None:
    sources = [open_source(u) for u in ("sim:als", "sim:als?seed=1", "sim:als?seed=2", "sim:normal")]
    ids = {s.info.stream_id for s in sources if isinstance(s, SimSource)}
    assert ids == {"sim:als", "sim:als-1", "sim:als-2", "sim:normal"}


async def test_sim_real_time_pacing_on_a_fake_clock_is_exact() -> None:
    clock, sleep = fake_time()
    src = SimSource("normal", fs=10000.0, duration=2.0, clock=clock, sleep=sleep)  # type: ignore[arg-type]
    assert src.realtime is True
    items = await collect(src)
    data, ts = check_stream(items, 10000.0, 1)
    assert len(chunks_of(items)) == 200 and data.shape == (20000, 1)
    assert clock() == pytest.approx(52.0)  # 200 chunks of 10 ms, no drift
    assert ts[0] == 50.0  # the stream clock starts at the clock's time


async def test_sim_catches_up_after_a_stall_without_losing_samples() -> None:
    clock, sleep = fake_time()
    src = SimSource("als", fs=8000.0, duration=1.0, clock=clock, sleep=sleep)  # type: ignore[arg-type]
    got: list[SourceItem] = []
    async with src:
        async for item in src:
            got.append(item)
            if len(got) == 10:
                clock.advance(0.3)  # the consumer stalls for 30 chunks
    data, _ = check_stream(got, 8000.0, 1)
    assert data.shape[0] == 8000
    assert src.pacer is not None and src.pacer.late_ticks >= 29
    assert clock() == pytest.approx(51.0, abs=0.011)  # still finishes on the real-time schedule


async def test_sim_real_time_pacing_on_the_real_clock() -> None:
    src = open_source("sim:normal?fs=8000&chunk_ms=10&duration=0.3")
    t = time.perf_counter()
    items = await collect(src, wait_s=10.0)
    elapsed = time.perf_counter() - t
    data, _ = check_stream(items, 8000.0, 1)
    assert data.shape[0] == 2400
    assert 0.27 <= elapsed < 3.0, elapsed


async def test_sim_never_ending_source_can_be_stopped() -> None:
    src = open_source("sim:normal?speed=max&chunk_ms=5")
    items = await collect(src, limit=50)
    assert len(items) == 50 and isinstance(items[0], StreamInfo)
    assert [i async for i in src] == []  # closed on exit
    again = await collect(src, limit=3)  # re-entering starts a fresh run
    np.testing.assert_array_equal(again[1].data, items[1].data)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("sim:", "name the class"),
        ("sim:dystrophy", "unknown simulated class 'dystrophy'"),
        ("sim:als?fs=abc", "fs='abc' is not a number"),
        ("sim:als?fs=100", "fs='100' must be at least 500"),
        ("sim:als?channels=0", "channels='0' must be a whole number from 1"),
        ("sim:als?channels=2.5", "channels='2.5' is not a whole number"),
        ("sim:als?seed=-1", "seed"),
        ("sim:als?speed=0", "speed='0' must be above 0"),
        ("sim:als?speed=fastest", "speed='fastest' is not a number"),
        ("sim:als?duration=-1", "duration"),
        ("sim:als?chunk_ms=0", "chunk_ms"),
        ("sim:als?mains=55", "must be 0 (no hum), 50 or 60"),
        ("sim:als?channel=2", "unknown parameter channel"),
        ("sim:als?name=", "name='' must not be empty"),
    ],
)
def test_sim_bad_uris_say_what_is_wrong_and_how_to_fix(uri: str, needle: str) -> None:
    with pytest.raises(SourceURIError) as err:
        open_source(uri)
    assert needle in str(err.value)
    assert "sim:" in str(err.value)


async def test_sim_mains_hum_from_the_uri() -> None:
    items = await collect(open_source("sim:myopathy?fs=8000&speed=max&duration=2&mains=60&mains_uv=50&noise_uv=0"))
    x = np.concatenate([c.data[:, 0] for c in chunks_of(items)])
    spectrum = np.abs(np.fft.rfft(x))
    f = np.fft.rfftfreq(len(x), 1 / 8000.0)
    assert abs(f[np.argmax(spectrum)] - 60.0) < 1.0


# ----------------------------------------------------------------------------- file:


@pytest.fixture
def recording(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = EMGSimulator("normal", 4000.0, n_channels=2, seed=1).generate(4000 + 123)
    path = tmp_path / "rec one.npy"
    np.save(path, x)
    (tmp_path / "rec one.npy.json").write_text(json.dumps({"fs": 4000, "channels": ["biceps", "deltoid"]}))
    return path, x


async def test_file_at_max_speed_concatenates_to_the_file(recording: tuple[Path, np.ndarray]) -> None:
    path, x = recording
    src = open_source(f"file:{path}?speed=max")
    assert isinstance(src, FileSource) and src.realtime is False
    items = await collect(src)
    data, ts = check_stream(items, 4000.0, 2)
    np.testing.assert_array_equal(data, x)
    assert ts[0] == 0.0
    info = items[0]
    assert isinstance(info, StreamInfo)
    assert info.channels == ("biceps", "deltoid") and info.stream_id == "file:rec one.npy" and info.name == "rec one"
    assert info.source == f"file:{path}?speed=max"
    sizes = [c.n_samples for c in chunks_of(items)]
    assert sizes[0] == 1000 and sum(sizes) == len(x)  # 250 ms chunks at max speed
    assert isinstance(items[-1], StatusEvent) and items[-1].status is StreamStatus.ENDED


async def test_file_loop_restarts_seamlessly(recording: tuple[Path, np.ndarray]) -> None:
    path, x = recording
    items = await collect(open_source(f"file:{path}?speed=max&loop=1&chunk_ms=300"), limit=1 + 40)
    data, _ = check_stream(items, 4000.0, 2)  # timestamps keep counting across the loop
    assert data.shape[0] == 40 * 1200 > 3 * len(x)
    np.testing.assert_array_equal(data, np.tile(x, (12, 1))[: data.shape[0]])
    assert not any(isinstance(i, StatusEvent) for i in items)


async def test_file_real_time_pacing_and_speed_factor(recording: tuple[Path, np.ndarray]) -> None:
    path, x = recording
    for speed, wall in ((1.0, len(x) / 4000.0), (4.0, len(x) / 16000.0)):
        clock, sleep = fake_time()
        src = FileSource(path, speed=speed, clock=clock, sleep=sleep)  # type: ignore[arg-type]
        assert src.realtime is True
        items = await collect(src)
        data, _ = check_stream(items, 4000.0, 2)
        np.testing.assert_array_equal(data, x)
        assert {c.n_samples for c in chunks_of(items)[:-1]} == {40}  # 10 ms chunks in real time
        assert clock() - 50.0 == pytest.approx(wall, abs=0.011 / speed)


async def test_file_csv_fs_override_name_and_file_url(tmp_path: Path) -> None:
    x = np.arange(300, dtype=np.float32).reshape(100, 3)
    path = tmp_path / "r.csv"
    np.savetxt(path, x, delimiter=",", header="a,b,c", comments="")
    items = await collect(open_source(f"file://{path}?speed=max&fs=2000&chunk_ms=15&name=arm"))
    data, _ = check_stream(items, 2000.0, 3)
    np.testing.assert_allclose(data, x)
    assert items[0].stream_id == "arm" and items[0].channels == ("a", "b", "c")  # type: ignore[union-attr]
    assert [c.n_samples for c in chunks_of(items)] == [30, 30, 30, 10]


def test_file_missing_gives_the_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npy"
    with pytest.raises(SourceURIError) as err:
        open_source(f"file:{missing}")
    assert str(missing) in str(err.value) and "absolute path" in str(err.value)
    assert isinstance(err.value, SourceError)


async def test_file_unreadable_or_without_rate_raises_source_error_with_path(tmp_path: Path) -> None:
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"not an array")
    with pytest.raises(SourceError, match=r"broken\.npy"):
        await collect(open_source(f"file:{bad}"))
    norate = tmp_path / "norate.npy"
    np.save(norate, np.zeros((100, 1), np.float32))
    with pytest.raises(SourceError, match=r"fs=HZ"):
        await collect(open_source(f"file:{norate}"))
    items = await collect(open_source(f"file:{norate}?fs=1000&speed=max"))  # the fix works
    assert check_stream(items, 1000.0, 1)[0].shape == (100, 1)


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("speed=slow", "speed='slow' is not a number"),
        ("loop=maybe", "loop='maybe' must be 0 or 1"),
        ("fs=-5", "fs='-5' must be above 0"),
        ("chunkms=5", "unknown parameter chunkms"),
    ],
)
def test_file_bad_parameters(recording: tuple[Path, np.ndarray], query: str, needle: str) -> None:
    with pytest.raises(SourceURIError, match=needle.replace("(", r"\(")):
        open_source(f"file:{recording[0]}?{query}")


def test_file_rejects_remote_hosts_and_empty_paths() -> None:
    with pytest.raises(SourceURIError, match="other hosts"):
        open_source("file://server/data/x.npy")
    with pytest.raises(SourceURIError, match="path"):
        open_source("file:")


def test_xdf_files_go_to_the_xdf_source(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    fake = types.ModuleType("streamemg.lsl.xdf")

    def from_uri(uri: str) -> object:
        seen.append(uri)
        return MemorySource([], uri=uri)

    fake.from_uri = from_uri  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "streamemg.lsl.xdf", fake)
    src = open_source("file:session.XDF?speed=max")
    assert seen == ["file:session.XDF?speed=max"] and src.uri == seen[0]


def test_xdf_without_its_module_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "streamemg.lsl.xdf", None)  # import fails as if absent
    with pytest.raises((SourceURIError, ImportError)):
        open_source("file:session.xdf")


# ----------------------------------------------------------------------------- memory


async def test_memory_from_array_chunk_sizes_seq_and_timestamps() -> None:
    x = np.random.default_rng(0).standard_normal((1000, 2)).astype(np.float32)
    src = MemorySource.from_array("m", x, 500.0, chunk_sizes=[97, 0, 300], seq_start=7, t0=3.0)
    items = await collect(src)
    assert isinstance(items[0], StreamInfo) and items[0].channels == ("ch1", "ch2")
    chunks = chunks_of(items)
    assert [c.n_samples for c in chunks] == [97, 0, 300, 97, 0, 300, 97, 0, 109]
    assert [c.seq for c in chunks] == list(range(7, 16))
    np.testing.assert_array_equal(np.concatenate([c.data for c in chunks]), x)
    ts = np.concatenate([c.timestamps for c in chunks])
    np.testing.assert_allclose(ts, 3.0 + np.arange(1000) / 500.0)
    again = await collect(src)  # re-iterable: a second run yields the same items
    assert len(again) == len(items)


async def test_memory_from_array_fixed_size_1d_and_labels() -> None:
    items = await collect(MemorySource.from_array("m", np.arange(10.0), 100.0, 4, channels=["x"], seq_start=None))
    chunks = chunks_of(items)
    assert [c.n_samples for c in chunks] == [4, 4, 2] and all(c.seq is None for c in chunks)
    assert chunks[0].data.shape == (4, 1) and chunks[0].data.dtype == np.float32


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(chunk_sizes=0), "chunk_sizes"),
        (dict(chunk_sizes=[-1, 5]), "chunk_sizes"),
        (dict(chunk_sizes=5, channels=["a", "b"]), "channels"),
        (dict(chunk_sizes=5, fs=0.0), "fs"),
    ],
)
def test_memory_from_array_rejects_bad_arguments(kwargs: dict, needle: str) -> None:
    args = dict(stream_id="m", data=np.zeros((10, 1)), fs=100.0) | kwargs
    with pytest.raises(ConfigError, match=needle):
        MemorySource.from_array(**args)


async def test_memory_source_takes_lists_and_async_generators() -> None:
    info = StreamInfo("a", "a", 100.0, ("c",))
    chunk = Chunk("a", np.zeros((5, 1), np.float32), np.arange(5) / 100.0, 0)
    assert await collect(MemorySource([info, chunk])) == [info, chunk]

    async def gen() -> AsyncIterator[SourceItem]:
        yield info
        await asyncio.sleep(0.001)
        yield chunk

    src = MemorySource(gen(), realtime=True)
    assert src.realtime and src.uri == "memory:"
    assert await collect(src) == [info, chunk]


async def test_leaving_early_closes_the_generator_and_exit_is_idempotent() -> None:
    closed: list[bool] = []

    async def gen() -> AsyncIterator[SourceItem]:
        try:
            for i in range(100):
                yield StreamInfo(f"s{i}", "s", 100.0, ("c",))
        finally:
            closed.append(True)

    src = MemorySource(gen())
    async with src:
        async for _ in src:
            break
    assert closed == [True]
    await src.__aexit__(None, None, None)
    await src.aclose()
    assert closed == [True]


def test_memory_uri_cannot_be_opened() -> None:
    with pytest.raises(SourceURIError, match=r"MemorySource\.from_array"):
        open_source("memory:test")
