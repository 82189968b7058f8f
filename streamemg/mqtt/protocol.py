"""The streamemg MQTT wire protocol, version 1: one module shared by the MQTT source, sink and simulator.

``PROTOCOL.md`` (repository root) is the normative description for device authors; this module is its
reference implementation. In short:

Topics (``<device>`` matches ``[A-Za-z0-9_-]{1,64}``)::

    emg/<device>/data              sample chunks: binary (below) or JSON; QoS 0 or 1
    emg/<device>/meta              retained JSON: {"schema": 1, "fs", "channels", "units": "uV", "device"}
    emg/<device>/status            retained "online" / "offline" (the device's last will)
    streamemg/<device>/estimate    published by streamemg: JSON, QoS 1
    streamemg/<device>/label       published by streamemg: retained plain-text label

Binary data message: little-endian, a 40-byte header, then ``n_samples * n_channels`` samples interleaved
by sample (s0c0 s0c1 ... s1c0 ...)::

    offset  type     field
    0       4 bytes  magic b"EMG1"
    4       uint8    version = 1
    5       uint8    sample format: 1 = int16, 2 = float32
    6       uint16   channel count (1..256)
    8       uint32   samples per channel in this message
    12      uint64   seq: +1 per message per device, from any start
    20      float64  t0: device time of the first sample, seconds
    28      float64  fs: sampling rate, Hz
    36      float32  scale: µV per unit (1.0 for float32 samples in µV)

JSON data message: ``{"seq": 17, "t0": 12.5, "fs": 4000, "data": [[s0c0, s0c1], [s1c0, s1c1], ...]}`` in µV.

Decoding is strict: every field is checked, the sizes must match the payload length exactly, and the
limits of :class:`ProtocolLimits` apply. Anything else raises :class:`~streamemg.errors.ProtocolError`
with a message that says what is wrong; the decoders never raise anything else, whatever the bytes.

Non-finite samples (NaN, ±Inf; ``null`` in JSON) are a policy (:attr:`ProtocolLimits.non_finite`). The
default, ``"flag"``, accepts them and counts them in :attr:`DataMessage.non_finite`: a device with one broken
channel keeps its other channels, and the pipeline keeps such samples out of its stateful filters and marks
the channel's quality ``"nan"`` so no estimate is made from it. ``"reject"`` drops the whole message instead.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..errors import ConfigError, ProtocolError
from ..types import Estimate, FloatArray

_fast_loads: Any
try:  # a faster JSON parser for the data messages of JSON devices (docs/mqtt-scaling.md); optional
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the installation
    _fast_loads = None

#: The 4-byte magic that starts every binary data message.
MAGIC = b"EMG1"
#: The protocol version carried in byte 4 of a binary message and in the meta ``schema`` field.
VERSION = 1
#: Binary sample formats (byte 5).
FORMAT_INT16 = 1
FORMAT_FLOAT32 = 2
FORMAT_NAMES = {FORMAT_INT16: "int16", FORMAT_FLOAT32: "float32"}
_SAMPLE_DTYPES: dict[int, np.dtype[Any]] = {FORMAT_INT16: np.dtype("<i2"), FORMAT_FLOAT32: np.dtype("<f4")}
#: The binary header: magic, version, format, channels, samples, seq, t0, fs, scale (little-endian, packed).
HEADER = struct.Struct("<4sBBHIQddf")
HEADER_SIZE = HEADER.size  # 40
#: Hard protocol limit on the channel count (the limit setting may only lower it).
MAX_CHANNELS = 256
#: Largest value of the uint64 seq field.
MAX_SEQ = 2**64 - 1

#: Topic levels and payloads.
DATA, META, STATUS = "data", "meta", "status"
KINDS = (DATA, META, STATUS)
ONLINE, OFFLINE = "online", "offline"
#: Default topic prefixes: devices publish under ``emg/``, streamemg publishes under ``streamemg/``.
DEVICE_PREFIX = "emg"
OUTPUT_PREFIX = "streamemg"
#: The label payload when the rolling estimate is withheld (poor signal quality) or the model is untrained.
LABEL_WITHHELD = "withheld"

_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NOT_DEVICE_CHAR = re.compile(r"[^A-Za-z0-9_-]")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NON_FINITE_POLICIES = ("flag", "reject")


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """Limits applied to every incoming message; a message beyond them is rejected with ProtocolError.

    Attributes:
        max_channels: channels per message (1..256; the protocol itself caps at 256).
        max_samples: samples per channel in one message.
        max_payload_bytes: bytes of one payload (data, meta or status), checked before parsing.
        max_fs_hz: highest accepted sampling rate, Hz.
        min_fs_hz: lowest accepted sampling rate, Hz (a rate like 1e-300 Hz would put samples at infinite times).
        non_finite: ``"flag"`` (default): NaN/±Inf samples (``null`` in JSON) are accepted and counted in
            :attr:`DataMessage.non_finite`; the pipeline's quality gate then marks the channel ``"nan"``.
            ``"reject"``: a message holding any non-finite sample is rejected.
    """

    max_channels: int = MAX_CHANNELS
    max_samples: int = 65536
    max_payload_bytes: int = 1 << 20
    max_fs_hz: float = 1_000_000.0
    min_fs_hz: float = 1.0
    non_finite: str = "flag"

    def __post_init__(self) -> None:
        if isinstance(self.max_channels, bool) or not (1 <= self.max_channels <= MAX_CHANNELS):
            raise ConfigError(
                f"ProtocolLimits.max_channels={self.max_channels!r}: give a channel count from 1 to {MAX_CHANNELS}"
            )
        if isinstance(self.max_samples, bool) or not (1 <= self.max_samples <= 2**32 - 1):
            raise ConfigError(
                f"ProtocolLimits.max_samples={self.max_samples!r}: give a sample count from 1 to 4294967295 "
                "(default 65536)"
            )
        if isinstance(self.max_payload_bytes, bool) or self.max_payload_bytes < HEADER_SIZE + 2:
            raise ConfigError(
                f"ProtocolLimits.max_payload_bytes={self.max_payload_bytes!r}: give at least {HEADER_SIZE + 2} "
                "bytes (default 1048576)"
            )
        if not (isinstance(self.max_fs_hz, (int, float)) and math.isfinite(self.max_fs_hz) and self.max_fs_hz > 0):
            raise ConfigError(f"ProtocolLimits.max_fs_hz={self.max_fs_hz!r}: give a finite rate in Hz above 0")
        if not (isinstance(self.min_fs_hz, (int, float)) and 0 < self.min_fs_hz <= self.max_fs_hz):
            raise ConfigError(f"ProtocolLimits.min_fs_hz={self.min_fs_hz!r}: give a rate in Hz in (0, max_fs_hz]")
        if self.non_finite not in _NON_FINITE_POLICIES:
            raise ConfigError(f"ProtocolLimits.non_finite={self.non_finite!r}: use 'flag' (default) or 'reject'")


DEFAULT_LIMITS = ProtocolLimits()


class DataMessage(NamedTuple):
    """One decoded data message (a named tuple: cheap to build on the hot path, immutable).

    Attributes:
        seq: the sender's message counter (0..2**64-1).
        t0: device time of the first sample, seconds.
        fs: sampling rate, Hz.
        data: float32 ``(n_samples, n_channels)`` in µV (scale applied). Read-only: it may be a view of the
            payload bytes.
        encoding: ``"int16"``, ``"float32"`` (binary forms) or ``"json"``.
        non_finite: number of NaN/±Inf values in ``data`` (0 unless the limits' policy is ``"flag"``).
    """

    seq: int
    t0: float
    fs: float
    data: FloatArray
    encoding: str
    non_finite: int = 0

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[1])


@dataclass(frozen=True, slots=True)
class DeviceMeta:
    """The retained ``emg/<device>/meta`` message: advisory facts about a device.

    Attributes:
        schema: meta schema version (1).
        fs: the device's nominal rate in Hz, if given (data messages carry the rate that counts).
        channels: channel labels, if given; used when their number matches the data's channel count.
        units: always ``"uV"`` (data are µV by definition; ``scale`` converts integer samples).
        device: free-form JSON object (model, firmware, site, ...).
    """

    schema: int = VERSION
    fs: float | None = None
    channels: tuple[str, ...] | None = None
    units: str = "uV"
    device: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- device ids
def is_valid_device_id(device: str) -> bool:
    """True when ``device`` matches ``[A-Za-z0-9_-]{1,64}``."""
    return isinstance(device, str) and _DEVICE_ID.fullmatch(device) is not None


def validate_device_id(device: str) -> str:
    """Return ``device`` unchanged, or raise ProtocolError saying why it is not a valid device id."""
    if not isinstance(device, str):
        raise ProtocolError(f"device id {device!r} is not a string")
    if not is_valid_device_id(device):
        raise ProtocolError(
            f"device id {device[:80]!r} is invalid: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"
        )
    return device


def device_for_stream(stream_id: str) -> str:
    """The device id under which estimates of a stream are published.

    ``"mqtt:dev01"`` gives ``"dev01"``; other stream ids (``"sim:als"``, ``"lsl:Amp 1"``) have every character
    outside ``[A-Za-z0-9_-]`` replaced by ``_`` and are cut to 64 characters (``"sim_als"``, ``"lsl_Amp_1"``).
    """
    if stream_id.startswith("mqtt:") and is_valid_device_id(stream_id[5:]):
        return stream_id[5:]
    return _NOT_DEVICE_CHAR.sub("_", stream_id)[:64] or "_"


# --------------------------------------------------------------------------------------------- topics
def topic(device: str, kind: str, prefix: str = DEVICE_PREFIX) -> str:
    """``<prefix>/<device>/<kind>``, e.g. ``emg/dev01/data``; validates the device id and the kind."""
    validate_device_id(device)
    if kind not in KINDS:
        raise ProtocolError(f"unknown topic kind {kind!r}: use one of {', '.join(KINDS)}")
    return f"{prefix}/{device}/{kind}" if prefix else f"{device}/{kind}"


def estimate_topic(device: str, prefix: str = OUTPUT_PREFIX) -> str:
    """``streamemg/<device>/estimate``."""
    return f"{prefix}/{validate_device_id(device)}/estimate"


def label_topic(device: str, prefix: str = OUTPUT_PREFIX) -> str:
    """``streamemg/<device>/label``."""
    return f"{prefix}/{validate_device_id(device)}/label"


def split_topic(name: str) -> tuple[str, str, str]:
    """Split ``<prefix>/<device>/<kind>`` into (prefix, device, kind); the prefix may be empty or multi-level.

    Raises:
        ProtocolError: fewer than two levels, an invalid device id or an unknown kind.
    """
    kind_at = name.rfind("/")
    if kind_at < 1:
        raise ProtocolError(f"topic {name[:200]!r} is not of the form <prefix>/<device>/<data|meta|status>")
    kind = name[kind_at + 1 :]
    dev_at = name.rfind("/", 0, kind_at)
    device = name[dev_at + 1 : kind_at]
    prefix = name[:dev_at] if dev_at >= 0 else ""
    if kind not in KINDS:
        raise ProtocolError(f"topic {name[:200]!r}: last level {kind[:40]!r} is not one of {', '.join(KINDS)}")
    validate_device_id(device)
    return prefix, device, kind


# --------------------------------------------------------------------------------------------- sharding
def shard_of(device: str, n_shards: int) -> int:
    """The shard (0..n_shards-1) that handles ``device``: CRC-32 (zlib, IEEE) of its ASCII id modulo N.

    Stable across processes, machines and languages (it is the common CRC-32 of zip and Ethernet).
    """
    if n_shards < 1:
        raise ConfigError(f"n_shards={n_shards!r}: give at least 1 shard")
    return zlib.crc32(device.encode("utf-8")) % n_shards


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"k/N"`` (0 <= k < N) into (k, N); raises ConfigError naming the value and the fix."""
    k_text, sep, n_text = str(text).partition("/")
    try:
        if not sep:
            raise ValueError
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ConfigError(f"shard {text!r}: write it as K/N, e.g. 0/2 and 1/2 for two workers") from None
    if n < 1 or not (0 <= k < n):
        raise ConfigError(f"shard {text!r}: need 0 <= K < N (shards are numbered from 0), e.g. 0/2 and 1/2")
    return k, n


# --------------------------------------------------------------------------------------------- data: decode
def decode_data(payload: bytes | bytearray | memoryview, limits: ProtocolLimits = DEFAULT_LIMITS) -> DataMessage:
    """Decode a data message in either form (binary if it starts with ``EMG1``, JSON if with ``{``).

    Args:
        payload: the MQTT payload.
        limits: size limits and the non-finite policy.

    Returns:
        The decoded message; ``data`` is float32 ``(n_samples, n_channels)`` µV.

    Raises:
        ProtocolError: anything wrong, with a message naming the field and the expected value.
    """
    size = len(payload)
    if size > limits.max_payload_bytes:
        raise ProtocolError(
            f"payload of {size} bytes is above the limit of {limits.max_payload_bytes} bytes; "
            "send smaller chunks (or raise ProtocolLimits.max_payload_bytes)"
        )
    head = bytes(payload[:4])
    if head == MAGIC:
        return decode_binary(payload, limits)
    stripped = bytes(payload[:64]).lstrip()
    if stripped.startswith(b"{"):
        return decode_json(payload, limits)
    if size == 0:
        raise ProtocolError("empty data message: expected a binary message (magic b'EMG1') or a JSON object")
    if size < 4 and MAGIC.startswith(head):
        raise ProtocolError(f"truncated data message: {size} bytes, a binary header has {HEADER_SIZE}")
    raise ProtocolError(
        f"bad magic {head!r}: a binary data message starts with b'EMG1' and a JSON data message with '{{'"
    )


def decode_binary(payload: bytes | bytearray | memoryview, limits: ProtocolLimits = DEFAULT_LIMITS) -> DataMessage:
    """Decode a binary data message (see the module docstring for the layout). No per-sample Python."""
    size = len(payload)
    if size > limits.max_payload_bytes:
        raise ProtocolError(
            f"payload of {size} bytes is above the limit of {limits.max_payload_bytes} bytes; send smaller chunks"
        )
    if size < HEADER_SIZE:
        raise ProtocolError(f"truncated binary message: {size} bytes, the header alone has {HEADER_SIZE}")
    magic, version, fmt, n_ch, n_s, seq, t0, fs, scale = HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: a binary data message starts with b'EMG1'")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (byte 4): this receiver speaks version {VERSION}")
    dtype = _SAMPLE_DTYPES.get(fmt)
    if dtype is None:
        raise ProtocolError(f"unknown sample format {fmt} (byte 5): use 1 for int16 or 2 for float32")
    if not 1 <= n_ch <= limits.max_channels:
        raise ProtocolError(f"channel count {n_ch} (bytes 6-7) is outside 1..{limits.max_channels}")
    if not 1 <= n_s <= limits.max_samples:
        raise ProtocolError(f"sample count {n_s} (bytes 8-11) is outside 1..{limits.max_samples}")
    expected = HEADER_SIZE + n_ch * n_s * dtype.itemsize
    if size != expected:
        raise ProtocolError(
            f"size mismatch: the header announces {n_s} samples x {n_ch} channels of {FORMAT_NAMES[fmt]} "
            f"= {expected} bytes with the {HEADER_SIZE}-byte header, but the payload has {size} bytes"
        )
    _check_rate(fs, limits)
    if not math.isfinite(t0):
        raise ProtocolError(f"t0 {t0!r} (bytes 20-27) is not a finite number of seconds")
    if not (math.isfinite(scale) and scale > 0):
        raise ProtocolError(f"scale {scale!r} (bytes 36-39) must be a finite number of µV per unit above 0")
    raw = np.frombuffer(payload, dtype=dtype, count=n_ch * n_s, offset=HEADER_SIZE).reshape(n_s, n_ch)
    if fmt == FORMAT_FLOAT32:
        data = raw.astype(np.float32, copy=False)  # a read-only view of the payload on little-endian machines
        bad = _count_non_finite(data)
        if scale != 1.0:
            with np.errstate(over="ignore", invalid="ignore"):
                data = data * np.float32(scale)
            if _count_non_finite(data) > bad:
                raise ProtocolError(f"scale {scale!r} makes samples overflow float32 (|x| > 3.4e38 µV)")
    else:
        if scale * 32768.0 > _FLOAT32_MAX:
            raise ProtocolError(f"scale {scale!r} makes int16 samples overflow float32 (|x| > 3.4e38 µV)")
        bad = 0
        data = raw.astype(np.float32) if scale == 1.0 else np.multiply(raw, np.float32(scale), dtype=np.float32)
    if bad and limits.non_finite == "reject":
        _reject_non_finite(bad)
    return DataMessage(seq, t0, fs, data, FORMAT_NAMES[fmt], bad)


