"""Fuzzing the MQTT wire protocol decoders and the MQTT source's message handling.

Every payload is either rejected with :class:`~streamemg.errors.ProtocolError` or accepted and then checked
against an independent reading of the same bytes (struct / json). Nothing else may happen: no other
exception, no inconsistent message. The seeded loop counts exactly 100,000 payloads; hypothesis adds
shrinking property tests on top.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections import Counter
from typing import Any

import aiomqtt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamemg.errors import ProtocolError
from streamemg.mqtt import protocol as p
from streamemg.mqtt.client import MqttConnection
from streamemg.mqtt.source import MqttSource, MqttSourceSettings
from streamemg.types import Chunk, StatusEvent, StreamInfo

N_PAYLOADS = 100_000
HEADER = struct.Struct("<4sBBHIQddf")
TIGHT = p.ProtocolLimits(max_channels=8, max_samples=256, max_payload_bytes=4096, max_fs_hz=20_000.0)
REJECT_NON_FINITE = p.ProtocolLimits(non_finite="reject")
LIMITS = (p.DEFAULT_LIMITS, TIGHT, REJECT_NON_FINITE)


# ---------------------------------------------------------------------------------------------- checks


def _ref_json_data(payload: bytes) -> np.ndarray:
    rows = json.loads(payload)["data"]
    return np.array([[math.nan if v is None else v for v in r] for r in rows], dtype=np.float64).astype(np.float32)


def check_data(payload: bytes, msg: p.DataMessage, limits: p.ProtocolLimits) -> None:
    """An accepted data message must agree with an independent reading of ``payload`` and with the limits."""
    d = msg.data
    assert isinstance(msg, p.DataMessage) and d.dtype == np.float32 and d.ndim == 2
    n, c = d.shape
    assert 1 <= n <= limits.max_samples and 1 <= c <= limits.max_channels
    assert len(payload) <= limits.max_payload_bytes
    assert math.isfinite(msg.fs) and 0 < msg.fs <= limits.max_fs_hz and math.isfinite(msg.t0)
    assert isinstance(msg.seq, int) and 0 <= msg.seq <= p.MAX_SEQ
    bad = int(np.count_nonzero(~np.isfinite(d)))
    assert msg.non_finite == bad
    assert not (bad and limits.non_finite == "reject")
    if msg.encoding in ("int16", "float32"):
        magic, version, fmt, n_ch, n_s, seq, t0, fs, scale = HEADER.unpack_from(payload)
        assert magic == p.MAGIC and version == p.VERSION
        assert (fmt, msg.encoding) in ((p.FORMAT_INT16, "int16"), (p.FORMAT_FLOAT32, "float32"))
        assert (n_s, n_ch) == (n, c) and (seq, t0, fs) == (msg.seq, msg.t0, msg.fs)
        assert math.isfinite(scale) and scale > 0
        width = 2 if fmt == p.FORMAT_INT16 else 4
        assert len(payload) == HEADER.size + n * c * width
        raw = np.frombuffer(payload, "<i2" if width == 2 else "<f4", n * c, HEADER.size).reshape(n, c)
        with np.errstate(over="ignore", invalid="ignore"):
            ref = raw.astype(np.float32) * np.float32(scale) if scale != 1.0 else raw.astype(np.float32)
        np.testing.assert_array_equal(d, ref)
    else:
        assert msg.encoding == "json"
        obj = json.loads(payload)
        assert (obj["seq"], float(obj["t0"]), float(obj["fs"])) == (msg.seq, msg.t0, msg.fs)
        np.testing.assert_array_equal(d, _ref_json_data(payload))


def check_meta(payload: bytes, meta: p.DeviceMeta, limits: p.ProtocolLimits) -> None:
    obj = json.loads(payload)
    assert isinstance(obj, dict) and meta.schema == p.VERSION and meta.units == "uV"
    assert meta.fs is None or (math.isfinite(meta.fs) and 0 < meta.fs <= limits.max_fs_hz)
    if meta.channels is not None:
        assert 1 <= len(meta.channels) <= limits.max_channels
        assert all(isinstance(ch, str) and 1 <= len(ch) <= 64 for ch in meta.channels)
        assert list(meta.channels) == obj["channels"]
    assert isinstance(meta.device, dict)


def check_topic(name: str, parts: tuple[str, str, str]) -> None:
    prefix, device, kind = parts
    assert p.is_valid_device_id(device) and kind in p.KINDS
    assert name == (f"{prefix}/{device}/{kind}" if prefix or name.startswith("/") else f"{device}/{kind}")


def decode_and_check(target: str, payload: bytes, limits: p.ProtocolLimits) -> bool:
    """True if accepted (and consistent), False if rejected with ProtocolError. Anything else propagates."""
    try:
        if target == "data":
            check_data(payload, p.decode_data(payload, limits), limits)
        elif target == "meta":
            check_meta(payload, p.decode_meta(payload, limits), limits)
        elif target == "status":
            assert p.decode_status(payload) in (None, p.ONLINE, p.OFFLINE)
        else:
            name = payload.decode("utf-8", "replace")  # MQTT topics are UTF-8 strings
            check_topic(name, p.split_topic(name))
    except ProtocolError as exc:
        assert str(exc)  # every rejection says why
        return False
    return True


# ---------------------------------------------------------------------------------------------- corpus and mutators


EDGE_FLOATS = (0.0, -0.0, 1.0, -1.0, 1e-320, 5e-324, 3.4e38, 3.5e38, 1e308, -1e308, math.inf, -math.inf, math.nan,
               8000.0, 1_000_000.0, 1_000_001.0, 20_000.0, 20_000.1)
EDGE_INTS = (0, 1, 2, 7, 8, 9, 255, 256, 257, 65535, 65536, 65537, 2**31, 2**32 - 1, 2**63, 2**64 - 1)
#: (name, struct offset, struct format) of the binary header fields.
FIELDS = (("version", 4, "<B"), ("format", 5, "<B"), ("channels", 6, "<H"), ("samples", 8, "<I"),
          ("seq", 12, "<Q"), ("t0", 20, "<d"), ("fs", 28, "<d"), ("scale", 36, "<f"))


def corpus(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Valid messages of every kind and encoding (the mutation seeds)."""
    out: list[tuple[str, bytes]] = []
    for n, c in ((1, 1), (10, 1), (40, 2), (3, 8), (100, 3), (256, 1)):
        x = rng.normal(0, 50, (n, c)).astype(np.float32)
        out.append(("data", p.encode_binary(x, seq=int(rng.integers(0, 2**40)), t0=12.5, fs=8000.0)))
        out.append(("data", p.encode_binary(p.quantize_int16(x, 0.5), seq=7, t0=0.0, fs=10000.0, scale=0.5)))
        y = x.copy()
        y[0, 0] = np.nan
        out.append(("data", p.encode_binary(y, seq=2**64 - 1, t0=-3.0, fs=4000.0)))
        out.append(("data", p.encode_json(y if n < 50 else x, seq=3, t0=1.25, fs=23437.5)))
    out.append(("meta", p.encode_meta(fs=8000.0, channels=("a", "b"), device={"model": "x", "fw": [1, 2]})))
    out.append(("meta", p.encode_meta()))
    out.append(("meta", b'{"schema":1,"fs":null,"channels":null,"units":"\xc2\xb5V","device":null}'))
    out += [("status", b"online"), ("status", b"offline"), ("status", b" online\n"), ("status", b"")]
    out += [("topic", t.encode()) for t in ("emg/dev01/data", "a/b/c/dev_2/meta", "dev-3/status", "/x/status")]
    return out


