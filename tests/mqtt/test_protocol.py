"""The MQTT wire protocol v1: encoders, strict decoders, topics, sharding (pure: no broker)."""

from __future__ import annotations

import dataclasses
import json
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streamemg.errors import ConfigError, ProtocolError
from streamemg.mqtt import protocol as p
from streamemg.types import Estimate

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def header(
    *, magic: bytes = b"EMG1", version: int = 1, fmt: int = 2, channels: int = 1, samples: int = 1, seq: int = 0,
    t0: float = 0.0, fs: float = 1000.0, scale: float = 1.0,
) -> bytes:
    return struct.pack("<4sBBHIQddf", magic, version, fmt, channels, samples, seq, t0, fs, scale)


# ----------------------------------------------------------------------------------------- layout
def test_header_is_40_bytes_little_endian_packed() -> None:
    assert p.HEADER_SIZE == 40
    msg = p.encode_binary(np.array([[1.5, -2.0]], dtype=np.float32), seq=258, t0=0.5, fs=4000.0)
    assert msg[:4] == b"EMG1" and msg[4] == 1 and msg[5] == 2
    assert msg[6:8] == (2).to_bytes(2, "little")
    assert msg[8:12] == (1).to_bytes(4, "little")
    assert msg[12:20] == (258).to_bytes(8, "little")
    assert struct.unpack("<d", msg[20:28])[0] == 0.5
    assert struct.unpack("<d", msg[28:36])[0] == 4000.0
    assert struct.unpack("<f", msg[36:40])[0] == 1.0
    assert struct.unpack("<2f", msg[40:]) == (1.5, -2.0)


def test_byte_level_example_of_the_protocol_document() -> None:
    """The hex dump in PROTOCOL.md: int16, 2 channels, 2 samples, seq 7, t0 1.5 s, 4000 Hz, 0.5 µV/count."""
    example = bytes.fromhex(
        "454d4731"  # magic "EMG1"
        "01"  # version 1
        "01"  # format 1 = int16
        "0200"  # 2 channels
        "02000000"  # 2 samples per channel
        "0700000000000000"  # seq 7
        "000000000000f83f"  # t0 = 1.5 s
        "000000000040af40"  # fs = 4000 Hz
        "0000003f"  # scale = 0.5 µV per count
        "6400" "9cff"  # sample 0: ch1 = 100, ch2 = -100
        "c800" "38ff"  # sample 1: ch1 = 200, ch2 = -200
    )
    msg = p.decode_data(example)
    assert (msg.seq, msg.t0, msg.fs, msg.encoding) == (7, 1.5, 4000.0, "int16")
    np.testing.assert_array_equal(msg.data, np.array([[50.0, -50.0], [100.0, -100.0]], dtype=np.float32))
    counts = np.array([[100, -100], [200, -200]], dtype=np.int16)
    assert p.encode_binary(counts, seq=7, t0=1.5, fs=4000.0, scale=0.5) == example


def test_json_example_of_the_protocol_document() -> None:
    msg = p.decode_data(b'{"seq": 17, "t0": 12.5, "fs": 4000, "data": [[1.5, -2], [3, 4.25]]}')
    assert (msg.seq, msg.t0, msg.fs, msg.encoding, msg.non_finite) == (17, 12.5, 4000.0, "json", 0)
    np.testing.assert_array_equal(msg.data, np.array([[1.5, -2], [3, 4.25]], dtype=np.float32))
    assert msg.data.dtype == np.float32 and msg.data.shape == (2, 2)


# ----------------------------------------------------------------------------------------- round trips
finite_f32 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32)
blocks = hnp.arrays(
    np.float32, st.tuples(st.integers(1, 40), st.integers(1, 8)), elements=finite_f32
)
seqs = st.integers(0, 2**64 - 1)
times = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)
rates = st.floats(min_value=1.0, max_value=1e6, allow_nan=False, exclude_min=False)


@FAST
@given(data=blocks, seq=seqs, t0=times, fs=rates)
def test_binary_float32_round_trip(data: np.ndarray, seq: int, t0: float, fs: float) -> None:
    msg = p.decode_data(p.encode_binary(data, seq=seq, t0=t0, fs=fs))
    assert (msg.seq, msg.t0, msg.fs, msg.encoding) == (seq, t0, fs, "float32")
    np.testing.assert_array_equal(msg.data, data)
    assert msg.data.dtype == np.float32


