"""The dynamic-batching inference engine."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from streamemg.engine import EngineSettings, InferenceEngine, select_device
from streamemg.errors import ConfigError, InferenceError
from streamemg.model import ModelConfig, untrained_bundle
from streamemg.types import Window

T = 1000  # short windows (125 ms at 8 kHz) keep the tests fast
CONFIG = ModelConfig(window_samples=T, hop_samples=250)
BUNDLE = untrained_bundle(CONFIG, seed=5)


def make_window(i: int, channels: int = 1, stream: str = "s", seed: int | None = None) -> Window:
    rng = np.random.default_rng(i if seed is None else seed)
    data = (rng.normal(size=(channels, T)) * 60).astype(np.float32)
    return Window(stream_id=stream, index=i, data=data, t_end=float(i), arrival=0.0, quality=("ok",) * channels)


class Collector:
    """on_result callback that records (window, probs, loop time)."""

    def __init__(self) -> None:
        self.results: list[tuple[Window, np.ndarray, float]] = []
        self.event = asyncio.Event()
        self.expect = 0

    def __call__(self, window: Window, probs: np.ndarray) -> None:
        self.results.append((window, probs.copy(), asyncio.get_running_loop().time()))
        if len(self.results) >= self.expect:
            self.event.set()

    async def wait_for(self, n: int, limit_s: float = 20.0) -> None:
        self.expect = n
        if len(self.results) < n:
            await asyncio.wait_for(self.event.wait(), limit_s)


class RecordingModel(nn.Module):
    """Wraps a model and records every batch size it sees; optionally fails on batches above `fail_above`."""

    def __init__(self, inner: nn.Module, fail_above: int | None = None, always_fail: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.fail_above = fail_above
        self.always_fail = always_fail
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        if self.always_fail or (self.fail_above is not None and x.shape[0] > self.fail_above):
            raise RuntimeError("simulated out of memory")
        return self.inner(x)


def settings(**kw: object) -> EngineSettings:
    base: dict[str, object] = {"device": "cpu", "warmup": False, "max_wait_ms": 2.0}
    base.update(kw)
    return EngineSettings(**base)  # type: ignore[arg-type]


def reference_probs(windows: list[Window]) -> np.ndarray:
    model = BUNDLE.build()
    with torch.inference_mode():
        rows = [
            torch.softmax(model(torch.from_numpy(w.data[c : c + 1])), -1) for w in windows for c in range(w.n_channels)
        ]
    return torch.cat(rows).numpy()


# ---------------------------------------------------------------------------------------------- settings/device


def test_settings_validation() -> None:
    for name, value in {
        "max_batch": 0,
        "max_wait_ms": -1.0,
        "device": "tpu",
        "threads": 0,
        "queue_size": 0,
        "timeout_s": 0.0,
        "freeze_heap": "yes",
        "inline_budget": 1.5,
    }.items():
        with pytest.raises(ConfigError, match=f"EngineSettings.{name}="):
            EngineSettings(**{name: value})  # type: ignore[arg-type]


async def test_the_first_engine_freezes_the_start_up_heap() -> None:
    """After warm-up the objects alive at start-up are out of the cyclic collector's reach (a full collection of
    them stopped the loop for 130-170 ms mid-run); objects made later are still collected."""
    import gc

    async with InferenceEngine(BUNDLE, settings(freeze_heap=True)):
        frozen = gc.get_freeze_count()
    assert frozen > 1000

    class Cycle:
        pass

    a, b = Cycle(), Cycle()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    del a, b
    assert gc.collect() >= 2  # made after the freeze: collected as usual


def test_select_device() -> None:
    yes, no = (lambda: True), (lambda: False)
    assert select_device("auto", no) == torch.device("cpu")
    assert select_device("auto", yes) == torch.device("cuda")
    assert select_device("cpu", yes) == torch.device("cpu")
    assert select_device("cuda:1", yes) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="--device cpu"):
        select_device("cuda", no)
    with pytest.raises(ConfigError, match="not known"):
        select_device("gpu", yes)


def test_engine_refuses_cuda_without_cuda() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        InferenceEngine(BUNDLE, EngineSettings(device="cuda"), cuda_available=lambda: False)
    assert InferenceEngine(BUNDLE, EngineSettings(device="auto"), cuda_available=lambda: False).device.type == "cpu"


# ---------------------------------------------------------------------------------------------- results


async def test_batched_results_equal_one_at_a_time() -> None:
    windows = [make_window(i, channels=1 + i % 3, stream=f"s{i % 4}") for i in range(12)]
    got = Collector()
    async with InferenceEngine(BUNDLE, settings(max_batch=8, max_wait_ms=20.0), got) as engine:
        for w in windows:
            assert engine.submit_nowait(w)
        await engine.drain()
    assert [r[0] for r in got.results] == windows  # delivered in submission order, each once
    assert all(p.shape == (w.n_channels, 3) and p.dtype == np.float32 for w, p, _ in got.results)
    batched = np.concatenate([p for _, p, _ in got.results])
    np.testing.assert_allclose(batched, reference_probs(windows), atol=1e-5)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-5)
    assert engine.stats.batches < len(windows)  # really batched
    assert engine.stats.windows == 12 and engine.stats.rows == sum(w.n_channels for w in windows)


def test_predict_matches_and_slices() -> None:
    rec = RecordingModel(BUNDLE.build())
    engine = InferenceEngine(BUNDLE, settings(max_batch=4), model=rec)
    windows = [make_window(i) for i in range(10)]
    x = np.concatenate([w.data for w in windows])
    probs = engine.predict(x)
    assert probs.shape == (10, 3)
    assert rec.sizes == [4, 4, 2]
    np.testing.assert_allclose(probs, reference_probs(windows), atol=1e-5)


async def test_max_batch_is_respected() -> None:
    rec = RecordingModel(BUNDLE.build())
    got = Collector()
    windows = [make_window(i, channels=(1, 3, 2)[i % 3]) for i in range(20)]
    async with InferenceEngine(BUNDLE, settings(max_batch=4, max_wait_ms=50.0), got, model=rec) as engine:
        for w in windows:
            engine.submit_nowait(w)
        await engine.drain()
    assert len(got.results) == 20
    assert max(rec.sizes) <= 4 and engine.stats.batch_max <= 4
    assert sum(rec.sizes) == sum(w.n_channels for w in windows)
    assert engine.stats.batch_mean > 2.0


async def test_a_window_with_more_channels_than_max_batch_still_runs() -> None:
    got = Collector()
    async with InferenceEngine(BUNDLE, settings(max_batch=2), got) as engine:
        engine.submit_nowait(make_window(0, channels=5))
        await engine.drain()
    assert got.results[0][1].shape == (5, 3)
    np.testing.assert_allclose(got.results[0][1], reference_probs([got.results[0][0]]), atol=1e-5)


async def test_lone_window_waits_about_max_wait_then_runs() -> None:
    got = Collector()
    async with InferenceEngine(BUNDLE, settings(max_batch=64, max_wait_ms=30.0), got) as engine:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        engine.submit_nowait(make_window(0))
        await got.wait_for(1, limit_s=10.0)
        waited = got.results[0][2] - t0
    assert waited < 5.0  # generous upper bound: it did not wait for a full batch
    assert engine.stats.batch_sizes == {1: 1}


async def test_windows_arriving_within_the_wait_share_a_batch() -> None:
    rec = RecordingModel(BUNDLE.build())
    got = Collector()
    async with InferenceEngine(BUNDLE, settings(max_batch=64, max_wait_ms=2000.0), got, model=rec) as engine:
        engine.submit_nowait(make_window(0))
        await asyncio.sleep(0)
        for i in range(1, 5):
            engine.submit_nowait(make_window(i))
        await engine.drain()
    assert rec.sizes == [5]


async def test_full_batch_does_not_wait_for_max_wait() -> None:
    got = Collector()
    # a huge max_wait: only reaching max_batch can release the batch
    async with InferenceEngine(BUNDLE, settings(max_batch=4, max_wait_ms=10_000.0), got) as engine:
        for i in range(4):
            engine.submit_nowait(make_window(i))
        await got.wait_for(4, limit_s=8.0)
    assert engine.stats.batch_sizes == {4: 1}


# ---------------------------------------------------------------------------------------------- queue


async def test_queue_full_drops_and_counts() -> None:
    got = Collector()
    engine = InferenceEngine(BUNDLE, settings(queue_size=3), got)
    accepted = [engine.submit_nowait(make_window(i)) for i in range(5)]  # worker not running yet
    assert accepted == [True, True, True, False, False]
    assert engine.stats.dropped == 2 and engine.stats.queued == 3
    async with engine:
        await engine.drain()
    assert [r[0].index for r in got.results] == [0, 1, 2]


async def test_submit_applies_back_pressure() -> None:
    got = Collector()
    async with InferenceEngine(BUNDLE, settings(queue_size=2, max_batch=2), got) as engine:
        for i in range(15):
            await engine.submit(make_window(i))
            assert engine.stats.queued <= 2
        await engine.drain()
    assert len(got.results) == 15
    assert engine.stats.dropped == 0 and engine.stats.queue_high <= 2


async def test_exit_drains_pending_windows() -> None:
    got = Collector()
    async with InferenceEngine(BUNDLE, settings(max_wait_ms=50.0), got) as engine:
        for i in range(6):
            engine.submit_nowait(make_window(i))
    assert len(got.results) == 6
    await engine.__aexit__(None, None, None)  # idempotent


async def test_wrong_window_length_is_refused() -> None:
    engine = InferenceEngine(BUNDLE, settings())
    bad = Window("s", 0, np.zeros((1, T + 1), np.float32), 0.0, 0.0, ("ok",))
    with pytest.raises(ValueError, match="expects"):
        engine.submit_nowait(bad)


# ---------------------------------------------------------------------------------------------- failures


async def test_failing_big_batches_are_retried_in_halves() -> None:
    rec = RecordingModel(BUNDLE.build(), fail_above=2)
    got = Collector()
    windows = [make_window(i) for i in range(7)]
    async with InferenceEngine(BUNDLE, settings(max_batch=8, max_wait_ms=100.0), got, model=rec) as engine:
        for w in windows:
            engine.submit_nowait(w)
        await engine.drain()
    assert engine.stats.errors >= 1 and engine.stats.failed == 0
    np.testing.assert_allclose(np.concatenate([p for _, p, _ in got.results]), reference_probs(windows), atol=1e-5)


async def test_device_failure_falls_back_to_cpu() -> None:
    got = Collector()
    engine = InferenceEngine(BUNDLE, settings(), got)
    # Pretend the model lives on a GPU: moving the batch there fails on this CPU-only torch, as a lost device would.
    engine.device = torch.device("cuda")
    async with engine:
        engine.submit_nowait(make_window(0, channels=2))
        await engine.drain()
        assert engine.device.type == "cpu" and engine.stats.fallbacks == 1 and engine.stats.errors >= 1
        engine.submit_nowait(make_window(1))
        await engine.drain()
    np.testing.assert_allclose(got.results[0][1], reference_probs([got.results[0][0]]), atol=1e-5)
    assert engine.stats.failed == 0


async def test_hopeless_device_gives_nan_and_keeps_running() -> None:
    rec = RecordingModel(BUNDLE.build(), always_fail=True)
    got = Collector()
    async with InferenceEngine(BUNDLE, settings(), got, model=rec) as engine:
        engine.submit_nowait(make_window(0, channels=2))
        engine.submit_nowait(make_window(1))
        await engine.drain()
        rec.always_fail = False
        engine.submit_nowait(make_window(2))
        await engine.drain()
    assert np.isnan(got.results[0][1]).all() and got.results[0][1].shape == (2, 3)
    assert engine.stats.failed == 2 and engine.stats.errors >= 2
    assert np.isfinite(got.results[2][1]).all()
    with pytest.raises(InferenceError):
        InferenceEngine(BUNDLE, settings(), model=RecordingModel(BUNDLE.build(), always_fail=True)).predict(
            np.zeros((1, T), np.float32)
        )


async def test_hung_forward_times_out() -> None:
    release = threading.Event()

    class Hanging(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = BUNDLE.build()
            self.hang = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.hang:
                self.hang = False
                release.wait(10.0)
            return self.inner(x)

    got = Collector()
    try:
        async with InferenceEngine(BUNDLE, settings(timeout_s=0.2), got, model=Hanging()) as engine:
            engine.submit_nowait(make_window(0))
            await engine.drain()
            engine.submit_nowait(make_window(1))
            await engine.drain()
    finally:
        release.set()
    assert np.isnan(got.results[0][1]).all() and np.isfinite(got.results[1][1]).all()
    assert engine.stats.errors == 1 and engine.stats.failed == 1


async def test_on_result_errors_are_not_swallowed() -> None:
    def boom(window: Window, probs: np.ndarray) -> None:
        raise KeyError("bug in the caller")

    engine = InferenceEngine(BUNDLE, settings(), boom)
    with pytest.raises(InferenceError, match="bug in the caller"):
        async with engine:
            engine.submit_nowait(make_window(0))
            await engine.drain()
    with pytest.raises(InferenceError):
        engine.submit_nowait(make_window(1))


async def test_warmup_and_threads_setting() -> None:
    before = torch.get_num_threads()
    try:
        engine = InferenceEngine(BUNDLE, EngineSettings(device="cpu", threads=1, warmup=True, max_batch=4))
        assert torch.get_num_threads() == 1
        t0 = time.perf_counter()
        async with engine:
            pass
        assert time.perf_counter() - t0 < 20
        assert engine.stats.batches == 0  # the warm-up is not a batch
    finally:
        torch.set_num_threads(before)


class GatedModel(nn.Module):
    """Records batch sizes; the first call blocks (in the inference thread) until ``release`` is set."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        self.entered.set()
        if len(self.sizes) == 1:
            self.release.wait(10.0)
        return self.inner(x)