def _set_field(buf: bytearray, rng: random.Random) -> None:
    _, off, fmt = rng.choice(FIELDS)
    if len(buf) < off + struct.calcsize(fmt):
        return
    if fmt in ("<d", "<f"):
        value: Any = rng.choice(EDGE_FLOATS)
        if fmt == "<f" and math.isfinite(value) and abs(value) > 3.4e38:
            value = math.inf
    else:
        value = rng.choice(EDGE_INTS) % (1 << (8 * struct.calcsize(fmt)))
    struct.pack_into(fmt, buf, off, value)


def _json_mutant(payload: bytes, rng: random.Random) -> bytes:
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return payload
    if not isinstance(obj, dict) or not obj:
        return payload
    key = rng.choice([*obj, "data", "seq", "extra"])
    weird: list[Any] = [None, True, "12", -1, 2**64, 2**70, 10**400, 1e308, [], {}, [[]], [[1, 2], [3]],
                        [[None]], [["1"]], [[True]], [[1e39]], [[-1e39]], [[0.5] * 300], [[1.0]] * 70000, "x" * 70]
    obj[key] = rng.choice(weird)
    if rng.random() < 0.2:
        obj.pop(rng.choice(list(obj)), None)
    text = json.dumps(obj)
    if rng.random() < 0.1:
        text = text.replace("null", rng.choice(["NaN", "Infinity", "-Infinity", "nul", "1e999"]), 1)
    return text.encode()


