"""End to end over LSL: simulated amplifier outlet -> lsl: source -> Pipeline -> estimate outlet -> test inlet."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from streamemg.lsl.sink import ESTIMATE_TYPE
from streamemg.lsl.sink import from_uri as lsl_output
from streamemg.lsl.source import from_uri as lsl_source
from streamemg.types import StreamStatus

pytestmark = [pytest.mark.lsl, pytest.mark.timeout(90)]


def read_estimates(pylsl: Any, name: str, n: int, timeout: float) -> tuple[Any, list[list[float]], list[float]]:
    """Resolve the estimate outlet, then pull ``n`` samples (blocking, bounded).

    One resolve call over the whole timeout (it returns as soon as the outlet answers), not a loop of short ones:
    with several outlets on this machine, a loop of 0.5 s resolves was measured to find a new outlet only about
    5 s after it was created (and, once in CI, not within 40 s), where one longer resolve found it in 0.25 s.
    """
    deadline = time.monotonic() + timeout
    found = pylsl.resolve_byprop("name", name, 1, timeout)
    assert found, f"estimate outlet {name!r} was created but never seen by a resolver within {timeout:g} s"
    inlet = pylsl.StreamInlet(found[0], max_buflen=10, recover=False)
    info = inlet.info(timeout=5.0)
    samples: list[list[float]] = []
    stamps: list[float] = []
    while len(samples) < n and time.monotonic() < deadline:
        s, t = inlet.pull_sample(timeout=0.2)
        if s is not None:
            samples.append(s)
            stamps.append(t)
    return info, samples, stamps


async def test_simulator_to_pipeline_to_estimate_outlet(uniq: str, amps: Any, pylsl: Any) -> None:
    from streamemg.engine import EngineSettings
    from streamemg.model import untrained_bundle
    from streamemg.pipeline import Pipeline, PipelineSettings

    await amps.start(name=uniq, cls="als", channels=2, fs=10000.0)
    sink = lsl_output("lsl")
    pipeline = Pipeline(
        [lsl_source(f"lsl:name={uniq}")],
        [sink],
        bundle=untrained_bundle(seed=0),
        settings=PipelineSettings(hop_s=0.1),
        engine_settings=EngineSettings(device="cpu", max_wait_ms=2),
    )
    run = asyncio.create_task(pipeline.run(duration=60))
    try:
        # first the pipeline's side (found, announced, outlet made), then what another program sees of it
        deadline = time.monotonic() + 30.0
        while sink.outlet_name(f"lsl:{uniq}") is None and not run.done() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert sink.outlet_name(f"lsl:{uniq}") == f"streamemg-{uniq}", (
            f"the pipeline did not announce the stream within 30 s: errors {pipeline.errors}, "
            f"connecting {pipeline.connecting}, run finished: {run.done()}"
        )
        info, samples, stamps = await asyncio.to_thread(read_estimates, pylsl, f"streamemg-{uniq}", 5, 30.0)
        assert len(samples) == 5, "estimates flow into the outlet"
        assert info.type() == ESTIMATE_TYPE and info.get_channel_labels() == ["Normal", "ALS", "Myopathy"]
        for s in samples:
            assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in s)
            assert sum(s) == pytest.approx(1.0, abs=1e-3)
        assert all(abs(t - pylsl.local_clock()) < 10.0 for t in stamps), "stamped in this machine's LSL clock"
        snap = pipeline.snapshot()
        (stream,) = [s for s in snap.streams if s.stream_id == f"lsl:{uniq}"]
        assert stream.status is StreamStatus.LIVE and stream.windows >= 5 and stream.n_channels == 2
        assert stream.fs == 10000.0
    finally:
        pipeline.stop()
        await asyncio.wait_for(run, 30.0)
