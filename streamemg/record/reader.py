"""Reading and replaying recordings made by ``--output record:DIR``.

``file:DIR[?speed=1|max]`` replays a recorder directory: every stream is announced with the StreamInfo it
had, and every chunk comes back exactly as it was received (samples, timestamps and seq), so the pipeline
reproduces the recorded estimates. ``speed=1`` keeps the pace at which the chunks reached the recorder
(jitter and stalls included), another factor scales it, ``max`` plays as fast as the pipeline takes it.
Losses the recorder documented (``gap`` records) are passed on as dropped samples.

:class:`RecordingReader` gives direct access (streams, samples, estimates, gaps) and checks the file: a
torn last record (the recorder was killed) is ignored and its size reported; a damaged record in the
middle is skipped by searching for the next record whose CRC matches. :func:`export_hdf5` converts a
recording to HDF5 for analysis tools (stream ids sanitised for use as HDF5 names).

The format is described in ``streamemg.record.writer`` and ``docs/recording-format.md``.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from ..errors import DataFormatError, SourceURIError
from ..sources.base import GeneratorSource, UriParams, split_uri
from ..types import Chunk, Estimate, SourceItem, StatusEvent, StreamInfo, StreamStatus
from .format import (
    CHUNK_HEAD,
    DATA_FILE,
    FLAG_SEQ,
    FLAG_SEQ_NEGATIVE,
    FORMAT_NAME,
    FRAME,
    K_CHUNK,
    K_END,
    K_ESTIMATE,
    K_GAP,
    K_HEADER,
    K_STREAM,
    MAGIC,
    MAX_PAYLOAD,
    SYNC,
    estimate_from_json,
    safe_name,
)

__all__ = ["RecordedChunk", "RecordedSource", "RecordingReader", "ScanStats", "export_hdf5", "from_uri",
           "is_recording"]

_PARAMS = ("speed",)
_EXAMPLE = "file:recordings/session1?speed=max"


@dataclass
class ScanStats:
    """What a pass over the log found.

    Attributes:
        records: whole, CRC-checked records.
        torn_bytes: bytes at the end that do not form a whole record (the writer stopped mid-record).
        corrupt_bytes, corrupt_records: damaged stretches in the middle that were skipped.
        complete: an ``end`` record was found (the recorder closed cleanly).
    """

    records: int = 0
    torn_bytes: int = 0
    corrupt_bytes: int = 0
    corrupt_records: int = 0
    complete: bool = False


@dataclass(frozen=True, slots=True)
class RecordedChunk:
    """One chunk record: the Chunk as received plus the recorder's arrival time ``t_rec`` (s)."""

    chunk: Chunk
    key: int
    t_rec: float


@dataclass
class _Stream:
    info: StreamInfo
    key: int
    t_rec: float


@dataclass
class Record:
    """One decoded record: ``kind`` (see ``streamemg.record.writer``), its offset and its content."""

    kind: int
    offset: int
    doc: dict[str, Any] = field(default_factory=dict)
    chunk: RecordedChunk | None = None


def is_recording(path: str | Path) -> bool:
    """True when ``path`` is a recorder directory (holds ``recording.semg``) or such a log file."""
    p = Path(path)
    return (p.is_dir() and (p / DATA_FILE).is_file()) or (p.is_file() and p.name.endswith(".semg"))


def _data_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / DATA_FILE
    if not p.is_file():
        raise DataFormatError(f"{path}: no recording here (expected a directory holding {DATA_FILE})")
    return p