def mutate(payload: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """One random mutation (bit flips, byte writes, truncation, extension, header fields, splices, JSON edits)."""
    buf = bytearray(payload)
    op = rng.randrange(9)
    if op == 0 and buf:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif op == 1 and buf:
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif op == 2:
        del buf[rng.randrange(len(buf) + 1) :]
    elif op == 3:
        buf += rng.randbytes(rng.choice((1, 2, 3, 4, 39, 40, 1000)))
    elif op == 4:
        for _ in range(rng.randint(1, 3)):
            _set_field(buf, rng)
    elif op == 5:
        other = rng.choice(others)
        buf = buf[: rng.randrange(len(buf) + 1)] + other[rng.randrange(len(other) + 1) :]
    elif op == 6:
        return _json_mutant(payload, rng)
    elif op == 7:
        return rng.choice((b"{", b"EMG1", b"[", b" ", b"")) + rng.randbytes(rng.randrange(0, 300))
    else:
        depth = rng.choice((10, 1000, 100_000))
        return b'{"seq":1,"t0":0,"fs":8000,"data":' + b"[" * depth + b"]" * depth + b"}"
    return bytes(buf)


def random_topic(rng: random.Random) -> str:
    alphabet = "abcXYZ019_-/+#. \x00é$"
    levels = ["".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 3, 64, 65)))) for _ in range(3)]
    if rng.random() < 0.5:
        levels[-1] = rng.choice((*p.KINDS, "estimate", "DATA", ""))
    return "/".join(levels[rng.randrange(3) :])


# ---------------------------------------------------------------------------------------------- the 100,000


@pytest.mark.timeout(600)
def test_100k_random_and_mutated_payloads_never_crash_the_decoders() -> None:
    """100,000 payloads (mutations of valid messages, random bytes, random topics), each counted as rejected
    (ProtocolError with a message) or accepted and consistent with an independent reading of its bytes."""
    rng = random.Random(20240607)
    seeds = corpus(np.random.default_rng(7))
    raw = [payload for _, payload in seeds]
    tally: Counter[tuple[str, bool]] = Counter()
    for i in range(N_PAYLOADS):
        limits = LIMITS[i % len(LIMITS)]
        r = rng.random()
        if r < 0.9:
            target, payload = rng.choice(seeds)
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                payload = mutate(payload, rng, raw)
            if target == "topic":
                payload = random_topic(rng).encode("utf-8", "surrogatepass") if rng.random() < 0.5 else payload
        elif r < 0.95:
            target, payload = rng.choice(("data", "meta", "status")), rng.randbytes(rng.randrange(0, 2000))
        else:
            target, payload = "topic", random_topic(rng).encode("utf-8", "surrogatepass")
        try:
            accepted = decode_and_check(target, payload, limits)
        except Exception as exc:  # report the reproducer
            raise AssertionError(f"payload #{i} ({target}, {limits}) {payload[:120]!r}: {exc!r}") from exc
        tally[target, accepted] += 1
    assert sum(tally.values()) == N_PAYLOADS
    # the loop really exercised both outcomes for data messages and for every other kind
    for target in ("data", "meta", "status", "topic"):
        assert tally[target, False] > 0 and tally[target, True] > 0, tally


