"""The whole pipeline end to end on in-memory sources: windows, batching, quality, seq, faults, sinks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType

import numpy as np
import pytest

from simulators.synth import EMGSimulator
from streamemg.engine import EngineSettings
from streamemg.errors import SinkError
from streamemg.model import untrained_bundle
from streamemg.pipeline import Pipeline, PipelineSettings
from streamemg.sinks.base import SinkSettings
from streamemg.sinks.memory import MemorySink
from streamemg.sources.memory import MemorySource
from streamemg.types import Chunk, Estimate, StreamInfo, StreamStatus

FS_MODEL = 8000.0


@pytest.fixture(scope="module")
def bundle():
    return untrained_bundle(seed=0)


def emg(cls: str, fs: float, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    return EMGSimulator(cls, fs, n_channels=channels, seed=seed).generate(round(fs * seconds))


def expected_windows(bundle, n_native: int, fs: float) -> int:
    cfg = bundle.config
    n_model = int(n_native * cfg.fs / fs)
    return max(0, (n_model - cfg.window_samples) // cfg.hop_samples + 1)


async def run_pipeline(sources, bundle, sinks=(), **kw) -> tuple[Pipeline, MemorySink]:
    mem = MemorySink()
    direct: list[Estimate] = []
    p = Pipeline(sources, [mem, *sinks], bundle=bundle, engine_settings=EngineSettings(device="cpu", max_wait_ms=2),
                 on_estimate=direct.append, **kw)
    await asyncio.wait_for(p.run(), timeout=120)
    if not kw.get("settings"):  # with the default queue sizes the memory sink saw every estimate
        assert mem.estimates == direct
    mem.estimates = direct
    return p, mem


async def test_end_to_end_two_streams_every_window_classified(bundle) -> None:
    a = emg("als", 10000.0, 4.0, channels=2, seed=1)
    b = emg("normal", 8000.0, 3.0, seed=2)
    sources = [
        MemorySource.from_array("s-a", a, 10000.0, chunk_sizes=[97, 1000, 3, 5000]),
        MemorySource.from_array("s-b", b, 8000.0, chunk_sizes=80),
    ]
    p, mem = await run_pipeline(sources, bundle)
    for sid, data, fs in (("s-a", a, 10000.0), ("s-b", b, 8000.0)):
        ests = mem.by_stream(sid)
        want = expected_windows(bundle, len(data), fs)
        assert want - 1 <= len(ests) <= want, (sid, len(ests), want)
        assert [e.index for e in ests] == list(range(len(ests)))
        for e in ests:
            assert abs(sum(e.probabilities) - 1.0) < 1e-4
            assert e.quality == "ok"
            assert e.trained is False and e.label is None
            assert e.to_dict()["label"] == "untrained"
            assert e.latency_ms >= 0
    assert p.snapshot().windows_total == len(mem.estimates)
    assert p.engine is not None and p.engine.stats.batch_max >= 2  # windows of different streams shared calls


async def test_uneven_chunking_gives_identical_estimates(bundle) -> None:
    x = emg("myopathy", 23437.5, 3.0, seed=3)
    runs = []
    for sizes in ([x.shape[0]], [1, 2, 3, 1000, 77, 4096], [234]):
        _, mem = await run_pipeline([MemorySource.from_array("s", x, 23437.5, chunk_sizes=sizes)], bundle)
        runs.append(np.array([e.probabilities for e in mem.by_stream("s")]))
    assert runs[0].shape[0] > 0
    for other in runs[1:]:
        assert other.shape == runs[0].shape
        np.testing.assert_allclose(other, runs[0], atol=1e-5)


async def test_nan_stream_is_flagged_and_other_stream_unaffected(bundle) -> None:
    good = emg("als", 8000.0, 3.0, seed=4)
    bad = emg("normal", 8000.0, 3.0, seed=5)
    bad[8000:9000] = np.nan
    _, alone = await run_pipeline([MemorySource.from_array("good", good, 8000.0, chunk_sizes=400)], bundle)
    _, both = await run_pipeline(
        [
            MemorySource.from_array("good", good, 8000.0, chunk_sizes=400),
            MemorySource.from_array("bad", bad, 8000.0, chunk_sizes=400),
        ],
        bundle,
    )
    np.testing.assert_allclose(
        [e.probabilities for e in both.by_stream("good")], [e.probabilities for e in alone.by_stream("good")], atol=1e-5
    )
    bad_ests = both.by_stream("bad")
    flagged = [e for e in bad_ests if e.quality == "nan"]
    assert flagged, [e.quality for e in bad_ests]
    assert all(e.label is None for e in flagged)
    assert all(np.isnan(e.probabilities).all() for e in flagged)
    # the filter state recovered: the last windows (after the NaN left the span) are usable again
    assert bad_ests[-1].quality == "ok"


async def test_sequence_numbers_gaps_duplicates_and_restart(bundle) -> None:
    info = StreamInfo("dev", "dev", 8000.0, ("c1",))
    x = emg("normal", 8000.0, 2.0, seed=6)
    ts = np.arange(x.shape[0]) / 8000.0

    def chunk(i: int, seq: int) -> Chunk:
        sl = slice(i * 400, (i + 1) * 400)
        return Chunk("dev", x[sl], ts[sl], seq=seq)

    items = [info, chunk(0, 10), chunk(1, 11), chunk(1, 11), chunk(2, 14), chunk(3, 12), chunk(4, 15),
             chunk(5, 3), chunk(6, 4)]
    p, _ = await run_pipeline([MemorySource(items)], bundle)
    snap = {s.stream_id: s for s in p.snapshot().streams}["dev"]
    # rejected: the duplicate 11, the late 12, and 3 and 4 (only 12 below 15: late, not a restart)
    assert snap.rejected == 4
    assert snap.dropped_samples == 2 * 400  # 12 and 13 were missing when 14 came
    p2, _ = await run_pipeline([MemorySource(items)], bundle, settings=PipelineSettings(restart_gap=5))
    snap2 = {s.stream_id: s for s in p2.snapshot().streams}["dev"]
    assert snap2.rejected == 2  # 3 after 15 is now a restart (a new segment), and 4 follows it


async def test_signature_change_reinitialises_and_continues(bundle) -> None:
    one = emg("als", 8000.0, 2.0, seed=7)
    two = emg("als", 10000.0, 2.0, channels=2, seed=8)
    items = [StreamInfo("x", "x", 8000.0, ("a",)), Chunk("x", one, np.arange(len(one)) / 8000.0),
             StreamInfo("x", "x", 10000.0, ("a", "b")), Chunk("x", two, 2.0 + np.arange(len(two)) / 10000.0)]
    p, mem = await run_pipeline([MemorySource(items)], bundle)
    ests = mem.by_stream("x")
    assert len(ests) >= expected_windows(bundle, len(one), 8000.0) + expected_windows(bundle, len(two), 10000.0) - 2
    assert any(len(e.channel_quality) == 2 for e in ests)
    assert not p.errors


async def test_slow_stream_rate_is_refused_with_a_clear_error_others_go_on(bundle) -> None:
    slow = emg("normal", 4000.0, 2.0)
    fine = emg("normal", 8000.0, 2.0)
    p, mem = await run_pipeline(
        [MemorySource.from_array("slow", slow, 4000.0, chunk_sizes=400),
         MemorySource.from_array("fine", fine, 8000.0, chunk_sizes=400)],
        bundle,
    )
    assert mem.by_stream("fine")
    assert not mem.by_stream("slow")
    assert any("4000 Hz" in e and "upsample" in e for e in p.errors)


class SlowSink:
    name = "slow"

    def __init__(self) -> None:
        self.got: list[Estimate] = []

    async def __aenter__(self) -> SlowSink:
        return self

    async def __aexit__(self, a: type[BaseException] | None, b: BaseException | None, c: TracebackType | None) -> None:
        return None

    async def announce(self, info: StreamInfo) -> None:
        return None

    async def send(self, estimate: Estimate) -> None:
        await asyncio.sleep(0.05)
        self.got.append(estimate)


class FailingSink(SlowSink):
    name = "failing"

    async def send(self, estimate: Estimate) -> None:
        raise SinkError("disk full")


async def test_slow_and_failing_sinks_never_stall_the_pipeline(bundle) -> None:
    x = emg("als", 8000.0, 6.0, seed=9)
    slow, failing = SlowSink(), FailingSink()
    p, mem = await run_pipeline(
        [MemorySource.from_array("s", x, 8000.0, chunk_sizes=800)], bundle, sinks=[slow, failing],
        settings=PipelineSettings(sink=SinkSettings(queue_size=2)),
    )
    n = len(mem.by_stream("s"))
    assert n == expected_windows(bundle, len(x), 8000.0)
    runners = {r.name: r for r in p.runners}
    assert runners["slow"].dropped > 0 and len(slow.got) + runners["slow"].dropped == n
    assert runners["failing"].errors > 0 and runners["failing"].errors + runners["failing"].dropped == n
    assert p.snapshot().sink_drops["slow"] == runners["slow"].dropped


async def _stalling_items() -> AsyncIterator[object]:
    x = emg("normal", 8000.0, 1.0)
    yield StreamInfo("st", "st", 8000.0, ("c",))
    for i in range(5):
        yield Chunk("st", x[i * 80 : (i + 1) * 80], np.arange(80) / 8000.0 + i * 0.01)
    await asyncio.sleep(0.8)  # the source stalls
    yield Chunk("st", x[400:480], np.arange(80) / 8000.0 + 0.05)
    await asyncio.sleep(0.1)


async def test_stalled_stream_goes_stale_and_recovers(bundle) -> None:
    src = MemorySource(_stalling_items(), realtime=True)
    p = Pipeline([src], [], bundle=bundle, settings=PipelineSettings(stale_after_s=0.3))
    seen: list[StreamStatus] = []

    async def watch() -> None:
        for _ in range(200):
            await asyncio.sleep(0.01)
            for s in p.snapshot().streams:
                if not seen or seen[-1] is not s.status:
                    seen.append(s.status)

    await asyncio.wait_for(asyncio.gather(p.run(), watch()), timeout=30)
    assert StreamStatus.STALE in seen
    assert seen.index(StreamStatus.STALE) < len(seen) - 1 and StreamStatus.LIVE in seen[seen.index(StreamStatus.STALE):]


async def test_duration_and_stop_end_a_never_ending_source(bundle) -> None:
    async def forever() -> AsyncIterator[object]:
        yield StreamInfo("f", "f", 8000.0, ("c",))
        i = 0
        while True:
            yield Chunk("f", np.zeros((80, 1), np.float32), np.arange(80) / 8000.0 + i * 0.01)
            i += 1
            await asyncio.sleep(0.005)

    p = Pipeline([MemorySource(forever(), realtime=True)], [], bundle=bundle)
    await asyncio.wait_for(p.run(duration=0.5), timeout=10)
    p2 = Pipeline([MemorySource(forever(), realtime=True)], [], bundle=bundle)
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, p2.stop)
    await asyncio.wait_for(p2.run(), timeout=10)
    assert [s.stream_id for s in p2.snapshot().streams] == ["f"]


async def test_streams_beyond_the_channel_rate_and_count_limits_are_refused(bundle) -> None:
    x = emg("normal", 8000.0, 1.5)
    wide = np.repeat(x, 5, axis=1)
    p, mem = await run_pipeline(
        [
            MemorySource.from_array("ok", x, 8000.0, chunk_sizes=400),
            MemorySource.from_array("wide", wide, 8000.0, chunk_sizes=400),
            MemorySource.from_array("fast", x, 8000.0 * 40, chunk_sizes=400),
            MemorySource.from_array("extra", x, 8000.0, chunk_sizes=400),
        ],
        bundle,
        settings=PipelineSettings(max_channels=4, max_fs_hz=100_000.0, max_streams=1),
    )
    assert not mem.by_stream("wide") and not mem.by_stream("fast")
    # one of the two acceptable streams got the only place; the other was refused by max_streams
    assert bool(mem.by_stream("ok")) != bool(mem.by_stream("extra"))
    assert p.refused_streams == 3
    assert any("5 channels" in e and "max_channels" in e for e in p.errors)
    assert any("320000 Hz" in e for e in p.errors)