@FAST
@given(
    counts=hnp.arrays(np.int16, st.tuples(st.integers(1, 40), st.integers(1, 8))),
    scale=st.sampled_from([0.05, 0.25, 0.5, 1.0, 3.0]),
    seq=seqs,
)
def test_binary_int16_round_trip(counts: np.ndarray, scale: float, seq: int) -> None:
    msg = p.decode_data(p.encode_binary(counts, seq=seq, t0=0.0, fs=8000.0, scale=scale))
    assert msg.encoding == "int16"
    np.testing.assert_allclose(msg.data, counts.astype(np.float64) * np.float32(scale), rtol=1e-6)
    np.testing.assert_array_equal(p.quantize_int16(msg.data, scale), counts)


@FAST
@given(data=blocks, seq=seqs, t0=times, fs=rates)
def test_json_round_trip_is_exact_for_float32(data: np.ndarray, seq: int, t0: float, fs: float) -> None:
    msg = p.decode_data(p.encode_json(data, seq=seq, t0=t0, fs=fs))
    assert (msg.seq, msg.t0, msg.fs, msg.encoding) == (seq, t0, fs, "json")
    np.testing.assert_array_equal(msg.data, data)


def test_quantize_int16_rounds_and_saturates() -> None:
    out = p.quantize_int16(np.array([[0.26, -0.26, 1e9, -1e9, np.nan]]), 0.5)
    np.testing.assert_array_equal(out, [[1, -1, 32767, -32768, 0]])
    with pytest.raises(ConfigError):
        p.quantize_int16(np.zeros((1, 1)), 0.0)


# ----------------------------------------------------------------------------------------- non-finite policy
def test_non_finite_samples_are_flagged_by_default_and_rejected_on_request() -> None:
    data = np.array([[1.0, np.nan], [np.inf, 2.0], [-np.inf, 3.0]], dtype=np.float32)
    msg = p.decode_data(p.encode_binary(data, seq=1, t0=0, fs=1000))
    assert msg.non_finite == 3
    assert np.isnan(msg.data[0, 1]) and msg.data[1, 0] == np.inf
    strict = p.ProtocolLimits(non_finite="reject")
    with pytest.raises(ProtocolError, match="3 non-finite"):
        p.decode_data(p.encode_binary(data, seq=1, t0=0, fs=1000), strict)
    # JSON carries a missing sample as null (encode_json writes NaN/Inf as null)
    jmsg = p.decode_data(p.encode_json(data, seq=1, t0=0, fs=1000))
    assert jmsg.non_finite == 3 and np.isnan(jmsg.data[1, 0])
    with pytest.raises(ProtocolError, match="non-finite"):
        p.decode_data(p.encode_json(data, seq=1, t0=0, fs=1000), strict)


def test_huge_finite_values_are_not_mistaken_for_non_finite() -> None:
    data = np.full((4, 2), 3.0e38, dtype=np.float32)
    msg = p.decode_data(p.encode_binary(data, seq=0, t0=0, fs=1000), p.ProtocolLimits(non_finite="reject"))
    assert msg.non_finite == 0


# ----------------------------------------------------------------------------------------- malformed: binary
good = p.encode_binary(np.zeros((4, 2), dtype=np.float32), seq=1, t0=0.0, fs=1000.0)

BINARY_CASES = [
    (b"", "empty"),
    (b"EM", "truncated"),
    (good[:39], "truncated binary message: 39 bytes"),
    (b"EMG2" + good[4:], "bad magic"),
    (b"XYZW" + good[4:], "bad magic"),
    (good[:4] + b"\x02" + good[5:], "unsupported protocol version 2"),
    (good[:5] + b"\x03" + good[6:], "unknown sample format 3"),
    (header(channels=0, samples=1), "channel count 0"),
    (header(channels=257, samples=1) + bytes(257 * 4), "channel count 257"),
    (header(samples=0), "sample count 0"),
    (good[:-1], "size mismatch"),
    (good + b"\x00", "size mismatch"),
    (header(channels=2, samples=4, fmt=1) + bytes(32), "size mismatch"),
    (header(fs=0.0) + bytes(4), "sampling rate"),
    (header(fs=-5.0) + bytes(4), "sampling rate"),
    (header(fs=math.nan) + bytes(4), "sampling rate"),
    (header(fs=math.inf) + bytes(4), "sampling rate"),
    (header(fs=2e6) + bytes(4), "sampling rate"),
    (header(t0=math.nan) + bytes(4), "t0"),
    (header(scale=0.0) + bytes(4), "scale"),
    (header(scale=math.nan) + bytes(4), "scale"),
    (header(scale=-1.0) + bytes(4), "scale"),
    (header(fmt=1, scale=3e38) + bytes(2), "overflow"),
]


