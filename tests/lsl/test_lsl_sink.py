"""``--output lsl``: estimate outlets and the marker outlet, read back by test inlets over loopback."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from streamemg.errors import ConfigError
from streamemg.lsl.sink import ESTIMATE_TYPE, LSLSink, from_uri
from streamemg.sinks.base import open_sink
from streamemg.types import CLASS_NAMES, Estimate, StreamInfo

pytestmark = [pytest.mark.lsl, pytest.mark.timeout(60)]


def estimate(
    info: StreamInfo, index: int, rolling: tuple[float, ...], label: str | None, t: float, trained: bool = True
) -> Estimate:
    return Estimate(
        stream_id=info.stream_id,
        name=info.name,
        index=index,
        time=t,
        probabilities=rolling,
        rolling=rolling,
        cumulative=rolling,
        label=label,
        confidence=max(rolling) if label else 0.0,
        quality="ok",
        latency_ms=3.0,
        trained=trained,
    )


def open_inlet(pylsl: Any, prop: str, value: str, timeout: float = 10.0) -> Any:
    """Resolve, subscribe (so that nothing pushed afterwards is missed) and return an inlet (blocking)."""
    found = pylsl.resolve_byprop(prop, value, 1, timeout)
    assert found, f"no LSL stream with {prop}={value!r}"
    inlet = pylsl.StreamInlet(found[0], max_buflen=10, recover=False)
    inlet.open_stream(timeout=timeout)
    return inlet


def pull(inlet: Any, n: int, timeout: float = 10.0) -> tuple[list[Any], list[float]]:
    """Pull until ``n`` samples arrived (blocking, bounded)."""
    samples: list[Any] = []
    stamps: list[float] = []
    deadline = time.monotonic() + timeout
    while len(samples) < n and time.monotonic() < deadline:
        s, t = inlet.pull_sample(timeout=0.2)
        if s is not None:
            samples.append(s)
            stamps.append(t)
    return samples, stamps


async def test_estimate_outlet_and_label_change_markers(uniq: str, pylsl: Any) -> None:
    info = StreamInfo(f"lsl:{uniq}", uniq, 10000.0, ("EMG1",), source=f"lsl:name={uniq}")
    other = StreamInfo(f"sim:{uniq}", f"{uniq}-sim", 10000.0, ("EMG1",), source="sim:als")
    sink = open_sink("lsl")
    assert isinstance(sink, LSLSink)
    async with sink:
        await sink.announce(info)
        await sink.announce(other)
        await sink.announce(info)  # a re-announcement keeps the outlet
        assert sink.outlet_name(info.stream_id) == f"streamemg-{uniq}"
        est_inlet, marker_inlet = await asyncio.gather(
            asyncio.to_thread(open_inlet, pylsl, "name", f"streamemg-{uniq}"),
            asyncio.to_thread(open_inlet, pylsl, "source_id", "streamemg-markers:streamemg-markers"),
        )
        full = await asyncio.to_thread(est_inlet.info, 5.0)
        assert full.type() == ESTIMATE_TYPE and full.channel_count() == 3 and full.nominal_srate() == 0
        assert full.channel_format() == pylsl.cf_float32
        assert full.source_id() == f"streamemg-estimate:lsl:{uniq}"
        assert full.get_channel_labels() == list(CLASS_NAMES)
        assert full.desc().child("input_stream").child_value("name") == uniq

        now = pylsl.local_clock()
        sent = [
            ((float("nan"),) * 3, None),
            ((0.2, 0.7, 0.1), "ALS"),
            ((0.2, 0.6, 0.2), "ALS"),
            ((0.1, 0.2, 0.7), "Myopathy"),
        ]
        for k, (rolling, label) in enumerate(sent):
            await sink.send(estimate(info, k, rolling, label, now + k * 0.25))
        await sink.send(estimate(other, 0, (0.3, 0.3, 0.4), None, 123.0, trained=False))

        samples, stamps = await asyncio.to_thread(pull, est_inlet, 4)
        assert len(samples) == 4
        assert all(math.isnan(v) for v in samples[0])
        for got, (rolling, _) in zip(samples[1:], sent[1:], strict=True):
            assert got == pytest.approx(list(rolling), abs=1e-6)
        # an LSL input's estimates carry the stream time (already in this machine's LSL clock)
        assert stamps == pytest.approx([now + k * 0.25 for k in range(4)], abs=1e-6)

        markers, mstamps = await asyncio.to_thread(pull, marker_inlet, 4)
        assert [m[0] for m in markers] == [
            f"{uniq}: none",
            f"{uniq}: ALS",
            f"{uniq}: Myopathy",
            f"{uniq}-sim: untrained",
        ], "one marker per label change"
        # a non-LSL input's estimate is stamped with local_clock() at publication, not its own time base
        assert abs(mstamps[-1] - pylsl.local_clock()) < 5.0
        assert sink.markers == 4 and sink.pushed[f"streamemg-{uniq}"] == 4
        assert sink.push_max_ms < 20.0, "publishing is cheap enough to run inline"
    await sink.aclose()  # idempotent


async def test_push_cost_is_small(uniq: str) -> None:
    info = StreamInfo(f"lsl:{uniq}", uniq, 10000.0, ("EMG1",), source=f"lsl:name={uniq}")
    async with from_uri("lsl:?prefix=bench-&markers=" + f"{uniq}-markers") as sink:
        await sink.announce(info)
        assert sink.outlet_name(info.stream_id) == f"bench-{uniq}"
        t0 = time.perf_counter()
        for k in range(2000):
            await sink.send(estimate(info, k, (0.2, 0.3, 0.5), "Myopathy", float(k)))
        per_push_us = (time.perf_counter() - t0) / 2000 * 1e6
    assert per_push_us < 500.0, f"{per_push_us:.1f} µs per estimate"


def test_output_uri_errors() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        from_uri("lsl:?colour=red")
    with pytest.raises(ConfigError, match="--output lsl"):
        from_uri("lsl:somewhere")
