"""Fault matrix on the pipeline with memory, sim and file sources: each fault is contained and reported.

In every case a healthy reference stream ("good") runs beside the faulty one, and its estimates are
asserted equal to a run of "good" alone: a fault never changes another stream's results.
LSL and MQTT faults (outlet lost, broker down or restarted, publish failures) are tested with the real
services under ``tests/lsl`` and ``tests/mqtt``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import streamemg.pipeline as pipeline_module
from simulators.synth import EMGSimulator
from streamemg.engine import EngineSettings, InferenceEngine
from streamemg.errors import SourceError
from streamemg.model import ModelBundle, untrained_bundle
from streamemg.pipeline import Pipeline, PipelineSettings
from streamemg.sinks.base import open_sink
from streamemg.sinks.memory import MemorySink
from streamemg.sources.base import open_source
from streamemg.sources.memory import MemorySource
from streamemg.types import Chunk, Estimate, StatusEvent, StreamInfo, StreamStatus

FS = 8000.0
ENGINE = EngineSettings(device="cpu", max_wait_ms=2.0, warmup=False)
GOOD_SECONDS = 3.0


def emg(cls: str, seconds: float, channels: int = 1, seed: int = 0, fs: float = FS) -> np.ndarray:
    return EMGSimulator(cls, fs, n_channels=channels, seed=seed).generate(round(fs * seconds))


GOOD = emg("als", GOOD_SECONDS, seed=11)


def good_source(realtime: bool = False) -> MemorySource:
    return MemorySource.from_array("good", GOOD, FS, chunk_sizes=400, realtime=realtime)


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    # "trained" so that labels are given for good windows and the tests can see them withheld for bad ones
    return dataclasses.replace(untrained_bundle(seed=0), trained=True)


@pytest.fixture(scope="module")
def good_alone(bundle: ModelBundle) -> list[Estimate]:
    _, mem = asyncio.run(run([good_source()], bundle))
    assert len(mem.estimates) == 9
    return mem.estimates


async def run(sources: list[Any], bundle: ModelBundle, sinks: tuple[Any, ...] = (), **kw: Any
              ) -> tuple[Pipeline, MemorySink]:
    mem = MemorySink()
    kw.setdefault("engine_settings", ENGINE)
    p = Pipeline(sources, [mem, *sinks], bundle=bundle, **kw)
    await asyncio.wait_for(p.run(), timeout=120)
    return p, mem


def assert_unaffected(mem: MemorySink, good_alone: list[Estimate]) -> None:
    """The good stream's estimates equal those of a run of it alone."""
    got = mem.by_stream("good")
    assert [e.index for e in got] == [e.index for e in good_alone]
    for name in ("probabilities", "rolling", "cumulative"):
        np.testing.assert_allclose([getattr(e, name) for e in got], [getattr(e, name) for e in good_alone],
                                   atol=1e-5)
    assert [e.label for e in got] == [e.label for e in good_alone]
    assert all(e.quality == "ok" and e.label is not None for e in got)


def snap(p: Pipeline, stream_id: str) -> Any:
    return {s.stream_id: s for s in p.snapshot().streams}[stream_id]


# ---------------------------------------------------------------------------------------------- bad signal


def _signal_faults() -> dict[str, np.ndarray]:
    """4.5 s per stream: 1.5 s good, 1.5 s fault, 1.5 s good."""
    out = {}
    for i, kind in enumerate(("nan", "inf", "flat", "clipping")):
        x = emg("normal", 4.5, seed=20 + i) * 3.0
        bad = slice(round(1.5 * FS), round(3.0 * FS))
        if kind == "nan":
            x[bad][::7] = np.nan
        elif kind == "inf":
            x[bad][100:110] = np.inf
            x[bad][500] = -np.inf
        elif kind == "flat":
            x[bad] = 12.5  # a held value (disconnected input)
        else:
            rail = np.percentile(np.abs(x[bad]), 80)
            x[bad] = np.clip(x[bad], -rail, rail)  # the amplifier saturates
        out[f"bad-{kind}"] = x
    return out


