"""The pipeline: sources -> stream states -> batched engine -> rolling estimates -> sinks.

One :class:`Pipeline` owns everything under one ``asyncio.TaskGroup``: one task per source, the engine's
worker, one task per sink, a watchdog that marks silent streams stale, and (optionally) the dashboard.

Per stream, a :class:`StreamState` turns Chunks into Windows::

    chunk (native rate, µV) -> seq check -> raw ring buffer (for the quality gate)
          -> non-finite samples zeroed -> causal high-pass + mains notch -> rational resampler
          -> model-rate ring buffer -> a Window every ``hop`` samples once ``window`` samples are held

Large chunks (a file at full speed) are cut into pieces of at most one hop, so every window is emitted and
the ring buffer never needs to hold more than ``window + 2 * hop`` samples. Results come back from the
engine through :meth:`StreamState.on_result`, which fuses channels, applies the quality gate and updates the
rolling and cumulative estimates, and the Estimate goes to every sink's bounded queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .buffer import RingBuffer
from .clock import Clock, monotonic
from .dsp import Resampler, StreamFilter
from .engine import EngineSettings, InferenceEngine
from .errors import (
    BrokerError,
    ConfigError,
    DataFormatError,
    LSLUnavailableError,
    ModelError,
    StreamEMGError,
    StreamRateError,
)
from .estimates import (
    EstimateHistory,
    EstimateSettings,
    QualitySettings,
    RollingEstimator,
    assess_quality,
    fuse_channels,
)
from .model import ModelBundle
from .qemg.analyser import QemgAnalyser, QemgSettings
from .qemg.service import RemoteQemg, YieldGate, set_yielding
from .qemg.service import supported as qemg_service_supported
from .sinks.base import Sink, SinkRunner, SinkSettings
from .sources.base import Source
from .types import CLASS_NAMES, Chunk, Estimate, StatusEvent, StreamInfo, StreamStatus, Window
from .ui.snapshot import PipelineSnapshot, StreamDetail, StreamSnapshot

log = logging.getLogger(__name__)

#: Longest time (s) chunks of a live source are processed back to back before the loop gets a turn.
_MAX_HOLD_S = 0.002

#: Errors a restart cannot fix: the source is given up (bad settings, a stream that cannot be classified, a missing
#: native library, a broker given up on by the user's own start_timeout, unreadable data).
_PERMANENT_SOURCE_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    StreamRateError,
    LSLUnavailableError,
    BrokerError,
    DataFormatError,
    ModelError,
)
#: Restart backoff of a failed live source (s): doubles from the first up to the cap; back to the first after a
#: restarted source has run for _SOURCE_HEALTHY_S.
_SOURCE_RESTART_S = (0.5, 30.0)
_SOURCE_HEALTHY_S = 60.0


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """How streams are cut into windows and how estimates are formed.

    Attributes:
        hop_s: seconds between decisions per stream; None = the model's hop.
        stale_after_s: a stream with no data for this long is shown as stale.
        max_streams: streams beyond this are refused (counted, logged), protecting memory.
        max_channels, max_fs_hz: a stream announcing more channels or a higher rate is refused (its buffers
            would be sized from it), whatever the transport.
        restart_gap: a sequence number this far *below* the last one means the sender restarted
            (a new segment), not a late message.
        drain_timeout_s: at shutdown, how long outputs may take to deliver what they hold and close.
        level_bin_s: width of one sparkline bin (stream time, s); level_bins: how many are kept.
        latency_history: decisions kept per stream for the p50/p99 latency.
        trace_s: seconds of the filtered model-rate signal held per stream for the dashboard's stream view
            (the window buffer is enlarged to hold them; at the default it already does, so it costs nothing).
        history: estimates kept per stream for the stream view's probability and quality history (1200 at the
            default 0.25 s hop = the last 5 minutes): a ring of numbers (about 40 bytes per estimate, 48 KB per
            stream at the default), a few array writes per decision.
        quality, estimates: the quality gate and the rolling estimate settings.
        sink: queueing policy of every sink.
        qemg: quantitative MUAP analysis per stream (``qemg.enabled=False`` turns it off; estimates then
            carry no ``qemg``).
    """

    hop_s: float | None = None
    stale_after_s: float = 1.0
    max_streams: int = 4096
    max_channels: int = 256
    max_fs_hz: float = 200_000.0
    restart_gap: int = 1000
    drain_timeout_s: float = 1.0
    level_bin_s: float = 0.25
    level_bins: int = 24
    latency_history: int = 512
    trace_s: float = 1.5
    history: int = 1200
    quality: QualitySettings = field(default_factory=QualitySettings)
    estimates: EstimateSettings = field(default_factory=EstimateSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    qemg: QemgSettings = field(default_factory=QemgSettings)

    def __post_init__(self) -> None:
        if self.hop_s is not None and not (math.isfinite(self.hop_s) and self.hop_s > 0):
            raise ConfigError(f"PipelineSettings.hop_s={self.hop_s!r}: give a positive number of seconds, e.g. 0.25")
        if not self.stale_after_s > 0:
            raise ConfigError(f"PipelineSettings.stale_after_s={self.stale_after_s!r}: must be above 0 s")
        if not self.drain_timeout_s > 0:
            raise ConfigError(f"PipelineSettings.drain_timeout_s={self.drain_timeout_s!r}: must be above 0 s")
        if self.max_channels < 1 or not self.max_fs_hz > 0:
            raise ConfigError("PipelineSettings.max_channels and max_fs_hz must be positive")
        if self.max_streams < 1:
            raise ConfigError(f"PipelineSettings.max_streams={self.max_streams!r}: must be at least 1")
        if self.restart_gap < 1:
            raise ConfigError(f"PipelineSettings.restart_gap={self.restart_gap!r}: must be at least 1")
        if not (isinstance(self.trace_s, (int, float)) and math.isfinite(self.trace_s) and 0 < self.trace_s <= 60):
            raise ConfigError(f"PipelineSettings.trace_s={self.trace_s!r}: give seconds in (0, 60], e.g. 1.5")
        if not (isinstance(self.history, int) and self.history >= 1):
            raise ConfigError(f"PipelineSettings.history={self.history!r}: give a whole number of estimates >= 1")
        if self.level_bins < 1 or not self.level_bin_s > 0:
            raise ConfigError("PipelineSettings.level_bins and level_bin_s must be positive")


class StreamState:
    """Mutable per-stream processing state. Rebuilt when the stream's (rate, channels) signature changes."""

    def __init__(
        self,
        info: StreamInfo,
        source: Source | None,
        bundle: ModelBundle,
        settings: PipelineSettings,
        clock: Clock,
    ) -> None:
        cfg = bundle.config
        self.info = info
        self.source = source
        self.settings = settings
        self.clock = clock
        self.trained = bundle.trained
        self.model_fs = float(cfg.fs)
        if info.fs < self.model_fs:
            raise StreamRateError(
                f"stream {info.name!r} is sampled at {info.fs:g} Hz, below the model's {self.model_fs:g} Hz; "
                "streamemg does not upsample (it would invent spectrum the model relies on). "
                f"Stream at {self.model_fs:g} Hz or more, or use a model trained at a lower rate (--model)."
            )
        c = info.n_channels
        self.n_channels = c
        self.window_samples = int(cfg.window_samples)
        hop_s = settings.hop_s if settings.hop_s is not None else cfg.hop_samples / self.model_fs
        self.hop_samples = max(1, round(hop_s * self.model_fs))
        self.filter = StreamFilter(cfg.filters, info.fs, c)
        self.resampler = Resampler(info.fs, self.model_fs, c)
        self.trace_samples = max(1, round(settings.trace_s * self.model_fs))
        self.buffer = RingBuffer(max(self.window_samples + 2 * self.hop_samples + 16, self.trace_samples), c)
        # the raw span of one window at the native rate, for the quality gate
        self.raw_window = max(1, math.ceil(self.window_samples * info.fs / self.model_fs))
        self.raw_buffer = RingBuffer(self.raw_window + math.ceil(2 * self.hop_samples * info.fs / self.model_fs), c)
        # at most one hop of native samples per piece, so every window is emitted in order
        self.max_piece = max(1, math.floor(self.hop_samples * info.fs / self.model_fs))
        self.next_end = self.window_samples
        # Deferred processing (performance, see docs/performance.md): a chunk is only queued here (a list append);
        # the queued samples go through the level meter, the raw buffer, the filters and the resampler as one
        # block when a window falls due or one hop (max_piece) of them is queued, i.e. a few times per second per
        # stream instead of 100 times. Every stage is chunking-invariant, so the windows, their quality and
        # timestamps are those of chunk-by-chunk processing; numpy/scipy's per-call overhead (~20 µs for sosfilt)
        # is paid per hop. Chunk arrays are read-only by contract, so queuing references is safe.
        self._queued: list[np.ndarray] = []
        self._queued_n = 0
        self._flush_at = self._samples_until_window()
        self.window_index = 0
        self.site = 0  # row of the engine's site-calibration table (0: none); set by the Pipeline
        self.estimator = RollingEstimator(settings.estimates, len(cfg.classes))
        self.status = StreamStatus.LIVE
        self.status_detail = ""
        self.last_seq: int | None = None
        self.last_data_at = clock()
        self.last_estimate: Estimate | None = None
        self.history = EstimateHistory(settings.history, len(cfg.classes))
        self.reconnects = 0
        self.windows = 0
        self.dropped_samples = 0
        self.dropped_windows = 0
        self.rejected = 0
        self.accepted = False  # whether the last chunk passed the sequence check
        self.latencies: collections.deque[float] = collections.deque(maxlen=settings.latency_history)
        self._lat_cache: tuple[int, float, float] = (-1, float("nan"), float("nan"))
        self.decision_times: collections.deque[float] = collections.deque(maxlen=64)
        self.levels: collections.deque[float] = collections.deque(maxlen=settings.level_bins)
        self._level_sumsq = 0.0
        self._level_count = 0
        self._level_per_bin = max(1, round(settings.level_bin_s * info.fs))
        # -- QEMG (streamemg.qemg): fed every flushed block (at most one hop) of native-rate samples, analysed with
        # its own MUAP-analysis filter in exact blocks; estimates carry its latest measurement
        phase = (zlib.crc32(info.stream_id.encode()) % 997) / 997.0  # streams' QEMG work falls due at different hops
        live = bool(getattr(source, "realtime", True))  # live: in the QEMG process; files at full speed: inline
        self.qemg: QemgAnalyser | RemoteQemg | None = None
        if settings.qemg.enabled:
            if settings.qemg.background and live and qemg_service_supported():
                self.qemg = RemoteQemg(info.fs, c, settings.qemg, phase)
            else:
                self.qemg = QemgAnalyser(info.fs, c, settings.qemg, phase)

    # ---------------------------------------------------------------- ingest
    def accept_seq(self, chunk: Chunk) -> bool:
        """Check the sender's sequence number: count gaps, drop duplicates and late chunks, see restarts."""
        seq = chunk.seq
        if seq is None:
            return True
        last = self.last_seq
        if last is not None:
            if seq <= last:
                if last - seq >= self.settings.restart_gap:
                    log.info("stream %s: sequence restarted (%d after %d): new segment", self.info.name, seq, last)
                    self.last_seq = seq
                    return True
                self.rejected += 1
                return False
            if seq > last + 1:
                self.dropped_samples += (seq - last - 1) * chunk.n_samples
        self.last_seq = seq
        return True

    def ingest(self, chunk: Chunk, arrival: float) -> list[Window]:
        """Process one chunk; return the windows that became complete (oldest first).

        Args:
            chunk: ``data`` (n, C) float32 µV at the stream's rate.
            arrival: pipeline clock time (s) at which the chunk arrived.
        """
        data = chunk.data
        if data.ndim != 2 or data.shape[1] != self.n_channels:
            self.rejected += 1
            raise StreamEMGError(
                f"stream {self.info.name!r}: chunk shaped {data.shape}, expected (n, {self.n_channels}); "
                "the source must announce a new StreamInfo when the channel count changes"
            )
        seq = chunk.seq
        if seq is not None and seq == (self.last_seq if self.last_seq is not None else seq - 1) + 1:
            self.last_seq = seq  # the in-order case, inline (this runs ~100 times per second per stream)
        elif not self.accept_seq(chunk):
            return []
        self.accepted = True
        self.last_data_at = arrival
        if self.status is not StreamStatus.LIVE:
            self.status = StreamStatus.LIVE
            self.status_detail = ""
        n = data.shape[0]
        step = self.max_piece
        if n <= step:  # the common case: one small chunk, usually no window due yet
            self._queued.append(data)
            self._queued_n += n
            if self._queued_n < self._flush_at:
                return []
            return self._flush(chunk.timestamps, n, arrival)
        windows: list[Window] = []
        for start in range(0, n, step):  # a large chunk (a file at full speed): pieces of at most one hop
            piece = data[start : start + step]
            self._queued.append(piece)
            self._queued_n += piece.shape[0]
            if self._queued_n >= self._flush_at:
                windows.extend(self._flush(chunk.timestamps, start + piece.shape[0], arrival))
        return windows

    def _samples_until_window(self) -> int:
        """Raw samples to queue before the next flush: until the next window is due, at most one hop."""
        return max(1, min(self.max_piece, self.resampler.input_needed(self.next_end - self.buffer.total_written)))

    def _flush(self, timestamps: np.ndarray, end: int, arrival: float) -> list[Window]:
        """Process the queued raw samples as one block and cut the windows that became due.

        Args:
            timestamps: the current chunk's timestamps; ``end``: how many of its samples were queued (the newest
                queued sample is ``timestamps[end - 1]``).
            arrival: the pipeline clock time of the current chunk.
        """
        queued = self._queued
        block = queued[0] if len(queued) == 1 else np.concatenate(queued)
        queued.clear()
        self._queued_n = 0
        self._track_level(block)
        self.raw_buffer.write(block)
        if self.qemg is not None:
            self.qemg.process(block)
        # non-finite samples are held at the last finite value inside StreamFilter (no step through the
        # high-pass); the raw buffer keeps them, so the quality gate flags the windows they touch
        out = self.resampler.process(self.filter.process(block))
        if out.shape[0]:
            self.buffer.write(out)
        windows: list[Window] = []
        if self.buffer.total_written >= self.next_end:
            # the newest model-rate sample represents the input ``delay_s`` earlier (resampler group delay)
            t_last = float(timestamps[end - 1]) if timestamps.size else 0.0
            t_end = t_last - self.resampler.delay_s
            while self.buffer.total_written >= self.next_end:
                windows.append(self._cut(t_end, arrival))
        self._flush_at = self._samples_until_window()
        return windows

    def _cut(self, t_end: float, arrival: float) -> Window:
        data = self.buffer.latest(self.window_samples, end=self.next_end)
        raw = self.raw_buffer.latest(min(self.raw_window, self.raw_buffer.available()))
        quality = assess_quality(raw.T, self.settings.quality)
        window = Window(
            stream_id=self.info.stream_id,
            index=self.window_index,
            data=data,
            t_end=t_end,
            arrival=arrival,
            quality=quality,
            site=self.site,
        )
        self.window_index += 1
        self.next_end += self.hop_samples
        return window

    def _track_level(self, block: np.ndarray) -> None:
        """RMS level per bin of ``level_bin_s`` (µV, all channels pooled); one BLAS dot per bin part."""
        n, c = block.shape
        i = 0
        while i < n:
            take = min(n - i, self._level_per_bin - self._level_count)
            flat = block[i : i + take].reshape(-1)
            sumsq = float(np.dot(flat, flat))
            if not math.isfinite(sumsq):  # rare: leave NaN/Inf samples out of the level
                finite = flat[np.isfinite(flat)]
                sumsq = float(np.dot(finite, finite))
            self._level_sumsq += sumsq / c
            self._level_count += take
            i += take
            if self._level_count >= self._level_per_bin:
                self.levels.append(math.sqrt(self._level_sumsq / self._level_count))
                self._level_sumsq = 0.0
                self._level_count = 0

    # ---------------------------------------------------------------- results
    def on_result(self, window: Window, probs: np.ndarray, now: float) -> Estimate:
        """Turn the engine's per-channel probabilities (C, K) into this stream's Estimate."""
        fused = fuse_channels(probs, window.quality)
        valid = bool(np.isfinite(fused).all())
        self.estimator.update(fused, window.t_end, valid)
        rolling = self.estimator.rolling
        if valid:
            quality = "ok"
        else:
            bad = [q for q in window.quality if q != "ok"]
            quality = bad[0] if bad else "no usable channel"
        label: str | None = None
        confidence = 0.0
        if valid and self.trained and np.isfinite(rolling).all():
            k = int(np.argmax(rolling))
            label = CLASS_NAMES[k]
            confidence = float(rolling[k])
        latency_ms = (now - window.arrival) * 1000.0
        self.latencies.append(latency_ms)
        self.decision_times.append(now)
        self.windows += 1
        est = Estimate(
            stream_id=self.info.stream_id,
            name=self.info.name,
            index=window.index,
            time=window.t_end,
            probabilities=tuple(float(x) for x in fused),
            rolling=tuple(float(x) for x in rolling),
            cumulative=tuple(float(x) for x in self.estimator.cumulative),
            label=label,
            confidence=confidence,
            quality=quality,
            latency_ms=latency_ms,
            trained=self.trained,
            qemg=self.qemg.summary_dict() if self.qemg is not None else None,
            channel_quality=window.quality,
        )
        self.last_estimate = est
        self.history.append(window.t_end, fused, rolling, quality, window.quality)
        return est

    def latency_percentiles(self) -> tuple[float, float]:
        """(p50, p99) decision latency in ms over the recent windows; recomputed only after new decisions."""
        if self._lat_cache[0] != self.windows:
            if self.latencies:
                lat = np.fromiter(self.latencies, dtype=np.float64, count=len(self.latencies))
                p50, p99 = np.percentile(lat, (50, 99))
                self._lat_cache = (self.windows, float(p50), float(p99))
            else:
                self._lat_cache = (self.windows, float("nan"), float("nan"))
        return self._lat_cache[1], self._lat_cache[2]

    def detail(self, now: float) -> StreamDetail:
        """What the stream view shows of this stream: its snapshot, recent filtered signal and estimate history.

        The signal is read up to the end of the newest classified window (samples the pipeline has already
        read), so the ring buffer's overrun accounting is unchanged. Costs one copy of ``trace_s`` seconds.
        """
        buf = self.buffer
        end = min(buf.total_written, self.next_end - self.hop_samples)
        n = max(0, min(self.trace_samples, end - buf.oldest))
        trace = buf.latest(n, end=end).T.copy() if end > 0 and n > 0 else np.zeros((0, self.n_channels), np.float32)
        window = None
        if n >= self.window_samples and self.window_index > 0:
            window = trace[-self.window_samples :]
        return StreamDetail(
            stream=self.snapshot(now),
            channels=tuple(self.info.channels),
            units=self.info.units,
            meta=dict(self.info.meta),
            trace=trace,
            trace_fs=self.model_fs,
            window=window,
            history=self.history.view(),
            reconnects=self.reconnects,
            qemg=self.qemg.summary() if self.qemg is not None else None,
        )

    def snapshot(self, now: float) -> StreamSnapshot:
        p50, p99 = self.latency_percentiles()
        rate = 0.0
        if len(self.decision_times) >= 2:
            span = now - self.decision_times[0]
            rate = (len(self.decision_times) - 1) / span if span > 0 else 0.0
        return StreamSnapshot(
            stream_id=self.info.stream_id,
            name=self.info.name,
            source=self.info.source,
            fs=self.info.fs,
            n_channels=self.info.n_channels,
            status=self.status,
            status_detail=self.status_detail,
            level=tuple(self.levels),
            last=self.last_estimate,
            latency_p50_ms=p50,
            latency_p99_ms=p99,
            windows_per_s=rate,
            windows=self.windows,
            dropped_samples=self.dropped_samples + self.buffer.overrun,
            dropped_windows=self.dropped_windows,
            rejected=self.rejected,
        )