class RecordingReader:
    """Reads a recording directory (or its ``recording.semg``); each method makes its own pass over the file.

    Args:
        path: the recorder directory or the log file.

    Raises:
        DataFormatError: no recording, or the file does not start with the format's magic.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = _data_path(path)
        with open(self.path, "rb") as fh:
            magic = fh.read(len(MAGIC))
        if magic != MAGIC:
            raise DataFormatError(
                f"{self.path}: not a streamemg recording (starts with {magic!r}, expected {MAGIC!r})"
            )
        self.stats = ScanStats()

    # ------------------------------------------------------------------ low level
    def records(self, decode_chunks: bool = True) -> Iterator[Record]:
        """Every whole record in file order; damaged stretches are skipped and counted in :attr:`stats`."""
        stats = ScanStats()
        self.stats = stats
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size <= len(MAGIC):
                return
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                pos = len(MAGIC)
                n = len(mm)
                while pos < n:
                    length = _valid_record_at(mm, pos, n)
                    if length is None:
                        nxt = _next_valid(mm, pos + 1, n)
                        if nxt is None:
                            stats.torn_bytes += n - pos
                            return
                        stats.corrupt_bytes += nxt - pos
                        stats.corrupt_records += 1
                        pos = nxt
                        continue
                    kind = mm[pos + 4]
                    start = pos + FRAME.size
                    payload = mm[start : start + length]
                    rec_offset = pos
                    pos = start + length
                    try:
                        record = _decode(kind, payload, rec_offset, decode_chunks)
                    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                        stats.corrupt_records += 1  # CRC-valid but inconsistent: written by a broken writer
                        continue
                    stats.records += 1
                    if kind == K_END:
                        stats.complete = True
                    yield record

    # ------------------------------------------------------------------ convenience
    def header(self) -> dict[str, Any]:
        """The header record (format, version, created_unix, writer, classes, flush policy)."""
        for rec in self.records(decode_chunks=False):
            if rec.kind == K_HEADER:
                return rec.doc
            break
        raise DataFormatError(f"{self.path}: the first record is not a header; the file is damaged")

    def summary(self) -> dict[str, Any]:
        """Counts per stream from a full pass (works on interrupted recordings too), plus :class:`ScanStats`."""
        per: dict[str, dict[str, Any]] = {}
        keys: dict[int, str] = {}
        t_last = 0.0

        def row(sid: str) -> dict[str, Any]:
            return per.setdefault(sid, {"chunks": 0, "samples": 0, "estimates": 0, "gaps": 0, "dropped_samples": 0})

        for rec in self.records(decode_chunks=False):
            if rec.kind == K_STREAM:
                keys[int(rec.doc["key"])] = str(rec.doc["stream"])
                row(str(rec.doc["stream"]))
            elif rec.kind == K_CHUNK:
                d = row(keys.get(rec.doc["key"], "?"))
                d["chunks"] += 1
                d["samples"] += rec.doc["n_samples"]
                t_last = max(t_last, rec.doc["t_rec"])
            elif rec.kind == K_ESTIMATE:
                row(str(rec.doc.get("stream")))["estimates"] += 1
            elif rec.kind == K_GAP:
                d = row(str(rec.doc.get("stream")))
                d["gaps"] += 1
                d["dropped_samples"] += int(rec.doc.get("samples", 0))
        s = self.stats
        return {
            "streams": per,
            "last_chunk_t_rec": t_last,
            "records": s.records,
            "complete": s.complete,
            "torn_bytes": s.torn_bytes,
            "corrupt_bytes": s.corrupt_bytes,
            "corrupt_records": s.corrupt_records,
        }

    def stream_infos(self) -> dict[str, list[StreamInfo]]:
        """stream id -> every StreamInfo it was announced with (more than one after a rate/channel change)."""
        out: dict[str, list[StreamInfo]] = {}
        for rec in self.records(decode_chunks=False):
            if rec.kind == K_STREAM:
                info = _info_from(rec.doc)
                out.setdefault(info.stream_id, []).append(info)
        return out

    def chunks(self, stream_id: str | None = None) -> Iterator[RecordedChunk]:
        """The recorded chunks (of one stream, or all) in arrival order, with their stream ids."""
        keyed = _KeyedRecords(self)
        while batch := keyed.take():
            for rec in batch:
                if rec.kind == K_CHUNK and rec.chunk is not None:
                    if stream_id is None or rec.chunk.chunk.stream_id == stream_id:
                        yield rec.chunk

    def samples(self, stream_id: str) -> tuple[np.ndarray, np.ndarray]:
        """All samples of one stream: ``(data (n, C) float32 µV, timestamps (n,) float64 s)``.

        Raises:
            DataFormatError: the stream changed its channel count (use :meth:`chunks` per segment instead).
        """
        data, ts = [], []
        for rc in self.chunks(stream_id):
            data.append(rc.chunk.data)
            ts.append(rc.chunk.timestamps)
        if not data:
            return np.zeros((0, 1), np.float32), np.zeros(0, np.float64)
        if len({d.shape[1] for d in data}) > 1:
            raise DataFormatError(f"stream {stream_id!r} changed its channel count; read it chunk by chunk")
        return np.concatenate(data), np.concatenate(ts)

    def estimates(self, stream_id: str | None = None) -> list[Estimate]:
        """The recorded estimates (of one stream, or all) in the order they were made."""
        return [
            estimate_from_json(rec.doc)
            for rec in self.records(decode_chunks=False)
            if rec.kind == K_ESTIMATE and (stream_id is None or rec.doc.get("stream") == stream_id)
        ]

    def gaps(self) -> list[dict[str, Any]]:
        """The recorder's documented losses (``gap`` records)."""
        return [rec.doc for rec in self.records(decode_chunks=False) if rec.kind == K_GAP]


