"""The MQTT source's per-device logic, driven message by message (no broker needed).

Seq tracking (gaps, duplicates, late messages, restarts), segments and signatures, meta and status, malformed
messages, sharding and URI parsing.
"""

from __future__ import annotations

import logging
from typing import Any

import aiomqtt
import numpy as np
import pytest
from mqtt_support import signal_block

from streamemg.clock import ManualClock
from streamemg.errors import ConfigError, SourceURIError
from streamemg.mqtt import protocol as p
from streamemg.mqtt.client import ENV_PASSWORD, ENV_USERNAME, MqttConnection, mask_password
from streamemg.mqtt.source import (
    MqttSource,
    MqttSourceSettings,
    _DropOldestQueue,
    from_uri,
)
from streamemg.sources.base import open_source
from streamemg.types import Chunk, SourceItem, StatusEvent, StreamInfo, StreamStatus


class Feeder:
    """Feeds hand-made messages to a source and collects what it would yield."""

    def __init__(self, source: MqttSource) -> None:
        self.source = source

    def send(self, name: str, payload: bytes, retain: bool = False) -> list[SourceItem]:
        chunk = self.source._on_message(aiomqtt.Message(name, payload, 0, retain, 0, None))
        items: list[SourceItem] = list(self.source._pending)
        self.source._pending.clear()
        if chunk is not None:
            items.append(chunk)
        return items

    def data(self, device: str, seq: int, n: int = 10, channels: int = 1, fs: float = 1000.0,
             t0: float | None = None) -> list[SourceItem]:
        t0 = seq * n / fs if t0 is None else t0
        block = signal_block(n, channels, start=seq * n, fs=fs)
        return self.send(f"emg/{device}/data", p.encode_binary(block, seq=seq, t0=t0, fs=fs))


def make_source(**kwargs: Any) -> tuple[MqttSource, Feeder, ManualClock]:
    clock = ManualClock()
    settings = MqttSourceSettings(connection=MqttConnection("127.0.0.1", 1883), **kwargs)
    source = MqttSource(settings, clock=clock)
    return source, Feeder(source), clock


def chunks(items: list[SourceItem]) -> list[Chunk]:
    return [i for i in items if isinstance(i, Chunk)]


def test_first_message_announces_the_stream_then_yields_the_chunk() -> None:
    source, feed, _ = make_source()
    items = feed.data("dev01", seq=5, n=10, channels=2, fs=1000.0)
    assert [type(i) for i in items] == [StreamInfo, Chunk]
    info, chunk = items
    assert isinstance(info, StreamInfo) and isinstance(chunk, Chunk)
    assert info.stream_id == chunk.stream_id == "mqtt:dev01"
    assert info.name == "dev01" and info.fs == 1000.0 and info.channels == ("ch1", "ch2") and info.units == "uV"
    assert info.meta["transport"] == "mqtt" and info.meta["segment"] == 0
    assert chunk.seq == 5
    np.testing.assert_array_equal(chunk.data, signal_block(10, 2, start=50, fs=1000.0))
    np.testing.assert_allclose(chunk.timestamps, 0.05 + np.arange(10) / 1000.0)
    assert chunk.timestamps.dtype == np.float64
    assert source.counters.data_messages == 1 and source.counters.samples == 10


def test_gaps_are_counted_and_seq_passes_through() -> None:
    source, feed, _ = make_source()
    feed.data("d", 0)
    assert chunks(feed.data("d", 1))[0].seq == 1
    out = chunks(feed.data("d", 5))  # 2, 3, 4 lost
    assert out[0].seq == 5
    c = source.device_counters["d"]
    assert (c.dropped, c.dropped_samples) == (3, 30)
    assert (source.counters.dropped, source.counters.dropped_samples) == (3, 30)