async def test_a_lone_window_on_an_idle_cpu_engine_runs_on_the_loop_thread_with_the_same_result() -> None:
    """Inline: no hand-off to the inference thread for a window that arrives alone; same probabilities."""
    windows = [make_window(i, channels=1 + i % 2) for i in range(4)]
    seen: list[str] = []
    got = Collector()
    engine = InferenceEngine(BUNDLE, settings(max_wait_ms=0.0, inline_budget=1.0), got)
    run_batch = engine._run_batch

    def spy(arrays: list[np.ndarray], sites: list[int] | None = None) -> np.ndarray:
        seen.append(threading.current_thread().name)
        return run_batch(arrays, sites)

    engine._run_batch = spy  # type: ignore[method-assign]
    async with engine:
        for w in windows:  # one at a time: each finds the engine idle
            engine.submit_nowait(w)
            await engine.drain()
    loop_thread = threading.current_thread().name
    assert seen == [loop_thread] * 4 and engine.stats.inline == 4
    probs = np.concatenate([p for _, p, _ in got.results])
    np.testing.assert_allclose(probs, reference_probs(windows), atol=1e-4)


async def test_inline_stays_within_its_budget_and_can_be_turned_off() -> None:
    """With a zero budget, or once the second's budget is spent, lone windows go to the inference thread."""
    for budget, expect_inline in ((0.0, 0), (1e-9, 1)):  # a tiny budget: the first call spends it
        engine = InferenceEngine(BUNDLE, settings(max_wait_ms=0.0, inline_budget=budget), Collector())
        async with engine:
            for i in range(3):
                engine.submit_nowait(make_window(i))
                await engine.drain()
        assert engine.stats.inline == expect_inline and engine.stats.windows == 3