def signal_windows(
    raw: np.ndarray, fs: float, bundle: ModelBundle, settings: PipelineSettings | None = None, name: str = "signal"
) -> list[Window]:
    """The windows one stream would cut from a whole signal ``raw`` (n, C) µV at ``fs``: the signal goes through a
    fresh :class:`StreamState` as one chunk (same filters, resampler, hop and quality gate as a live stream);
    oldest first. For offline work that must see exactly what a stream sees (training, the simulator's fit)."""
    data = np.ascontiguousarray(np.asarray(raw, dtype=np.float32).reshape(len(raw), -1))
    channels = tuple(f"ch{i + 1}" for i in range(data.shape[1]))
    info = StreamInfo(stream_id=name, name=name, fs=float(fs), channels=channels)
    state = StreamState(info, None, bundle, settings or PipelineSettings(), clock=lambda: 0.0)
    return state.ingest(Chunk(name, data, np.arange(data.shape[0]) / fs), 0.0)


class Pipeline:
    """Wires sources, stream states, the inference engine and sinks; see the module docstring.

    Args:
        sources: un-entered sources (the pipeline enters and exits them).
        sinks: un-entered sinks (each runs behind a bounded SinkRunner).
        bundle: the model bundle (weights + settings).
        settings: windowing / estimate settings.
        engine_settings: batching and device.
        clock: injectable monotonic clock (latency, staleness).
        on_estimate: optional synchronous callback for every Estimate (in-process consumers).
        sites: optional site calibration per source (same order as ``sources``): a ``(2, 2, F)`` tensor
            (:meth:`streamemg.clinical.site.SiteProfile.tensor`) or None; the engine applies it to that
            source's windows inside the shared batch.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        sinks: Sequence[Sink] = (),
        bundle: ModelBundle | None = None,
        settings: PipelineSettings | None = None,
        engine_settings: EngineSettings | None = None,
        clock: Clock = monotonic,
        on_estimate: Callable[[Estimate], None] | None = None,
        sites: Sequence[Any] | None = None,
    ) -> None:
        if bundle is None:
            from .model import load_bundle

            bundle = load_bundle(None)
        self.bundle = bundle
        self.settings = settings or PipelineSettings()
        self.engine_settings = engine_settings or EngineSettings()
        self.clock = clock
        self.sources = list(sources)
        self.runners = [SinkRunner(s, self.settings.sink) for s in sinks]
        self._chunk_runners = [r for r in self.runners if r.wants_chunks]  # sinks that also take raw chunks
        self.on_estimate = on_estimate
        q = self.settings.qemg
        # live streams' QEMG gives way while the event loop is busy (QemgSettings.yield_load)
        self.qemg_gate = YieldGate(q.yield_load) if q.enabled and q.background and q.yield_load < 1.0 else None
        self.site_table, self._site_of = _site_table(self.sources, sites)
        self.streams: dict[str, StreamState] = {}
        self.errors: collections.deque[str] = collections.deque(maxlen=8)
        self.engine: InferenceEngine | None = None
        self.started_at = clock()
        self.refused_streams = 0
        self.source_errors: dict[str, str] = {}
        #: sources given up for good (uri -> why); a run whose sources all ended this way failed
        self.failed_sources: dict[str, str] = {}
        #: restarts of live sources after an internal error (uri -> count)
        self.source_restarts: collections.Counter[str] = collections.Counter()
        #: streams a source has found but not opened yet (stream id -> detail), shown as connecting
        self.connecting: dict[str, str] = {}
        self._stop = asyncio.Event()
        self._yielded_at = clock()  # when _on_chunk last gave the loop a turn (live sources)

    # ---------------------------------------------------------------- public
    def stop(self) -> None:
        """Ask the pipeline to finish: sources close, queued windows and estimates drain, sinks flush."""
        self._stop.set()

    async def run(self, duration: float | None = None) -> None:
        """Run until every source has ended, ``duration`` seconds passed, or :meth:`stop` was called."""
        self.started_at = self.clock()
        self._stop.clear()
        engine = InferenceEngine(
            self.bundle, self.engine_settings, on_result=self._on_result, clock=self.clock, site_table=self.site_table
        )
        self.engine = engine
        runners = []
        for r in self.runners:
            try:
                await r.sink.__aenter__()
                runners.append(r)
            except Exception as exc:  # an output that cannot open is reported; the others go on
                self._error(f"output {r.name} could not be opened: {exc}")
        self.runners = runners
        self._chunk_runners = [r for r in runners if r.wants_chunks]
        if self.qemg_gate is not None:
            set_yielding(self.qemg_gate.on)  # live streams' QEMG starts once the loop has shown it has room
        try:
            async with engine, asyncio.TaskGroup() as tg:
                sink_tasks = [tg.create_task(r.run(), name=f"sink:{r.name}") for r in runners]
                source_tasks = [tg.create_task(self._run_source(s), name=f"source:{s.uri}") for s in self.sources]
                helpers = [
                    tg.create_task(self._watchdog(), name="watchdog"),
                    tg.create_task(self._stop.wait(), name="stop-request"),
                ]
                ends: set[asyncio.Future[Any]] = {helpers[1]}
                if source_tasks:
                    ends.add(asyncio.gather(*source_tasks, return_exceptions=True))
                await asyncio.wait(ends, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
                for t in [*source_tasks, *helpers]:
                    t.cancel()
                await asyncio.gather(*source_tasks, *helpers, return_exceptions=True)
                await engine.drain()
                for r in runners:
                    r.close()
                await self._drain_sinks(runners, sink_tasks)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.drain_timeout_s):
                        await self._settle_qemg()
        finally:
            if self.qemg_gate is not None:
                set_yielding(False)
            for st in self.streams.values():  # free the streams' state in the QEMG process
                if isinstance(st.qemg, RemoteQemg):
                    st.qemg.close()
            for r in runners:
                r.close()
                try:
                    async with asyncio.timeout(self.settings.drain_timeout_s):
                        await r.sink.__aexit__(None, None, None)
                except TimeoutError:
                    self._error(f"output {r.name} did not close within {self.settings.drain_timeout_s:g} s")
                except Exception as exc:  # closing an output must not hide other results
                    self._error(f"closing output {r.name}: {exc}")

    async def _settle_qemg(self) -> None:
        """Wait (the caller bounds it) until the QEMG process has analysed the blocks it was sent, so the streams'
        last QEMG measurement and counts (``analysed_blocks``) are complete when the run returns. Its answers come
        in on another thread, so this polls."""
        remote = [st.qemg for st in self.streams.values() if isinstance(st.qemg, RemoteQemg)]
        while any(q.in_flight > 0 and q.alive for q in remote):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def _drain_sinks(self, runners: list[SinkRunner], tasks: list[asyncio.Task[None]]) -> None:
        """Let every output deliver what it holds, but never wait on a hung one past ``drain_timeout_s``."""
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_timeout_s)
        for runner, task in zip(runners, tasks, strict=True):
            if task in pending:
                lost = runner.abandon()
                task.cancel()
                self._error(
                    f"output {runner.name} did not finish within {self.settings.drain_timeout_s:g} s at shutdown; "
                    f"{lost} queued items were not delivered"
                )
        await asyncio.gather(*pending, return_exceptions=True)

    def snapshot(self) -> PipelineSnapshot:
        """An immutable picture of the whole pipeline for the dashboard (cheap: O(streams))."""
        now = self.clock()
        streams = tuple(s.snapshot(now) for s in self.streams.values())
        stats = self.engine.stats if self.engine is not None else None
        return PipelineSnapshot(
            device=str(self.engine.device) if self.engine is not None else self.engine_settings.device,
            model_name=self.bundle.name,
            trained=self.bundle.trained,
            uptime_s=now - self.started_at,
            streams=streams,
            batch_mean=float(stats.batch_mean) if stats else 0.0,
            batch_max=int(stats.batch_max) if stats else 0,
            max_batch=self.engine_settings.max_batch,
            windows_total=sum(s.windows for s in streams),
            windows_per_s=sum(s.windows_per_s for s in streams),
            dropped_windows=sum(s.dropped_windows for s in streams),
            sink_drops={r.name: r.dropped for r in self.runners},
            errors=tuple(self.errors),
            connecting=tuple(sorted(self.connecting.items())),
            # only live streams' QEMG gives way (files are analysed inline, whatever the loop's load)
            qemg_yielding=self.qemg_gate is not None and self.qemg_gate.on
            and any(isinstance(st.qemg, RemoteQemg) for st in self.streams.values()),
        )

    def stream_detail(self, stream_id: str) -> StreamDetail | None:
        """The stream view's data for one stream (None when the pipeline does not know ``stream_id``)."""
        state = self.streams.get(stream_id)
        return state.detail(self.clock()) if state is not None else None

    # ---------------------------------------------------------------- internals
    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.errors.append(message)

    async def _run_source(self, source: Source) -> None:
        """Read one source until it ends; restart a live source that fails, give up only on permanent errors.

        A live source (LSL, MQTT, simulators) that raises is logged, its streams are shown as reconnecting, and it
        is restarted with backoff (``source.fresh()`` when the source offers it, else the same object re-entered)
        while the other sources go on. An offline source (a file) that fails, or any source failing with an
        error a restart cannot fix (:data:`_PERMANENT_SOURCE_ERRORS`), is given up and recorded in
        :attr:`failed_sources`.
        """
        first, cap = _SOURCE_RESTART_S
        delay = first
        uri = source.uri
        try:
            while True:
                started = self.clock()
                try:
                    await self._read_source(source)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    reason = str(exc) if isinstance(exc, StreamEMGError) else f"{type(exc).__name__}: {exc}"
                    if not source.realtime or isinstance(exc, _PERMANENT_SOURCE_ERRORS):
                        if not isinstance(exc, StreamEMGError):
                            log.error("source %s failed", uri, exc_info=exc)
                        self.failed_sources[uri] = reason
                        self.source_errors[uri] = reason
                        self._error(f"source {uri} failed: {reason}")
                        return
                    if self.clock() - started > _SOURCE_HEALTHY_S:
                        delay = first
                    self.source_restarts[uri] += 1
                    self._error(f"source {uri} failed ({reason}); restarting it in {delay:.1f} s")
                    for state in self.streams.values():
                        if state.source is source and state.status is not StreamStatus.ENDED:
                            state.status = StreamStatus.RECONNECTING
                            state.status_detail = "source restarting after an error"
                            state.reconnects += 1
                    await asyncio.sleep(delay)
                    delay = min(cap, delay * 2.0)
                    fresh = getattr(source, "fresh", None)
                    if callable(fresh):  # a new, un-entered source with the same settings
                        old, source = source, fresh()
                        if id(old) in self._site_of:  # the restarted source keeps its site calibration
                            self._site_of[id(source)] = self._site_of.pop(id(old))
                        for state in self.streams.values():
                            if state.source is old:
                                state.source = source
        finally:
            for state in self.streams.values():
                if state.source is source and state.status is not StreamStatus.ENDED:
                    state.status = StreamStatus.ENDED

    async def _read_source(self, source: Source) -> None:
        """Enter ``source`` and feed its items into the pipeline until it ends (errors propagate)."""
        async with source:
            live = bool(source.realtime)
            async for item in source:
                if isinstance(item, Chunk):
                    if live:  # no coroutine per chunk on the hot path (~100 chunks per second per stream)
                        arrival = self._on_live_chunk(item)
                        if arrival - self._yielded_at >= _MAX_HOLD_S:
                            # A live source that delivers a backlog in one go (a late pacer, a broker burst)
                            # never suspends; without a turn the engine's worker could not start the next batch
                            # and windows would pile up. Yield at most every _MAX_HOLD_S (~500 sleeps/s at most).
                            self._yielded_at = arrival
                            await asyncio.sleep(0)
                    else:
                        await self._on_chunk(item, source)
                elif isinstance(item, StreamInfo):
                    self._on_info(item, source)
                elif isinstance(item, StatusEvent):
                    self._on_status(item)

    def _on_info(self, info: StreamInfo, source: Source) -> None:
        self.connecting.pop(info.stream_id, None)
        old = self.streams.get(info.stream_id)
        same_segment = old is not None and old.info.meta.get("segment") == info.meta.get("segment")
        if old is not None and old.info.signature == info.signature and old.source is source and same_segment:
            old.info = info  # new labels or device facts only: keep the running state
            return
        if info.n_channels > self.settings.max_channels or info.fs > self.settings.max_fs_hz:
            self.refused_streams += 1
            msg = (
                f"stream {info.name!r} refused: {info.n_channels} channels at {info.fs:g} Hz exceeds the limits "
                f"({self.settings.max_channels} channels, {self.settings.max_fs_hz:g} Hz); raise "
                "pipeline.max_channels / max_fs_hz in the config if this is intended"
            )
            self.source_errors[source.uri] = msg
            self._error(msg)
            return
        if old is None and len(self.streams) >= self.settings.max_streams:
            self.refused_streams += 1
            self._error(
                f"stream {info.name!r} refused: {self.settings.max_streams} streams already "
                "(raise max_streams or shard the devices over several workers)"
            )
            return
        if info.source == "" and hasattr(source, "uri"):
            info = StreamInfo(
                info.stream_id, info.name, info.fs, info.channels, info.units, source.uri, info.meta
            )
        try:
            state = StreamState(info, source, self.bundle, self.settings, self.clock)
            state.site = self._site_of.get(id(source), 0)
        except StreamEMGError as exc:
            self.source_errors[source.uri] = str(exc)
            self._error(str(exc))
            return
        if old is not None:  # a changed signature: carry the counters, start a new segment
            state.dropped_samples = old.dropped_samples
            state.dropped_windows = old.dropped_windows
            state.rejected = old.rejected
            state.windows = old.windows
            log.info("stream %s re-initialised: %s -> %s", info.name, old.info.signature, info.signature)
        self.streams[info.stream_id] = state
        for r in self.runners:
            r.announce(info)

    def _on_status(self, event: StatusEvent) -> None:
        state = self.streams.get(event.stream_id)
        if state is None:
            if event.status is StreamStatus.CONNECTING:  # found, not announced yet (e.g. an LSL inlet opening)
                self.connecting[event.stream_id] = event.detail
            elif event.status is StreamStatus.ENDED:
                self.connecting.pop(event.stream_id, None)
            return
        if event.status is StreamStatus.RECONNECTING and state.status is not StreamStatus.RECONNECTING:
            state.reconnects += 1
        state.status = event.status
        state.status_detail = event.detail
        state.dropped_samples += event.dropped_samples

    def _ingest(self, chunk: Chunk, arrival: float) -> tuple[StreamState | None, list[Window]]:
        """Ingest one chunk (arrived at ``arrival``, clock s); ``(state or None, windows that became due)``."""
        state = self.streams.get(chunk.stream_id)
        if state is None:
            return None, []  # refused stream or data before its announcement
        state.accepted = False
        try:
            windows = state.ingest(chunk, arrival)
        except StreamEMGError as exc:
            self._error(str(exc))
            return None, []
        if state.accepted and self._chunk_runners:
            for r in self._chunk_runners:
                r.put_chunk(chunk)
        return state, windows

    def _on_live_chunk(self, chunk: Chunk) -> float:
        """A live source's chunk: ingest, and queue due windows without waiting (a full queue drops and counts).

        Returns the chunk's arrival time (pipeline clock, s), for the caller's yield check.
        """
        arrival = self.clock()
        state, windows = self._ingest(chunk, arrival)
        if windows:
            engine = self.engine
            assert engine is not None and state is not None
            for w in windows:
                if not engine.submit_nowait(w):
                    state.dropped_windows += 1
        return arrival

    async def _on_chunk(self, chunk: Chunk, source: Source) -> None:
        """Any source's chunk; an offline source's windows wait for queue space (back-pressure)."""
        if source.realtime:
            self._on_live_chunk(chunk)
            return
        _, windows = self._ingest(chunk, self.clock())
        engine = self.engine
        assert engine is not None
        for w in windows:
            await engine.submit(w)
        await asyncio.sleep(0)  # let the engine and sinks run between file chunks

    def _on_result(self, window: Window, probs: np.ndarray) -> None:
        state = self.streams.get(window.stream_id)
        if state is None:
            return
        est = state.on_result(window, probs, self.clock())
        for r in self.runners:
            r.put(est)
        if self.on_estimate is not None:
            self.on_estimate(est)

    async def _watchdog(self) -> None:
        period = min(0.25, self.settings.stale_after_s / 2)
        while True:
            await asyncio.sleep(period)
            if self.qemg_gate is not None:
                set_yielding(self.qemg_gate.tick())
            now = self.clock()
            for state in self.streams.values():
                if state.status is StreamStatus.LIVE and now - state.last_data_at > self.settings.stale_after_s:
                    state.status = StreamStatus.STALE
                    state.status_detail = f"no data for {now - state.last_data_at:.1f} s"


def _site_table(sources: Sequence[Source], sites: Sequence[Any] | None) -> tuple[Any, dict[int, int]]:
    """``(table (S, 2, 2, F) or None, {id(source): row})``: row 0 is the identity, one row per distinct profile."""
    if sites is None or all(t is None for t in sites):
        return None, {}
    if len(sites) != len(sources):
        raise ConfigError(f"sites: {len(sites)} entries for {len(sources)} sources; give one (or None) per source")
    import torch

    first = next(t for t in sites if t is not None)
    rows = [torch.stack([torch.ones_like(first[0]), torch.zeros_like(first[1])])]
    index: dict[int, int] = {}
    seen: dict[int, int] = {}
    for src, t in zip(sources, sites, strict=True):
        if t is None:
            continue
        if t.shape != first.shape:
            raise ConfigError(f"site calibration shaped {tuple(t.shape)}, expected {tuple(first.shape)}")
        if id(t) not in seen:
            seen[id(t)] = len(rows)
            rows.append(t.to(torch.float32))
        index[id(src)] = seen[id(t)]
    return torch.stack(rows), index