@pytest.mark.parametrize(("payload", "match"), BINARY_CASES)
def test_malformed_binary_messages_are_rejected_precisely(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        p.decode_data(payload)


def test_payload_limits_apply_before_parsing() -> None:
    limits = p.ProtocolLimits(max_payload_bytes=1000, max_samples=10, max_channels=4)
    with pytest.raises(ProtocolError, match="above the limit of 1000 bytes"):
        p.decode_data(b"EMG1" + bytes(2000), limits)
    with pytest.raises(ProtocolError, match="above the limit"):
        p.decode_data(b"{" + b" " * 2000 + b"}", limits)
    with pytest.raises(ProtocolError, match="sample count 11"):
        p.decode_data(p.encode_binary(np.zeros((11, 1), np.float32), seq=0, t0=0, fs=1), limits)
    with pytest.raises(ProtocolError, match="channel count 5"):
        p.decode_data(p.encode_binary(np.zeros((1, 5), np.float32), seq=0, t0=0, fs=1), limits)
    with pytest.raises(ProtocolError, match="11 samples"):
        p.decode_data(p.encode_json(np.zeros((11, 1)), seq=0, t0=0, fs=1), limits)
    # the default limit: 1 MiB
    with pytest.raises(ProtocolError, match="1048576"):
        p.decode_data(b"EMG1" + bytes(1 << 20))


# ----------------------------------------------------------------------------------------- malformed: JSON
JSON_CASES = [
    (b"{not json", "not valid JSON"),
    (b"{\"seq\": 1", "not valid JSON"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [[NaN]]}", "NaN is not valid JSON"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [[Infinity]]}", "Infinity is not valid JSON"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1}", "lacks 'data'"),
    (b"{}", "lacks 'seq', 't0', 'fs', 'data'"),
    (b"{\"seq\": \"1\", \"t0\": 0, \"fs\": 1, \"data\": [[1]]}", "'seq' must be a whole number"),
    (b"{\"seq\": true, \"t0\": 0, \"fs\": 1, \"data\": [[1]]}", "'seq' must be a whole number"),
    (b"{\"seq\": -1, \"t0\": 0, \"fs\": 1, \"data\": [[1]]}", "'seq' must be a whole number"),
    (b"{\"seq\": 1.0, \"t0\": 0, \"fs\": 1, \"data\": [[1]]}", "'seq' must be a whole number"),
    (b"{\"seq\": 18446744073709551616, \"t0\": 0, \"fs\": 1, \"data\": [[1]]}", "'seq' must be a whole number"),
    (b"{\"seq\": 1, \"t0\": \"0\", \"fs\": 1, \"data\": [[1]]}", "'t0' must be a number"),
    (b"{\"seq\": 1, \"t0\": 1e999, \"fs\": 1, \"data\": [[1]]}", "'t0'"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": \"4000\", \"data\": [[1]]}", "'fs' must be a number"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 0, \"data\": [[1]]}", "sampling rate"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": null, \"data\": [[1]]}", "'fs' must be a number"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": 5}", "'data' must be a list"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": []}", "0 samples"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [1, 2]}", "found a int"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [[1, 2], [3]]}", "rows differ in length"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [[]]}", "0 channels"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [[\"1.5\"]]}", "found a str"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [[1, true]]}", "found a bool"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [[[1]]]}", "found a list"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [[{}]]}", "found a dict"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [[1e39]]}", "3.4e38"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [[1e999]]}", "3.4e38"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [[" + b"9" * 400 + b"]]}", "cannot be read|3.4e38"),
    (b"{" + b"[" * 100000, "not valid JSON"),
    (b"{\"a\":" + b"[" * 100000 + b"]" * 100000 + b"}", "nested too deeply|lacks"),
    (b"{\"seq\": 1, \"t0\": 0, \"fs\": 1, \"data\": [[1]]}\xff", "not valid JSON"),
]