async def test_nan_inf_flat_and_clipped_signal_are_flagged_without_a_label(bundle, good_alone) -> None:
    faults = _signal_faults()
    sources = [good_source()] + [MemorySource.from_array(k, v, FS, chunk_sizes=400) for k, v in faults.items()]
    p, mem = await run(sources, bundle)
    assert_unaffected(mem, good_alone)
    expect = {"bad-nan": "nan", "bad-inf": "nan", "bad-flat": "flat", "bad-clipping": "clipping"}
    for sid, flag in expect.items():
        ests = mem.by_stream(sid)
        assert len(ests) == 15
        flagged = [e for e in ests if e.quality == flag]
        assert flagged, (sid, [e.quality for e in ests])
        for e in flagged:
            assert e.label is None and e.confidence == 0.0 and e.channel_quality == (flag,)
        assert ests[0].quality == "ok" and ests[0].label is not None  # before the fault
        assert ests[-1].quality == "ok" and ests[-1].label is not None  # the stream recovered by itself
        assert all(np.isfinite(e.rolling).all() for e in ests)  # the rolling estimate was never poisoned
    assert not p.errors


async def test_one_bad_channel_of_two_leaves_the_estimate_to_the_good_channel(bundle) -> None:
    x = emg("als", 3.0, channels=2, seed=30)
    x[:, 1] = np.nan
    _, mem = await run([MemorySource.from_array("two", x, FS, chunk_sizes=400)], bundle)
    ests = mem.by_stream("two")
    assert ests and all(e.channel_quality == ("ok", "nan") for e in ests)
    assert all(e.quality == "ok" and e.label is not None for e in ests)


# ---------------------------------------------------------------------------------------------- sequence faults


def _seq_items(order: list[int | None], stream_id: str = "seq") -> list[Any]:
    x = emg("myopathy", 0.2 * 20, seed=40)
    ts = np.arange(len(x)) / FS
    items: list[Any] = [StreamInfo(stream_id, stream_id, FS, ("c",))]
    for k in order:
        if k is None:
            continue
        sl = slice(k * 1600, (k + 1) * 1600)
        items.append(Chunk(stream_id, x[sl], ts[sl], k))
    return items


async def test_duplicate_late_and_missing_chunks_are_counted_and_contained(bundle, good_alone) -> None:
    clean = list(range(20))
    faulty = [0, 1, 2, 2, 3, 5, 4, 6, 7, 8, 8, 8, 9, 12, 13, 10, 14, 15, 16, 17, 18, 19]  # dup, swap, gap 10-11
    p, mem = await run([good_source(), MemorySource(_seq_items(faulty))], bundle)
    assert_unaffected(mem, good_alone)
    s = snap(p, "seq")
    assert s.rejected == 5  # 2, 4 (late), 8, 8 (duplicates), 10 (late)
    assert s.dropped_samples == (1 + 2) * 1600  # 4 was missing when 5 came, 10 and 11 when 12 came
    # the estimates equal those of the stream without the rejected chunks (and without 4, 10, 11)
    accepted = [0, 1, 2, 3, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 18, 19]
    _, ref = await run([MemorySource(_seq_items(accepted))], bundle)
    np.testing.assert_allclose([e.rolling for e in mem.by_stream("seq")], [e.rolling for e in ref.by_stream("seq")],
                               atol=1e-5)
    _, whole = await run([MemorySource(_seq_items(clean))], bundle)
    assert len(whole.by_stream("seq")) > len(mem.by_stream("seq"))  # the gap cost windows, nothing was invented


# ---------------------------------------------------------------------------------------------- format changes


async def test_rate_and_channel_change_with_a_new_announcement_reinitialises(bundle, good_alone) -> None:
    one, two = emg("als", 2.0, seed=50), emg("als", 2.0, channels=3, seed=51, fs=10000.0)
    items = [StreamInfo("chg", "chg", FS, ("a",)), Chunk("chg", one, np.arange(len(one)) / FS, 0),
             StreamInfo("chg", "chg", 10000.0, ("a", "b", "c")), Chunk("chg", two, 2 + np.arange(len(two)) / 1e4, 1)]
    p, mem = await run([good_source(), MemorySource(items)], bundle)
    assert_unaffected(mem, good_alone)
    ests = mem.by_stream("chg")
    assert {len(e.channel_quality) for e in ests} == {1, 3}
    assert snap(p, "chg").n_channels == 3 and snap(p, "chg").fs == 10000.0 and not p.errors


