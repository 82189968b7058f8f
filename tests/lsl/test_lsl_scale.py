"""LSL at lab scale: many outlets appearing at once, and a source that restarts its own parts.

Outlets run in a separate process (the benchmark's fleet: paced on absolute deadlines) or as simulated amplifiers
in this process; everything is confined to loopback by the root conftest. The QEMG analysis is switched off in
these runs: they are about the transport, and the machine they run on is shared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

import pytest

from streamemg.bench.lsl_capacity import _start_fleet, _stop_fleet
from streamemg.engine import EngineSettings
from streamemg.lsl.source import LSLSource, parse_uri
from streamemg.model import load_bundle
from streamemg.pipeline import Pipeline, PipelineSettings
from streamemg.types import Estimate

pytestmark = [pytest.mark.lsl, pytest.mark.timeout(180)]

ENGINE = EngineSettings(device="cpu", warmup=False)


def _settings() -> PipelineSettings:
    ps = PipelineSettings()
    return dataclasses.replace(ps, qemg=dataclasses.replace(ps.qemg, enabled=False))


class _Counting:
    def __init__(self) -> None:
        self.by_stream: dict[str, int] = {}

    def __call__(self, est: Estimate) -> None:
        self.by_stream[est.stream_id] = self.by_stream.get(est.stream_id, 0) + 1


async def _until(cond: Any, limit_s: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < limit_s, f"timed out after {limit_s:g} s waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_128_outlets_appearing_at_once_are_all_opened_and_classified(pylsl: Any) -> None:
    stream_type = f"EMGt{uuid.uuid4().hex[:8]}"
    fleet = await _start_fleet(128, stream_type, 8000.0, 10.0)
    uri = f"lsl:type={stream_type}"
    source = LSLSource(uri, parse_uri(uri))
    counts = _Counting()
    pipe = Pipeline([source], [], bundle=load_bundle(None), settings=_settings(), engine_settings=ENGINE,
                    on_estimate=counts)
    task = asyncio.create_task(pipe.run())
    try:
        await _until(lambda: len(counts.by_stream) >= 128 or task.done(), 90.0, "estimates of all 128 streams")
        assert not task.done(), "the run ended by itself"
    finally:
        pipe.stop()
        await asyncio.wait_for(task, 30.0)
        await _stop_fleet(fleet, 0.0, time.monotonic())
    assert len(counts.by_stream) == 128
    assert len(pipe.streams) == 128
    assert pipe.failed_sources == {} and sum(source.restarts.values()) == 0
    assert not any("did not finish within" in e for e in pipe.errors), pipe.errors


class _KilledResolver:
    """Stands in for a liblsl resolver that died: every call fails."""

    def results(self) -> Any:
        raise RuntimeError("liblsl: the resolver's socket was closed")


async def test_killing_the_resolver_mid_run_restarts_it_while_the_streams_go_on(pylsl: Any, amps: Any,
                                                                                uniq: str) -> None:
    stream_type = f"EMG{uniq}"
    await amps.start(name=f"{uniq}a", stream_type=stream_type, fs=8000.0, seed=1)
    await amps.start(name=f"{uniq}b", stream_type=stream_type, fs=8000.0, seed=2)
    uri = f"lsl:type={stream_type}"
    source = LSLSource(uri, parse_uri(uri))
    counts = _Counting()
    pipe = Pipeline([source], [], bundle=load_bundle(None), settings=_settings(), engine_settings=ENGINE,
                    on_estimate=counts)
    task = asyncio.create_task(pipe.run())
    try:
        await _until(lambda: len(counts.by_stream) == 2, 30.0, "estimates of both streams")
        source._resolver = _KilledResolver()  # the scan loop's next listing fails
        await _until(lambda: source.restarts["resolver"] >= 1, 10.0, "the resolver's restart")
        before = dict(counts.by_stream)
        await _until(lambda: all(counts.by_stream[s] >= before[s] + 4 for s in before), 15.0,
                     "estimates after the restart")
        # the new resolver finds a stream that appears after the failure
        await amps.start(name=f"{uniq}c", stream_type=stream_type, fs=8000.0, seed=3)
        await _until(lambda: len(counts.by_stream) == 3, 30.0, "the stream that appeared after the restart")
        assert not task.done(), "the run ended by itself"
    finally:
        pipe.stop()
        await asyncio.wait_for(task, 30.0)
    assert pipe.failed_sources == {}
    assert source.restarts["resolver"] == 1


async def test_a_stream_that_cannot_be_opened_yet_is_said_once_shown_connecting_and_retried(
    pylsl: Any, amps: Any, uniq: str, take: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from streamemg.types import Chunk, StatusEvent, StreamInfo, StreamStatus

    await amps.start(name=uniq, fs=8000.0)
    uri = f"lsl:name={uniq}"
    source = LSLSource(uri, parse_uri(uri))
    real_open = source._open_blocking
    attempts: list[float] = []

    def flaky_open(info: Any) -> Any:
        attempts.append(time.monotonic())
        if len(attempts) <= 2:  # the first two attempts fail as a stream that does not answer would
            raise RuntimeError("liblsl: the outlet did not answer")
        return real_open(info)

    monkeypatch.setattr(source, "_open_blocking", flaky_open)
    with caplog.at_level("WARNING", logger="streamemg.lsl.source"):
        async with source:
            items = await take(source, lambda its: any(isinstance(i, Chunk) for i in its), 20.0)
    said = [r for r in caplog.records if "could not open LSL stream" in r.getMessage()]
    assert len(said) == 1, "said once, not at every retry"
    connecting = [i for i in items if isinstance(i, StatusEvent) and i.status is StreamStatus.CONNECTING]
    infos = [i for i in items if isinstance(i, StreamInfo)]
    assert len(connecting) == 1 and connecting[0].stream_id == f"lsl:{uniq}" and "retrying" in connecting[0].detail
    assert items.index(connecting[0]) < items.index(infos[0]) and infos[0].stream_id == f"lsl:{uniq}"
    assert len(attempts) == 3
    assert attempts[2] - attempts[1] >= 1.5 * 0.8  # backoff: 1 s after the first failure, 2 s after the second