def test_inline_pauses_for_a_second_after_a_busy_second_of_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load the loop is the bottleneck: after a second in which its thread was busy a quarter of the time or
    more, no window runs inline during the next second."""
    import streamemg.engine as engine_module

    now = [100.0]
    cpu = [0.0]
    monkeypatch.setattr(engine_module.time, "thread_time", lambda: cpu[0])
    engine = InferenceEngine(BUNDLE, settings(max_wait_ms=0.0, inline_budget=0.5), clock=lambda: now[0])
    lone = [(make_window(0), 0.0)]
    assert engine._inline_allowed(lone)  # first second: nothing known, allowed
    now[0], cpu[0] = 101.0, 0.2  # the loop used 0.2 s of CPU in that second: quiet enough
    assert engine._inline_allowed(lone)
    now[0], cpu[0] = 102.0, 0.5  # 0.3 s of CPU in the last second: busy
    assert not engine._inline_allowed(lone)
    now[0] = 102.5
    assert not engine._inline_allowed(lone)  # still the paused second
    now[0], cpu[0] = 103.0, 0.6  # 0.1 s in the last second: quiet again
    assert engine._inline_allowed(lone)
    assert not engine._inline_allowed(lone + lone)  # two windows: a batch for the inference thread


async def test_event_driven_a_lone_window_runs_at_once_and_windows_queued_meanwhile_share_the_next_call() -> None:
    assert EngineSettings().max_wait_ms == 0.0  # the default: no wait for company
    gated = GatedModel(BUNDLE.build())
    got = Collector()
    async with InferenceEngine(BUNDLE, settings(max_wait_ms=0.0, max_batch=64), got, model=gated) as engine:
        engine.submit_nowait(make_window(0))
        # the lone window's call starts at once (no company awaited); it is held inside the model
        assert await asyncio.to_thread(gated.entered.wait, 2.0)
        for i in range(1, 6):  # these arrive while the engine is busy: they queue up
            engine.submit_nowait(make_window(i))
        await asyncio.sleep(0.05)
        gated.release.set()
        await engine.drain()
    assert gated.sizes == [1, 5]
    assert [w.index for w, _, _ in got.results] == list(range(6))


async def test_with_a_wait_for_company_a_lone_window_is_held_back() -> None:
    """The contrast to the default: with max_wait_ms the lone window's call does not start at once."""
    gated = GatedModel(BUNDLE.build())
    gated.release.set()
    got = Collector()
    async with InferenceEngine(BUNDLE, settings(max_wait_ms=400.0, max_batch=64), got, model=gated) as engine:
        engine.submit_nowait(make_window(0))
        assert not await asyncio.to_thread(gated.entered.wait, 0.2)
        await got.wait_for(1, limit_s=10.0)
    assert gated.sizes == [1]