def test_duplicates_and_late_messages_are_dropped_and_counted() -> None:
    source, feed, _ = make_source()
    for seq in (0, 1, 2, 4):  # 3 is missing for now
        feed.data("d", seq)
    assert feed.data("d", 2) == []  # duplicate
    assert feed.data("d", 4) == []  # duplicate
    assert feed.data("d", 3) == []  # late: newer data was already passed on
    assert feed.data("d", 3) == []  # and now a duplicate of the late one
    c = source.device_counters["d"]
    assert (c.duplicates, c.late, c.dropped, c.restarts) == (3, 1, 1, 0)
    assert chunks(feed.data("d", 5))[0].seq == 5


def test_a_far_backward_jump_is_a_restart_with_a_fresh_stream_info() -> None:
    source, feed, _ = make_source(reorder_window=16)
    for seq in range(100, 140):
        feed.data("d", seq)
    items = feed.data("d", 0)  # the device restarted from 0
    assert [type(i) for i in items] == [StreamInfo, Chunk]
    info, chunk = items
    assert isinstance(info, StreamInfo) and info.meta["segment"] == 1
    assert isinstance(chunk, Chunk) and chunk.seq == 140  # rebased: the pipeline sees no step back, no gap
    assert chunks(feed.data("d", 1))[0].seq == 141
    assert source.device_counters["d"].restarts == 1
    assert source.device_counters["d"].late == 0 and source.device_counters["d"].dropped == 0


def test_online_again_starts_a_new_segment_unless_the_seq_and_time_continue() -> None:
    source, feed, _ = make_source()
    for seq in range(10):
        feed.data("d", seq)
    feed.send("emg/d/status", b"offline", retain=False)
    feed.send("emg/d/status", b"online", retain=False)
    items = feed.data("d", 0)  # restarted device: seq and device time from 0
    assert isinstance(items[0], StreamInfo) and items[0].meta["segment"] == 1
    assert chunks(items)[0].seq == 10
    # a device that only reconnected (seq and time go on, with a gap) keeps its segment
    feed.send("emg/d/status", b"online", retain=False)
    items = feed.data("d", 5, t0=1.0)
    assert [type(i) for i in items] == [Chunk] and items[0].seq == 15
    assert source.device_counters["d"].restarts == 1
    # a retained "online" delivered on (re)subscription is no news: no restart
    feed.send("emg/d/status", b"online", retain=True)
    assert [type(i) for i in feed.data("d", 6, t0=1.01)] == [Chunk]


def test_offline_status_marks_the_stream_stale() -> None:
    _source, feed, _ = make_source()
    feed.data("d", 0)
    items = feed.send("emg/d/status", b"offline", retain=True)
    assert len(items) == 1 and isinstance(items[0], StatusEvent)
    assert items[0].status is StreamStatus.STALE and "offline" in items[0].detail


def test_rate_or_channel_change_reinitialises_the_stream() -> None:
    source, feed, _ = make_source()
    feed.data("d", 0, fs=1000.0)
    items = feed.data("d", 1, fs=2000.0)
    assert isinstance(items[0], StreamInfo) and items[0].fs == 2000.0
    items = feed.data("d", 2, fs=2000.0, channels=3)
    assert isinstance(items[0], StreamInfo) and items[0].n_channels == 3
    assert [type(i) for i in feed.data("d", 3, fs=2000.0, channels=3)] == [Chunk]
    assert source.device_counters["d"].restarts == 0


def test_forward_jump_beyond_max_gap_is_a_restart() -> None:
    source, feed, _ = make_source(max_gap_s=60.0)
    feed.data("d", 0)
    items = feed.data("d", 10_000)  # 10 000 x 10 samples at 1 kHz = 100 s > 60 s
    assert isinstance(items[0], StreamInfo)
    assert source.device_counters["d"].dropped == 0 and source.device_counters["d"].restarts == 1


