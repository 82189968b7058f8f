"""``streamemg bench`` and the performance machinery behind it: inference variants, CUDA-graph bookkeeping (on the
CPU), the fast DSP paths, deferred ingest, and a tiny end-to-end benchmark run."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
import torch
from torch import nn

import streamemg.dsp as dsp
import streamemg.pipeline as pipeline_mod
from streamemg.bench import (
    BenchSettings,
    BenchSource,
    make_templates,
    measure_batching,
    measure_ingest,
    measure_matmul,
    measure_model,
    read_rss_mb,
    run_realtime,
    search_capacity,
)
from streamemg.cli.main import main as cli_main
from streamemg.dsp import FilterSettings, Resampler, StreamFilter
from streamemg.engine import (
    EngineSettings,
    FoldedClassifier,
    GraphRunner,
    InferenceEngine,
    default_threads,
    graph_buckets,
    optimize_model,
)
from streamemg.errors import ConfigError
from streamemg.features import FeatureSettings
from streamemg.model import ArchSettings, ModelConfig, untrained_bundle
from streamemg.pipeline import Pipeline, PipelineSettings, StreamState
from streamemg.sources.memory import MemorySource
from streamemg.types import Chunk, SourceItem, StreamInfo, Window

T = 1000  # 125 ms windows at 8 kHz keep everything fast
SMALL = ModelConfig(window_samples=T, hop_samples=250)


@pytest.fixture(scope="module")
def bundle():
    return untrained_bundle(SMALL, seed=3)


@pytest.fixture(scope="module")
def templates() -> np.ndarray:
    return make_templates(2, 8000.0, 1.0, 80)


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial batch-norm statistics and affine parameters, so folding them is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen) * 0.5 + 1.0)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)


# ---------------------------------------------------------------------------------------------- inference variants


@pytest.mark.parametrize(
    "config",
    [
        SMALL,
        ModelConfig(window_samples=T, hop_samples=250, arch=ArchSettings(attention=False)),
        ModelConfig(window_samples=T, hop_samples=250, features=FeatureSettings(normalize="window")),
        # a frame that is not a whole number of hops (unfolded frames), and n_fft > win_length
        ModelConfig(window_samples=T, hop_samples=250, features=FeatureSettings(n_fft=256, win_length=200,
                                                                                hop_length=96)),
        ModelConfig(window_samples=T, hop_samples=250, arch=ArchSettings(waveform_stats="all")),
    ],
    ids=["default", "no-attention", "window-normalised", "odd-frames", "waveform-stats"],
)
def test_folded_classifier_equals_the_classifier(config: ModelConfig) -> None:
    model = untrained_bundle(config, seed=1).build()
    _randomise_norms(model)
    x = torch.randn(5, config.window_samples, generator=torch.Generator().manual_seed(2)) * 80.0
    with torch.inference_mode():
        ref = torch.softmax(model(x), -1)
        folded = FoldedClassifier(model, config.window_samples)
        np.testing.assert_allclose(torch.softmax(folded(x), -1).numpy(), ref.numpy(), atol=1e-5)
        np.testing.assert_allclose(folded(x[2:3]).numpy(), model(x[2:3]).numpy(), atol=1e-4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimize_model(model, config.window_samples, torch.device("cpu"), "trace")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_optimize_model_variants_and_fallback() -> None:
    model = untrained_bundle(SMALL, seed=4).build()
    _randomise_norms(model, 1)
    x = torch.randn(7, T) * 50.0
    with torch.inference_mode():
        ref = torch.softmax(model(x), -1)
        for mode in ("auto", "fold", "trace", "none"):
            opt = optimize_model(model, T, torch.device("cpu"), mode)
            assert opt.mode == ("trace" if mode == "auto" else mode) and opt.max_abs_diff <= 1e-4
            for b in (7, 1, 3):  # any batch size, also for the traced graph
                np.testing.assert_allclose(torch.softmax(opt.module(x[:b]), -1).numpy(), ref[:b].numpy(), atol=1e-4)
    # a module that is not a Classifier is run as given, with a note
    plain = nn.Sequential(nn.Linear(T, 3))
    opt = optimize_model(plain, T, torch.device("cpu"), "trace")
    assert opt.mode == "none" and opt.module is plain and "not a Classifier" in opt.note
    with pytest.raises(ConfigError, match="optimize mode"):
        optimize_model(model, T, torch.device("cpu"), "fastest")
    with pytest.raises(ConfigError, match=r"EngineSettings\.optimize="):
        EngineSettings(optimize="fastest")
    with pytest.raises(ConfigError, match=r"EngineSettings\.cuda_graphs="):
        EngineSettings(cuda_graphs="yes")  # type: ignore[arg-type]


def test_default_threads_leave_a_core_for_the_loop() -> None:
    n = default_threads(torch.device("cpu"))
    assert n is not None and n >= 1
    assert default_threads(torch.device("cuda")) is None


# ---------------------------------------------------------------------------------------------- CUDA-graph bookkeeping


def test_graph_buckets() -> None:
    assert graph_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert graph_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert graph_buckets(1) == (1,)


class FakeCapture:
    """A CPU stand-in for CUDA-graph capture: static tensors and a replay that runs the model on them."""

    def __init__(self, model: nn.Module, fail: set[int] | None = None) -> None:
        self.model = model
        self.fail = fail or set()
        self.captured: list[int] = []
        self.seen_inputs: list[torch.Tensor] = []

    def __call__(self, bucket: int) -> tuple[torch.Tensor, Callable[[], None], torch.Tensor]:
        if bucket in self.fail:
            raise RuntimeError("capture failed")
        self.captured.append(bucket)
        static_in = torch.full((bucket, T), float("nan"))  # stale garbage that padding must clear
        static_out = torch.zeros((bucket, 3))

        def replay() -> None:
            self.seen_inputs.append(static_in.clone())
            with torch.inference_mode():
                static_out.copy_(torch.softmax(self.model(static_in), -1))

        return static_in, replay, static_out


def test_graph_runner_buckets_padding_and_failures(bundle) -> None:
    model = bundle.build()
    fake = FakeCapture(model, fail={8})
    runner = GraphRunner(fake, graph_buckets(16))
    x = torch.randn(3, T) * 50.0
    with torch.inference_mode():
        out = runner.run(x)
        assert out is not None and out.shape == (3, 3)
        np.testing.assert_allclose(out.numpy(), torch.softmax(model(x), -1).numpy(), atol=1e-5)
        assert fake.captured == [4] and runner.padded_rows == 1
        assert torch.equal(fake.seen_inputs[-1][3:], torch.zeros(1, T))  # padding rows zeroed
        runner.run(x[:4])
        assert fake.captured == [4] and runner.replays == 2  # captured once per bucket
        assert runner.run(torch.randn(6, T)) is None and 8 in runner.failed  # failed capture: eager
        assert runner.run(torch.randn(7, T)) is None and fake.captured == [4]  # not retried
        assert runner.run(torch.randn(17, T)) is None  # larger than every bucket
    with pytest.raises(ConfigError):
        GraphRunner(fake, (4, 2))


async def test_engine_uses_injected_graphs_and_counts_cpu(bundle) -> None:
    model = bundle.build()
    fake = FakeCapture(model)
    got: dict[int, np.ndarray] = {}
    engine = InferenceEngine(bundle, EngineSettings(device="cpu", max_batch=8, max_wait_ms=20.0),
                             on_result=lambda w, p: got.__setitem__(w.index, p.copy()), graph_capture=fake)
    assert engine.graphs is not None and engine.optimized.mode == "trace"
    rng = np.random.default_rng(0)
    windows = [Window("s", i, (rng.normal(size=(1 + i % 2, T)) * 50).astype(np.float32), 0.0, 0.0,
                      ("ok",) * (1 + i % 2)) for i in range(6)]
    async with engine:
        for w in windows:
            engine.submit_nowait(w)
        await engine.drain()
    assert engine.graphs.replays >= 1 and fake.captured
    with torch.inference_mode():
        for w in windows:
            np.testing.assert_allclose(got[w.index], torch.softmax(model(torch.from_numpy(w.data)), -1).numpy(),
                                       atol=1e-4)
    assert engine.stats.cpu_s > 0 and engine.stats.windows == 6


# ---------------------------------------------------------------------------------------------- fast DSP paths


@pytest.mark.parametrize("fs", [8000.0, 10000.0, 12000.0, 23437.5])
def test_resampler_input_needed_inverts_output_length(fs: float) -> None:
    r = Resampler(fs, 4000.0, 1)
    r.process(np.zeros((137, 1), np.float32))  # a non-zero phase
    for m in range(0, 40):
        n = r.input_needed(m)
        assert r.output_length(n) >= m
        assert n == 0 or r.output_length(n - 1) < m


@pytest.mark.parametrize("fs", [8000.0, 10000.0, 16000.0])
def test_resampler_block_path_equals_gather_path(fs: float, monkeypatch: pytest.MonkeyPatch) -> None:
    x = (np.random.default_rng(1).standard_normal((9000, 3)) * 60).astype(np.float32)
    sizes = [1, 80, 333, 2000, 7, 64, 4000]

    def chunked(r: Resampler) -> np.ndarray:
        out, i, k = [], 0, 0
        while i < len(x):
            out.append(r.process(x[i : i + sizes[k % len(sizes)]]))
            i += sizes[k % len(sizes)]
            k += 1
        return np.concatenate(out)

    fast = chunked(Resampler(fs, 4000.0, 3))
    monkeypatch.setattr(dsp, "_GEMM_MAX_UP", 0)  # force the original gather path
    slow = chunked(Resampler(fs, 4000.0, 3))
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-3)


def test_filter_kernel_path_equals_public_sosfilt(monkeypatch: pytest.MonkeyPatch) -> None:
    x = (np.random.default_rng(2).standard_normal((6000, 2)) * 40 + 250).astype(np.float32)
    x[1000:1010, 1] = np.nan
    fast = StreamFilter(FilterSettings(), 8000.0, 2)
    y_fast = np.concatenate([fast.process(x[i : i + 777]) for i in range(0, len(x), 777)])
    monkeypatch.setattr(dsp, "_SOSFILT_KERNEL", None)
    y_ref = StreamFilter(FilterSettings(), 8000.0, 2).process(x)
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-6, atol=1e-4)
    assert y_fast.dtype == np.float32 and y_fast.flags.c_contiguous and fast.nonfinite == 10


# ---------------------------------------------------------------------------------------------- deferred ingest


def test_level_bins_are_exact_and_skip_non_finite(bundle) -> None:
    settings = PipelineSettings(level_bin_s=0.05)  # 400 samples at 8 kHz
    st = StreamState(StreamInfo("s", "s", 8000.0, ("c",)), None, bundle, settings, lambda: 0.0)
    x = np.full((4000, 1), 30.0, np.float32)
    x[10:20] = np.nan
    ts = np.arange(4000) / 8000.0
    for i in range(0, 4000, 80):
        st.ingest(Chunk("s", x[i : i + 80], ts[i : i + 80], i // 80), 0.0)
    st.ingest(Chunk("s", x[:1], ts[:1], 51), 0.0)  # nothing due: flushes happen per hop or window
    levels = list(st.levels)
    assert len(levels) >= 8
    assert levels[0] == pytest.approx(30.0 * math.sqrt(390 / 400), rel=1e-5)  # NaN samples add nothing
    assert all(v == pytest.approx(30.0, rel=1e-5) for v in levels[1:])


async def _flood(n_chunks: int) -> AsyncIterator[SourceItem]:
    """A live source that never suspends (a transport delivering a backlog at once)."""
    yield StreamInfo("f", "f", 8000.0, ("c",))
    x = (np.random.default_rng(0).standard_normal((n_chunks * 80, 1)) * 50).astype(np.float32)
    ts = np.arange(n_chunks * 80) / 8000.0
    for k in range(n_chunks):
        yield Chunk("f", x[k * 80 : (k + 1) * 80], ts[k * 80 : (k + 1) * 80], k)


async def test_a_flooding_live_source_does_not_starve_the_engine(bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    n_chunks = 1500  # 15 s of signal -> 477 windows, delivered as fast as the loop takes them

    async def run() -> tuple[int, int]:
        got: list[object] = []
        p = Pipeline([MemorySource(_flood(n_chunks), realtime=True)], [], bundle=bundle,
                     engine_settings=EngineSettings(device="cpu", queue_size=32, max_batch=16, max_wait_ms=2.0),
                     on_estimate=got.append)
        await asyncio.wait_for(p.run(), 60)
        assert p.engine is not None
        assert len(got) + p.engine.stats.dropped == (n_chunks * 80 - T) // 250 + 1  # every window accounted for
        return len(got), p.engine.stats.batches

    classified, batches = await run()
    # the engine's worker got turns during the flood: far more than one queue-full of windows was classified
    assert classified > 2 * 32 and batches > 2
    monkeypatch.setattr(pipeline_mod, "_MAX_HOLD_S", 1e9)  # without the periodic turn: starved until the end
    starved, _ = await run()
    assert starved <= 32 + 1 < classified


# ---------------------------------------------------------------------------------------------- the benchmark


async def test_search_capacity_doubles_then_bisects() -> None:
    calls: list[int] = []

    async def run(n: int) -> bool:
        calls.append(n)
        return n <= 300

    cap, tried = await search_capacity(run, {64: True, 256: True}, limit=2048, step=32)
    assert 256 < cap <= 300 and cap % 32 == 0 and tried == calls and tried[0] == 512
    cap, _ = await search_capacity(run, {1: True}, limit=100, step=8)
    assert cap == 100
    cap, _ = await search_capacity(run, {1: False}, limit=100, step=8)
    assert cap == 0


def test_compute_measurements_return_sane_values(bundle) -> None:
    assert measure_matmul(torch.device("cpu"), size=256, trials=2) > 0.1
    m = measure_model(bundle, torch.device("cpu"), batch_sizes=(1, 4), modes=("none", "fold"), min_rows=8, trials=2)
    assert m["mflops_per_window"] > 0 and len(m["sweep"]) == 2
    assert {"batch", "none_us", "fold_us", "none_gflops", "fold_gflops"} <= set(m["sweep"][0])
    assert m["best"]["gflops"] > 0 and m["best"]["batch"] in (1, 4) and m["best"]["mode"] in ("none", "fold")
    assert read_rss_mb() > 10 or math.isnan(read_rss_mb())


async def test_batching_and_ingest_measurements(bundle, templates) -> None:
    b = await measure_batching(bundle, EngineSettings(device="cpu", max_batch=16, max_wait_ms=1.0), templates,
                               burst_sizes=(1, 8), backlog=32, single_windows=8, trials=1)
    for key in ("windows_per_s_batched", "windows_per_s_single", "batched_vs_single", "batching_gain"):
        assert b[key] > 0 and math.isfinite(b[key]), key
    assert set(b["by_streams"]) == {"1", "8"}
    ing = measure_ingest(bundle, templates, seconds=1.0)
    assert 0 < ing["us_per_chunk"] < 10_000 and ing["windows"] == (8000 - T) // 250 + 1


async def test_bench_source_spreads_streams_and_the_pipeline_keeps_up(bundle, templates) -> None:
    src = BenchSource(4, templates, 8000.0, 80, 1.0, 0.5, hop_samples=250, spread=True)
    assert src.starts == [0, 0, 1, 2]  # a quarter hop (250 samples ~ 3 ticks) apart
    r = await run_realtime(bundle, 4, EngineSettings(device="cpu", max_wait_ms=2.0), templates, duration_s=1.5,
                           warmup_s=1.0)
    assert r.windows == r.windows_expected > 0 and r.dropped_windows == 0
    assert 0 <= r.latency_ms_p50 <= r.latency_ms_p99 < 1000 and r.cpu >= 0 and r.loop_cpu >= 0
    assert r.engine_cpu_us_per_window > 0 and r.as_dict()["streams"] == 4


def test_bench_settings_validation() -> None:
    assert BenchSettings(quick=True).counts == (1, 16, 64, 256) and BenchSettings().counts[-1] == 512
    assert BenchSettings(quick=True).run_s < BenchSettings().run_s
    with pytest.raises(ConfigError, match="stream_counts"):
        BenchSettings(stream_counts=(0,))
    with pytest.raises(ConfigError, match="duration_s"):
        BenchSettings(duration_s=0.5)


@pytest.mark.lsl
@pytest.mark.slow
def test_cli_bench_json_tiny_run(bundle, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny full run of the CLI, LSL included: the LSL ingest latency and the LSL capacity of 4 outlets in another
    process (the fleet) are in the JSON report."""
    from streamemg.lsl.executor import lsl_available

    path = tmp_path / "small.pt"
    bundle.save(path)
    out = tmp_path / "report.json"
    code = cli_main(["bench", "--json", "--quick", "--model", str(path), "--streams", "1,4", "--duration", "3",
                     "--latency-streams", "1,3", "--lsl-streams", "4", "--no-qemg", "--no-mqtt",
                     "--output", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == report
    for key in ("matmul_gflops", "model_mflops_per_window", "model_gflops", "windows_per_s_batched",
                "windows_per_s_single", "batched_vs_single", "capacity_streams", "latency_ms_p50", "latency_ms_p99",
                "ingest_us_per_chunk", "rss_mb_per_stream", "scaling", "targets", "dashboard"):
        assert key in report, key
    assert report["matmul_gflops"] > 0 and report["model_gflops"] > 0 and report["windows_per_s_batched"] > 0
    assert [row["streams"] for row in report["scaling"]] == [1, 4]
    assert all(row["windows"] == row["windows_expected"] for row in report["scaling"])
    assert 0 < report["rss_mb_per_stream"] < 50
    assert report["capacity_streams"] in (0, 1, 4)
    assert report["latency_ms_p99"] is None  # no 64-stream run in this configuration
    assert [row["streams"] for row in report["latency_by_load"]] == [1, 3]
    for row in report["latency_by_load"]:
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"] < 2000
    assert report["latency_by_load_max_wait_ms"] == 0.0  # event-driven batching by default
    assert isinstance(report["dashboard"], dict) and report["dashboard"]["frame_ms"] > 0, report["dashboard"]
    assert report["qemg"] is False
    if not lsl_available():  # the report says why instead
        assert str(report["lsl_capacity"]).startswith("unavailable")
        return
    cap = report["lsl_capacity"]
    assert isinstance(cap, dict), cap  # a string says why it could not run
    assert report["lsl_capacity_max_wait_ms"] == 0.0  # the shipped wait, as a lab runs it
    (run,) = cap["runs"]
    assert run["streams"] == 4 and run["classified_streams"] == 4
    assert run["windows"] > 0 and run["latency_ms_p50"] > 0
    assert run["fleet"]["outlets"] == 4 and run["fleet"]["ticks"] > 0 and "lateness_ms_p99" in run["fleet"]
    assert cap["capacity_streams"] in (0, 4) and (cap["capacity_streams"] == 4) == run["keeps_up"]
    assert isinstance(report["lsl"], dict) and report["lsl"]["lost"] == 0, report["lsl"]  # the LSL ingest latency


def test_report_table_shows_the_capacity_with_and_without_qemg(capsys: pytest.CaptureFixture[str]) -> None:
    from streamemg.cli.bench import print_report

    print_report({"qemg": True, "capacity_streams": 896, "qemg_cost": {
        "capacity_streams_qemg_off": 960, "capacity_fall": 0.067, "qemg_process_cpu_at_capacity": 0.71,
        "qemg_analysed_at_capacity": 0.42}})
    out = " ".join(capsys.readouterr().out.split())
    assert "896" in out and "QEMG on" in out
    assert "capacity, QEMG off" in out and "960" in out
    assert "QEMG costs 6.7 % of capacity" in out and "0.71 cores" in out and "analysed 42 %" in out
