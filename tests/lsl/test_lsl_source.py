"""The ``lsl:`` source on real liblsl over loopback, fed by the simulated amplifier and by test outlets."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import numpy as np
import pytest

from streamemg.errors import StreamRateError
from streamemg.sources.base import open_source
from streamemg.types import Chunk, StatusEvent, StreamInfo, StreamStatus

pytestmark = [pytest.mark.lsl, pytest.mark.timeout(60)]


def chunks_of(items: list[Any], stream_id: str | None = None) -> list[Chunk]:
    return [i for i in items if isinstance(i, Chunk) and (stream_id is None or i.stream_id == stream_id)]


def n_samples(items: list[Any], stream_id: str | None = None) -> int:
    return sum(c.n_samples for c in chunks_of(items, stream_id))


async def pump(outlet: Any, block: np.ndarray, period: float, stop: asyncio.Event) -> None:
    """Push ``block`` every ``period`` seconds until ``stop`` is set."""
    while not stop.is_set():
        outlet.push_chunk(block)
        await asyncio.sleep(period)


async def test_simulator_stream_arrives_as_uv_chunks_with_monotonic_timestamps(uniq: str, amps: Any, take: Any) -> None:
    await amps.start(name=uniq, cls="als", channels=4, fs=10000.0, chunk_ms=10.0, counter=True)
    async with open_source(f"lsl:name={uniq}") as src:
        items = await take(src, lambda it: n_samples(it) >= 5000, 20.0)
    info = items[0]
    assert isinstance(info, StreamInfo)
    assert info.stream_id == f"lsl:{uniq}" and info.name == uniq and info.fs == 10000.0
    assert info.channels == ("EMG1", "EMG2", "EMG3", "EMG4"), "the counter (type MISC) is not an EMG channel"
    assert info.units == "uV" and info.source == f"lsl:name={uniq}"
    assert info.meta["lsl"]["source_id"] == f"streamemg-sim-{uniq}"
    json.dumps(dict(info.meta))  # meta is JSON-serialisable
    chunks = chunks_of(items)
    assert all(c.data.dtype == np.float32 and c.data.shape[1] == 4 for c in chunks)
    assert all(c.data.flags.c_contiguous and c.timestamps.dtype == np.float64 for c in chunks)
    stamps = np.concatenate([c.timestamps for c in chunks])
    assert np.all(np.diff(stamps) > 0), "timestamps increase strictly, within and across chunks"
    assert np.median(np.diff(stamps)) == pytest.approx(1e-4, rel=0.01)
    data = np.concatenate([c.data for c in chunks])
    assert 5.0 < float(np.std(data)) < 5000.0, "plausible needle EMG in µV"
    assert max(c.n_samples for c in chunks) <= 500, "pulls are bounded (50 ms at 10 kHz)"


async def test_counter_channel_nothing_lost_nothing_duplicated(uniq: str, amps: Any, take: Any) -> None:
    await amps.start(name=uniq, channels=2, fs=10000.0, chunk_ms=5.0, counter=True)
    async with open_source(f"lsl:name={uniq}?channels=all") as src:
        items = await take(src, lambda it: n_samples(it) >= 20000, 25.0)
    info = items[0]
    assert isinstance(info, StreamInfo) and info.channels == ("EMG1", "EMG2", "counter")
    counter = np.concatenate([c.data[:, -1] for c in chunks_of(items)]).astype(np.int64)
    assert np.all(np.diff(counter) == 1), "every sample exactly once, in order"
    stamps = np.concatenate([c.timestamps for c in chunks_of(items)])
    assert np.all(np.diff(stamps) > 0)


async def test_recovers_when_the_outlet_comes_back_with_the_same_source_id(uniq: str, amps: Any, take: Any) -> None:
    kwargs = {"name": uniq, "channels": 1, "fs": 10000.0, "counter": True, "source_id": f"sid-{uniq}"}
    first = await amps.start(**kwargs)
    async with open_source(f"lsl:source_id=sid-{uniq}?channels=all") as src:
        before = await take(src, lambda it: n_samples(it) >= 2000, 20.0)
        stream_id = before[0].stream_id
        await amps.stop(first)  # the outlet is destroyed
        lost = await take(src, lambda it: any(isinstance(i, StatusEvent) for i in it), 10.0)
        event = next(i for i in lost if isinstance(i, StatusEvent))
        assert event.stream_id == stream_id and event.status is StreamStatus.RECONNECTING
        assert f"sid-{uniq}" in event.detail

        await amps.start(**kwargs)  # same source_id, new outlet
        after = await take(src, lambda it: n_samples(it) >= 2000, 20.0)
    events = [i for i in after if isinstance(i, StatusEvent)]
    assert [e.status for e in events] == [StreamStatus.LIVE] and events[0].stream_id == stream_id
    assert not any(isinstance(i, StreamInfo) for i in after), "same signature: no re-announcement"
    chunks = chunks_of(after)
    assert {c.stream_id for c in chunks} == {stream_id}, "the stream goes on under the same id"
    counter = np.concatenate([c.data[:, -1] for c in chunks]).astype(np.int64)
    assert counter[0] < 20000 and np.all(np.diff(counter) == 1), "data of the new outlet, complete"
    t_before = max(float(c.timestamps[-1]) for c in chunks_of(before + lost))
    assert float(chunks[0].timestamps[0]) > t_before, "timestamps keep increasing across the reconnection"


async def test_type_query_finds_two_streams_and_a_third_that_appears_later(uniq: str, outlets: Any, take: Any) -> None:
    stype = f"EMG-{uniq}"
    stop = asyncio.Event()
    block = np.ones((10, 2), dtype=np.float32)
    pumps = [
        asyncio.create_task(pump(outlets.make(f"{uniq}-{k}", stream_type=stype), block, 0.01, stop)) for k in ("a", "b")
    ]
    try:
        async with open_source(f"lsl:type={stype}") as src:

            def infos(it: list[Any]) -> set[str]:
                return {i.name for i in it if isinstance(i, StreamInfo)}

            first = await take(src, lambda it: len(infos(it)) == 2, 15.0)
            assert infos(first) == {f"{uniq}-a", f"{uniq}-b"}
            pumps.append(asyncio.create_task(pump(outlets.make(f"{uniq}-c", stream_type=stype), block, 0.01, stop)))

            later = await take(src, lambda it: f"{uniq}-c" in infos(it) and n_samples(it, f"lsl:{uniq}-c") > 0, 15.0)
            assert infos(later) == {f"{uniq}-c"}
            assert n_samples(later, f"lsl:{uniq}-a") > 0 and n_samples(later, f"lsl:{uniq}-b") > 0
    finally:
        stop.set()
        await asyncio.gather(*pumps)


async def test_channel_formats_and_units_become_float32_microvolts(uniq: str, outlets: Any, take: Any) -> None:
    stype = f"EMG-{uniq}"
    cases = {  # name: (format, unit, values pushed, expected µV)
        "i16": ("int16", "microvolts", [[-300, 1200]], [-300.0, 1200.0]),
        "dbl": ("double64", "V", [[0.0005, -0.00125]], [500.0, -1250.0]),
        "f32": ("float32", "mV", [[0.25, 2.0]], [250.0, 2000.0]),
        "i32": ("int32", "-6", [[70000, -5]], [70000.0, -5.0]),
        "nv": ("float32", "nanovolts", [[1500.0, -2000.0]], [1.5, -2.0]),
    }
    stop = asyncio.Event()
    pumps = []
    for key, (fmt, unit, values, _) in cases.items():
        out = outlets.make(f"{uniq}-{key}", stream_type=stype, fmt=fmt, labels=["A", "B"], units=[unit, unit])
        block = np.repeat(np.asarray(values), 5, axis=0)
        pumps.append(asyncio.create_task(pump(out, block, 0.01, stop)))
    try:
        async with open_source(f"lsl:type={stype}") as src:
            items = await take(src, lambda it: all(n_samples(it, f"lsl:{uniq}-{k}") >= 20 for k in cases), 20.0)
    finally:
        stop.set()
        await asyncio.gather(*pumps)
    for key, (fmt, unit, _, expected) in cases.items():
        sid = f"lsl:{uniq}-{key}"
        info = next(i for i in items if isinstance(i, StreamInfo) and i.stream_id == sid)
        assert info.channels == ("A", "B") and info.meta["channels"]["declared_units"] == [unit, unit]
        data = np.concatenate([c.data for c in chunks_of(items, sid)])
        assert data.dtype == np.float32
        np.testing.assert_allclose(data, np.tile(expected, (len(data), 1)), rtol=1e-6, err_msg=f"{fmt} {unit}")


async def test_channel_selection_by_type_and_label(uniq: str, outlets: Any, take: Any) -> None:
    out = outlets.make(
        uniq, n_channels=3, labels=["L", "R", "Trig"], units=["uV", "uV", ""], types=["EMG", "EMG", "STIM"]
    )
    stop = asyncio.Event()
    task = asyncio.create_task(pump(out, np.array([[1.0, 2.0, 3.0]] * 5, dtype=np.float32), 0.01, stop))
    try:
        async with open_source(f"lsl:name={uniq}") as src:
            items = await take(src, lambda it: n_samples(it) >= 10, 15.0)
        assert items[0].channels == ("L", "R")
        assert np.all(chunks_of(items)[0].data == [1.0, 2.0])
        async with open_source(f"lsl:name={uniq}?channels=Trig,L") as src:
            items = await take(src, lambda it: n_samples(it) >= 10, 15.0)
        assert items[0].channels == ("L", "Trig")
        assert np.all(chunks_of(items)[0].data == [1.0, 3.0])
    finally:
        stop.set()
        await task


async def test_irregular_rate_stream_is_a_clear_error(uniq: str, outlets: Any) -> None:
    outlets.make(uniq, fs=0.0)
    async with open_source(f"lsl:name={uniq}") as src:
        with pytest.raises(StreamRateError, match=r"irregular sampling rate.*regular-rate stream"):
            await asyncio.wait_for(src.__anext__(), 15.0)


async def test_irregular_stream_in_a_type_query_is_skipped_with_a_warning(
    uniq: str, outlets: Any, take: Any, caplog: pytest.LogCaptureFixture
) -> None:
    stype = f"EMG-{uniq}"
    outlets.make(f"{uniq}-events", stream_type=stype, fs=0.0)
    outlets.make(f"{uniq}-strings", stream_type=stype, fmt="string", n_channels=1)
    regular = outlets.make(f"{uniq}-emg", stream_type=stype)
    stop = asyncio.Event()
    task = asyncio.create_task(pump(regular, np.zeros((10, 2), np.float32), 0.01, stop))
    try:
        with caplog.at_level(logging.WARNING, logger="streamemg.lsl.source"):
            async with open_source(f"lsl:type={stype}") as src:
                items = await take(src, lambda it: n_samples(it) >= 50, 15.0)
                await asyncio.sleep(0)
        assert {i.name for i in items if isinstance(i, StreamInfo)} == {f"{uniq}-emg"}
        text = caplog.text
        assert f"{uniq}-events" in text and "irregular" in text and f"{uniq}-strings" in text
    finally:
        stop.set()
        await task


async def test_nothing_matching_yields_nothing_and_closes_cleanly(uniq: str) -> None:
    src = open_source(f"lsl:name={uniq}-absent?poll_ms=2")
    async with src:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(src.__anext__(), 1.0)
    await src.__aexit__(None, None, None)  # idempotent


async def test_reconnection_with_another_channel_count_is_announced(uniq: str, outlets: Any, take: Any) -> None:
    sid = f"sid-{uniq}"
    stop = asyncio.Event()
    task = asyncio.create_task(pump(outlets.make(uniq, source_id=sid), np.zeros((10, 2), np.float32), 0.01, stop))
    async with open_source(f"lsl:source_id={sid}") as src:
        before = await take(src, lambda it: n_samples(it) >= 20, 15.0)
        stop.set()
        await task
        outlets.close_all()  # the outlet is destroyed
        await take(src, lambda it: any(isinstance(i, StatusEvent) for i in it), 10.0)
        stop2 = asyncio.Event()
        wider = outlets.make(uniq, source_id=sid, n_channels=3)
        task2 = asyncio.create_task(pump(wider, np.ones((10, 3), np.float32), 0.01, stop2))
        try:
            after = await take(src, lambda it: n_samples(it) >= 20, 15.0)
        finally:
            stop2.set()
            await task2
    first = before[0]
    assert isinstance(first, StreamInfo) and first.channels == ("ch1", "ch2")
    assert isinstance(after[0], StreamInfo), "the new signature is announced before its data"
    assert after[0].stream_id == first.stream_id and after[0].channels == ("ch1", "ch2", "ch3")
    assert isinstance(after[1], StatusEvent) and after[1].status is StreamStatus.LIVE
    assert all(c.n_channels == 3 for c in chunks_of(after))


async def test_same_name_on_two_devices_gets_distinct_stream_ids(uniq: str, outlets: Any, take: Any) -> None:
    stype = f"EMG-{uniq}"
    stop = asyncio.Event()
    block = np.zeros((10, 2), np.float32)
    tasks = [
        asyncio.create_task(pump(outlets.make(uniq, stream_type=stype, source_id=f"{uniq}-{k}"), block, 0.01, stop))
        for k in (1, 2)
    ]
    try:
        async with open_source(f"lsl:type={stype}") as src:
            items = await take(src, lambda it: sum(isinstance(i, StreamInfo) for i in it) == 2, 15.0)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    infos = [i for i in items if isinstance(i, StreamInfo)]
    assert {i.stream_id for i in infos} == {f"lsl:{uniq}", f"lsl:{uniq}#2"}
    assert {i.name for i in infos} == {uniq, f"{uniq}#2"}
    assert {i.meta["lsl"]["source_id"] for i in infos} == {f"{uniq}-1", f"{uniq}-2"}