def test_channel_labels_come_from_retained_meta() -> None:
    _source, feed, _ = make_source()
    feed.send("emg/d/meta", p.encode_meta(fs=1000, channels=["biceps", "triceps"], device={"fw": "2"}), retain=True)
    info = feed.data("d", 0, channels=2)[0]
    assert isinstance(info, StreamInfo)
    assert info.channels == ("biceps", "triceps") and info.meta["device_info"] == {"fw": "2"}
    # a meta whose channel count does not match the data is ignored for labels
    info = feed.data("d", 1, channels=3)[0]
    assert isinstance(info, StreamInfo) and info.channels == ("ch1", "ch2", "ch3")
    # meta arriving later with new labels re-announces (same signature)
    items = feed.send("emg/d/meta", p.encode_meta(channels=["a", "b", "c"]))
    assert isinstance(items[0], StreamInfo) and items[0].channels == ("a", "b", "c")


def test_malformed_messages_are_counted_per_device_and_logged_at_a_limited_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, feed, clock = make_source(malformed_log_interval_s=10.0)
    feed.data("good", 0)
    with caplog.at_level(logging.WARNING, logger="streamemg.mqtt.source"):
        for _ in range(5):
            assert feed.send("emg/bad/data", b"EMG1\x01garbage") == []
        feed.send("emg/bad/meta", b"not json")
        feed.send("emg/bad/status", b"maybe")
        clock.advance(11.0)
        feed.send("emg/bad/data", b"{}")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "bad" in warnings[0] and "truncated" in warnings[0]
    assert "6 more since the last report" in warnings[1]
    assert source.device_counters["bad"].malformed == 8
    assert source.device_counters["good"].malformed == 0
    assert [type(i) for i in feed.data("good", 1)] == [Chunk]  # other devices are unaffected
    assert source.counters.malformed == 8


def test_invalid_device_ids_in_topics_are_counted_not_tracked() -> None:
    source, feed, _ = make_source()
    assert feed.send("emg/bad id/data", p.encode_binary(np.zeros((1, 1), np.float32), seq=0, t0=0, fs=1)) == []
    assert feed.send("emg/" + "x" * 65 + "/data", b"") == []
    assert source.counters.malformed == 2 and source.devices == ()


def test_shard_keeps_only_its_devices() -> None:
    devices = [f"dev{i:02d}" for i in range(1, 11)]
    seen: list[set[str]] = []
    for k in range(2):
        source, feed, _ = make_source(shard=(k, 2))
        for d in devices:
            feed.data(d, 0)
        seen.append(set(source.devices))
        assert source.counters.ignored == 10 - len(source.devices)
    assert seen[0] | seen[1] == set(devices) and not seen[0] & seen[1]
    assert seen[0] == {d for d in devices if p.shard_of(d, 2) == 0}


def test_max_devices_bounds_memory() -> None:
    source, feed, _ = make_source(max_devices=3)
    for i in range(5):
        feed.data(f"d{i}", 0)
    assert len(source.devices) == 3 and source.counters.ignored == 2


def test_incoming_queue_drops_the_oldest_and_counts() -> None:
    drops: list[int] = []
    created: list[Any] = []
    q = _DropOldestQueue(2, on_drop=lambda: drops.append(1), on_create=created.append)
    for i in range(5):
        q.put_nowait(i)
    assert [q.get_nowait(), q.get_nowait()] == [3, 4] and len(drops) == 3 and created == [q]


# ------------------------------------------------------------------------------------------------ URIs
def test_from_uri_topic_filter_port_and_shard() -> None:
    src = from_uri("mqtt://127.0.0.1/emg/+")
    s = src.settings
    assert (s.connection.host, s.connection.port, s.topic_filter, s.shard) == ("127.0.0.1", 1883, "emg/+", None)
    assert s.subscriptions() == [("emg/+/meta", 1), ("emg/+/status", 1), ("emg/+/data", 1)]
    assert src.realtime is True
    s = from_uri("mqtt://127.0.0.1:1999/lab/emg/+/data?shard=1/3&qos=0").settings
    assert (s.connection.port, s.topic_filter, s.shard, s.qos) == (1999, "lab/emg/+", (1, 3), 0)
    assert from_uri("mqtt://localhost").settings.topic_filter == "emg/+"
    assert from_uri("mqtt://h/emg/dev01").settings.subscriptions()[2] == ("emg/dev01/data", 1)
    shared = from_uri("mqtt://h/emg/+?share=workers").settings.subscriptions()
    assert shared[2] == ("$share/workers/emg/+/data", 1) and shared[0] == ("emg/+/meta", 1)
    assert isinstance(open_source("mqtt://127.0.0.1/emg/+"), MqttSource)


