"""XDF replay: ``file:recording.xdf[?speed=1|max|X&loop=0|1&chunk_ms=10&channels=emg&stream=NAME]``.

Plays the EMG streams of an XDF file (as written by LabRecorder) so a recording can be classified
again. The file is read with pyxdf (clock offsets applied, timestamps dejittered), then:

* the streams played are those of type ``EMG`` (case-insensitive); when none is typed EMG, every numeric
  stream with a regular rate (marker and other irregular or string streams are never played). ``stream=``
  picks streams by name instead (comma-separated);
* each XDF stream becomes one streamemg stream (``xdf:<file stem>/<stream name>``), announced with its
  channel labels; values are converted to µV from the declared units (``desc/channels/channel/unit``);
* chunks of ``chunk_ms`` carry the recorded timestamps; all streams are interleaved in timestamp order and,
  at ``speed=1`` (default), released when their last sample's recorded time has come (relative to the first
  sample of the recording), at ``speed=X`` X times faster, at ``speed=max`` without waiting;
* ``loop=1`` plays the recording again and again, shifting the timestamps by the recording's span each round so
  they keep increasing.

Decoding happens in a worker thread on entry (pyxdf reads sample by sample; large files take a while).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import numpy as np

from ..errors import ConfigError, DataFormatError, SourceURIError
from ..sources.base import split_uri
from ..types import Chunk, SourceItem, StatusEvent, StreamInfo, StreamStatus
from .executor import ChannelPlan, plan_channels

log = logging.getLogger(__name__)

_KNOWN_PARAMS = ("speed", "loop", "chunk_ms", "channels", "stream", "name")


@dataclass(frozen=True, slots=True)
class XDFSettings:
    """How an XDF file is played.

    Attributes:
        path: the .xdf (or .xdfz) file.
        speed: playback speed relative to real time (1 = as recorded); None = as fast as possible.
        loop: start again at the end, forever.
        chunk_ms: milliseconds of samples per chunk.
        channels: "emg", "all" or comma-separated channel labels (see :func:`streamemg.lsl.executor.plan_channels`).
        streams: names of the XDF streams to play; empty = the EMG streams (or all numeric regular ones).
        name: display name for the played stream (only when exactly one stream is played).
    """

    path: Path
    speed: float | None = 1.0
    loop: bool = False
    chunk_ms: float = 10.0
    channels: str = "emg"
    streams: tuple[str, ...] = ()
    name: str | None = None

    def __post_init__(self) -> None:
        if self.speed is not None and not (math.isfinite(self.speed) and self.speed > 0):
            raise ConfigError(f"XDFSettings.speed={self.speed!r}: use a factor above 0 (1 = real time) or speed=max")
        if not (math.isfinite(self.chunk_ms) and 0.1 <= self.chunk_ms <= 10000):
            raise ConfigError(f"XDFSettings.chunk_ms={self.chunk_ms!r}: use 0.1 to 10000 ms, e.g. chunk_ms=10")
        if not self.channels.strip():
            raise ConfigError("XDFSettings.channels='': use emg, all or a comma-separated list of labels")
        if self.name is not None and not self.name:
            raise ConfigError("XDFSettings.name='': leave it out or give a name")


def parse_uri(uri: str) -> XDFSettings:
    """``file:recording.xdf?speed=max&loop=1`` -> settings (also accepts the ``xdf:`` prefix)."""
    scheme, body, params = split_uri(uri)
    if scheme not in ("file", "xdf"):
        raise SourceURIError(f"{uri!r} is not a file: URI (e.g. file:recording.xdf?speed=max)")
    if body.startswith("//"):
        body = body[2:]
    path = Path(unquote(body)).expanduser()
    if not body:
        raise SourceURIError(f"{uri!r}: give the file, e.g. file:recording.xdf")
    unknown = set(params) - set(_KNOWN_PARAMS)
    if unknown:
        hint = " (an XDF file carries its own rate)" if "fs" in unknown else ""
        raise SourceURIError(
            f"{uri!r}: unknown parameter(s) {', '.join(sorted(unknown))}{hint}; known: {', '.join(_KNOWN_PARAMS)}"
        )
    kwargs: dict[str, Any] = {"path": path}
    try:
        if "speed" in params:
            raw = params["speed"].strip().lower()
            kwargs["speed"] = None if raw in ("max", "inf", "0") else float(raw)
        if "loop" in params:
            raw = params["loop"].strip().lower()
            if raw not in ("0", "1", "true", "false", "yes", "no", ""):
                raise ValueError(raw)
            kwargs["loop"] = raw in ("1", "true", "yes", "")
        if "chunk_ms" in params:
            kwargs["chunk_ms"] = float(params["chunk_ms"])
    except ValueError as exc:
        raise SourceURIError(f"{uri!r}: a parameter has an invalid value ({exc}); e.g. speed=1|max, loop=0|1") from exc
    if "channels" in params:
        kwargs["channels"] = params["channels"]
    if params.get("stream"):
        kwargs["streams"] = tuple(s.strip() for s in params["stream"].split(",") if s.strip())
    if "name" in params:
        kwargs["name"] = params["name"]
    return XDFSettings(**kwargs)


def from_uri(uri: str) -> XDFSource:
    """The Source for ``file:PATH.xdf[?...]`` (not yet entered; the file is read on entry)."""
    return XDFSource(uri, parse_uri(uri))


@dataclass(slots=True)
class _Track:
    """One XDF stream ready for playback."""

    info: StreamInfo
    data: np.ndarray  # (n, C) float32 µV
    stamps: np.ndarray  # (n,) float64 s
    chunk: int  # samples per chunk


def _first(value: Any) -> Any:
    """pyxdf wraps every XML text in a one-element list; unwrap (None when absent)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _desc_channels(info: dict[str, Any]) -> tuple[list[str | None], list[str | None], list[str | None]]:
    """Labels, units and types from a pyxdf stream header's ``desc/channels/channel`` (empty when absent)."""
    labels: list[str | None] = []
    units: list[str | None] = []
    types: list[str | None] = []
    try:
        desc = _first(info.get("desc"))
        channels = _first(desc["channels"])
        entries = channels["channel"]
    except (TypeError, KeyError, IndexError):
        return labels, units, types
    for ch in entries if isinstance(entries, list) else []:
        if not isinstance(ch, dict):
            continue
        for key, out in (("label", labels), ("unit", units), ("type", types)):
            value = _first(ch.get(key))
            out.append(str(value) if value not in (None, "") else None)
    return labels, units, types