async def test_channel_change_without_announcement_is_rejected_with_a_clear_error(bundle, good_alone) -> None:
    x = emg("normal", 3.0, seed=52)
    ts = np.arange(len(x)) / FS
    items: list[Any] = [StreamInfo("unannounced", "unannounced", FS, ("a",))]
    for k in range(12):
        sl = slice(k * 2000, (k + 1) * 2000)
        data = np.repeat(x[sl], 2, axis=1) if k in (4, 5) else x[sl]  # two chunks with 2 channels
        items.append(Chunk("unannounced", data, ts[sl], k))
    p, mem = await run([good_source(), MemorySource(items)], bundle)
    assert_unaffected(mem, good_alone)
    assert snap(p, "unannounced").rejected == 2
    assert sum("expected (n, 1)" in e and "announce a new StreamInfo" in e for e in p.errors) == 2
    assert mem.by_stream("unannounced")  # the stream went on after the bad chunks
    assert snap(p, "unannounced").dropped_samples == 2 * 2000  # the seq gap left by the rejected chunks


async def test_a_stream_below_the_model_rate_is_refused_others_go_on(bundle, good_alone) -> None:
    slow = emg("normal", 2.0, seed=53, fs=4000.0)
    p, mem = await run([good_source(), MemorySource.from_array("slow", slow, 4000.0, chunk_sizes=400)], bundle)
    assert_unaffected(mem, good_alone)
    assert not mem.by_stream("slow")
    assert any("4000 Hz" in e and "does not upsample" in e for e in p.errors)


# ---------------------------------------------------------------------------------------------- sources


async def _dies_after(n_chunks: int, stream_ids: tuple[str, ...]) -> AsyncIterator[Any]:
    x = emg("normal", 3.0, seed=60)
    for sid in stream_ids:
        yield StreamInfo(sid, sid, FS, ("c",))
    for k in range(n_chunks):
        for sid in stream_ids:
            yield Chunk(sid, x[k * 400 : (k + 1) * 400], np.arange(k * 400, (k + 1) * 400) / FS, k)
        await asyncio.sleep(0)
    raise RuntimeError("device driver crashed")


async def test_a_source_that_raises_ends_only_its_own_streams(bundle, good_alone) -> None:
    dying = MemorySource(_dies_after(30, ("d1", "d2")), uri="memory:dying")
    p, mem = await run([good_source(), dying], bundle)
    assert_unaffected(mem, good_alone)
    assert snap(p, "d1").status is StreamStatus.ENDED and snap(p, "d2").status is StreamStatus.ENDED
    assert "device driver crashed" in p.source_errors["memory:dying"]
    assert any("memory:dying failed: RuntimeError" in e for e in p.errors)
    assert len(mem.by_stream("d1")) == len(mem.by_stream("d2")) == 3  # its windows before the crash


class _CannotOpen(MemorySource):
    async def __aenter__(self) -> _CannotOpen:
        raise SourceError("no device at /dev/ttyEMG0")


async def test_a_source_that_cannot_open_is_reported_others_go_on(bundle, good_alone) -> None:
    p, mem = await run([good_source(), _CannotOpen([], uri="memory:missing")], bundle)
    assert_unaffected(mem, good_alone)
    assert "no device" in p.source_errors["memory:missing"]


async def test_an_unreadable_file_ends_its_source_only(bundle, good_alone, tmp_path: Path) -> None:
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00garbage that is not a header")
    p, mem = await run([good_source(), open_source(f"file:{bad}?speed=max")], bundle)
    assert_unaffected(mem, good_alone)
    assert any("broken.npy" in e for e in p.errors)


