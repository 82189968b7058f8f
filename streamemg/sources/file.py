"""Recorded files replayed as streams: ``file:PATH[?speed=1|max&loop=0|1&fs=HZ&chunk_ms=MS&name=NAME]``.

Parameters (all optional):

============ ========= ===============================================================================
``speed``    1         1 = real time (paced on absolute deadlines), any factor > 0, or ``max`` (as fast as
                       the consumer takes it; nothing is dropped downstream)
``loop``     0         1 = start over at the end, seamlessly (timestamps keep counting)
``fs``       from file sampling rate in Hz, for formats that do not store one (or to override it)
``chunk_ms`` 10 / 250  chunk length in ms (default 10 when paced, 250 at ``speed=max``)
``name``     file name stream name and id (default ``file:<file name>``)
============ ========= ===============================================================================

Any format :func:`streamemg.clinical.recordings.read_recording` reads is supported. ``.xdf`` files are handed to
``streamemg.lsl.xdf`` (one stream per XDF stream). ``PATH`` may be relative (to the working directory),
absolute, ``~/...``, or a ``file:///abs/path`` URL.

Timestamps are file time: sample ``i`` (counting on across loops) is at ``i / fs`` seconds.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from simulators.pacing import Pacer, Sleep

from ..clinical.recordings import Recording, read_recording
from ..clock import Clock, monotonic
from ..errors import ConfigError, DataFormatError, SourceError, SourceURIError
from ..types import Chunk, SourceItem, StatusEvent, StreamInfo, StreamStatus
from .base import GeneratorSource, Source, UriParams, split_uri

_PARAMS = ("speed", "loop", "fs", "chunk_ms", "name")
_EXAMPLE = "file:recording.npy?speed=max&loop=0&fs=10000"
#: Suffixes replayed by ``streamemg.lsl.xdf``.
XDF_SUFFIXES = (".xdf", ".xdfz")


class FileSource(GeneratorSource):
    """Replays one recording (see the module docstring for the parameters).

    Args:
        path: the recording.
        speed: 1.0 = real time, another factor > 0, or None for max.
        loop: start over at the end (timestamps continue).
        fs: sampling rate override / supply, Hz.
        chunk_ms: chunk length in ms (default 10 when paced, 250 at max speed).
        name: stream name and id.
        uri: shown as the source URI.
        clock, sleep: injectable time source and sleep for the pacing (tests).

    Attributes:
        path, speed, loop, fs (override), chunk_ms.
        recording: the Recording, once read (the file is read when the source is first iterated, off the
            event loop).
        pacer: the pacer of the current run (None at max speed).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        speed: float | None = 1.0,
        loop: bool = False,
        fs: float | None = None,
        chunk_ms: float | None = None,
        name: str | None = None,
        uri: str | None = None,
        clock: Clock = monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if speed is not None and not (float(speed) > 0):
            raise ConfigError(f"FileSource.speed={speed!r}: use a factor above 0 (1 = real time) or None for max")
        if fs is not None and not (float(fs) > 0):
            raise ConfigError(f"FileSource.fs={fs!r}: give the sampling rate in Hz (above 0)")
        if chunk_ms is None:
            chunk_ms = 10.0 if speed is not None else 250.0
        if not (float(chunk_ms) > 0):
            raise ConfigError(f"FileSource.chunk_ms={chunk_ms!r}: give the chunk length in ms above 0, e.g. 10")
        self.path = Path(path)
        self.speed = None if speed is None else float(speed)
        self.loop = bool(loop)
        self.fs = None if fs is None else float(fs)
        self.chunk_ms = float(chunk_ms)
        self.name = name
        self.stream_id = name or f"file:{self.path.name}"
        super().__init__(uri or f"file:{self.path}", realtime=self.speed is not None)
        self.recording: Recording | None = None
        self.pacer: Pacer | None = None
        self._clock = clock
        self._sleep = sleep

    async def _read(self) -> Recording:
        if self.recording is None:
            try:
                self.recording = await asyncio.to_thread(read_recording, self.path, self.fs)
            except DataFormatError as exc:
                raise SourceError(
                    f"cannot replay {self.path}: {exc}. Check that the file is a complete recording in a supported "
                    "format (give ?fs=HZ in the file: URI when the format has no rate)"
                ) from exc
            except OSError as exc:
                raise SourceError(
                    f"cannot read {self.path}: {exc.strerror or exc}. Check that the file exists and is readable"
                ) from exc
        return self.recording

    def _info(self, rec: Recording) -> StreamInfo:
        meta: dict[str, Any] = {"path": str(self.path), "loop": self.loop,
                                "speed": "max" if self.speed is None else self.speed,
                                "n_samples": rec.n_samples}
        fmt = dict(rec.meta).get("format")
        if isinstance(fmt, str):
            meta["format"] = fmt
        return StreamInfo(self.stream_id, self.name or self.path.stem, float(rec.fs), tuple(rec.channels),
                          source=self.uri, meta=meta)

    async def _items(self) -> AsyncIterator[SourceItem]:
        rec = await self._read()
        info = self._info(rec)
        yield info
        data = rec.data
        n_file = data.shape[0]
        fs = float(rec.fs)
        chunk = max(1, round(self.chunk_ms * fs / 1000.0))
        sid = self.stream_id
        pacer: Pacer | None = None
        if self.speed is not None:
            pacer = Pacer(chunk / fs / self.speed, clock=self._clock, sleep=self._sleep)
        self.pacer = pacer
        pos = 0  # absolute sample index, counting on across loops
        seq = 0
        while self.loop or pos < n_file:
            due = 1 if pacer is None else await pacer.wait_next()
            for _ in range(due):
                if not self.loop and pos >= n_file:
                    break
                size = chunk if self.loop else min(chunk, n_file - pos)
                start = pos % n_file
                if start + size <= n_file:
                    block = data[start : start + size]
                else:  # wraps around the end of the file (or the file is shorter than a chunk)
                    block = np.take(data, np.arange(start, start + size) % n_file, axis=0)
                ts = (pos + np.arange(size, dtype=np.float64)) / fs
                yield Chunk(sid, block, ts, seq)
                seq += 1
                pos += size
            if pacer is None:
                await asyncio.sleep(0)  # let the rest of the pipeline run between chunks
        yield StatusEvent(sid, StreamStatus.ENDED, f"end of {self.path.name}")