def decode_json(payload: bytes | bytearray | memoryview | str, limits: ProtocolLimits = DEFAULT_LIMITS) -> DataMessage:
    """Decode a JSON data message ``{"seq", "t0", "fs", "data": [[...], ...]}`` (samples in µV).

    ``null`` stands for a missing sample (NaN, subject to the non-finite policy); the non-standard
    literals ``NaN`` and ``Infinity`` are rejected. Unknown keys are ignored.
    """
    size = len(payload)
    if size > limits.max_payload_bytes:
        raise ProtocolError(
            f"payload of {size} bytes is above the limit of {limits.max_payload_bytes} bytes; send smaller chunks"
        )
    obj = _load_json(payload, "data", fast=True)
    if not isinstance(obj, dict):
        raise ProtocolError(f"JSON data message must be an object, got {type(obj).__name__}")
    missing = [k for k in ("seq", "t0", "fs", "data") if k not in obj]
    if missing:
        raise ProtocolError(f"JSON data message lacks {', '.join(repr(k) for k in missing)}")
    seq = obj["seq"]
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise ProtocolError(f"'seq' must be a whole number from 0 to 2**64-1, got {_show(seq)}")
    t0 = _number(obj["t0"], "t0")
    if not math.isfinite(t0):
        raise ProtocolError(f"'t0' {t0!r} is not a finite number of seconds")
    fs = _number(obj["fs"], "fs")
    _check_rate(fs, limits)
    rows = obj["data"]
    if type(rows) is not list:
        raise ProtocolError(f"'data' must be a list of samples, each a list of channel values; got {_show(rows)}")
    n_s = len(rows)
    if not 1 <= n_s <= limits.max_samples:
        raise ProtocolError(f"'data' holds {n_s} samples, outside 1..{limits.max_samples}")
    row_types = set(map(type, rows))
    if row_types != {list}:
        bad_type = next(t for t in row_types if t is not list)
        raise ProtocolError(
            f"'data' must be a list of samples, each a list of channel values ([[s0c0, s0c1], [s1c0, s1c1]]); "
            f"found a {bad_type.__name__}"
        )
    widths = set(map(len, rows))
    if len(widths) != 1:
        raise ProtocolError(f"'data' rows differ in length ({sorted(widths)[:5]}): every sample needs every channel")
    n_ch = widths.pop()
    if not 1 <= n_ch <= limits.max_channels:
        raise ProtocolError(f"'data' rows hold {n_ch} channels, outside 1..{limits.max_channels}")
    flat = list(itertools.chain.from_iterable(rows))  # one flat list: faster to check and to convert than rows
    value_types = set(map(type, flat))
    if not value_types <= {int, float, type(None)}:
        bad_type = next(t for t in value_types if t not in (int, float, type(None)))
        raise ProtocolError(
            f"'data' values must be numbers (or null for a missing sample); found a {bad_type.__name__}"
        )
    try:
        values = np.array(flat, dtype=np.float64).reshape(n_s, n_ch)
    except (OverflowError, ValueError) as exc:
        raise ProtocolError(f"'data' values cannot be read as numbers: {exc}") from None
    with np.errstate(over="ignore"):
        data = values.astype(np.float32)
    bad = _count_non_finite(data)
    if bad:
        nulls = int(np.count_nonzero(np.isnan(values)))
        if bad > nulls:
            raise ProtocolError("'data' values must lie within ±3.4e38 µV (float32)")
    data.flags.writeable = False
    if bad and limits.non_finite == "reject":
        _reject_non_finite(bad)
    return DataMessage(seq, float(t0), float(fs), data, "json", bad)