def _valid_record_at(mm: mmap.mmap, pos: int, n: int) -> int | None:
    """Payload length of a whole, CRC-valid record at ``pos``, else None."""
    if n - pos < FRAME.size or mm[pos : pos + 4] != SYNC:
        return None
    _sync, _kind, _ver, _res, length, crc = FRAME.unpack_from(mm, pos)
    if length > MAX_PAYLOAD or pos + FRAME.size + length > n:
        return None
    check = zlib.crc32(mm[pos : pos + 12])
    check = zlib.crc32(mm[pos + FRAME.size : pos + FRAME.size + length], check)
    return length if check == crc else None


def _next_valid(mm: mmap.mmap, start: int, n: int) -> int | None:
    pos = start
    while True:
        pos = mm.find(SYNC, pos, n)
        if pos < 0:
            return None
        if _valid_record_at(mm, pos, n) is not None:
            return pos
        pos += 1


def _decode(kind: int, payload: bytes, offset: int, decode_chunks: bool) -> Record:
    if kind == K_CHUNK:
        key, n, c, flags, n_ts, seq, t_rec = CHUNK_HEAD.unpack_from(payload, 0)
        expected = CHUNK_HEAD.size + 8 * n_ts + 4 * n * c
        if len(payload) != expected or c < 1:
            raise ValueError(f"chunk record at {offset}: {len(payload)} bytes, its head announces {expected}")
        seq_value: int | None = None
        if flags & FLAG_SEQ:
            seq_value = int(seq) if (flags & FLAG_SEQ_NEGATIVE or seq >= 0) else int(seq) + 2**64
        doc = {"key": key, "n_samples": n, "n_channels": c, "t_rec": t_rec}
        if not decode_chunks:
            return Record(kind, offset, doc)
        ts = np.frombuffer(payload, dtype="<f8", count=n_ts, offset=CHUNK_HEAD.size)
        data = np.frombuffer(payload, dtype="<f4", count=n * c, offset=CHUNK_HEAD.size + 8 * n_ts).reshape(n, c)
        # the stream id is filled in by the caller that knows the key map
        return Record(kind, offset, doc, RecordedChunk(Chunk("", data, ts, seq_value), key, t_rec))
    doc = json.loads(payload)
    if not isinstance(doc, dict):
        raise ValueError(f"record at {offset} is not a JSON object")
    return Record(kind, offset, doc)


def _info_from(doc: dict[str, Any]) -> StreamInfo:
    meta = doc.get("meta") or {}
    return StreamInfo(
        stream_id=str(doc["stream"]),
        name=str(doc.get("name") or doc["stream"]),
        fs=float(doc["fs"]),
        channels=tuple(str(c) for c in doc["channels"]),
        units=str(doc.get("units", "uV")),
        source=str(doc.get("source", "")),
        meta=meta if isinstance(meta, dict) else {"meta": meta},
    )


class _KeyedRecords:
    """Records with chunk stream ids resolved from the key map (a chunk's key names its stream record)."""

    def __init__(self, reader: RecordingReader) -> None:
        self.reader = reader
        self.keys: dict[int, str] = {}
        self.it = self.reader.records()

    def take(self, max_bytes: int = 4 << 20, max_records: int = 512) -> list[Record]:
        """Up to ``max_records`` records / ``max_bytes`` of samples (runs on a worker thread)."""
        out: list[Record] = []
        size = 0
        for rec in self.it:
            if rec.kind == K_STREAM:
                self.keys[int(rec.doc["key"])] = str(rec.doc["stream"])
            elif rec.kind == K_CHUNK and rec.chunk is not None:
                sid = self.keys.get(rec.chunk.key)
                if sid is None:
                    self.reader.stats.corrupt_records += 1  # a chunk whose stream record was lost
                    continue
                c = rec.chunk.chunk
                rec.chunk = RecordedChunk(Chunk(sid, c.data, c.timestamps, c.seq), rec.chunk.key, rec.chunk.t_rec)
                size += c.data.nbytes + c.timestamps.nbytes
            out.append(rec)
            if len(out) >= max_records or size >= max_bytes:
                break
        return out