def _path_from_body(uri: str, body: str) -> Path:
    raw = body
    if raw.startswith("//"):  # file://host/path URL form
        host, _, rest = raw[2:].partition("/")
        if host not in ("", "localhost"):
            raise SourceURIError(
                f"{uri!r}: files on other hosts ({host}) cannot be replayed; copy the file here or mount it and "
                "write file:/path/to/recording"
            )
        raw = "/" + unquote(rest)
    if not raw.strip():
        raise SourceURIError(f"{uri!r}: give the recording's path, e.g. {_EXAMPLE}")
    return Path(os.path.expanduser(raw))


def from_uri(uri: str) -> Source:
    """Open ``file:PATH[?speed=1|max&loop=0|1&fs=&chunk_ms=&name=]``; ``.xdf`` goes to the XDF source.

    Raises:
        SourceURIError: malformed parameters, or no such file (with the path and what to check).
    """
    scheme, body, params = split_uri(uri)
    if scheme != "file":
        raise SourceURIError(f"{uri!r} is not a file: URI (e.g. {_EXAMPLE})")
    path = _path_from_body(uri, body)
    if path.is_dir():  # a recorder directory (``--output record:DIR``): the record wing reads its own format
        reader = importlib.import_module("streamemg.record.reader")
        return reader.from_uri(uri)
    if path.name.lower().endswith(XDF_SUFFIXES):
        try:
            xdf = importlib.import_module("streamemg.lsl.xdf")
        except ModuleNotFoundError as exc:
            if exc.name != "streamemg.lsl.xdf":
                raise
            raise SourceURIError(
                f"{uri!r}: XDF replay is not available in this installation (module streamemg.lsl.xdf is "
                "missing); convert the recording to .npy or .csv, or install the full streamemg package"
            ) from exc
        source: Source = xdf.from_uri(uri)
        return source
    p = UriParams(uri, params, _PARAMS, _EXAMPLE)
    speed = p.speed("speed", 1.0)
    loop = p.flag("loop", False)
    fs = p.number("fs", None, lo=0.0, hi=10_000_000.0, lo_inclusive=False)
    chunk_ms = p.number("chunk_ms", None, lo=0.0, hi=60_000.0, lo_inclusive=False)
    name = p.text("name", None)
    if not path.exists():
        raise SourceURIError(
            f"{uri!r}: no such file {path} (relative paths start at the working directory {Path.cwd()}); "
            "check the spelling or give an absolute path, e.g. file:/data/recording.npy"
        )
    try:
        return FileSource(path, speed=speed, loop=loop, fs=fs, chunk_ms=chunk_ms, name=name, uri=uri)
    except ConfigError as exc:
        raise SourceURIError(f"{uri!r}: {exc}") from exc