def _reject_non_finite(bad: int) -> None:
    raise ProtocolError(
        f"{bad} non-finite sample value(s) (NaN or ±Inf): rejected by policy (ProtocolLimits.non_finite='reject')"
    )


def _count_non_finite(a: np.ndarray) -> int:
    """Number of NaN/±Inf values of a float32 array; one BLAS dot product in the usual all-finite case.

    The sum of squares is finite exactly when every value is finite and none is huge; only when it is not
    are the values checked one by one (vectorised), so huge finite values are still counted correctly.
    """
    if math.isfinite(np.vdot(a, a)):
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def _check_rate(fs: float, limits: ProtocolLimits) -> None:
    if not (math.isfinite(fs) and limits.min_fs_hz <= fs <= limits.max_fs_hz):
        raise ProtocolError(
            f"sampling rate fs={fs!r} must be a finite number of Hz in [{limits.min_fs_hz:g}, {limits.max_fs_hz:g}]"
        )


def _number(value: Any, name: str) -> float:
    if type(value) not in (int, float):
        raise ProtocolError(f"{name!r} must be a number, got {_show(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ProtocolError(f"{name!r} is too large a number") from None


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not valid JSON: send null for a missing sample")


def _load_json(payload: bytes | bytearray | memoryview | str, what: str, fast: bool = False) -> Any:
    """Parse a JSON payload with the standard library, or with ``fast`` orjson first when it is installed.

    ``fast`` is for data messages, the hot path of JSON devices. Anything orjson refuses is parsed again by the
    standard library, so what is accepted and the error messages are the standard library's, with two
    differences in wording only: orjson reads an integer beyond 64 bits as a float (a ``seq`` like that is refused
    either way), and it accepts arrays nested up to 1024 deep where the standard library gives up earlier (a data
    message nested like that is refused by the shape checks that follow).
    """
    if fast and _fast_loads is not None:
        try:
            return _fast_loads(payload)
        except (ValueError, TypeError):
            pass
    if isinstance(payload, memoryview):
        payload = payload.tobytes()
    try:
        return json.loads(payload, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError(f"{what} message is not valid JSON: nested too deeply") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError(f"{what} message is not valid JSON: {exc}") from None


# --------------------------------------------------------------------------------------------- data: encode
def quantize_int16(samples_uv: np.ndarray, scale: float) -> np.ndarray:
    """µV samples -> int16 counts of ``scale`` µV (rounded, saturated at ±32767/-32768); NaN -> 0."""
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"scale={scale!r}: give a finite number of µV per count above 0, e.g. 0.5")
    counts = np.rint(np.nan_to_num(np.asarray(samples_uv, dtype=np.float64) / scale))
    return np.clip(counts, -32768, 32767).astype(np.int16)


def encode_binary(samples: np.ndarray, *, seq: int, t0: float, fs: float, scale: float = 1.0) -> bytes:
    """Encode a binary data message.

    Args:
        samples: ``(n_samples, n_channels)``; int16 counts (format 1, µV = count * scale) or any float array
            (format 2, sent as float32; µV = value * scale, so scale 1.0 for samples already in µV).
        seq: message counter (0..2**64-1), +1 per message.
        t0: device time of the first sample, seconds.
        fs: sampling rate, Hz.
        scale: µV per unit.

    Returns:
        ``40 + n_samples * n_channels * (2 or 4)`` bytes.
    """
    arr = np.asarray(samples)
    if arr.ndim != 2 or not (1 <= arr.shape[1] <= MAX_CHANNELS) or arr.shape[0] < 1:
        raise ProtocolError(f"samples shaped {arr.shape}: need (n_samples >= 1, 1..{MAX_CHANNELS} channels)")
    if not 0 <= seq <= MAX_SEQ:
        raise ProtocolError(f"seq {seq!r} is outside 0..2**64-1")
    if arr.dtype == np.int16:
        fmt, body = FORMAT_INT16, arr.astype("<i2", copy=False)
    else:
        fmt, body = FORMAT_FLOAT32, arr.astype("<f4", copy=False)
    header = HEADER.pack(MAGIC, VERSION, fmt, arr.shape[1], arr.shape[0], int(seq), float(t0), float(fs), float(scale))
    return header + np.ascontiguousarray(body).tobytes()


def encode_json(samples: np.ndarray, *, seq: int, t0: float, fs: float) -> bytes:
    """Encode a JSON data message (samples in µV; NaN/±Inf are written as ``null``)."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim != 2 or not (1 <= arr.shape[1] <= MAX_CHANNELS) or arr.shape[0] < 1:
        raise ProtocolError(f"samples shaped {arr.shape}: need (n_samples >= 1, 1..{MAX_CHANNELS} channels)")
    rows: list[Any] = arr.tolist()
    if not np.isfinite(arr).all():
        rows = [[v if math.isfinite(v) else None for v in row] for row in rows]
    message = {"seq": int(seq), "t0": float(t0), "fs": float(fs), "data": rows}
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode("utf-8")


# --------------------------------------------------------------------------------------------- meta, status
def encode_meta(
    *,
    fs: float | None = None,
    channels: tuple[str, ...] | list[str] | None = None,
    device: Mapping[str, Any] | None = None,
) -> bytes:
    """The retained meta payload: ``{"schema": 1, "fs": ..., "channels": [...], "units": "uV", "device": {...}}``."""
    message: dict[str, Any] = {"schema": VERSION}
    if fs is not None:
        message["fs"] = float(fs)
    if channels is not None:
        message["channels"] = list(channels)
    message["units"] = "uV"
    message["device"] = dict(device or {})
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode("utf-8")


def decode_meta(payload: bytes | bytearray | memoryview, limits: ProtocolLimits = DEFAULT_LIMITS) -> DeviceMeta:
    """Decode and check a meta message; every field is optional except that the payload is a JSON object."""
    size = len(payload)
    if size > limits.max_payload_bytes:
        raise ProtocolError(f"meta payload of {size} bytes is above the limit of {limits.max_payload_bytes} bytes")
    obj = _load_json(payload, "meta")
    if not isinstance(obj, dict):
        raise ProtocolError(f"meta message must be a JSON object, got {type(obj).__name__}")
    schema = obj.get("schema", VERSION)
    if type(schema) is not int or schema != VERSION:
        raise ProtocolError(f"meta 'schema' {_show(schema)} is not supported: this receiver reads schema {VERSION}")
    fs: float | None = None
    if obj.get("fs") is not None:
        fs = _number(obj["fs"], "fs")
        _check_rate(fs, limits)
    channels: tuple[str, ...] | None = None
    if obj.get("channels") is not None:
        labels = obj["channels"]
        if type(labels) is not list or not 1 <= len(labels) <= limits.max_channels:
            raise ProtocolError(f"meta 'channels' must be a list of 1..{limits.max_channels} labels")
        if not all(type(c) is str and 1 <= len(c) <= 64 for c in labels):
            raise ProtocolError("meta 'channels' entries must be strings of 1..64 characters")
        channels = tuple(labels)
    units = obj.get("units", "uV")
    if units not in ("uV", "µV"):
        raise ProtocolError(
            f"meta 'units' {_show(units)}: data messages are always µV ('uV'); convert with the binary 'scale' field"
        )
    device = obj.get("device", {})
    if device is None:
        device = {}
    if not isinstance(device, dict):
        raise ProtocolError(f"meta 'device' must be a JSON object, got {_show(device)}")
    return DeviceMeta(schema=schema, fs=fs, channels=channels, units="uV", device=device)


def decode_status(payload: bytes | bytearray | memoryview) -> str | None:
    """``"online"`` or ``"offline"``; None for an empty payload (a cleared retained status).

    Surrounding whitespace is ignored; anything else raises ProtocolError.
    """
    if len(payload) > 32:
        raise ProtocolError(f"status payload of {len(payload)} bytes: must be 'online' or 'offline'")
    text = bytes(payload).strip()
    if not text:
        return None
    if text == b"online":
        return ONLINE
    if text == b"offline":
        return OFFLINE
    raise ProtocolError(f"status payload {bytes(payload[:20])!r} must be 'online' or 'offline'")


# --------------------------------------------------------------------------------------------- estimates
def estimate_payload(estimate: Estimate, device: str) -> dict[str, Any]:
    """The estimate JSON object: :meth:`Estimate.to_dict` plus ``"device"``; non-finite numbers become null."""
    message = estimate.to_dict()
    message["device"] = device
    for key, value in message.items():
        if isinstance(value, float) and not math.isfinite(value):
            message[key] = None
    return message


def encode_estimate(estimate: Estimate, device: str) -> bytes:
    """UTF-8 JSON for ``streamemg/<device>/estimate``."""
    return json.dumps(estimate_payload(estimate, device), separators=(",", ":"), allow_nan=False).encode("utf-8")


def label_payload(estimate: Estimate) -> str:
    """The retained label text: a class name, ``"untrained"`` or ``"withheld"``."""
    if not estimate.trained:
        return "untrained"
    return estimate.label if estimate.label is not None else LABEL_WITHHELD


__all__ = [
    "DATA",
    "DEFAULT_LIMITS",
    "DEVICE_PREFIX",
    "FORMAT_FLOAT32",
    "FORMAT_INT16",
    "HEADER",
    "HEADER_SIZE",
    "LABEL_WITHHELD",
    "MAGIC",
    "MAX_CHANNELS",
    "META",
    "OFFLINE",
    "ONLINE",
    "OUTPUT_PREFIX",
    "STATUS",
    "VERSION",
    "DataMessage",
    "DeviceMeta",
    "ProtocolLimits",
    "decode_binary",
    "decode_data",
    "decode_json",
    "decode_meta",
    "decode_status",
    "device_for_stream",
    "encode_binary",
    "encode_estimate",
    "encode_json",
    "encode_meta",
    "estimate_payload",
    "estimate_topic",
    "is_valid_device_id",
    "label_payload",
    "label_topic",
    "parse_shard",
    "quantize_int16",
    "shard_of",
    "split_topic",
    "topic",
    "validate_device_id",
]
