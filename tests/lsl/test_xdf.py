"""XDF replay (``file:recording.xdf``): stream selection, units, recorded timestamps, looping, pacing.

Needs pyxdf but not liblsl. The files are written by the small XDF writer in conftest.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamemg.errors import DataFormatError, SourceURIError
from streamemg.lsl.xdf import from_uri, parse_uri
from streamemg.types import Chunk, StatusEvent, StreamInfo, StreamStatus

pytest.importorskip("pyxdf")

FS = 1000.0


def recording(n: int = 400, t0: float = 5000.0) -> list[dict[str, Any]]:
    """An EMG stream (int16, mV, one EMG + one trigger channel), an EEG stream and a marker stream."""
    rng = np.random.default_rng(1)
    stamps = t0 + np.arange(n) / FS
    emg = np.stack([rng.integers(-500, 500, n), np.arange(n) % 7], axis=1).astype(np.int16)
    eeg = rng.normal(0, 1e-5, size=(n // 2, 3))
    return [
        {
            "name": "Markers",
            "type": "Markers",
            "fs": 0,
            "fmt": "string",
            "data": [["start"], ["stop"]],
            "stamps": [t0, t0 + 0.2],
        },
        {
            "name": "Amp1",
            "type": "EMG",
            "fs": FS,
            "fmt": "int16",
            "data": emg,
            "stamps": stamps,
            "labels": ["Biceps", "Trig"],
            "units": ["mV", "none"],
            "types": ["EMG", "TRIGGER"],
            "source_id": "amp-1",
        },
        {
            "name": "Cap",
            "type": "EEG",
            "fs": FS / 2,
            "fmt": "double64",
            "data": eeg,
            "stamps": t0 + np.arange(n // 2) / (FS / 2),
            "labels": ["Fz", "Cz", "Pz"],
            "units": ["V", "V", "V"],
        },
    ]


async def play(uri: str, limit: int = 100000, limit_s: float = 20.0) -> list[Any]:
    items: list[Any] = []

    async def run() -> None:
        async with from_uri(uri) as src:
            async for item in src:
                items.append(item)
                if len(items) >= limit:
                    return

    await asyncio.wait_for(run(), limit_s)
    return items


async def test_plays_the_emg_stream_in_uv_with_recorded_timestamps(
    tmp_path: Path, xdf_writer: Callable[..., Path]
) -> None:
    streams = recording()
    path = xdf_writer(tmp_path / "rec.xdf", streams)
    items = await play(f"file:{path}?speed=max")
    infos = [i for i in items if isinstance(i, StreamInfo)]
    assert len(infos) == 1, "only the EMG-typed stream is played"
    info = infos[0]
    assert info.name == "Amp1" and info.fs == FS
    assert info.channels == ("Biceps",), "the trigger channel is dropped (channels=emg)"
    assert info.stream_id == "xdf:rec/Amp1"
    chunks = [i for i in items if isinstance(i, Chunk)]
    data = np.concatenate([c.data for c in chunks])
    stamps = np.concatenate([c.timestamps for c in chunks])
    assert data.dtype == np.float32 and data.shape == (400, 1)
    np.testing.assert_allclose(data[:, 0], streams[1]["data"][:, 0].astype(np.float64) * 1000.0)  # mV -> µV
    np.testing.assert_allclose(stamps, streams[1]["stamps"], atol=1e-6)
    assert all(c.n_samples == 10 for c in chunks), "10 ms chunks at 1 kHz"
    ends = [i for i in items if isinstance(i, StatusEvent)]
    assert [e.status for e in ends] == [StreamStatus.ENDED]


async def test_without_emg_type_plays_all_numeric_regular_streams(
    tmp_path: Path, xdf_writer: Callable[..., Path]
) -> None:
    streams = recording()
    streams[1]["type"] = "ExG"
    path = xdf_writer(tmp_path / "s.xdf", streams)
    items = await play(f"file:{path}?speed=max&channels=all")
    infos = {i.name: i for i in items if isinstance(i, StreamInfo)}
    assert set(infos) == {"Amp1", "Cap"}, "the marker stream (irregular, strings) is never played"
    assert infos["Amp1"].channels == ("Biceps", "Trig")
    chunks = [i for i in items if isinstance(i, Chunk)]
    cap = np.concatenate([c.data for c in chunks if c.stream_id == infos["Cap"].stream_id])
    np.testing.assert_allclose(cap, streams[2]["data"] * 1e6, rtol=1e-5)  # V -> µV
    # interleaved in timestamp order across the two streams
    ends = [float(c.timestamps[-1]) for c in chunks]
    assert ends == sorted(ends)


async def test_loop_keeps_timestamps_increasing(tmp_path: Path, xdf_writer: Callable[..., Path]) -> None:
    path = xdf_writer(tmp_path / "loop.xdf", recording(n=100))
    items = await play(f"file:{path}?speed=max&loop=1", limit=1 + 35)  # info + 3.5 rounds of 10 chunks
    chunks = [i for i in items if isinstance(i, Chunk)]
    stamps = np.concatenate([c.timestamps for c in chunks])
    assert stamps.size == 350
    assert np.all(np.diff(stamps) > 0)
    np.testing.assert_allclose(np.diff(stamps), 1 / FS, atol=1e-6)


async def test_speed_one_follows_the_recorded_time(tmp_path: Path, xdf_writer: Callable[..., Path]) -> None:
    path = xdf_writer(tmp_path / "rt.xdf", recording(n=300))  # 0.3 s
    src = from_uri(f"file:{path}")
    assert src.realtime
    t0 = time.perf_counter()
    items = await play(f"file:{path}")
    elapsed = time.perf_counter() - t0
    assert sum(isinstance(i, Chunk) for i in items) == 30
    assert 0.25 <= elapsed < 3.0, elapsed
    assert not from_uri(f"file:{path}?speed=max").realtime


async def test_select_and_rename_a_stream(tmp_path: Path, xdf_writer: Callable[..., Path]) -> None:
    path = xdf_writer(tmp_path / "sel.xdf", recording())
    items = await play(f"file:{path}?speed=max&stream=Cap&name=Head")
    infos = [i for i in items if isinstance(i, StreamInfo)]
    assert [(i.name, i.fs, i.channels) for i in infos] == [("Head", FS / 2, ("Fz", "Cz", "Pz"))]


async def test_unplayable_and_broken_files_give_clear_errors(tmp_path: Path, xdf_writer: Callable[..., Path]) -> None:
    only_markers = xdf_writer(tmp_path / "m.xdf", recording()[:1])
    with pytest.raises(DataFormatError, match=r"nothing to play.*Markers"):
        await play(f"file:{only_markers}?speed=max")
    broken = tmp_path / "broken.xdf"
    broken.write_bytes(b"NOTXDF")
    with pytest.raises(DataFormatError, match="not a readable XDF"):
        await play(f"file:{broken}")
    with pytest.raises(DataFormatError, match="no playable stream named Nope"):
        await play(f"file:{xdf_writer(tmp_path / 'n.xdf', recording())}?stream=Nope")


def test_uri_parsing() -> None:
    s = parse_uri("file:///data/a b.xdf?speed=2&loop=1&chunk_ms=20&channels=all")
    assert s.path == Path("/data/a b.xdf") and s.speed == 2.0 and s.loop and s.chunk_ms == 20 and s.channels == "all"
    assert parse_uri("file:x.xdf?speed=max").speed is None
    with pytest.raises(SourceURIError, match="carries its own rate"):
        parse_uri("file:x.xdf?fs=1000")
    with pytest.raises(SourceURIError, match="loop"):
        parse_uri("file:x.xdf?loop=maybe")