@pytest.mark.parametrize(("payload", "match"), JSON_CASES)
def test_malformed_json_messages_are_rejected_precisely(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        p.decode_data(payload)


def test_json_ignores_unknown_keys_and_accepts_integers() -> None:
    msg = p.decode_data(b'{"seq": 3, "t0": 1, "fs": 2000, "device": "x", "data": [[1], [2], [3]]}')
    assert msg.n_samples == 3 and msg.n_channels == 1 and msg.t0 == 1.0


# ----------------------------------------------------------------------------------------- arbitrary input
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_on_arbitrary_bytes_raises_only_protocol_error(payload: bytes) -> None:
    for candidate in (payload, b"EMG1" + payload, b"EMG1\x01" + payload, b"{" + payload):
        try:
            msg = p.decode_data(candidate)
        except ProtocolError:
            continue
        assert msg.data.dtype == np.float32 and msg.data.ndim == 2


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_decoder_on_mutated_valid_messages_raises_only_protocol_error(data: st.DataObject) -> None:
    block = np.arange(12, dtype=np.float32).reshape(6, 2)
    base = bytearray(p.encode_binary(block, seq=5, t0=1.0, fs=2000.0))
    n_mutations = data.draw(st.integers(1, 4))
    for _ in range(n_mutations):
        at = data.draw(st.integers(0, len(base) - 1))
        base[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base) + 8))
    payload = bytes(base[:cut]) + bytes(max(0, cut - len(base)))
    try:
        msg = p.decode_data(payload)
    except ProtocolError:
        return
    assert msg.data.shape[0] * msg.data.shape[1] * 4 + 40 == len(payload)
    assert math.isfinite(msg.fs) and msg.fs > 0 and math.isfinite(msg.t0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    seq=json_values, t0=json_values, fs=json_values,
    rows=json_values | st.lists(st.lists(json_values, max_size=3), max_size=4),
)
def test_json_decoder_on_arbitrary_values_raises_only_protocol_error(seq, t0, fs, rows) -> None:  # type: ignore[no-untyped-def]
    payload = json.dumps({"seq": seq, "t0": t0, "fs": fs, "data": rows}).encode()
    try:
        msg = p.decode_data(payload)
    except ProtocolError:
        return
    assert type(seq) is int and msg.data.shape[0] >= 1