async def test_a_stalled_source_goes_stale_within_about_a_second_and_recovers(bundle) -> None:
    """Default settings: stale after 1 s without data (the watchdog looks every 0.25 s), live again on data."""
    x = emg("normal", 3.0, seed=61)
    loop = asyncio.get_running_loop()
    marks: dict[str, float] = {}

    async def stalls() -> AsyncIterator[Any]:
        yield StreamInfo("stall", "stall", FS, ("c",))
        for k in range(5):
            yield Chunk("stall", x[k * 80 : (k + 1) * 80], np.arange(k * 80, (k + 1) * 80) / FS, k)
            await asyncio.sleep(0.01)
        marks["last"] = loop.time()
        await asyncio.sleep(1.8)
        yield Chunk("stall", x[400:480], np.arange(400, 480) / FS, 5)
        marks["back"] = loop.time()
        await asyncio.sleep(0.3)

    async def steady() -> AsyncIterator[Any]:
        yield StreamInfo("steady", "steady", FS, ("c",))
        for k in range(130):
            yield Chunk("steady", x[k * 160 : (k + 1) * 160], np.arange(k * 160, (k + 1) * 160) / FS, k)
            await asyncio.sleep(0.02)

    p = Pipeline([MemorySource(stalls(), realtime=True), MemorySource(steady(), realtime=True)], [], bundle=bundle,
                 engine_settings=ENGINE)
    seen: list[tuple[float, StreamStatus, StreamStatus]] = []

    async def watch() -> None:
        while not run_task.done():
            await asyncio.sleep(0.02)
            if p.streams:
                s = {st.stream_id: st.status for st in p.snapshot().streams}
                if "stall" in s and "steady" in s:
                    seen.append((loop.time(), s["stall"], s["steady"]))

    run_task = asyncio.create_task(p.run())
    await asyncio.wait_for(asyncio.gather(run_task, watch()), 30)
    stale_at = next(t for t, a, _ in seen if a is StreamStatus.STALE)
    assert 0.9 <= stale_at - marks["last"] <= 1.5
    assert any(a is StreamStatus.LIVE and t >= marks["back"] for t, a, _ in seen)  # recovered by itself
    assert all(b is StreamStatus.LIVE for t, _, b in seen if t < marks["back"])  # the other stream never stalled


# ---------------------------------------------------------------------------------------------- limits


async def test_streams_beyond_max_streams_are_refused_counted_and_reported(bundle, good_alone) -> None:
    extra = [MemorySource.from_array(f"x{i}", emg("normal", 0.5, seed=70 + i), FS, chunk_sizes=400) for i in range(3)]
    p, mem = await run([good_source(), *extra], bundle, settings=PipelineSettings(max_streams=2))
    assert_unaffected(mem, good_alone)
    assert len(p.streams) == 2 and p.refused_streams == 2
    assert sum("refused" in e and "max_streams" in e for e in p.errors) == 2


# ---------------------------------------------------------------------------------------------- outputs


async def test_an_output_on_a_full_disk_is_reported_while_the_pipeline_goes_on(bundle, good_alone) -> None:
    full = open_sink("jsonl:/dev/full")  # every write fails with ENOSPC, as on a full file system
    p, mem = await run([good_source()], bundle, sinks=(full,))
    assert_unaffected(mem, good_alone)
    runner = next(r for r in p.runners if r.sink is full)
    assert runner.errors >= 1 and "No space left on device" in runner.last_error
    assert runner.sent == 0 and runner.errors + runner.dropped >= 1


class _BrokenAnnounce(MemorySink):
    async def announce(self, info: StreamInfo) -> None:
        raise OSError("outlet could not be created")


async def test_an_output_that_fails_to_announce_or_open_does_not_stop_others(bundle, good_alone) -> None:
    class CannotOpen(MemorySink):
        async def __aenter__(self) -> CannotOpen:
            raise OSError("permission denied")

    broken, closed = _BrokenAnnounce(name="broken"), CannotOpen(name="cannot-open")
    p, mem = await run([good_source()], bundle, sinks=(broken, closed))
    assert_unaffected(mem, good_alone)
    assert len(broken.estimates) == 9  # estimates still reach the output whose announce failed
    assert any("cannot-open could not be opened" in e for e in p.errors)


# ---------------------------------------------------------------------------------------------- inference device


