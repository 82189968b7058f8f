"""End to end: simulated MQTT devices -> mosquitto -> MqttSource -> Pipeline -> MqttSink -> estimate topics."""

from __future__ import annotations

import asyncio
import json

import pytest
from mqtt_support import Mosquitto, client_for, wait_until

from simulators.mqtt_device import FleetSettings, run_fleet
from streamemg.mqtt.sink import from_uri as sink_from_uri
from streamemg.mqtt.source import from_uri as source_from_uri

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(90)]


async def test_devices_through_the_pipeline_to_estimate_topics(mosquitto: Mosquitto, prefix: str) -> None:
    from streamemg.engine import EngineSettings
    from streamemg.model import untrained_bundle
    from streamemg.pipeline import Pipeline

    out = f"{prefix}out"
    fleet = FleetSettings(broker=mosquitto.url, devices=2, fs=8000.0, chunk_ms=20.0, prefix=prefix, duration=3.0,
                          fmt="binary", sample_format="int16")
    source = source_from_uri(f"{mosquitto.url}/{prefix}/+")
    sink = sink_from_uri(f"{mosquitto.url}?prefix={out}")
    pipeline = Pipeline([source], [sink], bundle=untrained_bundle(), engine_settings=EngineSettings(device="cpu"))
    estimates: dict[str, list[dict]] = {}

    async def listen() -> None:
        async with client_for(mosquitto.url) as sub:
            await sub.subscribe(f"{out}/+/estimate", qos=1)
            listening.set()
            async for m in sub.messages:
                obj = json.loads(m.payload)  # type: ignore[arg-type]
                estimates.setdefault(obj["device"], []).append(obj)

    listening = asyncio.Event()
    listener = asyncio.create_task(listen())
    await asyncio.wait_for(listening.wait(), 10)
    running = asyncio.create_task(pipeline.run())
    await wait_until(lambda: source.connected or running.done(), 10)
    devices = asyncio.create_task(run_fleet(fleet, quiet=True))
    try:
        await wait_until(lambda: len(estimates) == 2 and all(len(v) >= 2 for v in estimates.values()), 30)
        snapshot = pipeline.snapshot()
    finally:
        pipeline.stop()
        await asyncio.wait_for(running, 20)
        devices.cancel()
        listener.cancel()
        await asyncio.gather(devices, listener, return_exceptions=True)
    assert set(estimates) == set(fleet.device_ids())
    for device, items in estimates.items():
        first = items[0]
        assert first["stream"] == f"mqtt:{device}" and first["label"] == "untrained"
        assert set(first["probabilities"]) == {"Normal", "ALS", "Myopathy"}
    streams = {s.stream_id: s for s in snapshot.streams}
    assert set(streams) == {f"mqtt:{d}" for d in fleet.device_ids()}
    for s in streams.values():
        assert s.fs == 8000.0 and s.n_channels == 1 and s.windows >= 2 and s.rejected == 0
    assert not pipeline.errors and not pipeline.source_errors
    assert sink.published >= 4 and sink.failures == 0


async def test_an_internal_error_in_the_mqtt_source_restarts_it_while_other_sources_go_on(
    mosquitto: Mosquitto, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamemg.engine import EngineSettings
    from streamemg.model import untrained_bundle
    from streamemg.mqtt.source import MqttSource
    from streamemg.pipeline import Pipeline
    from streamemg.sources.base import open_source
    from streamemg.types import Estimate

    fleet = FleetSettings(broker=mosquitto.url, devices=2, fs=8000.0, chunk_ms=20.0, prefix=prefix, duration=12.0,
                          fmt="binary", sample_format="int16")
    source = source_from_uri(f"{mosquitto.url}/{prefix}/+")
    other = open_source("sim:als?fs=8000")
    counts: dict[str, int] = {}

    def on_estimate(est: Estimate) -> None:
        counts[est.stream_id] = counts.get(est.stream_id, 0) + 1

    real_on_data = MqttSource._on_data
    calls = {"n": 0}

    def failing_once(self: MqttSource, dev: object, payload: bytes) -> object:
        calls["n"] += 1
        if calls["n"] == 300:  # after a few seconds of data: a bug in a message's handling ...
            raise ValueError("bad message handling")
        return real_on_data(self, dev, payload)  # type: ignore[arg-type]

    def error_path_bug(self: MqttSource, message: object) -> None:
        # ... whose own error path fails too: the error escapes the source's iteration
        raise RuntimeError("internal error in the MQTT source")

    monkeypatch.setattr(MqttSource, "_on_data", failing_once)
    monkeypatch.setattr(MqttSource, "_internal_error", error_path_bug)
    pipeline = Pipeline([source, other], [], bundle=untrained_bundle(), engine_settings=EngineSettings(device="cpu"),
                        on_estimate=on_estimate)
    running = asyncio.create_task(pipeline.run())
    await wait_until(lambda: source.connected or running.done(), 10)
    devices = asyncio.create_task(run_fleet(fleet, quiet=True))
    mqtt_ids = [f"mqtt:{d}" for d in fleet.device_ids()]
    try:
        await wait_until(lambda: pipeline.source_restarts[source.uri] == 1, 20)
        at_restart = dict(counts)
        await wait_until(lambda: all(counts.get(s, 0) >= at_restart.get(s, 0) + 4 for s in mqtt_ids), 20)
        assert not running.done(), "the run ended by itself"
    finally:
        pipeline.stop()
        await asyncio.wait_for(running, 20)
        devices.cancel()
        await asyncio.gather(devices, return_exceptions=True)
    assert pipeline.failed_sources == {}
    assert any("internal error in the MQTT source" in e and "restarting it in" in e for e in pipeline.errors)
    sim_id = next(s for s in pipeline.streams if not s.startswith("mqtt:"))
    assert counts[sim_id] >= 8  # the other source went on throughout