def test_the_seed_corpus_is_accepted_and_a_short_mutation_run_is_clean() -> None:
    """The fast version of the loop above (runs in every test selection)."""
    seeds = corpus(np.random.default_rng(7))
    for target, payload in seeds:
        assert decode_and_check(target, payload, p.DEFAULT_LIMITS), (target, payload[:60])
    rng = random.Random(1)
    raw = [payload for _, payload in seeds]
    for i in range(3000):
        target, payload = rng.choice(seeds)
        decode_and_check(target, mutate(payload, rng, raw), LIMITS[i % 3])


# ---------------------------------------------------------------------------------------------- hypothesis


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from(LIMITS))
def test_any_bytes_are_rejected_or_consistent(payload: bytes, limits: p.ProtocolLimits) -> None:
    for target in ("data", "meta", "status"):
        decode_and_check(target, payload, limits)
    decode_and_check(target="data", payload=p.MAGIC + payload, limits=limits)
    decode_and_check(target="data", payload=b"{" + payload, limits=limits)


header_fields = st.tuples(
    st.sampled_from([0, 1, 2, 255]),
    st.sampled_from([0, 1, 2, 3]),
    st.integers(0, 300),
    st.integers(0, 300),
    st.integers(0, 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)


@settings(max_examples=1500, deadline=None)
@given(header_fields, st.integers(-4, 4), st.sampled_from(LIMITS))
def test_binary_headers_with_any_field_values(fields: tuple[Any, ...], slack: int, limits: p.ProtocolLimits) -> None:
    version, fmt, n_ch, n_s, seq, t0, fs, scale = fields
    width = 2 if fmt == 1 else 4
    body = max(0, n_ch * n_s * width + slack)
    payload = HEADER.pack(p.MAGIC, version, fmt, n_ch, n_s, seq, t0, fs, scale) + bytes(range(256)) * (body // 256) \
        + bytes(body % 256)
    decode_and_check("data", payload, limits)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={"seq": json_values | st.integers(-5, 2**65), "t0": json_values, "fs": json_values | st.floats(),
                  "data": json_values | st.lists(st.lists(st.floats() | st.none() | st.integers(), max_size=4),
                                                 max_size=20),
                  "schema": json_values, "channels": json_values, "units": json_values, "device": json_values},
    ),
    st.sampled_from(LIMITS),
)
def test_any_json_object_is_rejected_or_consistent(obj: dict[str, Any], limits: p.ProtocolLimits) -> None:
    payload = json.dumps(obj, allow_nan=True).encode()
    decode_and_check("data", payload, limits)
    decode_and_check("meta", payload, limits)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=150))
def test_any_topic_is_rejected_or_split_consistently(name: str) -> None:
    decode_and_check("topic", name.encode("utf-8", "surrogatepass"), p.DEFAULT_LIMITS)


# ---------------------------------------------------------------------------------------------- limits


def _msg(n: int, c: int, fs: float = 8000.0, fmt: str = "f32") -> bytes:
    x = np.ones((n, c), np.float32)
    if fmt == "json":
        return p.encode_json(x, seq=1, t0=0.0, fs=fs)
    return p.encode_binary(x if fmt == "f32" else x.astype(np.int16), seq=1, t0=0.0, fs=fs)


