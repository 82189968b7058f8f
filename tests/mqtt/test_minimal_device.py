"""A device written from PROTOCOL.md alone (examples/minimal_device.py) is understood end to end."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mqtt_support import Mosquitto

from streamemg.engine import EngineSettings
from streamemg.model import untrained_bundle
from streamemg.mqtt.source import from_uri as source_from_uri
from streamemg.pipeline import Pipeline
from streamemg.sinks.memory import MemorySink

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minimal_device.py"


def load_example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("minimal_device", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["minimal_device"] = module
    spec.loader.exec_module(module)
    return module


async def test_a_device_written_from_the_protocol_alone_is_classified(mosquitto: Mosquitto, prefix: str) -> None:
    device = load_example()
    url = urlsplit(mosquitto.url)
    dev_id = f"{prefix.replace('/', '-')}-min"
    mem = MemorySink()
    source = source_from_uri(f"{mosquitto.url}/emg/+")
    pipeline = Pipeline([source], [mem], bundle=untrained_bundle(), engine_settings=EngineSettings(device="cpu"))
    run = asyncio.create_task(pipeline.run())
    await asyncio.sleep(1.0)  # subscribed
    sent = await device.run(url.hostname, url.port, dev_id, seconds=2.5)
    for _ in range(200):
        if mem.by_stream(f"mqtt:{dev_id}"):
            break
        await asyncio.sleep(0.05)
    pipeline.stop()
    await asyncio.wait_for(run, 20)
    assert sent == 125
    info = mem.infos[f"mqtt:{dev_id}"]
    assert info.fs == 8000.0 and info.channels == ("biceps",)
    ests = mem.by_stream(f"mqtt:{dev_id}")
    assert len(ests) >= 4  # 2.5 s at 8 kHz: windows at 1.0, 1.25, ... s
    assert all(e.quality == "ok" for e in ests)
    snap = {s.stream_id: s for s in pipeline.snapshot().streams}[f"mqtt:{dev_id}"]
    assert snap.dropped_samples == 0 and snap.rejected == 0
