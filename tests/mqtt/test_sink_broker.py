"""The MQTT estimate sink, the embedded broker, the broker/simulate commands and the ingest benchmark."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest
from mqtt_support import Mosquitto, client_for, free_port, wait_until

from streamemg.errors import BrokerError, ConfigError, SinkError
from streamemg.mqtt.broker import EmbeddedBroker
from streamemg.mqtt.sink import MqttSink, from_uri
from streamemg.mqtt.throughput import measure_ingest_throughput
from streamemg.sinks.base import SinkRunner, open_sink
from streamemg.types import Estimate, StreamInfo

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]


def estimate(stream_id: str, index: int, label: str | None = "ALS", trained: bool = True) -> Estimate:
    return Estimate(
        stream_id=stream_id, name=stream_id.split(":")[-1], index=index, time=0.25 * index,
        probabilities=(0.2, 0.7, 0.1), rolling=(0.25, 0.65, 0.1), cumulative=(0.3, 0.6, 0.1), label=label,
        confidence=0.65, quality="ok", latency_ms=3.5, trained=trained,
    )


def info(stream_id: str) -> StreamInfo:
    return StreamInfo(stream_id=stream_id, name=stream_id, fs=8000.0, channels=("ch1",))


async def test_sink_publishes_readable_estimates_and_a_retained_label(broker_url: str, prefix: str) -> None:
    sink = open_sink(f"{broker_url}?prefix={prefix}")
    assert isinstance(sink, MqttSink) and sink.name.startswith("mqtt://127.0.0.1:")
    async with client_for(broker_url) as sub:
        await sub.subscribe(f"{prefix}/+/estimate", qos=1)
        async with sink:
            await sink.announce(info("mqtt:dev01"))
            await sink.announce(info("sim:als"))
            for k in range(3):
                await sink.send(estimate("mqtt:dev01", k))
            await sink.send(estimate("sim:als", 0, label=None))
        received: list[tuple[str, dict]] = []
        async with asyncio.timeout(10):
            async for m in sub.messages:
                received.append((m.topic.value, json.loads(m.payload)))  # type: ignore[arg-type]
                if len(received) == 4:
                    break
    topics = [t for t, _ in received]
    assert topics == [f"{prefix}/dev01/estimate"] * 3 + [f"{prefix}/sim_als/estimate"]
    first = received[0][1]
    assert first["device"] == "dev01" and first["stream"] == "mqtt:dev01" and first["label"] == "ALS"
    assert first["probabilities"] == {"Normal": 0.2, "ALS": 0.7, "Myopathy": 0.1}
    assert set(first) >= {"device", "time", "label", "confidence", "probabilities", "rolling", "quality", "latency_ms"}
    assert [e["index"] for _, e in received[:3]] == [0, 1, 2]
    assert sink.published == 4 and sink.failures == 0
    # a subscriber arriving later gets the current labels at once (retained)
    async with client_for(broker_url) as late:
        await late.subscribe(f"{prefix}/+/label", qos=1)
        labels: dict[str, tuple[bytes, bool]] = {}
        async with asyncio.timeout(10):
            async for m in late.messages:
                labels[m.topic.value] = (m.payload, m.retain)  # type: ignore[assignment]
                if len(labels) == 2:
                    break
    assert labels == {f"{prefix}/dev01/label": (b"ALS", True), f"{prefix}/sim_als/label": (b"withheld", True)}


async def test_sink_fails_fast_while_the_broker_is_down_and_reconnects(
    private_mosquitto: Mosquitto, prefix: str
) -> None:
    sink = from_uri(f"{private_mosquitto.url}?prefix={prefix}&timeout=1")
    async with sink:
        await sink.send(estimate("mqtt:d", 0))
        private_mosquitto.kill()
        failed_at = None
        for k in range(1, 50):  # the first publish after the kill may still look fine to the client
            try:
                await asyncio.wait_for(sink.send(estimate("mqtt:d", k)), 10)
            except SinkError:
                failed_at = k
                break
            await asyncio.sleep(0.05)
        assert failed_at is not None and not sink.connected
        t = time.perf_counter()
        with pytest.raises(SinkError, match="reconnecting"):
            await sink.send(estimate("mqtt:d", 99))
        assert time.perf_counter() - t < 0.1  # no waiting while disconnected
        private_mosquitto.start()
        await wait_until(lambda: sink.connected, 15.0)
        async with client_for(private_mosquitto.url) as sub:
            await sub.subscribe(f"{prefix}/+/estimate", qos=1)
            await sink.send(estimate("mqtt:d", 100))
            async with asyncio.timeout(10):
                async for m in sub.messages:
                    assert json.loads(m.payload)["index"] == 100  # type: ignore[arg-type]
                    break
    assert sink.reconnects == 1 and sink.failures >= 2


async def test_sink_runner_counts_failures_without_blocking(private_mosquitto: Mosquitto, prefix: str) -> None:
    sink = from_uri(f"{private_mosquitto.url}?prefix={prefix}&timeout=1")
    async with sink:
        private_mosquitto.kill()
        runner = SinkRunner(sink)
        task = asyncio.create_task(runner.run())
        for k in range(20):
            runner.put(estimate("mqtt:d", k))
        await wait_until(lambda: runner.errors + runner.sent == 20, 15.0)
        runner.close()
        await asyncio.wait_for(task, 5)
    assert runner.errors >= 19


def test_sink_uri_errors() -> None:
    with pytest.raises(ConfigError, match="no topic path"):
        from_uri("mqtt://127.0.0.1/emg/+")
    with pytest.raises(ConfigError, match="unknown option"):
        from_uri("mqtt://127.0.0.1?bogus=1")
    with pytest.raises(ConfigError, match="prefix"):
        from_uri("mqtt://127.0.0.1?prefix=a+b")
    sink = from_uri("mqtt://u:pw@127.0.0.1:1999")
    assert "pw" not in sink.name and sink.settings.connection.port == 1999


async def test_sink_that_cannot_connect_says_so() -> None:
    with pytest.raises(SinkError, match="could not connect"):
        await from_uri(f"mqtt://127.0.0.1:{free_port()}").__aenter__()


async def test_embedded_broker_picks_a_free_port_and_exits_idempotently() -> None:
    async with EmbeddedBroker() as a, EmbeddedBroker() as b:
        assert a.port > 0 and b.port > 0 and a.port != b.port
        assert a.url == f"mqtt://127.0.0.1:{a.port}" and a.running
        with pytest.raises(BrokerError, match="could not start"):
            async with EmbeddedBroker(port=a.port):
                pass
    await a.__aexit__(None, None, None)
    assert not a.running
    with pytest.raises(ConfigError):
        EmbeddedBroker(port=70000)


def test_broker_command_runs_and_stops(capsys: pytest.CaptureFixture[str]) -> None:
    from streamemg.cli.main import main

    assert main(["broker", "--port", "0", "--duration", "0.2"]) == 0
    assert "listening on mqtt://127.0.0.1:" in capsys.readouterr().err


def test_simulate_mqtt_command(mosquitto: Mosquitto, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    from streamemg.cli.main import main

    argv = ["simulate", "mqtt", "--broker", mosquitto.url, "--devices", "2", "--duration", "0.2", "--prefix", prefix,
            "--format", "binary", "--sample-format", "int16", "--fs", "8000"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "2 simulated device(s)" in err and "done: 20 data messages sent, 0 lost" in err
    assert main(["simulate", "mqtt", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--duration", "0.1"]) == 2


async def test_ingest_benchmark_measures_both_rates(mosquitto: Mosquitto) -> None:
    result = await measure_ingest_throughput(mosquitto.url, devices=4, messages_per_device=250, rounds=1,
                                             timeout_s=20)
    assert result["complete"] and result["messages"] == 1000
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0
    assert result["ingest_samples_per_s"] == pytest.approx(result["ingest_msgs_per_s"] * 40)
    assert result["source_counters"]["data_messages"] == 1000 and result["source_counters"]["ring_samples"] == 40000