@pytest.mark.parametrize("fmt", ["f32", "i16", "json"])
def test_each_protocol_limit_rejects_with_a_clear_error(fmt: str) -> None:
    limits = p.ProtocolLimits(max_channels=4, max_samples=100, max_payload_bytes=3000, max_fs_hz=20_000.0)
    assert p.decode_data(_msg(100, 4, fmt=fmt) if fmt != "json" else _msg(50, 4, fmt=fmt), limits).n_channels == 4
    cases: list[tuple[bytes, str]] = [
        (_msg(10, 5, fmt=fmt), r"channel.* outside 1\.\.4"),
        (_msg(101, 1, fmt=fmt), r"outside 1\.\.100"),
        (_msg(10, 1, fs=20_001.0, fmt=fmt), r"fs=20001.0 must be a finite number of Hz in \[1, 20000\]"),
        (b"EMG1" + bytes(3000), "above the limit of 3000 bytes"),
        (b"{" + b" " * 3000 + b"}", "above the limit of 3000 bytes"),
    ]
    for payload, pattern in cases:
        with pytest.raises(ProtocolError, match=pattern):
            p.decode_data(payload, limits)


def test_non_finite_policy_flags_or_rejects() -> None:
    x = np.ones((4, 2), np.float32)
    x[1, 1] = np.nan
    x[2, 0] = np.inf
    for payload in (p.encode_binary(x, seq=0, t0=0.0, fs=8000.0), p.encode_json(x, seq=0, t0=0.0, fs=8000.0)):
        assert p.decode_data(payload).non_finite in (2,)
        with pytest.raises(ProtocolError, match="non-finite"):
            p.decode_data(payload, REJECT_NON_FINITE)


@pytest.mark.parametrize("fs", [5e-324, 1e-300, 1e-3])
def test_absurd_sampling_rates_are_rejected(fs: float) -> None:
    with pytest.raises(ProtocolError, match="fs"):
        p.decode_data(_msg(10, 1, fs=fs))


def test_limit_settings_are_validated() -> None:
    from streamemg.errors import ConfigError

    for kwargs in ({"max_channels": 0}, {"max_channels": 257}, {"max_samples": 0}, {"max_payload_bytes": 10},
                   {"max_fs_hz": math.inf}, {"non_finite": "ignore"}):
        with pytest.raises(ConfigError, match=next(iter(kwargs))):
            p.ProtocolLimits(**kwargs)  # type: ignore[arg-type]


def test_device_ids_are_validated_before_use_in_topics_and_names() -> None:
    for bad in ("", "a/b", "+", "#", "dev 1", "x" * 65, "../etc", "dév", "a\x00b"):
        assert not p.is_valid_device_id(bad)
        with pytest.raises(ProtocolError, match="device id"):
            p.topic(bad, "data")
        with pytest.raises(ProtocolError):
            p.estimate_topic(bad)
    for stream_id in ("lsl:Amp 1", "sim:als", "../../x", "mqtt:a/b", "", "x" * 200):
        assert p.is_valid_device_id(p.device_for_stream(stream_id))


# ---------------------------------------------------------------------------------------------- the MQTT source


def _source(**kwargs: Any) -> MqttSource:
    return MqttSource(MqttSourceSettings(connection=MqttConnection("127.0.0.1", 1883), **kwargs))


def _expected_malformed(kind: str, payload: bytes, limits: p.ProtocolLimits) -> bool:
    try:
        if kind == "data":
            p.decode_data(payload, limits)
        elif kind == "meta":
            if payload:
                p.decode_meta(payload, limits)
        else:
            p.decode_status(payload)
    except ProtocolError:
        return True
    return False


