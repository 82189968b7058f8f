"""Immutable snapshots of pipeline state: the model half of the dashboard (model / view / driver).

The pipeline builds a :class:`PipelineSnapshot` on demand; renderers are pure functions of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..estimates import HistoryView
from ..types import Estimate, StreamStatus


@dataclass(frozen=True, slots=True)
class StreamSnapshot:
    """One stream, as the dashboard shows it.

    Attributes:
        stream_id, name, source: identity (source is the URI).
        fs: nominal rate (Hz); n_channels: channel count.
        status: liveness; status_detail: why (e.g. "outlet lost, retrying").
        level: recent signal level (RMS, µV) per display bin, oldest first, for a sparkline.
        last: the newest Estimate, or None before the first.
        latency_p50_ms, latency_p99_ms: decision latency over the recent estimates.
        windows_per_s: estimates per second over the recent past.
        windows: total windows classified; dropped_samples: samples lost (gaps, overruns);
        dropped_windows: windows dropped by a full engine queue; rejected: chunks rejected (bad shape,
        duplicates, late).
    """

    stream_id: str
    name: str
    source: str
    fs: float
    n_channels: int
    status: StreamStatus
    status_detail: str = ""
    level: tuple[float, ...] = ()
    last: Estimate | None = None
    latency_p50_ms: float = float("nan")
    latency_p99_ms: float = float("nan")
    windows_per_s: float = 0.0
    windows: int = 0
    dropped_samples: int = 0
    dropped_windows: int = 0
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class PipelineSnapshot:
    """The whole pipeline: header facts plus one StreamSnapshot per stream."""

    device: str
    model_name: str
    trained: bool
    uptime_s: float
    streams: tuple[StreamSnapshot, ...]
    batch_mean: float = 0.0
    batch_max: int = 0
    max_batch: int = 0
    windows_total: int = 0
    windows_per_s: float = 0.0
    dropped_windows: int = 0
    sink_drops: dict[str, int] = field(default_factory=dict)
    errors: tuple[str, ...] = ()  # recent error messages for the footer, newest last
    connecting: tuple[tuple[str, str], ...] = ()  # (stream id, detail): found by a source, not opened yet
    qemg_yielding: bool = False  # live streams' QEMG is giving way to classification (QemgSettings.yield_load)


@dataclass(frozen=True, slots=True, eq=False)
class StreamDetail:
    """One stream in depth, for the stream view; built on demand for the one stream on screen.

    Attributes:
        stream: the stream's row snapshot (status, counters, latency, newest estimate).
        channels: channel labels; units: sample units (µV inside streamemg); meta: the source's extra facts.
        trace: ``(n, C)`` float32 filtered signal in µV at ``trace_fs`` Hz (the model rate), oldest first,
            ending with the newest classified window; may hold fewer samples early on (``n`` may be 0).
        trace_fs: sampling rate of ``trace`` (Hz).
        window: ``(window_samples, C)`` the newest classified window (the tail of ``trace``), or None before one.
        history: the most recent estimates, oldest first, as arrays (bounded by the pipeline's ``history``
            setting); None before any.
        reconnects: how many times the transport lost the stream and started reconnecting.
        qemg: the stream's current quantitative MUAP analysis (a ``streamemg.qemg.QemgSummary``: units with
            their templates and measures), or None when QEMG is off.
    """

    stream: StreamSnapshot
    channels: tuple[str, ...]
    units: str
    meta: Mapping[str, Any]
    trace: np.ndarray
    trace_fs: float
    window: np.ndarray | None = None
    history: HistoryView | None = None
    reconnects: int = 0
    qemg: Any = None