class RecordedSource(GeneratorSource):
    """Replays a recording (see the module docstring).

    Args:
        path: recorder directory or its ``recording.semg``.
        speed: 1.0 = the recorded pace, another factor > 0, or None for max (no pacing, no drops downstream).
        uri: shown as the source URI.

    Attributes:
        stats: the reader's scan statistics of the current run (torn tail, damaged records).
    """

    def __init__(self, path: str | Path, speed: float | None = None, uri: str | None = None) -> None:
        self.reader = RecordingReader(path)
        self.speed = speed
        super().__init__(uri or f"file:{path}", realtime=speed is not None)

    @property
    def stats(self) -> ScanStats:
        return self.reader.stats

    async def _items(self) -> AsyncIterator[SourceItem]:
        keyed = _KeyedRecords(self.reader)
        loop = asyncio.get_running_loop()
        start: float | None = None
        t_first: float | None = None
        while True:
            batch = await asyncio.to_thread(keyed.take)
            if not batch:
                break
            for rec in batch:
                if rec.kind == K_STREAM:
                    yield _info_from(rec.doc)
                elif rec.kind == K_CHUNK and rec.chunk is not None:
                    if self.speed is not None:
                        if start is None or t_first is None:
                            start, t_first = loop.time(), rec.chunk.t_rec
                        delay = start + (rec.chunk.t_rec - t_first) / self.speed - loop.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    yield rec.chunk.chunk
                elif rec.kind == K_GAP and rec.doc.get("samples"):
                    yield StatusEvent(
                        str(rec.doc["stream"]),
                        StreamStatus.LIVE,
                        f"the recorder lost {rec.doc['samples']} samples here",
                        dropped_samples=int(rec.doc["samples"]),
                    )
            if self.speed is None:
                await asyncio.sleep(0)


def _path_of(uri: str, body: str) -> Path:
    raw = unquote(body)
    if raw.startswith("//"):
        rest = raw[2:]
        host, _, tail = rest.partition("/")
        if host not in ("", "localhost"):
            raise SourceURIError(f"{uri!r}: only local recordings can be replayed (file:///path or file:path)")
        raw = "/" + tail
    if not raw.strip():
        raise SourceURIError(f"{uri!r}: give the recording directory, e.g. {_EXAMPLE}")
    return Path(os.path.expanduser(raw))


def from_uri(uri: str) -> RecordedSource:
    """Open ``file:DIR[?speed=1|max]`` where DIR was written by ``--output record:DIR``.

    Raises:
        SourceURIError: bad parameters, or DIR is not a recording (says what was expected).
    """
    _scheme, body, params = split_uri(uri)
    path = _path_of(uri, body)
    p = UriParams(uri, params, _PARAMS, _EXAMPLE)
    speed = p.speed("speed", 1.0)
    if not is_recording(path):
        raise SourceURIError(
            f"{uri!r}: {path} is not a streamemg recording (a directory written by --output record:DIR holds "
            f"{DATA_FILE})"
        )
    try:
        return RecordedSource(path, speed=speed, uri=uri)
    except DataFormatError as exc:
        raise SourceURIError(f"{uri!r}: {exc}") from exc


