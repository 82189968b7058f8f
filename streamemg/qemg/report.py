"""Recording-level QEMG: a whole file (any format the ``file:`` source reads) through the streaming analyser.

The file is replayed at full speed through :class:`streamemg.sources.file.FileSource` (so EMGLAB, WFDB,
Mendeley ``.asc``, ``.npy``, ``.csv``, ``.xdf`` and recorder folders all work, one result per stream) and each
stream's samples go through :class:`~streamemg.qemg.analyser.QemgAnalyser` in 0.25 s blocks, as in the
pipeline. The recording-level result pools the units of consecutive horizons (each unit measured at the end
of the horizon it was seen in), so a long recording in which the needle moved reports every unit it saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np

from ..sources.base import open_source
from ..types import Chunk, StreamInfo
from .analyser import QemgAnalyser, QemgSettings, QemgSummary, UnitMeasures

__all__ = ["StreamReport", "analyse_array", "analyse_file", "analyse_row", "file_uri"]


@dataclass
class StreamReport:
    """The QEMG of one recorded stream.

    Attributes:
        file: the path given; stream: stream name; fs: Hz; seconds: signal analysed, s.
        units: the units of every horizon (pooled), largest first; a unit seen in several horizons is in
            the pool once per horizon, so ``units`` in :meth:`to_dict` is the mean count per horizon.
        horizons: how many horizons were pooled.
        summary: a :class:`QemgSummary` over all pooled units (its ``to_dict`` is the report's measures).
    """

    file: str
    stream: str
    fs: float
    seconds: float
    units: list[UnitMeasures] = field(default_factory=list)
    summary: QemgSummary | None = None
    horizons: int = 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "stream": self.stream, "fs": self.fs,
                               "seconds": round(self.seconds, 3)}
        if self.summary is not None:
            out.update(self.summary.to_dict())
            out["units"] = round(len(self.summary.muaps) / max(1, self.horizons), 1)
            out["horizons"] = self.horizons
        return out


def file_uri(path: str, fs: float | None = None) -> str:
    """``file:PATH?speed=max`` (with ``&fs=`` for formats that carry no rate)."""
    uri = f"file:{quote(str(path), safe='/._-~')}?speed=max"
    if fs is not None:
        uri += f"&fs={fs:g}"
    return uri


class _Pooled:
    """Runs one analyser and harvests its units once per horizon (and at the end)."""

    def __init__(self, fs: float, n_channels: int, settings: QemgSettings) -> None:
        self.an = QemgAnalyser(fs, n_channels, settings)
        self.units: list[UnitMeasures] = []
        self.harvests = 0
        self.pending: list[np.ndarray] = []
        self.pending_n = 0
        self.every = max(1, round(settings.horizon_s * fs))
        self.next_harvest = self.every

    def feed(self, data: np.ndarray, hop: int) -> None:
        """Analyse in blocks of exactly ``hop`` samples, whatever the source's chunking (the rest waits)."""
        self.pending.append(np.asarray(data, dtype=np.float32))
        self.pending_n += data.shape[0]
        if self.pending_n < hop:
            return
        x = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        n = (x.shape[0] // hop) * hop
        self.pending = [x[n:]]
        self.pending_n = x.shape[0] - n
        self._run(x[:n], hop)

    def _run(self, x: np.ndarray, hop: int) -> None:
        for i in range(0, x.shape[0], hop):
            self.an.process(x[i : i + hop])
            if self.an.samples_seen >= self.next_harvest:
                self.units.extend(self.an.summary(fresh=True).units)
                self.harvests += 1
                self.next_harvest += self.every

    def finish(self) -> tuple[list[UnitMeasures], QemgSummary, int]:
        if self.pending_n:
            rest = np.concatenate(self.pending)
            self._run(rest, rest.shape[0])
            self.pending, self.pending_n = [], 0
        last = self.an.summary(fresh=True)
        # the tail since the last harvest: its units, unless that stretch is shorter than half a horizon
        # and was already harvested with the previous horizon
        if self.an.samples_seen > self.next_harvest - self.every // 2 or not self.units:
            self.units.extend(last.units)
            self.harvests += 1
        units = sorted(self.units, key=lambda u: -u.waveform.amplitude_uv)
        pooled = QemgSummary(tuple(units), last.activity_uv, last.noise_uv, last.n_channels, last.seconds)
        return units, pooled, self.harvests


def _pool_array(data: np.ndarray, fs: float, settings: QemgSettings | None) -> tuple[QemgSummary, int]:
    """A whole recording held in memory, float (n, C) or (n,) µV at ``fs`` Hz -> (pooled summary, horizons)."""
    x = np.asarray(data, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    p = _Pooled(fs, x.shape[1], settings or QemgSettings())
    p.feed(x, max(1, round(0.25 * fs)))
    _, summary, horizons = p.finish()
    return summary, horizons


def analyse_array(data: np.ndarray, fs: float, settings: QemgSettings | None = None) -> QemgSummary:
    """The pooled QEMG of a whole recording held in memory, float (n, C) µV at ``fs`` Hz."""
    return _pool_array(data, fs, settings)[0]


def analyse_row(data: np.ndarray, fs: float, settings: QemgSettings | None = None) -> dict[str, Any]:
    """The measures of :func:`analyse_array` as :meth:`StreamReport.to_dict` gives them: ``units`` is the mean
    count per horizon (the summary's own ``units`` counts every horizon's, so a 20 s recording counts two),
    ``horizons`` how many were pooled."""
    summary, horizons = _pool_array(data, fs, settings)
    out = summary.to_dict()
    out["units"] = round(len(summary.muaps) / max(1, horizons), 1)
    out["horizons"] = horizons
    return out


async def analyse_file(path: str, fs: float | None = None, settings: QemgSettings | None = None) -> list[StreamReport]:
    """QEMG of every stream in a recording (see the module docstring).

    Raises:
        StreamEMGError: the file cannot be read (the message names the file and the fix).
    """
    s = settings or QemgSettings()
    source = open_source(file_uri(path, fs))
    infos: dict[str, StreamInfo] = {}
    pools: dict[str, _Pooled] = {}
    async with source:
        async for item in source:
            if isinstance(item, StreamInfo):
                infos[item.stream_id] = item
                pools[item.stream_id] = _Pooled(item.fs, item.n_channels, s)
            elif isinstance(item, Chunk):
                pool = pools.get(item.stream_id)
                if pool is not None:
                    pool.feed(item.data, max(1, round(0.25 * pool.an.fs)))
    reports = []
    for sid, pool in pools.items():
        info = infos[sid]
        units, summ, harvests = pool.finish()
        seconds = pool.an.samples_seen / info.fs if math.isfinite(info.fs) else 0.0
        reports.append(StreamReport(path, info.name, info.fs, seconds, units, summ, harvests))
    return reports
