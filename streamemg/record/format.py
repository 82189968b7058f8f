"""The crash-safe recording format: constants, framing, chunk and estimate encoding.

Shared by the writer (:mod:`streamemg.record.writer`) and the reader (:mod:`streamemg.record.reader`);
the normative description is ``docs/recording-format.md`` and the writer's module docstring.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import SinkError
from ..types import Chunk, Estimate

#: File name of the log inside the recording directory, and of the clean-close summary.
DATA_FILE = "recording.semg"
INDEX_FILE = "index.json"
FORMAT_NAME = "streamemg-recording"
FORMAT_VERSION = 1
#: First 8 bytes of the log.
MAGIC = b"SEMGREC1"
#: First 4 bytes of every record.
SYNC = b"\x1eREC"
#: Record header: sync, kind, record version, reserved, payload length, CRC-32.
FRAME = struct.Struct("<4sBBHII")
#: Head of a chunk payload: key, n_samples, n_channels, flags, (pad), n_timestamps, seq, t_rec.
CHUNK_HEAD = struct.Struct("<IIHBxIqd")
#: Record kinds.
K_HEADER, K_STREAM, K_CHUNK, K_ESTIMATE, K_GAP, K_END = range(6)
KIND_NAMES = {K_HEADER: "header", K_STREAM: "stream", K_CHUNK: "chunk", K_ESTIMATE: "estimate", K_GAP: "gap",
              K_END: "end"}
RECORD_VERSION = 1
#: Largest payload a writer produces and a reader accepts (a larger length field means corruption).
MAX_PAYLOAD = 1 << 28
FLAG_SEQ, FLAG_SEQ_NEGATIVE = 1, 2

_SAFE_CHAR = re.compile(r"[^A-Za-z0-9_.-]")


def safe_name(stream_id: str, max_len: int = 64) -> str:
    """A file-system and HDF5-safe name for a stream id.

    Keeps ``[A-Za-z0-9_.-]``, replaces every other character by ``_``, strips leading dots (no ``..``, no
    hidden files) and cuts to ``max_len``. When anything was changed, ``-`` and the CRC-32 of the original id
    (8 hex digits) are appended so different ids stay different (``"lsl:Amp 1"`` -> ``"lsl_Amp_1-1b0c2f6e"``).
    The result never contains ``/``, ``\\``, NUL or a path of its own, and is never empty.
    """
    cleaned = _SAFE_CHAR.sub("_", stream_id).lstrip(".")[:max_len]
    if cleaned == stream_id and cleaned:
        return cleaned
    return f"{cleaned or '_'}-{zlib.crc32(stream_id.encode('utf-8', 'surrogatepass')):08x}"


def _finite_or_none(values: tuple[float, ...]) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


def estimate_to_json(estimate: Estimate) -> dict[str, Any]:
    """Every field of an Estimate as plain JSON (full float precision; NaN/Inf become null)."""
    return {
        "stream": estimate.stream_id,
        "name": estimate.name,
        "index": int(estimate.index),
        "time": float(estimate.time) if math.isfinite(estimate.time) else None,
        "probabilities": _finite_or_none(estimate.probabilities),
        "rolling": _finite_or_none(estimate.rolling),
        "cumulative": _finite_or_none(estimate.cumulative),
        "label": estimate.label,
        "confidence": float(estimate.confidence) if math.isfinite(estimate.confidence) else None,
        "quality": estimate.quality,
        "latency_ms": float(estimate.latency_ms) if math.isfinite(estimate.latency_ms) else None,
        "trained": bool(estimate.trained),
        "channel_quality": list(estimate.channel_quality),
        "qemg": dict(estimate.qemg) if estimate.qemg is not None else None,
    }


def estimate_from_json(d: Mapping[str, Any]) -> Estimate:
    """Inverse of :func:`estimate_to_json` (null -> NaN)."""

    def num(v: Any) -> float:
        return float("nan") if v is None else float(v)

    def vec(v: Any) -> tuple[float, ...]:
        return tuple(num(x) for x in v)

    return Estimate(
        stream_id=str(d["stream"]),
        name=str(d["name"]),
        index=int(d["index"]),
        time=num(d["time"]),
        probabilities=vec(d["probabilities"]),
        rolling=vec(d["rolling"]),
        cumulative=vec(d["cumulative"]),
        label=d["label"],
        confidence=num(d["confidence"]),
        quality=str(d["quality"]),
        latency_ms=num(d["latency_ms"]),
        trained=bool(d["trained"]),
        channel_quality=tuple(d.get("channel_quality", ())),
        qemg=d.get("qemg"),
    )


def json_bytes(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str).encode("utf-8")


def frame(kind: int, *parts: bytes | memoryview) -> bytes:
    """One record: frame header (with the CRC over header and payload) followed by the payload parts."""
    length = sum(len(p) for p in parts)
    if length > MAX_PAYLOAD:
        raise SinkError(f"a record of {length} bytes is larger than the format's {MAX_PAYLOAD} bytes")
    head = FRAME.pack(SYNC, kind, RECORD_VERSION, 0, length, 0)
    crc = zlib.crc32(head[:12])
    for p in parts:
        crc = zlib.crc32(p, crc)
    return b"".join([head[:12], struct.pack("<I", crc), *parts])


def encode_chunk(key: int, chunk: Chunk, t_rec: float) -> bytes:
    """The chunk record of ``chunk`` (see the module docstring)."""
    data = np.ascontiguousarray(chunk.data, dtype="<f4")
    if data.ndim != 2:
        raise SinkError(f"chunk of stream {chunk.stream_id!r} has data shaped {data.shape}, expected (n, C)")
    ts = np.ascontiguousarray(chunk.timestamps, dtype="<f8").reshape(-1)
    flags, seq = 0, 0
    if chunk.seq is not None:
        seq = int(chunk.seq)
        flags |= FLAG_SEQ
        if seq < 0:
            flags |= FLAG_SEQ_NEGATIVE
            if seq < -(2**63):
                raise SinkError(f"chunk seq {seq} of stream {chunk.stream_id!r} is below -2**63")
        elif seq >= 2**64:
            raise SinkError(f"chunk seq {seq} of stream {chunk.stream_id!r} does not fit 64 bits")
        elif seq >= 2**63:
            seq -= 2**64  # stored as the same 64 bits; FLAG_SEQ_NEGATIVE unset says "read unsigned"
    head = CHUNK_HEAD.pack(key, data.shape[0], data.shape[1], flags, ts.shape[0], seq, t_rec)
    return frame(K_CHUNK, head, ts.view(np.uint8).tobytes(), data.reshape(-1).view(np.uint8).tobytes())
