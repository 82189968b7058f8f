"""What the pipeline hands the stream view: the real pipeline, a prepared source, checked against offline DSP."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streamemg.dsp import Resampler, StreamFilter
from streamemg.errors import ConfigError
from streamemg.model import load_bundle
from streamemg.pipeline import Pipeline, PipelineSettings
from streamemg.sources.memory import MemorySource
from streamemg.types import Chunk, Estimate, StatusEvent, StreamInfo, StreamStatus


def test_stream_detail_holds_the_filtered_trace_history_and_reconnects() -> None:
    fs, n, c = 8000.0, 8000 * 6, 2
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((n, c)) * 60.0 + 500.0).astype(np.float32)  # an electrode offset the filter removes
    info = StreamInfo("amp", "amp", fs, ("a", "b"))
    items: list[object] = [info]
    step = 80
    for k, start in enumerate(range(0, n, step)):
        ts = (start + np.arange(step)) / fs
        items.append(Chunk("amp", x[start : start + step], ts, seq=k))
        if k in (100, 300):  # the transport loses the stream twice and gets it back
            items.append(StatusEvent("amp", StreamStatus.RECONNECTING, "outlet lost"))
            items.append(StatusEvent("amp", StreamStatus.RECONNECTING, "still trying"))  # the same outage
            items.append(StatusEvent("amp", StreamStatus.LIVE))
    got: list[Estimate] = []
    bundle = load_bundle(None)
    pipeline = Pipeline(
        [MemorySource(items)],  # type: ignore[arg-type]
        bundle=bundle,
        settings=PipelineSettings(history=10),
        on_estimate=got.append,
    )
    asyncio.run(pipeline.run(duration=120.0))
    assert pipeline.stream_detail("nope") is None
    d = pipeline.stream_detail("amp")
    assert d is not None
    assert len(got) >= 15
    assert d.history is not None and len(d.history) == 10  # bounded, newest last
    last = got[-10:]
    np.testing.assert_array_equal(d.history.times, [e.time for e in last])
    np.testing.assert_allclose(d.history.rolling, [e.rolling for e in last], rtol=1e-6)
    np.testing.assert_allclose(d.history.window, [e.probabilities for e in last], rtol=1e-6)
    assert not d.history.quality.any()  # all windows usable
    assert d.reconnects == 2
    assert d.channels == ("a", "b") and d.units == "uV" and d.trace_fs == bundle.config.fs
    cfg = bundle.config
    trace_n = round(1.5 * cfg.fs)
    assert d.trace.shape == (trace_n, c) and d.trace.dtype == np.float32
    # the trace ends with the newest classified window, and is the stream filtered and resampled as the
    # pipeline does it (every stage is chunking-invariant, so one offline pass gives the same samples)
    y = Resampler(fs, cfg.fs, c).process(StreamFilter(cfg.filters, fs, c).process(x))
    end = cfg.window_samples + (len(got) - 1) * cfg.hop_samples
    np.testing.assert_allclose(d.trace, y[end - trace_n : end], rtol=1e-4, atol=1e-3)
    assert d.window is not None
    np.testing.assert_array_equal(d.window, d.trace[-cfg.window_samples :])
    assert abs(float(d.trace.mean())) < 20.0  # the 500 µV offset is gone: it is the filtered signal


@pytest.mark.parametrize(("field", "value"), [("trace_s", 0.0), ("trace_s", 100.0), ("history", 0)])
def test_stream_view_settings_are_validated(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        PipelineSettings(**{field: value})  # type: ignore[arg-type]