class _OutOfMemoryAbove(nn.Module):
    """Wraps the real model; raises like an exhausted GPU for batches above ``limit`` rows, or always."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.always = False
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        if self.always or x.shape[0] > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def _flaky_bundle(bundle: ModelBundle, limit: int) -> tuple[ModelBundle, list[_OutOfMemoryAbove]]:
    made: list[_OutOfMemoryAbove] = []

    class Flaky(ModelBundle):
        def build(self, device: str | torch.device = "cpu") -> Any:
            m = _OutOfMemoryAbove(super().build(device), limit)
            made.append(m)
            return m

    fields = {f.name: getattr(bundle, f.name) for f in dataclasses.fields(bundle)}
    return Flaky(**fields), made


def _many_good() -> list[MemorySource]:
    return [good_source()] + [
        MemorySource.from_array(f"o{i}", emg("normal", GOOD_SECONDS, seed=80 + i), FS, chunk_sizes=400)
        for i in range(5)
    ]


async def test_out_of_memory_on_big_batches_falls_back_to_smaller_batches(bundle, good_alone) -> None:
    flaky, made = _flaky_bundle(bundle, limit=2)
    p, mem = await run(_many_good(), flaky, engine_settings=dataclasses.replace(ENGINE, max_wait_ms=50.0))
    assert_unaffected(mem, good_alone)
    model = made[-1]
    assert max(model.sizes) > 2  # big batches were tried ...
    assert p.engine is not None and p.engine.stats.errors >= 1 and p.engine.stats.failed == 0  # ... and split
    assert all(e.quality == "ok" for e in mem.estimates) and len(mem.estimates) == 6 * 9


async def test_a_lost_gpu_falls_back_to_the_cpu(bundle, good_alone, monkeypatch: pytest.MonkeyPatch) -> None:
    class LostGPU(InferenceEngine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # the model "lives" on a GPU that is gone: moving a batch there fails on this CPU-only torch
            self.device = torch.device("cuda")

    monkeypatch.setattr(pipeline_module, "InferenceEngine", LostGPU)
    p, mem = await run(_many_good(), bundle)
    assert_unaffected(mem, good_alone)
    assert p.engine is not None and p.engine.device.type == "cpu" and p.engine.stats.fallbacks == 1
    assert p.engine.stats.failed == 0 and len(mem.estimates) == 6 * 9


async def test_a_failing_device_withholds_estimates_and_recovers(bundle) -> None:
    flaky, made = _flaky_bundle(bundle, limit=10_000)
    x = emg("als", 6.0, seed=90)

    async def items() -> AsyncIterator[Any]:
        yield StreamInfo("dev", "dev", FS, ("c",))
        for k in range(60):
            if made:
                made[-1].always = 12 <= k < 30  # the device fails for a while
            yield Chunk("dev", x[k * 800 : (k + 1) * 800], np.arange(k * 800, (k + 1) * 800) / FS, k)
            await asyncio.sleep(0.01)

    p, mem = await run([MemorySource(items(), realtime=True)], flaky)
    ests = mem.by_stream("dev")
    assert len(ests) == 21
    failed = [e for e in ests if e.quality == "no usable channel"]
    assert failed and all(e.label is None and np.isnan(e.probabilities).all() for e in failed)
    assert ests[-1].quality == "ok" and ests[-1].label is not None  # the device came back
    assert p.engine is not None and p.engine.stats.failed == len(failed)


# ---------------------------------------------------------------------------------------------- status events


async def test_a_status_event_for_a_gap_is_counted(bundle, good_alone) -> None:
    x = emg("normal", 2.0, seed=95)
    items = [StreamInfo("g", "g", FS, ("c",)), Chunk("g", x[:8000], np.arange(8000) / FS, None),
             StatusEvent("g", StreamStatus.RECONNECTING, "broker lost", dropped_samples=1234),
             StatusEvent("unknown-stream", StreamStatus.LIVE, "ignored"),
             Chunk("g", x[8000:], np.arange(8000, 16000) / FS, None)]
    p, mem = await run([good_source(), MemorySource(items)], bundle)
    assert_unaffected(mem, good_alone)
    assert snap(p, "g").dropped_samples == 1234 and snap(p, "g").status is StreamStatus.ENDED


# ---------------------------------------------------------------------------------------------- supervision


class _FlakyLive(MemorySource):
    """A live source whose first run crashes after ``crash_after`` chunks; its ``fresh()`` copy goes on from there
    to the end (as a device that kept streaming while its transport was restarted)."""

    def __init__(self, crash_after: int | None, error: BaseException, made: list[Any], start: int = 0) -> None:
        self.crash_after, self.error, self.made = crash_after, error, made
        self.next = start
        x = GOOD
        n = x.shape[0] // 400

        async def items() -> AsyncIterator[Any]:
            yield StreamInfo("flaky", "flaky", FS, ("ch1",))
            for k in range(start, n):
                self.next = k
                if self.crash_after is not None and k == self.crash_after:
                    raise self.error
                yield Chunk("flaky", x[k * 400 : (k + 1) * 400], np.arange(k * 400, (k + 1) * 400) / FS, k)
                await asyncio.sleep(0.001)

        super().__init__(items(), uri="memory:flaky", realtime=True)
        made.append(self)

    def fresh(self) -> _FlakyLive:
        return _FlakyLive(None, self.error, self.made, start=self.next)


async def test_a_live_source_that_fails_is_restarted_with_backoff_and_its_stream_goes_on(bundle) -> None:
    made: list[Any] = []
    p, mem = await run([_FlakyLive(30, RuntimeError("liblsl internal error"), made)], bundle)
    assert len(made) == 2, "the pipeline restarted the source once, from a fresh copy"
    assert p.source_restarts["memory:flaky"] == 1
    assert p.failed_sources == {}
    assert any("memory:flaky failed (RuntimeError: liblsl internal error); restarting it in" in e for e in p.errors)
    # every window: those before the crash (1.5 s) and those after the restart, none lost, none twice
    assert [e.index for e in mem.by_stream("flaky")] == list(range(9))
    assert p.streams["flaky"].reconnects == 1


class _NewStreamAfterRestart(_FlakyLive):
    """Crashes like :class:`_FlakyLive`; its fresh copy announces a stream first seen after the restart."""

    def fresh(self) -> MemorySource:
        x = GOOD[: 8 * 400]

        async def items() -> AsyncIterator[Any]:
            yield StreamInfo("late", "late", FS, ("ch1",))
            for k in range(8):
                yield Chunk("late", x[k * 400 : (k + 1) * 400], np.arange(k * 400, (k + 1) * 400) / FS, k)
                await asyncio.sleep(0.001)

        fresh = MemorySource(items(), uri="memory:flaky", realtime=True)
        self.made.append(fresh)
        return fresh


async def test_a_restarted_source_keeps_its_site_calibration(bundle) -> None:
    made: list[Any] = []
    n_freqs = bundle.config.features.n_freqs
    site = torch.stack([torch.full((2, n_freqs), 2.0), torch.zeros(2, n_freqs)])
    p, _ = await run([_NewStreamAfterRestart(30, RuntimeError("transport lost"), made)], bundle, sites=[site])
    assert len(made) == 2 and p.source_restarts["memory:flaky"] == 1
    assert p.streams["flaky"].site == 1
    assert p.streams["late"].site == 1, "a stream first seen after the restart is calibrated like the others"


async def test_a_live_source_with_an_error_a_restart_cannot_fix_is_given_up(bundle, good_alone) -> None:
    from streamemg.errors import ConfigError

    made: list[Any] = []
    p, mem = await run([good_source(), _FlakyLive(5, ConfigError("channels=X: no such channel"), made)], bundle)
    assert len(made) == 1 and p.source_restarts["memory:flaky"] == 0
    assert p.failed_sources == {"memory:flaky": "channels=X: no such channel"}
    assert_unaffected(mem, good_alone)


def test_a_run_whose_sources_all_failed_exits_1_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    from streamemg.cli.main import main as cli_main

    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00garbage that is not a header")
    code = cli_main(["run", "--source", f"file:{bad}?speed=max", "--no-dashboard", "--duration", "30",
                     "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert "the run ended with every source failed" in err and "broken.npy" in err


def test_a_run_whose_sources_ended_normally_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streamemg.cli.main import main as cli_main

    good = tmp_path / "good.npy"
    np.save(good, GOOD)
    (tmp_path / "good.npy.json").write_text('{"fs": 8000}')
    code = cli_main(["run", "--source", f"file:{good}?speed=max", "--no-dashboard", "--duration", "30",
                     "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.count("\n") >= 9  # one JSON line per estimate


async def test_streams_found_but_not_open_are_shown_connecting_until_announced(bundle) -> None:
    gate = asyncio.Event()
    seen: list[tuple[tuple[str, str], ...]] = []

    async def items() -> AsyncIterator[Any]:
        yield StatusEvent("slow", StreamStatus.CONNECTING, "opening its inlet")
        await gate.wait()
        yield StreamInfo("slow", "slow", FS, ("ch1",))
        for k in range(8):
            yield Chunk("slow", GOOD[k * 400 : (k + 1) * 400], np.arange(k * 400, (k + 1) * 400) / FS, k)

    p = Pipeline([MemorySource(items(), uri="memory:slow")], [], bundle=bundle, engine_settings=ENGINE)
    task = asyncio.create_task(p.run())
    for _ in range(200):
        if p.snapshot().connecting:
            break
        await asyncio.sleep(0.01)
    seen.append(p.snapshot().connecting)
    gate.set()
    await asyncio.wait_for(task, 30)
    assert seen == [(("slow", "opening its inlet"),)]
    assert p.snapshot().connecting == () and "slow" in p.streams