def export_hdf5(recording: str | Path, out: str | Path) -> Path:
    """Convert a recording to HDF5 for analysis (h5py).

    Layout: ``/streams/<name>/data`` float32 (n, C) µV, ``timestamps`` float64 (n,), ``chunk_offsets`` int64
    (first sample of each chunk), ``seq`` int64 per chunk (-1 = none), ``t_rec`` float64 per chunk; attrs
    ``stream_id``, ``fs``, ``channels``, ``units``, ``source``. ``/estimates/<name>`` is a compound dataset
    (index, time, probabilities, rolling, cumulative, confidence, latency_ms, label, quality). ``<name>`` is
    :func:`streamemg.record.format.safe_name` of the stream id (made unique); a stream whose channel count
    changed gets one group per segment (``<name>.1``, ...). Root attrs hold the header and scan statistics.

    Returns:
        ``out`` as a Path.
    """
    import h5py

    reader = RecordingReader(recording)
    out = Path(out)
    names: dict[tuple[str, int], str] = {}
    used: set[str] = set()
    segments: dict[str, int] = {}
    acc: dict[str, dict[str, Any]] = {}

    def group_name(stream_id: str, seg: int) -> str:
        base = safe_name(stream_id) + (f".{seg}" if seg else "")
        name, k = base, 1
        while name in used:
            name, k = f"{base}~{k}", k + 1
        used.add(name)
        return name

    keyed = _KeyedRecords(reader)
    infos: dict[int, StreamInfo] = {}
    estimates: dict[str, list[Estimate]] = {}
    header: dict[str, Any] = {}
    while batch := keyed.take():
        for rec in batch:
            if rec.kind == K_HEADER:
                header = rec.doc
            elif rec.kind == K_STREAM:
                info = _info_from(rec.doc)
                key = int(rec.doc["key"])
                infos[key] = info
                prev = [k for k, i in infos.items() if i.stream_id == info.stream_id and k != key]
                same = prev and infos[prev[-1]].n_channels == info.n_channels and infos[prev[-1]].fs == info.fs
                if same:
                    names[(info.stream_id, key)] = names[(info.stream_id, prev[-1])]
                else:
                    seg = segments.get(info.stream_id, -1) + 1
                    segments[info.stream_id] = seg
                    names[(info.stream_id, key)] = group_name(info.stream_id, seg)
            elif rec.kind == K_CHUNK and rec.chunk is not None:
                c = rec.chunk.chunk
                name = names[(c.stream_id, rec.chunk.key)]
                a = acc.setdefault(name, {"info": infos[rec.chunk.key], "data": [], "ts": [], "off": [], "seq": [],
                                          "t_rec": [], "n": 0})
                a["off"].append(a["n"])
                a["n"] += c.n_samples
                a["data"].append(c.data)
                a["ts"].append(c.timestamps if c.timestamps.size == c.n_samples
                               else np.full(c.n_samples, np.nan))
                a["seq"].append(-1 if c.seq is None else c.seq)
                a["t_rec"].append(rec.chunk.t_rec)
            elif rec.kind == K_ESTIMATE:
                est = estimate_from_json(rec.doc)
                estimates.setdefault(est.stream_id, []).append(est)
    est_dtype = np.dtype([
        ("index", "<i8"), ("time", "<f8"), ("probabilities", "<f4", (3,)), ("rolling", "<f4", (3,)),
        ("cumulative", "<f4", (3,)), ("confidence", "<f4"), ("latency_ms", "<f4"),
        ("label", h5py.string_dtype()), ("quality", h5py.string_dtype()),
    ])
    with h5py.File(out, "w") as f:
        f.attrs["format"] = FORMAT_NAME + "-hdf5"
        f.attrs["header"] = json.dumps(header)
        f.attrs["torn_bytes"] = reader.stats.torn_bytes
        f.attrs["corrupt_records"] = reader.stats.corrupt_records
        f.attrs["complete"] = reader.stats.complete
        streams = f.create_group("streams")
        for name, a in acc.items():
            info = a["info"]
            g = streams.create_group(name)
            data = np.concatenate(a["data"]) if a["data"] else np.zeros((0, info.n_channels), np.float32)
            g.create_dataset("data", data=data, chunks=True, maxshape=(None, data.shape[1]))
            g.create_dataset("timestamps", data=np.concatenate(a["ts"]) if a["ts"] else np.zeros(0))
            g.create_dataset("chunk_offsets", data=np.asarray(a["off"], np.int64))
            g.create_dataset("seq", data=np.asarray([s if s < 2**63 else -2 for s in a["seq"]], np.int64))
            g.create_dataset("t_rec", data=np.asarray(a["t_rec"], np.float64))
            g.attrs.update({"stream_id": info.stream_id, "name": info.name, "fs": info.fs,
                            "channels": list(info.channels), "units": info.units, "source": info.source})
        eg = f.create_group("estimates")
        used.clear()
        for stream_id, ests in estimates.items():
            rows = np.zeros(len(ests), est_dtype)
            for i, e in enumerate(ests):
                rows[i] = (e.index, e.time, e.probabilities[:3], e.rolling[:3], e.cumulative[:3], e.confidence,
                           e.latency_ms, e.label or "", e.quality)
            ds = eg.create_dataset(group_name(stream_id, 0), data=rows)
            ds.attrs["stream_id"] = stream_id
    return out