def load_tracks(settings: XDFSettings) -> list[_Track]:
    """Read the file and prepare the streams to play (blocking; runs in a worker thread).

    Raises:
        DataFormatError: unreadable file, or no stream that can be played.
    """
    try:
        import pyxdf
    except ImportError as exc:
        raise DataFormatError("reading XDF files needs pyxdf: `pip install pyxdf`") from exc
    path = settings.path
    if not path.exists():
        raise DataFormatError(f"{path}: no such file")
    try:
        streams, _header = pyxdf.load_xdf(
            str(path), synchronize_clocks=True, dejitter_timestamps=True, handle_clock_resets=True
        )
    except Exception as exc:  # pyxdf raises plain Exception/IOError/struct.error on broken files
        raise DataFormatError(f"{path}: not a readable XDF file ({type(exc).__name__}: {exc})") from exc

    summaries: list[str] = []
    playable: list[dict[str, Any]] = []
    for st in streams:
        info = st.get("info", {})
        name = str(_first(info.get("name")) or "unnamed")
        stype = str(_first(info.get("type")) or "")
        fmt = str(_first(info.get("channel_format")) or "")
        try:
            srate = float(_first(info.get("nominal_srate")) or 0.0)
        except ValueError:
            srate = 0.0
        n = len(st.get("time_stamps", []))
        summaries.append(f"{name!r} (type {stype or '-'}, {fmt}, {srate:g} Hz, {n} samples)")
        if fmt == "string" or srate <= 0 or n == 0:
            continue
        playable.append(st)
    if settings.streams:
        chosen = [st for st in playable if str(_first(st["info"].get("name"))) in settings.streams]
        missing = set(settings.streams) - {str(_first(st["info"].get("name"))) for st in chosen}
        if missing:
            raise DataFormatError(
                f"{path}: no playable stream named {', '.join(sorted(missing))}; the file holds: "
                + "; ".join(summaries)
            )
    else:
        emg = [st for st in playable if str(_first(st["info"].get("type")) or "").lower() == "emg"]
        chosen = emg or playable
    if not chosen:
        raise DataFormatError(
            f"{path}: nothing to play: streamemg plays numeric streams with a regular rate (EMG-typed ones first); "
            "the file holds: " + ("; ".join(summaries) or "no streams")
        )
    if settings.name is not None and len(chosen) != 1:
        raise ConfigError(f"name={settings.name!r} renames one stream, but {len(chosen)} are played; use stream=NAME")

    tracks: list[_Track] = []
    used: set[str] = set()
    stem = path.name.removesuffix(".gz").removesuffix(".xdfz").removesuffix(".xdf")
    for st in chosen:
        info = st["info"]
        xname = str(_first(info.get("name")) or "unnamed")
        fs = float(_first(info.get("nominal_srate")))
        values = np.asarray(st["time_series"])
        if values.ndim == 1:
            values = values[:, None]
        labels, units, types = _desc_channels(info)
        plan: ChannelPlan = plan_channels(values.shape[1], labels, units, types, settings.channels, stream_name=xname)
        if plan.assumed_signal_uv:
            log.warning(
                "%s: stream %r channels %s declare no voltage unit; values taken as µV",
                path,
                xname,
                ", ".join(plan.assumed_signal_uv),
            )
        display = settings.name or xname
        sid = f"xdf:{stem}/{display}"
        k = 2
        while sid in used:
            sid = f"xdf:{stem}/{display}#{k}"
            k += 1
        used.add(sid)
        stamps = np.ascontiguousarray(st["time_stamps"], dtype=np.float64)
        sinfo = StreamInfo(
            stream_id=sid,
            name=display,
            fs=fs,
            channels=plan.labels,
            units="uV",
            source=f"file:{path}",
            meta={
                "transport": "xdf",
                "file": str(path),
                "xdf": {
                    "name": xname,
                    "type": str(_first(info.get("type")) or ""),
                    "source_id": str(_first(info.get("source_id")) or ""),
                    "stream_id": int(info.get("stream_id", 0) or 0),
                    "channel_format": str(_first(info.get("channel_format")) or ""),
                    "effective_srate": float(info.get("effective_srate") or 0.0),
                    "samples": int(stamps.size),
                },
                "channels": plan.describe(),
            },
        )
        tracks.append(_Track(sinfo, plan.apply(values), stamps, max(1, round(fs * settings.chunk_ms / 1000.0))))
    return tracks


