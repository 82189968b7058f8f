"""The MQTT source against real brokers (mosquitto and the embedded amqtt), over loopback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from mqtt_support import Collector, Mosquitto, client_for, signal_block, wait_until

from simulators.mqtt_device import DeviceStats, FleetSettings, run_fleet
from streamemg.errors import BrokerError
from streamemg.mqtt import protocol as p
from streamemg.mqtt.source import from_uri
from streamemg.types import Chunk, StatusEvent, StreamInfo, StreamStatus

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]

N = 20  # messages per device
FS = 2000.0


async def test_binary_and_json_devices_end_to_end(broker_url: str, prefix: str) -> None:
    """float32, int16 and JSON devices on one subscription: every sample arrives, labelled and in order."""
    devices = {"f32": 2, "i16": 3, "json": 1}
    async with client_for(broker_url) as pub:
        await pub.publish(f"{prefix}/f32/meta", p.encode_meta(fs=FS, channels=["biceps", "triceps"]), qos=1,
                          retain=True)
        await pub.publish(f"{prefix}/f32/status", b"online", qos=1, retain=True)
        source = from_uri(f"{broker_url}/{prefix}/+")
        async with source:
            col = Collector(source).start()
            sent: dict[str, list[np.ndarray]] = {d: [] for d in devices}
            for k in range(N):
                for device, channels in devices.items():
                    block = signal_block(8, channels, start=8 * k, fs=FS)
                    if device == "i16":
                        counts = p.quantize_int16(block, 0.25)
                        payload = p.encode_binary(counts, seq=100 + k, t0=k * 8 / FS, fs=FS, scale=0.25)
                        block = counts.astype(np.float32) * np.float32(0.25)
                    elif device == "json":
                        payload = p.encode_json(block, seq=100 + k, t0=k * 8 / FS, fs=FS)
                    else:
                        payload = p.encode_binary(block, seq=100 + k, t0=k * 8 / FS, fs=FS)
                    sent[device].append(block)
                    await pub.publish(f"{prefix}/{device}/data", payload, qos=1)
            await wait_until(lambda: len(col.of(Chunk)) == N * len(devices), 10.0)
            await col.stop()
    assert col.failed() is None
    for device, channels in devices.items():
        sid = f"mqtt:{device}"
        infos = col.of(StreamInfo, sid)
        assert len(infos) == 1 and infos[0].fs == FS and infos[0].n_channels == channels
        first_info = col.items.index(infos[0])
        got = col.of(Chunk, sid)
        assert col.items.index(got[0]) > first_info  # announced before the first chunk
        assert [c.seq for c in got] == list(range(100, 100 + N))
        np.testing.assert_array_equal(np.concatenate([c.data for c in got]), np.concatenate(sent[device]))
        np.testing.assert_allclose(np.concatenate([c.timestamps for c in got]), np.arange(8 * N) / FS)
    assert col.of(StreamInfo, "mqtt:f32")[0].channels == ("biceps", "triceps")
    assert source.counters.data_messages == 3 * N and source.counters.malformed == 0
    assert source.counters.dropped == source.counters.duplicates == source.counters.late == 0


async def test_malformed_payloads_are_counted_and_other_devices_are_unaffected(
    mosquitto: Mosquitto, prefix: str
) -> None:
    good = p.encode_binary(np.ones((4, 2), np.float32), seq=0, t0=0.0, fs=FS)
    nan = np.ones((4, 2), np.float32)
    nan[1, 1] = np.nan
    bad_payloads = {
        "truncated": good[:30],
        "wrong magic": b"EMG9" + good[4:],
        "wrong version": good[:4] + b"\x07" + good[5:],
        "size mismatch": good + b"\x00\x00",
        "huge": b"EMG1" + bytes(2 * 1024 * 1024),
        "NaN samples (reject policy)": p.encode_binary(nan, seq=0, t0=0.0, fs=FS),
        "NaN literal": b'{"seq": 0, "t0": 0, "fs": 2000, "data": [[NaN, 1]]}',
        "non-JSON": b"{this is not json",
        "wrong types": b'{"seq": "zero", "t0": 0, "fs": 2000, "data": [[1, 2]]}',
        "strings in data": b'{"seq": 0, "t0": 0, "fs": 2000, "data": [["1", "2"]]}',
        "ragged rows": b'{"seq": 0, "t0": 0, "fs": 2000, "data": [[1, 2], [3]]}',
        "bad meta": b"[1, 2]",
        "bad status": b"sleeping",
    }
    source = from_uri(f"{mosquitto.url}/{prefix}/+?non_finite=reject")
    async with source, client_for(mosquitto.url) as pub:
        col = Collector(source).start()
        for k, (what, payload) in enumerate(bad_payloads.items()):
            kind = "meta" if what == "bad meta" else "status" if what == "bad status" else "data"
            await pub.publish(f"{prefix}/bad/{kind}", payload, qos=1)
            block = np.full((4, 2), k, np.float32)
            await pub.publish(f"{prefix}/good/data", p.encode_binary(block, seq=k, t0=k * 4 / FS, fs=FS), qos=1)
        await pub.publish(f"{prefix}/bad/data", good, qos=1)  # the bad device's valid messages still count
        n_good = len(bad_payloads)
        await wait_until(lambda: len(col.of(Chunk, "mqtt:good")) == n_good and len(col.of(Chunk, "mqtt:bad")) == 1)
        await col.stop()
    assert [c.seq for c in col.of(Chunk, "mqtt:good")] == list(range(n_good))
    counters = source.device_counters
    assert counters["bad"].malformed == len(bad_payloads)
    assert counters["good"].malformed == 0 and counters["good"].dropped == 0
    assert source.counters.malformed == len(bad_payloads)


async def test_broker_killed_and_restarted_mid_stream(private_mosquitto: Mosquitto, prefix: str) -> None:
    """The source reports RECONNECTING, reconnects with backoff, resubscribes and resumes; the gap is counted."""
    fleet = FleetSettings(broker=private_mosquitto.url, devices=2, fs=FS, chunk_ms=10.0, prefix=prefix,
                          device_prefix="k")
    stats: list[DeviceStats] = []
    ready = asyncio.Event()
    source = from_uri(f"{private_mosquitto.url}/{prefix}/+")
    async with source:
        col = Collector(source).start()
        devices = asyncio.create_task(run_fleet(fleet, ready=ready, quiet=True, on_stats=stats.extend))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            ids = [f"mqtt:{d}" for d in fleet.device_ids()]
            await wait_until(lambda: all(len(col.of(Chunk, s)) >= 10 for s in ids))
            private_mosquitto.kill()
            await wait_until(lambda: all(
                any(e.status is StreamStatus.RECONNECTING for e in col.of(StatusEvent, s)) for s in ids))
            assert not source.connected
            await wait_until(lambda: all(s.lost >= 5 for s in stats))  # the devices went on sampling
            before = {s: len(col.of(Chunk, s)) for s in ids}
            private_mosquitto.start()
            await wait_until(lambda: all(len(col.of(Chunk, s)) >= before[s] + 10 for s in ids), 20.0)
        finally:
            devices.cancel()
            await asyncio.gather(devices, return_exceptions=True)
        await col.stop()
    assert source.counters.reconnects == 1
    for sid in ids:
        seqs = [c.seq for c in col.of(Chunk, sid)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        live = [e for e in col.of(StatusEvent, sid) if e.status is StreamStatus.LIVE]
        assert live and "restored" in live[0].detail and live[0].dropped_samples == 0
        assert len(col.of(StreamInfo, sid)) == 1  # the same segment went on
    lost = sum(c.dropped for c in source.device_counters.values())
    assert lost >= 10  # at least the messages the devices could not send
    assert sum(c.dropped_samples for c in source.device_counters.values()) == lost * 20


async def test_two_shard_workers_split_ten_devices_exactly(mosquitto: Mosquitto, prefix: str) -> None:
    devices = [f"dev{i:02d}" for i in range(1, 11)]
    workers = [from_uri(f"{mosquitto.url}/{prefix}/+?shard={k}/2") for k in range(2)]
    async with workers[0], workers[1], client_for(mosquitto.url) as pub:
        cols = [Collector(w).start() for w in workers]
        for seq in range(3):
            for d in devices:
                await pub.publish(f"{prefix}/{d}/data", p.encode_binary(np.zeros((4, 1), np.float32), seq=seq,
                                                                        t0=seq * 0.002, fs=FS), qos=1)
        await wait_until(lambda: sum(len(c.of(Chunk)) for c in cols) == 3 * len(devices))
        for c in cols:
            await c.stop()
    seen = [{i.stream_id[5:] for i in c.of(StreamInfo)} for c in cols]
    assert seen[0] | seen[1] == set(devices) and not seen[0] & seen[1]
    for k in range(2):
        assert seen[k] == {d for d in devices if p.shard_of(d, 2) == k}
        assert workers[k].counters.ignored == 3 * len(seen[1 - k])


async def test_unreachable_broker_fails_fast_with_advice(prefix: str) -> None:
    from mqtt_support import free_port

    source = from_uri(f"mqtt://127.0.0.1:{free_port()}/{prefix}/+?start_timeout=0")
    with pytest.raises(BrokerError, match="could not connect"):
        await source.__aenter__()
    await source.__aexit__(None, None, None)  # idempotent
    # with a start timeout it retries with backoff first, then gives up with the same advice
    source = from_uri(f"mqtt://127.0.0.1:{free_port()}/{prefix}/+?start_timeout=1")
    t0 = asyncio.get_running_loop().time()
    with pytest.raises(BrokerError, match=r"attempt\(s\) in"):
        await source.__aenter__()
    assert 0.3 < asyncio.get_running_loop().time() - t0 < 3.0


async def test_broker_down_at_start_is_retried_with_backoff_and_said(
    tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(tmp_path)  # not started yet
    source = from_uri(f"{broker.url}/{prefix}/+")
    entering = asyncio.create_task(source.__aenter__())
    try:
        await wait_until(lambda: "not reachable" in caplog.text and "retrying" in caplog.text, 10)
        assert not entering.done()
        await asyncio.to_thread(broker.start)
        await asyncio.wait_for(entering, 15)  # connected on a later attempt
        assert "reached after" in caplog.text
        fleet = FleetSettings(broker=broker.url, devices=1, fs=4000.0, chunk_ms=25.0, duration=0.5, prefix=prefix)
        col = Collector(source).start()
        await asyncio.wait_for(run_fleet(fleet, quiet=True), 10)
        await wait_until(lambda: sum(c.n_samples for c in col.of(Chunk, "mqtt:dev01")) == 2000)
        await col.stop()
    finally:
        entering.cancel()
        await asyncio.gather(entering, return_exceptions=True)
        await source.__aexit__(None, None, None)
        broker.stop()


async def test_simulated_devices_publish_meta_status_and_data(mosquitto: Mosquitto, prefix: str) -> None:
    fleet = FleetSettings(broker=mosquitto.url, devices=3, fs=4000.0, chunk_ms=25.0, duration=0.5, prefix=prefix,
                          fmt="json", cls="mixed")
    source = from_uri(f"{mosquitto.url}/{prefix}/+")
    async with source:
        col = Collector(source).start()
        stats = await asyncio.wait_for(run_fleet(fleet, quiet=True), 10)
        ids = [f"mqtt:{d}" for d in fleet.device_ids()]
        await wait_until(lambda: all(sum(c.n_samples for c in col.of(Chunk, s)) == 2000 for s in ids))
        await wait_until(lambda: all(col.of(StatusEvent, s) for s in ids))  # "offline" at the clean stop
        await col.stop()
    # every sample arrived; a device that woke late sends the samples it owes in one larger message (pacer), so
    # the count of messages is at most 20 (0.5 s of 25 ms chunks) and equals what the source received
    assert all(s.lost == 0 and s.samples == 2000 and 1 <= s.sent <= 20 for s in stats), stats
    assert all(s.sent == len(col.of(Chunk, f"mqtt:{s.device}")) for s in stats), stats
    for sid in ids:
        info = col.of(StreamInfo, sid)[0]
        assert info.fs == 4000.0 and info.channels == ("EMG1",)
        assert info.meta["device_info"]["simulated_class"] in ("Normal", "ALS", "Myopathy")
        assert col.of(StatusEvent, sid)[-1].status is StreamStatus.STALE
    classes = {col.of(StreamInfo, s)[0].meta["device_info"]["simulated_class"] for s in ids}
    assert classes == {"Normal", "ALS", "Myopathy"}
    # the retained state a late subscriber sees: meta and "offline" (clean stop)
    async with client_for(mosquitto.url) as sub:
        await sub.subscribe(f"{prefix}/+/status")
        await sub.subscribe(f"{prefix}/+/meta")
        got: dict[str, bytes] = {}
        async with asyncio.timeout(5):
            async for m in sub.messages:
                got[m.topic.value] = m.payload  # type: ignore[assignment]
                if len(got) == 6:
                    break
    assert {got[f"{prefix}/{d}/status"] for d in fleet.device_ids()} == {b"offline"}
    assert json.loads(got[f"{prefix}/dev01/meta"])["schema"] == 1


async def test_shared_subscription_gives_each_message_to_one_worker(mosquitto: Mosquitto, prefix: str) -> None:
    """``?share=GROUP``: the broker hands each data message to one member of the group (meta/status to all)."""
    workers = [from_uri(f"{mosquitto.url}/{prefix}/+?share=g{prefix}") for _ in range(2)]
    async with workers[0], workers[1], client_for(mosquitto.url) as pub:
        cols = [Collector(w).start() for w in workers]
        await pub.publish(f"{prefix}/d1/status", b"online", qos=1)
        for seq in range(20):
            await pub.publish(f"{prefix}/d1/data", p.encode_binary(np.zeros((4, 1), np.float32), seq=seq,
                                                                   t0=seq * 0.002, fs=FS), qos=1)
        await wait_until(lambda: sum(w.counters.data_messages for w in workers) == 20)
        await wait_until(lambda: all(w.counters.messages - w.counters.data_messages == 1 for w in workers))
        for c in cols:
            await c.stop()
    assert sum(len(c.of(Chunk)) for c in cols) == 20


async def test_simulated_devices_replay_a_recording(mosquitto: Mosquitto, prefix: str, tmp_path: Path) -> None:
    rec = signal_block(3000, 2, fs=3000.0)
    np.save(tmp_path / "rec.npy", rec)
    (tmp_path / "rec.npy.json").write_text(json.dumps({"fs": 3000.0, "channels": ["left", "right"]}))
    fleet = FleetSettings(broker=mosquitto.url, devices=2, replay=tmp_path / "rec.npy", duration=0.2, prefix=prefix,
                          chunk_ms=20.0)
    source = from_uri(f"{mosquitto.url}/{prefix}/+")
    async with source:
        col = Collector(source).start()
        await asyncio.wait_for(run_fleet(fleet, quiet=True), 10)
        ids = [f"mqtt:{d}" for d in fleet.device_ids()]
        await wait_until(lambda: all(sum(c.n_samples for c in col.of(Chunk, s)) == 600 for s in ids))
        await col.stop()
    for k, sid in enumerate(ids):
        info = col.of(StreamInfo, sid)[0]
        assert info.fs == 3000.0 and info.channels == ("left", "right")
        got = np.concatenate([c.data for c in col.of(Chunk, sid)])
        start = k * 3000 // 2  # each device starts at its own offset into the recording
        np.testing.assert_array_equal(got, rec[start : start + 600])
