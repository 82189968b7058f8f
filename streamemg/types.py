"""The data types that flow through streamemg.

Data flow (one direction)::

    Source --Chunk--> StreamState --Window--> InferenceEngine --probs--> StreamState --Estimate--> Sinks

Every type here is a frozen dataclass. Arrays inside them are treated as read-only
by every consumer (nobody mutates a Chunk's data after it was produced).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

#: The three diagnostic classes, in the order of every probability vector.
CLASS_NAMES: tuple[str, ...] = ("Normal", "ALS", "Myopathy")
N_CLASSES = len(CLASS_NAMES)

FloatArray = npt.NDArray[np.float32]
TimeArray = npt.NDArray[np.float64]


class StreamStatus(enum.StrEnum):
    """Liveness of one stream, as shown on the dashboard."""

    CONNECTING = "connecting"
    LIVE = "live"
    STALE = "stale"  # no data for longer than the stale timeout
    RECONNECTING = "reconnecting"  # the transport lost the stream and is trying to get it back
    ENDED = "ended"  # the source finished (end of file) or the stream was closed for good


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What is known about a stream before its first sample.

    Attributes:
        stream_id: unique key of the stream inside one pipeline (e.g. ``"sim:als"``,
            ``"mqtt:dev01"``, ``"lsl:Amp1"``).
        name: human readable name shown on the dashboard and used in output names.
        fs: nominal sampling rate in Hz (> 0).
        channels: channel labels, one per channel (at least one).
        units: physical units of the samples after conversion; always ``"uV"`` inside streamemg.
        source: the URI of the source that carries this stream.
        meta: free-form extra facts (device info, file path, ...), JSON-serialisable.
    """

    stream_id: str
    name: str
    fs: float
    channels: tuple[str, ...]
    units: str = "uV"
    source: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.stream_id:
            raise ValueError("StreamInfo.stream_id must be a non-empty string")
        if not (isinstance(self.fs, (int, float)) and math.isfinite(self.fs) and self.fs > 0):
            raise ValueError(
                f"StreamInfo.fs={self.fs!r} for stream {self.stream_id!r}: the sampling rate must be a "
                "finite number of Hz above 0"
            )
        if len(self.channels) < 1:
            raise ValueError(f"StreamInfo.channels for stream {self.stream_id!r} must name at least one channel")

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def signature(self) -> tuple[float, int]:
        """(rate, channel count): when this changes, the stream's processing state is rebuilt."""
        return (float(self.fs), len(self.channels))


@dataclass(frozen=True, slots=True)
class Chunk:
    """A block of consecutive samples of one stream: the one type that crosses the source boundary.

    Attributes:
        stream_id: the stream the samples belong to (announced before by a StreamInfo).
        data: float32 array shaped ``(n_samples, n_channels)`` in µV.
        timestamps: float64 array shaped ``(n_samples,)``, seconds (source clock).
        seq: the sender's chunk counter where the transport has one (MQTT), else None.
    """

    stream_id: str
    data: FloatArray
    timestamps: TimeArray
    seq: int | None = None

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[1])


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A source telling the pipeline that a stream's liveness changed (e.g. LSL outlet vanished)."""

    stream_id: str
    status: StreamStatus
    detail: str = ""
    #: samples known to be lost in a gap the source observed (e.g. broker outage), if known.
    dropped_samples: int = 0


#: What a source yields.
SourceItem = StreamInfo | Chunk | StatusEvent


@dataclass(frozen=True, slots=True)
class Window:
    """The newest ``window_samples`` of one stream at the model's rate, all channels.

    Attributes:
        stream_id: stream key.
        index: 0-based window counter within the stream's current segment.
        data: float32 ``(n_channels, window_samples)``, filtered and resampled, µV.
        t_end: source timestamp (s) of the newest sample in the window.
        arrival: pipeline clock time (s, monotonic) at which the newest sample arrived.
        quality: one entry per channel, ``"ok"`` or the reason the channel is unusable
            (``"nan"``, ``"flat"``, ``"clipping"``, ``"low_activity"``).
        site: row of the engine's site-calibration table for this stream's recording setup (0: none; see
            :mod:`streamemg.clinical.site`).
    """

    stream_id: str
    index: int
    data: FloatArray
    t_end: float
    arrival: float
    quality: tuple[str, ...]
    site: int = 0

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[0])


@dataclass(frozen=True, slots=True)
class Estimate:
    """The classifier's output for one window of one stream, plus the stream's rolling state.

    Attributes:
        stream_id: stream key; ``stream`` in the JSON form.
        name: stream name.
        index: window counter.
        time: source timestamp (s) of the newest sample of the window.
        probabilities: the window's class probabilities fused over its good channels
            (``CLASS_NAMES`` order); all NaN when no channel was usable.
        rolling: exponentially smoothed probabilities (time constant in EstimateSettings).
        cumulative: recording-level probabilities: the mean over all usable windows so far.
        label: the rolling arg-max class, or None when withheld (bad quality, untrained model).
        confidence: the rolling probability of ``label`` (0 when withheld).
        quality: ``"ok"`` or the reason the window's label is withheld.
        latency_ms: from the arrival of the window's newest sample to this estimate.
        trained: False when the model was never trained on real data; outputs then say "untrained".
        channel_quality: per-channel quality flags of the window.
        qemg: the stream's quantitative MUAP analysis at this moment, in its compact JSON form
            (:meth:`streamemg.qemg.QemgSummary.to_dict`: units, amplitude_uv, duration_ms, phases, ...,
            ``flags``), or None when QEMG is off.
    """

    stream_id: str
    name: str
    index: int
    time: float
    probabilities: tuple[float, ...]
    rolling: tuple[float, ...]
    cumulative: tuple[float, ...]
    label: str | None
    confidence: float
    quality: str
    latency_ms: float
    trained: bool = True
    channel_quality: tuple[str, ...] = ()
    qemg: Mapping[str, Any] | None = field(default=None, compare=False)  # a dict: not part of eq / hash

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by ``--no-dashboard``, the JSON-lines sink and MQTT."""

        def probs(p: tuple[float, ...]) -> dict[str, float | None]:
            pairs = zip(CLASS_NAMES, p, strict=True)
            return {c: (None if not math.isfinite(v) else round(float(v), 6)) for c, v in pairs}

        out = {
            "stream": self.stream_id,
            "name": self.name,
            "index": self.index,
            "time": self.time,
            "label": self.label if self.trained else "untrained",
            "confidence": round(float(self.confidence), 6),
            "probabilities": probs(self.probabilities),
            "rolling": probs(self.rolling),
            "cumulative": probs(self.cumulative),
            "quality": self.quality,
            "latency_ms": round(float(self.latency_ms), 3),
            "model": "trained" if self.trained else "untrained",
        }
        if self.qemg is not None:
            out["qemg"] = dict(self.qemg)
        return out