def test_credentials_from_uri_or_environment_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    src = from_uri("mqtt://alice:s%40cret@127.0.0.1:1884/emg/+")
    c = src.settings.connection
    assert (c.username, c.password) == ("alice", "s@cret")
    assert "s%40cret" not in src.uri and "s@cret" not in src.uri and "***" in src.uri
    assert "cret" not in repr(src.settings) and "cret" not in c.display()
    monkeypatch.setenv(ENV_USERNAME, "bob")
    monkeypatch.setenv(ENV_PASSWORD, "hunter2")
    c = from_uri("mqtt://127.0.0.1/emg/+").settings.connection
    assert (c.username, c.password) == ("bob", "hunter2")
    assert from_uri("mqtt://carol@127.0.0.1/emg/+").settings.connection.username == "carol"
    assert mask_password("mqtt://u:p@h:1/x?y=1") == "mqtt://u:***@h:1/x?y=1"
    assert mask_password("mqtt://h/x") == "mqtt://h/x"


def test_mqtts_with_ca_and_client_certificate(tmp_path: Any) -> None:
    # files that are not PEM are a configuration error found at once (real certificates: tests/mqtt/test_tls.py)
    for name in ("ca.pem", "c.pem", "c.key"):
        (tmp_path / name).write_text("x")
    with pytest.raises(SourceURIError, match=r"could not be loaded.*PEM"):
        from_uri(f"mqtts://h/emg/+?ca={tmp_path / 'ca.pem'}&cert={tmp_path / 'c.pem'}&key={tmp_path / 'c.key'}")
    c = from_uri("mqtts://h/emg/+").settings.connection
    assert c.port == 8883 and c.tls is not None and c.tls.ca is None and c.scheme == "mqtts"
    assert from_uri("mqtts://h:9999/emg/+?insecure=1").settings.connection.tls.insecure  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("mqtt:///emg/+", "no host"),
        ("mqtt://h/emg/#", "'#'"),
        ("mqtt://h:99999/emg/+", "(?i)port"),
        ("mqtt://h/emg/+?shard=2/2", "shard"),
        ("mqtt://h/emg/+?shard=x", "shard"),
        ("mqtt://h/emg/+?bogus=1", "unknown option"),
        ("mqtt://h/emg/+?ca=/nonexistent.pem", "need mqtts"),
        ("mqtts://h/emg/+?ca=/nonexistent.pem", "no such file"),
        ("mqtt://h/emg/a+b", "whole level"),
        ("mqtt://h/emg/bad id", "device id"),
        ("mqtt://h/emg/+?qos=2", "qos"),
        ("mqtt://h/emg/+?insecure=maybe", "insecure"),
    ],
)
def test_bad_uris_are_rejected_with_the_fix(uri: str, match: str) -> None:
    with pytest.raises(SourceURIError, match=match):
        from_uri(uri)


def test_settings_are_validated() -> None:
    conn = MqttConnection("h", 1883)
    for kwargs in ({"topic_filter": ""}, {"topic_filter": "emg//+"}, {"shard": (3, 2)}, {"qos": 2},
                   {"queue_size": 0}, {"reorder_window": 0}, {"max_gap_s": 0}, {"backoff_initial_s": 0},
                   {"share_group": "a/b"}, {"max_devices": 0}):
        with pytest.raises(ConfigError, match="MqttSourceSettings"):
            MqttSourceSettings(connection=conn, **kwargs)
    with pytest.raises(ConfigError, match="port"):
        MqttConnection("h", 0)