# ----------------------------------------------------------------------------------------- meta, status
def test_meta_round_trip_and_checks() -> None:
    meta = p.decode_meta(p.encode_meta(fs=4000, channels=["biceps", "triceps"], device={"fw": "1.2"}))
    assert meta == p.DeviceMeta(schema=1, fs=4000.0, channels=("biceps", "triceps"), units="uV", device={"fw": "1.2"})
    assert p.decode_meta(b"{}") == p.DeviceMeta()
    for payload, match in [
        (b"[1]", "must be a JSON object"),
        (b'{"schema": 2}', "schema"),
        (b'{"fs": -1}', "sampling rate"),
        (b'{"channels": []}', "channels"),
        (b'{"channels": [1]}', "channels"),
        (b'{"units": "mV"}', "units"),
        (b'{"device": 3}', "device"),
        (b"nope", "not valid JSON"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            p.decode_meta(payload)


def test_status_payloads() -> None:
    assert p.decode_status(b"online") == "online"
    assert p.decode_status(b" offline\n") == "offline"
    assert p.decode_status(b"") is None
    for bad in (b"ONLINE", b"on", b"1", b"x" * 100):
        with pytest.raises(ProtocolError):
            p.decode_status(bad)


# ----------------------------------------------------------------------------------------- ids, topics, shards
@pytest.mark.parametrize("device", ["a", "dev01", "A-b_9", "x" * 64])
def test_valid_device_ids(device: str) -> None:
    assert p.validate_device_id(device) == device and p.is_valid_device_id(device)


@pytest.mark.parametrize("device", ["", "x" * 65, "a b", "a/b", "a+b", "a#", "dév", "a.b", "a\n"])
def test_invalid_device_ids(device: str) -> None:
    assert not p.is_valid_device_id(device)
    with pytest.raises(ProtocolError, match="device id"):
        p.validate_device_id(device)


def test_topics() -> None:
    assert p.topic("dev01", "data") == "emg/dev01/data"
    assert p.estimate_topic("dev01") == "streamemg/dev01/estimate"
    assert p.label_topic("dev01") == "streamemg/dev01/label"
    assert p.split_topic("emg/dev01/meta") == ("emg", "dev01", "meta")
    assert p.split_topic("site/a/emg/dev-2/status") == ("site/a/emg", "dev-2", "status")
    for bad in ("emg/dev01", "emg/dev 1/data", "emg/dev01/other", "data"):
        with pytest.raises(ProtocolError):
            p.split_topic(bad)
    assert p.device_for_stream("mqtt:dev01") == "dev01"
    assert p.device_for_stream("sim:als") == "sim_als"
    assert p.device_for_stream("lsl:Amp 1/x") == "lsl_Amp_1_x"
    assert len(p.device_for_stream("file:" + "y" * 100)) == 64


def test_shard_of_is_crc32_and_splits_devices_exactly() -> None:
    import zlib

    devices = [f"dev{i:02d}" for i in range(1, 101)]
    for n in (1, 2, 3, 7):
        groups = [{d for d in devices if p.shard_of(d, n) == k} for k in range(n)]
        assert set().union(*groups) == set(devices)
        assert sum(len(g) for g in groups) == len(devices)
    assert p.shard_of("dev01", 2) == zlib.crc32(b"dev01") % 2
    # the worked example of PROTOCOL.md: CRC-32 (IEEE, as in zip and Ethernet) of the ASCII id
    assert zlib.crc32(b"dev01") == 0x788C038A and p.shard_of("dev01", 3) == 2


@pytest.mark.parametrize(("text", "expected"), [("0/1", (0, 1)), ("1/2", (1, 2)), ("3/4", (3, 4))])
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert p.parse_shard(text) == expected


@pytest.mark.parametrize("text", ["2/2", "-1/2", "0/0", "a/b", "1", "", "1/2/3"])
def test_parse_shard_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="shard"):
        p.parse_shard(text)


def test_limits_are_validated() -> None:
    for kwargs in ({"max_channels": 0}, {"max_channels": 300}, {"max_samples": 0}, {"max_payload_bytes": 10},
                   {"max_fs_hz": math.nan}, {"non_finite": "drop"}):
        with pytest.raises(ConfigError, match="ProtocolLimits"):
            p.ProtocolLimits(**kwargs)


# ----------------------------------------------------------------------------------------- estimates
def test_estimate_payload_is_strict_json_with_device() -> None:
    est = Estimate(
        stream_id="mqtt:dev01", name="dev01", index=3, time=12.25, probabilities=(0.7, 0.2, 0.1),
        rolling=(0.6, float("nan"), 0.1), cumulative=(0.5, 0.3, 0.2), label="Normal", confidence=0.6,
        quality="ok", latency_ms=12.3456,
    )
    obj = json.loads(p.encode_estimate(est, "dev01"))
    assert obj["device"] == "dev01" and obj["label"] == "Normal" and obj["time"] == 12.25
    assert obj["probabilities"] == {"Normal": 0.7, "ALS": 0.2, "Myopathy": 0.1}
    assert obj["rolling"]["ALS"] is None
    for key in ("confidence", "quality", "latency_ms", "rolling"):
        assert key in obj
    assert p.label_payload(est) == "Normal"
    assert p.label_payload(dataclasses.replace(est, label=None)) == "withheld"
    assert p.label_payload(dataclasses.replace(est, trained=False)) == "untrained"
    assert json.loads(p.encode_estimate(dataclasses.replace(est, trained=False), "d"))["label"] == "untrained"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"seq":3,"t0":1.5,"fs":8000,"data":[[1.5,-2],[3,null],[1e3,4.25]]}',
        b'{"seq":3,"t0":1.5,"fs":8000,"data":[[NaN]]}',
        b'{"seq":36893488147419103232,"t0":0,"fs":8000,"data":[[1]]}',
        b'{"seq":1,"t0":0,"fs":8000,"data":[[true]]}',
        b'{"seq":1,"t0":0,"fs":8000,"data":[["1"]]}',
        b'{"seq":1,"t0":0,"fs":8000,"data":[[1],[2,3]]}',
        b'{"seq":1,"t0":0,"fs":8000,"data":[[1e400]]}',
        b'{"seq":1,"t0":0,"fs":8000,"data":' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'{"seq":1,"t0":0,"fs":8000,"data":[[1]]',
        b"\xff\xfe",
    ],
)
def test_json_data_decodes_alike_with_and_without_orjson(payload: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    orjson = pytest.importorskip("orjson")

    def decode(fast: object) -> object:
        monkeypatch.setattr(p, "_fast_loads", fast)
        try:
            m = p.decode_json(payload)
        except ProtocolError as exc:
            return ("error", str(exc))
        return (m.seq, m.t0, m.fs, m.data.shape, m.data.tobytes(), m.non_finite)  # bytes: NaN equals NaN

    with_orjson, without = decode(orjson.loads), decode(None)
    # refused by both, in words that differ: arrays nested 2000 deep (the standard library gives up on the depth,
    # orjson on the shape) and a seq beyond 64 bits (orjson reads it as a float)
    differently_worded = b"[[[[" in payload or b"36893488147419103232" in payload
    if differently_worded:
        assert with_orjson[0] == without[0] == "error"
    else:
        assert with_orjson == without
