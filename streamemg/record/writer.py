"""The recorder: ``--output record:DIR`` writes every received sample and every estimate to disk, crash-safe.

Format (version 1; the normative description is ``docs/recording-format.md``)
--------------------------------------------------------------------------------

``DIR/recording.semg`` is an append-only log. It starts with the 8-byte magic ``b"SEMGREC1"``, followed by
records. Every record is a 16-byte frame header and a payload, all little-endian::

    offset  type     field
    0       4 bytes  sync  b"\\x1eREC"
    4       uint8    kind  (0 header, 1 stream, 2 chunk, 3 estimate, 4 gap, 5 end)
    5       uint8    record version = 1
    6       uint16   reserved = 0
    8       uint32   payload length in bytes
    12      uint32   CRC-32 (zlib/IEEE) of bytes 0-11 of this header followed by the payload

Payloads: ``header``, ``stream``, ``estimate``, ``gap`` and ``end`` are UTF-8 JSON objects; ``chunk`` is
binary: a 32-byte head ``<IIHBxIqd`` (stream key, n_samples, n_channels, flags, n_timestamps, seq, t_rec),
then ``n_timestamps`` float64 timestamps (s, source clock), then ``n_samples * n_channels`` float32 samples
(µV, row-major ``(n, C)``). Flags: bit 0 = the chunk has a seq, bit 1 = the seq is negative (two's
complement in the int64 field; otherwise the field holds an unsigned 64-bit seq). ``t_rec`` is the
recorder's monotonic clock (s since the header's ``created_unix``) when the chunk reached it.

Nothing is ever rewritten in place, so a crash can only leave an incomplete *last* record, which its CRC
exposes; readers ignore it and report how many bytes they ignored. A clean close appends an ``end``
record and writes ``DIR/index.json`` (a summary, renamed into place); a recording without them was
interrupted, and everything before the torn tail is still good.

Flush policy and what a crash loses
-----------------------------------

Records are queued in memory and handed to the operating system (one ``write`` per batch, on a worker
thread) at least every ``flush_s`` (default 0.2 s). Once ``write`` returned the data belong to the kernel,
so ``kill -9`` of streamemg loses at most the last ``flush_s`` plus the one batch being written: well under a
second. ``fsync`` runs every ``fsync_s`` (default 1 s) so a power cut loses at most about that much more on
file systems that honour it.

Nothing is dropped silently: if the disk falls behind so that more than ``max_pending_mb`` wait in memory,
further chunks are dropped, counted per stream and documented in the file by a ``gap`` record; a failed
write (disk full) is reported through the pipeline's sink error counter, the file is truncated back to its
last whole record, and the lost records are documented by a ``gap`` record when writing works again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote

from .. import __version__
from ..errors import ConfigError, SinkError
from ..types import CLASS_NAMES, Chunk, Estimate, StreamInfo
from .format import (
    CHUNK_HEAD,
    DATA_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    FRAME,
    INDEX_FILE,
    K_CHUNK,
    K_END,
    K_ESTIMATE,
    K_GAP,
    K_HEADER,
    K_STREAM,
    MAGIC,
    encode_chunk,
    estimate_to_json,
    frame,
    json_bytes,
)

__all__ = ["RecordSettings", "RecordSink", "StreamCounts", "from_uri"]

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class RecordSettings:
    """Flush policy and memory bound of the recorder.

    Attributes:
        flush_s: longest time (s) a record waits in memory before it is written to the OS; what ``kill -9``
            can lose. Default 0.2.
        fsync_s: how often (s) written data are forced to the disk (power loss); None = leave it to the OS.
            Default 1.0.
        max_pending_mb: MiB of records held in memory while the disk is slow; beyond it chunks are dropped
            (counted per stream and documented in the file). Default 256.
        batch_mb: a batch is written as soon as this many MiB are queued, without waiting for ``flush_s``.
        queue_size: length of the pipeline's queue in front of the recorder (items); large, so that nothing
            is dropped there while the loop is busy.
        close_timeout_s: longest wait for the last writes on close before giving up (reported).
    """

    flush_s: float = 0.2
    fsync_s: float | None = 1.0
    max_pending_mb: float = 256.0
    batch_mb: float = 8.0
    queue_size: int = 1_000_000
    close_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        def positive(name: str, value: Any, example: str) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not (ok and value > 0):
                raise ConfigError(f"RecordSettings.{name}={value!r}: give a finite number above 0 (e.g. {example})")

        positive("flush_s", self.flush_s, "0.2")
        if self.flush_s > 1.0:
            raise ConfigError(
                f"RecordSettings.flush_s={self.flush_s!r}: at most 1.0 s, so that a crash loses at most a second"
            )
        if self.fsync_s is not None:
            positive("fsync_s", self.fsync_s, "1.0")
        positive("max_pending_mb", self.max_pending_mb, "256")
        positive("batch_mb", self.batch_mb, "8")
        positive("close_timeout_s", self.close_timeout_s, "10")
        if not (isinstance(self.queue_size, int) and not isinstance(self.queue_size, bool) and self.queue_size >= 1):
            raise ConfigError(f"RecordSettings.queue_size={self.queue_size!r}: give a whole number >= 1")


@dataclass
class StreamCounts:
    """What the recorder did with one stream (all counters only grow)."""

    stream_id: str
    chunks: int = 0
    samples: int = 0
    estimates: int = 0
    dropped_chunks: int = 0
    dropped_samples: int = 0
    dropped_estimates: int = 0
    first_time: float | None = None
    last_time: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream_id,
            "chunks": self.chunks,
            "samples": self.samples,
            "estimates": self.estimates,
            "dropped_chunks": self.dropped_chunks,
            "dropped_samples": self.dropped_samples,
            "dropped_estimates": self.dropped_estimates,
            "first_time": self.first_time,
            "last_time": self.last_time,
        }


# A pending item: (kind, stream id, object, t_rec, key, nbytes)
_Item = tuple[int, str, Any, float, int, int]


@dataclass
class _Lost:
    chunks: int = 0
    samples: int = 0
    estimates: int = 0
    t_first: float = math.inf
    t_last: float = -math.inf
    reasons: set[str] = field(default_factory=set)


class RecordSink:
    """``record:DIR``: every accepted chunk and every estimate, appended to ``DIR/recording.semg``.

    Args:
        directory: where the recording goes; created if missing; must not hold a recording already.
        settings: flush policy and memory bound.
        name: shown on the dashboard (default ``record:DIR``).

    Attributes:
        wants_chunks: True: the pipeline hands every accepted Chunk to :meth:`write_chunk`.
        queue_size: the pipeline's queue in front of this sink (honoured by SinkRunner when it reads it).
        counts: per-stream counters (written, dropped); ``write_errors``: failed write batches.
        bytes_written: bytes handed to the OS so far.
    """

    wants_chunks = True

    def __init__(self, directory: str | Path, settings: RecordSettings | None = None, name: str | None = None):
        self.directory = Path(directory)
        self.path = self.directory / DATA_FILE
        self.settings = settings or RecordSettings()
        self.queue_size = self.settings.queue_size
        self.name = name or f"record:{self.directory}"
        self.counts: dict[str, StreamCounts] = {}
        self.write_errors = 0
        self.bytes_written = 0
        self.complete = False
        self._fd: int | None = None
        self._t0 = 0.0
        self._created_unix = 0.0
        self._keys: dict[str, int] = {}
        self._infos: list[dict[str, Any]] = []
        self._pending: list[_Item] = []
        self._pending_bytes = 0
        self._lost: dict[str, _Lost] = {}
        self._kick = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._report: str | None = None  # a failure not yet reported through an exception
        self._last_fsync = 0.0
        self._warned: set[tuple[str, str]] = set()
        self._last_error_log = -math.inf

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> RecordSink:
        if self._fd is not None:
            return self
        self._t0 = time.monotonic()
        self._created_unix = time.time()
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "created_unix": self._created_unix,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self._created_unix)),
            "writer": f"streamemg {__version__}",
            "classes": list(CLASS_NAMES),
            "byte_order": "little",
            "flush_s": self.settings.flush_s,
            "fsync_s": self.settings.fsync_s,
        }
        try:
            self._fd = await asyncio.wait_for(asyncio.to_thread(self._open, json_bytes(header)),
                                              self.settings.close_timeout_s)
        except FileExistsError as exc:
            raise SinkError(
                f"{self.path} already exists: streamemg never overwrites or appends to a recording; "
                "choose a new directory for record:DIR"
            ) from exc
        except OSError as exc:
            raise SinkError(f"cannot create the recording {self.path}: {exc}") from exc
        self._closing = False
        self._writer = asyncio.create_task(self._write_loop(), name=f"recorder:{self.directory}")
        return self

    def _open(self, header: bytes) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, 0o600)  # health data: readable by the owner only
        try:
            self._write_all(fd, MAGIC + frame(K_HEADER, header))
            os.fsync(fd)
            _fsync_dir(self.directory)  # the new file's name survives a power cut too
        except BaseException:
            os.close(fd)
            raise
        self.bytes_written = len(MAGIC) + FRAME.size + len(header)
        self._last_fsync = time.monotonic()
        return fd

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Write what is queued, an ``end`` record and ``index.json``; fsync; close. Idempotent."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        self._closing = True
        self._kick.set()
        done, _ = await asyncio.wait({writer}, timeout=self.settings.close_timeout_s)
        if not done:
            writer.cancel()
            log.error("recorder %s: the disk did not take the last records within %.0f s; the recording is "
                      "incomplete (its last records are lost)", self.path, self.settings.close_timeout_s)
            return  # the write thread may still hold the file; leave it open rather than race it
        if not writer.cancelled() and writer.exception() is not None:
            log.error("recorder %s stopped: %r", self.path, writer.exception())
        fd, self._fd = self._fd, None
        if fd is None:
            return
        end = {
            "t_rec": time.monotonic() - self._t0,
            "closed_unix": time.time(),
            "streams": [c.to_json() for c in self.counts.values()],
            "write_errors": self.write_errors,
        }
        index = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "data_file": DATA_FILE,
            "created_unix": self._created_unix,
            "complete": True,
            "write_errors": self.write_errors,
            "stream_infos": self._infos,
            "streams": [c.to_json() for c in self.counts.values()],
        }
        try:
            await asyncio.wait_for(asyncio.to_thread(self._finish, fd, json_bytes(end), index),
                                   self.settings.close_timeout_s)
            self.complete = True
        except (OSError, TimeoutError) as exc:
            log.error("recorder %s: closing failed (%s); the data before it are intact", self.path, exc)

    def _finish(self, fd: int, end: bytes, index: dict[str, Any]) -> None:
        try:
            record = frame(K_END, end)
            self._write_all(fd, record)
            self.bytes_written += len(record)
            index["bytes"] = self.bytes_written
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp = self.directory / (INDEX_FILE + ".tmp")
        tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        with os.fdopen(tfd, "wb") as fh:
            fh.write(json.dumps(index, indent=1, allow_nan=False, default=str).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / INDEX_FILE)
        _fsync_dir(self.directory)

    # ------------------------------------------------------------------ sink API (event loop)
    async def announce(self, info: StreamInfo) -> None:
        """A stream (or a stream's new signature): gets a new key; its ``stream`` record precedes its chunks."""
        self._check_open()
        key = len(self._infos)
        self._keys[info.stream_id] = key
        self.counts.setdefault(info.stream_id, StreamCounts(info.stream_id))
        t_rec = time.monotonic() - self._t0
        doc = {
            "key": key,
            "stream": info.stream_id,
            "name": info.name,
            "fs": float(info.fs),
            "channels": list(info.channels),
            "units": info.units,
            "source": info.source,
            "meta": dict(info.meta),
            "t_rec": t_rec,
        }
        self._infos.append(doc)
        self._push((K_STREAM, info.stream_id, doc, t_rec, key, 512))
        self._raise_report()

    async def write_chunk(self, chunk: Chunk) -> None:
        """Queue one accepted chunk (never blocks; drops only beyond ``max_pending_mb``, counted)."""
        self._check_open()
        t_rec = time.monotonic() - self._t0
        key = self._keys.get(chunk.stream_id)
        nbytes = int(chunk.data.nbytes) + int(chunk.timestamps.nbytes) + FRAME.size + CHUNK_HEAD.size
        if key is None:
            self._lose(chunk.stream_id, "chunk before its stream was announced", t_rec, chunks=1,
                       samples=chunk.n_samples)
        elif self._pending_bytes + nbytes > self.settings.max_pending_mb * 2**20:
            self._lose(chunk.stream_id, f"more than {self.settings.max_pending_mb:g} MiB waiting for the disk",
                       t_rec, chunks=1, samples=chunk.n_samples)
        else:
            self._push((K_CHUNK, chunk.stream_id, chunk, t_rec, key, nbytes))
        self._raise_report()

    async def send(self, estimate: Estimate) -> None:
        """Queue one estimate."""
        self._check_open()
        t_rec = time.monotonic() - self._t0
        self._push((K_ESTIMATE, estimate.stream_id, estimate, t_rec, self._keys.get(estimate.stream_id, -1), 700))
        self._raise_report()

    # ------------------------------------------------------------------ internals (event loop)
    def _check_open(self) -> None:
        if self._fd is None or self._closing:
            raise SinkError(f"output {self.name} is not open")

    def _push(self, item: _Item) -> None:
        self._pending.append(item)
        self._pending_bytes += item[5]
        if self._pending_bytes >= self.settings.batch_mb * 2**20:
            self._kick.set()

    def _lose(self, stream_id: str, reason: str, t_rec: float, chunks: int = 0, samples: int = 0,
              estimates: int = 0) -> None:
        """Count a loss and queue its documentation (a ``gap`` record)."""
        counts = self.counts.setdefault(stream_id, StreamCounts(stream_id))
        counts.dropped_chunks += chunks
        counts.dropped_samples += samples
        counts.dropped_estimates += estimates
        self._document(stream_id, reason, t_rec, t_rec, chunks, samples, estimates)
        if (stream_id, reason) not in self._warned:
            self._warned.add((stream_id, reason))
            log.warning("recorder %s: dropping data of stream %s: %s (counted; documented in the recording)",
                        self.path, stream_id, reason)

    def _document(self, stream_id: str, reason: str, t_first: float, t_last: float, chunks: int, samples: int,
                  estimates: int) -> None:
        """Queue the documentation of an already counted loss."""
        lost = self._lost.setdefault(stream_id, _Lost())
        lost.chunks += chunks
        lost.samples += samples
        lost.estimates += estimates
        lost.t_first = min(lost.t_first, t_first)
        lost.t_last = max(lost.t_last, t_last)
        lost.reasons.add(reason)

    def _raise_report(self) -> None:
        report, self._report = self._report, None
        if report is not None:
            raise SinkError(report)

    def _gap_records(self) -> list[_Item]:
        items: list[_Item] = []
        for stream_id, lost in self._lost.items():
            key = self._keys.get(stream_id, -1)
            doc: dict[str, Any] = {
                "stream": stream_id,
                "key": key,
                "chunks": lost.chunks,
                "samples": lost.samples,
                "estimates": lost.estimates,
                "t_rec_first": lost.t_first,
                "t_rec_last": lost.t_last,
                "reasons": sorted(lost.reasons),
            }
            items.append((K_GAP, stream_id, doc, lost.t_last, key, 256))
        self._lost.clear()
        return items

    async def _write_loop(self) -> None:
        """Hand the queued records to the write thread at least every ``flush_s``; runs until closed and empty.

        On close it writes what is queued plus the gap records of any losses; if the disk keeps failing it
        gives up after three attempts (the losses stay counted in :attr:`counts`).
        """
        flush_s = self.settings.flush_s
        attempts_after_close = 0
        while True:
            if not self._closing and self._pending_bytes < self.settings.batch_mb * 2**20:
                try:
                    await asyncio.wait_for(self._kick.wait(), flush_s)
                except TimeoutError:
                    pass
            self._kick.clear()
            batch = self._gap_records() + self._pending
            self._pending, self._pending_bytes = [], 0
            if batch:
                await self._write(batch)
            if self._closing:
                attempts_after_close += 1
                if (not self._pending and not self._lost) or attempts_after_close >= 3:
                    return

    async def _write(self, batch: list[_Item]) -> None:
        try:
            written, refused = await asyncio.to_thread(self._write_batch, batch)
        except OSError as exc:
            self._write_failed(batch, exc)
            return
        self.bytes_written += written
        for i, problem in refused.items():
            kind, stream_id, obj, t_rec, _, _ = batch[i]
            self._lose(stream_id, f"not recordable: {problem}", t_rec, chunks=int(kind == K_CHUNK),
                       samples=obj.n_samples if kind == K_CHUNK else 0, estimates=int(kind == K_ESTIMATE))
        for i, (kind, stream_id, obj, _, _, _) in enumerate(batch):
            counts = self.counts.get(stream_id)
            if counts is None or i in refused:
                continue
            if kind == K_CHUNK:
                counts.chunks += 1
                counts.samples += obj.n_samples
                if obj.timestamps.size:
                    if counts.first_time is None:
                        counts.first_time = float(obj.timestamps[0])
                    counts.last_time = float(obj.timestamps[-1])
            elif kind == K_ESTIMATE:
                counts.estimates += 1

    def _write_failed(self, batch: list[_Item], exc: OSError) -> None:
        """Count and document a lost batch; stream records are queued again so later chunks keep their meaning."""
        self.write_errors += 1
        again: list[_Item] = []
        reason = f"disk write failed: {exc}"
        for item in batch:
            kind, stream_id, obj, t_rec, _, _ = item
            if kind == K_CHUNK:
                self._lose(stream_id, reason, t_rec, chunks=1, samples=obj.n_samples)
            elif kind == K_ESTIMATE:
                self._lose(stream_id, reason, t_rec, estimates=1)
            elif kind == K_GAP:  # earlier losses (already counted) stay documented in the next gap record
                for why in obj["reasons"]:
                    self._document(stream_id, why, obj["t_rec_first"], obj["t_rec_last"], 0, 0, 0)
                self._document(stream_id, obj["reasons"][0], t_rec, t_rec, obj["chunks"], obj["samples"],
                               obj["estimates"])
            elif kind == K_STREAM:
                again.append(item)
        self._pending[:0] = again
        self._pending_bytes += sum(item[5] for item in again)
        lost_chunks = sum(1 for item in batch if item[0] == K_CHUNK)
        self._report = (
            f"writing the recording {self.path} failed: {exc} (is the disk full?); {lost_chunks} chunk(s) lost; "
            "recording goes on when the disk accepts data again"
        )
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:  # a full disk fails every flush: say it, then every 10 s
            self._last_error_log = now
            log.error("recorder: %s (%d failed writes so far)", self._report, self.write_errors)

    # ------------------------------------------------------------------ write thread
    def _write_batch(self, batch: list[_Item]) -> tuple[int, dict[int, str]]:
        """Encode and write one batch with one ``write`` loop; on failure truncate back to the last whole record.

        Returns:
            (bytes written, {batch index: why the item could not be encoded}).
        """
        fd = self._fd
        if fd is None:
            raise OSError("the recording is closed")
        parts: list[bytes] = []
        refused: dict[int, str] = {}
        for i, (kind, _, obj, t_rec, key, _) in enumerate(batch):
            try:
                if kind == K_CHUNK:
                    parts.append(encode_chunk(key, obj, t_rec))
                elif kind == K_ESTIMATE:
                    doc = estimate_to_json(obj)
                    doc["key"] = key
                    doc["t_rec"] = t_rec
                    parts.append(frame(K_ESTIMATE, json_bytes(doc)))
                else:
                    parts.append(frame(kind, json_bytes(obj)))
            except (SinkError, ValueError, TypeError) as exc:  # one malformed item never costs the others
                refused[i] = str(exc)
        blob = b"".join(parts)
        good = self.bytes_written
        try:
            self._write_all(fd, blob)
        except OSError:
            try:
                os.ftruncate(fd, good)  # keep the file a sequence of whole records
            except OSError as exc:  # the reader still skips a torn record by its CRC
                log.warning("recorder: could not truncate %s after a failed write: %s", self.path, exc)
            raise
        now = time.monotonic()
        fsync_s = self.settings.fsync_s
        if fsync_s is not None and now - self._last_fsync >= fsync_s:
            os.fsync(fd)
            self._last_fsync = now
        return len(blob), refused

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the data file itself is synced
    finally:
        os.close(dfd)


_URI_PARAMS = {"flush_s": float, "fsync_s": float, "max_pending_mb": float}
_EXAMPLE = "record:recordings/session1?flush_s=0.2&fsync_s=1"


def from_uri(uri: str) -> RecordSink:
    """``record:DIR[?flush_s=0.2&fsync_s=1|0&max_pending_mb=256]`` -> a RecordSink (not yet opened).

    ``fsync_s=0`` leaves syncing to the OS. The directory is checked here, before anything runs, so that a
    run meant to be recorded does not start without its recorder.

    Raises:
        ConfigError: no directory, unknown or bad parameters, a directory that already holds a recording,
            or a directory that cannot be created or written.
    """
    _, _, rest = uri.partition(":")
    body, _, query = rest.partition("?")
    if body.startswith("//"):
        body = body[2:]
    body = os.path.expanduser(unquote(body))
    if not body.strip():
        raise ConfigError(f"output {uri!r} needs a directory, e.g. {_EXAMPLE}")
    values: dict[str, Any] = {}
    for key, raw in parse_qsl(query, keep_blank_values=True):
        if key not in _URI_PARAMS:
            raise ConfigError(f"output {uri!r}: unknown parameter {key!r}; known: {', '.join(_URI_PARAMS)} "
                              f"(e.g. {_EXAMPLE})")
        try:
            values[key] = float(raw)
        except ValueError:
            raise ConfigError(f"output {uri!r}: {key}={raw!r} is not a number (e.g. {_EXAMPLE})") from None
    if values.get("fsync_s") == 0:
        values["fsync_s"] = None
    settings = RecordSettings(**values)
    directory = Path(body)
    if (directory / DATA_FILE).exists():
        raise ConfigError(
            f"output {uri!r}: {directory / DATA_FILE} already exists; streamemg never overwrites or appends to a "
            "recording: choose a new directory"
        )
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"output {uri!r}: {directory} exists and is not a directory")
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output {uri!r}: cannot write in {probe} (permission denied); choose another directory")
    return RecordSink(directory, settings)