class XDFSource:
    """Async context manager + async iterator playing the EMG streams of an XDF file."""

    def __init__(self, uri: str, settings: XDFSettings) -> None:
        self.uri = uri
        self.settings = settings
        self.realtime = settings.speed is not None
        self.tracks: list[_Track] = []
        self._entered = False
        self._closed = False

    async def __aenter__(self) -> XDFSource:
        self.tracks = await asyncio.to_thread(load_tracks, self.settings)
        self._entered = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        self.tracks = []

    def __aiter__(self) -> AsyncIterator[SourceItem]:
        if not self._entered:
            raise DataFormatError(f"source {self.uri} is not open; use `async with open_source(uri) as src:`")
        return self._play()

    async def _play(self) -> AsyncIterator[SourceItem]:
        tracks = list(self.tracks)
        for tr in tracks:
            yield tr.info
        t_first = min(float(tr.stamps[0]) for tr in tracks)
        t_last = max(float(tr.stamps[-1]) for tr in tracks)
        period = (t_last - t_first) + max(1.0 / tr.info.fs for tr in tracks)
        speed = self.settings.speed
        loop = asyncio.get_running_loop()
        wall0 = loop.time()
        rnd = 0
        while not self._closed:
            offset = rnd * period
            heap: list[tuple[float, int, int]] = []
            for i, tr in enumerate(tracks):
                end = min(tr.chunk, tr.stamps.size)
                heapq.heappush(heap, (float(tr.stamps[end - 1]), i, 0))
            while heap and not self._closed:
                t_end, i, start = heapq.heappop(heap)
                tr = tracks[i]
                stop = min(start + tr.chunk, tr.stamps.size)
                if speed is not None:
                    due = wall0 + (t_end + offset - t_first) / speed
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                stamps = tr.stamps[start:stop] + offset if offset else tr.stamps[start:stop].copy()
                yield Chunk(tr.info.stream_id, tr.data[start:stop], stamps)
                if stop < tr.stamps.size:
                    nxt = min(stop + tr.chunk, tr.stamps.size)
                    heapq.heappush(heap, (float(tr.stamps[nxt - 1]), i, stop))
            if not self.settings.loop:
                break
            rnd += 1
        if not self._closed:
            for tr in tracks:
                yield StatusEvent(tr.info.stream_id, StreamStatus.ENDED, "end of file")