@pytest.mark.timeout(300)
def test_the_mqtt_source_survives_20k_fuzzed_messages_and_counts_each() -> None:
    """Random topics (valid and invalid device levels) and mutated payloads through the MQTT source's message
    handling: no exception, every message counted once, and every Chunk it yields is consistent."""
    rng = random.Random(99)
    seeds = [s for s in corpus(np.random.default_rng(3)) if s[0] in ("data", "meta", "status")]
    raw = [payload for _, payload in seeds]
    # plain valid data too, with advancing seq, so streams are created and seq tracking runs
    devices = ["dev01", "dev-2", "D_3"]
    next_seq = dict.fromkeys(devices, 0)
    source = _source(max_devices=50)
    limits = source.settings.limits
    expected = Counter()
    announced: dict[str, StreamInfo] = {}
    last_seq: dict[str, int] = {}
    n = 20_000
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            dev = rng.choice(devices)
            kind = "data"
            next_seq[dev] += rng.choice((1, 1, 1, 2, 0, -1, 70, -200))
            next_seq[dev] = max(0, next_seq[dev])
            payload = p.encode_binary(np.ones((10, rng.choice((1, 2))), np.float32), seq=next_seq[dev],
                                      t0=next_seq[dev] / 800.0, fs=rng.choice((8000.0, 10000.0)))
        else:
            kind, payload = rng.choice(seeds)
            payload = mutate(payload, rng, raw)
            # a broker only delivers topics without wildcards and NUL; anything else is possible in the device level
            level = random_topic(rng).translate({ord(ch): None for ch in "/+#\x00"})
            dev = rng.choice(devices) if rng.random() < 0.7 else level
            if rng.random() < 0.05:
                kind = rng.choice(("estimate", "Data"))
        topic_name = f"emg/{dev}/{kind}"
        if not p.is_valid_device_id(dev):
            expected["malformed"] += 1
        elif dev not in source._devices and len(source._devices) >= 50:
            expected["ignored"] += 1
        elif kind not in ("data", "meta", "status"):
            expected["ignored"] += 1
        elif _expected_malformed(kind, payload, limits):
            expected["malformed"] += 1
        elif kind == "data":
            expected["data_accepted"] += 1
        msg = aiomqtt.Message(topic_name, payload, 0, rng.random() < 0.1, 0, None)
        chunk = source._on_message(msg)  # must never raise
        items = [*source._pending, *([chunk] if chunk is not None else [])]
        source._pending.clear()
        for item in items:
            if isinstance(item, StreamInfo):
                assert item.stream_id.startswith("mqtt:") and p.is_valid_device_id(item.stream_id[5:])
                announced[item.stream_id] = item
            elif isinstance(item, Chunk):
                info = announced[item.stream_id]  # announced before its first chunk
                assert item.data.dtype == np.float32 and item.data.shape[1] == info.n_channels
                assert item.timestamps.shape == (item.data.shape[0],)
                if info.fs >= 1.0:  # below 1 Hz see test_absurd_sampling_rates_are_rejected (the pipeline refuses
                    assert np.isfinite(item.timestamps).all()  # such a stream: its rate is below the model's)
                assert item.seq is not None and item.seq > last_seq.get(item.stream_id, -1)  # only ever grows
                last_seq[item.stream_id] = item.seq
            else:
                assert isinstance(item, StatusEvent) and item.stream_id in announced
    c = source.counters
    assert c.messages == n and c.errors == 0
    assert c.malformed == expected["malformed"] and c.ignored == expected["ignored"]
    assert c.data_messages + c.duplicates + c.late == expected["data_accepted"]
    assert c.data_messages > 1000 and c.malformed > 1000 and c.duplicates + c.late > 0


def test_the_mqtt_source_counts_devices_beyond_its_limit_as_ignored() -> None:
    source = _source(max_devices=3)
    payload = p.encode_binary(np.ones((5, 1), np.float32), seq=0, t0=0.0, fs=8000.0)
    for i in range(10):
        source._on_message(aiomqtt.Message(f"emg/dev{i}/data", payload, 0, False, 0, None))
    assert len(source.device_counters) == 3 and source.counters.ignored == 7
    source._on_message(aiomqtt.Message("emg/bad id/data", payload, 0, False, 0, None))
    assert source.counters.malformed == 1
