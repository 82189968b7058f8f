"""QEMG out to the user: estimates (JSON lines, MQTT payload, recorder, LSL outlet) and the pipeline setting."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from streamemg.model import load_bundle
from streamemg.mqtt.protocol import encode_estimate
from streamemg.pipeline import Pipeline, PipelineSettings
from streamemg.qemg import QemgSettings
from streamemg.qemg.normative import flag_measures, load_reference
from streamemg.record.format import estimate_from_json, estimate_to_json
from streamemg.sinks.memory import MemorySink
from streamemg.sources.sim import SimSource
from streamemg.types import Estimate

QEMG = {"units": 3, "amplitude_uv": 420.5, "duration_ms": 12.25, "phases": 4.0, "polyphasic_pct": 33.3,
        "fibrillations": 1, "flags": {"amplitude_uv": "high", "fibrillations": "present"}}


def _estimate(qemg: dict[str, Any] | None) -> Estimate:
    p = (0.1, 0.8, 0.1)
    return Estimate("sim:als", "patient-2", 4, 2.0, p, p, p, "ALS", 0.8, "ok", 3.0, qemg=qemg)


async def _run(settings: PipelineSettings, seconds: float = 6.0) -> list[Estimate]:
    sink = MemorySink()
    src = SimSource("als", seed=2, speed=None, duration=seconds, name="patient-2")
    await Pipeline([src], [sink], bundle=load_bundle(None), settings=settings).run()
    return sink.estimates


async def test_pipeline_estimates_carry_qemg_and_the_setting_turns_it_off() -> None:
    on = await _run(PipelineSettings())
    assert len(on) >= 15
    last = on[-1].qemg
    assert last is not None and last["units"] >= 1 and last["amplitude_uv"] > 50
    assert "flags" in last and "duration_ms" in last and "firing_hz" in last
    json.dumps(on[-1].to_dict(), allow_nan=False)  # no NaN reaches the JSON form
    off = await _run(PipelineSettings(qemg=QemgSettings(enabled=False)), seconds=3.0)
    assert off and all(e.qemg is None for e in off) and "qemg" not in off[-1].to_dict()


def test_json_lines_mqtt_and_recorder_carry_qemg() -> None:
    est = _estimate(QEMG)
    assert est.to_dict()["qemg"] == QEMG
    assert json.loads(encode_estimate(est, "dev1"))["qemg"] == QEMG
    back = estimate_from_json(json.loads(json.dumps(estimate_to_json(est))))
    assert back.qemg == QEMG and back == est
    none = estimate_from_json(json.loads(json.dumps(estimate_to_json(_estimate(None)))))
    assert none.qemg is None and "qemg" not in none.to_dict()


def test_flags_against_the_shipped_reference() -> None:
    ref = load_reference()
    assert ref is not None and ref["recordings"] >= 50
    amp = ref["measures"]["amplitude_uv"]
    assert amp["low"] < amp["mean"] < amp["high"]
    inside = {k: v["mean"] for k, v in ref["measures"].items()}
    assert flag_measures(inside) == {}
    assert flag_measures({**inside, "amplitude_uv": amp["high"] * 2, "duration_ms": 0.5}) == {
        "amplitude_uv": "high", "duration_ms": "low"}
    assert flag_measures({"fibrillations": 2, "positive_sharp_waves": 0}) == {"fibrillations": "present"}


@pytest.mark.lsl
@pytest.mark.timeout(60)
async def test_lsl_qemg_outlet_carries_one_json_object_per_estimate() -> None:
    from streamemg.lsl.executor import import_pylsl
    from streamemg.lsl.sink import QEMG_TYPE, LSLSink
    from streamemg.types import StreamInfo

    pylsl = import_pylsl()
    marker = f"m{uuid.uuid4().hex[:10]}"
    info = StreamInfo("sim:als", "patient-2", 10000.0, ("EMG1",), source="sim:als")
    async with LSLSink(marker_name=marker) as sink:
        await sink.announce(info)
        await sink.send(_estimate(QEMG))  # creates the QEMG outlet

        def read() -> list[Any]:
            found = pylsl.resolve_byprop("name", f"{marker}-qemg", 1, 10.0)
            assert found and found[0].type() == QEMG_TYPE
            inlet = pylsl.StreamInlet(found[0], max_buflen=10, recover=False)
            inlet.open_stream(timeout=10.0)
            got: list[Any] = []
            deadline = time.monotonic() + 10.0
            while not got and time.monotonic() < deadline:
                s, _ = inlet.pull_sample(timeout=0.2)
                if s is not None:
                    got.append(s)
            return got

        task = asyncio.create_task(asyncio.to_thread(read))
        for _ in range(100):  # keep publishing until the inlet has one
            if task.done():
                break
            await sink.send(_estimate(QEMG))
            await asyncio.sleep(0.05)
        got = await task
    assert got, "no QEMG sample arrived"
    obj = json.loads(got[0][0])
    assert obj["stream"] == "patient-2" and obj["amplitude_uv"] == 420.5 and obj["flags"]["fibrillations"] == "present"
